"""Training scripts: every objective learns on the committed sample; --resume is exact."""
import os

import numpy as np
import pytest
import torch

import train_baseline
import train_nsr
from conftest import needs_mitdb
from models import build_model, load_checkpoint
from preprocess import balanced_epoch_indices

BASELINE_ARGS = {"ce": [], "mse": [], "mse_margin": [], "jacob": [], "adv": ["--adv-eps", "0.1"]}


def config(method, arch, sample_dir, tmp_path, extra=()):
    script = train_nsr if method in ("nsr", "align") else train_baseline
    argv = ["--arch", arch, "--method", method, "--sample", "--data-dir", sample_dir,
            "--out-dir", str(tmp_path), "--device", "cpu", *extra]
    captured = {}
    orig = script.run
    script.run = lambda cfg, objective: captured.update(cfg=cfg, objective=objective) or 0
    try:
        assert script.main(argv) == 0
    finally:
        script.run = orig
    return captured["cfg"], captured["objective"]


@pytest.mark.parametrize("method", ["ce", "mse", "mse_margin", "jacob", "adv", "nsr", "align"])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_a_few_steps_decrease_the_loss(method, arch, sample_cache, sample_dir, tmp_path):
    cfg, objective = config(method, arch, sample_dir, tmp_path)
    y_all = sample_cache["Y_train"].numpy()
    b = torch.from_numpy(balanced_epoch_indices(y_all, 0, 0)[:128])
    x, y = sample_cache["X_train"][b], sample_cache["Y_train"][b]
    torch.manual_seed(0)
    model = build_model(arch, bias=cfg["bias"])
    opt = torch.optim.Adamax(model.parameters(), lr=cfg["lr"] * 5)   # a few steps must tell

    def loss_now():
        model.normalize_kernels()
        return objective(model, x, y, cfg, torch.Generator().manual_seed(1))[0].item()

    before = loss_now()
    for _ in range(15):
        train_baseline.train_step(model, opt, x, y, cfg, objective, torch.Generator())
    after = loss_now()
    assert np.isfinite(after) and after < before, (before, after)


@pytest.mark.parametrize("method,arch", [("adv", "cnn"), ("nsr", "mlp")])
def test_resume_equals_uninterrupted_run(method, arch, sample_dir, tmp_path):
    common = ["--max-train-samples", "384"]
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    script = train_nsr if method == "nsr" else train_baseline
    base = ["--arch", arch, "--method", method, "--sample", "--data-dir", sample_dir,
            "--device", "cpu", *common]
    assert script.main(base + ["--epochs", "3", "--out-dir", str(full_dir)]) == 0
    assert script.main(base + ["--epochs", "2", "--out-dir", str(cut_dir)]) == 0
    assert script.main(base + ["--epochs", "3", "--out-dir", str(cut_dir), "--resume"]) == 0
    name = os.path.basename(next(p for p in os.listdir(full_dir) if not p.endswith("_best.pt")))
    _, a = load_checkpoint(str(full_dir / name))
    _, b = load_checkpoint(str(cut_dir / name))
    assert a["epoch"] == b["epoch"] == 2
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert strip(a["history"]) == strip(b["history"])
    assert os.path.exists(full_dir / name.replace(".pt", "_best.pt"))


def test_resume_with_other_settings_is_refused(sample_dir, tmp_path, capsys):
    base = ["--arch", "mlp", "--method", "ce", "--sample", "--data-dir", sample_dir,
            "--device", "cpu", "--max-train-samples", "128", "--out-dir", str(tmp_path)]
    assert train_baseline.main(base + ["--epochs", "1"]) == 0
    assert train_baseline.main(base + ["--epochs", "2", "--lr", "0.01", "--resume"]) == 2
    assert "other settings: lr=0.001" in capsys.readouterr().err


@pytest.mark.parametrize("script,argv,msg", [
    (train_baseline, ["--arch", "rnn"], "invalid choice: 'rnn'"),
    (train_baseline, ["--method", "nsr"], "invalid choice: 'nsr'"),
    (train_nsr, ["--beta", "-1"], "--beta must be >= 0"),
    (train_baseline, ["--epochs", "0"], "--epochs must be >= 1"),
])
def test_bad_arguments_exit_2(script, argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        script.main(argv)
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_missing_cache_names_the_command(tmp_path, capsys):
    assert train_nsr.main(["--data-dir", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "no data cache" in err and "python preprocess.py" in err


def test_default_betas_per_arch(sample_dir, tmp_path):
    assert config("nsr", "cnn", sample_dir, tmp_path)[0]["beta"] == 0.3
    assert config("nsr", "mlp", sample_dir, tmp_path)[0]["beta"] == 0.4
    cfg, _ = config("align", "cnn", sample_dir, tmp_path)
    assert cfg["beta"] == 0.2 and cfg["bias"] is False and cfg["name"] == "cnn_align_0.2"
    assert config("align", "mlp", sample_dir, tmp_path)[0]["beta"] == 1.0


@pytest.mark.slow
@needs_mitdb
def test_cnn_ce_learns_real_data(wfdb_dir, tmp_path):
    """CNN + CE on the --wfdb rebuild: >= 0.85 balanced validation accuracy after 2 epochs of
    20,000 class-balanced samples."""
    assert train_baseline.main(["--arch", "cnn", "--method", "ce", "--data-dir", wfdb_dir,
                                "--epochs", "2", "--max-train-samples", "20000",
                                "--out-dir", str(tmp_path), "--device", "cpu"]) == 0
    _, ckpt = load_checkpoint(str(tmp_path / "cnn_ce.pt"))
    assert max(h["val_balanced_accuracy"] for h in ckpt["history"]) >= 0.85
