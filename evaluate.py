"""Turn attack results into the paper's tables and curves, a report, and the reviewer's checks.

    python evaluate.py                         # reads results/attacks/*.json
    python evaluate.py --results-dir results/paper

Reads every result JSON that attack_pgd.py / attack_spsa.py wrote (a corrupt or foreign file is
named and skipped) and the training histories in checkpoints/, then writes under the results dir:
  tables/{pgd,spsa,noise,worst}_{mlp,cnn}.md and .csv  rows = methods in the paper's order,
        columns = clean and each eps, cells = balanced accuracy (the CSV has plain accuracy too);
        a missing run is "-", never 0. "worst" is the per-sample worst case over every PGD variant,
        restart and SPSA run of a model at an eps, on the beats of its largest run.
  figures/{pgd,spsa,noise,worst}_{arch}.png  accuracy-vs-eps curves, one line per method;
  figures/per_class_{arch}.png               per-class sensitivity, NSR vs CE, under PGD;
  report.md   the tables, figures, the settings behind every number and SPEC 7's checks 1-8,
              each PASS, FAIL (with the offending numbers; also a WARNING line on stdout) or
              "not run".
"""
import argparse
import glob
import json
import os
import sys
from collections import defaultdict

import matplotlib
import numpy as np
import pandas as pd
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from models import CLASS_NAMES, atomic_write, git_commit  # noqa: E402
from preprocess import classification_metrics  # noqa: E402
from train_baseline import JACOB_BETA  # noqa: E402
from train_nsr import ALIGN_BETA, NSR_BETA  # noqa: E402

RESULTS_DIR = "results"
ARCHS = ("mlp", "cnn")
METHOD_ORDER = ["ce", "mse", "mse_margin", "jacob", "adv", "align", "nsr"]
METHOD_LABEL = {"ce": "CE", "mse": "MSE", "mse_margin": "MSE+margin", "jacob": "Jacobian",
                "adv": "adv", "align": "method 1 (align)", "nsr": "method 2 (NSR)"}
DEFAULT_BETA = {**{("nsr", a): b for a, b in NSR_BETA.items()},
                **{("align", a): b for a, b in ALIGN_BETA.items()},
                **{("jacob", a): JACOB_BETA for a in ARCHS}}
REQUIRED = ("model", "arch", "attack", "eps", "settings", "clean", "adversarial", "indices",
            "labels", "clean_pred", "adv_pred", "max_linf", "in_range")
ONE_SAMPLE = 1.0      # tolerance of checks 1-4: one sample in the count
SATURATED = 0.98      # check 4 skips an eps where PGD fooled this share of the attacked beats


# ----------------------------------------------------------------------------- reading
def load_results(attack_dir):
    """Every valid result JSON; a corrupt or foreign one is named and skipped."""
    records, skipped = [], []
    for path in sorted(glob.glob(os.path.join(attack_dir, "*.json"))):
        try:
            with open(path) as f:
                r = json.load(f)
            if not isinstance(r, dict) or r.get("kind") != "nsr-ecg-attack-result":
                raise ValueError("not an attack result of this project")
            missing = [k for k in REQUIRED if k not in r]
            if missing:
                raise ValueError(f"missing fields {missing}")
            if not (len(r["indices"]) == len(r["labels"]) == len(r["adv_pred"])
                    == len(r["clean_pred"])):
                raise ValueError("indices, labels, clean_pred and adv_pred differ in length")
        except (OSError, ValueError) as e:       # JSONDecodeError is a ValueError
            print(f"WARNING: skipped {path}: {e}")
            skipped.append(path)
            continue
        r["path"] = path
        records.append(r)
    return records, skipped


def load_histories(ckpt_dir):
    rows = []
    for path in sorted(glob.glob(os.path.join(ckpt_dir, "*.pt"))):
        if path.endswith("_best.pt"):
            continue
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
            h = ck["history"]
        except Exception as e:
            print(f"WARNING: skipped checkpoint {path}: {e}")
            continue
        if not h:
            continue
        best = max(h, key=lambda r: r["val_balanced_accuracy"])
        rows.append({"model": ck["config"].get("name", os.path.basename(path)),
                     "arch": ck["arch"], "config": ck["config"], "epochs": len(h),
                     "best_epoch": best["epoch"] + 1, "best_val_bacc": best["val_balanced_accuracy"],
                     "last_val_bacc": h[-1]["val_balanced_accuracy"],
                     "samples_per_epoch": h[-1].get("samples"),
                     "train_s": sum(r.get("seconds", 0) for r in h)})
    return rows


# ----------------------------------------------------------------------------- naming
def row_key(cfg, arch):
    """(order, label) of a model's row: the paper's order, its parameter where it has one."""
    method = cfg.get("method", "?")
    order = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    label = METHOD_LABEL.get(method, method)
    if method == "adv":
        return (order, cfg.get("adv_eps", 0)), f"adv {cfg.get('adv_eps', 0):g}"
    beta = cfg.get("beta")
    if beta is not None and beta != DEFAULT_BETA.get((method, arch)):
        label += f" (beta {beta:g})"
    return (order, beta or 0), label


def run_settings(r):
    """The settings of a run but eps and those that only change speed."""
    return {k: v for k, v in r["settings"].items() if k not in ("eps", "batch_size", "chunk_rows")}


def series_key(r):
    """Records that differ only in eps form one curve."""
    return (r["model"], r["attack"], json.dumps(run_settings(r), sort_keys=True), len(r["labels"]))


def table_kind(r):
    s = r["settings"]
    if r["attack"] == "pgd-paper" and s.get("loss") == "ce" and s.get("restarts") == 1:
        return "pgd"
    if r["attack"] == "spsa":
        return "spsa"
    if r["attack"] == "noise":
        return "noise"
    return None


def pick(records):
    """Of several runs for one cell, the one on most beats, then with most steps."""
    return max(records, key=lambda r: (len(r["labels"]), r["settings"].get("steps", 0),
                                       r["settings"].get("n_dirs", 0)))


def acc_count(r):
    return sum(int(p == y) for p, y in zip(r["adv_pred"], r["labels"]))


# ----------------------------------------------------------------------------- worst case
def worst_case(records):
    """Per (model, eps), on the beats of its largest PGD/SPSA run: a beat counts as fooled if
    any PGD or SPSA run that attacked it fooled it (its prediction is then that run's).
    Returns pseudo-records shaped like the attack results."""
    groups = defaultdict(list)
    for r in records:
        if r["attack"] != "noise":
            groups[(r["model"], r["eps"])].append(r)
    out = []
    for (model, eps), rs in groups.items():
        base = pick(rs)
        pred = dict(zip(base["indices"], base["adv_pred"]))
        label = dict(zip(base["indices"], base["labels"]))
        for r in rs:
            for i, p in zip(r["indices"], r["adv_pred"]):
                if i in pred and pred[i] == label[i] and p != label[i]:
                    pred[i] = p
        y, p = base["labels"], [pred[i] for i in base["indices"]]
        out.append({"model": model, "arch": base["arch"], "model_config": base["model_config"],
                    "attack": "worst", "eps": eps, "settings": {"eps": eps},
                    "sources": [os.path.basename(r["path"]) for r in rs],
                    "indices": base["indices"], "labels": y, "adv_pred": p,
                    "adversarial": classification_metrics(y, p), "clean": base["clean"]})
    return out


# ----------------------------------------------------------------------------- tables
def build_table(records, arch, kind):
    """DataFrame: one row per model, columns clean + eps (balanced accuracy and accuracy)."""
    cells = defaultdict(list)
    for r in records:
        if r["arch"] == arch and (r["attack"] == "worst" if kind == "worst" else table_kind(r) == kind):
            cells[(r["model"], r["eps"])].append(r)
    if not cells:
        return None, {}
    chosen = {k: pick(v) for k, v in cells.items()}
    by_model = defaultdict(dict)
    for (m, e), r in chosen.items():
        by_model[m][e] = r
    first_of = {m: pick(list(rs.values())) for m, rs in by_model.items()}
    models = sorted(by_model, key=lambda m: row_key(first_of[m]["model_config"], arch)[0])
    eps_list = sorted({e for _, e in chosen if not (kind == "noise" and e == 0)})
    rows = []
    for m in models:
        rs, first = by_model[m], first_of[m]
        row = {"method": row_key(first["model_config"], arch)[1], "model": m,
               "clean_bacc": first["clean"]["balanced_accuracy"], "clean_acc": first["clean"]["accuracy"],
               "n": len(first["labels"])}
        for e in eps_list:
            r = rs.get(e)
            row[f"bacc_{e:g}"] = r["adversarial"]["balanced_accuracy"] if r else np.nan
            row[f"acc_{e:g}"] = r["adversarial"]["accuracy"] if r else np.nan
        rows.append(row)
    return pd.DataFrame(rows), chosen


def table_markdown(df, title):
    eps_cols = [c for c in df.columns if c.startswith("bacc_")]
    fmt = lambda v: "-" if pd.isna(v) else f"{v:.3f}"
    head = ["method", "n", "clean"] + [f"eps {c[5:]}" for c in eps_cols]
    lines = [f"**{title}** (balanced accuracy)", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join([r["method"], str(r["n"]), fmt(r["clean_bacc"])]
                                       + [fmt(r[c]) for c in eps_cols]) + " |")
    return "\n".join(lines) + "\n"


def write_table(df, out_base, title):
    atomic_write(out_base + ".csv", lambda t: df.to_csv(t, index=False, na_rep="-",
                                                         float_format="%.4f"), ".csv")
    md = table_markdown(df, title)
    atomic_write(out_base + ".md", lambda t: open(t, "w").write(md), ".md")
    return md


# ----------------------------------------------------------------------------- figures
def plot_curves(df, path, title, xlabel="eps (L-inf, inputs in [0, 1])"):
    # the eps = 1 sanity run stays in the table; the curve shows the paper's range
    eps_cols = [c for c in df.columns if c.startswith("bacc_") and float(c[5:]) <= 0.5]
    xs = [0.0] + [float(c[5:]) for c in eps_cols]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for _, r in df.iterrows():
        ys = [r["clean_bacc"]] + [r[c] for c in eps_cols]
        style = dict(lw=2.6, color="black") if r["method"].startswith("method 2") else dict(lw=1.4)
        ax.plot(xs, ys, marker="o", ms=3.5, label=r["method"], **style)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("balanced accuracy (mean per-class sensitivity)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    atomic_write(path, lambda t: fig.savefig(t, format="png"), ".png")
    plt.close(fig)


def plot_per_class(chosen, arch, path):
    """Per-class sensitivity under PGD at one eps, CE vs NSR (clean shown hatched)."""
    by_method = defaultdict(dict)
    for (m, e), r in chosen.items():
        by_method[r["model_config"].get("method")][e] = r
    if "ce" not in by_method or "nsr" not in by_method:
        return None
    common = sorted(set(by_method["ce"]) & set(by_method["nsr"]))
    if not common:
        return None
    eps = min(common, key=lambda e: abs(e - 0.05))
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    w = 0.2
    x = np.arange(len(CLASS_NAMES))
    for k, (method, color) in enumerate((("ce", "tab:blue"), ("nsr", "tab:red"))):
        r = by_method[method][eps]
        ax.bar(x + (2 * k - 1.5) * w, r["clean"]["sensitivity"], w, color=color, alpha=0.35,
               hatch="//", label=f"{METHOD_LABEL[method]} clean")
        ax.bar(x + (2 * k - 0.5) * w, r["adversarial"]["sensitivity"], w, color=color,
               label=f"{METHOD_LABEL[method]} PGD eps {eps:g}")
    ax.set_xticks(x, [f"{c}" for c in CLASS_NAMES])
    ax.set_xlabel("AAMI class")
    ax.set_ylabel("sensitivity (recall)")
    ax.set_ylim(0, 1.35)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_title(f"{arch.upper()}: per-class sensitivity, CE vs NSR")
    ax.legend(fontsize=8, ncol=2, loc="upper center")
    fig.tight_layout()
    atomic_write(path, lambda t: fig.savefig(t, format="png"), ".png")
    plt.close(fig)
    return eps


# ----------------------------------------------------------------------------- checks
def check_monotone_eps(records):
    series = defaultdict(list)
    for r in records:
        if r["attack"] != "noise":
            series[series_key(r)].append(r)
    bad, n_series = [], 0
    for key, rs in series.items():
        rs = sorted(rs, key=lambda r: r["eps"])
        if len(rs) < 2:
            continue
        n_series += 1
        for a, b in zip(rs, rs[1:]):
            if a["indices"] == b["indices"] and acc_count(b) > acc_count(a) + ONE_SAMPLE:
                bad.append(f"{key[0]} {key[1]}: accuracy {acc_count(a)}/{len(a['labels'])} at "
                           f"eps {a['eps']:g} but {acc_count(b)}/{len(b['labels'])} at eps {b['eps']:g}")
    return _verdict(n_series, bad, f"{n_series} accuracy-vs-eps curves are non-increasing")


def check_more_effort(records):
    groups = defaultdict(list)
    for r in records:
        if r["attack"].startswith("pgd"):
            s = r["settings"]
            groups[(r["model"], r["attack"], s.get("loss"), r["eps"], tuple(r["indices"]))].append(r)
    bad, pairs = [], 0
    for key, rs in groups.items():
        for a in rs:
            for b in rs:
                sa, sb = a["settings"], b["settings"]
                if a is b or not (sb["steps"] >= sa["steps"] and sb["restarts"] >= sa["restarts"]
                                  and (sb["steps"], sb["restarts"]) != (sa["steps"], sa["restarts"])):
                    continue
                pairs += 1
                if acc_count(b) > acc_count(a) + ONE_SAMPLE:
                    bad.append(f"{key[0]} {key[1]} eps {key[3]:g}: {acc_count(a)} correct with "
                               f"{sa['steps']} steps x {sa['restarts']} restarts, {acc_count(b)} "
                               f"with {sb['steps']} x {sb['restarts']}")
    return _verdict(pairs, bad, f"{pairs} pairs (more steps or restarts) never raise accuracy")


def per_sample(r):
    return {i: int(p == y) for i, y, p in zip(r["indices"], r["labels"], r["adv_pred"])}


def check_spsa_vs_pgd(records):
    by = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r["attack"] != "noise":
            by[(r["model"], r["eps"])]["spsa" if r["attack"] == "spsa" else "pgd"].append(r)
    bad, n = [], 0
    for (model, eps), d in by.items():
        if not d["spsa"] or not d["pgd"]:
            continue
        for s in d["spsa"]:
            sp = per_sample(s)
            pg = {}
            for r in d["pgd"]:
                for i, c in per_sample(r).items():
                    pg[i] = min(pg.get(i, 1), c)
            common = [i for i in sp if i in pg]
            if not common:
                continue
            n += 1
            a_s, a_p = sum(sp[i] for i in common), sum(pg[i] for i in common)
            if a_s < a_p - ONE_SAMPLE:
                bad.append(f"{model} eps {eps:g}: SPSA leaves {a_s}/{len(common)} correct, "
                           f"white-box PGD {a_p}/{len(common)} (suspect gradient masking)")
    return _verdict(n, bad, f"SPSA never beats PGD ({n} model/eps pairs on common beats)")


def check_noise_vs_pgd(records):
    by = defaultdict(dict)
    for r in records:
        k = table_kind(r)
        if k in ("noise", "pgd") and r["eps"] > 0:
            prev = by[(r["model"], r["eps"])].get(k)
            by[(r["model"], r["eps"])][k] = pick([r, prev]) if prev else r
    bad, n, saturated = [], 0, []
    for (model, eps), d in by.items():
        if "noise" not in d or "pgd" not in d:
            continue
        nz, pg = per_sample(d["noise"]), per_sample(d["pgd"])
        common = [i for i in nz if i in pg]
        if not common:
            continue
        n += 1
        clean = {i: int(c == y) for i, y, c in zip(d["pgd"]["indices"], d["pgd"]["labels"],
                                                    d["pgd"]["clean_pred"])}
        drop_noise = sum(clean[i] - nz[i] for i in common)
        drop_pgd = sum(clean[i] - pg[i] for i in common)
        attacked = sum(clean[i] for i in common)
        if attacked and drop_pgd >= SATURATED * attacked:
            saturated.append(f"{model} eps {eps:g}")   # PGD fooled ~all: nothing to compare
            continue
        # "far less": noise costs at most half of what PGD costs (a sample of slack)
        if drop_noise > 0.5 * drop_pgd + ONE_SAMPLE:
            bad.append(f"{model} eps {eps:g}: white noise fools {drop_noise}, PGD {drop_pgd} "
                       f"of {len(common)} beats")
    note = (f"; not compared where PGD fooled >= {SATURATED:.0%} of the attacked beats: "
            + ", ".join(saturated)) if saturated else ""
    status, detail = _verdict(n - len(saturated), bad,
                              f"white noise costs far less than PGD ({n - len(saturated)} "
                              "model/eps pairs)")
    return status, detail + note


def check_eps_one(records):
    rs = [r for r in records if r["attack"].startswith("pgd") and r["eps"] >= 1.0]
    bad = [f"{r['model']} {r['attack']} eps {r['eps']:g}: accuracy "
           f"{r['adversarial']['accuracy']:.3f}" for r in rs if r["adversarial"]["accuracy"] > 0.05]
    return _verdict(len(rs), bad, f"PGD at eps >= 1 leaves <= 5% accuracy ({len(rs)} runs)")


def check_budget(records):
    bad = [f"{os.path.basename(r['path'])}: max |x_adv - x| = {r['max_linf']:.6g} for eps "
           f"{r['eps']:g}, in [0,1]: {r['in_range']}" for r in records
           if r["max_linf"] > r["eps"] + 1e-6 or not r["in_range"]]
    return _verdict(len(records), bad, f"all {len(records)} runs within eps + 1e-6 and [0, 1]")


def check_worst_case(worst):
    multi = [w for w in worst if len(w["sources"]) > 1]
    if not multi:
        return "not run", "no model has two or more attacks at the same eps"
    return "PASS", (f"worst case over attacks and restarts reported per beat for {len(multi)} "
                    "model/eps pairs (tables worst_*)")


def check_zero_grad(records):
    per_model = {}      # per model: (fraction, beats, count) of its worst run
    for r in records:
        z, n = r.get("zero_grad_samples"), len(r["labels"])
        if z is not None and n:
            per_model[r["model"]] = max(per_model.get(r["model"], (0.0, 0, 0)), (z / n, n, z))
    if not per_model:
        return "not run", "no run recorded zero-gradient counts"
    bad = [f"{m}: {z}/{n} beats with an all-zero input gradient" for m, (f, n, z) in
           sorted(per_model.items()) if f > 0.01]
    counts = ", ".join(f"{m} {z}/{n}" for m, (f, n, z) in sorted(per_model.items()))
    return ("FAIL", "; ".join(bad) + f" (all: {counts})") if bad else ("PASS", counts)


def _verdict(n, bad, ok_text):
    if n == 0:
        return "not run", "no results to compare"
    if bad:
        return "FAIL", "; ".join(bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
    return "PASS", ok_text


def sanity_checks(records, worst):
    return [
        ("1. accuracy never rises with eps", check_monotone_eps(records)),
        ("2. more iterations or restarts never raise accuracy", check_more_effort(records)),
        ("3. black-box SPSA does not beat white-box PGD", check_spsa_vs_pgd(records)),
        ("4. white noise does far less damage than PGD", check_noise_vs_pgd(records)),
        ("5. PGD at eps = 1.0 drives accuracy to ~0", check_eps_one(records)),
        ("6. every x_adv within eps and [0, 1]", check_budget(records)),
        ("7. per-sample worst case over attacks and restarts", check_worst_case(worst)),
        ("8. beats with an all-zero input gradient", check_zero_grad(records)),
    ]


# ----------------------------------------------------------------------------- report
def settings_lines(records):
    groups = defaultdict(set)
    for r in records:
        desc = (f"`{r['attack']}` " + ", ".join(f"{k} {v}" for k, v in sorted(run_settings(r).items()))
                + f"; {len(r['labels'])} test beats; device {r.get('device', '?')}; torch "
                f"{r.get('torch', '?')}; commit {str(r.get('git_commit', '?'))[:10]}")
        groups[desc].add(r["model"])
    return [f"- {d}: {', '.join(sorted(m))}" for d, m in sorted(groups.items())]


def evaluate(results_dir=RESULTS_DIR):
    records, skipped = load_results(os.path.join(results_dir, "attacks"))
    histories = load_histories(os.path.join(results_dir, "checkpoints"))
    worst = worst_case(records)
    tables_dir, fig_dir = os.path.join(results_dir, "tables"), os.path.join(results_dir, "figures")
    os.makedirs(tables_dir, exist_ok=True)
    os.makedirs(fig_dir, exist_ok=True)
    report = ["# NSR robustness: evaluation report", "",
              f"From {len(records)} attack results under `{results_dir}/attacks` "
              f"({len(skipped)} skipped) and {len(histories)} training runs; evaluate.py at "
              f"commit {git_commit()[:10]}.", "",
              "Headline metric: balanced accuracy = mean per-class sensitivity (the paper's "
              "accuracy on its class-balanced test set). Clean-misclassified beats are not "
              "attacked and count with their clean prediction.", ""]
    if skipped:
        report += ["Skipped (corrupt or foreign): " + ", ".join(f"`{p}`" for p in skipped), ""]
    if histories:
        report += ["## Training", "", "| model | epochs | samples/epoch | best val bal. acc (epoch) "
                   "| last val bal. acc | train time (s) |", "|---|---:|---:|---:|---:|---:|"]
        for h in sorted(histories, key=lambda h: (h["arch"], row_key(h["config"], h["arch"])[0])):
            report.append(f"| {h['model']} | {h['epochs']} | {h['samples_per_epoch']} | "
                          f"{h['best_val_bacc']:.3f} ({h['best_epoch']}) | {h['last_val_bacc']:.3f}"
                          f" | {h['train_s']:.0f} |")
        report.append("")
    titles = {"pgd": "White-box PGD (paper's variant)", "spsa": "Black-box SPSA",
              "noise": "Uniform white noise", "worst": "Worst case over all PGD/SPSA runs"}
    for kind in ("pgd", "spsa", "noise", "worst"):
        report += [f"## {titles[kind]}", ""]
        for arch in ARCHS:
            df, chosen = build_table(records + worst, arch, kind)
            if df is None:
                report += [f"{arch.upper()}: not run.", ""]
                continue
            md = write_table(df, os.path.join(tables_dir, f"{kind}_{arch}"),
                             f"{titles[kind]}, {arch.upper()}")
            fig = f"{kind}_{arch}.png"
            plot_curves(df, os.path.join(fig_dir, fig), f"{titles[kind]}: {arch.upper()}")
            report += [md, f"![{kind} {arch}](figures/{fig})", ""]
            if kind == "pgd":
                eps = plot_per_class(chosen, arch, os.path.join(fig_dir, f"per_class_{arch}.png"))
                if eps is not None:
                    report += [f"Per-class sensitivity, CE vs NSR, PGD eps {eps:g}:", "",
                               f"![per class {arch}](figures/per_class_{arch}.png)", ""]
    report += ["## Sanity checks (SPEC 7; Carlini et al. 2019, Croce & Hein 2020)", ""]
    for name, (status, detail) in sanity_checks(records, worst):
        report.append(f"- **{status}** {name}: {detail}")
        if status == "FAIL":
            print(f"WARNING: sanity check {name} FAILED: {detail}")
    report += ["", "## Settings behind the numbers", ""] + settings_lines(records) + [""]
    path = os.path.join(results_dir, "report.md")
    atomic_write(path, lambda t: open(t, "w").write("\n".join(report)), ".md")
    return path, records, worst


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results-dir", default=RESULTS_DIR)
    args = p.parse_args(argv)
    if not os.path.isdir(os.path.join(args.results_dir, "attacks")):
        print(f"error: no attack results in {args.results_dir}/attacks: run attack_pgd.py or "
              "attack_spsa.py first", file=sys.stderr)
        return 2
    path, records, _ = evaluate(args.results_dir)
    print(f"wrote {path} ({len(records)} results)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
