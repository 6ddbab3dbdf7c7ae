"""White-box L-inf attacks on a trained checkpoint: the paper's PGD-100, standard PGD, white noise.

    python attack_pgd.py --checkpoint results/checkpoints/cnn_nsr_0.3_best.pt
    python attack_pgd.py --checkpoint CKPT --variant sign --loss margin --restarts 5
    python attack_pgd.py --checkpoint CKPT --noise           # uniform white noise instead
    python attack_pgd.py --checkpoint CKPT --max-samples 500 --eps 0.05 0.1

variant "paper" (METHOD.md 5, the reference's attack): random start u ~ U[-eps, eps]; each of `steps`
iterations takes the gradient of the loss w.r.t. the noise (through the clamp to [0,1]), replaces
it by its sign and feeds that to an Adamax optimiser on the noise (lr = step size, ascent), then
projects the noise to [-eps, eps]; the input is clamp(x + noise, 0, 1). A sample stops as soon as
its prediction leaves its label and keeps that first fooling input.
variant "sign": standard PGD, x <- proj(x + step * sign(grad)), same start and early stop.
With restarts, a sample counts as fooled if any restart fools it (per-sample worst case).
Clean-misclassified samples are never attacked: they count with their clean prediction.

Writes one JSON per (checkpoint, attack, eps) under results/attacks/ (attack_common.py: an
up-to-date result is skipped, a stale one recomputed) with METHOD.md 5's metrics, the
settings, seed, device, wall time, the checkpoint's and data's sha256, the per-sample adversarial predictions (for evaluate.py's
worst case), the largest |x_adv - x|_inf and the count of samples whose input gradient is all 0.
"""

import torch
import torch.nn.functional as F

from attack_common import (SEED, add_target_args, eps_arg, open_attack, parser, predict,
                           run_sweep)
import protocol
from utils import arg_number, progress_bar, run_cli

EPS_LIST = list(protocol.PGD_EPS)             # METHOD.md 5 (edit here: a list of your own)
NOISE_EPS_LIST = list(protocol.NOISE_EPS)
STEPS = 100
STEP_SIZE = 0.01
VARIANT = "paper"
LOSS = "ce"
RESTARTS = 1
BATCH_SIZE = 1024          # samples attacked at once
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

    METHOD.md 5, per sample (the paper variant; "sign" replaces the Adamax step by n += step*g):
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
    noise = uniform_start(x.shape, eps, generator, x.device).to(x.dtype)
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


def pgd_attack(model, x, y, eps, steps=STEPS, step_size=STEP_SIZE, variant=VARIANT, loss=LOSS,
               restarts=RESTARTS, seed=SEED, batch_size=BATCH_SIZE, progress=False):
    """METHOD.md 5 PGD on the clean-correct samples of (x, y); returns x_adv (x where not attacked).
    One generator seeded with `seed` draws every random start, batch after batch, restart
    after restart; a later restart only attacks the samples no earlier one fooled."""
    model.eval()
    gen = torch.Generator(device=x.device).manual_seed(seed)
    x_adv = x.clone()
    todo = torch.nonzero(predict(model, x) == y).flatten()
    bar = progress_bar(total=len(todo) * restarts, desc=f"pgd-{variant} eps={eps:g}",
                       unit="beat", disable=not progress, leave=False)
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


def get_args_parser():
    p = parser(__doc__.split("\n")[0])
    add_target_args(p)
    num = arg_number
    p.add_argument("--eps", type=eps_arg, nargs="+", default=None,
                   help=f"L-inf budgets in [0, 1] (default {EPS_LIST}; noise: {NOISE_EPS_LIST})")
    p.add_argument("--steps", type=num(int, 1), default=STEPS, help="iterations")
    p.add_argument("--step-size", type=num(float, 0, lo_open=True), default=STEP_SIZE,
                   help="Adamax lr (paper) or sign step (sign)")
    p.add_argument("--variant", choices=["paper", "sign"], default=VARIANT, help="PGD variant")
    p.add_argument("--loss", choices=["ce", "margin"], default=LOSS, help="attack loss")
    p.add_argument("--restarts", type=num(int, 1), default=RESTARTS, help="random restarts")
    p.add_argument("--batch-size", type=num(int, 1), default=BATCH_SIZE,
                   help="beats attacked at once (speed only)")
    p.add_argument("--noise", action="store_true", help="uniform white noise instead of PGD")
    return p


def main(argv=None):
    return run(get_args_parser().parse_args(argv))


def run(args):
    """The sweep that `args` (get_args_parser's namespace) describes; reproduce.py builds one
    without an argv (attack_common.attack_args)."""
    target, subset, rc = open_attack(args)
    if rc:
        return rc
    torch.manual_seed(args.seed)
    model, x, y = target["model"], target["x"], target["y"]
    if args.noise:
        attack, tag = "noise", "noise" + subset
        settings_for = lambda eps: {"eps": eps, "seed": args.seed}
        attack_at = lambda eps, pos: noise_attack(model, x, y, eps, seed=args.seed)
    else:
        attack = f"pgd-{args.variant}"
        tag = (f"pgd-{args.variant}-{args.loss}-s{args.steps}-r{args.restarts}"
               + (f"-lr{args.step_size:g}" if args.step_size != STEP_SIZE else "") + subset)
        settings_for = lambda eps: {"eps": eps, "steps": args.steps, "step_size": args.step_size,
                                    "variant": args.variant, "loss": args.loss,
                                    "restarts": args.restarts, "seed": args.seed,
                                    "batch_size": args.batch_size}
        attack_at = lambda eps, pos: pgd_attack(model, x, y, eps, args.steps, args.step_size,
                                          args.variant, args.loss, args.restarts, args.seed,
                                          args.batch_size, progress=True)
    return run_sweep(target, args.eps or (NOISE_EPS_LIST if args.noise else EPS_LIST), attack, tag,
                     settings_for, attack_at, args.out_dir, args.force)


if __name__ == "__main__":
    run_cli(main)
