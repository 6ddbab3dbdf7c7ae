"""reproduce.py's plan: the attack tasks of a preset, the --attacks filter, the estimate."""
import pytest

import plan
import reproduce
import training

TARGET = {"checkpoint": "results/paper/checkpoints/mlp_ce_s0_best.pt"}


def paper_tasks(kinds=reproduce.ATTACK_KINDS, seed=0):
    cfg = reproduce.make_config("mlp", "ce", seed=seed, epochs=50)
    return reproduce.attack_tasks(reproduce.PRESETS["paper"], cfg, TARGET, kinds)


def test_attack_kinds_filter_and_cover_the_tasks():
    every = paper_tasks()
    labels = [t[0] for t in every]
    # seed 0 of the paper preset: PGD at 6 eps, SPSA 8 eps x 4 shards, 3 AutoAttack components
    # x 6 eps x 2 shards, Square 6 eps x 2 shards, noise at 9 eps, and the sanity-check runs
    assert sum(lab.startswith("PGD mlp_ce_s0 eps") for lab in labels) == 6
    assert sum(lab.startswith("SPSA") for lab in labels) == 8 * 4
    assert sum(lab.startswith("AutoAttack") for lab in labels) == 3 * 6 * 2
    assert sum(lab.startswith("noise") for lab in labels) == 9
    by_kind = {k: paper_tasks([k]) for k in reproduce.ATTACK_KINDS}
    first = {"pgd": ("PGD mlp",), "noise": ("noise",), "autoattack": ("AutoAttack",),
             "square": ("Square",), "spsa": ("SPSA",), "sap": ("SAP han", "SAP strong"),
             "surface": ("loss surface",),
             "checks": ("PGD on the check", "PGD fewer", "PGD eps 1", "sign PGD")}
    assert all(t[0].startswith(first[k]) for k, ts in by_kind.items() for t in ts)
    assert sorted(t[0] for ts in by_kind.values() for t in ts) == sorted(labels)
    # the CE model is the transfer attack's source: no transfer onto itself
    assert all(by_kind[k] for k in reproduce.ATTACK_KINDS if k != "transfer")
    assert not by_kind["transfer"]
    assert sum(lab.startswith("SAP") for lab in labels) == 2 * 6
    assert {t[0] for t in paper_tasks(["pgd", "noise"])} == \
        {t[0] for t in by_kind["pgd"] + by_kind["noise"]}
    # SPSA runs on seed 0 only, AutoAttack and Square on every seed
    assert not paper_tasks(["spsa"], seed=1)
    assert len(paper_tasks(["autoattack", "square"], seed=1)) == (3 + 1) * 6 * 2


def test_plan_estimate_grows_with_the_work():
    preset = reproduce.PRESETS["paper"]
    one = plan.estimate_attack_minutes(preset, 21890, "mlp", [0])
    three = plan.estimate_attack_minutes(preset, 21890, "mlp", [0, 1, 2])
    assert set(one) == {"PGD", "SPSA", "AutoAttack", "Square", "SAP", "transfer"} \
        and all(v > 0 for v in one.values())
    assert three["PGD"] == pytest.approx(3 * one["PGD"]) and three["SPSA"] == one["SPSA"]   # SPSA: seed 0
    assert three["AutoAttack"] == pytest.approx(3 * one["AutoAttack"])
    cnn = plan.estimate_attack_minutes(preset, 21890, "cnn", [0])
    assert cnn["PGD"] > one["PGD"]                     # the CNN attacks are dearer per beat


def test_methods_pick_models_of_the_preset():
    args = reproduce.build_parser().parse_args(["paper", "--methods", "ce", "nsr", "adv"])
    preset = reproduce.preset_from_args(args)
    assert [m for m, _ in preset["models"]] == ["ce", "adv", "adv", "adv", "nsr"]
    cfgs = reproduce.train_configs(preset, ["cnn"], [0], "cpu", "ecg", False, "ckpt")
    assert [c["name"] for c in cfgs] == ["cnn_ce_s0", "cnn_adv_0.1_s0", "cnn_adv_0.2_s0",
                                         "cnn_adv_0.3_s0", "cnn_nsr_0.3_s0"]
    assert len(reproduce.PRESETS["paper"]["models"]) == 9          # the preset itself unchanged


def test_runs_pick_models_across_seeds_into_one_queue(tmp_path, capsys):
    """--runs keeps the named models of what --seeds/--methods select (seed 0 of one method
    beside seeds 1-2 of another), and the plan counts those only."""
    argv = ["quick", "--archs", "mlp", "--data-dir", str(tmp_path / "ecg"), "--dry-run",
            "--seeds", "0", "1", "2", "--methods", "ce", "jacob"]
    assert reproduce.main(argv) == 0
    every = capsys.readouterr().out
    assert "Plan: 6 models (2 methods x 1 archs x 3 seeds)" in every
    assert reproduce.main(argv + ["--runs", "mlp_jacob_n4000_s0", "mlp_ce_n4000_s1",
                                  "mlp_ce_n4000_s2"]) == 0
    some = capsys.readouterr().out
    assert "Plan: 3 models (2 methods x 1 archs x 3 seeds, those --runs names)" in some
    pgd = lambda out: float(out.split("PGD ")[1].split(" ")[0])
    assert pgd(some) == pytest.approx(pgd(every) / 2, rel=0.05)     # 3 of the 6 models' attacks
    assert list(tmp_path.iterdir()) == []


def test_cpu_shrink_flags_and_their_estimate():
    """The CNN's SPSA and AutoAttack subsets shrink by flag; the plan estimate follows."""
    p = reproduce.build_parser()
    full = reproduce.preset_from_args(p.parse_args(["paper"]))
    small = reproduce.preset_from_args(p.parse_args(["paper", "--spsa-per-class", "10",
                                                     "--aa-samples", "200"]))
    assert small["spsa"]["per_class"] == 10 and small["autoattack"]["max_samples"] == 200
    assert small["square"]["max_samples"] == 200
    big = plan.estimate_attack_minutes(full, 21890, "cnn", [0])
    less = plan.estimate_attack_minutes(small, 21890, "cnn", [0])
    assert less["SPSA"] == pytest.approx(big["SPSA"] * 10 / 40)
    assert less["AutoAttack"] == pytest.approx(big["AutoAttack"] * 200 / 500)
    assert less["PGD"] == big["PGD"]


def test_training_left_is_calibrated_by_measured_epochs(tmp_path):
    """A started run counts its own epochs left at its measured pace; a run not started counts
    the bench estimate scaled by how much slower the started runs were than the bench."""
    import torch
    cfgs = [reproduce.make_config("mlp", m, epochs=50, out_dir=str(tmp_path))
            for m in ("ce", "nsr")]
    per_epoch = 290030
    bench_ce = plan.train_estimate_s(cfgs[0], per_epoch) / 50
    last = training.checkpoint_paths(cfgs[0])[0]
    history = [{"epoch": e, "seconds": 3 * bench_ce} for e in range(10)]    # 3x the bench
    torch.save({"history": history, "epoch": 9}, last)
    left = plan.train_left_minutes(cfgs, per_epoch) * 60
    want = 40 * 3 * bench_ce + 3 * plan.train_estimate_s(cfgs[1], per_epoch)
    assert left == pytest.approx(want)


def test_attack_phase_skips_models_still_training(tmp_path, capsys):
    """--phases attack on a seed whose training is unfinished attacks the finished models only
    (another command may still be training the rest)."""
    data, res = tmp_path / "ecg", tmp_path / "results"
    data.mkdir()
    tiny = ["quick", "--device", "cpu", "--archs", "mlp", "--data-dir", str(data),
            "--results-dir", str(res), "--epochs", "1", "--max-train-samples", "128",
            "--pgd-steps", "2", "--pgd-samples", "10"]
    assert reproduce.main(tiny + ["--methods", "ce", "--phases", "train"]) == 0
    assert reproduce.main(tiny + ["--methods", "ce", "nsr", "--phases", "attack",
                                  "--attacks", "pgd"]) == 0
    out = capsys.readouterr().out
    assert "attacks on mlp_nsr_0.4_n128_s0: its training has not finished, skipped" in out
    made = sorted(p.name for p in (res / "attacks").glob("*.json"))
    assert made and all(n.startswith("mlp_ce_n128_s0__pgd") for n in made)
    assert len(made) == 6                                   # the paper's 6 PGD eps


def test_gpu_estimate_from_op_counts(tmp_path, monkeypatch):
    """The GPU estimate: ops x GPU_OP_US + FLOPs / GPU_TFLOPS per unit of work, handed out over
    N GPUs longest first."""
    import json
    counts = {"settings": {"pgd_batch": 1024, "spsa_batch": 32, "spsa_dirs": 2048,
                           "aa_batch": 500, "aa_steps": 100, "square_queries": 5000},
              "train": [{"arch": "mlp", "method": m, "ops": 100, "flops": 0}
                        for m in ("ce", "nsr")],
              "attack": [{"arch": "mlp", "attack": a, "ops": 10, "flops": 3e12}
                         for a in ("forward", "pgd", "spsa", "apgd-ce", "apgd-t", "fab-t",
                                   "square")]}
    path = tmp_path / "steps.json"
    path.write_text(json.dumps(counts))
    monkeypatch.setattr(plan, "BENCH_STEPS", str(path))
    preset = reproduce.PRESETS["paper"]
    cfgs = [reproduce.make_config("mlp", m, epochs=50) for m in ("ce", "nsr")]
    t = plan.gpu_task_seconds(preset, cfgs, 1280, 4096, 2048, ["mlp"], [0], op_us=10,
                                   tflops=1)
    # a run: 50 epochs x (10 steps of 100 ops + one validation forward: 10 ops, 3 s of FLOPs)
    assert t["train"] == pytest.approx([50 * (10 * 100 * 10e-6 + 10 * 10e-6 + 3)] * 2)
    # PGD at one eps: 2 batches x 100 steps of 10 ops, 2 x 100 full batches of FLOPs, 9 models
    pgd = 2 * 100 * 10 * 10e-6 + 2 * 100 * 3
    assert sum(s == pytest.approx(pgd) for s in t["attack"]) == 9 * 6
    # SPSA (seed 0): 810 beats in 26 batches (25.3 full), 100 iterations, 8 eps x 4 shards
    spsa = (26 * 100 * 10 * 10e-6 + 810 / 32 * 100 * 3) / 4
    assert sum(s == pytest.approx(spsa) for s in t["attack"]) == 9 * 8 * 4
    assert plan.makespan([3, 3, 2, 2, 2], 2) == 7          # 3+2+2 | 3+2
    assert plan.makespan([5, 1, 1], 4) == 5                # the longest task bounds it
    gpus = (1, 2, 4, 8)
    walls = [plan.makespan(t["attack"], g) for g in gpus]
    assert walls[0] == pytest.approx(sum(t["attack"]))
    assert all(a >= b for a, b in zip(walls, walls[1:]))
    assert all(w >= sum(t["attack"]) / g - 1e-9 for w, g in zip(walls, gpus))


def test_cuda_dry_run_prints_the_gpu_estimate_anywhere(tmp_path, capsys):
    """--dry-run with --device cuda prints the GPU plan on a machine without one; a real run
    there stops with a clear error before any work."""
    import torch
    tiny = ["quick", "--device", "cuda", "--archs", "mlp", "--data-dir", str(tmp_path / "ecg"),
            "--results-dir", str(tmp_path / "res")]
    assert reproduce.main(tiny + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "GPU estimate, not measured" in out and "4 GPUs (torchrun): training" in out
    if not torch.cuda.is_available():
        assert reproduce.main(tiny) == 2
        assert "CUDA is not available" in capsys.readouterr().err
        assert not (tmp_path / "res").exists()


def test_paper_preset_runs_from_the_cache_alone(sample_dir, tmp_path, capsys):
    """A machine with the full cache but without the Kaggle CSVs (a GPU box the cache was copied
    to) runs the paper preset from the cache as it is; with neither, it stops naming both."""
    import shutil
    import preprocess
    data = tmp_path / "ecg"
    data.mkdir()
    paper = ["paper", "--device", "cpu", "--archs", "mlp", "--data-dir", str(data),
             "--results-dir", str(tmp_path / "res"), "--dry-run"]
    assert reproduce.main(paper) == 2
    assert "put the Kaggle CSVs in" in capsys.readouterr().err
    shutil.copy(preprocess.cache_path(sample_dir, sample=True), preprocess.cache_path(str(data)))
    assert reproduce.main(paper) == 0
    out = capsys.readouterr().out
    digest = preprocess.data_sha256(sample_dir, sample=True)
    assert f"using the cache {preprocess.cache_path(str(data))} as it is (data digest {digest[:12]})" in out
    assert "Plan: 9 models (9 methods x 1 archs x 1 seeds)" in out
    assert sorted(p.name for p in data.iterdir()) == [preprocess.CACHE_FILE]   # nothing rebuilt
    # and it runs: train, attack (with the cache's folder as the attacks' data), evaluate
    tiny = ["--methods", "ce", "--epochs", "1", "--max-train-samples", "256", "--pgd-steps",
            "2", "--pgd-samples", "25", "--attacks", "pgd"]
    assert reproduce.main([a for a in paper if a != "--dry-run"] + tiny) == 0
    results = list((tmp_path / "res" / "attacks").glob("mlp_ce_*.json"))
    assert len(results) == 6 and (tmp_path / "res" / "report.md").exists()
    assert sorted(p.name for p in data.iterdir()) == [preprocess.CACHE_FILE]


@pytest.mark.parametrize("extra, words", [
    (["--seeds", "0", "0"], "--seeds names 0 more than once"),
    (["--runs", "mlp_ce_n4000_s0", "mlp_jacob_s0"], "--runs mlp_jacob_s0: not among the models"),
    (["--methods", "mse"], "--methods mse: not in the quick preset"),
    (["--archs", "mlp", "mlp"], "--archs names mlp more than once")])
def test_quiet_inputs_are_refused(extra, words, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        reproduce.main(["quick", "--data-dir", str(tmp_path / "ecg"), "--dry-run", *extra])
    assert e.value.code == 2 and words in capsys.readouterr().err


def test_dry_run_writes_and_rebuilds_nothing(tmp_path, capsys):
    """A dry run on a fresh clone plans from the committed sample without building its cache,
    and creates no folder."""
    argv = ["quick", "--device", "cpu", "--archs", "mlp", "--data-dir", str(tmp_path / "ecg"),
            "--results-dir", str(tmp_path / "res"), "--dry-run"]
    assert reproduce.main(argv) == 0
    assert "Plan: 5 models (5 methods x 1 archs x 1 seeds)" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_duplicate_records_are_refused(tmp_path, capsys):
    import preprocess
    with pytest.raises(SystemExit) as e:
        preprocess.main(["--wfdb", str(tmp_path), "--records", "100", "101", "100",
                         "--data-dir", str(tmp_path / "ecg")])
    assert e.value.code == 2 and "--records names 100 more than once" in capsys.readouterr().err
    assert not (tmp_path / "ecg").exists()


def test_one_writer_per_results_folder(sample_dir, tmp_path, capsys):
    """While another process holds a results folder, reproduce.py and an attack script on it
    refuse with a message naming that process, also when the folder is spelled another way
    (./, a symlink), and nothing is retrained or recomputed; this process takes it again."""
    import subprocess
    import sys
    import attack_pgd
    from conftest import ROOT
    res = tmp_path / "res"
    argv = ["quick", "--device", "cpu", "--archs", "mlp", "--methods", "ce", "--epochs", "1",
            "--max-train-samples", "64", "--data-dir", sample_dir, "--attacks", "pgd"]
    assert reproduce.main(argv + ["--results-dir", str(res), "--phases", "train"]) == 0
    (ckpt,) = (res / "checkpoints").glob("*_best.pt")
    stamp = ckpt.stat().st_mtime_ns
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, utils; "
         f"assert utils.hold_folder({str(res / 'attacks')!r}) is None; print('held', flush=True); "
         "time.sleep(120)"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        (tmp_path / "link").symlink_to(res)
        for spelled in (str(res), str(tmp_path / "link"), str(res) + "/."):
            assert reproduce.main(argv + ["--results-dir", spelled, "--epochs", "2"]) == 2
            assert f"is in use by another run (pid {holder.pid}" in capsys.readouterr().err
        assert ckpt.stat().st_mtime_ns == stamp                     # nothing retrained
        assert attack_pgd.main(["--checkpoint", str(ckpt), "--sample", "--data-dir", sample_dir,
                                "--max-samples", "25", "--steps", "2", "--eps", "0.03",
                                "--out-dir", str(res / "." / "attacks"), "--device", "cpu"]) == 2
        assert "is in use by another run" in capsys.readouterr().err
        assert not list((res / "attacks").glob("*.json"))          # nothing computed
    finally:
        holder.kill()
        holder.wait()
    assert reproduce.main(argv + ["--results-dir", str(res), "--phases", "train", "attack"]) == 0
    assert list((res / "attacks").glob("*.json"))


def test_the_demo_runs_every_attack_the_paper_preset_runs():
    """The quick preset may shrink budgets but not drop an attack: every attack script and
    AutoAttack component of the paper preset's tasks appears in the quick preset's (issue 24)."""
    import protocol

    def kinds(preset):
        out = set()
        for arch in protocol.ARCHS:
            cfg = {"arch": arch, "seed": 0, "name": f"{arch}_x"}
            for task in reproduce.attack_tasks(protocol.PRESETS[preset], cfg, {}):
                a = task.args
                out.add((task.fn.__module__, (getattr(a, "attacks", None) or [None])[0],
                         getattr(a, "variant", None) if task.fn.__module__ == "attack_sap" else
                         None, getattr(a, "noise", False), getattr(a, "restarts", 1) > 1))
        return out
    paper, quick = kinds("paper"), kinds("quick")
    assert {a for _, a, _, _, _ in paper} >= {"apgd-ce", "apgd-t", "fab-t", "square"}
    assert paper <= quick, paper - quick


def test_transfer_attacks_come_from_the_ce_model_of_the_same_seed_and_wait_for_it(tmp_path):
    """Every model but CE gets a transfer task whose source is the CE run of its arch, seed and
    budget; the queue makes it wait for that run's training too; an NSR model gets the loss
    surface, an adv model does not."""
    cfg = reproduce.make_config("cnn", "nsr", seed=2, epochs=50, out_dir=str(tmp_path))
    tasks = reproduce.attack_tasks(reproduce.PRESETS["paper"], cfg, TARGET, ["transfer", "surface"])
    tr = [t for t in tasks if t[0].startswith("transfer")]
    assert len(tr) == 6 and all(t.args.source == str(tmp_path / "cnn_ce_s2_best.pt") for t in tr)
    assert [t[0] for t in tasks if t[0].startswith("loss surface")] == ["loss surface cnn_nsr_0.3_s2"]
    adv = reproduce.make_config("cnn", "adv", seed=2, epochs=50, adv_eps=0.2)
    assert not reproduce.attack_tasks(reproduce.PRESETS["paper"], adv, TARGET, ["surface"])
    args = reproduce.build_parser().parse_args(["paper", "--archs", "cnn", "--methods", "ce", "nsr",
                                                "--attacks", "transfer"])
    cfgs = reproduce.train_configs(reproduce.preset_from_args(args), ["cnn"], [0], "cpu", "ecg",
                                   False, str(tmp_path))
    queue, needs = reproduce.attack_queue(args, reproduce.preset_from_args(args), cfgs,
                                          str(tmp_path), "cpu", {})
    assert queue and all([c["method"] for c in needs[t[0]]] == ["nsr", "ce"] for t in queue)


def test_tasks_hold_the_namespace_their_script_parses_no_argv():
    """A task is (label, the script's run, the namespace it takes, cost): the same namespace
    the script's own parser gives for the equivalent flags; a setting the script lacks fails."""
    import attack_pgd
    import attack_sap
    ns = reproduce.attack_args(attack_pgd, checkpoint="c.pt", steps=20, eps=[0.03], noise=True)
    assert ns == attack_pgd.get_args_parser().parse_args(
        ["--checkpoint", "c.pt", "--steps", "20", "--eps", "0.03", "--noise"])
    with pytest.raises(ValueError, match="attack_sap has no setting stepz"):
        reproduce.attack_args(attack_sap, stepz=3)
    for task in paper_tasks():
        assert task.fn.__name__ == "run" and not isinstance(task.args, (list, tuple))
        assert task.args.checkpoint == TARGET["checkpoint"] and task.cost > 0
    costs = {t.label.split(" mlp")[0]: t.cost for t in paper_tasks()}
    assert costs["AutoAttack"] > costs["PGD"]
