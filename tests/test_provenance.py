"""The data a checkpoint or result was made from is named by the digest of its beats and labels
(preprocess.data_digest), so a rebuilt cache keeps every result and resume point, and any changed
beat or label does not. The slow test checks that the committed paper-protocol runs, which
recorded the old cache file's sha256, were made from exactly the data a rebuild gives."""
import glob
import json
import os

import numpy as np
import pytest
import torch

import preprocess
from conftest import ROOT, needs_mitdb
from attack_common import predict
from models import load_checkpoint
from utils import sha256_file

PAPER = os.path.join(ROOT, "results", "paper")


def rebuilt_copy(src_dir, dst_dir, change=None):
    """dst_dir's cache: src_dir's sample cache written anew (new build time and archive name),
    with change(cache) applied first."""
    cache = preprocess.load_cache(src_dir, sample=True)
    if change:
        change(cache)
    os.makedirs(dst_dir, exist_ok=True)
    meta = {k: cache["meta"][k] for k in ("source", "inputs_sha256", "inputs")}
    # write_cache re-splits train+val with the fixed seed: undo the split first
    shuffled_x = torch.cat([cache["X_train"], cache["X_val"]]).numpy()
    shuffled_y = torch.cat([cache["Y_train"], cache["Y_val"]]).numpy()
    idx = np.arange(len(shuffled_y))
    np.random.RandomState(preprocess.SPLIT_SEED).shuffle(idx)
    x, y = np.empty_like(shuffled_x), np.empty_like(shuffled_y)
    x[idx], y[idx] = shuffled_x, shuffled_y
    preprocess.write_cache(preprocess.cache_path(dst_dir, sample=True), (x, y),
                           (cache["X_test"].numpy(), cache["Y_test"].numpy()), meta)


def test_rebuilt_cache_keeps_its_digest_and_any_change_breaks_it(sample_dir, tmp_path):
    same, label, beat = (str(tmp_path / n) for n in ("same", "label", "beat"))
    rebuilt_copy(sample_dir, same)
    rebuilt_copy(sample_dir, label, lambda c: c["Y_test"].__setitem__(3, (c["Y_test"][3] + 1) % 5))
    rebuilt_copy(sample_dir, beat, lambda c: c["X_train"].__setitem__((7, 100), 0.5))
    path = preprocess.cache_path(sample_dir, sample=True)
    # the file's bytes differ (archive name, build time), the data do not
    assert sha256_file(preprocess.cache_path(same, sample=True)) != sha256_file(path)
    digest = preprocess.data_sha256(sample_dir, sample=True)
    assert preprocess.data_sha256(same, sample=True) == digest
    assert preprocess.data_sha256(label, sample=True) != digest
    assert preprocess.data_sha256(beat, sample=True) != digest


def test_rebuilt_cache_keeps_results_and_resume_a_changed_label_does_not(sample_dir, tmp_path,
                                                                          capsys):
    import attack_pgd
    import train_baseline
    data, out = str(tmp_path / "data"), str(tmp_path / "out")
    rebuilt_copy(sample_dir, data)
    train = ["--arch", "mlp", "--method", "ce", "--sample", "--data-dir", data, "--device", "cpu",
             "--max-train-samples", "128", "--out-dir", out]
    assert train_baseline.main(train + ["--epochs", "1"]) == 0
    ckpt = os.path.join(out, "mlp_ce_n128_s0_best.pt")
    attack = ["--checkpoint", ckpt, "--sample", "--data-dir", data, "--device", "cpu",
              "--max-samples", "10", "--steps", "2", "--eps", "0.01", "--out-dir", out]
    assert attack_pgd.main(attack) == 0
    capsys.readouterr()

    rebuilt_copy(sample_dir, data)              # the same beats, a new file
    assert attack_pgd.main(attack) == 0
    assert "up to date, skipped" in capsys.readouterr().out
    assert train_baseline.main(train + ["--epochs", "2", "--resume"]) == 0
    assert "resuming mlp_ce_n128_s0 after epoch 1/2" in capsys.readouterr().out
    assert attack_pgd.main(attack) == 0         # up to date with the (maybe new) best epoch

    rebuilt_copy(sample_dir, data, lambda c: c["Y_val"].__setitem__(0, (c["Y_val"][0] + 1) % 5))
    assert train_baseline.main(train + ["--epochs", "3", "--resume"]) == 2
    assert "was trained on other data" in capsys.readouterr().err
    assert attack_pgd.main(attack) == 0
    assert "made from other data" in capsys.readouterr().out


def test_legacy_file_sha256_stands_for_its_digest_only():
    (old, new), = preprocess.LEGACY_DATA_SHA256.items()
    assert preprocess.canonical_data_sha256(old) == new
    assert preprocess.canonical_data_sha256(new) == new
    assert preprocess.canonical_data_sha256("ab" * 32) == "ab" * 32


def whole_split_result(model):
    """Any committed result of `model` on the whole test split (they all record its clean
    predictions there)."""
    for path in sorted(glob.glob(os.path.join(PAPER, "attacks", f"{model}__pgd-paper-ce-*.json"))):
        with open(path) as f:
            r = json.load(f)
        if r["data"]["per_class"] is None:
            return r
    return None


@pytest.mark.slow
@needs_mitdb
def test_committed_paper_runs_were_made_from_the_rebuilt_data(wfdb_dir):
    if not os.path.isdir(os.path.join(PAPER, "attacks")):
        pytest.skip(f"no committed paper-protocol results at {PAPER}")
    digest = preprocess.data_sha256(wfdb_dir)
    cache = preprocess.load_cache(wfdb_dir)
    y_test = cache["Y_test"].numpy()
    legacy = {old for old, new in preprocess.LEGACY_DATA_SHA256.items() if new == digest}
    assert legacy, f"no legacy cache sha256 maps to the rebuilt data's digest {digest}"
    n_results = 0
    for path in glob.glob(os.path.join(PAPER, "attacks", "*.json")):
        with open(path) as f:
            r = json.load(f)
        assert preprocess.canonical_data_sha256(r["data_sha256"]) == digest, path
        assert np.array_equal(y_test[r["indices"]], r["labels"]), path
        n_results += 1
    n_checkpoints = 0
    for path in sorted(glob.glob(os.path.join(PAPER, "checkpoints", "*_best.pt"))):
        model, ckpt = load_checkpoint(path)
        assert preprocess.canonical_data_sha256(ckpt["data"]["sha256"]) == digest, path
        best = max(ckpt["history"], key=lambda h: h["val_balanced_accuracy"])
        val = preprocess.classification_metrics(cache["Y_val"].numpy(),
                                                predict(model, cache["X_val"]).numpy())
        assert val["balanced_accuracy"] == pytest.approx(best["val_balanced_accuracy"], abs=1e-9)
        r = whole_split_result(ckpt["config"]["name"])
        if r is not None and r["checkpoint_sha256"] == sha256_file(path):
            assert np.array_equal(predict(model, cache["X_test"]).numpy(), r["clean_pred"]), path
            n_checkpoints += 1
    assert n_results > 0 and n_checkpoints > 0
