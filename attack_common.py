"""What every attack script shares: the target (checkpoint + test beats), provenance, result
records and their paths, and the one eps sweep that skips only up-to-date results.

A result belongs to the exact checkpoint and data that made it: every result JSON records the
sha256 of the checkpoint file and the digest of the data (preprocess.data_sha256), the seed and
the attack settings. A script skips a result only when the file parses, is complete, and its
provenance and settings equal the run it would do; otherwise it says why and recomputes.
Results are written through a hidden temp file (`.NAME.json.RANDOM.tmp`, never matched by
`*.json`) and renamed.

Used by attack_pgd.py, attack_spsa.py and attack_autoattack.py; not a script of its own.
"""
import argparse
import glob
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from models import ModelLoadError, load_checkpoint, load_user_model, predict  # noqa: F401
from utils import (HelpFormatter, arg_number, atomic_write, files_sha256, get_device, hold_folder,
                   release_folder, run_info, sha256_file, tune_malloc)
from preprocess import (DATA_DIR, DataError, balanced_subset, cache_path, canonical_data_sha256,
                        classification_metrics, data_sha256, load_cache)

OUT_DIR = "results/attacks"
SEED = 0
RESULT_KIND = "nsr-ecg-attack-result"
# settings that change only speed: a result computed with other values is still valid
SPEED_ONLY = ("batch_size", "chunk_rows")
REQUIRED = ("model", "arch", "attack", "eps", "settings", "clean", "adversarial", "indices",
            "labels", "clean_pred", "adv_pred", "max_linf", "in_range", "checkpoint_sha256",
            "data_sha256")
STALE_TMP_S = 600          # temp files older than this are left-overs of a killed writer


# ----------------------------------------------------------------------------- the target
@torch.no_grad()
def model_id(ckpt, checkpoint):
    """The run name for a run's _best checkpoint (the one every table uses); another file of the
    run is told apart: `{name}_last` for its last checkpoint, else the file's own stem."""
    stem = os.path.splitext(os.path.basename(checkpoint))[0]
    name = ckpt["config"].get("name") or stem
    if stem == f"{name}_best":
        return name
    return f"{name}_last" if stem == name else stem


def load_target(checkpoint, device, data_dir=DATA_DIR, sample=False, per_class=None, user=None):
    """Model, its checkpoint dict and the test beats to attack (the first `per_class` of each
    class, or the whole split), with everything a result records about where they came from.
    `user` = {"name", "model", "weights", "torchscript"}: a model written outside this project
    (models.load_user_model) instead of `checkpoint`; its files' sha256 stand for the
    checkpoint's, its arch is "user"."""
    if user is not None:
        model, files = load_user_model(user.get("model"), user.get("weights"),
                                       user.get("torchscript"), device)
        checkpoint = user.get("torchscript") or user["model"]
        ckpt = {"arch": "user", "config": {"name": user["name"], "method": "user",
                                           "model_files": files}}
        sha = files_sha256(files)
    else:
        model, ckpt = load_checkpoint(checkpoint, device)
        sha = sha256_file(checkpoint)
    cache = load_cache(data_dir, sample)
    digest = data_sha256(data_dir, sample)
    trained_on = (ckpt.get("data") or {}).get("sha256") if user is None else None
    if trained_on and canonical_data_sha256(trained_on) != digest:
        print(f"WARNING: {checkpoint} was trained on other data (digest "
              f"{canonical_data_sha256(trained_on)[:12]}) than it is attacked on "
              f"({cache_path(data_dir, sample)}, digest {digest[:12]}): evaluate.py leaves "
              "such results out", file=sys.stderr)
    y = cache["Y_test"].numpy()
    idx = balanced_subset(y, per_class) if per_class else np.arange(len(y))
    return {"model": model, "ckpt": ckpt, "checkpoint": checkpoint,
            "name": user["name"] if user else model_id(ckpt, checkpoint),
            "x": cache["X_test"][idx].to(device), "y": cache["Y_test"][idx].to(device),
            "idx": idx, "device": device,
            "checkpoint_sha256": sha,
            "data_sha256": digest,
            "data": {"cache": os.path.abspath(cache_path(data_dir, sample)), "sample": sample,
                     "per_class": per_class, "source": cache["meta"]["source"]}}


def count_zero_input_grad(model, x, y, batch_size=4096):
    """Samples whose CE input gradient is exactly zero at the clean input (METHOD.md 7, check 8)."""
    n = 0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xb), y[i:i + batch_size],
                                                   reduction="sum"), xb)
        n += int((g.flatten(1) == 0).all(dim=1).sum())
    return n


# ----------------------------------------------------------------------------- records
class FolderBusy(OSError):
    pass


def result_path(out_dir, name, tag, eps):
    return os.path.join(out_dir, f"{name}__{tag}__eps{eps:g}.json")


EXAMPLE_ATTACKS = ("pgd-paper",)   # results that keep one adversarial beat per class


def examples(target, x_adv):
    """The first beat of each class among the target's beats (the same test beats for every
    model and balanced subset) with its x_adv, for evaluate.py's figure: it draws the beat
    the result measured, never a rerun."""
    y = target["y"].cpu().numpy()
    out = []
    for c in np.unique(y):
        k = int(np.flatnonzero(y == c)[0])
        out.append({"index": int(target["idx"][k]),
                    "x_adv": np.round(x_adv[k].detach().cpu().double().numpy(), 6).tolist()})
    return out


def attack_record(target, x_adv, attack, settings, wall):
    """METHOD.md 5's metrics for one (model, attack, eps), its provenance, and what evaluate.py needs
    (per-beat labels and predictions for the worst case)."""
    model, ckpt, x, y = target["model"], target["ckpt"], target["x"], target["y"]
    clean, adv = predict(model, x), predict(model, x_adv)
    yn = y.cpu().numpy()
    return {
        "kind": RESULT_KIND,
        "model": target["name"],
        "checkpoint": os.path.abspath(target["checkpoint"]),
        "checkpoint_sha256": target["checkpoint_sha256"],
        "data_sha256": target["data_sha256"],
        "arch": ckpt["arch"], "method": ckpt["config"].get("method"),
        "model_config": ckpt["config"],
        "attack": attack, "eps": settings["eps"], "settings": settings,
        "suite": target.get("suite"),
        "clean": classification_metrics(yn, clean.cpu().numpy()),
        "adversarial": classification_metrics(yn, adv.cpu().numpy()),
        "n_attacked": int((clean == y).sum()),
        "n_fooled": int(((clean == y) & (adv != y)).sum()),
        "max_linf": float((x_adv - x).abs().max()) if len(x) else 0.0,
        "in_range": bool(len(x) == 0 or (x_adv.min() >= 0 and x_adv.max() <= 1)),
        "zero_grad_samples": count_zero_input_grad(model, x, y),
        "indices": np.asarray(target["idx"]).tolist(),
        "labels": yn.tolist(),
        "clean_pred": clean.cpu().numpy().tolist(),
        "adv_pred": adv.cpu().numpy().tolist(),
        "wall_s": wall,
        "data": target["data"],
        **({"examples": examples(target, x_adv)} if attack in EXAMPLE_ATTACKS else {}),
        **run_info(target["device"]),
    }


def read_result(path):
    """The parsed result, or raise ValueError saying why it is not a usable result."""
    try:
        with open(path) as f:
            r = json.load(f)
    except (OSError, ValueError) as e:       # JSONDecodeError is a ValueError
        raise ValueError(f"unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(r, dict) or r.get("kind") != RESULT_KIND:
        raise ValueError("not an attack result of this project")
    missing = [k for k in REQUIRED if k not in r]
    if missing:
        raise ValueError(f"incomplete: missing fields {missing}")
    if not isinstance(r["eps"], (int, float)) or isinstance(r["eps"], bool):
        raise ValueError(f"eps is {r['eps']!r}, not a number")
    if not math.isfinite(r["eps"]):
        raise ValueError(f"eps is {r['eps']!r}, not a finite number")
    for key in ("indices", "labels", "clean_pred", "adv_pred"):
        if not isinstance(r[key], list) or not all(type(v) is int for v in r[key]):
            raise ValueError(f"{key} is not a list of integers")
    for key in ("checkpoint_sha256", "data_sha256", "model", "attack"):
        if not isinstance(r[key], str):
            raise ValueError(f"{key} is {r[key]!r}, not a string")
    if not isinstance(r["settings"], dict):
        raise ValueError(f"settings is {r['settings']!r}, not a mapping")
    if not (len(r["indices"]) == len(r["labels"]) == len(r["adv_pred"]) == len(r["clean_pred"])):
        raise ValueError("indices, labels, clean_pred and adv_pred differ in length")
    return r


def core_settings(settings):
    return {k: v for k, v in settings.items() if k not in SPEED_ONLY}


def stale_reason(path, target, settings):
    """None when `path` holds the result this run would compute; else why it must be redone."""
    if not os.path.exists(path):
        return "missing"
    try:
        r = read_result(path)
    except ValueError as e:
        return str(e)
    if r["checkpoint_sha256"] != target["checkpoint_sha256"]:
        return (f"made from another checkpoint (sha256 {r['checkpoint_sha256'][:12]}, "
                f"{target['checkpoint']} is {target['checkpoint_sha256'][:12]})")
    if canonical_data_sha256(r["data_sha256"]) != target["data_sha256"]:
        return f"made from other data (sha256 {r['data_sha256'][:12]} vs {target['data_sha256'][:12]})"
    if core_settings(r["settings"]) != core_settings(settings):
        return f"other settings ({core_settings(r['settings'])} vs {core_settings(settings)})"
    if r["indices"] != np.asarray(target["idx"]).tolist():
        return "made on other beats"
    return None


def clean_stale_temps(out_dir, max_age_s=STALE_TMP_S):
    """Remove temp files a killed writer left behind (old enough not to be in flight)."""
    now = time.time()
    for p in glob.glob(os.path.join(out_dir, ".*.tmp")):
        try:
            if now - os.path.getmtime(p) > max_age_s:
                os.remove(p)
        except OSError:
            pass


def write_result(record, path):
    def dump(tmp):
        with open(tmp, "w") as f:
            json.dump(record, f)
    atomic_write(path, dump)
    return path


def summary_line(record):
    return (f"{record['model']:>18s} {record['attack']:>10s} eps={record['eps']:<5g} "
            f"balanced acc {record['adversarial']['balanced_accuracy']:.4f} "
            f"(clean {record['clean']['balanced_accuracy']:.4f}, n={len(record['labels'])}, "
            f"{record['wall_s']:.1f} s)")


# ----------------------------------------------------------------------------- the sweep
def sweep(target, eps_list, attack, tag, settings_for, run_attack, out_dir=OUT_DIR, force=False,
          shard=None):
    """For each eps: skip an up-to-date result, else attack (run_attack(eps, positions) -> x_adv
    for those beats of the target) and write its record. settings_for(eps) gives the settings
    the result must hold. shard = (i, k, positions_of(i, k)): attack only shard i of k and merge
    the result once every shard is done (shard_result). Returns the result paths."""
    os.makedirs(out_dir, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise PermissionError(f"{out_dir} is not writable")
    busy = hold_folder(out_dir)          # one writer per results folder
    if busy:
        raise FolderBusy(busy)
    try:
        return _sweep(target, eps_list, tag, settings_for, run_attack, attack, out_dir, force,
                      shard)
    finally:
        release_folder(out_dir)


def _sweep(target, eps_list, tag, settings_for, run_attack, attack, out_dir, force, shard):
    clean_stale_temps(out_dir)
    paths = []
    for eps in eps_list:
        settings = settings_for(eps)
        seed = settings.get("seed", SEED)
        path = result_path(out_dir, target["name"], tag + (f"-seed{seed}" if seed != SEED else ""),
                           eps)
        paths.append(path)
        why = "--force" if force else stale_reason(path, target, settings)
        if why is None:
            print(f"up to date, skipped (--force recomputes): {path}")
            continue
        if shard is not None and shard[1] > 1:
            shard_result(target, path, attack, settings, run_attack, eps, shard, force)
            continue
        if why != "missing":
            print(f"recomputing {path}: {why}")
        t0 = time.perf_counter()
        x_adv = run_attack(eps, np.arange(len(target["y"])))
        record = attack_record(target, x_adv, attack, settings, time.perf_counter() - t0)
        write_result(record, path)
        print(summary_line(record))
    return paths


def shard_path(path, i, k):
    folder, base = os.path.split(path)
    return os.path.join(folder, f".{base}.shard{i}of{k}.pt")      # hidden: never a result


def shard_result(target, path, attack, settings, run_attack, eps, shard, force):
    """Attack shard i of k (its beats: positions_of(i, k)), keep its x_adv in a hidden shard
    file with its provenance, and once all k shards of this result exist and match, merge them
    into the one result the unsplit run writes (only the wall time differs: their sum)."""
    i, k, positions_of = shard
    key = {"checkpoint_sha256": target["checkpoint_sha256"], "data_sha256": target["data_sha256"],
           "settings": core_settings(settings), "indices": np.asarray(target["idx"]).tolist()}

    def load(j, say=False):
        if not os.path.exists(shard_path(path, j, k)):
            return None
        try:
            s = torch.load(shard_path(path, j, k), weights_only=True)
            recorded = dict(s["key"], data_sha256=canonical_data_sha256(s["key"]["data_sha256"]))
        except Exception:
            recorded, s = None, None
        if recorded != key:
            if say:
                print(f"shard {j + 1}/{k} of {path} is stale (another checkpoint, data, settings "
                      f"or beats, or unreadable): rerun it with --shard {j + 1}/{k}")
            return None
        return s
    if force or load(i) is None:
        pos = np.asarray(positions_of(i, k))
        t0 = time.perf_counter()
        x_adv = run_attack(eps, pos)[torch.as_tensor(pos, dtype=torch.long)]
        part = {"key": key, "positions": torch.as_tensor(pos, dtype=torch.long),
                "x_adv": x_adv.cpu(), "wall_s": time.perf_counter() - t0}
        atomic_write(shard_path(path, i, k), lambda tmp: torch.save(part, tmp))
        print(f"shard {i + 1}/{k} of {path}: {len(pos)} beats")
    parts = [load(j, say=j != i) for j in range(k)]
    if any(p is None for p in parts):
        return
    x_adv = target["x"].clone()
    for p in parts:
        x_adv[p["positions"].to(x_adv.device)] = p["x_adv"].to(x_adv.device)
    record = attack_record(target, x_adv, attack, settings, sum(p["wall_s"] for p in parts))
    record["shards"] = k
    write_result(record, path)
    print(summary_line(record) + f" (merged from {k} shards)")
    for j in range(k):
        try:
            os.remove(shard_path(path, j, k))
        except OSError:
            pass


def shard_arg(text):
    """--shard I/K (1 <= I <= K): the I-th of K parts of the beats."""
    try:
        i, k = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not I/K") from None
    if not 1 <= i <= k:
        raise argparse.ArgumentTypeError(f"{text}: need 1 <= I <= K")
    return i - 1, k


def run_sweep(*args, **kwargs):
    """sweep() for a script's main: 0, or 2 with a message when the result folder is not
    writable."""
    try:
        sweep(*args, **kwargs)
    except FolderBusy as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write results: {e}", file=sys.stderr)
        return 2
    return 0


# ----------------------------------------------------------------------------- CLI
def eps_arg(text):
    return arg_number(float, 0.0, 1.0)(text)


def add_target_args(p, per_class_default=None):
    p.add_argument("--checkpoint", help="a .pt written by train_*.py")
    p.add_argument("--model", metavar="FILE.py:FUNCTION",
                   help="instead of --checkpoint: a model written outside this project, "
                        "FUNCTION() returns a torch.nn.Module, (N, 187) beats in [0, 1] -> (N, 5) "
                        "logits (benchmark.py)")
    p.add_argument("--weights", help="with --model: a state dict file to load into it")
    p.add_argument("--torchscript", help="instead of --checkpoint: a TorchScript model file")
    p.add_argument("--name", help="with --model/--torchscript: the run name of its results")
    p.add_argument("--data-dir", default=DATA_DIR, help="where preprocess.py put the cache")
    p.add_argument("--sample", action="store_true", help="attack the committed sample's test set")
    p.add_argument("--max-samples", type=arg_number(int, 5), default=None,
                   help="balanced subset: the first N/5 test beats of each class "
                        "(default: the whole test split)" if per_class_default is None else
                        "balanced subset of N beats (N/5 per class); overrides --per-class")
    p.add_argument("--seed", type=arg_number(int, 0), default=SEED, help="attack seed")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out-dir", default=OUT_DIR, help="result folder")
    p.add_argument("--force", action="store_true", help="recompute results that are up to date")
    p.add_argument("--suite", default=None,
                   help="the named attack suite this run belongs to (protocol.PRESETS: reproduce.py "
                        "passes quick or paper, with '+overrides' when flags changed a budget); "
                        "recorded in the result, as AutoAttack records its version")


def open_target(args, per_class=None):
    """load_target from parsed flags; (target, None) or (None, exit code 2) with the message."""
    if args.max_samples:
        per_class = args.max_samples // 5
    given = [f for f in ("checkpoint", "model", "torchscript") if getattr(args, f)]
    if len(given) != 1 or (args.weights and not args.model) \
            or (bool(args.name) != (not args.checkpoint)):
        print("error: give exactly one of --checkpoint, --model FILE.py:FUNCTION [--weights W] "
              "and --torchscript FILE, and --name with --model/--torchscript only", file=sys.stderr)
        return None, 2
    user = None if args.checkpoint else {"name": args.name, "model": args.model,
                                         "weights": args.weights, "torchscript": args.torchscript}
    try:
        return load_target(args.checkpoint, get_device(args.device), args.data_dir, args.sample,
                           per_class, user), None
    except (DataError, ValueError, FileNotFoundError, OSError, ModelLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return None, 2


def open_attack(args, per_class=None):
    """What every attack script does first: open_target from its parsed flags, then the CPU
    allocator tuned for batches of beats. (target, result-name subset tag, None), or
    (None, "", exit code 2) with the message printed."""
    target, rc = open_target(args, per_class)
    if rc:
        return None, "", rc
    target["suite"] = getattr(args, "suite", None)
    tune_malloc()
    return target, (f"-n{len(target['idx'])}" if args.max_samples else ""), None


def parser(description):
    return argparse.ArgumentParser(description=description,
                                   formatter_class=HelpFormatter)
