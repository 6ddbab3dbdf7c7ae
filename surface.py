"""The loss surface around real test beats (METHOD.md 7, "The loss surface"): where the paper's
PGD gets stuck. For one model, on the first beats of each class of the test split:

  the CE loss and the logit margin z_y - max_{j != y} z_j along three directions, x + t d
  clamped to [0, 1], t from 0 to EPS_MAX: d = sign(grad_x CE) (the first step of the paper's
  PGD), d = sign(-grad_x margin) (the first step of a margin attack, as APGD-T's and FAB-T's
  targets and SPSA's loss), d = a random sign vector (seeded), and d = (x_APGD-T - x) / EPS_MAX,
  the straight line to what APGD-T (100 steps, every target) finds at EPS_MAX;
  the L1 norm of the input gradient of the CE loss at every clean beat of a larger subset.

    python surface.py --checkpoint results/paper/checkpoints/mlp_nsr_0.4_s0_best.pt \
        --out-dir results/paper/surface

writes {out-dir}/{model}.json (with the checkpoint's and data's digests, like an attack result);
evaluate.py draws figures/surface.png from every such file whose checkpoint is still on disk.
A masked model shows a flat CE loss and a margin that barely moves along its own gradient
sign (the gradient points nowhere useful), with tiny or vanishing input gradients, while the
margin still falls along other directions (Athalye et al. 2018, sec. 3).
"""
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

import attack_autoattack
from attack_common import add_target_args, open_target, parser
from preprocess import balanced_subset
from utils import arg_number, atomic_write, run_cli, run_info

OUT_DIR = "results/surface"
KIND = "nsr-ecg-surface"
EPS_MAX = 0.1              # the largest step along each direction
POINTS = 21                # t = 0, 0.005, ..., 0.1
CURVE_PER_CLASS = 3        # beats per class on the curves (15: "a dozen beats")
GRAD_PER_CLASS = 100       # beats per class for the gradient-norm distribution
SEED = 0                   # the random direction
DIRECTIONS = ("gradient sign", "margin gradient sign", "random sign", "APGD-T")


def margin_of(z, y):
    """z_y - max_{j != y} z_j: negative once the beat is misclassified."""
    zy = z.gather(1, y[:, None]).squeeze(1)
    other = z.scatter(1, y[:, None], float("-inf")).amax(1)
    return zy - other


def input_grad(model, x, y, loss="ce"):
    """The input gradient of the CE loss, or of minus the margin (what a margin attack ascends)."""
    x = x.clone().requires_grad_(True)
    z = model(x)
    value = F.cross_entropy(z, y, reduction="sum") if loss == "ce" else -margin_of(z, y).sum()
    (g,) = torch.autograd.grad(value, x)
    return g


@torch.no_grad()
def along(model, x, y, d, ts):
    """(CE loss, margin) of every beat at x + t d (clamped to [0, 1]) for t in ts: (beats, t)."""
    loss, margin = [], []
    for t in ts:
        z = model((x + t * d).clamp(0, 1))
        loss.append(F.cross_entropy(z, y, reduction="none"))
        margin.append(margin_of(z, y))
    return torch.stack(loss, 1), torch.stack(margin, 1)


def loss_surface(model, x, y, eps_max=EPS_MAX, points=POINTS, seed=SEED):
    """{direction: {"loss", "margin"}} along the CE-gradient sign, the margin-gradient sign
    and a random sign."""
    model.eval()
    ts = torch.linspace(0, eps_max, points)
    gen = torch.Generator().manual_seed(seed)
    random_sign = (torch.randint(0, 2, x.shape, generator=gen) * 2 - 1).to(x)
    out = {}
    # APGD-T's perturbation at eps_max, scaled so that t = eps_max reaches its x_adv: the
    # boundary a multi-step margin attack finds within the budget
    x_apgd = attack_autoattack.autoattack(model, x, y, "apgd-t", eps_max, seed=seed)
    directions = (input_grad(model, x, y).sign(), input_grad(model, x, y, "margin").sign(),
                  random_sign, (x_apgd - x) / eps_max)
    for name, d in zip(DIRECTIONS, directions):
        loss, margin = along(model, x, y, d, ts)
        out[name] = {"loss": loss.tolist(), "margin": margin.tolist()}
    return ts.tolist(), out


def get_args_parser():
    p = parser(__doc__)
    add_target_args(p)
    p.set_defaults(out_dir=OUT_DIR)
    p.add_argument("--eps-max", type=arg_number(float, 0, 1, lo_open=True), default=EPS_MAX,
                   help="the largest step along each direction")
    p.add_argument("--points", type=arg_number(int, 2), default=POINTS, help="steps from 0 to eps-max")
    p.add_argument("--curve-per-class", type=arg_number(int, 1), default=CURVE_PER_CLASS,
                   help="beats per class on the curves")
    p.add_argument("--grad-per-class", type=arg_number(int, 1), default=GRAD_PER_CLASS,
                   help="beats per class for the gradient-norm distribution")
    return p


def main(argv=None):
    return run(get_args_parser().parse_args(argv))


def run(args):
    """The surface that `args` (get_args_parser's namespace) describes."""
    if args.max_samples:
        args.grad_per_class, args.max_samples = args.max_samples // 5, None
    target, rc = open_target(args, per_class=max(args.grad_per_class, args.curve_per_class))
    if rc:
        return rc
    model, x, y = target["model"], target["x"], target["y"]
    settings = {"eps_max": args.eps_max, "points": args.points, "seed": args.seed,
                "curve_per_class": args.curve_per_class, "grad_per_class": args.grad_per_class,
                "directions": list(DIRECTIONS)}
    path = os.path.join(args.out_dir, f"{target['name']}.json")
    if not args.force and os.path.exists(path):
        try:
            with open(path) as f:
                old = json.load(f)
            if (old.get("kind") == KIND and old["checkpoint_sha256"] == target["checkpoint_sha256"]
                    and old["data_sha256"] == target["data_sha256"] and old["settings"] == settings):
                print(f"up to date, skipped (--force recomputes): {path}")
                return 0
        except (OSError, ValueError, KeyError):
            pass
    yn = y.cpu().numpy()
    curve = balanced_subset(yn, args.curve_per_class)
    grad_pos = balanced_subset(yn, args.grad_per_class)
    ts, curves = loss_surface(model, x[curve], y[curve], args.eps_max, args.points, args.seed)
    norms = input_grad(model, x[grad_pos], y[grad_pos]).abs().sum(1)
    record = {"kind": KIND, "model": target["name"], "arch": target["ckpt"]["arch"],
              "method": target["ckpt"]["config"].get("method"),
              "model_config": target["ckpt"]["config"],
              "checkpoint": os.path.abspath(target["checkpoint"]),
              "checkpoint_sha256": target["checkpoint_sha256"],
              "data_sha256": target["data_sha256"], "settings": settings, "eps": ts,
              "curve_indices": np.asarray(target["idx"])[curve].tolist(),
              "curve_labels": yn[curve].tolist(), "directions": curves,
              "grad_indices": np.asarray(target["idx"])[grad_pos].tolist(),
              "grad_labels": yn[grad_pos].tolist(), "grad_l1": norms.tolist(),
              "data": target["data"], **run_info(target["device"])}
    os.makedirs(args.out_dir, exist_ok=True)
    def dump(tmp):
        with open(tmp, "w") as f:
            json.dump(record, f)
    atomic_write(path, dump)
    med = float(norms.median())
    stuck = np.mean([m[-1] > 0 for m in curves["gradient sign"]["margin"]])
    print(f"wrote {path}: median |grad_x CE|_1 {med:.3g}; {stuck:.0%} of {len(curve)} beats "
          f"still correct at t={args.eps_max:g} along the gradient sign")
    return 0


if __name__ == "__main__":
    run_cli(main)
