"""The training loop and the run config both training scripts share (METHOD.md 2-4).

train_baseline.py (CE, MSE, MSE+margin, Jacobian, adversarial training) and train_nsr.py (NSR,
alignment) each keep their hyperparameters as UPPER_CASE constants at their top and their
objective; this module turns those defaults and the flags into one run config (`make_config`),
names the run from it (every setting off the paper's frozen values in protocol.py is in the
name), and trains it: class-balanced epochs, kernel normalisation before every step, dead units
re-drawn, the best and the last checkpoint after every epoch, an exact --resume.
"""
import functools
import os
import sys
import time

import torch

import protocol
from losses import decoupled_decay_
from models import build_model, load_checkpoint, predict, save_checkpoint
from preprocess import (DATA_DIR, DataError, balanced_epoch_indices, cache_path,
                        canonical_data_sha256, classification_metrics, data_sha256, load_cache)
from utils import arg_number, get_device, hold_folder, progress_bar, release_folder, tune_malloc

# how and where a run goes, not what is trained (never in its name)
RUN_DEFAULTS = {"device": "auto", "data_dir": DATA_DIR, "sample": False, "resume": False}
# every setting that differs from the paper's frozen value (protocol.paper_config) is part of
# the run name, with this tag (adv_eps, and beta for nsr/align, are always in it; jacob's beta
# as _b); the epochs are not: --resume may extend a run
NAME_TAGS = {"lr": "lr", "batch_size": "bs", "margin": "m", "max_train_samples": "n",
             "decay_l1": "dl1", "decay_l2": "dl2", "jacob_norm": "L", "adv_steps": "k",
             "adv_step_size": "as", "nsr_eps": "ne", "nsr_max_noise": "nm", "bias": "bias"}


def make_config(defaults, **overrides):
    """The whole config of a run: a script's defaults (its constants: the method's settings,
    epochs, out_dir), RUN_DEFAULTS, then overrides (None leaves the default). A setting the
    method does not have is a ValueError naming its flag."""
    cfg = {**RUN_DEFAULTS, **defaults}
    for k, v in overrides.items():
        if v is None:
            continue
        if k not in cfg:
            raise ValueError(f"--{k.replace('_', '-')} does not apply to method "
                             f"{cfg['method']!r}")
        cfg[k] = v
    cfg["name"] = run_name(cfg)
    return cfg


def config_argv(cfg, defaults):
    """The command-line flags that rebuild `cfg` with its script's main(), given that script's
    defaults (its default_config)."""
    argv = ["--arch", cfg["arch"], "--method", cfg["method"]]
    for k, v in cfg.items():
        if k in ("arch", "method", "name", "bias") or v is None:
            continue
        if k in RUN_DEFAULTS and v == RUN_DEFAULTS[k]:
            continue
        if k in defaults and v == defaults[k] and k not in ("seed", "epochs"):
            continue
        flag = "--" + k.replace("_", "-")
        argv += [flag] if v is True else ([] if v is False else [flag, str(v)])
    return argv


def configurator(default_config):
    """(make_config(arch, method, **overrides), config_argv(cfg)) of a training script whose
    defaults are default_config(arch, method)."""
    def script_make_config(arch, method, **overrides):
        return make_config(default_config(arch, method), **overrides)

    def script_config_argv(cfg):
        return config_argv(cfg, default_config(cfg["arch"], cfg["method"]))
    return script_make_config, script_config_argv


def run_name(cfg):
    """{arch}_{method}[_{its parameter}][_{tag}{value} for each non-paper setting]_s{seed}."""
    method = cfg["method"]
    paper = protocol.paper_config(cfg["arch"], method)
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
    if cfg["method"] in protocol.DECAY_METHODS:
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
def add_run_args(p, d):
    """The flags every training script has; `d`: the script's defaults for them."""
    num = arg_number
    p.add_argument("--epochs", type=num(int, 1), default=d["epochs"], help="epochs in all")
    p.add_argument("--batch-size", type=num(int, 1), default=d["batch_size"], help="batch size")
    p.add_argument("--lr", type=num(float, 0, lo_open=True), default=d["lr"], help="Adamax lr")
    p.add_argument("--margin", type=num(float, 0, lo_open=True), default=d["margin"],
                   help="margin of the hinge term")
    p.add_argument("--seed", type=num(int, 0), default=d["seed"], help="training seed")
    p.add_argument("--max-train-samples", type=num(int, 1), default=None,
                   help="samples per epoch (the balanced epoch truncated; quick runs)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--data-dir", default=DATA_DIR, help="where preprocess.py put the cache")
    p.add_argument("--sample", action="store_true", help="train on the committed sample's cache")
    p.add_argument("--out-dir", default=d["out_dir"], help="checkpoint folder")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    return p


def run(cfg, objective):
    """Train cfg's run with one folder writer; exit code 2 (with the message) on bad input."""
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


def main(parser, make_config, objective, argv=None):
    """A training script's main: its flags -> its run config (make_config) -> training."""
    args = vars(parser.parse_args(argv))
    try:
        cfg = make_config(args.pop("arch"), args.pop("method"), **args)
    except ValueError as e:
        parser.error(str(e))
    return run(cfg, objective)


# ----------------------------------------------------------------------------- finished runs
def last_checkpoint(cfg):
    """cfg's last checkpoint ({"epoch", "history", ...}); None before it starts or when it
    cannot be read. Loaded once per file version (the plan and both phases ask)."""
    path = checkpoint_paths(cfg)[0]
    try:
        return _load_checkpoint(path, os.stat(path).st_mtime_ns)
    except Exception:
        return None


@functools.lru_cache(maxsize=64)
def _load_checkpoint(path, mtime_ns):
    return torch.load(path, map_location="cpu", weights_only=True)


def finished(cfg):
    """A run is done when its last checkpoint reached the preset's epochs with cfg's settings
    (a checkpoint of other settings is never reused: its --resume is refused, naming them)."""
    ckpt = last_checkpoint(cfg)
    return ckpt is not None and ckpt.get("epoch", -1) + 1 >= cfg["epochs"] \
        and not setting_changes(ckpt.get("config", {}), cfg)
