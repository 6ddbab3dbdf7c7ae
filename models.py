"""Models of Ma & Liang (2020) and the helpers every script shares.

- MLP and the Kachuee 2018 residual 1-D CNN (METHOD.md 3), input (N, 187) in [0, 1], 5 logits out.
- Kernel normalisation: each output unit's weight vector is scaled to unit L2 norm, its bias
  by the same factor (`normalize_kernels`), at construction and before every training step.
- Dead-unit re-initialisation: |dL/dW| is accumulated per output unit over an epoch
  (`accumulate_grad`); units whose sum is exactly zero get a fresh unit-norm weight vector
  (`reinit_dead_units`). The sums live in a buffer `grad_acc` on each normalised layer, so they
  travel with the state dict (and with a checkpoint, which makes --resume exact).
- Checkpoints (`save_checkpoint`, `load_checkpoint`), seeding, device choice and run metadata.

    python -c "import models; print(models.build_model('cnn'))"
"""
import argparse
import hashlib
import math
import os
import random
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

N_SAMPLES = 187   # beat length (125 Hz, 1.496 s)
N_CLASSES = 5     # AAMI classes N, S, V, F, Q
CLASS_NAMES = ["N", "S", "V", "F", "Q"]
ARCHS = ("mlp", "cnn")


# ----------------------------------------------------------------------------- kernel norm
class KernelNormMixin:
    """Kernel normalisation and dead-unit bookkeeping for the layers in `self.normalized`."""

    def _init_normalized(self, layers):
        self.normalized = list(layers)
        for layer in self.normalized:
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
            layer.register_buffer("grad_acc", torch.zeros(layer.weight.shape[0]))
        self.normalize_kernels()

    @torch.no_grad()
    def normalize_kernels(self):
        """w_o <- w_o / ||w_o||_2 and b_o <- b_o / ||w_o||_2 for every output unit o."""
        for layer in self.normalized:
            w = layer.weight
            scale = 1.0 / w.flatten(1).norm(dim=1).clamp_min(1e-12)
            w.mul_(scale.view(-1, *([1] * (w.dim() - 1))))
            if layer.bias is not None:
                layer.bias.mul_(scale)

    @torch.no_grad()
    def accumulate_grad(self):
        """Add sum |dL/dW| of each output unit to its running total (call after backward)."""
        for layer in self.normalized:
            if layer.weight.grad is not None:
                layer.grad_acc.add_(layer.weight.grad.abs().flatten(1).sum(dim=1))

    @torch.no_grad()
    def reinit_dead_units(self):
        """Give every unit with exactly zero accumulated gradient a random unit-norm weight
        vector and a zero bias, then reset the totals. Returns the number of units re-drawn."""
        count = 0
        for layer in self.normalized:
            dead = layer.grad_acc == 0
            n = int(dead.sum())
            if n:
                w = torch.randn((n,) + layer.weight.shape[1:], device=layer.weight.device)
                w /= w.flatten(1).norm(dim=1).view(-1, *([1] * (w.dim() - 1)))
                layer.weight[dead] = w.to(layer.weight.dtype)
                if layer.bias is not None:
                    layer.bias[dead] = 0.0
                count += n
            layer.grad_acc.zero_()
        return count


# ----------------------------------------------------------------------------- models
class MLP(KernelNormMixin, nn.Module):
    """187-128-128-128-32-5; no ReLU between the last two linear layers (as the reference)."""

    def __init__(self, bias=True):
        super().__init__()
        self.bias = bias
        self.fc1 = nn.Linear(N_SAMPLES, 128, bias=bias)
        self.fc2 = nn.Linear(128, 128, bias=bias)
        self.fc3 = nn.Linear(128, 128, bias=bias)
        self.fc4 = nn.Linear(128, 32, bias=bias)
        self.out = nn.Linear(32, N_CLASSES, bias=bias)
        self._init_normalized([self.fc1, self.fc2, self.fc3, self.fc4])

    def forward(self, x):
        x = x.reshape(x.shape[0], N_SAMPLES)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = F.relu(self.fc3(x))
        return self.out(self.fc4(x))


def model_arch(model):
    """"mlp" or "cnn": the arch of a built model."""
    return "mlp" if isinstance(model, MLP) else "cnn"


class ResBlock(nn.Module):
    """conv-ReLU-conv, add the input, ReLU, MaxPool(5, stride 2) (Kachuee 2018, Fig. 2)."""

    def __init__(self, bias=True):
        super().__init__()
        self.conv1 = nn.Conv1d(32, 32, 5, padding=2, bias=bias)
        self.conv2 = nn.Conv1d(32, 32, 5, padding=2, bias=bias)

    def forward(self, x):
        h = self.conv2(F.relu(self.conv1(x)))
        return F.max_pool1d(F.relu(h + x), 5, stride=2)


class CNN(KernelNormMixin, nn.Module):
    """Kachuee 2018: conv0, 5 residual blocks (187->92->44->20->8->2), 64-32-5 head."""

    def __init__(self, bias=True):
        super().__init__()
        self.bias = bias
        self.conv0 = nn.Conv1d(1, 32, 5, padding=2, bias=bias)
        self.blocks = nn.ModuleList([ResBlock(bias) for _ in range(5)])
        self.linear1 = nn.Linear(64, 32, bias=bias)
        self.linear2 = nn.Linear(32, N_CLASSES, bias=bias)
        # The reference normalises blocks 1-4 only, not block 5 (METHOD.md 3).
        convs = [c for b in self.blocks[:4] for c in (b.conv1, b.conv2)]
        self._init_normalized([self.conv0, *convs, self.linear1, self.linear2])

    def forward(self, x):
        x = self.conv0(x.reshape(x.shape[0], 1, N_SAMPLES))
        for block in self.blocks:
            x = block(x)
        return self.linear2(F.relu(self.linear1(x.flatten(1))))


def build_model(arch, bias=True):
    if arch == "mlp":
        return MLP(bias=bias)
    if arch == "cnn":
        return CNN(bias=bias)
    raise ValueError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHS)}")


# ----------------------------------------------------------------------------- run helpers
def set_seed(seed):
    """Seed python, numpy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def tune_malloc():
    """CPU speed: glibc serves every allocation above M_MMAP_THRESHOLD (128 KiB at start) with
    fresh mmap pages, so each forward of a batch of beats page-faults its activations again
    (a batch-256 CNN forward runs 3x slower than it can). Raising the threshold to its maximum
    (32 MiB) and the trim threshold keeps those buffers in the heap. No-op off glibc."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 1024 * 1024)    # M_MMAP_THRESHOLD
        libc.mallopt(-1, 512 * 1024 * 1024)   # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def get_device(name="auto"):
    """auto (CUDA when there is one), cpu, cuda or cuda:N; anything else is a ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not (name == "cpu" or name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise ValueError(f"--device {name!r}: choose auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


_MEMO = {}


def memo_per_file(fn, path):
    """fn(path), memoised per (fn, path, size, mtime): reproduce.py hashes the same data cache
    and checkpoints for every attack task, and every write here replaces a file by rename,
    which changes its mtime."""
    st = os.stat(path)
    key = (fn.__name__, os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _MEMO:
        _MEMO[key] = fn(path)
    return _MEMO[key]


def sha256_file(path):
    """Hex sha256 of one file (a checkpoint: provenance of every result). Memoised per file."""
    return memo_per_file(_sha256_uncached, path)


def _sha256_uncached(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def git_commit():
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")),
                        "unknown")
    except OSError:
        return "unknown"


def run_info(device=None):
    """What every result file records beside its settings."""
    info = {"torch": str(torch.__version__), "git_commit": git_commit(), "cpu": cpu_model(),
            "threads": torch.get_num_threads()}
    if device is not None:
        device = torch.device(device)
        info["device"] = (torch.cuda.get_device_name(device) if device.type == "cuda"
                          else "cpu")
    return info


def atomic_write(path, write_fn):
    """Call write_fn(tmp_path), then rename onto `path`: no half-written file is ever left under
    the real name. The temp file is hidden and ends in .tmp (`.NAME.RANDOM.tmp`), so no reader
    globbing for results ever takes it for one."""
    path = str(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ----------------------------------------------------------------------------- CLI numbers
def arg_number(kind=float, lo=None, hi=None, lo_open=False):
    """An argparse `type` that accepts only a finite number in [lo, hi] ((lo, hi] if lo_open):
    a bad value exits 2 with argparse's message naming the flag."""
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}")
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise argparse.ArgumentTypeError(f"{text} must be {'>' if lo_open else '>='} {lo:g}")
        if hi is not None and v > hi:
            raise argparse.ArgumentTypeError(f"{text} must be <= {hi:g}")
        return v
    parse.__name__ = kind.__name__      # argparse names the type in its messages
    return parse


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path, model, optimizer, epoch, config, history, data=None):
    """Everything needed to resume or evaluate; plain types only (loads with weights_only).
    `data`: what it was trained on (the cache file and its data digest, preprocess.data_sha256)."""
    ckpt = {
        "arch": "cnn" if isinstance(model, CNN) else "mlp",
        "method": config.get("method"),
        "bias": model.bias,
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": epoch,
        "config": config,
        "history": history,
        "data": data,
        **run_info(),
    }
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


def load_checkpoint(path, device="cpu", arch=None):
    """Return (model, checkpoint dict). The model is in eval mode on `device`."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, ...
        raise ValueError(f"checkpoint {path} is truncated or not a checkpoint of this "
                         f"project ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "arch" not in ckpt:
        raise ValueError(f"checkpoint {path} is not a checkpoint of this project")
    missing = [k for k in ("bias", "config") if k not in ckpt]
    if missing or not isinstance(ckpt["config"], dict):
        raise ValueError(f"checkpoint {path} lacks {', '.join(missing) or 'a config dict'}: not a "
                         "complete checkpoint of this project")
    if ckpt["arch"] not in ARCHS:
        raise ValueError(f"checkpoint {path} holds arch {ckpt['arch']!r}: choose from "
                         f"{', '.join(ARCHS)}")
    if arch is not None and ckpt["arch"] != arch:
        raise ValueError(f"checkpoint {path} holds arch {ckpt['arch']!r}, expected {arch!r}")
    model = build_model(ckpt["arch"], bias=ckpt["bias"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ValueError(f"checkpoint {path}: its weights do not fit the {ckpt['arch']} model "
                         f"({' '.join(str(e).split())[:300]})") from None
    return model.to(device).eval(), ckpt


# ----------------------------------------------------------------------------- outside models
class ModelLoadError(Exception):
    """A user's model (benchmark.py, attack_*.py --model/--torchscript) that cannot be loaded;
    the message names the file and what is wrong."""


def _import_builder(spec):
    """`path/to/file.py:function` -> the function (imported from that file)."""
    import importlib.util
    import traceback
    path, sep, fn_name = spec.rpartition(":")
    if not sep or not path or not fn_name:
        raise ModelLoadError(f"--model {spec!r}: expected FILE.py:FUNCTION, e.g. my_model.py:build")
    if not os.path.isfile(path):
        raise ModelLoadError(f"--model {spec!r}: the file {path} does not exist")
    mod_name = "user_model_" + hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:12]
    try:
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    except BaseException as e:         # SyntaxError, ImportError, SystemExit, anything it raises
        if isinstance(e, KeyboardInterrupt):
            raise
        where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
        line = f" (line {where.lineno})" if where and where.filename == path else ""
        raise ModelLoadError(f"--model: {path} does not import{line}: "
                             f"{type(e).__name__}: {e}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ModelLoadError(f"--model: {path} has no function {fn_name!r}")
    return fn


def _state_dict_of(obj, path):
    """A state dict from a weights file: a plain state dict, or a dict holding one under
    'state_dict' or 'model' (this project's checkpoints, most training scripts')."""
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return obj[key]
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise ModelLoadError(f"--weights {path}: no state dict in it (expected a dict of tensors, or "
                         f"one under 'state_dict' or 'model')")


def load_user_model(spec=None, weights=None, torchscript=None, device="cpu"):
    """An ECG model written outside this project, in eval mode on `device`:
    `spec` = FILE.py:FUNCTION whose call returns a torch.nn.Module (optionally with `weights`,
    a state dict file), or `torchscript` = a torch.jit.save'd file. Returns (model, files):
    files maps each file the model came from to its sha256 (the result's provenance)."""
    if (spec is None) == (torchscript is None):
        raise ModelLoadError("give exactly one of --model FILE.py:FUNCTION and --torchscript FILE")
    if torchscript is not None:
        if not os.path.isfile(torchscript):
            raise ModelLoadError(f"--torchscript {torchscript} does not exist")
        try:
            model = torch.jit.load(torchscript, map_location=device)
        except Exception as e:
            raise ModelLoadError(f"--torchscript {torchscript} is not a TorchScript file "
                                 f"({type(e).__name__}: {e})") from None
        return model.eval(), {os.path.abspath(torchscript): sha256_file(torchscript)}
    fn = _import_builder(spec)
    path = spec.rpartition(":")[0]
    try:
        model = fn()
    except Exception as e:
        raise ModelLoadError(f"--model {spec}: calling it failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"--model {spec} returned {type(model).__name__}, not a "
                             f"torch.nn.Module")
    files = {os.path.abspath(path): sha256_file(path)}
    if weights is not None:
        if not os.path.isfile(weights):
            raise ModelLoadError(f"--weights {weights} does not exist")
        try:
            obj = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ModelLoadError(f"--weights {weights} does not load with torch.load "
                                 f"(weights_only): {type(e).__name__}: {e}") from None
        try:
            model.load_state_dict(_state_dict_of(obj, weights))
        except RuntimeError as e:
            raise ModelLoadError(f"--weights {weights} does not fit the model of {spec}: "
                                 f"{' '.join(str(e).split())[:500]}") from None
        files[os.path.abspath(weights)] = sha256_file(weights)
    return model.to(device).eval(), files


def files_sha256(files):
    """One sha256 for a model made of several files (its code and its weights)."""
    if len(files) == 1:
        return next(iter(files.values()))
    return hashlib.sha256("".join(sorted(files.values())).encode()).hexdigest()


# ----------------------------------------------------------------------------- CLI exit
def run_cli(main):
    """sys.exit(main()) for a script: Ctrl-C ends it with one line and exit code 130. Every
    finished result and checkpoint was written atomically and is kept; rerun to resume."""
    try:
        code = main()
    except KeyboardInterrupt:
        print(f"\ninterrupted: {os.path.basename(sys.argv[0])} stopped; finished results and "
              "checkpoints are kept, and the same command resumes", file=sys.stderr)
        code = 130
    sys.exit(code)


# ----------------------------------------------------------------------------- one writer
LOCK_DIR = os.path.join(tempfile.gettempdir(), "nsr-ecg-locks")   # not in the results folders
LOCK_ENV = "NSR_RESULTS_LOCKS"     # folders a torchrun worker's rank 0 holds for the whole run
_HELD = {}                         # realpath -> [open file holding its flock, holds]


def hold_folder(folder):
    """Take this results folder for this process (an exclusive flock on a lock file named by
    the folder's real path, in LOCK_DIR, so nothing is added to the folder itself; held until
    release_folder, or the process's end): None, or the message naming the run that holds it.
    Re-entrant in one process (counted); a torchrun worker whose rank 0 holds it (LOCK_ENV)
    shares it as one run. The same folder spelled another way (./, a symlink, relative) is the
    same lock."""
    import fcntl
    os.makedirs(folder, exist_ok=True)
    real = os.path.realpath(folder)
    if real in os.environ.get(LOCK_ENV, "").split(os.pathsep):
        return None
    if real in _HELD:
        _HELD[real][1] += 1
        return None
    os.makedirs(LOCK_DIR, exist_ok=True)
    f = open(os.path.join(LOCK_DIR, hashlib.sha256(real.encode()).hexdigest()[:20] + ".lock"),
             "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        return (f"{folder} is in use by another run ({holder}): wait for it to finish, or give "
                "this run another results folder")
    f.seek(0)
    f.truncate()
    cmd = " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]) if sys.argv else "python"
    f.write(f"pid {os.getpid()}: {cmd}"[:300])
    f.flush()
    _HELD[real] = [f, 1]
    return None


def release_folder(folder):
    """Undo one hold_folder of this process; the lock goes with the last."""
    held = _HELD.get(os.path.realpath(folder))
    if held is not None:
        held[1] -= 1
        if held[1] == 0:
            held[0].close()
            del _HELD[os.path.realpath(folder)]


def share_folders(folders):
    """A torchrun worker (rank > 0) of a run whose rank 0 holds `folders`."""
    held = [p for p in os.environ.get(LOCK_ENV, "").split(os.pathsep) if p]
    os.environ[LOCK_ENV] = os.pathsep.join(held + [os.path.realpath(f) for f in folders])


# ----------------------------------------------------------------------------- progress
PROGRESS_EVERY_S = 30       # outside a terminal: one progress line per this many seconds


class _Lines:
    """A stream for tqdm that turns its carriage-return redraws into whole lines (a log file)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, s):
        s = s.replace("\r", "").strip("\n")
        if s.strip():
            self.stream.write(s + "\n")

    def flush(self):
        self.stream.flush()


def progress_bar(iterable=None, **kw):
    """tqdm: live in a terminal; outside one (a log file, CI, nohup) a plain line about every
    PROGRESS_EVERY_S seconds, the first after that long (a short bar prints nothing). Under
    torchrun every line starts with the worker's rank."""
    from tqdm import tqdm
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        kw["desc"] = f"[rank {os.environ.get('RANK', '?')}] {kw.get('desc', '')}"
    stream = kw.pop("file", sys.stderr)
    if not (hasattr(stream, "isatty") and stream.isatty()):
        kw["mininterval"] = max(kw.get("mininterval", 0), PROGRESS_EVERY_S)
        kw["maxinterval"] = max(kw.get("maxinterval", 0), PROGRESS_EVERY_S)
        kw.setdefault("ascii", True)
        kw.setdefault("delay", PROGRESS_EVERY_S)    # a bar done sooner prints no line at all
        bar = tqdm(iterable, file=_Lines(stream), **kw)
        postfix = bar.set_postfix       # its default refresh=True would print a line per call
        bar.set_postfix = lambda *a, **k: postfix(*a, **{**k, "refresh": False})
        return bar
    return tqdm(iterable, file=stream, **kw)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help as a man page: a flag's default is shown once, never as "(default: None)" or
    "(default: False)", not again where its help already names it, and a path default as the
    relative path it is on any machine."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if default is None or default is False or default == argparse.SUPPRESS \
                or "default" in text:
            return text
        if isinstance(default, str) and os.path.isabs(default):
            default = os.path.relpath(default)
        return f"{text} (default: {str(default).replace('%', '%%')})"
