"""Black-box SPSA attack (Uesato et al. 2018) on a trained checkpoint, batched for speed.

    python attack_spsa.py --checkpoint results/checkpoints/cnn_nsr_0.3_best.pt
    python attack_spsa.py --checkpoint CKPT --eps 0.05 0.1 --per-class 20 --steps 50

METHOD.md 5: on the first 162 test beats of each class (810), for each eps: uniform random start in
[-eps, eps]; each of `steps` iterations draws n_dirs Rademacher directions v, evaluates the margin
loss f(x) = max_{j != y} z_j - z_y at x + delta*v and x - delta*v, estimates the gradient as
mean((f+ - f-) * v / (2 delta)), takes its sign and makes an Adamax step (lr 0.01) that increases
f; then the perturbation is projected to [-eps, eps] and x + perturbation clamped to [0, 1]. A
sample stops as soon as its label flips and keeps that input. Clean-misclassified samples are
not attacked.

Batching changes nothing but speed: each sample has its own random stream (a torch.Generator
seeded with seed * 1,000,003 + the sample's index in the test split) that draws its start and
then its directions, iteration after iteration, exactly as a loop over single samples would;
each sample's gradient estimate is reduced on its own. So the batched attack returns the same
adversarial inputs as the per-sample loop (the tests check it). The directions of many samples
go through the model in chunks of CHUNK_ROWS rows (on 2 CPU cores a CNN forward runs several
times faster at 256 rows than at the 4,096 of one sample's 2 x 2048 evaluations; the MLP is
fastest at 1,024: 6.0 ms per iteration and beat against 10.0 at 256 and 7.2 at 4,096, same
output), under torch.inference_mode, and samples that flip leave the batch.
"""

import numpy as np
import torch

from attack_common import (add_target_args, eps_arg, open_attack, parser, predict, run_sweep,
                           shard_arg)
from attack_pgd import adamax_ascent_, margin, uniform_start
import protocol
from models import model_arch
from utils import arg_number, progress_bar, run_cli

EPS_LIST = list(protocol.SPSA_EPS)            # METHOD.md 5
PER_CLASS = 162            # the first 162 test beats of each class: 810
STEPS = 100
N_DIRS = 2048
DELTA = 0.01
LR = 0.01
SEED = 0
BATCH_SIZE = 32            # samples attacked together
CHUNK_ROWS = {"mlp": 1024, "cnn": 256}    # model rows per forward (fastest on 2 CPU cores)
STREAM = 1_000_003         # per-sample generator seed = seed * STREAM + sample index


def sample_generator(seed, index, device):
    return torch.Generator(device=device).manual_seed(seed * STREAM + int(index))


def rademacher(n_dirs, n, generator, device):
    return torch.randint(0, 2, (n_dirs, n), generator=generator, device=device).mul_(2).sub_(1).float()


def spsa_estimate(df, v, delta):
    """mean_k (f+_k - f-_k) v_k / (2 delta) for one sample: df (D,), v (D, 187)."""
    return torch.mv(v.t(), df) / (2 * delta * len(df))


def spsa_batch(model, x, y, ids, eps, steps, n_dirs, delta, lr, seed, chunk_rows):
    """Attack every sample of (x, y); ids seed their streams. Returns (x_adv, fooled)."""
    dev = x.device
    gens = [sample_generator(seed, i, dev) for i in ids]
    noise = torch.stack([uniform_start(x.shape[1:], eps, g, dev) for g in gens])
    noise = (x + noise).clamp(0, 1) - x
    exp_avg, exp_inf = torch.zeros_like(noise), torch.zeros_like(noise)
    x_adv, fooled = x.clone(), torch.zeros(len(y), dtype=torch.bool, device=dev)
    idx, xa, ya = torch.arange(len(y), device=dev), x, y
    pairs_per_chunk = max(1, chunk_rows // 2)
    for t in range(steps + 1):
        x_in = xa + noise
        hit = model(x_in).argmax(1) != ya
        x_adv[idx[hit]] = x_in[hit]
        fooled[idx[hit]] = True
        if t == steps:
            x_adv[idx[~hit]] = x_in[~hit]
            break
        if hit.any():                              # flipped samples leave the batch
            keep = ~hit
            idx, xa, ya, x_in = idx[keep], xa[keep], ya[keep], x_in[keep]
            noise, exp_avg, exp_inf = noise[keep], exp_avg[keep], exp_inf[keep]
            gens = [g for g, k in zip(gens, keep.tolist()) if k]
            if not gens:
                break
        b = len(gens)
        v = torch.stack([rademacher(n_dirs, x.shape[1], g, dev) for g in gens])   # (b, D, 187)
        vf = v.reshape(b * n_dirs, -1)
        owner = torch.arange(b, device=dev).repeat_interleave(n_dirs)
        df = torch.empty(b * n_dirs, device=dev)
        for s in range(0, b * n_dirs, pairs_per_chunk):
            o, dv = owner[s:s + pairs_per_chunk], delta * vf[s:s + pairs_per_chunk]
            base = x_in[o]
            f = margin(model(torch.cat([base + dv, base - dv])), ya[o].repeat(2))
            df[s:s + len(o)] = f[:len(o)] - f[len(o):]
        df = df.view(b, n_dirs)
        grad = torch.stack([spsa_estimate(df[i], v[i], delta) for i in range(b)])
        adamax_ascent_(noise, grad.sign(), exp_avg, exp_inf, t + 1, lr)
        noise.clamp_(-eps, eps)
        noise = (xa + noise).clamp(0, 1) - xa
    return x_adv, fooled


def spsa_attack(model, x, y, eps, steps=STEPS, n_dirs=N_DIRS, delta=DELTA, lr=LR, seed=SEED,
                sample_ids=None, batch_size=BATCH_SIZE, chunk_rows=None, progress=False):
    """SPSA on the clean-correct samples of (x, y); returns x_adv (x where not attacked).
    sample_ids (default 0..N-1) name each sample's random stream: pass the test-split indices
    to get the same result whatever subset or batch a sample is attacked in. chunk_rows:
    default CHUNK_ROWS of the model's arch."""
    model.eval()
    chunk_rows = chunk_rows or CHUNK_ROWS[model_arch(model)]
    ids = torch.arange(len(y)) if sample_ids is None else torch.as_tensor(sample_ids)
    with torch.inference_mode():
        x_adv = x.clone()
        todo = torch.nonzero(predict(model, x) == y).flatten()
        bar = progress_bar(total=len(todo), desc=f"spsa eps={eps:g}", unit="beat",
                           disable=not progress, leave=False)
        for i in range(0, len(todo), batch_size):
            b = todo[i:i + batch_size]
            xb, _ = spsa_batch(model, x[b], y[b], ids[b.cpu()].tolist(), eps, steps, n_dirs,
                               delta, lr, seed, chunk_rows)
            x_adv[b] = xb
            bar.update(len(b))
        bar.close()
    return x_adv.clone()


def get_args_parser():
    p = parser(__doc__.split("\n")[0])
    add_target_args(p, per_class_default=PER_CLASS)
    num = arg_number
    p.add_argument("--eps", type=eps_arg, nargs="+", default=EPS_LIST, help="L-inf budgets")
    p.add_argument("--per-class", type=num(int, 1), default=PER_CLASS,
                   help="the first K test beats of each class (162: 810 beats)")
    p.add_argument("--steps", type=num(int, 1), default=STEPS, help="iterations")
    p.add_argument("--n-dirs", type=num(int, 1), default=N_DIRS, help="Rademacher directions")
    p.add_argument("--delta", type=num(float, 0, lo_open=True), default=DELTA,
                   help="finite-difference step")
    p.add_argument("--lr", type=num(float, 0, lo_open=True), default=LR, help="Adamax lr")
    p.add_argument("--batch-size", type=num(int, 1), default=BATCH_SIZE,
                   help="beats attacked together (speed only)")
    p.add_argument("--chunk-rows", type=num(int, 2), default=None,
                   help=f"model rows per forward (speed only; default {CHUNK_ROWS})")
    p.add_argument("--shard", type=shard_arg, default=None, metavar="I/K",
                   help="attack the I-th of K parts of the beats; the K parts merge into the "
                        "unsplit result once all are done")
    return p


def main(argv=None):
    return run(get_args_parser().parse_args(argv))


def run(args):
    """The sweep that `args` (get_args_parser's namespace) describes."""
    target, _, rc = open_attack(args, per_class=args.per_class)
    if rc:
        return rc
    per_class = target["data"]["per_class"]
    args.chunk_rows = args.chunk_rows or CHUNK_ROWS[model_arch(target["model"])]
    tag = f"spsa-s{args.steps}-d{args.n_dirs}-n{len(target['idx'])}"
    settings_for = lambda eps: {"eps": eps, "steps": args.steps, "n_dirs": args.n_dirs,
                                "delta": args.delta, "lr": args.lr, "seed": args.seed,
                                "per_class": per_class, "batch_size": args.batch_size,
                                "chunk_rows": args.chunk_rows}
    x, y, ids = target["x"], target["y"], np.asarray(target["idx"])

    def attack_at(eps, pos):
        """x_adv for all beats, attacked at `pos` (each beat's own random stream: any split of
        the beats gives the same x_adv)."""
        x_adv = x.clone()
        p = torch.as_tensor(pos, dtype=torch.long)
        x_adv[p] = spsa_attack(target["model"], x[p], y[p], eps, args.steps, args.n_dirs,
                               args.delta, args.lr, args.seed, ids[np.asarray(pos)],
                               args.batch_size, args.chunk_rows, progress=True)
        return x_adv
    shard = args.shard and (*args.shard, lambda i, k: np.arange(len(y))[i::k])
    return run_sweep(target, args.eps, "spsa", tag, settings_for, attack_at, args.out_dir, args.force,
                     shard=shard)


if __name__ == "__main__":
    run_cli(main)
