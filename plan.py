"""What a preset will cost before it runs: reproduce.py's plan (minutes per part for one CPU
worker, and a GPU estimate from counted ops) and the relative cost its task queue sorts by
(dearest first). Estimates only, from results/bench (bench.py) and the epochs that started runs
measured here; nothing here trains or attacks."""
import functools
import json
import os

import numpy as np
import torch

import attack_autoattack
import attack_pgd
import attack_sap
import attack_spsa
import attack_transfer
import training
from protocol import per_arch


BENCH_TRAIN = "results/bench/train.json"


BENCH_ATTACK = "results/bench/attack_{arch}.json"


# CPU throughputs used when results/bench/train.json is absent (measured on 2 cores)
DEFAULT_SPS = {("mlp", m): v for m, v in [("ce", 1.3e5), ("mse", 1.5e5), ("mse_margin", 1.2e5),
               ("jacob", 3.5e4), ("adv", 1.9e4), ("align", 7.7e4), ("nsr", 7.2e4)]}
DEFAULT_SPS.update({("cnn", m): v for m, v in [("ce", 6.2e3), ("mse", 6.7e3),
                    ("mse_margin", 6.7e3), ("jacob", 1.0e3), ("adv", 6.8e2), ("align", 3.2e3),
                    ("nsr", 3.2e3)]})


def throughputs():
    sps = dict(DEFAULT_SPS)
    if os.path.exists(BENCH_TRAIN):
        with open(BENCH_TRAIN) as f:
            for row in json.load(f).get("throughput", []):
                sps[(row["arch"], row["method"])] = row["samples_per_s"]
    return sps


def measured_epoch_s(cfg):
    """(median epoch seconds, epochs done) from cfg's own last checkpoint; None before it
    starts."""
    history = (training.last_checkpoint(cfg) or {}).get("history")
    if not history:
        return None
    return float(np.median([e["seconds"] for e in history])), len(history)


def train_left_minutes(cfgs, per_epoch):
    """Training left: started runs from their own measured epochs; the others from the bench,
    scaled by how much slower than the bench the started runs of that arch were here."""
    left, ratios, todo = 0.0, {}, []
    for cfg in cfgs:
        m = measured_epoch_s(cfg)
        if m is None:
            todo.append(cfg)
            continue
        epoch_s, done = m
        left += max(0, cfg["epochs"] - done) * epoch_s
        bench_epoch_s = train_estimate_s(cfg, per_epoch) / cfg["epochs"]
        ratios.setdefault(cfg["arch"], []).append(epoch_s / bench_epoch_s)
    for cfg in todo:
        left += train_estimate_s(cfg, per_epoch) * float(np.median(ratios.get(cfg["arch"], [1])))
    return left / 60


# attack rates on a 2-core CPU (bench.py attack) when results/bench/attack_{arch}.json is absent:
# paper PGD-100 beats/s, SPSA s per iteration and beat, seconds per beat of each AutoAttack
# component (100 steps), inference forward rows/s (Square's queries)
DEFAULT_ATTACK_RATES = {
    "cnn": {"pgd": 53.0, "spsa": 0.377, "forward": 7.0e3,
            "autoattack": {"apgd-ce": 0.033, "apgd-t": 0.095, "fab-t": 0.21}},
    "mlp": {"pgd": 849.0, "spsa": 0.009, "forward": 7.5e5,
            "autoattack": {"apgd-ce": 0.0018, "apgd-t": 0.0088, "fab-t": 0.022}}}


def attack_rates(arch):
    rates = json.loads(json.dumps(DEFAULT_ATTACK_RATES[arch]))
    path = BENCH_ATTACK.format(arch=arch)
    if os.path.exists(path):
        with open(path) as f:
            b = json.load(f)
        rates["pgd"] = b["pgd"]["ours_samples_per_s"]
        rates["spsa"] = b["spsa"]["batched_s_per_iter_sample"]
        rates["forward"] = b.get("forward", {}).get("rows_per_s", rates["forward"])
        rates["autoattack"].update(b.get("autoattack", {}))
    return rates


def seed_runs(part, seeds):
    """How many of `seeds` an attack part of a preset runs on (its "seeds": "all" or a list)."""
    on = part.get("seeds", "all")
    return len(seeds) if on == "all" else len([s for s in seeds if s in on])


def estimate_attack_minutes(preset, n_test, arch, seeds):
    """An upper bound (no beat leaves early) for the attacks of one arch over `seeds`, for one
    worker on a 2-core CPU, from results/bench/attack_{arch}.json. Returns {attack: minutes}."""
    r = attack_rates(arch)
    runs = functools.partial(seed_runs, seeds=seeds)
    beats = lambda v: per_arch(v, arch) or n_test         # a subset's size, or the whole split
    pgd, sp, aa, sq = (preset[k] for k in ("pgd", "spsa", "autoattack", "square"))
    seconds = {
        "PGD": len(seeds) * len(attack_pgd.EPS_LIST) * beats(pgd["max_samples"])
        * pgd["steps"] / 100 / r["pgd"],
        "SPSA": runs(sp) * len(per_arch(sp["eps"], arch) or attack_spsa.EPS_LIST)
        * 5 * per_arch(sp["per_class"], arch) * sp["steps"] * r["spsa"] * sp["n_dirs"] / 2048,
        "AutoAttack": runs(aa) * len(attack_autoattack.EPS_LIST) * beats(aa["max_samples"])
        * aa["steps"] / 100 * sum(r["autoattack"][a] for a in aa["attacks"]),
        "Square": runs(sq) * len(per_arch(sq["eps"], arch) or attack_autoattack.EPS_LIST)
        * beats(sq["max_samples"]) * sq["n_queries"] / r["forward"]}
    sap, tr = preset.get("sap"), preset.get("transfer")
    if sap:        # gradient steps through the smoothing cost about what PGD's do
        per_beat = sum(sap["init_steps"] + sap["steps"] + (4 * sap["strong_steps"]
                                                           if v == "strong" else 0)
                       for v in sap["variants"])
        seconds["SAP"] = runs(sap) * len(per_arch(sap["eps"], arch) or attack_sap.EPS_LIST) \
            * beats(aa["max_samples"]) * per_beat / 100 / r["pgd"]
    out = {k: len(preset["models"]) * v / 60 for k, v in seconds.items()}
    if tr:         # crafted once per seed on the source model (evaluating is a forward pass)
        out["transfer"] = runs(tr) * len(per_arch(tr["eps"], arch) or attack_transfer.EPS_LIST) \
            * beats(aa["max_samples"]) * tr["steps"] / 100 * r["autoattack"]["apgd-t"] / 60
    return out


# The GPU estimate, not measured (no GPU was lent to this project): eager PyTorch costs about
# GPU_OP_US per aten op on a GPU (Python, dispatch and kernel launch: these models are small
# enough to be launch-bound) plus the op's FLOPs at GPU_TFLOPS (float32). bench.py steps counts
# the ops and FLOPs of each unit of work (results/bench/steps.json).
GPU_OP_US = 6.0


GPU_TFLOPS = 15.0


BENCH_STEPS = "results/bench/steps.json"


GPU_COUNTS = [8, 4, 2, 1]           # numbers of GPUs the plan prints an estimate for


def gpu_task_seconds(preset, cfgs, per_epoch, n_val, n_test, archs, seeds, op_us=GPU_OP_US,
                     tflops=GPU_TFLOPS):
    """Seconds of each task on one GPU, {"train": [...], "attack": [...]}, from the op and FLOP
    counts of bench.py steps; upper bounds (no fooled beat leaves early). The attack tasks are
    the main tables' (paper PGD at every eps, SPSA, AutoAttack, Square, split as the preset
    splits them); noise and the sanity-check runs, a few percent more, are left out."""
    with open(BENCH_STEPS) as f:
        counts = json.load(f)
    train = {(r["arch"], r["method"]): r for r in counts["train"]}
    unit = {(r["arch"], r["attack"]): r for r in counts["attack"]}
    # `calls` launches of the unit's ops, `work` of its full-size FLOPs (a part-filled batch
    # launches as many ops for fewer FLOPs)
    cost = lambda c, calls, work: calls * c["ops"] * op_us * 1e-6 + work * c["flops"] / (tflops * 1e12)
    ceil = lambda a, b: -(-a // b)
    out = {"train": [], "attack": []}
    for cfg in cfgs:
        steps, val = ceil(per_epoch, cfg["batch_size"]), ceil(n_val, 4096)
        out["train"].append(cfg["epochs"] * (
            cost(train[(cfg["arch"], cfg["method"])], steps, per_epoch / cfg["batch_size"])
            + cost(unit[(cfg["arch"], "forward")], val, n_val / 4096)))
    batch = counts["settings"]
    on = functools.partial(seed_runs, seeds=seeds)
    for arch in archs:
        beats = lambda v: per_arch(v, arch) or n_test
        pgd, sp, aa, sq = (preset[k] for k in ("pgd", "spsa", "autoattack", "square"))
        n, models = beats(pgd["max_samples"]), len(preset["models"])
        tasks = [(len(seeds) * len(attack_pgd.EPS_LIST), 1, cost(
            unit[(arch, "pgd")], ceil(n, batch["pgd_batch"]) * pgd["steps"],
            n / batch["pgd_batch"] * pgd["steps"]))]
        n = 5 * per_arch(sp["per_class"], arch)
        k = sp.get("shards", 1)
        tasks.append((on(sp) * len(per_arch(sp["eps"], arch) or attack_spsa.EPS_LIST), k, cost(
            unit[(arch, "spsa")], ceil(n, batch["spsa_batch"]) * sp["steps"],
            n / batch["spsa_batch"] * sp["steps"]) * sp["n_dirs"] / batch["spsa_dirs"]))
        n = beats(aa["max_samples"])
        for a in aa["attacks"]:
            tasks.append((on(aa) * len(attack_autoattack.EPS_LIST), aa.get("shards", 1), cost(
                unit[(arch, a)], ceil(n, batch["aa_batch"]) * aa["steps"] / batch["aa_steps"],
                n / batch["aa_batch"] * aa["steps"] / batch["aa_steps"])))
        n = beats(sq["max_samples"])
        r = sq["n_queries"] / batch["square_queries"]
        tasks.append((on(sq) * len(per_arch(sq["eps"], arch) or attack_autoattack.EPS_LIST),
                      sq.get("shards", 1), cost(unit[(arch, "square")],
                                                ceil(n, batch["aa_batch"]) * r,
                                                n / batch["aa_batch"] * r)))
        for runs, shards, seconds in tasks:
            out["attack"] += [seconds / shards] * (models * runs * shards)
    return out


def makespan(seconds, workers):
    """Wall time of `seconds` handed out longest first, each to the worker free soonest (what
    Workers.run's queue does with a list sorted dearest first). Training and attacks are
    estimated apart, as if a barrier separated them: an upper bound, since the queue lets a
    worker attack trained models while others still train."""
    import heapq
    free = [0.0] * workers
    for s in sorted(seconds, reverse=True):
        heapq.heapreplace(free, free[0] + s)
    return max(free)


def train_estimate_s(cfg, per_epoch):
    """Seconds to train cfg on a 2-core CPU, from results/bench (to hand out the longest first)."""
    return cfg["epochs"] * per_epoch / throughputs()[(cfg["arch"], cfg["method"])]


ATTACK_COST = {"attack_pgd": 1, "attack_spsa": 20, "attack_autoattack": 10, "attack_sap": 3,
               "attack_transfer": 3, "surface": 1}


def attack_estimate(script, arch, attack=None):
    """A relative cost of an attack task, from what it is (CNN ~10x MLP; SPSA and AutoAttack
    dearer than PGD, the targeted components dearer again): the queue hands out the dearest
    first."""
    cost = ATTACK_COST[script] * (10 if arch == "cnn" else 1)
    return cost * (4 if attack in ("fab-t", "apgd-t") else 1)


def print_plan(preset, args, cfgs, workers, per_epoch, n_val, n_test, device, results):
    hours = lambda m: f"{m / 60:.1f} h" if m >= 60 else f"{m:.0f} min"
    train = {arch: train_left_minutes([c for c in cfgs if c["arch"] == arch], per_epoch)
             for arch in args.archs}
    attacks = {arch: estimate_attack_minutes(preset, n_test, arch, args.seeds)
               for arch in args.archs}
    every = len(preset["models"]) * len(args.seeds)
    for arch, parts in attacks.items():      # --runs keeps some of an arch's models
        share = sum(c["arch"] == arch for c in cfgs) / every
        attacks[arch] = {k: v * share for k, v in parts.items()}
    total = sum(train.values()) + sum(sum(a.values()) for a in attacks.values())
    print(f"\nPlan: {len(cfgs)} models ({len(preset['models'])} methods x {len(args.archs)} archs x "
          f"{len(args.seeds)} seeds{', those --runs names' if getattr(args, 'runs', None) else ''}), {preset['epochs']} epochs of {per_epoch} samples, on "
          f"{workers.world} worker(s). Estimated for one worker on a 2-core CPU from "
          f"results/bench, training calibrated by the epochs its started runs measured here "
          f"(attacks: upper bounds, fooled beats stop early):")
    for arch in args.archs:
        print(f"  {arch}: training left {hours(train[arch])}; "
              + ", ".join(f"{k} {hours(v)}" for k, v in attacks[arch].items()))
    print(f"  total at most {hours(total)}. Results under {results}/.")
    gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if gpu and os.path.exists(BENCH_STEPS):
        t = gpu_task_seconds(preset, cfgs, per_epoch, n_val, n_test, args.archs, args.seeds,
                             args.gpu_op_us, args.gpu_tflops)
        print(f"GPU estimate, not measured: {BENCH_STEPS}'s op and FLOP counts at an assumed "
              f"{args.gpu_op_us:g} us per op and {args.gpu_tflops:g} TFLOP/s (upper bounds; "
              "noise and the sanity-check runs add a few percent):")
        for g in GPU_COUNTS:
            tr, at = makespan(t["train"], g) / 60, makespan(t["attack"], g) / 60
            print(f"  {g} GPU{'s' if g > 1 else ''}{' (torchrun)' if g > 1 else ''}: training "
                  f"{hours(tr)}, attacks {hours(at)}, total {hours(tr + at)}")
