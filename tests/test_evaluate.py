"""evaluate.py on hand-written result JSONs, and an end-to-end run of the quick preset."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

import evaluate
from records import load_histories
import checks
import analysis
import reproduce

CFG = {"ce": {"method": "ce", "arch": "cnn", "name": "cnn_ce"},
       "nsr": {"method": "nsr", "arch": "cnn", "beta": 0.3, "name": "cnn_nsr_0.3"}}


def result(model, method, attack, eps, n_correct, n=20, settings=None, indices=None,
           zero_grad=0, max_linf=None, seed=None):
    """A result where the first n_correct of n beats (4 per class) stay correct."""
    labels = [i % 5 for i in range(n)]
    adv = [y if i < n_correct else (y + 1) % 5 for i, y in enumerate(labels)]
    s = {"eps": eps, "steps": 100, "step_size": 0.01, "variant": "paper", "loss": "ce",
         "restarts": 1, "seed": 0}
    if attack == "spsa":
        s = {"eps": eps, "steps": 100, "n_dirs": 2048, "seed": 0}
    if attack == "noise":
        s = {"eps": eps, "seed": 0}
    s.update(settings or {})
    from preprocess import classification_metrics
    return {"kind": "nsr-ecg-attack-result", "model": model, "arch": "cnn", "method": method,
            "model_config": CFG[method] if seed is None else {**CFG[method], "seed": seed,
                                                              "name": model},
            "attack": attack, "eps": eps, "settings": s,
            "clean": classification_metrics(labels, labels),
            "adversarial": classification_metrics(labels, adv),
            "indices": indices or list(range(n)), "labels": labels, "clean_pred": labels,
            "adv_pred": adv, "max_linf": eps if max_linf is None else max_linf, "in_range": True,
            "zero_grad_samples": zero_grad, "device": "cpu", "torch": "x", "git_commit": "y",
            "checkpoint_sha256": ("ab" if method == "ce" else "cd") * 32, "data_sha256": "ef" * 32,
            "checkpoint": f"/nowhere/{model}_best.pt"}


AA_SETTINGS = {"steps": 100, "restarts": 1, "library": "torchattacks 3.5.1"}


def write(d, name, r):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "w") as f:
        json.dump(r, f)


def clean_set(d):
    a = os.path.join(d, "attacks")
    for m, method, accs in [("cnn_ce", "ce", [18, 12, 6]), ("cnn_nsr_0.3", "nsr", [19, 16, 11])]:
        for eps, c in zip((0.01, 0.03, 0.1), accs):
            write(a, f"{m}__pgd__eps{eps}.json", result(m, method, "pgd-paper", eps, c))
            write(a, f"{m}__noise__eps{eps}.json", result(m, method, "noise", eps, 20 - (20 - c) // 4))
        write(a, f"{m}__spsa__eps0.03.json", result(m, method, "spsa", 0.03, accs[1] + 1))
        write(a, f"{m}__sign1__eps0.03.json", result(m, method, "pgd-sign", 0.03, accs[1], settings=
                                                     {"variant": "sign", "steps": 20}))
        write(a, f"{m}__sign3__eps0.03.json", result(m, method, "pgd-sign", 0.03, accs[1] - 1, settings=
                                                     {"variant": "sign", "steps": 20, "restarts": 3}))
        write(a, f"{m}__eps1__eps1.json", result(m, method, "pgd-paper", 1.0, 0, settings={"steps": 20}))
        # AutoAttack components as strong as the paper's PGD
        for eps, c in zip((0.01, 0.03, 0.1), accs):
            write(a, f"{m}__apgd-ce__eps{eps}.json", result(m, method, "apgd-ce", eps, c,
                                                             settings=AA_SETTINGS))
            write(a, f"{m}__apgd-t__eps{eps}.json", result(m, method, "apgd-t", eps, c,
                                                            settings=AA_SETTINGS))


def statuses(report):
    return {line.split("** ")[1].split(".")[0]: line.split("**")[1]
            for line in report.splitlines() if line.startswith("- **")}


def test_tables_cells_and_clean_checks(tmp_path, capsys):
    clean_set(str(tmp_path))
    assert evaluate.main(["--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "WARNING" not in out
    df = pd.read_csv(tmp_path / "tables" / "pgd_cnn.csv")
    assert list(df["method"]) == ["CE", "method 2 (NSR)"]       # the paper's order
    row = df.set_index("model").loc["cnn_nsr_0.3"]
    assert float(row["bacc_0.03"]) == pytest.approx(16 / 20)
    assert float(row["acc_0.1"]) == pytest.approx(11 / 20)
    assert float(row["clean_bacc"]) == 1.0
    md = (tmp_path / "tables" / "pgd_cnn.md").read_text()
    assert "| CE | 20 | 1.000 | 0.900 | 0.600 | 0.300 | `" in md      # eps 1: a check run
    assert (tmp_path / "tables" / "spsa_cnn.md").exists()
    # worst case: sign PGD with 3 restarts fools one more beat than paper PGD at eps 0.03
    worst = pd.read_csv(tmp_path / "tables" / "worst_cnn.csv").set_index("model")
    assert float(worst.loc["cnn_ce", "acc_0.03"]) == pytest.approx(11 / 20)
    report = (tmp_path / "report.md").read_text()
    st = statuses(report)
    assert st == {str(i): "PASS" for i in range(1, 10)}, st
    # the AutoAttack table: worst case of its components per beat
    aa = pd.read_csv(tmp_path / "tables" / "autoattack_cnn.csv").set_index("model")
    assert float(aa.loc["cnn_ce", "acc_0.03"]) == pytest.approx(12 / 20)
    assert "abababab" in md and "cdcdcdcd" in md            # the checkpoint behind each row
    assert report.index("## Worst case") < report.index("## White-box PGD")
    assert "example beats" not in report and "Not drawn:" in report
    for name in ("pgd_cnn.png", "spsa_cnn.png", "noise_cnn.png", "per_class_cnn.png",
                 "autoattack_cnn.png", "worst_cnn.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 10_000


def test_missing_cells_are_dashes(tmp_path):
    clean_set(str(tmp_path))
    os.remove(tmp_path / "attacks" / "cnn_nsr_0.3__pgd__eps0.1.json")
    evaluate.main(["--results-dir", str(tmp_path)])
    md = (tmp_path / "tables" / "pgd_cnn.md").read_text()
    nsr_line = next(l for l in md.splitlines() if l.startswith("| method 2"))
    cells = [c.strip() for c in nsr_line.split("|")[1:-1]]
    assert cells[5] == "-"                           # eps 0.1 missing: a dash, never 0
    ce_line = next(l for l in md.splitlines() if l.startswith("| CE"))
    assert [c.strip() for c in ce_line.split("|")[1:-1]][5] == "0.300"


def test_planted_problems_are_flagged(tmp_path, capsys):
    clean_set(str(tmp_path))
    a = tmp_path / "attacks"
    # non-monotone curve: more accurate at eps 0.1 than at 0.03
    write(a, "cnn_ce__pgd__eps0.1.json", result("cnn_ce", "ce", "pgd-paper", 0.1, 15))
    # SPSA beats PGD by far on the same beats (gradient masking)
    write(a, "cnn_nsr_0.3__spsa__eps0.03.json", result("cnn_nsr_0.3", "nsr", "spsa", 0.03, 5))
    # an input outside the budget
    write(a, "cnn_nsr_0.3__pgd__eps0.01.json",
          result("cnn_nsr_0.3", "nsr", "pgd-paper", 0.01, 19, max_linf=0.02))
    # many zero gradients
    write(a, "cnn_ce__noise__eps0.01.json", result("cnn_ce", "ce", "noise", 0.01, 20, zero_grad=5))
    evaluate.main(["--results-dir", str(tmp_path)])
    out = capsys.readouterr().out
    st = statuses((tmp_path / "report.md").read_text())
    assert st["1"] == "FAIL" and st["3"] == "FAIL" and st["6"] == "FAIL" and st["8"] == "FAIL"
    assert st["2"] == "PASS" and st["5"] == "PASS"
    assert "WARNING: sanity check 1." in out and "eps 0.03 but 15/20 at eps 0.1" in out
    assert "WARNING: sanity check 3." in out and "cnn_nsr_0.3 eps 0.03: spsa " in out
    assert "against the paper's PGD" in out
    assert "WARNING: sanity check 6." in out and "WARNING: sanity check 8." in out


def test_check9_flags_autoattack_beating_paper_pgd(tmp_path, capsys):
    clean_set(str(tmp_path))
    # APGD-T fools 3 beats more than the paper's PGD at eps 0.03 on the NSR model: > 0.02
    write(tmp_path / "attacks", "cnn_nsr_0.3__apgd-t__eps0.03.json",
          result("cnn_nsr_0.3", "nsr", "apgd-t", 0.03, 13, settings=AA_SETTINGS))
    evaluate.main(["--results-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert statuses((tmp_path / "report.md").read_text())["9"] == "FAIL"
    assert "WARNING: sanity check 9." in out
    assert "cnn_nsr_0.3 eps 0.03: paper PGD 0.800, AutoAttack 0.650" in out
    assert "found by apgd-t (+0.150)" in out and "cnn_ce" not in out.split("check 9")[1]
    # the worst case spans every attack: APGD-T's 3 extra beats count there
    worst = pd.read_csv(tmp_path / "tables" / "worst_cnn.csv").set_index("model")
    assert float(worst.loc["cnn_nsr_0.3", "acc_0.03"]) == pytest.approx(13 / 20)


def test_stale_temp_and_string_eps_are_not_results(tmp_path, capsys):
    """A left temp file is hidden and not *.json; a result with a string eps is refused."""
    clean_set(str(tmp_path))
    a = tmp_path / "attacks"
    write(a, ".cnn_ce__pgd__eps0.2.json.abc123.tmp", result("cnn_ce", "ce", "pgd-paper", 0.2, 1))
    bad = result("cnn_ce", "ce", "pgd-paper", 0.2, 1)
    bad["eps"] = "0.2"
    write(a, "cnn_ce__pgd__eps0.2.json", bad)
    assert evaluate.main(["--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cnn_ce__pgd__eps0.2.json: eps is '0.2', not a number" in out
    assert "eps 0.2" not in (tmp_path / "tables" / "pgd_cnn.md").read_text()


def test_corrupt_and_foreign_json_are_named_and_skipped(tmp_path, capsys):
    clean_set(str(tmp_path))
    (tmp_path / "attacks" / "broken.json").write_text('{"kind": "nsr-ecg-attack-res')
    (tmp_path / "attacks" / "foreign.json").write_text('{"hello": 1}')
    assert evaluate.main(["--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "WARNING: skipped" in out and "broken.json" in out and "foreign.json" in out
    report = (tmp_path / "report.md").read_text()
    assert "2 skipped" in report


def test_not_run_checks(tmp_path):
    a = tmp_path / "attacks"
    write(a, "x.json", result("cnn_ce", "ce", "pgd-paper", 0.03, 10))
    evaluate.main(["--results-dir", str(tmp_path)])
    st = statuses((tmp_path / "report.md").read_text())
    assert st["3"] == "not run" and st["5"] == "not run" and st["6"] == "PASS"
    assert st["9"] == "not run"


def test_quick_preset_end_to_end_tiny(sample_dir, tmp_path):
    """The quick preset with tiny settings: data -> 10 models -> attacks -> report."""
    data_dir = tmp_path / "ecg"
    data_dir.mkdir()
    res = tmp_path / "results"
    argv = ["quick", "--device", "cpu", "--data-dir", str(data_dir), "--results-dir", str(res),
            "--epochs", "1", "--max-train-samples", "256", "--pgd-steps", "3",
            "--pgd-samples", "25", "--spsa-steps", "2", "--spsa-dirs", "8", "--aa-steps", "2",
            "--square-queries", "10", "--sap-steps", "2"]
    assert reproduce.main(argv) == 0
    report = (res / "report.md").read_text()
    assert "White-box PGD" in report and "Sanity checks" in report and "- **" in report
    # issue 25: the smooth threat model, the transfer attack, the per-attack view, the surface
    for title in ("Smooth threat model", "Transfer: APGD-T", "How each attack sees each model",
                  "The loss surface"):
        assert title in report, title
    assert (res / "figures" / "surface.png").stat().st_size > 0
    # every result names the suite that made it: the quick preset, with budgets overridden here
    suites = {json.load(open(p)).get("suite") for p in (res / "attacks").glob("*.json")}
    assert suites == {"quick+overrides"}
    assert "9. AutoAttack" in report
    for arch in ("mlp", "cnn"):
        for kind in ("pgd", "spsa", "noise", "autoattack", "worst"):
            assert (res / "tables" / f"{kind}_{arch}.md").exists(), (kind, arch)
        png = res / "figures" / f"pgd_{arch}.png"
        from matplotlib.image import imread
        img = imread(str(png))
        assert img.shape[0] > 200 and img[..., :3].std() > 0.05    # opens, not blank
    attacks = sorted((res / "attacks").iterdir())
    assert any("apgd-t" in p.name for p in attacks) and any("square" in p.name for p in attacks)
    assert (res / "figures" / "example_beats.png").stat().st_size > 10_000
    ckpts = sorted((res / "checkpoints").iterdir())
    mtimes = {p: p.stat().st_mtime_ns for p in attacks + ckpts}
    # resumable: a second run recomputes nothing (same files, untouched) and rewrites the report
    assert reproduce.main(argv) == 0
    assert sorted((res / "attacks").iterdir()) == attacks
    assert {p: p.stat().st_mtime_ns for p in attacks + ckpts} == mtimes


def test_three_seeds_mean_std_and_paired_intervals(tmp_path):
    """Cells are mean ± std over seeds; NSR minus CE is paired by seed with a 95% t-interval,
    marked where it excludes 0 (eps 0.03: +0.2 every seed) and not where it does not (eps 0.1)."""
    a = tmp_path / "attacks"
    ce = {0.03: [12, 13, 12], 0.1: [6, 7, 8]}
    nsr = {0.03: [16, 17, 16], 0.1: [7, 6, 9]}
    for seed in range(3):
        for eps in (0.03, 0.1):
            for m, method, counts in (("cnn_ce", "ce", ce), ("cnn_nsr_0.3", "nsr", nsr)):
                name = f"{m}_s{seed}"
                write(a, f"{name}__pgd__eps{eps}.json",
                      result(name, method, "pgd-paper", eps, counts[eps][seed], seed=seed))
    assert evaluate.main(["--results-dir", str(tmp_path)]) == 0
    agg = pd.read_csv(tmp_path / "tables" / "pgd_cnn.csv").set_index("model")
    assert int(agg.loc["cnn_ce", "seeds"]) == 3
    assert float(agg.loc["cnn_ce", "bacc_0.03"]) == pytest.approx(np.mean([0.6, 0.65, 0.6]), abs=1e-4)
    assert float(agg.loc["cnn_ce", "bacc_0.03_std"]) == pytest.approx(np.std([0.6, 0.65, 0.6],
                                                                             ddof=1), abs=1e-4)
    per_seed = pd.read_csv(tmp_path / "tables" / "pgd_cnn_per_seed.csv")
    assert sorted(per_seed["seed"]) == [0, 0, 1, 1, 2, 2]
    md = (tmp_path / "tables" / "pgd_cnn.md").read_text()
    assert "| CE | 20 | 3 | 1.000 ± 0.000 | 0.617 ± 0.029 | 0.350 ± 0.050 |" in md
    diff = (tmp_path / "tables" / "diff_pgd_cnn.md").read_text()
    row = next(l for l in diff.splitlines() if l.startswith("| method 2"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[3] == "+0.200 [+0.200, +0.200] *"            # eps 0.03: excludes 0
    assert cells[4].startswith("+0.017 [") and not cells[4].endswith("*")   # eps 0.1: not
    from scipy import stats
    d = np.array([0.05, -0.05, 0.05])
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert cells[4] == f"+0.017 [{d.mean() - half:+.3f}, {d.mean() + half:+.3f}]"
    png = tmp_path / "figures" / "pgd_cnn.png"
    assert png.stat().st_size > 10_000


def test_training_table_marks_runs_still_training(tmp_path):
    """A run whose last checkpoint has fewer epochs than its config is shown as in training."""
    for epochs_done, method in ((50, "ce"), (10, "nsr")):
        cfg = reproduce.make_config("mlp", method, epochs=50)
        h = [{"epoch": e, "val_balanced_accuracy": 0.5 + e / 100, "samples": 100, "seconds": 1.0}
             for e in range(epochs_done)]
        torch.save({"arch": "mlp", "config": cfg, "history": h},
                   tmp_path / f"{cfg['name']}.pt")
    histories = load_histories(str(tmp_path))
    lines = "\n".join(evaluate.training_section(histories))
    assert "| mlp_ce_s0 | 50 |" in lines
    assert "| mlp_nsr_0.4_s0 | 10 of 50 (training) |" in lines
    # the compute line: 60 epochs of 1 s, plus the attacks' wall_s
    records = [{"wall_s": 3600.0, "device": "cpu", "threads": 1}] * 3
    line = evaluate.compute_line(records, histories)
    assert line.startswith("Compute: 3.0 h of process time: training 0.0 h (2 runs), "
                           "attacks 3.0 h (3 results; device cpu, 1 thread(s)")


def test_worst_case_lies_on_the_beats_autoattack_attacked(tmp_path):
    """PGD covers 40 beats, AutoAttack 20 of them: the worst case is computed on those 20 (on
    all 40, the 20 beats AutoAttack never saw would count as robust to it)."""
    a = tmp_path / "attacks"
    pgd = result("cnn_ce", "ce", "pgd-paper", 0.03, 36, n=40)      # fools beats 36..39
    write(a, "cnn_ce__pgd__eps0.03.json", pgd)
    aa = result("cnn_ce", "ce", "apgd-ce", 0.03, 10, n=20, settings=AA_SETTINGS)   # beats 0..19
    write(a, "cnn_ce__apgd-ce__eps0.03.json", aa)
    assert evaluate.main(["--results-dir", str(tmp_path)]) == 0
    worst = pd.read_csv(tmp_path / "tables" / "worst_cnn.csv").set_index("model")
    assert int(worst.loc["cnn_ce", "n"]) == 20
    assert float(worst.loc["cnn_ce", "acc_0.03"]) == pytest.approx(10 / 20)     # not 26/40


def test_worst_case_row_n_and_clean_follow_the_cells_not_a_check_subset(tmp_path):
    """AutoAttack on 20 of 40 beats at eps 0.01 and 0.03, a sanity-check run at eps 1 on all 40:
    the worst-case row's n and clean are those of the 20 beats its attack cells lie on, and the
    eps 1 cell (40 beats) is named under the table."""
    a = tmp_path / "attacks"
    wrong_outside_aa = [y if i < 20 else (y + 1) % 5 for i, y in enumerate(i % 5 for i in range(40))]
    for eps in (0.01, 0.03):
        pgd = result("cnn_ce", "ce", "pgd-paper", eps, 20, n=40)
        pgd["clean_pred"] = wrong_outside_aa
        write(a, f"cnn_ce__pgd__eps{eps}.json", pgd)
        write(a, f"cnn_ce__apgd-ce__eps{eps}.json",
              result("cnn_ce", "ce", "apgd-ce", eps, 10, n=20, settings=AA_SETTINGS))
    check = result("cnn_ce", "ce", "pgd-paper", 1.0, 0, n=40, settings={"steps": 20})
    check["clean_pred"] = wrong_outside_aa
    write(a, "cnn_ce__eps1__eps1.json", check)
    assert evaluate.main(["--results-dir", str(tmp_path)]) == 0
    worst = pd.read_csv(tmp_path / "tables" / "worst_cnn.csv").set_index("model")
    assert int(worst.loc["cnn_ce", "n"]) == 20
    assert float(worst.loc["cnn_ce", "clean_acc"]) == pytest.approx(1.0)      # not 20/40
    assert worst.loc["cnn_ce", "n_other"] == "eps 1: 40"
    md = (tmp_path / "tables" / "worst_cnn.md").read_text()
    assert "| CE | 20 |" in md and "eps 1: 40 (CE)" in md


def test_worst_case_counts_a_beat_fooled_at_a_smaller_eps(tmp_path):
    """A beat PGD fooled at eps 0.1 is fooled at eps 0.15 too (the same perturbation is within
    0.15), even where only a weaker SPSA ran at 0.15: the worst case never rises with eps. The
    AutoAttack table (check 9's comparison) stays per eps."""
    a = tmp_path / "attacks"
    write(a, "cnn_ce__pgd__eps0.1.json", result("cnn_ce", "ce", "pgd-paper", 0.1, 5))
    write(a, "cnn_ce__spsa__eps0.15.json", result("cnn_ce", "ce", "spsa", 0.15, 15))
    write(a, "cnn_ce__apgd-ce__eps0.1.json",
          result("cnn_ce", "ce", "apgd-ce", 0.1, 12, settings=AA_SETTINGS))
    write(a, "cnn_ce__apgd-ce__eps0.15.json",
          result("cnn_ce", "ce", "apgd-ce", 0.15, 12, settings=AA_SETTINGS))
    assert evaluate.main(["--results-dir", str(tmp_path)]) == 0
    worst = pd.read_csv(tmp_path / "tables" / "worst_cnn.csv").set_index("model")
    assert float(worst.loc["cnn_ce", "acc_0.1"]) == pytest.approx(5 / 20)
    assert float(worst.loc["cnn_ce", "acc_0.15"]) == pytest.approx(5 / 20)     # not 12/20
    aa = pd.read_csv(tmp_path / "tables" / "autoattack_cnn.csv").set_index("model")
    assert float(aa.loc["cnn_ce", "acc_0.15"]) == pytest.approx(12 / 20)


def test_report_names_attack_subsets_smaller_than_the_protocol(tmp_path):
    """The paper's protocol asks 200 SPSA beats and 500 AutoAttack beats of the CNN: a run on 20
    is named as smaller, so a shrunk subset never passes for the protocol."""
    a = tmp_path / "attacks"
    write(a, "cnn_ce__spsa__eps0.03.json", result("cnn_ce", "ce", "spsa", 0.03, 10))
    write(a, "cnn_ce__apgd-t__eps0.03.json",
          result("cnn_ce", "ce", "apgd-t", 0.03, 10, settings=AA_SETTINGS))
    write(a, "cnn_ce__pgd__eps0.03.json", result("cnn_ce", "ce", "pgd-paper", 0.03, 10))
    assert evaluate.main(["--results-dir", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert ("- cnn spsa: 20 beats (the paper's protocol asks "
            f"{5 * reproduce.PRESETS['paper']['spsa']['per_class']['cnn']}: smaller") in report
    assert "- cnn autoattack: 20 beats (the paper's protocol asks 500: smaller" in report
    assert "cnn pgd-paper" not in report


# --- the report vouches for what it shows (a result matches the checkpoint and data on disk)
def _checkpoint(d, seed, data_sha):
    from models import build_model, save_checkpoint
    torch.manual_seed(seed)
    path = os.path.join(d, "checkpoints", "mlp_ce_s0_best.pt")
    save_checkpoint(path, build_model("mlp"), None, 1,
                    {"method": "ce", "arch": "mlp", "name": "mlp_ce_s0", "seed": 0}, [],
                    data={"sha256": data_sha})
    return path


def _attack(d, ckpt, sample_dir):
    import attack_pgd
    assert attack_pgd.main(["--checkpoint", ckpt, "--sample", "--data-dir", sample_dir,
                            "--max-samples", "25", "--steps", "3", "--eps", "0.03",
                            "--out-dir", os.path.join(d, "attacks"), "--device", "cpu"]) == 0


def test_results_of_a_retrained_checkpoint_are_left_out(sample_dir, tmp_path, capsys):
    from preprocess import data_sha256
    d = str(tmp_path)
    ckpt = _checkpoint(d, 0, data_sha256(sample_dir, True))
    _attack(d, ckpt, sample_dir)
    evaluate.main(["--results-dir", d])
    assert "| CE | 25 |" in open(os.path.join(d, "tables", "pgd_mlp.md")).read()
    capsys.readouterr()
    _checkpoint(d, 1, data_sha256(sample_dir, True))          # retrained under the same name
    evaluate.main(["--results-dir", d])
    out = capsys.readouterr().out
    assert "WARNING: left out" in out and "retrained or replaced" in out
    report = open(os.path.join(d, "report.md")).read()
    assert "MLP: not run." in report and "left out" in report
    evaluate.main(["--results-dir", d, "--keep-stale"])
    assert "| CE STALE | 25 |" in open(os.path.join(d, "tables", "pgd_mlp.md")).read()


def test_results_on_other_data_than_trained_on(sample_dir, tmp_path, capsys):
    d = str(tmp_path)
    ckpt = _checkpoint(d, 0, "0" * 64)                      # trained on other data
    _attack(d, ckpt, sample_dir)
    assert "was trained on other data" in capsys.readouterr().err     # said at attack time
    evaluate.main(["--results-dir", d])
    out = capsys.readouterr().out
    assert "WARNING: left out" in out and "was trained on 000000000000" in out


def test_tables_recompute_metrics_and_refuse_bad_fields(tmp_path, capsys):
    clean_set(str(tmp_path))
    a = os.path.join(str(tmp_path), "attacks")
    path = os.path.join(a, "cnn_ce__pgd__eps0.03.json")
    r = json.load(open(path))
    r["adversarial"]["balanced_accuracy"] = 0.99               # a hand-edited summary
    write(a, "cnn_ce__pgd__eps0.03.json", r)
    bad = dict(r, adv_pred=["x"] * len(r["adv_pred"]))
    write(a, "cnn_ce__bad__eps0.05.json", dict(bad, eps=0.05))
    write(a, "cnn_ce__nan__eps0.05.json", dict(r, eps=float("nan")))
    evaluate.main(["--results-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "cnn_ce__bad__eps0.05.json: adv_pred is not a list of integers" in out
    assert "cnn_ce__nan__eps0.05.json: eps is nan, not a finite number" in out
    table = pd.read_csv(os.path.join(str(tmp_path), "tables", "pgd_cnn.csv"))
    assert table.loc[table["model"] == "cnn_ce", "bacc_0.03"].item() == pytest.approx(0.6)


def test_a_row_is_one_protocol(tmp_path):
    """The paper-PGD row does not take eps 1 from the 20-step sanity-check run: that cell is
    left out of the row and named under the table; the check still sees it."""
    clean_set(str(tmp_path))
    assert evaluate.main(["--results-dir", str(tmp_path)]) == 0
    md = open(os.path.join(str(tmp_path), "tables", "pgd_cnn.md")).read()
    assert "eps 1 |" not in md.splitlines()[2]
    assert "eps 1: steps 20 (row: 100)" in md
    report = open(os.path.join(str(tmp_path), "report.md")).read()
    assert "**PASS** 5." in report


def test_unwritable_report_folder_is_named_and_out_dir_works(tmp_path, capsys):
    clean_set(str(tmp_path))
    (tmp_path / "tables").write_text("a file where the tables folder goes")
    assert evaluate.main(["--results-dir", str(tmp_path)]) == 2
    assert f"cannot write the report under {tmp_path / 'tables'}" in capsys.readouterr().err
    out = tmp_path / "elsewhere"
    assert evaluate.main(["--results-dir", str(tmp_path), "--out-dir", str(out)]) == 0
    assert (out / "report.md").exists() and (out / "tables" / "pgd_cnn.md").exists()


def test_worst_case_combines_only_one_checkpoint_and_data():
    """A run of the same model name from another checkpoint (or other data) never fools a beat
    in the worst case, nor enters check 9."""
    pgd = result("cnn_ce", "ce", "pgd-paper", 0.03, 18)
    other = dict(result("cnn_ce", "ce", "apgd-t", 0.03, 2, settings=AA_SETTINGS),
                 checkpoint_sha256="99" * 32)
    other_data = dict(result("cnn_ce", "ce", "apgd-ce", 0.03, 2, settings=AA_SETTINGS),
                      data_sha256="77" * 32)
    for i, r in enumerate((pgd, other, other_data)):
        r["path"] = f"r{i}.json"
    (w,) = analysis.worst_case([pgd, other, other_data])
    assert w["adversarial"]["accuracy"] == pytest.approx(18 / 20)
    assert w["sources"] == ["r0.json"]
    status, _ = checks.check_autoattack([pgd, other, other_data])
    assert status == "not run"


def test_check7_fails_on_a_worst_case_that_is_not_one(tmp_path):
    """Check 7 passes on the worst case evaluate computes, and FAILS, naming model, eps and the
    run, when a cell counts a beat as robust that a run fooled (at its eps or a smaller one), or
    when an attacked model/eps has no cell."""
    clean_set(str(tmp_path))
    recs, _ = load_results_of(tmp_path)
    worst = analysis.worst_case(recs)
    assert checks.check_worst_case(recs, worst)[0] == "PASS"
    # a cell that forgot the beats the paper's PGD fooled at eps 0.01 (nested into 0.03)
    broken = [dict(w, adv_pred=list(w["labels"])) if (w["model"], w["eps"]) == ("cnn_ce", 0.03)
              else w for w in worst]
    status, detail = checks.check_worst_case(recs, broken)
    assert status == "FAIL" and "cnn_ce eps 0.03:" in detail and "count as robust" in detail
    missing = [w for w in worst if (w["model"], w["eps"]) != ("cnn_nsr_0.3", 0.1)]
    status, detail = checks.check_worst_case(recs, missing)
    assert status == "FAIL" and "cnn_nsr_0.3 eps 0.1: attacked, but no worst-case cell" in detail
    # only one attack at every eps: nothing to take a worst case over
    pgd_only = [r for r in recs if r["attack"] == "pgd-paper" and r["eps"] < 1]
    assert checks.check_worst_case(pgd_only, analysis.worst_case(pgd_only))[0] == "not run"


def load_results_of(d):
    from records import load_results
    return load_results(os.path.join(str(d), "attacks"))


def test_check3_flags_square_beating_the_papers_pgd():
    """Check 3 takes every black-box attack: Square (like SPSA) leaving fewer beats than the
    paper's PGD on the same beats FAILs, naming model, eps and attack; within the margin passes;
    another checkpoint's PGD is not compared."""
    pgd = result("cnn_nsr_0.3", "nsr", "pgd-paper", 0.03, 15)
    weak = result("cnn_nsr_0.3", "nsr", "square", 0.03, 15, settings=AA_SETTINGS)
    strong = result("cnn_nsr_0.3", "nsr", "square", 0.03, 10, settings=AA_SETTINGS)
    assert checks.check_blackbox_vs_pgd([pgd, weak])[0] == "PASS"
    one_beat = result("cnn_nsr_0.3", "nsr", "square", 0.03, 14, settings=AA_SETTINGS)
    assert checks.check_blackbox_vs_pgd([pgd, one_beat])[0] == "PASS"     # 0.05, but one beat
    status, detail = checks.check_blackbox_vs_pgd([pgd, strong])
    assert status == "FAIL" and "cnn_nsr_0.3 eps 0.03: square 0.500 against the paper's PGD " \
                                "0.750 on 20 beats" in detail
    other = dict(strong, checkpoint_sha256="12" * 32)
    assert checks.check_blackbox_vs_pgd([pgd, other])[0] == "not run"


def test_check3_flags_a_transfer_attack_and_check1_ignores_its_eps_order():
    """A transfer attack beating the paper's PGD FAILs check 3 (it never used the model's
    gradients); check 1 does not ask it to fall with eps (its beats are crafted on another
    model), while SAP, which optimises on the model, is held to it."""
    pgd = result("cnn_nsr_0.3", "nsr", "pgd-paper", 0.03, 15)
    tr = {"source": "cnn_ce", "source_sha256": "ab" * 32, "source_attack": "apgd-t"}
    transfer = result("cnn_nsr_0.3", "nsr", "transfer", 0.03, 9, settings=tr)
    status, detail = checks.check_blackbox_vs_pgd([pgd, transfer])
    assert status == "FAIL" and "transfer 0.450" in detail
    up = [transfer, result("cnn_nsr_0.3", "nsr", "transfer", 0.1, 12, settings=tr)]
    assert checks.check_monotone_eps(up)[0] == "not run"
    sap = [result("cnn_nsr_0.3", "nsr", "sap-han", e, c, settings={"variant": "han"})
           for e, c in ((0.03, 9), (0.1, 12))]
    assert checks.check_monotone_eps(sap)[0] == "FAIL"


def test_smooth_worst_case_and_how_each_attack_sees_each_model(tmp_path):
    """The report's smooth threat model (worst case over the SAP variants alone) and the table
    of every attack on the worst case's beats, naming the attacks that beat the paper's PGD."""
    clean_set(tmp_path)
    a = os.path.join(tmp_path, "attacks")
    for m, method in (("cnn_ce", "ce"), ("cnn_nsr_0.3", "nsr")):
        for eps, han, strong in ((0.03, 17, 14), (0.1, 12, 8)):
            write(a, f"{m}__sap-han__eps{eps}.json", result(m, method, "sap-han", eps, han,
                                                             settings={"variant": "han"}))
            write(a, f"{m}__sap-strong__eps{eps}.json", result(
                m, method, "sap-strong", eps, strong, settings={"variant": "strong"}))
    evaluate.evaluate(str(tmp_path))
    smooth = pd.read_csv(tmp_path / "tables" / "smooth_cnn.csv")
    assert smooth.set_index("model").loc["cnn_nsr_0.3", "bacc_0.03"] == pytest.approx(0.7)
    view = pd.read_csv(tmp_path / "tables" / "attack_view_cnn.csv")
    nsr = view[(view["model"] == "cnn_nsr_0.3") & (view["eps"] == 0.03)].iloc[0]
    # the paper's PGD leaves 16 of 20, SAP 17, strong SAP 14: only strong SAP beats PGD by > 0.02
    assert nsr["paper PGD"] == pytest.approx(0.8) and nsr["SAP strong"] == pytest.approx(0.7)
    assert nsr["beat PGD"] == "SAP strong" and nsr["worst case"] == pytest.approx(0.7)
    report = open(tmp_path / "report.md").read()
    assert "## How each attack sees each model" in report and "Smooth threat model" in report


def test_transfer_results_from_a_retrained_source_and_stale_surfaces_are_left_out(
        sample_dir, tmp_path, capsys):
    """A transfer result is vouched for against its source model too, and a loss-surface file
    against its checkpoint: retraining either leaves them out of the report, named."""
    import attack_transfer
    import surface
    from models import build_model, save_checkpoint
    from preprocess import data_sha256
    d = str(tmp_path)
    digest = data_sha256(sample_dir, True)

    def ckpt(name, method, seed):
        torch.manual_seed(seed)
        path = os.path.join(d, "checkpoints", f"{name}_best.pt")
        save_checkpoint(path, build_model("mlp"), None, 1, {"method": method, "arch": "mlp",
                        "name": name, "seed": 0}, [], data={"sha256": digest})
        return path
    src, target = ckpt("mlp_ce_s0", "ce", 0), ckpt("mlp_nsr_0.4_s0", "nsr", 1)
    common = ["--sample", "--data-dir", sample_dir, "--device", "cpu"]
    assert attack_transfer.main(["--checkpoint", target, "--max-samples", "25", "--steps", "2",
                                 "--eps", "0.1", "--out-dir", os.path.join(d, "attacks"),
                                 *common]) == 0
    assert surface.main(["--checkpoint", target, "--grad-per-class", "5", "--out-dir",
                         os.path.join(d, "surface"), *common]) == 0
    evaluate.main(["--results-dir", d])
    assert os.path.exists(os.path.join(d, "tables", "transfer_mlp.md"))
    assert os.path.exists(os.path.join(d, "figures", "surface.png"))
    capsys.readouterr()
    ckpt("mlp_ce_s0", "ce", 5)                               # the source, retrained
    evaluate.main(["--results-dir", d])
    out = capsys.readouterr().out
    assert "WARNING: left out" in out and "its beats were crafted on" in out
    assert "Transfer: APGD-T" not in open(os.path.join(d, "report.md")).read()
    ckpt("mlp_nsr_0.4_s0", "nsr", 6)                         # the target, retrained
    os.remove(os.path.join(d, "figures", "surface.png"))
    evaluate.main(["--results-dir", d])
    assert "mlp_nsr_0.4_s0.json: made from checkpoint" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(d, "figures", "surface.png"))
