"""Speed benchmarks; figures go to results/bench/{train,attack_mlp,attack_cnn,steps}.json, .md.

    python bench.py train     # training samples/s per (arch, method); vectorised NSR step vs
                              # the reference's per-class loop (same batch, same run)
    python bench.py attack    # per arch: paper PGD-100 samples/s; batched SPSA vs the per-sample
                              # loop; APGD-CE/-T, FAB-T and forward rates (reproduce.py's plan
                              # estimate reads them)
    python bench.py steps     # aten ops and FLOPs of a training step, a PGD step, an SPSA
                              # iteration, an AutoAttack call (reproduce.py's GPU estimate)

Every figure is the median of several timed repeats after a warm-up. Runs on the committed real
sample (or --data-dir/--no-sample for the full cache).
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

import protocol
from models import build_model
from utils import (HelpFormatter, arg_number, atomic_write, get_device, run_cli, run_info,
                   set_seed, tune_malloc)
from preprocess import DATA_DIR, balanced_epoch_indices, balanced_subset, load_cache

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "tests"))
import oracles  # noqa: E402  (the straightforward implementations: the baselines here)

OUT_DIR = "results/bench"
PGD_COMPARE = 100         # beats both PGD implementations attack
REPEATS = 5
TRAIN_STEPS = 10           # steps per timed repeat
BATCH_SIZE = 128
PGD_SAMPLES = 500
SPSA_SAMPLES = 20
SPSA_ITERS = 3
SEED = 0


def median_time(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def write(name, record, table):
    os.makedirs(OUT_DIR, exist_ok=True)
    path = os.path.join(OUT_DIR, name)
    atomic_write(path + ".json", lambda t: json.dump(record, open(t, "w"), indent=1))
    atomic_write(path + ".md", lambda t: open(t, "w").write(table))
    print(table)
    print(f"wrote {path}.json and {path}.md")


# ----------------------------------------------------------------------------- train
def pretrained(arch, x, y, device, steps=300):
    """A model trained briefly with CE (MSE + margin + NSR only act on correct samples, so an
    untrained model would time a mostly empty regulariser)."""
    set_seed(SEED)
    model = build_model(arch).to(device)
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)
    for i in range(steps):
        j = (i * BATCH_SIZE) % len(x)
        opt.zero_grad()
        F.cross_entropy(model(x[j:j + BATCH_SIZE]), y[j:j + BATCH_SIZE]).backward()
        opt.step()
    return model


TRAIN_METHODS = protocol.METHODS         # each at the paper's settings (protocol.paper_config)


def train_setup(arch, method, device):
    """(model, optimizer, cfg, objective, generator) of one training method at the paper's
    settings, seeded."""
    import train_baseline
    import train_nsr
    cfg = protocol.paper_config(arch, method)
    objective = train_nsr.nsr_objective if method in train_nsr.METHODS \
        else train_baseline.baseline_objective
    set_seed(SEED)
    model = build_model(arch, bias=cfg["bias"]).to(device)
    opt = torch.optim.Adamax(model.parameters(), lr=cfg["lr"])
    return model, opt, cfg, objective, torch.Generator(device=device).manual_seed(SEED)


def train_throughput(archs, batches, device, repeats):
    """Samples per second of a training step of every method, at the paper's settings."""
    import training
    rows, n = [], sum(len(y) for _, y in batches)
    for arch in archs:
        for method in TRAIN_METHODS:
            model, opt, cfg, objective, gen = train_setup(arch, method, device)

            def run_steps():
                for x, y in batches:
                    training.train_step(model, opt, x, y, cfg, objective, gen)
            med, _ = median_time(run_steps, repeats)
            sps = n / med
            rows.append({"arch": arch, "method": method, "samples_per_s": sps,
                         "epoch_min_full_data": 5 * 57976 / sps / 60})
            print(f"{arch:4s} {method:11s} {sps:8.0f} samples/s")
    return rows


def nsr_step_ratio(arch, model, x, y, repeats):
    """The vectorised NSR step against the per-class loop (and a CE step), interleaved in one
    run on a briefly trained model, after checking both give the same loss."""
    import train_nsr
    cfg = protocol.paper_config(arch, "nsr")
    beta = cfg["beta"]
    correct_frac = float((model(x).argmax(1) == y).float().mean())
    a = train_nsr.nsr_objective(model, x, y, cfg)[0].item()
    b = oracles.nsr_step_per_class_loop(model, x, y, beta).item()
    assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), (a, b)

    def vectorised():
        model.zero_grad()
        train_nsr.nsr_objective(model, x, y, cfg)[0].backward()

    def loop():
        model.zero_grad()
        oracles.nsr_step_per_class_loop(model, x, y, beta).backward()

    def ce_step():
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
    tv, tl, tc = [], [], []
    for fn in (vectorised, loop, ce_step):
        fn()    # warm-up
    for _ in range(repeats * 4):        # interleaved: drift hits all three alike
        for fn, acc in ((vectorised, tv), (loop, tl), (ce_step, tc)):
            t0 = time.perf_counter()
            for _ in range(5):
                fn()
            acc.append((time.perf_counter() - t0) / 5)
    mv, ml, mc = map(statistics.median, (tv, tl, tc))
    print(f"{arch} NSR step ({correct_frac:.0%} of the batch correct): vectorised "
          f"{mv * 1e3:.1f} ms, per-class loop {ml * 1e3:.1f} ms -> {ml / mv:.2f}x "
          f"(CE step {mc * 1e3:.1f} ms)")
    return {"arch": arch, "vectorised_ms": mv * 1e3, "per_class_loop_ms": ml * 1e3,
            "ce_step_ms": mc * 1e3, "speedup": ml / mv, "ce_over_nsr": mc / mv,
            "loss_vectorised": a, "loss_loop": b, "correct_fraction": correct_frac}


def train_markdown(record, rows, ratio_rows, repeats):
    lines = ["# Training throughput (CPU unless stated)", "",
             f"{record['device']}, torch {record['torch']}, {torch.get_num_threads()} threads, "
             f"batch {BATCH_SIZE}, median of {repeats} repeats of {TRAIN_STEPS} steps on real "
             "beats (committed sample).", "",
             "| arch | method | samples/s | min per paper epoch (5 x 57,976) |", "|---|---|---:|---:|"]
    lines += [f"| {r['arch']} | {r['method']} | {r['samples_per_s']:.0f} | "
              f"{r['epoch_min_full_data']:.1f} |" for r in rows]
    lines += ["", "## NSR step (MSE + margin + beta*NSR, forward and backward, batch 128)", "",
              "Timed on a model trained briefly with CE, so that most of the batch is correctly "
              "classified as in training (the regulariser only acts on correct samples).", "",
              "| arch | correct | vectorised (ms) | per-class loop (ms) | speedup | CE step (ms) | CE / NSR |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['arch']} | {r['correct_fraction']:.0%} | {r['vectorised_ms']:.1f} | {r['per_class_loop_ms']:.1f} | "
              f"{r['speedup']:.2f}x | {r['ce_step_ms']:.1f} | {r['ce_over_nsr']:.2f} |"
              for r in ratio_rows]
    return "\n".join(lines) + "\n"


def bench_train(args):
    device = get_device(args.device)
    data = load_cache(args.data_dir, not args.no_sample)
    y_np = data["Y_train"].numpy()
    idx = torch.from_numpy(balanced_epoch_indices(y_np, SEED, 0)[:BATCH_SIZE * TRAIN_STEPS])
    xs, ys = data["X_train"][idx].to(device), data["Y_train"][idx].to(device)
    batches = [(xs[i:i + BATCH_SIZE], ys[i:i + BATCH_SIZE]) for i in range(0, len(idx), BATCH_SIZE)]
    record = {"settings": {"batch_size": BATCH_SIZE, "steps": TRAIN_STEPS,
                           "repeats": args.repeats, "threads": torch.get_num_threads()},
              **run_info(device)}
    record["throughput"] = train_throughput(args.archs, batches, device, args.repeats)
    record["nsr_step"] = [nsr_step_ratio(arch, pretrained(arch, xs, ys, device), *batches[0],
                                         args.repeats) for arch in args.archs]
    write("train", record, train_markdown(record, record["throughput"], record["nsr_step"],
                                          args.repeats))


# ----------------------------------------------------------------------------- attack
def bench_attack(args):
    """One benchmark per arch: results/bench/attack_{arch}.json and .md."""
    from models import load_checkpoint
    device = get_device(args.device)
    data = load_cache(args.data_dir, not args.no_sample)
    archs = args.archs
    if args.checkpoint:
        model, cfg = load_checkpoint(args.checkpoint, device)
        archs = [cfg["arch"]]
    for arch in archs:
        if args.checkpoint:
            source = args.checkpoint
        else:
            model = pretrained(arch, data["X_train"].to(device), data["Y_train"].to(device),
                               device, steps=600)
            source = (f"{arch.upper()} trained 600 CE steps on the committed sample (inside "
                      "bench.py)")
        bench_attack_arch(args, arch, model.eval(), source, data, device)


def bench_pgd(model, xc, yc, eps, repeats):
    """PGD-100 at eps: ours vs METHOD.md 5's loop beat by beat, on the same beats."""
    import attack_pgd
    t_ours, _ = median_time(lambda: attack_pgd.pgd_attack(model, xc, yc, eps, 100), repeats)
    t_naive, _ = median_time(lambda: oracles.pgd_paper_spec_loop(model, xc, yc, eps, 100, 0.01, 0),
                             max(1, repeats // 2))
    ours_adv = attack_pgd.pgd_attack(model, xc, yc, eps, 100)
    naive_adv = oracles.pgd_paper_spec_loop(model, xc, yc, eps, 100, 0.01, 0)
    same = bool(torch.allclose(ours_adv, naive_adv, atol=1e-6))
    # float32: batched and single-beat convolutions round differently and can flip the sign of
    # a near-zero gradient component; the predictions must still agree (float64: exact, tested)
    same_pred = bool(torch.equal(attack_pgd.predict(model, ours_adv),
                                 attack_pgd.predict(model, naive_adv)))
    fooled = float((attack_pgd.predict(model, ours_adv) != yc).float().mean())
    out = {"eps": eps, "samples": len(yc), "ours_s": t_ours, "naive_s": t_naive,
           "ours_samples_per_s": len(yc) / t_ours, "naive_samples_per_s": len(yc) / t_naive,
           "speedup": t_naive / t_ours, "same_output": same,
           "same_predictions": same_pred, "fooled_fraction": fooled}
    print(f"PGD-100: ours {len(yc) / t_ours:.0f} samples/s, naive {len(yc) / t_naive:.0f} samples/s")
    return out


def bench_spsa(model, x, y, correct, sel, arch, repeats):
    """SPSA: batched vs the per-sample loop on the same beats and seeds (eps 0.01: few flip, so
    both do nearly every iteration; they do the same work either way)."""
    import attack_spsa
    sidx = torch.nonzero(correct).flatten()[:SPSA_SAMPLES]
    xs, ys = x[sidx], y[sidx]
    kw = dict(steps=SPSA_ITERS, n_dirs=2048, seed=0, sample_ids=sel[sidx.cpu()].numpy())
    t_b, _ = median_time(lambda: attack_spsa.spsa_attack(model, xs, ys, 0.01, **kw), repeats)
    t_l, _ = median_time(lambda: oracles.spsa_per_sample_loop(model, xs, ys, 0.01, **kw),
                         max(1, repeats // 2), warmup=0)
    same = bool(torch.allclose(attack_spsa.spsa_attack(model, xs, ys, 0.01, **kw),
                               oracles.spsa_per_sample_loop(model, xs, ys, 0.01, **kw), atol=1e-6))
    per = lambda t: t / (len(ys) * SPSA_ITERS)
    out = {"samples": len(ys), "iters": SPSA_ITERS, "n_dirs": 2048,
           "batched_s_per_iter_sample": per(t_b), "loop_s_per_iter_sample": per(t_l),
           "speedup": t_l / t_b, "same_output": same,
           "batch_size": attack_spsa.BATCH_SIZE, "chunk_rows": attack_spsa.CHUNK_ROWS[arch]}
    print(f"SPSA: batched {per(t_b) * 1e3:.0f} ms, loop {per(t_l) * 1e3:.0f} ms per iteration "
          f"per sample -> {t_l / t_b:.2f}x")
    return out


def attack_markdown(record, arch, source, eps, repeats):
    p, s = record["pgd"], record["spsa"]
    return "\n".join([
        f"# Attack speed ({arch.upper()})", "",
        f"{record['device']}, torch {record['torch']}, {torch.get_num_threads()} threads; model: "
        f"{source}; medians of {repeats} repeats.", "",
        "| attack | ours | straightforward | speedup | same output |", "|---|---:|---:|---:|---|",
        f"| paper PGD-100, eps {eps}, {p['samples']} beats | {p['ours_samples_per_s']:.0f} "
        f"samples/s | {p['naive_samples_per_s']:.0f} samples/s | {p['speedup']:.2f}x | {p['same_output']} (predictions: {p['same_predictions']}) |",
        f"| SPSA, 2048 dirs, {s['samples']} beats x {s['iters']} iters | "
        f"{s['batched_s_per_iter_sample'] * 1e3:.0f} ms / iter / sample | "
        f"{s['loop_s_per_iter_sample'] * 1e3:.0f} ms / iter / sample | {s['speedup']:.2f}x | "
        f"{s['same_output']} |",
        *[f"| {name} (torchattacks), 100 steps, eps {eps}, {p['samples']} beats | "
          f"{t * 1e3:.1f} ms / beat | - | - | - |" for name, t in record["autoattack"].items()],
        f"| forward, {record['forward']['rows']} rows, inference | "
        f"{record['forward']['rows_per_s']:.0f} rows/s | - | - | - |", "",
        f"PGD-100 fooled {p['fooled_fraction']:.0%} of the attacked beats at eps {eps}. "
        "Straightforward PGD: METHOD.md 5's loop one beat at a time with torch.optim.Adamax "
        "(tests/oracles.py); ours: 1,024 beats at a time, fooled beats leave the batch. Straightforward SPSA: one beat at a time, its "
        "2 x 2048 evaluations in one forward (the reference's shape), under no_grad; ours: "
        f"{s['batch_size']} beats at a time, {s['chunk_rows']}-row forwards, inference_mode.", ""])


def bench_attack_arch(args, arch, model, source, data, device):
    import attack_autoattack
    import attack_pgd
    import attack_spsa
    y_all = data["Y_test"]
    sel = torch.from_numpy(balanced_subset(y_all.numpy(), PGD_SAMPLES // 5))
    x, y = data["X_test"][sel].to(device), y_all[sel].to(device)
    correct = attack_pgd.predict(model, x) == y
    record = {"settings": {"pgd_samples": len(y), "spsa_samples": SPSA_SAMPLES,
                           "spsa_iters": SPSA_ITERS, "repeats": args.repeats, "model": source,
                           "threads": torch.get_num_threads()}, **run_info(device)}
    # PGD-100, eps 0.03, on the first PGD_COMPARE clean-correct beats (the loop runs ~4 beats/s)
    xc, yc = x[correct][:PGD_COMPARE], y[correct][:PGD_COMPARE]
    eps = 0.03
    record["pgd"] = bench_pgd(model, xc, yc, eps, args.repeats)
    # the AutoAttack components (torchattacks, 100 steps, one restart): seconds per attacked beat
    record["autoattack"] = {}           # seconds per beat on the PGD beats xc
    for name in ("apgd-ce", "apgd-t", "fab-t"):
        t, _ = median_time(lambda: attack_autoattack.autoattack(model, xc, yc, name, eps),
                           args.repeats if name == "apgd-ce" else max(1, args.repeats // 2))
        record["autoattack"][name] = t / len(yc)
        print(f"{name}: {t / len(yc) * 1e3:.1f} ms per beat")
    # inference forwards (what Square's queries cost), in SPSA's chunks
    rows = x[:1].repeat(attack_spsa.CHUNK_ROWS[arch], 1, 1)
    with torch.inference_mode():
        t_fwd, _ = median_time(lambda: [model(rows) for _ in range(20)], args.repeats)
    record["forward"] = {"rows": len(rows), "rows_per_s": 20 * len(rows) / t_fwd}
    record["spsa"] = bench_spsa(model, x, y, correct, sel, arch, args.repeats)
    write(f"attack_{arch}", record, attack_markdown(record, arch, source, eps, args.repeats))


# ----------------------------------------------------------------------------- steps
class OpCounter(TorchDispatchMode):
    """Counts the aten ops run under it and their FLOPs (torch.utils.flop_counter's formulas).
    On a GPU these small models are launch-bound, so ops, not FLOPs, set most of a step's time:
    reproduce.py's GPU estimate is ops x GPU_OP_US + FLOPs / GPU_TFLOPS."""

    def __init__(self):
        super().__init__()
        self.ops, self.flops = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops += 1
        op = func._overloadpacket
        if op in (torch.ops.aten.linear, torch.ops.aten.conv1d):
            # under inference_mode these reach us undecomposed: 2 x outputs x (fan-in of one)
            w = args[1]
            self.flops += 2 * out.numel() * w.shape[1] * (w.shape[2] if w.dim() == 3 else 1)
        elif op in flop_registry:
            self.flops += flop_registry[op](*args, **kwargs, out_val=out)
        return out


def count_ops(fn):
    """{"ops", "flops"} of one call of fn."""
    with OpCounter() as c:
        fn()
    return {"ops": c.ops, "flops": c.flops}


def per_step(fn, steps=(1, 2)):
    """The ops and FLOPs one more step adds: fn(steps[1]) minus fn(steps[0])."""
    a, b = count_ops(lambda: fn(steps[0])), count_ops(lambda: fn(steps[1]))
    return {k: (b[k] - a[k]) / (steps[1] - steps[0]) for k in a}


def bench_steps(args):
    """Ops and FLOPs of each unit of work the paper preset repeats: a training step (batch 128),
    a validation forward, a PGD step (1,024 beats), an SPSA iteration (32 beats, 2,048
    directions), an AutoAttack component's call (500 beats). Counted on random beats with an
    untrained model whose own predictions are the labels, at eps 0 (or 1e-4 where torchattacks
    needs eps > 0), so that no beat is fooled and leaves early: every count is an upper bound."""
    import attack_autoattack
    import attack_pgd
    import attack_spsa
    import training
    from attack_common import predict
    device = get_device(args.device)
    torch.manual_seed(SEED)
    beats = lambda n: torch.rand(n, 187, device=device)
    record = {"settings": {"train_batch": BATCH_SIZE, "pgd_batch": attack_pgd.BATCH_SIZE,
                           "spsa_batch": attack_spsa.BATCH_SIZE, "spsa_dirs": attack_spsa.N_DIRS,
                           "aa_batch": attack_autoattack.BATCH_SIZE,
                           "aa_steps": attack_autoattack.STEPS,
                           "square_queries": attack_autoattack.N_QUERIES},
              **run_info(device), "train": [], "attack": []}
    for arch in args.archs:
        for method in TRAIN_METHODS:
            model, opt, cfg, objective, gen = train_setup(arch, method, device)
            x, y = beats(BATCH_SIZE), torch.randint(0, 5, (BATCH_SIZE,), device=device)
            step = lambda: training.train_step(model, opt, x, y, cfg, objective, gen)
            step()                      # the optimizer's state exists from the second step on
            record["train"].append({"arch": arch, "method": method, **count_ops(step)})
        set_seed(SEED)
        model = build_model(arch).to(device).eval()
        x = beats(attack_pgd.BATCH_SIZE * 4)
        y = predict(model, x)
        units = {
            "forward": ("one predict() call, 4,096 beats",
                        count_ops(lambda: predict(model, x))),
            "pgd": (f"one step, {attack_pgd.BATCH_SIZE} beats", per_step(
                lambda k: attack_pgd.pgd_attack(model, x[:attack_pgd.BATCH_SIZE],
                                                y[:attack_pgd.BATCH_SIZE], 0.0, steps=k))),
            "spsa": (f"one iteration, {attack_spsa.BATCH_SIZE} beats", per_step(
                lambda k: attack_spsa.spsa_attack(model, x[:attack_spsa.BATCH_SIZE],
                                                  y[:attack_spsa.BATCH_SIZE], 0.0, steps=k)))}
        # torchattacks: 10 steps (Square: 50 queries) on 100 beats, scaled to a 500-beat call
        # of 100 steps (5,000 queries): ops grow with steps, FLOPs with steps and beats
        n_aa, k_aa = 100, attack_autoattack.BATCH_SIZE / 100
        for name, steps, scale in (("apgd-ce", 10, 10), ("apgd-t", 10, 10), ("fab-t", 10, 10),
                                   ("square", 50, 100)):
            c = count_ops(lambda: attack_autoattack.autoattack(
                model, x[:n_aa], y[:n_aa], name, 1e-4, steps=steps, n_queries=steps))
            units[name] = (f"one call, {attack_autoattack.BATCH_SIZE} beats",
                           {"ops": c["ops"] * scale, "flops": c["flops"] * scale * k_aa})
        for name, (unit, c) in units.items():
            record["attack"].append({"arch": arch, "attack": name, "unit": unit, **c})
        print(f"{arch}: counted")
    write("steps", record, steps_markdown(record))


def steps_markdown(record):
    """bench_steps's record as the table of results/bench/steps.md."""
    lines = ["# Ops and FLOPs per unit of work (the GPU estimate's input)", "",
             f"Counted on {record['device']}, torch {record['torch']} (the counts do not depend on "
             "the device). Upper bounds: no beat leaves early.", "",
             "| arch | unit | aten ops | GFLOP |", "|---|---|---:|---:|"]
    lines += [f"| {r['arch']} | train step, {r['method']}, batch {BATCH_SIZE} | {r['ops']:.0f} | "
              f"{r['flops'] / 1e9:.3f} |" for r in record["train"]]
    lines += [f"| {r['arch']} | {r['attack']}: {r['unit']} | {r['ops']:.0f} | "
              f"{r['flops'] / 1e9:.3f} |" for r in record["attack"]]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("what", choices=["train", "attack", "steps"], help="which benchmark")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--data-dir", default=DATA_DIR, help="where preprocess.py put the cache")
    p.add_argument("--no-sample", action="store_true", help="use the full cache, not the sample")
    p.add_argument("--archs", nargs="+", choices=["mlp", "cnn"], default=["mlp", "cnn"],
                   help="architectures")
    p.add_argument("--repeats", type=arg_number(int, 1), default=REPEATS,
                   help="timed repeats (the median is reported)")
    p.add_argument("--checkpoint", default=None,
                   help="attack: a trained checkpoint instead of the model bench.py trains")
    args = p.parse_args(argv)
    tune_malloc()
    {"train": bench_train, "attack": bench_attack, "steps": bench_steps}[args.what](args)
    return 0


if __name__ == "__main__":
    run_cli(main)
