"""Reading the attack results (evaluate.py's first step): every complete result JSON, its
metrics recomputed from the per-beat predictions, and each vouched for against the checkpoint
and data now on disk; the training histories in checkpoints/."""
import glob
import os

import torch

from attack_common import read_result
from preprocess import canonical_data_sha256, classification_metrics
from protocol import ARCHS
from utils import sha256_file


def load_results(attack_dir):
    """Every complete result JSON (attack_common.read_result); a corrupt, incomplete or foreign
    one is named and skipped. Hidden temp files (.NAME.tmp) never match *.json."""
    records, skipped = [], []
    for path in sorted(glob.glob(os.path.join(attack_dir, "*.json"))):
        try:
            r = read_result(path)
            # the tables use metrics recomputed from the per-beat labels and predictions, never
            # the stored summary (a hand-edited or stale summary cannot show)
            r["clean"] = classification_metrics(r["labels"], r["clean_pred"])
            r["adversarial"] = classification_metrics(r["labels"], r["adv_pred"])
        except ValueError as e:
            print(f"WARNING: skipped {path}: {e}")
            skipped.append(path)
            continue
        r["path"] = path
        records.append(r)
    return records, skipped


def checkpoint_identity(path):
    """(sha256, data digest it was trained on or None, why it cannot vouch or None)."""
    if not os.path.exists(path):
        return None, None, f"its checkpoint {path} is not on disk"
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        data = (ck.get("data") or {}).get("sha256")
    except Exception as e:
        return None, None, f"its checkpoint {path} does not load ({type(e).__name__})"
    return sha256_file(path), data and canonical_data_sha256(data), None


def vouch(records, ckpt_dir, keep_stale=False):
    """Match every result against the checkpoint now in ckpt_dir under its name: one made from
    a checkpoint since retrained or replaced (other sha256), or on other data than that
    checkpoint was trained on, is left out (keep_stale: kept, its row marked). A result whose
    checkpoint is not on disk (a results folder copied without checkpoints/) is kept and named.
    Returns (records kept, [(path, why)] left out or marked, [(path, why)] unverified)."""
    ids, kept, stale, unverified = {}, [], [], []
    for r in records:
        if r.get("arch") not in ARCHS:       # benchmark.py's outside models: keyed to their files
            kept.append(r)
            continue
        path = os.path.join(ckpt_dir, os.path.basename(str(r.get("checkpoint", ""))))
        if path not in ids:
            ids[path] = checkpoint_identity(path)
        sha, data, why = ids[path]
        if why is not None:
            unverified.append((r["path"], why))
            kept.append(r)
            continue
        if sha != r["checkpoint_sha256"]:
            why = (f"made from checkpoint {r['checkpoint_sha256'][:12]}, but {path} is now "
                   f"{sha[:12]} (retrained or replaced: re-run the attack)")
        elif data is not None and data != canonical_data_sha256(r["data_sha256"]):
            why = (f"made on data {r['data_sha256'][:12]}, but {path} was trained on "
                   f"{data[:12]}")
        elif r["settings"].get("source_sha256"):         # a transfer attack's source model
            src = os.path.join(ckpt_dir, f"{r['settings'].get('source')}_best.pt")
            if src not in ids:
                ids[src] = checkpoint_identity(src)
            if ids[src][2] is None and ids[src][0] != r["settings"]["source_sha256"]:
                why = (f"its beats were crafted on {r['settings']['source_sha256'][:12]}, but "
                       f"the source {src} is now {ids[src][0][:12]} (re-run the attack)")
        if why is None:
            kept.append(r)
            continue
        stale.append((r["path"], why))
        if keep_stale:
            kept.append(dict(r, stale=why))
    return kept, stale, unverified


def load_histories(ckpt_dir):
    rows = []
    for path in sorted(glob.glob(os.path.join(ckpt_dir, "*.pt"))):
        if path.endswith("_best.pt"):
            continue
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
            h = ck["history"]
        except Exception as e:
            print(f"WARNING: skipped checkpoint {path}: {e}")
            continue
        if not h:
            continue
        best = max(h, key=lambda r: r["val_balanced_accuracy"])
        rows.append({"model": ck["config"].get("name", os.path.basename(path)),
                     "arch": ck["arch"], "config": ck["config"], "epochs": len(h),
                     "best_epoch": best["epoch"] + 1, "best_val_bacc": best["val_balanced_accuracy"],
                     "last_val_bacc": h[-1]["val_balanced_accuracy"],
                     "samples_per_epoch": h[-1].get("samples"),
                     "train_s": sum(r.get("seconds", 0) for r in h)})
    return rows


def load_surfaces(results_dir):
    """surface.py's files under results_dir/surface whose checkpoint is the one on disk now:
    (surfaces, [(path, why)] left out)."""
    import json
    kept, stale = [], []
    for path in sorted(glob.glob(os.path.join(results_dir, "surface", "*.json"))):
        try:
            with open(path) as f:
                s = json.load(f)
            ckpt = os.path.join(results_dir, "checkpoints", os.path.basename(s["checkpoint"]))
            sha, _, why = checkpoint_identity(ckpt)
            if why is None and sha != s["checkpoint_sha256"]:
                why = f"made from checkpoint {s['checkpoint_sha256'][:12]}, {ckpt} is now {sha[:12]}"
        except (OSError, ValueError, KeyError, TypeError) as e:
            why = f"unreadable ({type(e).__name__}: {e})"
        if why:
            stale.append((path, why))
        else:
            kept.append(s)
    return kept, stale
