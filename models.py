"""Models of Ma & Liang (2020), their checkpoints, and models written outside this project.

- MLP and the Kachuee 2018 residual 1-D CNN (METHOD.md 3), input (N, 187) in [0, 1], 5 logits out.
- Kernel normalisation: each output unit's weight vector is scaled to unit L2 norm, its bias
  by the same factor (`normalize_kernels`), at construction and before every training step.
- Dead-unit re-initialisation: |dL/dW| is accumulated per output unit over an epoch
  (`accumulate_grad`); units whose sum is exactly zero get a fresh unit-norm weight vector
  (`reinit_dead_units`). The sums live in a buffer `grad_acc` on each normalised layer, so they
  travel with the state dict (and with a checkpoint, which makes --resume exact).
- Checkpoints (`save_checkpoint`, `load_checkpoint`) and a model of your own
  (`load_user_model`). The helpers every script shares live in utils.py.

    python -c "import models; print(models.build_model('cnn'))"
"""
import hashlib
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import atomic_write, run_info, sha256_file

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


@torch.no_grad()
def predict(model, x, batch_size=4096):
    """Predicted classes of beats x (N, 187), in batches."""
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def build_model(arch, bias=True):
    if arch == "mlp":
        return MLP(bias=bias)
    if arch == "cnn":
        return CNN(bias=bias)
    raise ValueError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHS)}")


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


# ----------------------------------------------------------------------------- CLI exit


# ----------------------------------------------------------------------------- one writer


# ----------------------------------------------------------------------------- progress


