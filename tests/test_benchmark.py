"""benchmark.py: an outside model checked, attacked by the paper preset's suite (tiny budgets
here) and ranked beside the committed rows of results/paper."""
import glob
import json
import os
import re

import pytest
import torch
import torch.nn.functional as F

import benchmark
from attack_common import read_result
import analysis
from conftest import ROOT

MODELS = os.path.join(ROOT, "tests", "bench_models.py")
TINY = ["--quick", "--pgd-steps", "5", "--aa-steps", "3", "--square-queries", "20",
        "--spsa-steps", "2", "--spsa-dirs", "8", "--spsa-per-class", "2", "--sap-steps", "2",
        "--device", "cpu"]


def load(fn):
    from models import load_user_model
    return load_user_model(f"{MODELS}:{fn}")[0]


@pytest.fixture(scope="module")
def beats(sample_cache):
    return sample_cache["X_test"][::30][:40]


@pytest.fixture(scope="module")
def weights(sample_cache, tmp_path_factory):
    """The plain model trained 300 steps on the sample's training beats, saved as a state dict
    the way a user would (torch.save(model.state_dict()))."""
    model = load("plain")
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    g = torch.Generator().manual_seed(0)
    x, y = sample_cache["X_train"], sample_cache["Y_train"]
    for _ in range(300):
        i = torch.randint(0, len(y), (128,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x[i]), y[i]).backward()
        opt.step()
    path = tmp_path_factory.mktemp("w") / "plain.pt"
    torch.save(model.state_dict(), path)
    return str(path)


def test_plain_model_passes_the_checks(beats):
    assert benchmark.check_model(load("plain").eval(), beats) == []


@pytest.mark.parametrize("fn, words", [("softmax", "probabilities"),
                                       ("stochastic", "randomised defence")])
def test_doubtful_models_get_a_warning(fn, words, beats):
    warnings = benchmark.check_model(load(fn).eval(), beats)
    assert len(warnings) == 1 and words in warnings[0]


@pytest.mark.parametrize("fn, words", [("wrong_shape", r"shape \(40, 4\) for 40 beats"),
                                       ("in_place", "changes its input"),
                                       ("detached", "no gradient")])
def test_broken_models_are_refused(fn, words, beats):
    with pytest.raises(benchmark.ModelCheckError, match=words):
        benchmark.check_model(load(fn).eval(), beats)


@pytest.mark.parametrize("spec, words", [
    ("missing.py:build", "does not exist"),
    ("{models}:nope", "has no function 'nope'"),
    ("{models}:not_a_module", "returned str, not a torch.nn.Module"),
    ("{broken}:build", "does not import (line 2): NameError")])
def test_bad_model_files_name_the_file(spec, words, sample_dir, tmp_path, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\nx = undefined_name\n")
    spec = spec.format(models=MODELS, broken=broken)
    rc = benchmark.main(["--model", spec, "--data-dir", sample_dir, "--sample",
                         "--out-dir", str(tmp_path), "--dry-run", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and words in err, err
    assert not glob.glob(str(tmp_path / "*" / "*"))          # nothing written


def test_wrong_shape_exits_2_before_any_attack(sample_dir, tmp_path, capsys):
    rc = benchmark.main(["--model", f"{MODELS}:wrong_shape", "--data-dir", sample_dir,
                         "--sample", "--out-dir", str(tmp_path), *TINY])
    assert rc == 2 and re.search(r"expected \(\d+, 5\) logits", capsys.readouterr().err)
    assert not glob.glob(str(tmp_path / "**" / "*.json"), recursive=True)


def test_weights_that_do_not_fit(sample_dir, tmp_path, capsys):
    w = tmp_path / "w.pt"
    torch.save({"state_dict": load("wrong_shape").state_dict()}, w)
    rc = benchmark.main(["--model", f"{MODELS}:plain", "--weights", str(w), "--data-dir",
                         sample_dir, "--sample", "--dry-run", "--device", "cpu"])
    assert rc == 2 and f"--weights {w} does not fit" in capsys.readouterr().err


def test_benchmark_end_to_end_resumes_and_ranks(weights, sample_dir, tmp_path, capsys):
    """One command: results in the project's format with the model files' sha256, a
    leaderboard with the model's row, a rerun that recomputes nothing."""
    argv = ["--model", f"{MODELS}:plain", "--weights", weights, "--name", "tiny",
            "--data-dir", sample_dir, "--sample", "--out-dir", str(tmp_path), *TINY]
    assert benchmark.main(argv) == 0
    out = capsys.readouterr().out
    assert "expected at most" in out and "| **tiny** (yours) |" in out
    # the committed rows are on the full data, this run on the sample: left out, said so
    assert "made on other data" in out
    results = glob.glob(str(tmp_path / "tiny" / "quick" / "attacks" / "*.json"))
    kinds = {json.load(open(p))["attack"] for p in results}
    assert {"pgd-paper", "pgd-sign", "apgd-ce", "apgd-t", "fab-t", "square", "spsa",
            "noise"} <= kinds
    r = json.load(open(results[0]))
    files = r["model_config"]["model_files"]
    assert {os.path.basename(f) for f in files} == {"bench_models.py", "plain.pt"}
    summary = json.load(open(tmp_path / "tiny" / "quick" / "benchmark.json"))
    assert summary["row"]["model"] == "**tiny** (yours)"
    assert 0 <= summary["row"]["worst_0.03"] <= summary["row"]["pgd_0.03"] + 1e-9
    assert os.path.getsize(tmp_path / "tiny" / "quick" / "leaderboard.png") > 0
    stamps = {p: os.stat(p).st_mtime_ns for p in results}
    assert benchmark.main(argv) == 0                        # resumes: every result up to date
    rerun = capsys.readouterr().out
    assert "up to date, skipped" in rerun and " balanced acc " not in rerun
    assert {p: os.stat(p).st_mtime_ns for p in results} == stamps


def test_dry_run_writes_nothing(weights, sample_dir, tmp_path, capsys):
    rc = benchmark.main(["--model", f"{MODELS}:plain", "--weights", weights, "--data-dir",
                         sample_dir, "--sample", "--out-dir", str(tmp_path), "--dry-run",
                         "--device", "cpu"])
    assert rc == 0 and "expected at most" in capsys.readouterr().out
    assert os.listdir(tmp_path) == []


def test_leaderboard_ranks_a_committed_model_as_its_own_row():
    """A committed MLP model entered as the user's: its row equals evaluate's worst case for
    it, and the rows are sorted by worst case at eps 0.03."""
    paths = glob.glob(os.path.join(ROOT, "results", "paper", "attacks", "mlp_nsr_0.4_s0__*.json"))
    if not paths:
        pytest.skip("results/paper not present")
    records = [dict(read_result(p), path=p) for p in paths]
    mine = [dict(r, model="mine", arch="user") for r in records]
    others = [r for r in records]
    df = benchmark.leaderboard(mine, others, "mine", 0.9)
    want = {w["eps"]: w["adversarial"]["balanced_accuracy"]
            for w in analysis.worst_case(records)}
    row = df[df["arch"] == "yours"].iloc[0]
    assert row["worst_0.03"] == pytest.approx(want[0.03])
    assert row["worst_0.03"] == pytest.approx(df[df["arch"] == "mlp"].iloc[0]["worst_0.03"])
    col = df["worst_0.03"].tolist()
    assert col == sorted(col, reverse=True)
    assert df.attrs["same_beats"]


def test_torchscript_model_is_the_same_model(weights, sample_dir, tmp_path, capsys):
    """--torchscript loads a scripted copy: same checks, same clean accuracy as --model."""
    model = load("plain")
    model.load_state_dict(torch.load(weights))
    ts = tmp_path / "plain_ts.pt"
    torch.jit.script(model.eval()).save(str(ts))
    common = ["--data-dir", sample_dir, "--sample", "--out-dir", str(tmp_path), "--dry-run",
              "--device", "cpu"]
    assert benchmark.main(["--torchscript", str(ts), *common]) == 0
    a = re.search(r"clean balanced accuracy (\S+)", capsys.readouterr().out).group(1)
    assert benchmark.main(["--model", f"{MODELS}:plain", "--weights", weights, *common]) == 0
    b = re.search(r"clean balanced accuracy (\S+)", capsys.readouterr().out).group(1)
    assert a == b


def test_attack_scripts_take_an_outside_model(weights, sample_dir, tmp_path, capsys):
    """attack_pgd.py --model/--weights/--name writes a result named after --name, keyed to the
    sha256 of both files; a wrong combination of flags exits 2 saying what to give."""
    import attack_pgd
    from utils import sha256_file
    base = ["--data-dir", sample_dir, "--sample", "--max-samples", "25", "--steps", "3",
            "--eps", "0.03", "--out-dir", str(tmp_path), "--device", "cpu"]
    assert attack_pgd.main(["--model", f"{MODELS}:plain", "--weights", weights, "--name",
                            "mine", *base]) == 0
    (path,) = glob.glob(str(tmp_path / "mine__*.json"))
    r = json.load(open(path))
    assert r["model"] == "mine" and r["arch"] == "user"
    assert set(r["model_config"]["model_files"].values()) == {sha256_file(weights),
                                                              sha256_file(MODELS)}
    capsys.readouterr()
    assert attack_pgd.main(["--model", f"{MODELS}:plain", *base]) == 2      # no --name
    assert attack_pgd.main(["--weights", weights, "--name", "x", *base]) == 2
    assert "give exactly one of --checkpoint" in capsys.readouterr().err


def test_a_project_checkpoint_under_another_name(sample_dir, tmp_path, capsys):
    """--checkpoint with --name: the results keep the checkpoint's run name, the row takes
    --name."""
    from models import build_model, save_checkpoint
    from preprocess import data_sha256
    ckpt = tmp_path / "mlp_ce_s0_best.pt"
    torch.manual_seed(0)
    save_checkpoint(str(ckpt), build_model("mlp"), None, 1,
                    {"method": "ce", "arch": "mlp", "name": "mlp_ce_s0"}, [],
                    data={"sha256": data_sha256(sample_dir, True)})
    assert benchmark.main(["--checkpoint", str(ckpt), "--name", "renamed", "--data-dir",
                           sample_dir, "--sample", "--out-dir", str(tmp_path / "out"),
                           "--attacks", "pgd", "noise", *TINY]) == 0
    assert "| **renamed** (yours) |" in capsys.readouterr().out
