"""One command from data to report: train, attack, evaluate. Resumable.

    python reproduce.py quick               # the demo: <= 10 min on 2 CPU cores -> results/report.md
    python reproduce.py paper               # the full protocol of SPEC 4-6 -> results/paper/report.md
    python reproduce.py paper --device cuda --dry-run    # print the plan and the time estimate

(`bash reproduce.sh quick` does the same after installing what is needed.)

quick: the committed real sample unless the Kaggle CSVs are in ecg/ (then the full data, still
with short epochs); trains CE, MSE+margin, Jacobian, adv 0.1 and NSR for both archs for a few
short epochs, attacks each with the paper's PGD (fewer steps) on a balanced subset at every eps
(plus eps 1.0 and standard PGD with restarts for the sanity checks), SPSA on a small balanced
subset at two eps, white noise; then evaluate.py.
paper: all 9 models per arch, 50 epochs, PGD-100 on the whole test split, SPSA on the 810 beats,
white noise at every eps, the sanity-check runs; then evaluate.py.

Every step is skipped when its output exists (a finished training run, a result JSON), and a
training run that was killed continues from its last epoch (--resume), so re-running the same
command after an interruption picks up where it stopped.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

import attack_autoattack
import attack_pgd
import attack_spsa
import evaluate
import preprocess
import train_baseline
import train_nsr
from models import get_device, tune_malloc

BENCH_TRAIN = "results/bench/train.json"
BENCH_ATTACK = "results/bench/attack.json"

# (method, settings that differ from the paper's) of each model; train_baseline.make_config
# builds the rest, and its name and flags come from that config.
PAPER_MODELS = [("ce", {}), ("mse", {}), ("mse_margin", {}), ("jacob", {}),
                ("adv", {"adv_eps": 0.1}), ("adv", {"adv_eps": 0.2}), ("adv", {"adv_eps": 0.3}),
                ("align", {}), ("nsr", {})]
QUICK_MODELS = [("ce", {}), ("mse_margin", {}), ("jacob", {}), ("adv", {"adv_eps": 0.1}),
                ("nsr", {})]

# Attack settings per preset. A value given as {"mlp": .., "cnn": ..} is per arch; "seeds": the
# training seeds it runs on ("all" or a list); eps lists default to each script's paper list.
PRESETS = {
    "quick": {"results": "results", "models": QUICK_MODELS, "epochs": 6,
              "max_train_samples": 8000,
              "pgd": {"steps": 50, "max_samples": 250},          # 50 beats per class
              "pgd_check": {"steps": 20, "sign_restarts": 2, "eps_one": True},
              "spsa": {"per_class": 5, "steps": 20, "n_dirs": 256, "eps": [0.03, 0.1],
                       "seeds": "all"},
              "autoattack": {"attacks": ["apgd-ce", "apgd-t"], "steps": 25, "max_samples": 250,
                             "seeds": "all"},
              "square": {"n_queries": 1000, "max_samples": 50, "eps": [0.03, 0.1],
                         "seeds": "all"},
              "noise": {"max_samples": 250}},
    "paper": {"results": "results/paper", "models": PAPER_MODELS, "epochs": 50,
              "max_train_samples": None,
              "pgd": {"steps": 100, "max_samples": None},
              "pgd_check": {"steps": 20, "sign_restarts": 5, "eps_one": True, "max_samples": 1000},
              "spsa": {"per_class": {"mlp": 162, "cnn": 40}, "steps": 100, "n_dirs": 2048,
                       "eps": {"mlp": attack_spsa.EPS_LIST, "cnn": [0.03, 0.1]}, "seeds": [0]},
              "autoattack": {"attacks": ["apgd-ce", "apgd-t", "fab-t"], "steps": 100,
                             "max_samples": {"mlp": 1000, "cnn": 500}, "seeds": [0]},
              "square": {"n_queries": 5000, "max_samples": {"mlp": 1000, "cnn": 500},
                         "eps": None, "seeds": [0]},
              "noise": {"max_samples": None}},
}


def per_arch(value, arch):
    return value[arch] if isinstance(value, dict) else value


def attack_tasks(preset, cfg, target):
    """The attack runs of one trained model: [(label, script main, argv)], biggest first.
    `target`: the flags naming its checkpoint, data, device and result folder."""
    arch, seed, name = cfg["arch"], cfg["seed"], cfg["name"]
    pgd, chk, sp = preset["pgd"], preset["pgd_check"], preset["spsa"]
    aa, sq = preset["autoattack"], preset["square"]
    on_seed = lambda part: part.get("seeds", "all") == "all" or seed in part["seeds"]
    n = lambda v: ["--max-samples", str(per_arch(v, arch))] if per_arch(v, arch) else []
    eps = lambda v: ["--eps", *map(str, per_arch(v, arch))] if per_arch(v, arch) else []
    n_main, n_chk = pgd["max_samples"], chk.get("max_samples", pgd["max_samples"])
    chk_eps = ["--eps", "0.03", "0.1"]
    tasks = [(f"PGD {name}", attack_pgd.main, target + n(n_main) + ["--steps", str(pgd["steps"])])]
    if on_seed(sp):
        tasks.append((f"SPSA {name}", attack_spsa.main,
                      target + ["--per-class", str(per_arch(sp["per_class"], arch)), "--steps",
                                str(sp["steps"]), "--n-dirs", str(sp["n_dirs"])] + eps(sp["eps"])))
    if on_seed(aa):
        tasks.append((f"AutoAttack {name}", attack_autoattack.main,
                      target + n(aa["max_samples"]) + ["--steps", str(aa["steps"]),
                                                       "--attacks", *aa["attacks"]]))
    if on_seed(sq):
        tasks.append((f"Square {name}", attack_autoattack.main,
                      target + n(sq["max_samples"]) + ["--attacks", "square", "--n-queries",
                                                       str(sq["n_queries"])] + eps(sq["eps"])))
    # sanity-check runs (SPEC 7): fewer steps, one vs several restarts, eps 1, noise
    if n_chk != n_main:
        tasks.append((f"PGD on the check subset {name}", attack_pgd.main,
                      target + n(n_chk) + ["--steps", str(pgd["steps"])] + chk_eps))
    tasks.append((f"PGD fewer steps {name}", attack_pgd.main,
                  target + n(n_chk) + ["--steps", str(chk["steps"])] + chk_eps))
    for restarts in (1, chk["sign_restarts"]):
        tasks.append((f"sign PGD x{restarts} {name}", attack_pgd.main,
                      target + n(n_chk) + ["--variant", "sign", "--loss", "margin", "--steps",
                                           str(chk["steps"]), "--restarts", str(restarts)]
                      + chk_eps))
    if chk["eps_one"]:
        tasks.append((f"PGD eps 1 {name}", attack_pgd.main,
                      target + n(n_chk) + ["--steps", str(chk["steps"]), "--step-size", "0.05",
                                           "--eps", "1.0"]))
    tasks.append((f"noise {name}", attack_pgd.main,
                  target + n(preset["noise"]["max_samples"]) + ["--noise"]))
    return tasks


# CPU throughputs used when results/bench/train.json is absent (measured on 2 cores)
DEFAULT_SPS = {("mlp", m): v for m, v in [("ce", 1.3e5), ("mse", 1.5e5), ("mse_margin", 1.2e5),
               ("jacob", 3.5e4), ("adv", 1.9e4), ("align", 7.7e4), ("nsr", 7.2e4)]}
DEFAULT_SPS.update({("cnn", m): v for m, v in [("ce", 6.2e3), ("mse", 6.7e3),
                    ("mse_margin", 6.7e3), ("jacob", 1.0e3), ("adv", 6.8e2), ("align", 3.2e3),
                    ("nsr", 3.2e3)]})


def finished(cfg):
    """A run is done when its last checkpoint reached the preset's epochs."""
    last, _ = train_baseline.checkpoint_paths(cfg)
    if not os.path.exists(last):
        return False
    try:
        return torch.load(last, map_location="cpu", weights_only=True)["epoch"] + 1 >= cfg["epochs"]
    except Exception:
        return False


def train_configs(preset, archs, seeds, device, data_dir, sample, ckpt_dir):
    """Every training run of a preset, as make_config builds it."""
    return [train_baseline.make_config(arch, method, seed=seed, epochs=preset["epochs"],
                                       max_train_samples=preset["max_train_samples"],
                                       device=device, data_dir=data_dir, sample=sample,
                                       out_dir=ckpt_dir, **extra)
            for seed in seeds for arch in archs for method, extra in preset["models"]]


def estimate_minutes(preset, per_epoch, archs, n_seeds=1):
    sps = dict(DEFAULT_SPS)
    if os.path.exists(BENCH_TRAIN):
        with open(BENCH_TRAIN) as f:
            for r in json.load(f).get("throughput", []):
                sps[(r["arch"], r["method"])] = r["samples_per_s"]
    train_s = n_seeds * sum(preset["epochs"] * per_epoch / sps[(arch, method)]
                            for arch in archs for method, _ in preset["models"])
    return train_s / 60


def estimate_attack_minutes(preset, n_test):
    """Upper bound for the CNNs (no early stop) from results/bench/attack.json; MLPs are ~10x
    cheaper. PGD: every eps on its beats; SPSA: per beat and iteration."""
    pgd_sps, spsa_s = 130.0, 0.13
    if os.path.exists(BENCH_ATTACK):
        with open(BENCH_ATTACK) as f:
            b = json.load(f)
        pgd_sps, spsa_s = b["pgd"]["ours_samples_per_s"], b["spsa"]["batched_s_per_iter_sample"]
    n_pgd = preset["pgd"]["max_samples"] or n_test
    pgd = len(attack_pgd.EPS_LIST) * n_pgd * preset["pgd"]["steps"] / 100 / pgd_sps
    sp = preset["spsa"]
    spsa = (len(per_arch(sp["eps"], "cnn") or attack_spsa.EPS_LIST) * 5
            * per_arch(sp["per_class"], "cnn") * sp["steps"] * spsa_s * sp["n_dirs"] / 2048)
    return len(preset["models"]) * (pgd + spsa) / 60


def step(label, fn, argv):
    print(f"\n=== {label}: {' '.join(argv)}", flush=True)
    rc = fn(argv)
    if rc:
        raise SystemExit(f"step failed ({label}), exit code {rc}: fix it and re-run to resume")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("preset", choices=sorted(PRESETS))
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--data-dir", default=preprocess.DATA_DIR)
    p.add_argument("--results-dir", default=None, help="default: results (quick), results/paper")
    p.add_argument("--archs", nargs="+", choices=["mlp", "cnn"], default=["mlp", "cnn"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="training seeds (the attack seed stays fixed)")
    p.add_argument("--phases", nargs="+", choices=["train", "attack", "evaluate"],
                   default=["train", "attack", "evaluate"], help="which phases to run")
    p.add_argument("--dry-run", action="store_true", help="print the plan and estimate only")
    # overrides (tests use tiny values)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--pgd-steps", type=int, default=None)
    p.add_argument("--pgd-samples", type=int, default=None)
    p.add_argument("--spsa-steps", type=int, default=None)
    p.add_argument("--spsa-dirs", type=int, default=None)
    p.add_argument("--aa-steps", type=int, default=None, help="APGD/FAB iterations")
    p.add_argument("--square-queries", type=int, default=None)
    args = p.parse_args(argv)
    preset = json.loads(json.dumps(PRESETS[args.preset]))
    for key, (section, field) in {"epochs": (None, "epochs"),
                                  "max_train_samples": (None, "max_train_samples"),
                                  "pgd_steps": ("pgd", "steps"), "pgd_samples": ("pgd", "max_samples"),
                                  "spsa_steps": ("spsa", "steps"),
                                  "spsa_dirs": ("spsa", "n_dirs")}.items():
        v = getattr(args, key)
        if v is not None:
            (preset if section is None else preset[section])[field] = v
    if args.pgd_samples is not None:
        preset["noise"]["max_samples"] = args.pgd_samples
        preset["autoattack"]["max_samples"] = args.pgd_samples
        preset["square"]["max_samples"] = min(args.pgd_samples, 50)
    for key, (section, field) in {"aa_steps": ("autoattack", "steps"),
                                  "square_queries": ("square", "n_queries")}.items():
        if getattr(args, key) is not None:
            preset[section][field] = getattr(args, key)
    results = args.results_dir or preset["results"]
    t_start = time.perf_counter()
    tune_malloc()

    # --- data
    kaggle = all(os.path.exists(os.path.join(args.data_dir, f))
                 for f in (preprocess.TRAIN_CSV, preprocess.TEST_CSV))
    sample = args.preset == "quick" and not kaggle
    if args.preset == "paper" and not kaggle:
        print(f"error: the paper preset needs the full data: put the Kaggle CSVs in "
              f"{args.data_dir}/ or run 'python preprocess.py --wfdb DIR' first", file=sys.stderr)
        return 2
    if sample:
        print(f"No Kaggle CSVs in {args.data_dir}/: using the committed real sample "
              f"({os.path.relpath(preprocess.SAMPLE_NPZ)}, beats rebuilt from MIT-BIH records).")
    data_flags = ["--data-dir", args.data_dir] + (["--sample"] if sample else [])
    step("data", preprocess.main, data_flags)
    cache = preprocess.load_cache(args.data_dir, sample)
    n_train = 5 * int(np.bincount(cache["Y_train"].numpy()).max())   # one balanced epoch
    per_epoch = min(preset["max_train_samples"] or n_train, n_train)
    est = estimate_minutes(preset, per_epoch, args.archs, len(args.seeds))
    est_att = estimate_attack_minutes(preset, len(cache["Y_test"]))
    hours = lambda m: f"{m / 60:.1f} h" if m >= 60 else f"{m:.0f} min"
    print(f"\nPlan: {len(preset['models'])} models x {len(args.archs)} archs, {preset['epochs']} "
          f"epochs of {per_epoch} samples. Estimated on a 2-core CPU (from results/bench): "
          f"training {hours(est)}, attacks on the CNNs at most {hours(est_att)} (less: fooled "
          "beats stop early)"
          + ("; a GPU should be many times faster (not measured here)"
             if get_device(args.device).type != "cpu" else "")
          + f". Results under {results}/.")
    if args.dry_run:
        return 0

    # --- training
    ckpt_dir = os.path.join(results, "checkpoints")
    cfgs = train_configs(preset, args.archs, args.seeds, args.device, args.data_dir, sample,
                         ckpt_dir)
    for cfg in cfgs if "train" in args.phases else []:
        if finished(cfg):
            print(f"=== train {cfg['name']}: done, skipped")
            continue
        fn = train_nsr.main if cfg["method"] in train_nsr.METHODS else train_baseline.main
        resume = ["--resume"] if os.path.exists(train_baseline.checkpoint_paths(cfg)[0]) else []
        step(f"train {cfg['name']}", fn, train_baseline.config_argv(cfg) + resume)
    # --- attacks
    attack_dir = os.path.join(results, "attacks")
    for cfg in cfgs if "attack" in args.phases else []:
        target = ["--checkpoint", train_baseline.checkpoint_paths(cfg)[1], "--device",
                  args.device, "--out-dir", attack_dir, *data_flags]
        for label, fn, argv in attack_tasks(preset, cfg, target):
            step(label, fn, argv)

    # --- report
    if "evaluate" not in args.phases:
        return 0
    step("evaluate", evaluate.main, ["--results-dir", results])
    print(f"\nreport: {os.path.join(results, 'report.md')} "
          f"(total {(time.perf_counter() - t_start) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
