"""losses.py against a straightforward per-class-loop implementation of METHOD.md 4 (float64)."""
import pytest
import torch

import losses
import models
from oracles import nsr_per_class_loop


def batch(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 187, generator=g, dtype=torch.float64)
    y = torch.arange(n) % 5                    # all 5 classes
    return x, y


def model64(arch, seed=0, bias=True):
    torch.manual_seed(seed)
    m = models.build_model(arch, bias=bias).double()
    with torch.no_grad():                      # non-zero biases and logits of both signs
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


# --- the oracles: one class at a time, as the reference does
nsr_oracle = nsr_per_class_loop


def alignment_oracle(model, x, y):
    total = 0.0
    for c in range(5):
        xc = x[y == c].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(xc)[:, c].sum(), xc, create_graph=True)
        t = xc.detach() / (xc.detach().pow(2).sum(1, keepdim=True) + 1e-8)
        total = total + (g - t).pow(2).sum()
    return total / len(y)


def jacobian_oracle(model, x):
    total = 0.0
    for i in range(len(x)):
        xi = x[i:i + 1].clone().requires_grad_(True)
        z = model(xi)
        for m in range(5):
            (g,) = torch.autograd.grad(z[0, m], xi, create_graph=True)
            total = total + g.abs().sum()
    return total / x.numel()


def margin_oracle(z, y, margin=1.0):
    kept = []
    for i in range(len(y)):
        for j in range(5):
            if j != y[i]:
                t = margin - z[i, y[i]] + z[i, j]
                if 0 < t < 2 * margin:
                    kept.append(t)
    if not kept:
        return z.sum() * 0
    total = sum(kept)
    return total / len(kept) if len(kept) > 1 else total


def assert_same_value_and_grads(model, ours, oracle):
    params = list(model.parameters())
    g1 = torch.autograd.grad(ours, params, allow_unused=True, retain_graph=True)
    g2 = torch.autograd.grad(oracle, params, allow_unused=True)
    assert ours.item() == pytest.approx(oracle.item(), rel=1e-5, abs=1e-9)
    for a, b in zip(g1, g2):
        a = torch.zeros_like(params[0]) if a is None else a
        b = torch.zeros_like(a) if b is None else b
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_nsr_loss_equals_per_class_loop(arch):
    model, (x, y) = model64(arch), batch()
    assert_same_value_and_grads(model, losses.nsr_loss(model, x, y), nsr_oracle(model, x, y))


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_nsr_with_mask_equals_loop_on_selected(arch):
    model, (x, y) = model64(arch), batch()
    mask = torch.arange(len(y)) % 3 != 0
    xg = x.clone().requires_grad_(True)
    ours = losses.nsr_loss_from_logits(model(xg), xg, y, mask)
    assert_same_value_and_grads(model, ours, nsr_oracle(model, x[mask], y[mask]))


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_alignment_loss_equals_per_class_loop(arch):
    model, (x, y) = model64(arch, bias=False), batch()
    assert_same_value_and_grads(model, losses.alignment_loss(model, x, y),
                                alignment_oracle(model, x, y))


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_jacobian_loss_equals_per_sample_loop(arch):
    model, (x, y) = model64(arch), batch(10)
    assert_same_value_and_grads(model, losses.jacobian_loss(model, x), jacobian_oracle(model, x))


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_margin_loss_equals_loop(arch):
    model, (x, y) = model64(arch), batch()
    z = model(x)
    assert_same_value_and_grads(model, losses.margin_loss(z, y), margin_oracle(z, y))
    # one kept term: the plain sum
    z1 = torch.tensor([[2.0, 1.5, -5, -5, -5]], dtype=torch.float64)
    assert losses.margin_loss(z1, torch.tensor([0])).item() == pytest.approx(0.5)


def test_mse_loss():
    z = torch.tensor([[1.0, 0, 0, 0, 0], [0, 2.0, 0, 0, 1.0]])
    assert losses.mse_loss(z, torch.tensor([0, 1])).item() == pytest.approx((0 + 2) / 2)


def test_nsr_input_gradient_matches_finite_differences():
    torch.manual_seed(0)
    tiny = torch.nn.Sequential(torch.nn.Linear(187, 6), torch.nn.Tanh(),
                               torch.nn.Linear(6, 5)).double()
    x = torch.rand(4, 187, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 4])
    assert torch.autograd.gradcheck(lambda x: losses.nsr_loss(tiny, x, y), (x,), eps=1e-6,
                                    atol=1e-5)


def test_nsr_zero_true_logit_and_empty_selection():
    lin = torch.nn.Linear(187, 5, bias=False).double()
    x = torch.zeros(3, 187, dtype=torch.float64)    # every logit exactly 0
    y = torch.tensor([0, 1, 2])
    loss = losses.nsr_loss(lin, x, y)
    expected = torch.log1p(lin.weight.abs().sum(1)[y] / 0.01).mean()
    assert torch.isfinite(loss) and loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in lin.parameters())
    xg = torch.rand(3, 187, dtype=torch.float64, requires_grad=True)
    z = lin(xg)
    empty = losses.nsr_loss_from_logits(z, xg, y, torch.zeros(3, dtype=torch.bool))
    assert empty.item() == 0.0 and not torch.isnan(empty)
    empty_a = losses.alignment_loss_from_logits(z, xg, y, torch.zeros(3, dtype=torch.bool))
    assert empty_a.item() == 0.0
    assert losses.margin_loss(z[:0], y[:0]).item() == 0.0


def test_decoupled_decay():
    p = torch.nn.Parameter(torch.tensor([2.0, -1.0, 0.0]))
    losses.decoupled_decay_([p], lr=0.1, l1=0.01, l2=0.01)
    step1 = torch.tensor([2.0 - 0.001, -1.0 + 0.001, 0.0])
    assert torch.allclose(p.data, step1 - 0.001 * step1)
