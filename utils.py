"""The helpers every script shares (one home): seeding and device, file hashes and atomic
writes, run metadata, range-checked flags, the CLI wrapper, one-writer-per-folder locks,
progress bars for terminals and log files, and the --help formatter. Imports nothing of this
project but protocol-free standard and torch code, so every file can import it.
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


def files_sha256(files):
    """One sha256 for a model made of several files (its code and its weights)."""
    if len(files) == 1:
        return next(iter(files.values()))
    return hashlib.sha256("".join(sorted(files.values())).encode()).hexdigest()


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


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help as a man page: the description as written (a script's docstring), a flag's default
    shown once, never as "(default: None)" or
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
