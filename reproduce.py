"""One command from data to report: train, attack, evaluate. Resumable.

    python reproduce.py quick               # the demo: <= 10 min on 2 CPU cores -> results/report.md
    python reproduce.py paper               # the full protocol of METHOD.md 4-6 -> results/paper/report.md
    python reproduce.py paper --device cuda --dry-run    # print the plan and the time estimate
    python reproduce.py quick --seeds 0 1 2              # three training seeds: tables with +-
    torchrun --nproc-per-node 2 reproduce.py quick       # the same on 2 workers (same results)

(`bash reproduce.sh quick` does the same after installing what is needed.)

quick: the committed real sample unless the Kaggle CSVs are in ecg/ (then the full data, still
with short epochs); trains CE, MSE+margin, Jacobian, adv 0.1 and NSR for both archs for a few
short epochs, attacks each with the paper's PGD (fewer steps) on a balanced subset at every eps
(plus eps 1.0 and standard PGD with restarts for the sanity checks), APGD-CE and APGD-T at every
eps on the same beats, SPSA and Square on small balanced subsets at two eps, white noise; then
evaluate.py.
paper: all 9 models per arch, 50 epochs, PGD-100 on the whole test split, white noise at every
eps, the sanity-check runs and the AutoAttack ensemble (MLP 1,000 beats, CNN 500; the protocol
asks seed 0 only) on every seed; SPSA on the 810 beats (MLP; CNN: 200 beats at eps 0.03 and 0.1)
on seed 0; then evaluate.py.

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
import attack_sap
import attack_spsa
import attack_transfer
import evaluate
import preprocess
import protocol
import surface
import train_baseline
import train_nsr
import training
from plan import GPU_OP_US, GPU_TFLOPS, attack_estimate, print_plan, train_estimate_s
from training import finished
from utils import HelpFormatter, arg_number, get_device, release_folder, run_cli, tune_malloc
from workers import Task, Workers, hold_run_folders, step

DEFAULT_EPS = {"attack_pgd": attack_pgd.EPS_LIST, "attack_pgd-noise": attack_pgd.NOISE_EPS_LIST,
               "attack_spsa": attack_spsa.EPS_LIST, "attack_autoattack": attack_autoattack.EPS_LIST,
               "attack_sap": attack_sap.EPS_LIST, "attack_transfer": attack_transfer.EPS_LIST}

# the presets (models, budgets, subsets) are protocol.py's data
PRESETS, PAPER_MODELS, QUICK_MODELS = protocol.PRESETS, protocol.PAPER_MODELS, protocol.QUICK_MODELS
per_arch = protocol.per_arch
# the script that trains each method (its constants are the run's defaults)
TRAINERS = {**{m: train_baseline for m in train_baseline.METHODS},
            **{m: train_nsr for m in train_nsr.METHODS}}


def make_config(arch, method, **overrides):
    """A run's config, built by the training script of its method."""
    return TRAINERS[method].make_config(arch, method, **overrides)


ATTACK_KINDS = ["pgd", "noise", "checks", "autoattack", "square", "spsa", "sap", "transfer",
                "surface"]


def attack_tasks(preset, cfg, target, kinds=ATTACK_KINDS):
    """The attack runs of one trained model: [Task(label, script run, its settings, cost)], one
    task per eps (and AutoAttack component), each split further into beat shards (the script
    merges them into one result). `target`: the settings naming its checkpoint, data, device,
    result folder and suite ({"checkpoint": .., "out_dir": .., ...}); `kinds`: which of
    ATTACK_KINDS to run. No argv: each task holds the namespace its script's run() takes."""
    out = []
    for kind, label, module, values, k in attack_runs(preset, cfg, target):
        if kind not in kinds:
            continue
        if kind == "surface":                # one task per model, no eps
            out.append(Task(label, module.run, attack_args(module, **values), 1.0))
            continue
        for lab, vals in per_eps(label, module, values):
            cost = attack_estimate(module.__name__, cfg["arch"], vals.get("attacks", [None])[0])
            out += [Task(lab, module.run, attack_args(module, **vals), cost)] if k == 1 else [
                Task(f"{lab} shard {i + 1}/{k}", module.run,
                     attack_args(module, **vals, shard=(i, k)), cost / k) for i in range(k)]
    return out


def attack_args(module, **values):
    """The namespace `module.run` takes: its parser's defaults (its UPPER_CASE constants) with
    `values` set; a setting the script does not have is a ValueError (a typo fails loudly)."""
    args = module.get_args_parser().parse_args([])
    unknown = sorted(k for k in values if not hasattr(args, k))
    if unknown:
        raise ValueError(f"{module.__name__} has no setting {', '.join(unknown)}")
    for k, v in values.items():
        setattr(args, k, v)
    return args


def attack_runs(preset, cfg, target):
    """[(kind, label, script module, settings, beat shards)]: every attack sweep of one model."""
    arch, seed, name = cfg["arch"], cfg["seed"], cfg["name"]
    pgd, chk, sp = preset["pgd"], preset["pgd_check"], preset["spsa"]
    aa, sq = preset["autoattack"], preset["square"]
    on_seed = lambda part: part.get("seeds", "all") == "all" or seed in part["seeds"]
    n = lambda v: {"max_samples": per_arch(v, arch)} if per_arch(v, arch) else {}
    eps = lambda v: {"eps": list(per_arch(v, arch))} if per_arch(v, arch) else {}
    n_main, n_chk = pgd["max_samples"], chk.get("max_samples", pgd["max_samples"])
    chk_eps = {"eps": [0.03, 0.1]}
    tasks = [("pgd", f"PGD {name}", attack_pgd, {**target, **n(n_main), "steps": pgd["steps"]}, 1)]
    if on_seed(sp):
        tasks.append(("spsa", f"SPSA {name}", attack_spsa,
                      {**target, "per_class": per_arch(sp["per_class"], arch), "steps": sp["steps"],
                       "n_dirs": sp["n_dirs"], **eps(sp["eps"])}, sp.get("shards", 1)))
    if on_seed(aa):
        # components with the ensemble's budget go as one sweep; "per_attack" overrides one's
        own = aa.get("per_attack", {})
        groups = [[a for a in aa["attacks"] if a not in own]] + [[a] for a in aa["attacks"]
                                                                 if a in own]
        for group in filter(None, groups):
            part = {**aa, **own.get(group[0], {})} if group[0] in own else aa
            tasks.append(("autoattack", f"AutoAttack {name}", attack_autoattack,
                          {**target, **n(part["max_samples"]), "steps": part["steps"],
                           "attacks": group, **eps(part.get("eps"))}, part.get("shards", 1)))
    if on_seed(sq):
        tasks.append(("square", f"Square {name}", attack_autoattack,
                      {**target, **n(sq["max_samples"]), "attacks": ["square"],
                       "n_queries": sq["n_queries"], **eps(sq["eps"])}, sq.get("shards", 1)))
    # sanity-check runs (METHOD.md 7): fewer steps, one vs several restarts, eps 1, noise
    check = {**target, **n(n_chk)}
    if n_chk != n_main:
        tasks.append(("checks", f"PGD on the check subset {name}", attack_pgd,
                      {**check, "steps": pgd["steps"], **chk_eps}, 1))
    tasks.append(("checks", f"PGD fewer steps {name}", attack_pgd,
                  {**check, "steps": chk["steps"], **chk_eps}, 1))
    for restarts in (1, chk["sign_restarts"]):
        tasks.append(("checks", f"sign PGD x{restarts} {name}", attack_pgd,
                      {**check, "variant": "sign", "loss": "margin", "steps": chk["steps"],
                       "restarts": restarts, **chk_eps}, 1))
    if chk["eps_one"]:
        tasks.append(("checks", f"PGD eps 1 {name}", attack_pgd,
                      {**check, "steps": chk["steps"], "step_size": 0.05, "eps": [1.0]}, 1))
    tasks.append(("noise", f"noise {name}", attack_pgd,
                  {**target, **n(preset["noise"]["max_samples"]), "noise": True}, 1))
    return tasks + extra_runs(preset, cfg, target, n, eps, on_seed)


def extra_runs(preset, cfg, target, n, eps, on_seed):
    """The smooth attacks (SAP, both variants), the transfer attack from the CE model of the same
    arch and seed, and the loss surface (issue 25), on the AutoAttack ensemble's beats."""
    name, aa = cfg["name"], preset["autoattack"]
    sap, tr, surf = preset.get("sap"), preset.get("transfer"), preset.get("surface")
    tasks = []
    if sap and on_seed(sap):
        for variant in sap["variants"]:
            budget = {"steps": sap["steps"], "init_steps": sap["init_steps"]}
            if variant == "strong":
                budget["strong_steps"] = sap["strong_steps"]
            tasks.append(("sap", f"SAP {variant} {name}", attack_sap,
                          {**target, **n(aa["max_samples"]), "variant": variant, **budget,
                           **eps(sap.get("eps"))}, 1))
    source = transfer_source(tr, cfg) if tr and on_seed(tr) else None
    if source:
        tasks.append(("transfer", f"transfer {name}", attack_transfer,
                      {**target, **n(aa["max_samples"]), "source": source, "steps": tr["steps"],
                       **eps(tr.get("eps"))}, 1))
    if surf and cfg.get("method") in surf["methods"] and on_seed(surf):
        # beside the attack results: {results}/surface
        out = {"out_dir": os.path.join(os.path.dirname(target["out_dir"]), "surface")} \
            if "out_dir" in target else {}
        tasks.append(("surface", f"loss surface {name}", surface, {**target, **out}, 1))
    return tasks


def transfer_source(part, cfg):
    """The checkpoint a transfer attack on cfg's model crafts its beats on: the preset's
    "source_checkpoint", else the best checkpoint of the source method's run of the same arch,
    seed and budget; None for that run itself."""
    if part.get("source_checkpoint"):
        return part["source_checkpoint"]
    if cfg.get("method") in (None, part["source"]):
        return None
    src = make_config(cfg["arch"], part["source"], seed=cfg["seed"], epochs=cfg["epochs"],
                      max_train_samples=cfg["max_train_samples"], out_dir=cfg["out_dir"],
                      data_dir=cfg["data_dir"], sample=cfg["sample"], device=cfg["device"])
    return training.checkpoint_paths(src)[1]


def per_eps(label, module, values):
    """[(label, settings)] of one task per eps and per AutoAttack component: small tasks
    balance over workers, and each gives exactly the result it gives inside a sweep (seeded per
    call)."""
    eps = values.get("eps") or DEFAULT_EPS[module.__name__ + ("-noise" if values.get("noise")
                                                              else "")]
    attacks = values.get("attacks") or [None]
    return [(f"{label}{' ' + a if a else ''} eps {e:g}",
             {**values, "eps": [e], **({"attacks": [a]} if a else {})})
            for a in attacks for e in eps]


def train_configs(preset, archs, seeds, device, data_dir, sample, ckpt_dir):
    """Every training run of a preset, as make_config builds it."""
    return [make_config(arch, method, seed=seed, epochs=preset["epochs"],
                        max_train_samples=preset["max_train_samples"], device=device,
                        data_dir=data_dir, sample=sample, out_dir=ckpt_dir, **extra)
            for seed in seeds for arch in archs for method, extra in preset["models"]]


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("preset", choices=sorted(PRESETS), help="quick (the demo) or paper")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (one GPU per worker)")
    p.add_argument("--data-dir", default=preprocess.DATA_DIR, help="the data cache's folder")
    p.add_argument("--results-dir", default=None, help="default: results (quick), results/paper")
    p.add_argument("--archs", nargs="+", choices=["mlp", "cnn"], default=["mlp", "cnn"],
                   help="architectures")
    p.add_argument("--seeds", type=arg_number(int, 0), nargs="+", default=[0],
                   help="training seeds (the attack seed stays fixed)")
    p.add_argument("--methods", nargs="+", choices=sorted({m for m, _ in PAPER_MODELS}),
                   default=None, help="only these methods of the preset (adv: every adv eps); "
                                      "e.g. the CNN's ce nsr on a CPU")
    p.add_argument("--runs", nargs="+", default=None, metavar="NAME",
                   help="only these models, by run name (e.g. cnn_jacob_s0 cnn_ce_s1; the "
                        "names a dry run lists), picked from what --archs/--seeds/--methods "
                        "select: one queue for models that share no seed or method")
    p.add_argument("--phases", nargs="+", choices=["train", "attack", "evaluate"],
                   default=["train", "attack", "evaluate"], help="which phases to run")
    p.add_argument("--attacks", nargs="+", choices=ATTACK_KINDS, default=ATTACK_KINDS,
                   help="which attack runs (e.g. pgd noise checks first: the main tables, "
                        "cheap; the tasks of a phase go dearest first)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and estimate only")
    p.add_argument("--gpu-op-us", type=arg_number(float, 0, lo_open=True), default=GPU_OP_US,
                   help="the GPU estimate's assumed overhead per aten op, microseconds")
    p.add_argument("--gpu-tflops", type=arg_number(float, 0, lo_open=True), default=GPU_TFLOPS,
                   help="the GPU estimate's assumed float32 throughput, TFLOP/s")
    add_override_args(p)
    return p


def add_override_args(p, training=True):
    """Flags that override the preset's budgets (the tests use tiny values); default: the
    preset's. benchmark.py takes the attack ones (training=False)."""
    positive = arg_number(int, 1)
    train = [("--epochs", "epochs"), ("--max-train-samples", "samples per epoch")] if training else []
    for flag, what in (*train, ("--pgd-steps", "paper PGD steps"),
                       ("--pgd-samples", "beats for PGD, noise and AutoAttack"),
                       ("--spsa-steps", "SPSA iterations"), ("--spsa-dirs", "SPSA directions"),
                       ("--spsa-per-class", "SPSA beats per class"),
                       ("--aa-samples", "beats for AutoAttack and Square"),
                       ("--aa-steps", "APGD/FAB iterations (and the transfer attack's APGD-T)"),
                       ("--square-queries", "Square queries"),
                       ("--sap-steps", "SAP's steps, its initialisation's and strong SAP's per target")):
        p.add_argument(flag, type=positive, default=None, help=what)


OVERRIDES = {"epochs": (None, "epochs"), "max_train_samples": (None, "max_train_samples"),
             "pgd_steps": ("pgd", "steps"), "pgd_samples": ("pgd", "max_samples"),
             "spsa_steps": ("spsa", "steps"), "spsa_dirs": ("spsa", "n_dirs"),
             "spsa_per_class": ("spsa", "per_class"),
             "aa_steps": ("autoattack", "steps"), "square_queries": ("square", "n_queries")}


def suite_name(args, preset=None):
    """The attack suite a run's results record: the preset's name, '+overrides' when a flag
    changed one of its budgets."""
    changed = any(getattr(args, k, None) is not None
                  for k in list(OVERRIDES) + ["pgd_samples", "aa_samples", "sap_steps"])
    return (preset or args.preset) + ("+overrides" if changed else "")


def preset_from_args(args, preset=None):
    """The preset (default: PRESETS[args.preset]) with the command line's overrides applied."""
    preset = json.loads(json.dumps(preset or PRESETS[args.preset]))
    if getattr(args, "methods", None):
        preset["models"] = [m for m in preset["models"] if m[0] in args.methods]
    for key, (section, field) in OVERRIDES.items():
        v = getattr(args, key, None)
        if v is not None:
            (preset if section is None else preset[section])[field] = v
    if args.pgd_samples is not None:
        preset["noise"]["max_samples"] = args.pgd_samples
        preset["autoattack"]["max_samples"] = args.pgd_samples
        preset["square"]["max_samples"] = min(args.pgd_samples, 25)
    if args.aa_samples is not None:
        preset["autoattack"]["max_samples"] = preset["square"]["max_samples"] = args.aa_samples
    if args.aa_steps is not None and preset.get("transfer"):
        preset["transfer"]["steps"] = args.aa_steps
    if getattr(args, "sap_steps", None) is not None and preset.get("sap"):
        preset["sap"].update(steps=args.sap_steps, init_steps=args.sap_steps,
                             strong_steps=args.sap_steps)
    return preset


def check_args(p, args):
    """Refuse what would silently plan the wrong thing (argparse's exit 2, naming the flag)."""
    for flag, values in (("--seeds", args.seeds), ("--archs", args.archs),
                         ("--methods", args.methods or []), ("--runs", args.runs or []),
                         ("--phases", args.phases),
                         ("--attacks", args.attacks)):
        dup = sorted({str(v) for v in values if values.count(v) > 1})
        if dup:
            p.error(f"{flag} names {', '.join(dup)} more than once")
    if args.methods:
        known = {m for m, _ in PRESETS[args.preset]["models"]}
        missing = [m for m in args.methods if m not in known]
        if missing:
            p.error(f"--methods {' '.join(missing)}: not in the {args.preset} preset (it trains "
                    f"{', '.join(sorted(known))})")
    if args.runs:
        names = [c["name"] for c in train_configs(preset_from_args(args), args.archs, args.seeds,
                                                   "cpu", args.data_dir, False, "checkpoints")]
        unknown = [r for r in args.runs if r not in names]
        if unknown:
            p.error(f"--runs {' '.join(unknown)}: not among the models --archs/--seeds/--methods "
                    f"select ({', '.join(names)})")


def dry_run_cache(data_dir, sample):
    """The split sizes a dry run plans with, read without writing anything: the cache as it is,
    else the committed sample's arrays, else the Kaggle CSVs."""
    path = preprocess.cache_path(data_dir, sample)
    if os.path.exists(path):
        return preprocess.load_cache(data_dir, sample)
    if sample:
        train, test = preprocess.read_sample()
    else:
        train = preprocess.read_beats_csv(os.path.join(data_dir, preprocess.TRAIN_CSV))
        test = preprocess.read_beats_csv(os.path.join(data_dir, preprocess.TEST_CSV))
    (_, y_train), (_, y_val) = preprocess.split_train_val(*train)
    return {"Y_train": torch.as_tensor(y_train), "Y_val": torch.as_tensor(y_val),
            "Y_test": torch.as_tensor(test[1])}


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    check_args(p, args)
    preset = preset_from_args(args)
    results = args.results_dir or preset["results"]
    t_start = time.perf_counter()
    tune_malloc()
    if not args.dry_run:                 # --dry-run prints a GPU plan on any machine
        try:
            get_device(args.device)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    workers = Workers()
    device = workers.device(args.device)
    folders = [] if args.dry_run else [os.path.join(results, "checkpoints"),
                                       os.path.join(results, "attacks")]
    busy = hold_run_folders(workers, folders)     # one writer per results folder
    if busy:
        print(f"error: {busy}", file=sys.stderr)
        workers.close()
        return 2
    try:
        return run_preset(args, preset, results, workers, device, t_start)
    finally:
        for f in folders:
            release_folder(f)


def prepare_data(args, workers):
    """(sample, data flags, cache) of the preset's data, built by rank 0 first (not on a dry
    run); None when the paper preset finds no full data (named on stderr)."""
    kaggle = all(os.path.exists(os.path.join(args.data_dir, f))
                 for f in (preprocess.TRAIN_CSV, preprocess.TEST_CSV))
    sample = args.preset == "quick" and not kaggle
    # the paper preset also runs from the full cache alone (copied to a GPU box without the CSVs)
    cache_only = (args.preset == "paper" and not kaggle
                  and os.path.exists(preprocess.cache_path(args.data_dir)))
    if args.preset == "paper" and not kaggle and not cache_only:
        print(f"error: the paper preset needs the full data: put the Kaggle CSVs in "
              f"{args.data_dir}/ or run 'python preprocess.py --wfdb DIR' first", file=sys.stderr)
        return None
    if sample and workers.rank == 0:
        print(f"No Kaggle CSVs in {args.data_dir}/: using the committed real sample "
              f"({os.path.relpath(preprocess.SAMPLE_NPZ)}, beats rebuilt from MIT-BIH records).")
    data_flags = ["--data-dir", args.data_dir] + (["--sample"] if sample else [])
    if cache_only:
        if workers.rank == 0:
            print(f"No Kaggle CSVs in {args.data_dir}/: using the cache "
                  f"{preprocess.cache_path(args.data_dir)} as it is (data digest "
                  f"{preprocess.data_sha256(args.data_dir)[:12]}).")
    elif not args.dry_run:               # a dry run writes and rebuilds nothing
        workers.rank0_first(lambda: step("data", preprocess.main, data_flags))
    cache = dry_run_cache(args.data_dir, sample) if args.dry_run else \
        preprocess.load_cache(args.data_dir, sample)
    return sample, data_flags, cache


def train_queue(cfgs, per_epoch):
    """One training task per unfinished run, seed by seed, longest first within a seed."""
    tasks = []
    for cfg in sorted(cfgs, key=lambda c: (c["seed"], -train_estimate_s(c, per_epoch))):
        if finished(cfg):
            print(f"=== train {cfg['name']}: done, skipped")
            continue
        script = TRAINERS[cfg["method"]]
        resume = os.path.exists(training.checkpoint_paths(cfg)[0])
        tasks.append(Task(f"train {cfg['name']}", script.run, dict(cfg, resume=resume),
                          train_estimate_s(cfg, per_epoch)))
    return tasks


def attack_queue(args, preset, cfgs, results, device, data):
    """(tasks, the runs each task needs trained): one per (model, attack, eps), dearest first.
    A transfer attack also needs its source model; one whose source this command neither
    trains nor finds trained is left out, named."""
    tasks, needs = [], {}
    by_best = {training.checkpoint_paths(c)[1]: c for c in cfgs}
    training_here = "train" in args.phases
    for cfg in cfgs:
        if not training_here and not finished(cfg):
            # e.g. attacking seed 0 while another command still trains it: a later run does it
            print(f"=== attacks on {cfg['name']}: its training has not finished, skipped")
            continue
        target = {"checkpoint": training.checkpoint_paths(cfg)[1], "device": device,
                  "out_dir": os.path.join(results, "attacks"), **data,
                  "suite": suite_name(args)}
        for task in attack_tasks(preset, cfg, target, args.attacks):
            need = [cfg]
            src = getattr(task.args, "source", None)
            if src:
                if src in by_best and (training_here or finished(by_best[src])):
                    need.append(by_best[src])
                elif not os.path.exists(src):
                    print(f"=== {task[0]}: its source {src} is not trained, skipped")
                    continue
            tasks.append(task)
            needs[task[0]] = need
    return sorted(tasks, key=lambda t: -t.cost), needs


def run_preset(args, preset, results, workers, device, t_start):
    """reproduce.py's work once its results folders are held: data, the task queue, report."""
    data = prepare_data(args, workers)
    if data is None:
        return 2
    sample, data_flags, cache = data
    n_train = 5 * int(np.bincount(cache["Y_train"].numpy()).max())   # one balanced epoch
    per_epoch = min(preset["max_train_samples"] or n_train, n_train)
    cfgs = train_configs(preset, args.archs, args.seeds, device, args.data_dir, sample,
                         os.path.join(results, "checkpoints"))
    if args.runs:
        cfgs = [c for c in cfgs if c["name"] in args.runs]
    if workers.rank == 0:
        print_plan(preset, args, cfgs, workers, per_epoch, len(cache["Y_val"]),
                   len(cache["Y_test"]), device, results)
    if args.dry_run:
        workers.close()
        return 0
    trains = train_queue(cfgs, per_epoch)
    attacks, needs = attack_queue(args, preset, cfgs, results, device,
                                  {"data_dir": args.data_dir, "sample": sample})
    # one queue: under torchrun a worker done training attacks the models trained so far
    # while the others still train (no barrier between the phases); an attack waits for its model
    queue = ((trains if "train" in args.phases else [])
             + (attacks if "attack" in args.phases else []))
    workers.run("train+attack", queue,
                ready=lambda t: all(finished(c) for c in needs.get(t[0], [])))
    if "evaluate" in args.phases and workers.rank == 0:
        # the preset's own folder also writes its RESULTS.md (the paper's, at the root)
        md = preset.get("results_md") if not args.results_dir else None
        step("evaluate", evaluate.main, ["--results-dir", results]
             + (["--results-md", md] if md else []))
        print(f"\nreport: {os.path.join(results, 'report.md')} "
              f"(total {(time.perf_counter() - t_start) / 60:.1f} min)")
    workers.close()
    return 0


if __name__ == "__main__":
    run_cli(main)
