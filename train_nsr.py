"""Train with the paper's two regularisers (METHOD.md 4): NSR (method 2, the headline) and gradient
alignment (method 1). Both add to MSE + margin, on the correctly classified samples.

    python train_nsr.py --arch cnn --method nsr            # beta 0.3 (CNN), 0.4 (MLP)
    python train_nsr.py --arch mlp --method align          # w 0.2 (CNN), 1.0 (MLP); no biases
    python train_nsr.py --arch cnn --method nsr --beta 0.5 --epochs 5 --resume

The loop (sampler, kernel normalisation, dead units, checkpoints, --resume) is train_baseline's.
One forward, with the input requiring grad, serves the MSE, margin and regulariser terms; the
regulariser's per-sample input gradients come from one double-backward pass (losses.py).
"""

from losses import alignment_loss_from_logits, margin_loss, mse_loss, nsr_loss_from_logits
from utils import run_cli
from train_baseline import main_for

ARCH = "cnn"
METHOD = "nsr"
NSR_BETA = {"cnn": 0.3, "mlp": 0.4}     # loss = MSE + margin + beta * NSR
ALIGN_BETA = {"cnn": 0.2, "mlp": 1.0}   # loss = MSE + margin + w * alignment
NSR_EPS = 0.01                          # NSR_i = n_i / (|s_i| + 0.01)
NSR_MAX_NOISE = 1.0                     # n_i = ||d s_i/d x_i||_1 * 1.0 (L-inf budget 1)
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


def main(argv=None):
    return main_for(__doc__.split("\n")[0], METHODS, METHOD, nsr_objective, argv)


if __name__ == "__main__":
    run_cli(main)
