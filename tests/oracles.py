"""Straightforward implementations of METHOD.md rules, kept only as oracles for the tests and as the
baselines of bench.py: slow, literal, one sample (or class) at a time."""
import torch
import torch.nn.functional as F

from attack_pgd import adamax_ascent_, predict, uniform_start
from attack_spsa import margin, rademacher, sample_generator, spsa_estimate
from losses import margin_loss, mse_loss


def pgd_paper_spec_loop(model, x, y, eps, steps=100, step_size=0.01, seed=0):
    """METHOD.md 5's loop transcribed line by line, one sample at a time, torch.optim.Adamax on the
    noise. The random starts are drawn as pgd_attack draws them (one generator seeded with
    `seed`, one (n_correct, 187) draw, in order), so both see the same start per sample."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    correct = torch.nonzero(predict(model, x) == y).flatten()
    starts = uniform_start((len(correct), x.shape[1]), eps, gen, x.device).to(x.dtype)
    x_adv = x.clone()
    for k, i in enumerate(correct.tolist()):
        xi, yi = x[i:i + 1], y[i:i + 1]
        n = torch.nn.Parameter(starts[k:k + 1].clone())          # n = U(-eps, eps)
        opt = torch.optim.Adamax([n], lr=step_size)
        for t in range(steps + 1):
            x_t = (xi + n.detach()).clamp(0, 1).requires_grad_(True)
            z = model(x_t)
            if z.argmax(1) != yi or t == steps:
                x_adv[i] = x_t.detach()[0]
                break
            (g,) = torch.autograd.grad(F.cross_entropy(z, yi), x_t)
            opt.zero_grad()
            n.grad = -g.sign()                                    # ascent
            opt.step()
            with torch.no_grad():
                n.clamp_(-eps, eps)
                n.copy_((xi + n).clamp(0, 1) - xi)               # the stored noise stays feasible
    return x_adv


def spsa_per_sample_loop(model, x, y, eps, steps=100, n_dirs=2048, delta=0.01, lr=0.01, seed=0,
                         sample_ids=None):
    """The reference's shape of SPSA: one sample at a time, all 2 x n_dirs evaluations in one
    forward; per-sample random streams as attack_spsa draws them."""
    model.eval()
    ids = list(range(len(y))) if sample_ids is None else list(sample_ids)
    x_adv = x.clone()
    with torch.no_grad():
        for i in range(len(y)):
            xi, yi = x[i:i + 1], y[i:i + 1]
            if model(xi).argmax(1) != yi:
                continue
            g = sample_generator(seed, ids[i], x.device)
            noise = (xi + uniform_start(xi.shape[1:], eps, g, x.device)).clamp(0, 1) - xi
            m, u = torch.zeros_like(noise), torch.zeros_like(noise)
            for t in range(steps + 1):
                x_in = xi + noise
                if model(x_in).argmax(1) != yi or t == steps:
                    break
                v = rademacher(n_dirs, xi.shape[1], g, x.device)
                f = margin(model(torch.cat([x_in + delta * v, x_in - delta * v])),
                           yi.repeat(2 * n_dirs))
                grad = spsa_estimate(f[:n_dirs] - f[n_dirs:], v, delta)
                adamax_ascent_(noise, grad.sign()[None], m, u, t + 1, lr)
                noise = (xi + noise.clamp(-eps, eps)).clamp(0, 1) - xi
            x_adv[i] = x_in[0]
    return x_adv


def nsr_per_class_loop(model, x, y, eps=0.01, max_noise=1.0):
    """The reference's NSR term: class by class, each with its own forward; / len(y)."""
    total = 0.0
    for c in range(5):
        xc = x[y == c].clone().requires_grad_(True)
        if len(xc) == 0:
            continue
        s = model(xc)[:, c]
        (g,) = torch.autograd.grad(s.sum(), xc, create_graph=True)
        total = total + torch.log(1 + g.abs().sum(1) * max_noise / (s.abs() + eps)).sum()
    return total / len(y)


def nsr_step_per_class_loop(model, x, y, beta, eps=0.01):
    """The reference's shape of a whole NSR step: MSE + margin from a plain forward, then the
    NSR term class by class on the correct samples (bench.py's baseline)."""
    z = model(x)
    correct = z.argmax(1) == y
    loss = mse_loss(z, y) + margin_loss(z[correct], y[correct])
    if not correct.any():
        return loss
    return loss + beta * nsr_per_class_loop(model, x[correct], y[correct], eps)


def sap_han_per_beat(model, x, y, eps, steps=40, init_steps=20,
                     sizes=(5, 7, 11, 15, 19), sigmas=(1.0, 3.0, 5.0, 7.0, 10.0)):
    """Han et al. 2020's SAP as METHOD.md 5 states it, one beat at a time, each of the 25
    Gaussian kernels convolved on its own (its own length, zero padding, same output length):
        delta = 0; 20 times: delta = clip(delta + (eps/10) sign(d CE / d x), -eps, eps),
                             kept in [0, 1]                                 # the initialisation
        theta = delta
        for t in 0 .. steps:
            x_t = clamp(x + mean_k conv(theta, k), 0, 1)
            if argmax f(x_t) != y or t == steps: return x_t
            theta = clip(theta + (eps/10) sign(d CE(f(x_t), y) / d theta), -eps, eps)"""
    step = eps / 10
    kernels = []
    for size in sizes:
        for sigma in sigmas:
            t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
            k = torch.exp(-t ** 2 / (2 * sigma ** 2))
            kernels.append((k / k.sum()).to(x.dtype))

    def smooth(theta):
        return torch.stack([F.conv1d(theta.view(1, 1, -1), k.view(1, 1, -1),
                                     padding=(len(k) - 1) // 2).view(-1) for k in kernels]).mean(0)
    x_adv = x.clone()
    for i in torch.nonzero(predict(model, x) == y).flatten().tolist():
        xi, yi = x[i], y[i:i + 1]
        delta = torch.zeros_like(xi)
        for _ in range(init_steps):
            x_in = (xi + delta).clamp(0, 1).requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(model(x_in[None]), yi), x_in)
            delta = (delta + step * g.sign()).clamp(-eps, eps)
            delta = (xi + delta).clamp(0, 1) - xi
        theta = delta.detach()
        for t in range(steps + 1):
            theta = theta.detach().requires_grad_(True)
            x_t = (xi + smooth(theta)).clamp(0, 1)
            z = model(x_t[None])
            if z.argmax(1) != yi or t == steps:
                x_adv[i] = x_t.detach()
                break
            (g,) = torch.autograd.grad(F.cross_entropy(z, yi), theta)
            theta = (theta + step * g.sign()).clamp(-eps, eps)
    return x_adv
