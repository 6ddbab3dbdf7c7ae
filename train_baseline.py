"""Train the paper's baselines (METHOD.md 2-4): CE, MSE, MSE+margin, Jacobian regularisation, PGD
adversarial training. The training loop here is shared with train_nsr.py.

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
import os
import sys
import time

import torch
import torch.nn.functional as F

import protocol
from attack_common import predict
from attack_pgd import pgd_batch
from losses import decoupled_decay_, jacobian_loss_from_logits, margin_loss, mse_loss
from models import build_model, load_checkpoint, save_checkpoint
from utils import (HelpFormatter, arg_number, get_device, hold_folder, progress_bar,
                   release_folder, run_cli, tune_malloc)
from preprocess import (DATA_DIR, DataError, balanced_epoch_indices, cache_path,
                        canonical_data_sha256, classification_metrics, data_sha256, load_cache)

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


# ----------------------------------------------------------------------------- one config per run
# A run's config is built once (make_config): the paper's values from the constants above (and
# train_nsr.py's), then overrides. Its name, checkpoint paths and argv all derive from it.
RUN_DEFAULTS = {"epochs": EPOCHS, "device": "auto", "data_dir": DATA_DIR, "sample": False,
                "out_dir": OUT_DIR, "resume": False}    # how long and where, not what is trained
# every setting that differs from the paper's frozen value (protocol.paper_config) is part of
# the run name, with this tag (adv_eps, and beta for nsr/align, are always in it; jacob's beta
# as _b); the epochs are not: --resume may extend a run
NAME_TAGS = {"lr": "lr", "batch_size": "bs", "margin": "m", "max_train_samples": "n",
             "decay_l1": "dl1", "decay_l2": "dl2", "jacob_norm": "L", "adv_steps": "k",
             "adv_step_size": "as", "nsr_eps": "ne", "nsr_max_noise": "nm", "bias": "bias"}


def default_config(arch, method):
    """One run's defaults: the UPPER_CASE constants at the top of this file and of
    train_nsr.py, as edited there (the paper's values unless someone changed them)."""
    import train_nsr        # its constants; imported here (train_nsr imports this module)
    cfg = protocol.paper_config(arch, method)      # the keys a method has, and their checks
    cfg.update(batch_size=BATCH_SIZE, lr=LR, margin=MARGIN, seed=SEED)
    if method in DECAY_METHODS:
        cfg.update(decay_l1=DECAY_L1, decay_l2=DECAY_L2)
    if method == "jacob":
        cfg.update(beta=JACOB_BETA, jacob_norm=JACOB_NORM)
    elif method == "adv":
        cfg.update(adv_eps=ADV_EPS, adv_steps=ADV_STEPS, adv_step_size=ADV_STEP_SIZE)
    elif method == "nsr":
        cfg.update(beta=train_nsr.NSR_BETA[arch], nsr_eps=train_nsr.NSR_EPS,
                   nsr_max_noise=train_nsr.NSR_MAX_NOISE)
    elif method == "align":
        cfg.update(beta=train_nsr.ALIGN_BETA[arch])
    return cfg


def paper_config(arch, method):
    """The paper's settings for one (arch, method) (METHOD.md 3-4), frozen in protocol.py:
    what every run name and report label is compared with, whatever the constants above say."""
    return protocol.paper_config(arch, method)


def make_config(arch, method, **overrides):
    """The whole config of a run; None leaves the paper's value. A setting the method does not
    have is a ValueError naming it."""
    cfg = {**default_config(arch, method), **RUN_DEFAULTS}
    for k, v in overrides.items():
        if v is None:
            continue
        if k not in cfg:
            raise ValueError(f"--{k.replace('_', '-')} does not apply to method {method!r}")
        cfg[k] = v
    cfg["name"] = run_name(cfg)
    return cfg


def run_name(cfg):
    """{arch}_{method}[_{its parameter}][_{tag}{value} for each non-paper setting]_s{seed}."""
    method = cfg["method"]
    paper = paper_config(cfg["arch"], method)
    name = f"{cfg['arch']}_{method}"
    if method == "adv":
        name += f"_{cfg['adv_eps']:g}"
    elif method in ("nsr", "align"):
        name += f"_{cfg['beta']:g}"
    elif method == "jacob" and cfg["beta"] != paper["beta"]:
        name += f"_b{cfg['beta']:g}"
    for key, tag in NAME_TAGS.items():
        if key in cfg and cfg[key] != paper.get(key):
            v = cfg[key]
            name += f"_{tag}{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) \
                else f"_{tag}{v}"
    return f"{name}_s{cfg['seed']}"


def config_argv(cfg):
    """The command-line flags that rebuild `cfg` with main() (train_nsr.main for nsr/align)."""
    paper = default_config(cfg["arch"], cfg["method"])
    argv = ["--arch", cfg["arch"], "--method", cfg["method"]]
    for k, v in cfg.items():
        if k in ("arch", "method", "name", "bias") or v is None:
            continue
        if k in RUN_DEFAULTS and v == RUN_DEFAULTS[k] and k != "epochs":
            continue
        if k in paper and v == paper[k] and k != "seed":
            continue
        flag = "--" + k.replace("_", "-")
        argv += [flag] if v is True else ([] if v is False else [flag, str(v)])
    return argv


def checkpoint_paths(cfg):
    """(last, best) checkpoint files of a run."""
    base = os.path.join(cfg["out_dir"], cfg["name"])
    return base + ".pt", base + "_best.pt"


@torch.no_grad()
def validate(model, x, y):
    model.eval()
    m = classification_metrics(y.cpu().numpy(), predict(model, x).cpu().numpy())
    model.train()
    return m


class NonFiniteLoss(ValueError):
    pass


def train_step(model, optimizer, x, y, cfg, objective, gen):
    """One step of METHOD.md 3-4: normalise kernels, objective, backward, accumulate |dL/dW|,
    the CE recipe's decoupled decay (ce, jacob, adv), Adamax step. A non-finite loss stops
    training before it touches the weights."""
    model.normalize_kernels()
    optimizer.zero_grad(set_to_none=True)
    loss, terms = objective(model, x, y, cfg, gen)
    if not torch.isfinite(loss):
        raise NonFiniteLoss(f"loss is {loss.item()} ({terms}): training stopped, no checkpoint "
                            "written; check the objective's settings (--beta, --adv-eps, --lr)")
    loss.backward()
    model.accumulate_grad()
    if cfg["method"] in DECAY_METHODS:
        decoupled_decay_(model.parameters(), cfg["lr"], cfg["decay_l1"], cfg["decay_l2"])
    optimizer.step()
    return {"loss": loss.item(), **terms}


def epoch_seed(seed, epoch):
    return seed * 100_003 + epoch


def save_finite(path, model, optimizer, epoch, cfg, history, data=None):
    """A checkpoint holding a NaN or inf weight is never written."""
    bad = [n for n, t in model.state_dict().items() if t.is_floating_point()
           and not torch.isfinite(t).all()]
    if bad:
        raise NonFiniteLoss(f"non-finite weights in {', '.join(bad)} after epoch {epoch + 1}: "
                            f"{path} not written")
    save_checkpoint(path, model, optimizer, epoch, cfg, history, data)


def sync_best(best_path, model, optimizer, epoch, cfg, history, data):
    """--resume repairs a best checkpoint left behind by a kill: when
    the last epoch is the best one, the best file must hold that epoch."""
    best_epoch = max(history, key=lambda h: h["val_balanced_accuracy"])["epoch"]
    if best_epoch != epoch:
        return
    try:
        have = torch.load(best_path, map_location="cpu", weights_only=True)["epoch"]
    except Exception:
        have = None
    if have != epoch:
        print(f"repairing {best_path}: it held epoch {have if have is None else have + 1}, "
              f"the best is epoch {epoch + 1}")
        save_finite(best_path, model, optimizer, epoch, cfg, history, data)


def setting_changes(stored, cfg):
    """The settings in which a checkpoint's stored config differs from cfg: all but how long
    (epochs) and where (device, folders); the data are compared by digest."""
    return sorted(k for k in set(cfg) | set(stored)
                  if k not in ("epochs", "resume", "device", "out_dir", "data_dir")
                  and stored.get(k) != cfg.get(k))


def resume(cfg, device, data_info):
    """(model, optimizer, history, first epoch) from the last checkpoint of cfg's run; refused
    when there is none, or it was trained with other settings or on other data."""
    last_path, best_path = checkpoint_paths(cfg)
    if not os.path.exists(last_path):
        raise ValueError(f"--resume: no checkpoint {last_path} to continue (drop --resume "
                         "to start a new run)")
    model, ckpt = load_checkpoint(last_path, device, arch=cfg["arch"])
    changed = setting_changes(ckpt["config"], cfg)
    # where it lives and where the data are read from are no setting: the checkpoint was found
    # in out_dir (however spelled: ./, a symlink, absolute), and the data are compared by digest
    recorded = (ckpt.get("data") or {}).get("sha256")
    if recorded is not None and canonical_data_sha256(recorded) != data_info["sha256"]:
        raise ValueError(f"--resume: {last_path} was trained on other data than "
                         f"{data_info['cache']} (sha256 {ckpt['data']['sha256'][:12]} vs "
                         f"{data_info['sha256'][:12]})")
    if changed:
        raise ValueError(f"--resume: {last_path} was trained with other settings: "
                         + ", ".join(f"{k}={ckpt['config'].get(k)!r} (now {cfg.get(k)!r})"
                                     for k in sorted(changed)))
    optimizer = torch.optim.Adamax(model.parameters(), lr=cfg["lr"])
    optimizer.load_state_dict(ckpt["optimizer"])
    sync_best(best_path, model, optimizer, ckpt["epoch"], cfg, ckpt["history"], data_info)
    print(f"resuming {cfg['name']} after epoch {ckpt['epoch'] + 1}/{cfg['epochs']}")
    return model, optimizer, ckpt["history"], ckpt["epoch"] + 1


def train(cfg, objective):
    """The training loop of METHOD.md 2-3 for any objective(model, x, y, cfg, gen) -> (loss, terms)."""
    device = get_device(cfg["device"])
    data = load_cache(cfg["data_dir"], cfg["sample"])
    xtr, ytr = data["X_train"].to(device), data["Y_train"].to(device)
    xva, yva = data["X_val"].to(device), data["Y_val"].to(device)
    ytr_np = data["Y_train"].numpy()
    data_info = {"cache": os.path.abspath(cache_path(cfg["data_dir"], cfg["sample"])),
                 "sha256": data_sha256(cfg["data_dir"], cfg["sample"]),
                 "source": data["meta"]["source"]}
    name = cfg["name"]
    last_path, best_path = checkpoint_paths(cfg)

    torch.manual_seed(cfg["seed"])
    model = build_model(cfg["arch"], bias=cfg["bias"]).to(device)
    optimizer = torch.optim.Adamax(model.parameters(), lr=cfg["lr"])
    history, start = [], 0
    if cfg["resume"]:
        model, optimizer, history, start = resume(cfg, device, data_info)
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
        bar = progress_bar(range(0, len(idx), cfg["batch_size"]),
                           desc=f"{name} {epoch + 1}/{cfg['epochs']}", unit="batch", leave=False,
                           mininterval=1.0)
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
        # best before last: a kill in between leaves last one epoch behind, and --resume
        # recomputes that epoch (deterministically) instead of keeping a stale best
        if val["balanced_accuracy"] > best:
            best = val["balanced_accuracy"]
            save_finite(best_path, model, optimizer, epoch, cfg, history, data_info)
        save_finite(last_path, model, optimizer, epoch, cfg, history, data_info)
        print(f"{name} epoch {epoch + 1}/{cfg['epochs']}: loss {record['loss']:.4f} "
              f"val balanced acc {val['balanced_accuracy']:.4f} acc {val['accuracy']:.4f} "
              f"({record['seconds']:.0f} s)")
    return model, history


# ----------------------------------------------------------------------------- CLI
def build_parser(description, methods, method):
    """Every flag of both training scripts, defaults from the constants above; a flag whose
    paper value depends on the method (or arch) defaults to None = the paper's value."""
    num = arg_number
    p = argparse.ArgumentParser(description=description,
                                formatter_class=HelpFormatter)
    p.add_argument("--arch", choices=["mlp", "cnn"], default=ARCH, help="model")
    p.add_argument("--method", choices=methods, default=method, help="training objective")
    p.add_argument("--epochs", type=num(int, 1), default=EPOCHS, help="epochs in all")
    p.add_argument("--batch-size", type=num(int, 1), default=BATCH_SIZE, help="batch size")
    p.add_argument("--lr", type=num(float, 0, lo_open=True), default=LR, help="Adamax lr")
    p.add_argument("--margin", type=num(float, 0, lo_open=True), default=MARGIN,
                   help="margin of the hinge term")
    p.add_argument("--seed", type=num(int, 0), default=SEED, help="training seed")
    p.add_argument("--max-train-samples", type=num(int, 1), default=None,
                   help="samples per epoch (the balanced epoch truncated; quick runs)")
    p.add_argument("--beta", type=num(float, 0), default=None,
                   help=f"regulariser weight; paper: jacob {JACOB_BETA}, nsr and align per arch "
                        "(train_nsr.py)")
    p.add_argument("--jacob-norm", type=int, choices=[1, 2], default=None,
                   help=f"jacob: norm of the Jacobian penalty (paper {JACOB_NORM})")
    p.add_argument("--adv-eps", type=num(float, 0, 1), default=None,
                   help=f"adv: L-inf budget (paper 0.1, 0.2, 0.3; default {ADV_EPS})")
    p.add_argument("--adv-steps", type=num(int, 1), default=None,
                   help=f"adv: PGD steps (paper {ADV_STEPS})")
    p.add_argument("--adv-step-size", type=num(float, 0, lo_open=True), default=None,
                   help=f"adv: PGD step (paper {ADV_STEP_SIZE})")
    p.add_argument("--decay-l1", type=num(float, 0), default=None,
                   help=f"ce/jacob/adv: decoupled L1 decay (paper {DECAY_L1})")
    p.add_argument("--decay-l2", type=num(float, 0), default=None,
                   help=f"ce/jacob/adv: decoupled L2 decay (paper {DECAY_L2})")
    p.add_argument("--nsr-eps", type=num(float, 0, lo_open=True), default=None,
                   help="nsr: NSR_i = n_i / (|s_i| + nsr_eps) (paper 0.01)")
    p.add_argument("--nsr-max-noise", type=num(float, 0, lo_open=True), default=None,
                   help="nsr: L-inf budget behind n_i (paper 1.0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--data-dir", default=DATA_DIR, help="where preprocess.py put the cache")
    p.add_argument("--sample", action="store_true", help="train on the committed sample's cache")
    p.add_argument("--out-dir", default=OUT_DIR, help="checkpoint folder")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    return p


def main_for(description, methods, method, objective, argv=None):
    """Parse flags into the run's config (make_config) and train it; exit 2 on bad input."""
    p = build_parser(description, methods, method)
    args = vars(p.parse_args(argv))
    arch, method = args.pop("arch"), args.pop("method")
    try:
        cfg = make_config(arch, method, **args)
    except ValueError as e:
        p.error(str(e))
    tune_malloc()
    busy = hold_folder(cfg["out_dir"])
    if busy:
        print(f"error: {busy}", file=sys.stderr)
        return 2
    try:
        train(cfg, objective)
    except (DataError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        release_folder(cfg["out_dir"])
    return 0


def main(argv=None):
    return main_for(__doc__.split("\n")[0], METHODS, METHOD, baseline_objective, argv)


if __name__ == "__main__":
    run_cli(main)
