"""Train the paper's baselines (SPEC 2-4): CE, MSE, MSE+margin, Jacobian regularisation, PGD
adversarial training. The training loop here is shared with train_nsr.py.

    python train_baseline.py --arch cnn --method ce
    python train_baseline.py --arch mlp --method adv --adv-eps 0.2
    python train_baseline.py --arch cnn --method jacob --epochs 2 --max-train-samples 20000
    python train_baseline.py --arch cnn --method ce --resume      # continue the last checkpoint

Each epoch draws 5 x (majority class count) samples with the class-balanced sampler, in batches
of 128; before every step the kernels are normalised; after it |dL/dW| is accumulated and at the
start of every epoch after the first, dead units are re-initialised (SPEC 3). After each epoch:
validation balanced accuracy, the last checkpoint results/checkpoints/{name}.pt and the best on
validation {name}_best.pt. Every epoch is seeded from (seed, epoch), so --resume gives the same
numbers as a run that was never interrupted.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from attack_pgd import pgd_batch, predict
from losses import decoupled_decay_, jacobian_loss_from_logits, margin_loss, mse_loss
from models import build_model, get_device, load_checkpoint, save_checkpoint, tune_malloc
from preprocess import (DATA_DIR, DataError, balanced_epoch_indices, classification_metrics,
                        load_cache)

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
DECAY_METHODS = ("ce", "jacob", "adv")     # the CE recipe's decoupled decay


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


# ----------------------------------------------------------------------------- shared loop
def run_name(cfg):
    if cfg["method"] == "adv":
        return f"{cfg['arch']}_adv_{cfg['adv_eps']:g}"
    if cfg["method"] in ("nsr", "align"):
        return f"{cfg['arch']}_{cfg['method']}_{cfg['beta']:g}"
    return f"{cfg['arch']}_{cfg['method']}"


@torch.no_grad()
def validate(model, x, y):
    model.eval()
    m = classification_metrics(y.cpu().numpy(), predict(model, x).cpu().numpy())
    model.train()
    return m


def train_step(model, optimizer, x, y, cfg, objective, gen):
    """One step of SPEC 3-4: normalise kernels, objective, backward, accumulate |dL/dW|,
    the CE recipe's decoupled decay (ce, jacob, adv), Adamax step."""
    model.normalize_kernels()
    optimizer.zero_grad(set_to_none=True)
    loss, terms = objective(model, x, y, cfg, gen)
    loss.backward()
    model.accumulate_grad()
    if cfg["method"] in DECAY_METHODS:
        decoupled_decay_(model.parameters(), cfg["lr"], cfg["decay_l1"], cfg["decay_l2"])
    optimizer.step()
    return {"loss": loss.item(), **terms}


def epoch_seed(seed, epoch):
    return seed * 100_003 + epoch


def train(cfg, objective):
    """The training loop of SPEC 2-3 for any objective(model, x, y, cfg, gen) -> (loss, terms)."""
    device = get_device(cfg["device"])
    data = load_cache(cfg["data_dir"], cfg["sample"])
    xtr, ytr = data["X_train"].to(device), data["Y_train"].to(device)
    xva, yva = data["X_val"].to(device), data["Y_val"].to(device)
    ytr_np = data["Y_train"].numpy()
    name = cfg["name"]
    last_path = os.path.join(cfg["out_dir"], f"{name}.pt")
    best_path = os.path.join(cfg["out_dir"], f"{name}_best.pt")

    torch.manual_seed(cfg["seed"])
    model = build_model(cfg["arch"], bias=cfg["bias"]).to(device)
    optimizer = torch.optim.Adamax(model.parameters(), lr=cfg["lr"])
    history, start = [], 0
    if cfg["resume"] and os.path.exists(last_path):
        model, ckpt = load_checkpoint(last_path, device, arch=cfg["arch"])
        changed = {k for k in cfg if k not in ("epochs", "resume", "device")
                   and ckpt["config"].get(k) != cfg[k]}
        if changed:
            raise ValueError(f"--resume: {last_path} was trained with other settings: "
                             + ", ".join(f"{k}={ckpt['config'].get(k)!r}" for k in sorted(changed)))
        optimizer = torch.optim.Adamax(model.parameters(), lr=cfg["lr"])
        optimizer.load_state_dict(ckpt["optimizer"])
        history, start = ckpt["history"], ckpt["epoch"] + 1
        print(f"resuming {name} after epoch {ckpt['epoch'] + 1}/{cfg['epochs']}")
    best = max((h["val_balanced_accuracy"] for h in history), default=-1.0)
    model.train()
    print(f"training {name} on {device} ({data['meta']['source']} data, "
          f"{len(ytr)} train / {len(yva)} val beats)")

    for epoch in range(start, cfg["epochs"]):
        torch.manual_seed(epoch_seed(cfg["seed"], epoch))
        gen = torch.Generator(device=device).manual_seed(epoch_seed(cfg["seed"], epoch))
        reinit = model.reinit_dead_units() if epoch > 0 else 0
        idx = torch.from_numpy(balanced_epoch_indices(ytr_np, cfg["seed"], epoch,
                                                      cfg["max_train_samples"])).to(device)
        sums, n_batches, t0 = {}, 0, time.perf_counter()
        bar = tqdm(range(0, len(idx), cfg["batch_size"]), desc=f"{name} {epoch + 1}/{cfg['epochs']}",
                   unit="batch", leave=False, mininterval=1.0)
        for i in bar:
            b = idx[i:i + cfg["batch_size"]]
            terms = train_step(model, optimizer, xtr[b], ytr[b], cfg, objective, gen)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            n_batches += 1
            if n_batches % 20 == 0:
                bar.set_postfix(loss=f"{sums['loss'] / n_batches:.4f}")
        val = validate(model, xva, yva)
        record = {"epoch": epoch, **{k: v / max(n_batches, 1) for k, v in sums.items()},
                  "val_balanced_accuracy": val["balanced_accuracy"],
                  "val_accuracy": val["accuracy"], "val_sensitivity": val["sensitivity"],
                  "dead_units_reinit": reinit, "samples": len(idx),
                  "seconds": time.perf_counter() - t0}
        history.append(record)
        save_checkpoint(last_path, model, optimizer, epoch, cfg, history)
        if val["balanced_accuracy"] > best:
            best = val["balanced_accuracy"]
            save_checkpoint(best_path, model, optimizer, epoch, cfg, history)
        print(f"{name} epoch {epoch + 1}/{cfg['epochs']}: loss {record['loss']:.4f} "
              f"val balanced acc {val['balanced_accuracy']:.4f} acc {val['accuracy']:.4f} "
              f"({record['seconds']:.0f} s)")
    return model, history


# ----------------------------------------------------------------------------- CLI
def common_parser(description, arch, methods, method, epochs=EPOCHS):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--arch", choices=["mlp", "cnn"], default=arch)
    p.add_argument("--method", choices=methods, default=method)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--lr", type=float, default=LR)
    p.add_argument("--margin", type=float, default=MARGIN)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--max-train-samples", type=int, default=None,
                   help="samples per epoch (the balanced epoch truncated; quick runs)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--data-dir", default=DATA_DIR)
    p.add_argument("--sample", action="store_true", help="train on the committed sample's cache")
    p.add_argument("--out-dir", default=OUT_DIR)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    return p


def check_args(p, args):
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.lr <= 0:
        p.error("--lr must be > 0")
    if getattr(args, "beta", None) is not None and args.beta < 0:
        p.error("--beta must be >= 0")


def config_from_args(args, extra):
    cfg = {"arch": args.arch, "method": args.method, "epochs": args.epochs,
           "batch_size": args.batch_size, "lr": args.lr, "margin": args.margin,
           "seed": args.seed, "max_train_samples": args.max_train_samples,
           "device": args.device, "data_dir": args.data_dir, "sample": args.sample,
           "out_dir": args.out_dir, "resume": args.resume, **extra}
    cfg["name"] = run_name(cfg)
    return cfg


def run(cfg, objective):
    tune_malloc()
    try:
        train(cfg, objective)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv=None):
    p = common_parser(__doc__.split("\n")[0], ARCH, METHODS, METHOD)
    p.add_argument("--beta", type=float, default=JACOB_BETA, help="Jacobian weight (jacob)")
    p.add_argument("--jacob-norm", type=int, choices=[1, 2], default=JACOB_NORM)
    p.add_argument("--adv-eps", type=float, default=ADV_EPS)
    p.add_argument("--adv-steps", type=int, default=ADV_STEPS)
    p.add_argument("--adv-step-size", type=float, default=ADV_STEP_SIZE)
    p.add_argument("--decay-l1", type=float, default=DECAY_L1)
    p.add_argument("--decay-l2", type=float, default=DECAY_L2)
    args = p.parse_args(argv)
    check_args(p, args)
    if args.adv_eps < 0:
        p.error("--adv-eps must be >= 0")
    extra = {"bias": True, "decay_l1": args.decay_l1, "decay_l2": args.decay_l2}
    if args.method == "jacob":
        extra.update(beta=args.beta, jacob_norm=args.jacob_norm)
    if args.method == "adv":
        extra.update(adv_eps=args.adv_eps, adv_steps=args.adv_steps,
                     adv_step_size=args.adv_step_size)
    return run(config_from_args(args, extra), baseline_objective)


if __name__ == "__main__":
    sys.exit(main())
