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
