"""Train with the paper's two regularisers (METHOD.md 4): NSR (method 2, the headline) and gradient
alignment (method 1). Both add to MSE + margin, on the correctly classified samples.

    python train_nsr.py --arch cnn --method nsr            # beta 0.3 (CNN), 0.4 (MLP)
    python train_nsr.py --arch mlp --method align          # w 0.2 (CNN), 1.0 (MLP); no biases
    python train_nsr.py --arch cnn --method nsr --beta 0.5 --epochs 5 --resume

The loop (sampler, kernel normalisation, dead units, checkpoints, --resume) is training.py's.
One forward, with the input requiring grad, serves the MSE, margin and regulariser terms; the
regulariser's per-sample input gradients come from one double-backward pass (losses.py).
"""
import argparse

import protocol
import training
from losses import alignment_loss_from_logits, margin_loss, mse_loss, nsr_loss_from_logits
from utils import HelpFormatter, arg_number, run_cli

ARCH = "cnn"
METHOD = "nsr"
EPOCHS = 50
BATCH_SIZE = 128
LR = 1e-3                               # Adamax
MARGIN = 1.0
SEED = 0
NSR_BETA = {"cnn": 0.3, "mlp": 0.4}     # loss = MSE + margin + beta * NSR
ALIGN_BETA = {"cnn": 0.2, "mlp": 1.0}   # loss = MSE + margin + w * alignment
NSR_EPS = 0.01                          # NSR_i = n_i / (|s_i| + 0.01)
NSR_MAX_NOISE = 1.0                     # n_i = ||d s_i/d x_i||_1 * 1.0 (L-inf budget 1)
OUT_DIR = "results/checkpoints"
METHODS = ("nsr", "align")


def nsr_objective(model, x, y, cfg, gen=None):
    """MSE + margin + beta * regulariser; margin and regulariser on the correct samples."""
    x = x.detach().requires_grad_(True)
    z = model(x)
    correct = z.argmax(1) == y
    mse, mar = mse_loss(z, y), margin_loss(z[correct], y[correct], cfg["margin"])
    if cfg["method"] == "nsr":
        reg = nsr_loss_from_logits(z, x, y, correct, cfg["nsr_eps"], cfg["nsr_max_noise"])
    else:
        reg = alignment_loss_from_logits(z, x, y, correct)
    loss = mse + mar + cfg["beta"] * reg
    return loss, {"mse": mse.item(), "margin": mar.item(), cfg["method"]: reg.item()}


def default_config(arch, method):
    """One run's defaults: the UPPER_CASE constants above, as edited there (the paper's values
    unless someone changed them; training.run_name compares with protocol.py's frozen ones)."""
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not train_nsr.py's ({', '.join(METHODS)}); "
                         "train it with train_baseline.py")
    cfg = protocol.paper_config(arch, method)      # the keys a method has, and their checks
    cfg.update(batch_size=BATCH_SIZE, lr=LR, margin=MARGIN, seed=SEED, epochs=EPOCHS,
               out_dir=OUT_DIR)
    if method == "nsr":
        cfg.update(beta=NSR_BETA[arch], nsr_eps=NSR_EPS, nsr_max_noise=NSR_MAX_NOISE)
    else:
        cfg.update(beta=ALIGN_BETA[arch])
    return cfg


# make_config(arch, method, **overrides): a run's whole config over the defaults above;
# config_argv(cfg): the flags that rebuild it with main()
make_config, config_argv = training.configurator(default_config)


def get_args_parser():
    """This script's flags, defaults from the constants above."""
    num = arg_number
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--arch", choices=list(protocol.ARCHS), default=ARCH, help="model")
    p.add_argument("--method", choices=METHODS, default=METHOD,
                   help="nsr (method 2) or align (method 1)")
    training.add_run_args(p, default_config(ARCH, METHOD))
    p.add_argument("--beta", type=num(float, 0), default=None,
                   help=f"regulariser weight (default: nsr {NSR_BETA}, align {ALIGN_BETA})")
    p.add_argument("--nsr-eps", type=num(float, 0, lo_open=True), default=None,
                   help=f"nsr: NSR_i = n_i / (|s_i| + nsr_eps) (default {NSR_EPS})")
    p.add_argument("--nsr-max-noise", type=num(float, 0, lo_open=True), default=None,
                   help=f"nsr: L-inf budget behind n_i (default {NSR_MAX_NOISE})")
    return p


def run(cfg):
    """Train the run config `cfg` (make_config's: reproduce.py builds it without an argv)."""
    return training.run(cfg, nsr_objective)


def main(argv=None):
    """Parse flags into the run's config and train it; exit 2 on bad input."""
    return training.main(get_args_parser(), make_config, nsr_objective, argv)


if __name__ == "__main__":
    run_cli(main)
