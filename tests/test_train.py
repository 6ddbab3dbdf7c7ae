"""Training scripts: every objective learns on the committed sample; --resume is exact."""
import os

import numpy as np
import pytest
import torch

import train_baseline
import train_nsr
import reproduce
import training
from conftest import needs_mitdb
from models import build_model, load_checkpoint
from preprocess import balanced_epoch_indices

BASELINE_ARGS = {"ce": [], "mse": [], "mse_margin": [], "jacob": [], "adv": ["--adv-eps", "0.1"]}


def config(method, arch, sample_dir, tmp_path, **overrides):
    cfg = reproduce.make_config(arch, method, sample=True, data_dir=sample_dir,
                                     out_dir=str(tmp_path), device="cpu", **overrides)
    objective = (train_nsr.nsr_objective if method in train_nsr.METHODS
                 else train_baseline.baseline_objective)
    return cfg, objective


@pytest.mark.parametrize("method", ["ce", "mse", "mse_margin", "jacob", "adv", "nsr", "align"])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_a_few_steps_decrease_the_loss(method, arch, sample_cache, sample_dir, tmp_path):
    cfg, objective = config(method, arch, sample_dir, tmp_path)
    y_all = sample_cache["Y_train"].numpy()
    b = torch.from_numpy(balanced_epoch_indices(y_all, 0, 0)[:128])
    x, y = sample_cache["X_train"][b], sample_cache["Y_train"][b]
    torch.manual_seed(0)
    model = build_model(arch, bias=cfg["bias"])
    opt = torch.optim.Adamax(model.parameters(), lr=cfg["lr"] * 5)   # a few steps must tell

    def loss_now():
        model.normalize_kernels()
        return objective(model, x, y, cfg, torch.Generator().manual_seed(1))[0].item()

    before = loss_now()
    for _ in range(15):
        training.train_step(model, opt, x, y, cfg, objective, torch.Generator())
    after = loss_now()
    assert np.isfinite(after) and after < before, (before, after)


@pytest.mark.parametrize("method,arch", [("adv", "cnn"), ("nsr", "mlp")])
def test_resume_equals_uninterrupted_run(method, arch, sample_dir, tmp_path):
    common = ["--max-train-samples", "384"]
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    script = train_nsr if method == "nsr" else train_baseline
    base = ["--arch", arch, "--method", method, "--sample", "--data-dir", sample_dir,
            "--device", "cpu", *common]
    assert script.main(base + ["--epochs", "3", "--out-dir", str(full_dir)]) == 0
    assert script.main(base + ["--epochs", "2", "--out-dir", str(cut_dir)]) == 0
    assert script.main(base + ["--epochs", "3", "--out-dir", str(cut_dir), "--resume"]) == 0
    name = os.path.basename(next(p for p in os.listdir(full_dir) if not p.endswith("_best.pt")))
    _, a = load_checkpoint(str(full_dir / name))
    _, b = load_checkpoint(str(cut_dir / name))
    assert a["epoch"] == b["epoch"] == 2
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert strip(a["history"]) == strip(b["history"])
    assert os.path.exists(full_dir / name.replace(".pt", "_best.pt"))


def test_resume_with_other_settings_is_refused(sample_dir, tmp_path, capsys):
    """Where the run lives and where its data are read from are no settings: the same folder
    spelled another way (./, a symlink) and a copy of the same data (same digest) resume. A
    setting in the name (lr) is another run, and resuming it is refused for want of a
    checkpoint."""
    import shutil
    other = tmp_path / "other_data"
    shutil.copytree(sample_dir, other)
    (tmp_path / "link").symlink_to(tmp_path)
    base = ["--arch", "mlp", "--method", "ce", "--sample", "--device", "cpu",
            "--max-train-samples", "128"]
    assert train_baseline.main(base + ["--data-dir", sample_dir, "--epochs", "1",
                                       "--out-dir", str(tmp_path)]) == 0
    assert train_baseline.main(base + ["--data-dir", str(other), "--epochs", "2", "--resume",
                                       "--out-dir", str(tmp_path / "link" / ".")]) == 0
    assert "resuming mlp_ce_n128_s0 after epoch 1/2" in capsys.readouterr().out
    assert train_baseline.main(base + ["--data-dir", sample_dir, "--lr", "0.01", "--resume",
                                       "--out-dir", str(tmp_path)]) == 2
    assert "mlp_ce_lr0.01_n128_s0.pt" in capsys.readouterr().err


@pytest.mark.parametrize("script,argv,msg", [
    (train_baseline, ["--arch", "rnn"], "invalid choice: 'rnn'"),
    (train_baseline, ["--method", "nsr"], "invalid choice: 'nsr'"),
    (train_nsr, ["--beta", "-1"], "argument --beta: -1 must be >= 0"),
    (train_nsr, ["--beta", "nan"], "argument --beta: nan is not a finite number"),
    (train_nsr, ["--beta", "inf"], "argument --beta: inf is not a finite number"),
    (train_baseline, ["--method", "adv", "--adv-eps", "nan"], "argument --adv-eps: nan"),
    (train_baseline, ["--method", "adv", "--adv-steps", "0"], "argument --adv-steps: 0 must be"),
    (train_baseline, ["--epochs", "0"], "argument --epochs: 0 must be >= 1"),
    (train_baseline, ["--max-train-samples", "0"], "argument --max-train-samples: 0 must be"),
    (train_baseline, ["--lr", "-0.01"], "argument --lr: -0.01 must be > 0"),
    (train_baseline, ["--seed", "x"], "argument --seed: 'x' is not an integer"),
    (train_baseline, ["--method", "ce", "--beta", "0.3"], "--beta does not apply to method 'ce'"),
])
def test_bad_arguments_exit_2(script, argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        script.main(argv)
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_bad_device_exits_2(sample_dir, tmp_path, capsys):
    assert train_baseline.main(["--sample", "--data-dir", sample_dir, "--device", "gpu",
                                "--out-dir", str(tmp_path)]) == 2
    assert "--device 'gpu'" in capsys.readouterr().err


def test_non_finite_loss_stops_without_checkpoint(sample_dir, tmp_path, capsys, monkeypatch):
    """A loss that turns NaN (here: a planted objective) stops training; no checkpoint exists."""
    real = train_baseline.baseline_objective
    calls = []

    def nan_after_a_few(model, x, y, cfg, gen):
        calls.append(1)
        loss, terms = real(model, x, y, cfg, gen)
        return (loss * float("nan") if len(calls) > 3 else loss), terms
    monkeypatch.setattr(train_baseline, "baseline_objective", nan_after_a_few)
    assert train_baseline.main(["--arch", "mlp", "--sample", "--data-dir", sample_dir,
                                "--device", "cpu", "--max-train-samples", "1024",
                                "--out-dir", str(tmp_path)]) == 2
    assert "loss is nan" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_run_names_carry_seed_and_non_paper_settings():
    mk = reproduce.make_config
    assert mk("cnn", "ce")["name"] == "cnn_ce_s0"
    assert mk("mlp", "adv", adv_eps=0.2, seed=2)["name"] == "mlp_adv_0.2_s2"
    assert mk("mlp", "adv", adv_steps=3)["name"] == "mlp_adv_0.1_k3_s0"
    assert mk("cnn", "nsr")["name"] == "cnn_nsr_0.3_s0"
    assert mk("cnn", "nsr", beta=0.5, nsr_eps=0.1)["name"] == "cnn_nsr_0.5_ne0.1_s0"
    assert mk("cnn", "jacob", beta=0.1, lr=0.01)["name"] == "cnn_jacob_b0.1_lr0.01_s0"
    assert mk("mlp", "ce", max_train_samples=8000, epochs=6)["name"] == "mlp_ce_n8000_s0"
    with pytest.raises(ValueError, match="--adv-eps does not apply"):
        mk("mlp", "ce", adv_eps=0.1)


@pytest.mark.parametrize("method,extra", [("adv", {"adv_eps": 0.3, "seed": 4}),
                                          ("nsr", {"beta": 0.5}), ("jacob", {"lr": 0.002})])
def test_config_argv_rebuilds_the_config(method, extra, tmp_path):
    """reproduce.py passes config_argv(cfg) to main(): the script must build the same config."""
    cfg = reproduce.make_config("mlp", method, epochs=1, out_dir=str(tmp_path), **extra)
    script = train_nsr if method in train_nsr.METHODS else train_baseline
    seen = {}
    orig = training.train
    training.train = lambda c, objective: seen.update(c)
    try:
        assert script.main(script.config_argv(cfg)) == 0
    finally:
        training.train = orig
    assert seen == cfg


def test_resume_without_checkpoint_is_refused(sample_dir, tmp_path, capsys):
    assert train_baseline.main(["--sample", "--data-dir", sample_dir, "--device", "cpu",
                                "--out-dir", str(tmp_path), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_best_checkpoint_repaired_after_kill(sample_dir, tmp_path):
    """Killed after the last checkpoint of a best epoch but before its best file (as the old
    write order allowed): --resume makes _best hold that epoch again."""
    base = ["--arch", "mlp", "--method", "ce", "--sample", "--data-dir", sample_dir,
            "--device", "cpu", "--max-train-samples", "512", "--out-dir", str(tmp_path)]
    assert train_baseline.main(base + ["--epochs", "2"]) == 0
    last, best = tmp_path / "mlp_ce_n512_s0.pt", tmp_path / "mlp_ce_n512_s0_best.pt"
    ck = torch.load(last, weights_only=True)
    hist = ck["history"]
    for h in hist:                                      # make epoch 2 the best one
        h["val_balanced_accuracy"] = 0.5 + 0.1 * h["epoch"]
    ck["history"] = hist
    torch.save(ck, last)
    stale = torch.load(best, weights_only=True)
    stale["epoch"] = 0
    torch.save(stale, best)                             # best one epoch behind
    assert train_baseline.main(base + ["--epochs", "2", "--resume"]) == 0
    assert torch.load(best, weights_only=True)["epoch"] == 1


def test_missing_cache_names_the_command(tmp_path, capsys):
    assert train_nsr.main(["--data-dir", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "no data cache" in err and "python preprocess.py" in err


def test_default_betas_per_arch(sample_dir, tmp_path):
    assert config("nsr", "cnn", sample_dir, tmp_path)[0]["beta"] == 0.3
    assert config("nsr", "mlp", sample_dir, tmp_path)[0]["beta"] == 0.4
    cfg, _ = config("align", "cnn", sample_dir, tmp_path)
    assert cfg["beta"] == 0.2 and cfg["bias"] is False and cfg["name"] == "cnn_align_0.2_s0"
    assert config("align", "mlp", sample_dir, tmp_path)[0]["beta"] == 1.0


@pytest.mark.slow
@needs_mitdb
def test_cnn_ce_learns_real_data(wfdb_dir, tmp_path):
    """CNN + CE on the --wfdb rebuild: >= 0.85 balanced validation accuracy after 2 epochs of
    20,000 class-balanced samples."""
    assert train_baseline.main(["--arch", "cnn", "--method", "ce", "--data-dir", wfdb_dir,
                                "--epochs", "2", "--max-train-samples", "20000",
                                "--out-dir", str(tmp_path), "--device", "cpu"]) == 0
    _, ckpt = load_checkpoint(str(tmp_path / "cnn_ce_n20000_s0.pt"))
    assert max(h["val_balanced_accuracy"] for h in ckpt["history"]) >= 0.85
