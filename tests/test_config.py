"""An edited top-of-file constant is never a silent stale run: the paper's values are frozen in
protocol.py, and every difference from them goes into the run name and the report's row label;
a finished run is reused only when its stored config is the one asked for."""
import pytest
import torch

import analysis
import protocol
import reproduce
import train_baseline
import train_nsr
import training

# (module, constant, edited value): every training constant a user may edit at the top of
# train_baseline.py or train_nsr.py
EDITS = [(train_baseline, "LR", 2e-3), (train_baseline, "BATCH_SIZE", 64),
         (train_baseline, "MARGIN", 2.0), (train_baseline, "DECAY_L1", 0.02),
         (train_baseline, "DECAY_L2", 0.0), (train_baseline, "JACOB_BETA", 0.5),
         (train_baseline, "JACOB_NORM", 2), (train_baseline, "ADV_EPS", 0.2),
         (train_baseline, "ADV_STEPS", 5), (train_baseline, "ADV_STEP_SIZE", 0.02),
         (train_baseline, "SEED", 1), (train_nsr, "LR", 2e-3), (train_nsr, "BATCH_SIZE", 64),
         (train_nsr, "MARGIN", 2.0), (train_nsr, "SEED", 1), (train_nsr, "NSR_EPS", 0.02),
         (train_nsr, "NSR_MAX_NOISE", 0.5), (train_nsr, "NSR_BETA", {"cnn": 0.5, "mlp": 0.5}),
         (train_nsr, "ALIGN_BETA", {"cnn": 0.5, "mlp": 0.5})]
RUNS = [(arch, method) for arch in protocol.ARCHS for method in protocol.METHODS]


def test_unedited_constants_are_the_paper_values():
    """As shipped, every script's defaults are the frozen paper values: the committed run names
    (cnn_nsr_0.3_s0, ...) stay those of the paper's runs."""
    for arch, method in RUNS:
        defaults = reproduce.TRAINERS[method].default_config(arch, method)
        assert {k: v for k, v in defaults.items() if k not in ("epochs", "out_dir")} == \
            protocol.paper_config(arch, method) and defaults["epochs"] == protocol.EPOCHS
        assert reproduce.make_config(arch, method)["name"] == \
            f"{arch}_{method}" + {"adv": "_0.1", "nsr": f"_{protocol.NSR_BETA[arch]:g}",
                                  "align": f"_{protocol.ALIGN_BETA[arch]:g}"}.get(method, "") + "_s0"


def test_every_setting_has_a_place_in_the_name():
    """A setting that is neither the method's own parameter nor tagged could differ unseen."""
    own = {"arch", "method", "seed", "beta", "adv_eps"}
    for arch, method in RUNS:
        untagged = set(protocol.paper_config(arch, method)) - own - set(training.NAME_TAGS)
        assert not untagged, (arch, method, untagged)


@pytest.mark.parametrize("module,constant,value", EDITS,
                         ids=[f"{m.__name__}.{c}" for m, c, _ in EDITS])
def test_an_edited_constant_gives_a_new_name_and_label(monkeypatch, tmp_path, module, constant,
                                                       value):
    """Edit one constant (as a user does at the top of the file): every run it changes gets a
    new name, a report label naming the change (the seed excepted: rows average over seeds),
    and is not 'finished' because the paper's run of the old name is."""
    paper = {run: reproduce.make_config(*run, out_dir=str(tmp_path)) for run in RUNS}
    for cfg in paper.values():              # the paper's runs, all trained to the end
        torch.save({"epoch": cfg["epochs"] - 1, "config": cfg},
                   training.checkpoint_paths(cfg)[0])
        assert training.finished(cfg)
    monkeypatch.setattr(module, constant, value)
    changed = 0
    for run in RUNS:
        cfg = reproduce.make_config(*run, out_dir=str(tmp_path))
        settings = {k: v for k, v in cfg.items() if k != "name"}
        if settings == {k: v for k, v in paper[run].items() if k != "name"}:
            continue
        changed += 1
        assert cfg["name"] != paper[run]["name"], (run, cfg["name"])
        assert not training.finished(cfg), cfg["name"]
        if constant not in ("SEED", "ADV_EPS"):
            (_, label), (_, paper_label) = (analysis.row_key(c, run[0]) for c in (cfg, paper[run]))
            assert label != paper_label and label.startswith(paper_label.rstrip(")")), label
    assert changed, f"editing {constant} changed no run"


def test_a_checkpoint_of_other_settings_is_never_reused(tmp_path):
    """Same name, other stored settings (a checkpoint from before the rule, or edited by hand):
    not finished, and --resume is refused naming the setting."""
    cfg = reproduce.make_config("mlp", "nsr", out_dir=str(tmp_path), epochs=1)
    torch.save({"epoch": 0, "config": {**cfg, "nsr_eps": 0.02}},
               training.checkpoint_paths(cfg)[0])
    assert not training.finished(cfg)
    assert training.setting_changes({**cfg, "nsr_eps": 0.02}, cfg) == ["nsr_eps"]
    assert training.setting_changes({**cfg, "epochs": 9, "device": "cuda"}, cfg) == []


def test_each_script_trains_its_own_methods_and_lists_its_own_flags():
    """train_nsr.py --help shows its flags and its whole description, none of the baselines';
    a method of the other script is refused with the script to use."""
    text = train_nsr.get_args_parser().format_help()
    assert "--nsr-eps" in text and "--adv-eps" not in text and "--jacob-norm" not in text
    assert "double-backward" in text            # the docstring's last paragraph
    assert "--nsr-eps" not in train_baseline.get_args_parser().format_help()
    with pytest.raises(ValueError, match="train it with train_nsr.py"):
        train_baseline.make_config("mlp", "nsr")
    with pytest.raises(ValueError, match="train it with train_baseline.py"):
        train_nsr.make_config("mlp", "ce")


def test_label_names_every_difference():
    cfg = reproduce.make_config("cnn", "nsr", nsr_eps=0.02)
    assert cfg["name"] == "cnn_nsr_0.3_ne0.02_s0"
    assert analysis.row_key(cfg, "cnn")[1] == "method 2 (NSR, nsr_eps 0.02)"
    cfg = reproduce.make_config("mlp", "ce", lr=0.002, batch_size=64)
    assert analysis.row_key(cfg, "mlp")[1] == "CE (batch_size 64, lr 0.002)"
