"""bench.py steps' op and FLOP counter (the GPU estimate's input)."""
import torch

import bench


def test_op_counter_flops_agree_with_and_without_autograd():
    """Linear and conv1d FLOPs are 2 x outputs x fan-in, whether they reach the counter
    decomposed (autograd on) or whole (inference_mode)."""
    torch.manual_seed(0)
    lin, conv = torch.nn.Linear(187, 32), torch.nn.Conv1d(1, 32, 5, padding=2)
    x = torch.rand(8, 187)
    want = 2 * 8 * 32 * 187 + 2 * (8 * 32 * 187) * 5
    fn = lambda: (lin(x), conv(x[:, None]))
    grad = bench.count_ops(fn)
    with torch.inference_mode():
        inference = bench.count_ops(fn)
    assert grad["flops"] == inference["flops"] == want
    assert grad["ops"] >= 2 and inference["ops"] >= 2


def test_per_step_counts_one_more_step():
    calls = lambda k: [torch.ones(4) * 2 for _ in range(3 * k + 1)]
    assert bench.per_step(calls) == {"ops": 6, "flops": 0}     # ones and mul, 3 times
