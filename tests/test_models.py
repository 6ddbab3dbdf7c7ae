"""models.py: shapes, parameter counts, kernel normalisation, dead units, checkpoints."""
import os

import pytest
import torch

import models


def normalized_names(model):
    ids = {id(m) for m in model.normalized}
    return {n for n, m in model.named_modules() if id(m) in ids}


@pytest.mark.parametrize("arch,n_params", [("mlp", 61381), ("cnn", 53957)])
def test_shapes_and_parameter_counts(arch, n_params):
    model = models.build_model(arch)
    assert sum(p.numel() for p in model.parameters()) == n_params
    for shape in [(7, 187), (7, 1, 187)]:
        assert model(torch.rand(shape)).shape == (7, 5)
    nobias = models.build_model(arch, bias=False)
    assert all(m.bias is None for m in nobias.modules() if hasattr(m, "bias")
               and isinstance(m, (torch.nn.Linear, torch.nn.Conv1d)))


def test_normalized_layers_are_the_specs():
    assert normalized_names(models.build_model("mlp")) == {"fc1", "fc2", "fc3", "fc4"}
    cnn = {"conv0", "linear1", "linear2"} | {f"blocks.{i}.conv{j}" for i in range(4)
                                              for j in (1, 2)}
    assert normalized_names(models.build_model("cnn")) == cnn


def test_cnn_lengths():
    model = models.build_model("cnn")
    x = model.conv0(torch.rand(2, 1, 187))
    lengths = []
    for block in model.blocks:
        x = block(x)
        lengths.append(x.shape[-1])
    assert lengths == [92, 44, 20, 8, 2]


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_normalize_kernels_unit_norm_and_bias_same_factor(arch):
    torch.manual_seed(0)
    model = models.build_model(arch)
    for layer in model.normalized:      # at construction: unit norm, zero bias
        assert torch.allclose(layer.weight.flatten(1).norm(dim=1), torch.ones(1), atol=1e-6)
        assert (layer.bias == 0).all()
    others = {n: p.clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for layer in model.normalized:
            layer.weight.mul_(torch.rand(layer.weight.shape[0]).add(0.5).view(-1, *[1] * (layer.weight.dim() - 1)))
            layer.bias.copy_(torch.randn_like(layer.bias))
    before = {id(l): (l.weight.flatten(1).norm(dim=1).clone(), l.bias.clone()) for l in model.normalized}
    model.normalize_kernels()
    ids = {id(l.weight) for l in model.normalized} | {id(l.bias) for l in model.normalized}
    for layer in model.normalized:
        norm, bias = before[id(layer)]
        assert torch.allclose(layer.weight.flatten(1).norm(dim=1), torch.ones(1), atol=1e-6)
        assert torch.allclose(layer.bias, bias / norm, atol=1e-6)
    for n, p in model.named_parameters():   # layers outside the list are untouched
        if id(p) not in ids:
            assert torch.equal(p, others[n]), n


def test_dead_unit_reinit_touches_only_zero_gradient_units():
    torch.manual_seed(0)
    model = models.build_model("mlp")
    with torch.no_grad():
        model.fc2.weight[3] = 0.0       # unit 3 of fc2 never fires -> zero gradient downstream
        model.fc2.bias[3] = -1.0
    before = {n: p.clone() for n, p in model.named_parameters()}
    for _ in range(3):
        model.zero_grad()
        model(torch.rand(16, 187)).pow(2).sum().backward()
        model.accumulate_grad()
    dead = {id(l): (l.grad_acc == 0).nonzero().flatten().tolist() for l in model.normalized}
    assert 3 in dead[id(model.fc2)]            # the planted dead unit: zero grad on its weights
    assert len(dead[id(model.fc2)]) < 128      # ... and live units elsewhere in the layer
    n = model.reinit_dead_units()
    assert n == sum(len(v) for v in dead.values())
    for name, layer in [("fc1", model.fc1), ("fc2", model.fc2), ("fc3", model.fc3), ("fc4", model.fc4)]:
        w0 = before[f"{name}.weight"]
        changed = (layer.weight != w0).any(dim=1).nonzero().flatten().tolist()
        assert changed == dead[id(layer)], name
        for u in changed:
            assert float(layer.weight[u].detach().norm()) == pytest.approx(1.0, abs=1e-6)
            assert layer.bias[u] == 0
        assert (layer.grad_acc == 0).all()     # totals reset for the next epoch


def test_checkpoint_round_trip_and_errors(tmp_path):
    torch.manual_seed(0)
    model = models.build_model("cnn")
    opt = torch.optim.Adamax(model.parameters(), lr=1e-3)
    model(torch.rand(4, 187)).sum().backward()
    opt.step()
    path = str(tmp_path / "m.pt")
    config = {"method": "ce", "arch": "cnn", "seed": 0, "lr": 1e-3}
    models.save_checkpoint(path, model, opt, 3, config, [{"epoch": 0, "val_bacc": 0.5}])
    loaded, ckpt = models.load_checkpoint(path, "cpu", arch="cnn")
    x = torch.rand(5, 187)
    assert torch.equal(loaded(x), model.eval()(x))
    assert ckpt["epoch"] == 3 and ckpt["method"] == "ce" and ckpt["config"] == config
    assert ckpt["history"][0]["val_bacc"] == 0.5 and ckpt["torch"] == str(torch.__version__)
    assert "git_commit" in ckpt and ckpt["optimizer"]["state"]
    with pytest.raises(ValueError, match="holds arch 'cnn', expected 'mlp'"):
        models.load_checkpoint(path, "cpu", arch="mlp")
    data = open(path, "rb").read()
    bad = str(tmp_path / "truncated.pt")
    open(bad, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        models.load_checkpoint(bad)
    with pytest.raises(FileNotFoundError):
        models.load_checkpoint(str(tmp_path / "none.pt"))
    assert sorted(os.listdir(tmp_path)) == ["m.pt", "truncated.pt"]   # no temp files left


def test_progress_outside_a_terminal_writes_whole_lines(capsys, monkeypatch):
    """In a log file: plain lines (no carriage returns), and under torchrun the rank first."""
    import io
    from utils import progress_bar as progress
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    log = io.StringIO()
    for _ in progress(range(5), desc="work", file=log, mininterval=0, maxinterval=0, delay=0):
        pass
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert lines and all(line.startswith("[rank 1] work") for line in lines)
    assert "5/5" in lines[-1]


def test_progress_in_a_log_file_is_not_redrawn_by_its_postfix():
    """set_postfix (the training loss) must not print a line per call outside a terminal."""
    import io
    from utils import progress_bar as progress
    log = io.StringIO()
    bar = progress(range(500), desc="epoch", file=log, delay=0)
    for i in bar:
        bar.set_postfix(loss=f"{i:.4f}")
    lines = log.getvalue().splitlines()
    assert 1 <= len(lines) <= 3, lines[:5]
    assert "500/500" in lines[-1] and "loss=499" in lines[-1]
    quiet = io.StringIO()                      # by default a bar done within 30 s prints nothing
    for _ in progress(range(500), desc="short", file=quiet):
        pass
    assert quiet.getvalue() == ""
