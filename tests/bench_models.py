"""Small ECG models written as an outside user would (plain torch, no import of this project),
for tests/test_benchmark.py: `benchmark.py --model tests/bench_models.py:plain`."""
import torch
import torch.nn as nn


class Tiny(nn.Module):
    """(N, 187) beats -> (N, 5) logits."""

    def __init__(self, out=5):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(187, 32), nn.ReLU(), nn.Linear(32, out))

    def forward(self, x):
        return self.net(x)


class Softmax(Tiny):
    def forward(self, x):
        return torch.softmax(self.net(x), dim=1)


class Stochastic(Tiny):
    """A randomised defence: input noise in eval mode too."""

    def forward(self, x):
        return self.net(x + 0.05 * torch.randn_like(x))


class InPlace(Tiny):
    def forward(self, x):
        return self.net(x.clamp_(0, 0.5))


class Detached(Tiny):
    def forward(self, x):
        return torch.as_tensor(self.net(x).detach().numpy())


def _built(cls, **kw):
    torch.manual_seed(0)
    return cls(**kw)


def plain():
    return _built(Tiny)


def softmax():
    return _built(Softmax)


def stochastic():
    return _built(Stochastic)


def wrong_shape():
    return _built(Tiny, out=4)


def in_place():
    return _built(InPlace)


def detached():
    return _built(Detached)


def not_a_module():
    return "a string"
