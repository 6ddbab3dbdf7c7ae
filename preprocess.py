"""Build the heartbeat tensor cache every other script loads (METHOD.md 1, 1b, 2).

Three sources, one cache format (a dict of float32 X_* (N,187) and int64 Y_* for train/val/test):

    python preprocess.py                          # Kaggle CSVs in ecg/  -> ecg/mitbih_data.pt
    python preprocess.py --wfdb ../shared/data/mitdb
                                                  # rebuild the Kaggle CSVs from raw MIT-BIH
                                                  # records (Kachuee 2018), then as above
    python preprocess.py --sample                 # the small real sample committed in the repo
                                                  #   -> ecg/mitbih_sample.pt
    python preprocess.py --wfdb DIR --make-sample # (maintainers) rewrite that committed sample

The train CSV is split 80/20 into train/validation with numpy.random.RandomState(0); the test
CSV stays as it is. Re-running with unchanged inputs is a no-op unless --force. Bad input stops
with exit code 2 and a message naming the file, row and column; the cache is written to a temp
file and renamed, so nothing half-written is left.

This file is also the data-loading module of the project: `load_cache`, the class-balanced
sampler `balanced_epoch_indices`, `balanced_subset` and `classification_metrics`.
"""
import argparse
import datetime
import hashlib
import os
import sys

import numpy as np
import pandas as pd
import torch
from scipy.signal import resample_poly
from sklearn.model_selection import train_test_split

from models import CLASS_NAMES, N_CLASSES, N_SAMPLES
from utils import HelpFormatter, atomic_write, memo_per_file, progress_bar, run_cli

HERE = os.path.dirname(os.path.abspath(__file__))

# ----------------------------------------------------------------------------- settings
DATA_DIR = "ecg"
TRAIN_CSV = "mitbih_train.csv"
TEST_CSV = "mitbih_test.csv"
CACHE_FILE = "mitbih_data.pt"
SAMPLE_CACHE_FILE = "mitbih_sample.pt"
SAMPLE_NPZ = os.path.join(HERE, "ecg", "sample", "mitbih_sample.npz")  # committed real sample
SPLIT_SEED = 0          # RandomState(0).shuffle of the train rows (METHOD.md 1)
VAL_FRACTION = 0.2      # first int(0.8 n) shuffled rows train, the rest validation
RANGE_TOL = 1e-6        # values may leave [0,1] by this much
# Kachuee 2018 beat extraction (METHOD.md 1)
FS_IN, FS_OUT = 360, 125
RESAMPLE_UP, RESAMPLE_DOWN = 25, 72   # 360 Hz * 25/72 = 125 Hz
WINDOW_S = 10.0                       # nominal period T = median R-R in each 10 s window
PERIOD_FACTOR = 1.2                   # a beat is 1.2 T long from its R peak
WFDB_TEST_FRACTION = 0.2              # stratified 80/20 split of the rebuilt beats
WFDB_SPLIT_SEED = 0
SAMPLE_TRAIN_PER_CLASS = 1500         # --make-sample: beats per class kept from each CSV
SAMPLE_TEST_PER_CLASS = 300
SAMPLE_SEED = 0

KAGGLE_URL = "https://www.kaggle.com/datasets/shayanfazeli/heartbeat"
# AAMI classes from MIT-BIH beat annotation symbols; any other symbol is not a beat.
AAMI = {**dict.fromkeys("NLRej", 0), **dict.fromkeys("aAJS", 1), **dict.fromkeys("VE", 2),
        "F": 3, **dict.fromkeys("/fQ", 4)}


class DataError(Exception):
    """Bad or missing input; the message names the file (and row and column)."""


# ----------------------------------------------------------------------------- CSV reader
def read_beats_csv(path):
    """Read a Kaggle-format CSV (no header; 187 values in [0,1], then the label 0.0..4.0).
    Returns float32 X (N,187) and int64 Y (N,). Raises DataError naming file, row, column
    (rows and columns are 1-based, as in a spreadsheet)."""
    if not os.path.exists(path):
        raise DataError(
            f"{path} not found. Download mitbih_train.csv and mitbih_test.csv from the Kaggle "
            f"'ECG Heartbeat Categorization' dataset ({KAGGLE_URL}) into "
            f"{os.path.dirname(path) or '.'}/, or build them from the raw MIT-BIH records with "
            f"'python preprocess.py --wfdb DIR' (DIR holding PhysioNet's mitdb).")
    with open(path, "rb") as f:
        raw = f.read()
    lines = raw.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(f"{path} is empty: expected rows of {N_SAMPLES} values and a label")
    n_cols = N_SAMPLES + 1
    for i, line in enumerate(lines):
        c = line.count(b",") + 1
        if c != n_cols:
            raise DataError(f"{path} row {i + 1}: {c} columns, expected {n_cols} "
                            f"({N_SAMPLES} samples and the label)")
    try:
        a = pd.read_csv(path, header=None, dtype=np.float64).to_numpy()
    except ValueError:
        a = None
    if a is None or a.shape != (len(lines), n_cols):  # locate the unparsable cell
        for i, line in enumerate(lines):
            for j, tok in enumerate(line.split(b",")):
                try:
                    float(tok)
                except ValueError:
                    raise DataError(f"{path} row {i + 1}, column {j + 1}: "
                                    f"{tok.decode(errors='replace')!r} is not a number") from None
        raise DataError(f"{path}: could not be parsed as {n_cols} numeric columns")
    bad = ~np.isfinite(a)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise DataError(f"{path} row {i + 1}, column {j + 1}: value {a[i, j]} is not finite")
    x, label = a[:, :N_SAMPLES], a[:, N_SAMPLES]
    bad = (x < -RANGE_TOL) | (x > 1 + RANGE_TOL)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise DataError(f"{path} row {i + 1}, column {j + 1}: value {x[i, j]:.6g} is outside "
                        f"[0, 1]")
    bad = (label != np.round(label)) | (label < 0) | (label > N_CLASSES - 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path} row {i + 1}, column {n_cols} (label): {label[i]:g} is not an "
                        f"integer class 0..{N_CLASSES - 1}")
    return np.clip(x, 0, 1).astype(np.float32), label.astype(np.int64)


def write_beats_csv(path, x, y):
    """Kaggle format: no header, 187 values then the label as a float, all as %.18e."""
    rows = np.concatenate([x.astype(np.float64), y.astype(np.float64)[:, None]], axis=1)
    atomic_write(path, lambda tmp: np.savetxt(tmp, rows, fmt="%.18e", delimiter=","))


# ----------------------------------------------------------------------------- WFDB rebuild
# the 48 records of the MIT-BIH Arrhythmia Database (PhysioNet's RECORDS file)
MITDB_RECORDS = ("100 101 102 103 104 105 106 107 108 109 111 112 113 114 115 116 117 118 119 "
                 "121 122 123 124 200 201 202 203 205 207 208 209 210 212 213 214 215 217 219 "
                 "220 221 222 223 228 230 231 232 233 234").split()


def record_names(wfdb_dir, records=None):
    """The records to build from, each checked for its .hea/.dat/.atr: `records` when given,
    else those listed in RECORDS, else the 48 standard ones. A missing one is an error (a subset
    would silently change the class counts): name the ones to use with --records."""
    if not os.path.isdir(wfdb_dir):
        raise DataError(f"--wfdb {wfdb_dir}: no such folder (expected PhysioNet's mitdb records)")
    listing = os.path.join(wfdb_dir, "RECORDS")
    if records:
        names, source = list(records), "--records"
    elif os.path.exists(listing):
        with open(listing) as f:
            names, source = f.read().split(), "RECORDS"
    else:
        names, source = list(MITDB_RECORDS), "the 48 MIT-BIH records (no RECORDS file)"
    if not names:
        raise DataError(f"--wfdb {wfdb_dir}: RECORDS lists no records")
    missing = [f"{n}.{ext}" for n in names for ext in ("hea", "dat", "atr")
               if not os.path.exists(os.path.join(wfdb_dir, f"{n}.{ext}"))]
    if missing:
        raise DataError(f"--wfdb {wfdb_dir}: records of {source} are missing files: "
                        f"{', '.join(missing[:10])}"
                        + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
                        + "; to build from fewer records, name them with --records")
    return names


def extract_beats(signal, ann_samples, ann_symbols):
    """Kachuee et al. 2018 (sec. III-A) on one record, with the reference annotations as R peaks.

    signal: lead MLII at 360 Hz. Returns float32 beats (n,187) and int64 AAMI labels (n,).
    The last beat of a record is dropped (that is what Kaggle's counts show: exactly one beat
    fewer per record than the annotations hold)."""
    sig = resample_poly(signal, RESAMPLE_UP, RESAMPLE_DOWN)
    keep = [(s, AAMI[c]) for s, c in zip(ann_samples, ann_symbols) if c in AAMI][:-1]
    if not keep:
        return np.zeros((0, N_SAMPLES), np.float32), np.zeros(0, np.int64)
    peaks = np.round(np.array([s for s, _ in keep]) * FS_OUT / FS_IN).astype(np.int64)
    labels = np.array([c for _, c in keep], dtype=np.int64)
    window = peaks // int(WINDOW_S * FS_OUT)
    all_rr = np.diff(peaks)
    fallback_t = float(np.median(all_rr)) if len(all_rr) else float(FS_OUT)
    beats = np.zeros((len(peaks), N_SAMPLES), np.float32)
    for w in np.unique(window):
        idx = np.flatnonzero(window == w)
        # nominal period T: median R-R interval of the window (record median if it has 1 beat)
        period = float(np.median(np.diff(peaks[idx]))) if len(idx) > 1 else fallback_t
        length = int(round(PERIOD_FACTOR * period))
        for i in idx:
            b = sig[peaks[i]:peaks[i] + length][:N_SAMPLES]
            lo, hi = b.min(), b.max()
            beats[i, :len(b)] = (b - lo) / (hi - lo) if hi > lo else 0.0
    return beats, labels


def build_from_wfdb(wfdb_dir, records=None):
    """All records -> (X, Y) beats in record order."""
    import wfdb  # imported here: only this path needs it
    names = record_names(wfdb_dir, records)
    print(f"--wfdb {wfdb_dir}: {len(names)} records ({' '.join(names)})")
    xs, ys = [], []
    for name in progress_bar(names, desc="records", unit="rec"):
        path = os.path.join(wfdb_dir, name)
        try:
            rec = wfdb.rdrecord(path, channels=[0])          # channel 0: MLII (METHOD.md 1)
            ann = wfdb.rdann(path, "atr")
        except Exception as e:
            raise DataError(f"--wfdb {wfdb_dir}: record {name} cannot be read "
                            f"({type(e).__name__}: {e})") from None
        if rec.fs != FS_IN:
            raise DataError(f"{path}.hea: sampling rate {rec.fs} Hz, expected {FS_IN}")
        x, y = extract_beats(rec.p_signal[:, 0], ann.sample, ann.symbol)
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def split_wfdb(x, y):
    """80/20 stratified by class with a fixed seed; rows sorted by class as in Kaggle's files."""
    counts = np.bincount(y, minlength=N_CLASSES)
    few = [CLASS_NAMES[c] for c in range(N_CLASSES) if 0 < counts[c] < 2]
    if few:
        raise DataError(f"these records hold a single beat of class {', '.join(few)}: too few "
                        "to split 80/20 by class; use more records")
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=WFDB_TEST_FRACTION,
                                           stratify=y, random_state=WFDB_SPLIT_SEED)
    train_idx = train_idx[np.argsort(y[train_idx], kind="stable")]
    test_idx = test_idx[np.argsort(y[test_idx], kind="stable")]
    return (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])


def wfdb_to_csvs(wfdb_dir, data_dir, records=None):
    x, y = build_from_wfdb(wfdb_dir, records)
    (xtr, ytr), (xte, yte) = split_wfdb(x, y)
    write_beats_csv(os.path.join(data_dir, TRAIN_CSV), xtr, ytr)
    write_beats_csv(os.path.join(data_dir, TEST_CSV), xte, yte)
    return (xtr, ytr), (xte, yte)


# ----------------------------------------------------------------------------- sample
def make_sample(train, test, path=SAMPLE_NPZ):
    """Keep up to SAMPLE_*_PER_CLASS beats per class (seeded), quantised to uint16
    (1/65535 steps, far below the 11-bit ADC resolution; 0 and 1 stay exact)."""
    rng = np.random.RandomState(SAMPLE_SEED)
    out = {}
    for split, (x, y), k in (("train", train, SAMPLE_TRAIN_PER_CLASS),
                             ("test", test, SAMPLE_TEST_PER_CLASS)):
        idx = np.concatenate([np.sort(rng.permutation(np.flatnonzero(y == c))[:k])
                              for c in range(N_CLASSES)])
        out[f"X_{split}"] = np.round(x[idx] * 65535).astype(np.uint16)
        out[f"Y_{split}"] = y[idx].astype(np.uint8)
    atomic_write(path, lambda tmp: np.savez_compressed(open(tmp, "wb"), **out))
    return path


def read_sample(path=SAMPLE_NPZ):
    if not os.path.exists(path):
        raise DataError(f"{path} not found: the committed sample is missing from this checkout "
                        f"(rebuild it with 'python preprocess.py --wfdb DIR --make-sample')")
    with np.load(path) as z:
        return ((z["X_train"].astype(np.float32) / 65535, z["Y_train"].astype(np.int64)),
                (z["X_test"].astype(np.float32) / 65535, z["Y_test"].astype(np.int64)))


# ----------------------------------------------------------------------------- cache
def split_train_val(x, y):
    """METHOD.md 1: RandomState(0).shuffle of the row indices; first int(0.8 n) train, rest val."""
    idx = np.arange(len(y))
    np.random.RandomState(SPLIT_SEED).shuffle(idx)
    n_train = int((1 - VAL_FRACTION) * len(y))
    return (x[idx[:n_train]], y[idx[:n_train]]), (x[idx[n_train:]], y[idx[n_train:]])


def sha256_files(paths):
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def class_counts(y):
    return np.bincount(y, minlength=N_CLASSES).tolist()


def write_cache(path, train, test, meta):
    (xtr, ytr), (xva, yva) = split_train_val(*train)
    xte, yte = test
    cache = {"X_train": torch.from_numpy(np.ascontiguousarray(xtr)),
             "Y_train": torch.from_numpy(ytr), "X_val": torch.from_numpy(np.ascontiguousarray(xva)),
             "Y_val": torch.from_numpy(yva), "X_test": torch.from_numpy(np.ascontiguousarray(xte)),
             "Y_test": torch.from_numpy(yte)}
    meta = dict(meta, rows={k: len(ytr_) for k, ytr_ in (("train", ytr), ("val", yva),
                                                          ("test", yte))},
                class_counts={"train": class_counts(ytr), "val": class_counts(yva),
                              "test": class_counts(yte)},
                split_seed=SPLIT_SEED,
                created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    cache["meta"] = meta
    atomic_write(path, lambda tmp: torch.save(cache, tmp))
    return cache


def cache_path(data_dir=DATA_DIR, sample=False):
    return os.path.join(data_dir, SAMPLE_CACHE_FILE if sample else CACHE_FILE)


def load_cache(data_dir=DATA_DIR, sample=False):
    """The dict written by preprocess.py: X_train/X_val/X_test float32, Y_* int64, meta."""
    path = cache_path(data_dir, sample)
    if not os.path.exists(path):
        cmd = ("python preprocess.py --sample" if sample else
               "python preprocess.py (Kaggle CSVs in ecg/) or python preprocess.py --wfdb DIR")
        if data_dir != DATA_DIR:
            cmd += f" --data-dir {data_dir}"
        raise DataError(f"no data cache at {path}: make it with: {cmd}")
    return read_cache(path)


def read_cache(path):
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:
        raise DataError(f"{path} is truncated or not a cache of this project ({e}); "
                        f"rebuild it with preprocess.py --force") from None


# ----------------------------------------------------------------------------- data identity
# A checkpoint or result names the data it was made from by data_digest: the sha256 of the beats
# and labels of every split. Not the sha256 of the cache file: its bytes change with every
# rebuild (the build time in meta, torch.save's archive name), so a fresh machine rebuilding the
# same beats would refuse every committed result and resume point.
CACHE_TENSORS = ("X_train", "Y_train", "X_val", "Y_val", "X_test", "Y_test")
# What the results and checkpoints committed before the digest recorded (the cache file's sha256)
# -> the digest of the data they were made from. Verified on the rebuild from the 48 MIT-BIH
# records: every committed result's labels, every committed checkpoint's clean predictions on
# the whole test split and its best epoch's validation balanced accuracy are those recorded
# (the slow test tests/test_provenance.py). Nothing committed is rewritten.
LEGACY_DATA_SHA256 = {
    "e44138a70dd6b4c4c0ed9379b6e9cea98c433c8171d2535d993eea93e04446f2":
        "326ce32023145b9d0b0be3254356e3a76c4c5e011d13144a521872fe83bf18be",
}


def data_digest(cache):
    """sha256 of every split's beats and labels (dtype, shape and bytes), in a fixed order."""
    h = hashlib.sha256()
    for k in CACHE_TENSORS:
        t = cache[k].contiguous()
        h.update(f"{k} {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _cache_file_digest(path):
    return data_digest(read_cache(path))


def data_sha256(data_dir=DATA_DIR, sample=False):
    """data_digest of the cache that load_cache(data_dir, sample) reads (memoised per file)."""
    return memo_per_file(_cache_file_digest, cache_path(data_dir, sample))


def canonical_data_sha256(recorded):
    """The data digest a recorded data sha256 stands for (itself, unless a legacy file sha256)."""
    return LEGACY_DATA_SHA256.get(recorded, recorded)


def prepare(data_dir=DATA_DIR, wfdb_dir=None, sample=False, force=False, records=None):
    """Build the cache if its inputs changed. Returns (cache path, built: bool)."""
    os.makedirs(data_dir, exist_ok=True)
    out = cache_path(data_dir, sample)
    if sample:
        inputs, source = [SAMPLE_NPZ], "sample"
    elif wfdb_dir:
        names = record_names(wfdb_dir, records)
        inputs = [os.path.join(wfdb_dir, f"{n}.{e}") for n in names for e in ("hea", "dat", "atr")]
        source = "wfdb"
    else:
        inputs, source = [os.path.join(data_dir, TRAIN_CSV), os.path.join(data_dir, TEST_CSV)], "kaggle"
        for p in inputs:
            if not os.path.exists(p):
                read_beats_csv(p)  # raises the missing-file error with the instructions
    digest = sha256_files(inputs)
    if os.path.exists(out) and not force:
        try:
            meta = torch.load(out, weights_only=True).get("meta", {})
        except Exception:
            meta = {}
        if meta.get("inputs_sha256") == digest and meta.get("source") == source:
            return out, False
    meta = {"source": source, "inputs_sha256": digest,
            "inputs": [os.path.relpath(p, data_dir) for p in inputs[:2]]
            + ([f"... {len(inputs)} files"] if len(inputs) > 2 else [])}
    if sample:
        train, test = read_sample()
    elif wfdb_dir:
        train, test = wfdb_to_csvs(wfdb_dir, data_dir, records)
        # continue exactly as for the Kaggle files: read back what was written
        train = read_beats_csv(os.path.join(data_dir, TRAIN_CSV))
        test = read_beats_csv(os.path.join(data_dir, TEST_CSV))
        meta["csv_sha256"] = sha256_files([os.path.join(data_dir, TRAIN_CSV),
                                           os.path.join(data_dir, TEST_CSV)])
    else:
        train, test = read_beats_csv(inputs[0]), read_beats_csv(inputs[1])
    write_cache(out, train, test, meta)
    return out, True


def summary(cache):
    m = cache["meta"]
    lines = [f"source: {m['source']}  (split seed {m['split_seed']}, created {m['created']})"]
    for split in ("train", "val", "test"):
        counts = " ".join(f"{n} {c}" for n, c in zip("NSVFQ", m["class_counts"][split]))
        lines.append(f"  {split:5s} {m['rows'][split]:7d} beats   {counts}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- sampling, metrics
def balanced_epoch_indices(y, seed, epoch, max_samples=None):
    """METHOD.md 2: every class tiled up to the majority count (each copy in a fresh random order),
    then classes interleaved by a shuffle. Seeded by (seed, epoch), so an epoch is the same
    whether or not the run was resumed. `max_samples` truncates the epoch (quick runs)."""
    y = np.asarray(y)
    rng = np.random.default_rng([seed, epoch])
    per_class = [np.flatnonzero(y == c) for c in range(N_CLASSES)]
    per_class = [p for p in per_class if len(p)]
    target = max(len(p) for p in per_class)
    tiled = []
    for p in per_class:
        reps = -(-target // len(p))
        tiled.append(np.concatenate([rng.permutation(p) for _ in range(reps)])[:target])
    idx = rng.permutation(np.concatenate(tiled))
    return idx[:max_samples] if max_samples else idx


def balanced_subset(y, per_class):
    """The first `per_class` rows of each class in the given order (SPSA's 810 = 5 x 162)."""
    y = np.asarray(y)
    return np.sort(np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(N_CLASSES)]))


def classification_metrics(y_true, y_pred):
    """METHOD.md 2's headline: balanced accuracy (mean per-class sensitivity over the classes
    present in y_true, as sklearn's balanced_accuracy_score), plus the rest, from the confusion
    matrix in numpy (evaluate.py recomputes every stored result's metrics: sklearn's per-call
    overhead made that take a minute; tests/test_data.py checks it equals sklearn)."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} labels but {len(y_pred)} predictions")
    bad = (y_true < 0) | (y_true >= N_CLASSES) | (y_pred < 0) | (y_pred >= N_CLASSES)
    if bad.any():
        raise ValueError(f"labels and predictions must be classes 0-{N_CLASSES - 1}")
    confusion = np.bincount(y_true * N_CLASSES + y_pred,
                            minlength=N_CLASSES * N_CLASSES).reshape(N_CLASSES, N_CLASSES)
    support, predicted, hits = confusion.sum(1), confusion.sum(0), np.diag(confusion)
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = np.where(support > 0, hits / support, 0.0)
        precision = np.where(predicted > 0, hits / predicted, 0.0)
    present = support > 0
    return {
        "balanced_accuracy": float(np.mean(sensitivity[present])) if len(y_true) else float("nan"),
        "accuracy": float(hits.sum() / len(y_true)) if len(y_true) else float("nan"),
        "sensitivity": sensitivity.tolist(),
        "precision": precision.tolist(),
        "confusion": confusion.tolist(),
        "n": int(len(y_true)),
    }


# ----------------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--data-dir", default=DATA_DIR, help="where the CSVs and the cache live")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--wfdb", metavar="DIR", help="rebuild the CSVs from raw MIT-BIH records")
    src.add_argument("--sample", action="store_true", help="use the committed real sample")
    p.add_argument("--records", nargs="+", metavar="NAME",
                   help="with --wfdb: build from these records only (default: RECORDS or all 48)")
    p.add_argument("--make-sample", action="store_true",
                   help="with --wfdb: also rewrite the committed sample "
                        + os.path.relpath(SAMPLE_NPZ, HERE))
    p.add_argument("--force", action="store_true", help="rebuild even if the inputs are unchanged")
    args = p.parse_args(argv)
    if args.make_sample and not args.wfdb:
        p.error("--make-sample needs --wfdb DIR")
    if args.records and not args.wfdb:
        p.error("--records needs --wfdb DIR")
    dup = sorted({r for r in args.records or [] if args.records.count(r) > 1})
    if dup:
        p.error(f"--records names {', '.join(dup)} more than once (a duplicated record would put "
                "copies of its beats in both the training and the test split)")
    try:
        path, built = prepare(args.data_dir, args.wfdb, args.sample, args.force, args.records)
        cache = load_cache(args.data_dir, args.sample)
        if args.make_sample:
            train = read_beats_csv(os.path.join(args.data_dir, TRAIN_CSV))
            test = read_beats_csv(os.path.join(args.data_dir, TEST_CSV))
            print(f"wrote sample {make_sample(train, test)}")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:              # read-only or full data folder
        print(f"error: cannot write to {args.data_dir}: {e}", file=sys.stderr)
        return 2
    print(f"{'wrote' if built else 'up to date (use --force to rebuild):'} {path}")
    print(summary(cache))
    return 0


if __name__ == "__main__":
    run_cli(main)
