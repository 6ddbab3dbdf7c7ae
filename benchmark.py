"""Benchmark your own ECG heartbeat model under the evaluation behind results/paper, ranked beside the paper's methods.

    python benchmark.py --model my_model.py:build --weights my_weights.pt --name mynet
    python benchmark.py --torchscript mynet.pt --name mynet
    python benchmark.py --checkpoint results/paper/checkpoints/mlp_ce_s0_best.pt --quick
    python benchmark.py --model my_model.py:build --name mynet --dry-run     # plan and time only

The model: `build()` returns a torch.nn.Module that maps (N, 187) float beats in [0, 1] (125 Hz,
the Kaggle/MIT-BIH format of preprocess.py) to (N, 5) logits in the AAMI class order N, S, V, F,
Q; --weights is a state dict loaded into it (or a dict holding one under 'state_dict'/'model').
A TorchScript file or a checkpoint of this project works the same way.

Before any attack the model is checked (METHOD.md 8): output shape and class count, finite
outputs, an input gradient (white-box attacks need one) and an unchanged input are required
(else exit 2 naming what is wrong); outputs that look like probabilities, outputs that change
between two calls in eval mode (a randomised defence: these attacks are not EOT attacks) or with
the batch a beat is in are WARNINGs, as AutoAttack's checks are.

Then the paper preset's attack suite (protocol.PRESETS["paper"], with the MLP rows' beats):
clean balanced accuracy on the whole test split; the paper's PGD-100 on the whole split at every
eps; APGD-CE, APGD-T, FAB-T (100 steps) and Square (5,000 queries) on the 961 balanced beats the
committed MLP rows were attacked on; SPSA on 810 beats; the sanity-check runs and white noise;
each result one JSON in results/benchmark/NAME/attacks/ in the format of every attack here (its
provenance: the model files' and data's sha256), skipped when up to date, so a rerun resumes.
--quick: the same attacks on 50 beats per class, the AutoAttack ensemble and Square (1,000
queries) at eps 0.01-0.1 only, SPSA at eps 0.03 and 0.1 with 256 directions (minutes for a small
model on a CPU). The expected time is printed before it starts.

Last, the leaderboard: the model's per-beat worst case over every attack (analysis.worst_case)
and its paper-PGD row beside the committed rows of results/paper (mean over training seeds),
sorted by worst-case balanced accuracy at eps 0.03: leaderboard.md, .csv and .png in the same
folder, and benchmark.json with the model's row and provenance.
"""
import argparse
import json
import os
import re
import sys
import time

import numpy as np
import torch

import reproduce
from attack_common import predict
from models import ModelLoadError, N_CLASSES, N_SAMPLES, load_checkpoint, load_user_model
from utils import (atomic_write, files_sha256, get_device, release_folder, run_cli, run_info,
                   sha256_file)
from preprocess import (DATA_DIR, DataError, balanced_subset, canonical_data_sha256,
                        classification_metrics, data_sha256, load_cache)
from workers import Workers, hold_run_folders

OUT_DIR = "results/benchmark"
COMPARE_DIR = "results/paper"      # the committed rows the leaderboard puts the model beside
RANK_EPS = 0.03                    # the leaderboard's sort key: worst-case balanced acc here
BUDGET_ARCH = "mlp"                # the preset's per-arch values taken: the MLP rows' (961 beats)
# --quick: the paper's attacks and budgets on fewer beats; SPSA lighter
QUICK = {"pgd": {"max_samples": 250}, "pgd_check": {"max_samples": 250},
         "autoattack": {"max_samples": 250, "eps": [0.01, 0.03, 0.05, 0.1]},
         "square": {"max_samples": 250, "n_queries": 1000, "eps": [0.01, 0.03, 0.05, 0.1]},
         "noise": {"max_samples": 250},
         "spsa": {"per_class": 10, "n_dirs": 256, "eps": [0.03, 0.1], "shards": 1}}
TRANSFER_SOURCE = os.path.join(COMPARE_DIR, "checkpoints", f"{BUDGET_ARCH}_ce_s0_best.pt")
CHECK_BATCH = 64                   # beats the model checks run on
PROB_TOL = 1e-4                    # rows of non-negative outputs summing to 1 within this
RAND_TOL = 1e-5                    # two calls in eval mode may differ by this (relative)
CALIBRATE_STEPS = 3                # iterations of each attack timed for the estimate


# ----------------------------------------------------------------------------- the model
class ModelCheckError(Exception):
    pass


def check_model(model, x):
    """AutoAttack-style checks on real beats x (N, 187): raise ModelCheckError for what makes
    the evaluation meaningless, return the WARNING lines for what makes it doubtful."""
    x0, xc, xg = x.clone(), x.clone(), x.clone().requires_grad_(True)
    try:
        with torch.no_grad():
            model(xc)
        if not torch.equal(xc, x0):
            raise ModelCheckError("the model changes its input in place: attacks would be "
                                  "evaluated on other beats than they crafted")
        out = model(xg)
    except ModelCheckError:
        raise
    except Exception as e:
        raise ModelCheckError(f"the model fails on a ({len(x)}, {N_SAMPLES}) batch of beats: "
                              f"{type(e).__name__}: {e}") from None
    if not isinstance(out, torch.Tensor):
        raise ModelCheckError(f"the model returns {type(out).__name__}, not a tensor of logits")
    if tuple(out.shape) != (len(x), N_CLASSES):
        raise ModelCheckError(f"the model returns shape {tuple(out.shape)} for {len(x)} beats: "
                              f"expected ({len(x)}, {N_CLASSES}) logits in the class order "
                              "N, S, V, F, Q")
    if not torch.isfinite(out).all():
        raise ModelCheckError(f"the model returns non-finite outputs for "
                              f"{int((~torch.isfinite(out)).any(1).sum())} of {len(x)} beats")
    if not out.requires_grad:
        raise ModelCheckError("the output has no gradient w.r.t. the input (torch.no_grad, "
                              "numpy or a detach inside forward): the white-box attacks need one")
    (g,) = torch.autograd.grad(out.sum(), xg, allow_unused=True)
    if g is None:
        raise ModelCheckError("the output does not depend on the input through autograd: the "
                              "white-box attacks need an input gradient")
    warnings = []
    if not torch.isfinite(g).all():
        warnings.append("the input gradient has non-finite entries: gradient attacks may fail")
    elif (g == 0).all():
        warnings.append("the input gradient is zero on every beat: gradient attacks cannot "
                        "move (gradient masking; the black-box attacks still count)")
    out = out.detach()
    if (out >= 0).all() and torch.allclose(out.sum(1), torch.ones(len(x)), atol=PROB_TOL):
        warnings.append("the outputs look like probabilities (non-negative, rows sum to 1): "
                        "return the logits before softmax; cross-entropy attacks on "
                        "probabilities stall and overstate robustness")
    with torch.no_grad():
        again = model(x.clone())
        alone = torch.cat([model(x[i:i + 1].clone()) for i in range(min(8, len(x)))])
    scale = out.abs().max().clamp_min(1e-12)
    if (again - out).abs().max() > RAND_TOL * scale:
        warnings.append(f"two calls in eval mode give different outputs (max difference "
                        f"{float((again - out).abs().max()):.3g}): a randomised defence? These "
                        "attacks use no expectation over transformations (EOT; AutoAttack's "
                        "version='rand'), so its robustness may be overstated")
    elif (alone - out[:len(alone)]).abs().max() > RAND_TOL * scale + 1e-5:
        warnings.append("a beat's output depends on the batch it is in (batch statistics in "
                        "eval mode?): attacks batch beats differently from the clean pass")
    return warnings


def open_model(args, device):
    """(model, provenance) of --model/--torchscript/--checkpoint; ModelLoadError names the
    file and what is wrong."""
    if args.checkpoint:
        try:
            model, ckpt = load_checkpoint(args.checkpoint, device)
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            raise ModelLoadError(str(e)) from None
        files = {os.path.abspath(args.checkpoint): sha256_file(args.checkpoint)}
        trained_on = (ckpt.get("data") or {}).get("sha256")
        return model, {"files": files, "sha256": files_sha256(files),
                       "data_trained_on": trained_on and canonical_data_sha256(trained_on)}
    model, files = load_user_model(args.model, args.weights, args.torchscript, device)
    return model, {"files": files, "sha256": files_sha256(files)}


def default_name(args):
    if args.checkpoint:
        stem = os.path.splitext(os.path.basename(args.checkpoint))[0]
        return re.sub(r"_best$", "", stem)
    path = args.torchscript or args.model.rpartition(":")[0]
    return os.path.splitext(os.path.basename(path))[0]


# ----------------------------------------------------------------------------- the plan
def suite(args):
    """The attack settings: the paper preset (or --quick's), then the command line's overrides."""
    preset = json.loads(json.dumps(reproduce.PRESETS["paper"]))
    if args.quick:
        for section, values in QUICK.items():
            preset[section].update(values)
    for part in ("spsa", "autoattack", "square", "sap", "transfer"):
        preset[part]["seeds"] = "all"          # the benchmarked model is one "seed"
    # transfer: beats crafted on the committed CE model of the rows' arch, seed 0
    preset["transfer"]["source_checkpoint"] = TRANSFER_SOURCE
    if not os.path.exists(TRANSFER_SOURCE):
        print(f"note: no transfer attack: its source {TRANSFER_SOURCE} is not on disk")
        del preset["transfer"]
    if args.quick:
        for part in ("sap", "transfer"):
            if part in preset:
                preset[part]["eps"] = QUICK["autoattack"]["eps"]
    return reproduce.preset_from_args(args, preset)


def target_settings(args, name, device, out_dir):
    """The settings naming the model, device, data and result folder of every attack task."""
    model = ({"checkpoint": args.checkpoint} if args.checkpoint else
             {"torchscript": args.torchscript} if args.torchscript else
             {"model": args.model, "weights": args.weights})
    if not args.checkpoint:
        model["name"] = name
    suite = reproduce.suite_name(args, "benchmark-" + ("quick" if args.quick else "paper"))
    return {**model, "device": str(device), "out_dir": out_dir, "data_dir": args.data_dir,
            "sample": args.sample, "suite": suite}


def beats(y, max_samples):
    return len(y) if not max_samples else len(balanced_subset(y, max_samples // 5))


def estimate_s(model, x, y, preset, kinds, steps=CALIBRATE_STEPS):
    """Seconds per attack kind, upper bounds: each attack is run for a few iterations on the
    beats it will attack (PGD on up to 512 of them, SPSA on 5) and timed, then scaled to its
    full budget as if no beat were fooled early (fooled beats stop early)."""
    import attack_autoattack
    import attack_pgd
    import attack_spsa
    pa = lambda v: reproduce.per_arch(v, BUDGET_ARCH)
    y_np = y.cpu().numpy()
    on = lambda m: [t[torch.as_tensor(balanced_subset(y_np, m // 5) if m else np.arange(len(y)),
                                      device=x.device)] for t in (x, y)]

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    pgd, chk, sp = preset["pgd"], preset["pgd_check"], preset["spsa"]
    aa, sq = preset["autoattack"], preset["square"]
    n_eps = len(reproduce.DEFAULT_EPS["attack_pgd"])
    aa_eps, sq_eps = len(pa(aa.get("eps")) or reproduce.DEFAULT_EPS["attack_autoattack"]), \
        len(pa(sq["eps"]) or reproduce.DEFAULT_EPS["attack_autoattack"])
    s = {}
    xp, yp = on(pgd["max_samples"])
    n_chk = len(on(chk.get("max_samples", pgd["max_samples"]))[1])
    per_beat_step = timed(lambda: attack_pgd.pgd_batch(model, xp[:512], yp[:512], 0.03, steps,
                                                       0.01, early_stop=False)) / steps / len(yp[:512])
    if "pgd" in kinds:
        s["pgd"] = per_beat_step * len(yp) * pgd["steps"] * n_eps
    if "checks" in kinds:
        chk_steps = (pgd["steps"] if n_chk != len(yp) else 0) + chk["steps"] * (2 + chk["sign_restarts"])
        s["checks"] = per_beat_step * n_chk * (2 * chk_steps + chk["steps"])
    if "noise" in kinds:
        s["noise"] = timed(lambda: predict(model, xp)) * len(reproduce.DEFAULT_EPS["attack_pgd-noise"])
    if "autoattack" in kinds:
        xa, ya = on(pa(aa["max_samples"]))
        s["autoattack"] = sum(timed(lambda a=a: attack_autoattack.autoattack(
            model, xa, ya, a, 0.03, steps=steps)) / steps for a in aa["attacks"]) \
            * aa["steps"] * aa_eps
    if "square" in kinds:
        xq, yq = on(pa(sq["max_samples"]))
        s["square"] = timed(lambda: attack_autoattack.autoattack(
            model, xq, yq, "square", 0.03, n_queries=5 * steps)) / (5 * steps) \
            * sq["n_queries"] * sq_eps
    n_aa = len(on(pa(aa["max_samples"]))[1])
    n_eps_of = lambda part, script: len(pa(part["eps"]) or reproduce.DEFAULT_EPS[script])
    sap, tr = preset.get("sap"), preset.get("transfer")
    if "sap" in kinds and sap:       # a step through the smoothing costs about a PGD step
        s["sap"] = per_beat_step * n_aa * n_eps_of(sap, "attack_sap") * sum(
            sap["init_steps"] + sap["steps"] + 4 * sap["strong_steps"] * (v == "strong")
            for v in sap["variants"])
    if "transfer" in kinds and tr:   # APGD-T on the source: 4 targets of PGD-like steps
        s["transfer"] = per_beat_step * n_aa * 4 * tr["steps"] * n_eps_of(tr, "attack_transfer")
    if "spsa" in kinds:
        xs, ys = on(5)
        n_spsa = len(balanced_subset(y_np, pa(sp["per_class"])))
        s["spsa"] = timed(lambda: attack_spsa.spsa_attack(model, xs, ys, 0.03, 1, sp["n_dirs"])) \
            / len(ys) * n_spsa * sp["steps"] * len(pa(sp["eps"]))
    return s


def hms(s):
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


# ----------------------------------------------------------------------------- the leaderboard
def model_rows(records):
    """Per model: {"worst": {eps: bacc}, "pgd": {eps: bacc}, "clean", "n", arch, method, seed}."""
    import analysis
    rows = {}
    for kind, recs in (("worst", analysis.worst_case(records)),
                       ("pgd", [r for r in records if analysis.table_kind(r) == "pgd"])):
        for r in recs:
            row = rows.setdefault(r["model"], {"arch": r["arch"], "cfg": r["model_config"],
                                               "worst": {}, "pgd": {}})
            cell = row[kind].get(r["eps"])
            if cell is None or len(r["labels"]) > cell[1]:
                row[kind][r["eps"]] = (r["adversarial"]["balanced_accuracy"], len(r["labels"]),
                                       r["clean"]["balanced_accuracy"], list(r["indices"]))
    return rows


def leaderboard(user_records, committed_records, name, clean_whole):
    """A DataFrame: the model's row and one row per committed method (mean over seeds)."""
    import pandas as pd
    import analysis
    eps_list = reproduce.DEFAULT_EPS["attack_pgd"]
    table = []

    def add(label, arch, rows, seeds):
        rec = {"model": label, "arch": arch, "seeds": len(seeds)}
        worst0 = [r["worst"].get(RANK_EPS) for r in rows if r["worst"].get(RANK_EPS)]
        rec["n"] = worst0[0][1] if worst0 else 0
        rec["clean"] = np.mean([r["worst"][RANK_EPS][2] for r in rows if RANK_EPS in r["worst"]]) \
            if worst0 else np.nan
        for kind in ("worst", "pgd"):
            for e in eps_list:
                vals = [r[kind][e][0] for r in rows if e in r[kind]]
                rec[f"{kind}_{e:g}"] = float(np.mean(vals)) if len(vals) == len(rows) else np.nan
        table.append(rec)
    user = model_rows(user_records)
    if name in user:
        add(f"**{name}** (yours)", "yours", [user[name]], [0])
        table[-1]["clean_whole_split"] = clean_whole
    committed = model_rows(committed_records)
    groups = {}
    for model, row in committed.items():
        groups.setdefault((row["arch"], analysis.group_of(model)), []).append(row)
    for (arch, group), rows in groups.items():
        label = analysis.row_key(rows[0]["cfg"], arch)[1]
        add(label, arch, rows, rows)
    df = pd.DataFrame(table)
    mlp_beats = [r["worst"][RANK_EPS][3] for r in committed.values()
                 if r["arch"] == "mlp" and RANK_EPS in r["worst"]]
    df.attrs["same_beats"] = bool(name in user and RANK_EPS in user[name]["worst"] and mlp_beats
                                  and user[name]["worst"][RANK_EPS][3] == mlp_beats[0])
    return df.sort_values(f"worst_{RANK_EPS:g}", ascending=False, na_position="last",
                          kind="stable").reset_index(drop=True)


def leaderboard_markdown(df, eps_show=(0.01, 0.03, 0.05, 0.1)):
    import pandas as pd
    fmt = lambda v: "-" if v is None or pd.isna(v) else f"{v:.3f}"
    head = ["#", "model", "arch", "seeds", "n (worst)", "clean"] \
        + [f"worst {e:g}" for e in eps_show] + [f"PGD {e:g}" for e in eps_show]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    for i, r in df.iterrows():
        lines.append("| " + " | ".join([str(i + 1), r["model"], r["arch"], str(r["seeds"]),
                                        str(r["n"]), fmt(r["clean"])]
                                       + [fmt(r.get(f"worst_{e:g}")) for e in eps_show]
                                       + [fmt(r.get(f"pgd_{e:g}")) for e in eps_show]) + " |")
    return "\n".join(lines) + "\n"


def plot_leaderboard(df, path, name):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    eps_list = reproduce.DEFAULT_EPS["attack_pgd"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for _, r in df.iterrows():
        ys = [r.get(f"worst_{e:g}", np.nan) for e in eps_list]
        mine = r["arch"] == "yours"
        ax.plot(eps_list, ys, marker="o" if mine else ".", lw=2.5 if mine else 0.8,
                color="crimson" if mine else ("tab:blue" if r["arch"] == "mlp" else "tab:gray"),
                alpha=1 if mine else 0.6, label=name if mine else None, zorder=3 if mine else 1)
    ax.plot([], [], color="tab:blue", lw=0.8, label="results/paper MLP methods")
    ax.plot([], [], color="tab:gray", lw=0.8, label="results/paper CNN methods")
    ax.set_xscale("log")
    ax.set_xlabel("eps (L-inf, inputs in [0, 1])")
    ax.set_ylabel("worst-case balanced accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("Worst case over every attack: your model vs the paper's methods")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda t: fig.savefig(t, format="png", dpi=120))
    plt.close(fig)


# ----------------------------------------------------------------------------- main
def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[1:6]))
    src = p.add_argument_group("the model (one of)")
    src.add_argument("--model", metavar="FILE.py:FUNCTION",
                     help="FUNCTION() returns a torch.nn.Module: (N, 187) beats -> (N, 5) logits")
    src.add_argument("--weights", metavar="FILE", help="with --model: a state dict to load")
    src.add_argument("--torchscript", metavar="FILE", help="a torch.jit.save'd model")
    src.add_argument("--checkpoint", metavar="FILE", help="a checkpoint of this project")
    p.add_argument("--name", help="the row's name and folder (default: the file's stem)")
    p.add_argument("--quick", action="store_true",
                   help="50 beats per class, Square and SPSA lighter: minutes on a CPU for a "
                        "small model")
    p.add_argument("--attacks", nargs="+", choices=reproduce.ATTACK_KINDS,
                   default=reproduce.ATTACK_KINDS,
                   help="attack kinds to run (default: all; the worst case is over those run)")
    p.add_argument("--dry-run", action="store_true", help="check the model, print the plan, stop")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--data-dir", default=DATA_DIR, help="where preprocess.py put the cache")
    p.add_argument("--sample", action="store_true",
                   help="the committed real sample's test beats (tests; not comparable)")
    p.add_argument("--out-dir", default=OUT_DIR,
                   help="results go to OUT_DIR/NAME/ (--quick: OUT_DIR/NAME/quick/)")
    p.add_argument("--compare-dir", default=COMPARE_DIR,
                   help="the results folder whose rows the leaderboard shows")
    reproduce.add_override_args(p, training=False)
    return p


def main(argv=None):
    return run(get_args_parser().parse_args(argv))


def flag_error(args):
    """Why the model flags do not name one model (or the name is unusable), or None."""
    if sum(bool(v) for v in (args.model, args.torchscript, args.checkpoint)) != 1:
        return ("give exactly one of --model FILE.py:FUNCTION, --torchscript FILE and "
                "--checkpoint FILE")
    if args.weights and not args.model:
        return "--weights goes with --model"
    name = args.name or default_name(args)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        return f"--name {name!r}: use letters, digits, '_', '.' and '-' only"
    return None


def announce(args, name, model, prov, digest, warnings, x_test, y_test, preset, out, workers):
    """Rank 0: the model's warnings, its clean accuracy and the expected time. Returns the
    clean metrics."""
    for w in warnings:
        print(f"WARNING: {name}: {w}")
    if prov.get("data_trained_on") and prov["data_trained_on"] != digest:
        print(f"WARNING: {args.checkpoint} was trained on other data (digest "
              f"{prov['data_trained_on'][:12]}) than {args.data_dir} holds ({digest[:12]})")
    y_np = y_test.cpu().numpy()
    clean = classification_metrics(y_np, predict(model, x_test).cpu().numpy())
    print(f"\n{name}: clean balanced accuracy {clean['balanced_accuracy']:.4f} on the whole "
          f"test split ({len(y_np)} beats). Timing a few iterations of each attack...",
          flush=True)
    est = estimate_s(model, x_test, y_test, preset, args.attacks)
    print(f"Plan ({'--quick' if args.quick else 'the paper preset'}, on {workers.world} "
          f"worker(s)); expected at most, one worker: "
          + ", ".join(f"{k} {hms(v)}" for k, v in est.items())
          + f"; total {hms(sum(est.values()))}. Results under {out}/.")
    return clean


def run(args):
    why = flag_error(args)
    if why:
        return fail(why)
    name = args.name or default_name(args)
    workers = Workers()
    try:
        device = get_device(workers.device(args.device))
        cache = load_cache(args.data_dir, args.sample)
        model, prov = open_model(args, device)
    except (ValueError, DataError, ModelLoadError, FileNotFoundError) as e:
        return fail(str(e))
    x_test, y_test = cache["X_test"].to(device), cache["Y_test"].to(device)
    y_np = cache["Y_test"].numpy()
    out = os.path.join(args.out_dir, name, *(["quick"] if args.quick else []))
    attack_dir = os.path.join(out, "attacks")
    digest = data_sha256(args.data_dir, args.sample)
    preset = suite(args)

    probe = x_test[torch.as_tensor(balanced_subset(y_np, CHECK_BATCH // 5))]
    try:
        warnings = check_model(model, probe)         # every worker: all stop on an error
    except ModelCheckError as e:
        workers.close()
        return fail(f"{name}: {e}")
    if workers.rank == 0:
        clean = announce(args, name, model, prov, digest, warnings, x_test, y_test, preset, out,
                         workers)
    if args.dry_run:
        workers.close()
        return 0

    busy = hold_run_folders(workers, [attack_dir])
    if busy:
        workers.close()
        return fail(busy)
    cfg = {"arch": BUDGET_ARCH, "seed": 0, "name": name}
    tasks = reproduce.attack_tasks(preset, cfg, target_settings(args, name, device, attack_dir),
                                   args.attacks)
    t0 = time.perf_counter()
    try:
        workers.run("benchmark", sorted(tasks, key=lambda t: -t.cost))
    finally:
        release_folder(attack_dir)
    workers.close()
    if workers.rank != 0:
        return 0
    return report(args, name, out, attack_dir, prov, digest, clean, preset,
                  time.perf_counter() - t0)


def report(args, name, out, attack_dir, prov, digest, clean, preset, wall):
    from records import load_results
    mine, _ = load_results(attack_dir)
    # this model's results: its files' sha256 and the data (a --checkpoint's results carry the
    # checkpoint's own run name; the row takes --name)
    mine = [dict(r, model=name) for r in mine if r["checkpoint_sha256"] == prov["sha256"]
            and canonical_data_sha256(r["data_sha256"]) == digest]
    theirs, _ = load_results(os.path.join(args.compare_dir, "attacks")) \
        if os.path.isdir(os.path.join(args.compare_dir, "attacks")) else ([], [])
    same_data = lambda r: canonical_data_sha256(r["data_sha256"]) == digest
    other_data = sorted({r["data_sha256"][:12] for r in theirs if not same_data(r)})
    if other_data:
        print(f"WARNING: {sum(not same_data(r) for r in theirs)} results of {args.compare_dir} "
              f"were made on other data (digest {', '.join(other_data)}; yours {digest[:12]}): "
              "they are left out, not comparable")
        theirs = [r for r in theirs if same_data(r)]
    df = leaderboard(mine, theirs, name, clean["balanced_accuracy"])
    table = leaderboard_markdown(df)
    same = "the same" if df.attrs.get("same_beats") else "other"
    text = (f"# Leaderboard: {name}\n\n"
            f"Balanced accuracy. worst = per-beat worst case over every attack run "
            f"({', '.join(args.attacks)}; a beat fooled at a smaller eps counts as fooled), on "
            f"{same} balanced beats as the committed MLP rows (n); PGD = the paper's PGD-100. "
            f"Committed rows: {args.compare_dir}, mean over training seeds. Sorted by worst "
            f"case at eps {RANK_EPS:g}. Your clean balanced accuracy on the whole test split: "
            f"{clean['balanced_accuracy']:.3f}. {'--quick: 250 beats, Square and SPSA lighter. ' if args.quick else ''}"
            f"Model files: " + ", ".join(f"{os.path.basename(f)} {s[:12]}"
                                          for f, s in prov["files"].items())
            + f"; data digest {digest[:12]}.\n\n" + table)
    print("\n" + text)
    write_text(os.path.join(out, "leaderboard.md"), text)
    atomic_write(os.path.join(out, "leaderboard.csv"),
                 lambda t: df.to_csv(t, index=False, float_format="%.4f"))
    plot_leaderboard(df, os.path.join(out, "leaderboard.png"), name)
    row = df[df["arch"] == "yours"].to_dict("records")
    summary = {"name": name, "model_files": prov["files"], "model_sha256": prov["sha256"],
               "data_sha256": digest, "clean_whole_split": clean, "quick": args.quick,
               "attacks": args.attacks, "suite": preset, "row": row[0] if row else None,
               "results": len(mine), "wall_s": wall, **run_info(args.device)}
    write_text(os.path.join(out, "benchmark.json"), json.dumps(summary, indent=1, default=str))
    print(f"wrote {out}/leaderboard.md, leaderboard.csv, leaderboard.png, benchmark.json "
          f"({hms(wall)} of attacks)")
    return 0


def write_text(path, text):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, write)


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    run_cli(main)
