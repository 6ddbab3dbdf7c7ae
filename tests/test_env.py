"""The install (setup_env.sh, run by test.sh) keeps the CPU torch: no package dragged in a
CUDA build or torchvision; torchattacks, installed without its declared dependencies, works."""
import importlib.util
import os
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


@pytest.mark.parametrize("script", ["preprocess", "train_baseline", "train_nsr", "attack_pgd",
                                    "attack_spsa", "attack_autoattack", "attack_sap", "evaluate",
                                    "reproduce",
                                    "bench", "benchmark"])
def test_help_reads_like_a_man_page(script, capsys):
    """No "(default: None)" or "(default: False)", no path of the machine it was built on, a
    default shown once."""
    import importlib
    from conftest import ROOT
    with pytest.raises(SystemExit) as e:
        importlib.import_module(script).main(["--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0 and "usage:" in text
    assert "(default: None)" not in text and "(default: False)" not in text
    assert ROOT not in text and os.path.dirname(ROOT) not in text
    flat = " ".join(text.split())
    assert "default 0.1) (default" not in flat
