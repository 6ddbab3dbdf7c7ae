"""preprocess.py: the Kaggle reader, bad input, the cache, the sampler, the WFDB rebuild."""
import os
import shutil

import numpy as np
import pytest
import torch

import preprocess
from conftest import KAGGLE_ROWS, MITDB, needs_kaggle_rows, needs_mitdb

KAGGLE_COUNTS = {"N": 90589, "S": 2779, "V": 7236, "F": 803, "Q": 8039}


def real_rows():
    """The 20 real Kaggle rows (10 of each file) as text lines."""
    lines = []
    for f in ("mitbih_train_first10.csv", "mitbih_test_first10.csv"):
        with open(os.path.join(KAGGLE_ROWS, f)) as fh:
            lines += fh.read().splitlines()
    return lines


@needs_kaggle_rows
def test_real_kaggle_rows_parse():
    for f in ("mitbih_train_first10.csv", "mitbih_test_first10.csv"):
        x, y = preprocess.read_beats_csv(os.path.join(KAGGLE_ROWS, f))
        assert x.shape == (10, 187) and x.dtype == np.float32
        assert y.dtype == np.int64 and (y == 0).all()
        assert x.min() == 0.0 and x.max() == 1.0


def make_kaggle_dir(tmp_path, train_lines, test_lines=None):
    d = tmp_path / "ecg"
    d.mkdir()
    (d / "mitbih_train.csv").write_text("\n".join(train_lines) + "\n")
    (d / "mitbih_test.csv").write_text("\n".join(test_lines or train_lines) + "\n")
    return d


@needs_kaggle_rows
def test_kaggle_csvs_make_a_cache_and_rerun_is_noop(tmp_path, capsys):
    d = make_kaggle_dir(tmp_path, real_rows())
    assert preprocess.main(["--data-dir", str(d)]) == 0
    cache = torch.load(d / "mitbih_data.pt", weights_only=True)
    assert cache["X_train"].shape == (16, 187) and cache["X_val"].shape == (4, 187)
    assert cache["X_test"].shape == (20, 187) and cache["Y_test"].dtype == torch.int64
    assert cache["meta"]["source"] == "kaggle" and len(cache["meta"]["inputs_sha256"]) == 64
    mtime = os.path.getmtime(d / "mitbih_data.pt")
    capsys.readouterr()
    assert preprocess.main(["--data-dir", str(d)]) == 0
    assert "up to date" in capsys.readouterr().out
    assert os.path.getmtime(d / "mitbih_data.pt") == mtime
    assert preprocess.main(["--data-dir", str(d), "--force"]) == 0
    assert "wrote" in capsys.readouterr().out


def test_split_is_randomstate0_shuffle_80_20():
    x = np.arange(100, dtype=np.float32)[:, None].repeat(187, 1)
    y = np.arange(100) % 5
    (xt, yt), (xv, yv) = preprocess.split_train_val(x, y)
    idx = np.arange(100)
    np.random.RandomState(0).shuffle(idx)
    assert len(yt) == 80 and len(yv) == 20
    assert (xt[:, 0] == idx[:80]).all() and (xv[:, 0] == idx[80:]).all()


# --- bad input: one test per case; exit code 2, the message names file/row/column, no cache
def bad_row(kind):
    row = real_rows()[0].split(",")
    if kind == "columns":
        row = row[:-2]
    elif kind == "nan":
        row[16] = "nan"
    elif kind == "inf":
        row[16] = "inf"
    elif kind == "range":
        row[16] = "1.5"
    elif kind == "label":
        row[-1] = "5.0"
    elif kind == "label_frac":
        row[-1] = "1.5"
    elif kind == "text":
        row[16] = "abc"
    return ",".join(row)


@needs_kaggle_rows
@pytest.mark.parametrize("kind,expect", [
    ("columns", "row 3: 186 columns, expected 188"),
    ("nan", "row 3, column 17: value nan is not finite"),
    ("inf", "row 3, column 17: value inf is not finite"),
    ("range", "row 3, column 17: value 1.5 is outside [0, 1]"),
    ("label", "row 3, column 188 (label): 5 is not an integer class 0..4"),
    ("label_frac", "row 3, column 188 (label): 1.5 is not an integer class 0..4"),
    ("text", "row 3, column 17: 'abc' is not a number"),
])
def test_bad_row_is_named_and_no_cache_written(tmp_path, capsys, kind, expect):
    lines = real_rows()
    lines[2] = bad_row(kind)
    d = make_kaggle_dir(tmp_path, real_rows(), lines)   # the bad row is in the test file
    assert preprocess.main(["--data-dir", str(d)]) == 2
    err = capsys.readouterr().err
    assert "mitbih_test.csv" in err and expect in err, err
    assert sorted(os.listdir(d)) == ["mitbih_test.csv", "mitbih_train.csv"]


def test_missing_file_says_where_to_download(tmp_path, capsys):
    assert preprocess.main(["--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "mitbih_train.csv not found" in err and "kaggle.com" in err and "--wfdb" in err
    assert os.listdir(tmp_path) == []


@needs_kaggle_rows
def test_empty_file(tmp_path, capsys):
    d = make_kaggle_dir(tmp_path, real_rows())
    (d / "mitbih_test.csv").write_text("")
    assert preprocess.main(["--data-dir", str(d)]) == 2
    assert "mitbih_test.csv is empty" in capsys.readouterr().err
    assert not (d / "mitbih_data.pt").exists()


@needs_mitdb
def test_missing_record_files(tmp_path, capsys):
    src = tmp_path / "mitdb"
    src.mkdir()
    for name in ("100", "101"):
        for ext in ("hea", "dat", "atr"):
            shutil.copy(os.path.join(MITDB, f"{name}.{ext}"), src)
    (src / "RECORDS").write_text("100\n101\n")
    os.remove(src / "101.atr")
    out = tmp_path / "out"
    assert preprocess.main(["--wfdb", str(src), "--data-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "records of RECORDS are missing files: 101.atr" in err and str(src) in err
    assert "--records" in err
    assert not os.path.exists(out / "mitbih_data.pt")


@needs_mitdb
def test_wfdb_subset_without_records_file_is_refused(tmp_path, capsys):
    """No RECORDS file and only some records: refused, naming the missing ones; --records
    names the subset to use, and the records used are printed."""
    src = tmp_path / "mitdb"
    src.mkdir()
    for name in ("100", "106", "119"):
        for ext in ("hea", "dat", "atr"):
            shutil.copy(os.path.join(MITDB, f"{name}.{ext}"), src)
    out = tmp_path / "out"
    assert preprocess.main(["--wfdb", str(src), "--data-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the 48 MIT-BIH records (no RECORDS file) are missing files: 101.hea" in err
    assert not os.path.exists(out / "mitbih_data.pt")
    assert preprocess.main(["--wfdb", str(src), "--data-dir", str(out), "--records", "106",
                            "119"]) == 0
    assert "2 records (106 119)" in capsys.readouterr().out
    # record 100 holds a single V beat: too few to split by class, said plainly
    assert preprocess.main(["--wfdb", str(src), "--data-dir", str(out / "b"), "--records",
                            "100"]) == 2
    assert "single beat of class" in capsys.readouterr().err


def test_unwritable_data_folder_exits_2(tmp_path, capsys):
    """A data folder that cannot be created or written (here under a regular file, which
    stops root too): exit 2 with a message, no traceback."""
    (tmp_path / "file").write_text("x")
    assert preprocess.main(["--sample", "--data-dir", str(tmp_path / "file" / "ecg")]) == 2
    assert "cannot write to" in capsys.readouterr().err


def test_no_wfdb_folder(tmp_path, capsys):
    assert preprocess.main(["--wfdb", str(tmp_path / "nope"), "--data-dir", str(tmp_path)]) == 2
    assert "no such folder" in capsys.readouterr().err


# --- the committed sample
def test_sample_cache(sample_cache):
    m = sample_cache["meta"]
    assert m["source"] == "sample"
    for split in ("train", "val", "test"):
        x, y = sample_cache[f"X_{split}"], sample_cache[f"Y_{split}"]
        assert x.dtype == torch.float32 and x.shape[1] == 187 and y.dtype == torch.int64
        assert 0 <= x.min() and x.max() <= 1
        assert set(y.tolist()) == {0, 1, 2, 3, 4}
    # real beats: every row holds an exact 0 and 1 (min-max scaled)
    x = sample_cache["X_test"]
    assert (x.min(1).values == 0).all() and (x.max(1).values == 1).all()
    assert os.path.getsize(preprocess.SAMPLE_NPZ) < 3.2e6


def test_load_cache_missing_names_the_command(tmp_path):
    with pytest.raises(preprocess.DataError, match="python preprocess.py --sample"):
        preprocess.load_cache(str(tmp_path), sample=True)


# --- sampler and metrics
def test_balanced_epoch_indices():
    y = np.array([0] * 50 + [1] * 7 + [2] * 3 + [3] * 20 + [4] * 1)
    idx = preprocess.balanced_epoch_indices(y, seed=0, epoch=0)
    assert len(idx) == 5 * 50
    assert np.bincount(y[idx]).tolist() == [50] * 5
    # each class is tiled: every member appears floor or ceil of target/size times
    counts = np.bincount(idx[y[idx] == 1], minlength=len(y))[50:57]
    assert set(counts.tolist()) <= {7, 8}
    assert (idx == preprocess.balanced_epoch_indices(y, 0, 0)).all()
    assert not (idx == preprocess.balanced_epoch_indices(y, 0, 1)).all()
    assert not (np.sort(y[idx][:50]) == y[idx][:50]).all()   # classes interleaved
    assert len(preprocess.balanced_epoch_indices(y, 0, 0, max_samples=33)) == 33


def test_balanced_subset_takes_first_of_each_class():
    y = np.array([0, 1, 0, 2, 3, 4, 0, 1, 4])
    assert preprocess.balanced_subset(y, 1).tolist() == [0, 1, 3, 4, 5]
    assert preprocess.balanced_subset(y, 2).tolist() == [0, 1, 2, 3, 4, 5, 7, 8]


def test_metrics_balanced_accuracy_is_mean_sensitivity():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 500)
    p = np.where(rng.random(500) < 0.7, y, rng.integers(0, 5, 500))
    m = preprocess.classification_metrics(y, p)
    sens = [(p[y == c] == c).mean() for c in range(5)]
    assert m["balanced_accuracy"] == pytest.approx(np.mean(sens))
    assert m["sensitivity"] == pytest.approx(sens)
    assert m["accuracy"] == pytest.approx((y == p).mean())
    assert np.array(m["confusion"]).sum() == 500


@pytest.mark.parametrize("missing", [[], [3], [1, 3]])
def test_metrics_equal_sklearn(missing):
    """The numpy metrics equal sklearn's, classes absent from the labels or predictions too."""
    from sklearn.metrics import (balanced_accuracy_score, confusion_matrix, precision_score,
                                 recall_score)
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 300)
    y = y[~np.isin(y, missing)]
    p = np.where(rng.random(len(y)) < 0.6, y, rng.integers(0, 5, len(y)))
    m = preprocess.classification_metrics(y, p)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p), abs=1e-15)
    labels = list(range(5))
    assert m["sensitivity"] == pytest.approx(recall_score(y, p, labels=labels, average=None,
                                                          zero_division=0).tolist())
    assert m["precision"] == pytest.approx(precision_score(y, p, labels=labels, average=None,
                                                           zero_division=0).tolist())
    assert m["confusion"] == confusion_matrix(y, p, labels=labels).tolist()
    with pytest.raises(ValueError, match="classes 0-4"):
        preprocess.classification_metrics([0, 1], [0, 7])


# --- the real rebuild from raw records
@pytest.mark.slow
@needs_mitdb
def test_wfdb_rebuild_matches_kaggle(wfdb_dir):
    xtr, ytr = preprocess.read_beats_csv(os.path.join(wfdb_dir, "mitbih_train.csv"))
    xte, yte = preprocess.read_beats_csv(os.path.join(wfdb_dir, "mitbih_test.csv"))
    total = np.bincount(np.concatenate([ytr, yte]), minlength=5)
    for got, (name, want) in zip(total, KAGGLE_COUNTS.items()):
        assert abs(got - want) <= 0.005 * want, (name, got, want)
    for c in range(5):   # stratified 80/20
        n = total[c]
        assert abs((yte == c).sum() - 0.2 * n) <= 1, c
    x = np.concatenate([xtr, xte])
    assert x.shape[1] == 187 and x.min() == 0 and x.max() == 1
    # min-max per beat: an exact 0 and 1 in every row
    assert (x.min(1) == 0).all() and (x.max(1) == 1).all()
    # the row starts at its R peak: for normal beats the first sample is the peak of the QRS
    # (Kaggle: median first value 0.997, 5th percentile 0.37)
    first = xte[yte == 0, 0]
    assert np.median(first) > 0.95 and np.percentile(first, 5) > 0.2
    cache = torch.load(os.path.join(wfdb_dir, "mitbih_data.pt"), weights_only=True)
    assert cache["meta"]["source"] == "wfdb"
    assert len(cache["Y_train"]) + len(cache["Y_val"]) == len(ytr)


@pytest.mark.slow
@needs_mitdb
def test_extract_beats_starts_at_annotated_peak():
    import wfdb
    from scipy.signal import resample_poly
    rec = wfdb.rdrecord(os.path.join(MITDB, "100"), channels=[0])
    ann = wfdb.rdann(os.path.join(MITDB, "100"), "atr")
    beats, labels = preprocess.extract_beats(rec.p_signal[:, 0], ann.sample, ann.symbol)
    n_beats = sum(s in preprocess.AAMI for s in ann.symbol)
    assert len(beats) == n_beats - 1          # the last beat of a record is dropped
    sig = resample_poly(rec.p_signal[:, 0], 25, 72)
    keep = [s for s, c in zip(ann.sample, ann.symbol) if c in preprocess.AAMI][:-1]
    peaks = np.round(np.array(keep) * 125 / 360).astype(int)
    # the first sample of a normal beat is the R peak: the signal's maximum within +-3 samples
    # (24 ms) lies at most one sample (8 ms, the 125 Hz grid) away from it
    offset = [np.argmax(sig[p - 3:p + 4]) - 3 for p in peaks[labels == 0] if p >= 3]
    assert np.mean(np.abs(offset) <= 1) > 0.95
    assert (beats[:, 0] > 0.5).mean() > 0.95
