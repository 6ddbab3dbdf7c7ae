"""The smooth adversarial perturbation (SAP) of Han et al. 2020, the ECG literature's own attack,
and a stronger attack in the same smooth threat model (METHOD.md 5, "Smooth perturbations").

    python attack_sap.py --checkpoint results/checkpoints/cnn_nsr_0.3_s0_best.pt --max-samples 200
    python attack_sap.py --checkpoint ... --variant strong --eps 0.03 0.1

Han, Hu, Kim, ... & Rajpurkar (2020), "Deep learning models for electrocardiograms are
susceptible to adversarial attack", Nature Medicine 26, 360-363. The perturbation is the mean of
conv1d(theta, k) over 25 normalised Gaussian kernels k (sizes 5, 7, 11, 15, 19 x sigma 1, 3, 5,
7, 10, zero-padded, same length), with theta clipped to [-eps, eps] after every step, so the
perturbation is smooth and within eps by construction. x_adv = clamp(x + smooth(theta), 0, 1).

  han     theta starts from a 20-step sign PGD perturbation (from zero), then takes 40 sign steps
          on the CE loss through the smoothing; step eps/10 throughout (Han's eps 10, step 1).
  strong  han first; then, on the beats it did not fool, one targeted run per other class:
          100 sign steps on theta (from zero) raising z_target - z_label, step eps/10 for 50
          steps, eps/40 after. A beat is fooled if any run fooled it, so strong never leaves
          more beats than han on the same beats.

A beat stops at its first smooth input that fools the model (and keeps it), as the paper's PGD
does; the 20 PGD steps are an initialisation only (their inputs are not smooth and never count).
"""
import torch
import torch.nn.functional as F

from attack_common import add_target_args, eps_arg, open_attack, parser, predict, run_sweep
import protocol
from models import N_CLASSES
from utils import arg_number, progress_bar, run_cli

EPS_LIST = list(protocol.AUTOATTACK_EPS)    # the ensemble's eps, on its beats
KERNEL_SIZES = (5, 7, 11, 15, 19)
KERNEL_SIGMAS = (1.0, 3.0, 5.0, 7.0, 10.0)
INIT_STEPS = 20            # sign PGD steps that initialise theta
STEPS = 40                 # sign steps on theta (Han)
STRONG_STEPS = 100         # per target class (strong)
STEP_FRACTION = 0.1        # step = eps * this (Han: eps 10, step 1)
VARIANT = "han"
SEED = 0                   # no randomness; recorded with every result
BATCH_SIZE = 1024          # beats attacked at once (speed only)


# ----------------------------------------------------------------------------- the smoothing
def gaussian_kernels(sizes=KERNEL_SIZES, sigmas=KERNEL_SIGMAS, dtype=torch.float32,
                     device="cpu"):
    """(len(sizes) * len(sigmas), 1, max(sizes)): each kernel sums to 1, centred and
    zero-padded to the longest, so one conv1d applies all 25 with 'same' output length."""
    width = max(sizes)
    out = torch.zeros(len(sizes) * len(sigmas), 1, width, dtype=torch.float64)
    for a, size in enumerate(sizes):
        for b, sigma in enumerate(sigmas):
            t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
            k = torch.exp(-t ** 2 / (2 * sigma ** 2))
            lo = (width - size) // 2
            out[a * len(sigmas) + b, 0, lo:lo + size] = k / k.sum()
    return out.to(dtype=dtype, device=device)


def smooth(theta, kernels):
    """The mean over the kernels of conv1d(theta, k), zero-padded, same length: (N, L)."""
    conv = F.conv1d(theta[:, None, :], kernels, padding=kernels.shape[-1] // 2)
    return conv.mean(dim=1)


# ----------------------------------------------------------------------------- the attack
def sign_steps(model, x, y, theta, eps, steps, step_of, loss_of, kernels):
    """Sign ascent on theta through the smoothing; a beat stops at its first fooling smooth
    input. Returns (x_adv, fooled) for the beats of x."""
    x_adv, fooled = x.clone(), torch.zeros(len(y), dtype=torch.bool, device=x.device)
    idx = torch.arange(len(y), device=x.device)
    xa, ya, th = x, y, theta
    for t in range(steps + 1):
        th = th.detach().requires_grad_(t < steps)
        with torch.set_grad_enabled(t < steps):
            x_in = (xa + smooth(th, kernels)).clamp(0, 1)
            z = model(x_in)
        hit = z.argmax(1) != ya
        x_adv[idx] = x_in.detach()
        fooled[idx[hit]] = True
        if t == steps or hit.all():
            break
        (grad,) = torch.autograd.grad(loss_of(z, ya, idx), th)
        keep = ~hit                                  # fooled beats leave the batch
        idx, xa, ya, th, grad = idx[keep], xa[keep], ya[keep], th[keep], grad[keep]
        th = (th + step_of(t) * grad.sign()).clamp(-eps, eps)
    return x_adv, fooled


def pgd_init(model, x, y, eps, steps, step):
    """Han's initialisation: sign PGD on the CE loss from zero, in the L-inf ball and [0, 1];
    returns the perturbation (not an attack: it is not smooth)."""
    delta = torch.zeros_like(x)
    for _ in range(steps):
        x_in = (x + delta).clamp(0, 1).requires_grad_(True)
        loss = F.cross_entropy(model(x_in), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_in)
        delta = (delta + step * grad.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    return delta.detach()


def sap_batch(model, x, y, eps, variant=VARIANT, steps=STEPS, init_steps=INIT_STEPS,
              strong_steps=STRONG_STEPS, kernels=None):
    """SAP on every beat of (x, y) (all clean-correct). Returns (x_adv, fooled)."""
    kernels = gaussian_kernels(dtype=x.dtype, device=x.device) if kernels is None else kernels
    step = eps * STEP_FRACTION
    ce = lambda z, y, idx: F.cross_entropy(z, y, reduction="sum")
    theta = pgd_init(model, x, y, eps, init_steps, step)
    x_adv, fooled = sign_steps(model, x, y, theta, eps, steps, lambda t: step, ce, kernels)
    if variant == "han":
        return x_adv, fooled
    if variant != "strong":
        raise ValueError(f"unknown SAP variant {variant!r}: choose han or strong")
    for offset in range(1, N_CLASSES):
        rest = torch.nonzero(~fooled).flatten()
        if len(rest) == 0:
            break
        target = (y[rest] + offset) % N_CLASSES

        def targeted(z, yb, idx, target=target):
            zt = z.gather(1, target[idx][:, None]).squeeze(1)
            return (zt - z.gather(1, yb[:, None]).squeeze(1)).sum()
        xs, fs = sign_steps(model, x[rest], y[rest], torch.zeros_like(x[rest]), eps,
                            strong_steps, lambda t: step if t < strong_steps // 2 else step / 4,
                            targeted, kernels)
        x_adv[rest[fs]] = xs[fs]
        fooled[rest[fs]] = True
    return x_adv, fooled


def sap_attack(model, x, y, eps, variant=VARIANT, steps=STEPS, init_steps=INIT_STEPS,
               strong_steps=STRONG_STEPS, batch_size=BATCH_SIZE, progress=False):
    """SAP on the clean-correct beats of (x, y); returns x_adv (x where not attacked)."""
    model.eval()
    x_adv = x.clone()
    kernels = gaussian_kernels(dtype=x.dtype, device=x.device)
    todo = torch.nonzero(predict(model, x) == y).flatten()
    bar = progress_bar(total=len(todo), desc=f"sap-{variant} eps={eps:g}", unit="beat",
                       disable=not progress, leave=False)
    for i in range(0, len(todo), batch_size):
        b = todo[i:i + batch_size]
        x_adv[b] = sap_batch(model, x[b], y[b], eps, variant, steps, init_steps, strong_steps,
                             kernels)[0]
        bar.update(len(b))
    bar.close()
    return x_adv


# ----------------------------------------------------------------------------- CLI
def get_args_parser():
    p = parser(__doc__)
    add_target_args(p)
    num = arg_number
    p.add_argument("--eps", type=eps_arg, nargs="+", default=EPS_LIST, help="L-inf budgets")
    p.add_argument("--variant", choices=["han", "strong"], default=VARIANT,
                   help="han (Han et al. 2020) or strong (han, then targeted runs)")
    p.add_argument("--steps", type=num(int, 1), default=STEPS, help="sign steps on theta")
    p.add_argument("--init-steps", type=num(int, 0), default=INIT_STEPS,
                   help="sign PGD steps that initialise theta")
    p.add_argument("--strong-steps", type=num(int, 1), default=STRONG_STEPS,
                   help="strong: sign steps per target class")
    p.add_argument("--batch-size", type=num(int, 1), default=BATCH_SIZE,
                   help="beats attacked at once (speed only)")
    return p


def main(argv=None):
    return run(get_args_parser().parse_args(argv))


def run(args):
    """The sweep that `args` (get_args_parser's namespace) describes."""
    target, subset, rc = open_attack(args)
    if rc:
        return rc
    model, x, y = target["model"], target["x"], target["y"]
    tag = (f"sap-{args.variant}-s{args.steps}-i{args.init_steps}"
           + (f"-t{args.strong_steps}" if args.variant == "strong" else "") + subset)
    settings_for = lambda eps: {"eps": eps, "variant": args.variant, "steps": args.steps,
                                "init_steps": args.init_steps, "seed": args.seed,
                                "strong_steps": args.strong_steps if args.variant == "strong"
                                else None, "batch_size": args.batch_size}
    attack_at = lambda eps, pos: sap_attack(model, x, y, eps, args.variant, args.steps,
                                      args.init_steps, args.strong_steps, args.batch_size,
                                      progress=True)
    return run_sweep(target, args.eps, f"sap-{args.variant}", tag, settings_for, attack_at,
                     args.out_dir, args.force)


if __name__ == "__main__":
    run_cli(main)
