"""White-box L-inf attacks on a trained checkpoint: the paper's PGD-100, standard PGD, white noise.

    python attack_pgd.py --checkpoint results/checkpoints/cnn_nsr_0.3_best.pt
    python attack_pgd.py --checkpoint CKPT --variant sign --loss margin --restarts 5
    python attack_pgd.py --checkpoint CKPT --noise           # uniform white noise instead
    python attack_pgd.py --checkpoint CKPT --max-samples 500 --eps 0.05 0.1

variant "paper" (SPEC 5, the reference's attack): random start u ~ U[-eps, eps]; each of `steps`
iterations takes the gradient of the loss w.r.t. the noise (through the clamp to [0,1]), replaces
it by its sign and feeds that to an Adamax optimiser on the noise (lr = step size, ascent), then
projects the noise to [-eps, eps]; the input is clamp(x + noise, 0, 1). A sample stops as soon as
its prediction leaves its label and keeps that first fooling input.
variant "sign": standard PGD, x <- proj(x + step * sign(grad)), same start and early stop.
With restarts, a sample counts as fooled if any restart fools it (per-sample worst case).
Clean-misclassified samples are never attacked: they count with their clean prediction.

Writes one JSON per (checkpoint, attack, eps) under results/attacks/ with SPEC 5's metrics, the
settings, seed, device, wall time, the per-sample adversarial predictions (for evaluate.py's
worst case), the largest |x_adv - x|_inf and the count of samples whose input gradient is all 0.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models import atomic_write, get_device, load_checkpoint, run_info, tune_malloc
from preprocess import (DATA_DIR, DataError, balanced_subset, classification_metrics,
                        load_cache)

EPS_LIST = [0.01, 0.03, 0.05, 0.1, 0.2, 0.3]                         # SPEC 5
NOISE_EPS_LIST = [0.0, 0.01, 0.03, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
STEPS = 100
STEP_SIZE = 0.01
VARIANT = "paper"
LOSS = "ce"
RESTARTS = 1
SEED = 0
BATCH_SIZE = 1024          # samples attacked at once
OUT_DIR = "results/attacks"
ADAMAX_BETAS = (0.9, 0.999)
ADAMAX_EPS = 1e-8


# ----------------------------------------------------------------------------- attack cores
def margin(z, y):
    """f = max_{j != y} z_j - z_y per sample (> 0 once the label has flipped)."""
    zy = z.gather(1, y[:, None]).squeeze(1)
    return z.scatter(1, y[:, None], float("-inf")).amax(dim=1) - zy


def attack_loss(z, y, loss="ce"):
    """Summed over samples (the sign of the gradient makes the scale irrelevant)."""
    if loss == "ce":
        return F.cross_entropy(z, y, reduction="sum")
    if loss == "margin":
        return margin(z, y).sum()
    raise ValueError(f"unknown attack loss {loss!r}: choose ce or margin")


def uniform_start(shape, eps, generator, device):
    return (torch.rand(shape, generator=generator, device=device) * 2 - 1) * eps


def adamax_ascent_(param, grad_sign, exp_avg, exp_inf, step, lr):
    """torch.optim.Adamax's update on `param` with gradient -grad_sign (ascent), written out so
    the state can shrink with the batch when samples stop. `step` counts from 1."""
    g = -grad_sign
    exp_avg.lerp_(g, 1 - ADAMAX_BETAS[0])
    torch.maximum(exp_inf.mul_(ADAMAX_BETAS[1]), g.abs().add_(ADAMAX_EPS), out=exp_inf)
    param.addcdiv_(exp_avg, exp_inf, value=-lr / (1 - ADAMAX_BETAS[0] ** step))


def pgd_batch(model, x, y, eps, steps, step_size, variant="paper", loss="ce", generator=None,
              early_stop=True):
    """Attack every sample of (x, y). Returns (x_adv, fooled). With early_stop, a sample stops
    at its first fooling input and keeps it; otherwise all run `steps` steps (adv. training).

    SPEC 5, per sample (the paper variant; "sign" replaces the Adamax step by n += step*g):
        n = U(-eps, eps)
        for t in 0 .. steps:
            x_t = clamp(x + n, 0, 1)
            if argmax f(x_t) != y or t == steps: return x_t
            g = sign(d loss(f(x_t), y) / d x_t)
            n = Adamax(lr=step) step on n with gradient -g      # ascent
            n = clamp(n, -eps, eps)
            n = clamp(x + n, 0, 1) - x                          # the stored noise stays feasible
    """
    if variant not in ("paper", "sign"):
        raise ValueError(f"unknown PGD variant {variant!r}: choose paper or sign")
    x_adv, fooled = x.clone(), torch.zeros(len(y), dtype=torch.bool, device=x.device)
    idx = torch.arange(len(y), device=x.device)
    noise = uniform_start(x.shape, eps, generator, x.device)
    xa, ya = x, y
    exp_avg, exp_inf = torch.zeros_like(noise), torch.zeros_like(noise)   # Adamax state
    for t in range(steps + 1):
        x_in = (xa + noise).clamp(0, 1).requires_grad_(t < steps)
        with torch.set_grad_enabled(t < steps):
            z = model(x_in)
        hit = z.argmax(1) != ya
        if early_stop or t == steps:
            x_adv[idx[hit]] = x_in[hit].detach()
            fooled[idx[hit]] = True
        if t == steps:
            x_adv[idx[~hit]] = x_in[~hit].detach()
            break
        (grad,) = torch.autograd.grad(attack_loss(z, ya, loss), x_in)
        if early_stop and hit.any():   # fooled samples leave the batch
            keep = ~hit
            idx, xa, ya, noise, grad = idx[keep], xa[keep], ya[keep], noise[keep], grad[keep]
            exp_avg, exp_inf = exp_avg[keep], exp_inf[keep]
            if len(idx) == 0:
                break
        if variant == "paper":
            adamax_ascent_(noise, grad.sign(), exp_avg, exp_inf, t + 1, step_size)
        else:
            noise = noise + step_size * grad.sign()
        noise.clamp_(-eps, eps)
        noise = (xa + noise).clamp_(0, 1).sub_(xa)
    return x_adv, fooled


@torch.no_grad()
def predict(model, x, batch_size=4096):
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def pgd_attack(model, x, y, eps, steps=STEPS, step_size=STEP_SIZE, variant=VARIANT, loss=LOSS,
               restarts=RESTARTS, seed=SEED, batch_size=BATCH_SIZE, progress=False):
    """SPEC 5 PGD on the clean-correct samples of (x, y); returns x_adv (x where not attacked).
    One generator seeded with `seed` draws every random start, batch after batch, restart
    after restart; a later restart only attacks the samples no earlier one fooled."""
    model.eval()
    gen = torch.Generator(device=x.device).manual_seed(seed)
    x_adv = x.clone()
    todo = torch.nonzero(predict(model, x) == y).flatten()
    bar = tqdm(total=len(todo) * restarts, desc=f"pgd-{variant} eps={eps:g}", unit="beat",
               disable=not progress, leave=False)
    for _ in range(restarts):
        still = []
        for i in range(0, len(todo), batch_size):
            b = todo[i:i + batch_size]
            xb, fooled = pgd_batch(model, x[b], y[b], eps, steps, step_size, variant, loss, gen)
            x_adv[b] = xb          # a later restart overwrites only the samples not yet fooled
            still.append(b[~fooled])
            bar.update(len(b))
        todo = torch.cat(still) if still else todo[:0]
    bar.close()
    return x_adv


def noise_attack(model, x, y, eps, seed=SEED):
    """Uniform white noise in [-eps, eps] on the clean-correct samples, clamped to [0, 1]."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    noisy = (x + uniform_start(x.shape, eps, gen, x.device)).clamp(0, 1)
    correct = (predict(model, x) == y)[:, None]
    return torch.where(correct, noisy, x)


def count_zero_input_grad(model, x, y, batch_size=4096):
    """Samples whose CE input gradient is exactly zero at the clean input (SPEC 7, check 8)."""
    n = 0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xb), y[i:i + batch_size],
                                                   reduction="sum"), xb)
        n += int((g.flatten(1) == 0).all(dim=1).sum())
    return n


# ----------------------------------------------------------------------------- CLI helpers
def load_target(checkpoint, device, data_dir=DATA_DIR, sample=False, max_samples=None,
                per_class=None):
    """Model, test beats (a balanced subset if asked: the first k of each class) and their
    indices in the test split."""
    model, ckpt = load_checkpoint(checkpoint, device)
    cache = load_cache(data_dir, sample)
    y = cache["Y_test"].numpy()
    if per_class is None and max_samples:
        per_class = max(1, max_samples // 5)
    idx = balanced_subset(y, per_class) if per_class else np.arange(len(y))
    x_t = cache["X_test"][idx].to(device)
    y_t = cache["Y_test"][idx].to(device)
    return model, ckpt, x_t, y_t, idx


def model_name(ckpt, checkpoint):
    return ckpt["config"].get("name") or os.path.splitext(os.path.basename(checkpoint))[0]


def attack_record(model, ckpt, checkpoint, x, y, x_adv, idx, attack, settings, wall, device,
                  data_meta=None):
    """SPEC 5's metrics for one (model, attack, eps), plus what evaluate.py needs."""
    clean = predict(model, x)
    adv = predict(model, x_adv)
    linf = float((x_adv - x).abs().max()) if len(x) else 0.0
    yn = y.cpu().numpy()
    return {
        "kind": "nsr-ecg-attack-result",
        "model": model_name(ckpt, checkpoint),
        "checkpoint": os.path.abspath(checkpoint),
        "arch": ckpt["arch"], "method": ckpt["config"].get("method"),
        "model_config": ckpt["config"],
        "attack": attack, "eps": settings["eps"], "settings": settings,
        "clean": classification_metrics(yn, clean.cpu().numpy()),
        "adversarial": classification_metrics(yn, adv.cpu().numpy()),
        "n_attacked": int((clean == y).sum()),
        "n_fooled": int(((clean == y) & (adv != y)).sum()),
        "max_linf": linf,
        "in_range": bool(len(x) == 0 or (x_adv.min() >= 0 and x_adv.max() <= 1)),
        "zero_grad_samples": count_zero_input_grad(model, x, y),
        "indices": np.asarray(idx).tolist(),
        "labels": yn.tolist(),
        "clean_pred": clean.cpu().numpy().tolist(),
        "adv_pred": adv.cpu().numpy().tolist(),
        "wall_s": wall,
        "data": data_meta,
        **run_info(device),
    }


def write_record(record, out_dir, tag):
    path = os.path.join(out_dir, f"{record['model']}__{tag}__eps{record['eps']:g}.json")
    atomic_write(path, lambda tmp: json.dump(record, open(tmp, "w")), suffix=".json")
    return path


def summary_line(record):
    return (f"{record['model']:>18s} {record['attack']:>10s} eps={record['eps']:<5g} "
            f"balanced acc {record['adversarial']['balanced_accuracy']:.4f} "
            f"(clean {record['clean']['balanced_accuracy']:.4f}, n={len(record['labels'])}, "
            f"{record['wall_s']:.1f} s)")


def add_target_args(p):
    p.add_argument("--checkpoint", required=True, help="a .pt written by train_*.py")
    p.add_argument("--data-dir", default=DATA_DIR)
    p.add_argument("--sample", action="store_true", help="attack the committed sample's test set")
    p.add_argument("--max-samples", type=int, default=None,
                   help="balanced subset: the first N/5 test beats of each class")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out-dir", default=OUT_DIR)
    p.add_argument("--force", action="store_true", help="recompute results that exist")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_target_args(p)
    p.add_argument("--eps", type=float, nargs="+", default=None,
                   help=f"default {EPS_LIST} (noise: {NOISE_EPS_LIST})")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--step-size", type=float, default=STEP_SIZE)
    p.add_argument("--variant", choices=["paper", "sign"], default=VARIANT)
    p.add_argument("--loss", choices=["ce", "margin"], default=LOSS)
    p.add_argument("--restarts", type=int, default=RESTARTS)
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--noise", action="store_true", help="uniform white noise instead of PGD")
    args = p.parse_args(argv)
    for name in ("steps", "restarts", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    eps_list = args.eps or (NOISE_EPS_LIST if args.noise else EPS_LIST)
    if any(e < 0 for e in eps_list):
        p.error("--eps must be >= 0")
    try:
        device = get_device(args.device)
        model, ckpt, x, y, idx = load_target(args.checkpoint, device, args.data_dir, args.sample,
                                             args.max_samples)
    except (DataError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tune_malloc()
    torch.manual_seed(args.seed)
    data_meta = {"sample": args.sample, "max_samples": args.max_samples}
    subset = f"-n{len(idx)}" if args.max_samples else ""
    for eps in eps_list:
        if args.noise:
            attack, tag = "noise", "noise" + subset
            settings = {"eps": eps, "seed": args.seed}
        else:
            attack = f"pgd-{args.variant}"
            tag = (f"pgd-{args.variant}-{args.loss}-s{args.steps}-r{args.restarts}"
                   + (f"-lr{args.step_size:g}" if args.step_size != STEP_SIZE else "") + subset)
            settings = {"eps": eps, "steps": args.steps, "step_size": args.step_size,
                        "variant": args.variant, "loss": args.loss, "restarts": args.restarts,
                        "seed": args.seed, "batch_size": args.batch_size}
        name = model_name(ckpt, args.checkpoint)
        out = os.path.join(args.out_dir, f"{name}__{tag}__eps{eps:g}.json")
        if os.path.exists(out) and not args.force:
            print(f"exists, skipped (--force recomputes): {out}")
            continue
        t0 = time.perf_counter()
        if args.noise:
            x_adv = noise_attack(model, x, y, eps, seed=args.seed)
        else:
            x_adv = pgd_attack(model, x, y, eps, args.steps, args.step_size, args.variant,
                               args.loss, args.restarts, args.seed, args.batch_size,
                               progress=True)
        wall = time.perf_counter() - t0
        record = attack_record(model, ckpt, args.checkpoint, x, y, x_adv, idx, attack, settings,
                               wall, device, data_meta)
        write_record(record, args.out_dir, tag)
        print(summary_line(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
