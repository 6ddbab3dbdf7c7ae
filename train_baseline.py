"""Train the paper's baselines (METHOD.md 2-4): CE, MSE, MSE+margin, Jacobian regularisation, PGD
adversarial training. The training loop (training.py) is shared with train_nsr.py.

    python train_baseline.py --arch cnn --method ce
    python train_baseline.py --arch mlp --method adv --adv-eps 0.2
    python train_baseline.py --arch cnn --method jacob --epochs 2 --max-train-samples 20000
    python train_baseline.py --arch cnn --method ce --resume      # continue the last checkpoint

Each epoch draws 5 x (majority class count) samples with the class-balanced sampler, in batches
of 128; before every step the kernels are normalised; after it |dL/dW| is accumulated and at the
start of every epoch after the first, dead units are re-initialised (METHOD.md 3). After each epoch:
validation balanced accuracy, the last checkpoint results/checkpoints/{name}.pt and the best on
validation {name}_best.pt. Every epoch is seeded from (seed, epoch), so --resume gives the same
numbers as a run that was never interrupted.
"""
import argparse

import torch.nn.functional as F

import protocol
import training
from attack_pgd import pgd_batch
from losses import jacobian_loss_from_logits, margin_loss, mse_loss
from utils import HelpFormatter, arg_number, run_cli

# ----------------------------------------------------------------------------- the paper's values
ARCH = "cnn"
METHOD = "ce"
EPOCHS = 50
BATCH_SIZE = 128
LR = 1e-3                 # Adamax
SEED = 0
DECAY_L1 = 0.01           # CE recipe: p -= lr*0.01*sign(p), then p -= lr*0.01*p
DECAY_L2 = 0.01
MARGIN = 1.0
JACOB_BETA = 0.7          # CE + 0.7 * Jacobian L1
JACOB_NORM = 1
ADV_EPS = 0.1             # adversarial training: 10-step PGD, step 0.01, eps in {0.1, 0.2, 0.3}
ADV_STEPS = 10
ADV_STEP_SIZE = 0.01
OUT_DIR = "results/checkpoints"

METHODS = ("ce", "mse", "mse_margin", "jacob", "adv")
DECAY_METHODS = protocol.DECAY_METHODS     # the CE recipe's decoupled decay


# ----------------------------------------------------------------------------- objectives
def baseline_objective(model, x, y, cfg, gen):
    """Return (loss, {term: value}) for one batch."""
    method = cfg["method"]
    if method == "jacob":
        x = x.detach().requires_grad_(True)
    z = model(x)
    if method == "ce":
        return F.cross_entropy(z, y), {}
    if method == "mse":
        return mse_loss(z, y), {}
    if method == "mse_margin":
        correct = z.argmax(1) == y
        mse, mar = mse_loss(z, y), margin_loss(z[correct], y[correct], cfg["margin"])
        return mse + mar, {"mse": mse.item(), "margin": mar.item()}
    if method == "jacob":
        ce, jac = F.cross_entropy(z, y), jacobian_loss_from_logits(z, x, cfg["jacob_norm"])
        return ce + cfg["beta"] * jac, {"ce": ce.item(), "jacob": jac.item()}
    if method == "adv":
        x_adv, _ = pgd_batch(model, x, y, cfg["adv_eps"], cfg["adv_steps"],
                             cfg["adv_step_size"], variant="sign", loss="ce", generator=gen,
                             early_stop=False)
        ce, ce_adv = F.cross_entropy(z, y), F.cross_entropy(model(x_adv), y)
        return 0.5 * ce + 0.5 * ce_adv, {"ce": ce.item(), "ce_adv": ce_adv.item()}
    raise ValueError(f"unknown method {method!r}")


# ----------------------------------------------------------------------------- the run config
def default_config(arch, method):
    """One run's defaults: the UPPER_CASE constants above, as edited there (the paper's values
    unless someone changed them; training.run_name compares with protocol.py's frozen ones)."""
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not train_baseline.py's ({', '.join(METHODS)})"
                         + ("; train it with train_nsr.py" if method in ("nsr", "align") else ""))
    cfg = protocol.paper_config(arch, method)      # the keys a method has, and their checks
    cfg.update(batch_size=BATCH_SIZE, lr=LR, margin=MARGIN, seed=SEED, epochs=EPOCHS,
               out_dir=OUT_DIR)
    if method in DECAY_METHODS:
        cfg.update(decay_l1=DECAY_L1, decay_l2=DECAY_L2)
    if method == "jacob":
        cfg.update(beta=JACOB_BETA, jacob_norm=JACOB_NORM)
    elif method == "adv":
        cfg.update(adv_eps=ADV_EPS, adv_steps=ADV_STEPS, adv_step_size=ADV_STEP_SIZE)
    return cfg


# make_config(arch, method, **overrides): a run's whole config over the defaults above;
# config_argv(cfg): the flags that rebuild it with main()
make_config, config_argv = training.configurator(default_config)


# ----------------------------------------------------------------------------- CLI
def get_args_parser():
    """This script's flags, defaults from the constants above; a flag whose default depends on
    the method defaults to None = the constant."""
    num = arg_number
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--arch", choices=list(protocol.ARCHS), default=ARCH, help="model")
    p.add_argument("--method", choices=METHODS, default=METHOD, help="training objective")
    training.add_run_args(p, default_config(ARCH, METHOD))
    p.add_argument("--beta", type=num(float, 0), default=None,
                   help=f"jacob: weight of the Jacobian penalty (default {JACOB_BETA})")
    p.add_argument("--jacob-norm", type=int, choices=[1, 2], default=None,
                   help=f"jacob: norm of the Jacobian penalty (default {JACOB_NORM})")
    p.add_argument("--adv-eps", type=num(float, 0, 1), default=None,
                   help=f"adv: L-inf budget (paper 0.1, 0.2, 0.3; default {ADV_EPS})")
    p.add_argument("--adv-steps", type=num(int, 1), default=None,
                   help=f"adv: PGD steps (default {ADV_STEPS})")
    p.add_argument("--adv-step-size", type=num(float, 0, lo_open=True), default=None,
                   help=f"adv: PGD step (default {ADV_STEP_SIZE})")
    p.add_argument("--decay-l1", type=num(float, 0), default=None,
                   help=f"ce/jacob/adv: decoupled L1 decay (default {DECAY_L1})")
    p.add_argument("--decay-l2", type=num(float, 0), default=None,
                   help=f"ce/jacob/adv: decoupled L2 decay (default {DECAY_L2})")
    return p


def run(cfg):
    """Train the run config `cfg` (make_config's: reproduce.py builds it without an argv)."""
    return training.run(cfg, baseline_objective)


def main(argv=None):
    """Parse flags into the run's config and train it; exit 2 on bad input."""
    return training.main(get_args_parser(), make_config, baseline_objective, argv)


if __name__ == "__main__":
    run_cli(main)
