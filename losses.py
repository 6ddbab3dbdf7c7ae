"""The training objectives of Ma & Liang (2020), METHOD.md 4, as plain functions.

z: logits (N, 5); y: labels (N,); x: beats (N, 187). Every function takes exactly the samples it
is given (the training loop picks the correctly classified ones where METHOD.md says so) and returns
a scalar tensor. The per-sample input gradients of NSR and of the alignment term come from ONE
backward pass: samples are independent (no batch norm), so d(sum_i z_{i,y_i})/dx holds every
d z_{i,y_i}/d x_i in its row i. The reference loops over the 5 classes instead; the tests keep
that loop as the oracle.

The *_from_logits forms take logits already computed from x (x requiring grad), so a training
step can share one forward between MSE, margin and NSR.
"""
import torch
import torch.nn.functional as F

from models import N_CLASSES


def mse_loss(z, y):
    """mean_i sum_k (z_ik - onehot(y_i)_k)^2"""
    return (z - F.one_hot(y, N_CLASSES).to(z.dtype)).pow(2).sum(dim=1).mean()


def margin_loss(z, y, margin=1.0):
    """Multi-class hinge: t_ij = margin - z_iy + z_ij for j != y_i; keep 0 < t < 2*margin;
    sum(kept) / count (the plain sum when count <= 1)."""
    if z.shape[0] == 0:
        return z.sum()
    t = margin - z.gather(1, y[:, None]) + z
    keep = (t > 0) & (t < 2 * margin) & ~F.one_hot(y, N_CLASSES).bool()
    total = (t * keep).sum()
    count = int(keep.sum())
    return total / count if count > 1 else total


def true_logit_input_grad(z, x, y, mask=None):
    """s_i = z_{i,y_i} and row i of g = d s_i / d x_i for the samples in `mask` (all if None),
    in one backward pass (samples are independent). Keeps the graph for the outer backward."""
    s = z.gather(1, y[:, None]).squeeze(1)
    if mask is not None:
        s = s[mask]
    (g,) = torch.autograd.grad(s.sum(), x, create_graph=True)
    g = g.reshape(x.shape[0], -1)
    return s, (g if mask is None else g[mask])


def nsr_loss_from_logits(z, x, y, mask=None, eps=0.01, max_noise=1.0):
    """Method 2 (NSR), on the samples in `mask`. s_i = z_{i,y_i};
    n_i = ||d s_i/d x_i||_1 * max_noise (the noise an L-inf budget of max_noise can cause to
    first order); NSR_i = n_i / (|s_i| + eps); loss = sum_i log(1 + NSR_i) / N."""
    n = z.shape[0] if mask is None else int(mask.sum())
    if n == 0:
        return z.sum() * 0.0
    s, g = true_logit_input_grad(z, x, y, mask)
    noise = g.abs().sum(dim=1) * max_noise
    nsr = noise / (s.abs() + eps)
    return torch.log1p(nsr).sum() / n


def alignment_loss_from_logits(z, x, y, mask=None):
    """Method 1, on the samples in `mask`. g_i = d z_{i,y_i}/d x_i, t_i = x_i/(||x_i||^2 + 1e-8);
    loss = sum_i ||g_i - t_i||^2 / N (for a bias-free ReLU net z_y = g . x, so g = t puts the
    logit's gradient along the input)."""
    n = z.shape[0] if mask is None else int(mask.sum())
    if n == 0:
        return z.sum() * 0.0
    _, g = true_logit_input_grad(z, x, y, mask)
    xf = x.reshape(x.shape[0], -1)
    xf = xf if mask is None else xf[mask]
    t = xf / (xf.pow(2).sum(dim=1, keepdim=True) + 1e-8)
    return (g - t).pow(2).sum() / n


def _forward_with_input_grad(model, x):
    if not x.requires_grad:        # a leaf of its own; else gradients flow on to the caller's x
        x = x.detach().requires_grad_(True)
    return model(x), x


def nsr_loss(model, x, y, eps=0.01, max_noise=1.0):
    z, x = _forward_with_input_grad(model, x)
    return nsr_loss_from_logits(z, x, y, eps=eps, max_noise=max_noise)


def alignment_loss(model, x, y):
    z, x = _forward_with_input_grad(model, x)
    return alignment_loss_from_logits(z, x, y)


def jacobian_loss(model, x, norm=1):
    z, x = _forward_with_input_grad(model, x)
    return jacobian_loss_from_logits(z, x, norm)


def jacobian_loss_from_logits(z, x, norm=1):
    """Jacobian regularisation: g_m = d(sum_i z_im)/dx for each class m;
    loss = sum_m sum |g_m|^norm / (N * 187). (5 backward passes: the full Jacobian.)"""
    total = z.new_zeros(())
    for m in range(z.shape[1]):
        (g,) = torch.autograd.grad(z[:, m].sum(), x, create_graph=True)
        total = total + (g.abs().sum() if norm == 1 else g.pow(2).sum())
    return total / x.numel()


@torch.no_grad()
def decoupled_decay_(params, lr, l1=0.01, l2=0.01):
    """The CE recipe's decay, after backward and before the optimiser step:
    p -= lr*l1*sign(p), then p -= lr*l2*p."""
    for p in params:
        p.sub_(lr * l1 * torch.sign(p))
        p.sub_(lr * l2 * p)
