"""reproduce.py's plan: the attack tasks of a preset, the --attacks filter, the estimate."""
import pytest

import reproduce
import train_baseline

TARGET = ["--checkpoint", "results/paper/checkpoints/mlp_ce_s0_best.pt"]


def paper_tasks(kinds=reproduce.ATTACK_KINDS, seed=0):
    cfg = train_baseline.make_config("mlp", "ce", seed=seed, epochs=50)
    return reproduce.attack_tasks(reproduce.PRESETS["paper"], cfg, TARGET, kinds)


def test_attack_kinds_filter_and_cover_the_tasks():
    every = paper_tasks()
    labels = [t[0] for t in every]
    # seed 0 of the paper preset: PGD at 6 eps, SPSA 8 eps x 4 shards, 3 AutoAttack components
    # x 6 eps x 2 shards, Square 6 eps x 2 shards, noise at 9 eps, and the sanity-check runs
    assert sum(lab.startswith("PGD mlp_ce_s0 eps") for lab in labels) == 6
    assert sum(lab.startswith("SPSA") for lab in labels) == 8 * 4
    assert sum(lab.startswith("AutoAttack") for lab in labels) == 3 * 6 * 2
    assert sum(lab.startswith("noise") for lab in labels) == 9
    by_kind = {k: paper_tasks([k]) for k in reproduce.ATTACK_KINDS}
    assert all(reproduce.attack_kind(t[0]) == k for k, ts in by_kind.items() for t in ts)
    assert sorted(t[0] for ts in by_kind.values() for t in ts) == sorted(labels)
    assert all(by_kind[k] for k in reproduce.ATTACK_KINDS)
    assert {t[0] for t in paper_tasks(["pgd", "noise"])} == \
        {t[0] for t in by_kind["pgd"] + by_kind["noise"]}
    # SPSA and AutoAttack run on seed 0 only: none on seed 1
    assert not paper_tasks(["spsa", "autoattack", "square"], seed=1)


def test_plan_estimate_grows_with_the_work():
    preset = reproduce.PRESETS["paper"]
    one = reproduce.estimate_attack_minutes(preset, 21890, "mlp", [0])
    three = reproduce.estimate_attack_minutes(preset, 21890, "mlp", [0, 1, 2])
    assert set(one) == {"PGD", "SPSA", "AutoAttack", "Square"} and all(v > 0 for v in one.values())
    assert three["PGD"] == pytest.approx(3 * one["PGD"]) and three["SPSA"] == one["SPSA"]   # SPSA: seed 0
    cnn = reproduce.estimate_attack_minutes(preset, 21890, "cnn", [0])
    assert cnn["PGD"] > one["PGD"]                     # the CNN attacks are dearer per beat


def test_methods_pick_models_of_the_preset():
    args = reproduce.build_parser().parse_args(["paper", "--methods", "ce", "nsr", "adv"])
    preset = reproduce.preset_from_args(args)
    assert [m for m, _ in preset["models"]] == ["ce", "adv", "adv", "adv", "nsr"]
    cfgs = reproduce.train_configs(preset, ["cnn"], [0], "cpu", "ecg", False, "ckpt")
    assert [c["name"] for c in cfgs] == ["cnn_ce_s0", "cnn_adv_0.1_s0", "cnn_adv_0.2_s0",
                                         "cnn_adv_0.3_s0", "cnn_nsr_0.3_s0"]
    assert len(reproduce.PRESETS["paper"]["models"]) == 9          # the preset itself unchanged


def test_cpu_shrink_flags_and_their_estimate():
    """The CNN's SPSA and AutoAttack subsets shrink by flag; the plan estimate follows."""
    p = reproduce.build_parser()
    full = reproduce.preset_from_args(p.parse_args(["paper"]))
    small = reproduce.preset_from_args(p.parse_args(["paper", "--spsa-per-class", "10",
                                                     "--aa-samples", "200"]))
    assert small["spsa"]["per_class"] == 10 and small["autoattack"]["max_samples"] == 200
    assert small["square"]["max_samples"] == 200
    big = reproduce.estimate_attack_minutes(full, 21890, "cnn", [0])
    less = reproduce.estimate_attack_minutes(small, 21890, "cnn", [0])
    assert less["SPSA"] == pytest.approx(big["SPSA"] * 10 / 40)
    assert less["AutoAttack"] == pytest.approx(big["AutoAttack"] * 200 / 500)
    assert less["PGD"] == big["PGD"]


def test_training_left_is_calibrated_by_measured_epochs(tmp_path):
    """A started run counts its own epochs left at its measured pace; a run not started counts
    the bench estimate scaled by how much slower the started runs were than the bench."""
    import torch
    cfgs = [train_baseline.make_config("mlp", m, epochs=50, out_dir=str(tmp_path))
            for m in ("ce", "nsr")]
    per_epoch = 290030
    bench_ce = reproduce.train_estimate_s(cfgs[0], per_epoch) / 50
    last = train_baseline.checkpoint_paths(cfgs[0])[0]
    history = [{"epoch": e, "seconds": 3 * bench_ce} for e in range(10)]    # 3x the bench
    torch.save({"history": history, "epoch": 9}, last)
    left = reproduce.train_left_minutes(cfgs, per_epoch) * 60
    want = 40 * 3 * bench_ce + 3 * reproduce.train_estimate_s(cfgs[1], per_epoch)
    assert left == pytest.approx(want)


def test_attack_phase_skips_models_still_training(tmp_path, capsys):
    """--phases attack on a seed whose training is unfinished attacks the finished models only
    (another command may still be training the rest)."""
    data, res = tmp_path / "ecg", tmp_path / "results"
    data.mkdir()
    tiny = ["quick", "--device", "cpu", "--archs", "mlp", "--data-dir", str(data),
            "--results-dir", str(res), "--epochs", "1", "--max-train-samples", "128",
            "--pgd-steps", "2", "--pgd-samples", "10"]
    assert reproduce.main(tiny + ["--methods", "ce", "--phases", "train"]) == 0
    assert reproduce.main(tiny + ["--methods", "ce", "nsr", "--phases", "attack",
                                  "--attacks", "pgd"]) == 0
    out = capsys.readouterr().out
    assert "attacks on mlp_nsr_0.4_n128_s0: its training has not finished, skipped" in out
    made = sorted(p.name for p in (res / "attacks").glob("*.json"))
    assert made and all(n.startswith("mlp_ce_n128_s0__pgd") for n in made)
    assert len(made) == 6                                   # the paper's 6 PGD eps
