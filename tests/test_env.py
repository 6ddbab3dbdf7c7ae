"""The install (setup_env.sh, run by test.sh) keeps the CPU torch: no package dragged in a
CUDA build or torchvision; torchattacks, installed without its declared dependencies, works."""
import importlib.util
import shutil

import pytest
import torch


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine may use CUDA")
def test_torch_is_the_cpu_build():
    assert torch.version.cuda is None, torch.__version__
    assert not torch.cuda.is_available()


def test_torchattacks_without_torchvision():
    assert importlib.util.find_spec("torchvision") is None
    import torchattacks
    assert torchattacks.__version__ == "3.5.1"
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(187, 5))
    atk = torchattacks.APGD(net, eps=0.05, steps=3)
    x = torch.rand(4, 1, 1, 187)
    adv = atk(x, torch.zeros(4, dtype=torch.long))
    assert (adv - x).abs().max() <= 0.05 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
