"""Turn attack results into the paper's tables and curves, a report, and the reviewer's checks.
Reading is records.py's, the analysis analysis.py's, the checks checks.py's; this script writes.

    python evaluate.py                         # reads results/attacks/*.json
    python evaluate.py --results-dir results/paper

Reads every result JSON the attack scripts wrote (a corrupt or foreign file is named and
skipped) and the training histories in checkpoints/, then writes under the results dir:
  tables/{worst,pgd,autoattack,smooth,sap,transfer,spsa,noise}_{mlp,cnn}.md, .csv: rows =
        methods in the paper's order, columns = clean and each eps, cells = balanced accuracy
        (the CSV has plain accuracy too), and the sha256 prefix of the checkpoint behind the
        row; a missing run is "-", never 0. "worst" is the per-beat worst case over every
        attack of a model at an eps or a smaller one (paper PGD, sign PGD and restarts, SPSA,
        AutoAttack, SAP, transfer), on the beats of
        its largest run narrowed to those AutoAttack attacked (where it ran at that eps);
        "autoattack" the same over the four AutoAttack components only, at that eps alone;
        "smooth" the worst case over SAP and strong SAP alone (the smooth threat model).
  tables/attack_view_{arch}.md, .csv   every attack alone at eps 0.03 and 0.1 on the worst
        case's beats, and which beat the paper's PGD (the masking indicators);
  figures/{kind}_{arch}.png      accuracy-vs-eps curves, one line per method;
  figures/per_class_{arch}.png   per-class sensitivity, NSR vs CE, under PGD;
  figures/example_beats.png      a beat of each class, clean vs adversarial, CE vs NSR CNN (the
                                 beats the paper's PGD results stored);
  figures/surface.png            the loss surface of CE and NSR (surface.py's files);
  report.md   the tables, figures, the settings behind every number and METHOD.md 7's checks 1-9,
              each PASS, FAIL (with the offending numbers; also a WARNING line on stdout) or
              "not run".
"""
import argparse
import os
import re
import sys
from collections import defaultdict

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from analysis import (METHOD_LABEL, SMOOTH, VIEW, aggregate, attack_view,  # noqa: E402
                      build_table, headline, paired_differences, pick, row_key, run_settings,
                      surface_summary, table_kind, worst_case)
from attack_autoattack import ATTACKS as AUTOATTACKS  # noqa: E402
from checks import sanity_checks  # noqa: E402
from models import CLASS_NAMES  # noqa: E402
from preprocess import canonical_data_sha256, data_digest, read_cache  # noqa: E402
from protocol import ARCHS, PRESETS, per_arch  # noqa: E402
from records import load_histories, load_results, load_surfaces, vouch  # noqa: E402
from utils import HelpFormatter, atomic_write, git_commit, run_cli  # noqa: E402

RESULTS_DIR = "results"
EXAMPLE_EPS = 0.03     # the clean-vs-adversarial beat figure
HEADLINE_EPS = (0.03, 0.1)  # the headline table: paper PGD next to the worst case at these eps
HEADLINE_OTHERS = 2    # ... for CE, NSR and this many best other methods (worst case, 1st eps)
VIEW_EPS = (0.03, 0.1)  # "how each attack sees each model" at these eps
OPTIONAL_KINDS = ("smooth", "sap", "transfer")   # tables left out where no result has them


def table_markdown(agg, title):
    eps_cols = [c for c in agg.columns if c.startswith("bacc_") and not c.endswith(("_std", "_min", "_max"))]

    def fmt(r, c):
        v, s = r[c], r.get(c + "_std", np.nan)
        if pd.isna(v):
            return "-"
        return f"{v:.3f} ± {s:.3f}" if r["seeds"] > 1 and not pd.isna(s) else f"{v:.3f}"
    many = (agg["seeds"] > 1).any()
    head = ["method", "n"] + (["seeds"] if many else []) + ["clean"] \
        + [f"eps {c[5:]}" for c in eps_cols] + ["checkpoint"]
    lines = [f"**{title}** (balanced accuracy" + (", mean ± std over training seeds" if many else "")
             + ")", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * 2 + "---:|" * (len(head) - 3) + "---|"]
    for _, r in agg.iterrows():
        lines.append("| " + " | ".join([r["method"], str(r["n"])]
                                       + ([str(r["seeds"])] if many else [])
                                       + [fmt(r, "clean_bacc")] + [fmt(r, c) for c in eps_cols]
                                       + [f"`{r['checkpoint']}`"]) + " |")
    other = defaultdict(list)
    for _, r in agg.iterrows():
        if r["n_other"]:
            other[r["n_other"]].append(r["method"])
    if other:
        lines += [""] + ["Cells on other beats than the row's n (eps: n): " + "; ".join(
            f"{o} ({', '.join(ms)})" for o, ms in other.items()) + "."]
    off = defaultdict(list)
    for _, r in agg.iterrows():
        if r.get("other_settings"):
            off[r["other_settings"]].append(r["method"])
    if off:
        lines += [""] + ["Runs with other settings than the row's, left out of it (see the "
                         "sanity checks): " + "; ".join(f"{o} ({', '.join(ms)})"
                                                        for o, ms in off.items()) + "."]
    return "\n".join(lines) + "\n"


def write_csv(df, path):
    atomic_write(path, lambda t: df.to_csv(t, index=False, na_rep="-", float_format="%.4f"))


def write_table(df, out_base, title):
    """{out_base}.csv: one row per method (means over seeds, std, min, max);
    {out_base}_per_seed.csv: every seed's values; {out_base}.md: the table."""
    agg = aggregate(df)
    write_csv(agg, out_base + ".csv")
    write_csv(df.drop(columns=["order"]), out_base + "_per_seed.csv")
    md = table_markdown(agg, title)
    atomic_write(out_base + ".md", lambda t: open(t, "w").write(md))
    return md, agg


def diff_markdown(diff, title):
    cols = ["clean_bacc"] + [c for c in diff.columns if c.startswith("bacc_")
                             and not c.endswith(("_lo", "_hi", "_n"))]

    def cell(r, c):
        if pd.isna(r[c]):
            return "-"
        if pd.isna(r[c + "_lo"]):
            return f"{r[c]:+.3f} (n={int(r[c + '_n'])}, no interval)"
        mark = " *" if r[c + "_lo"] > 0 or r[c + "_hi"] < 0 else ""
        return f"{r[c]:+.3f} [{r[c + '_lo']:+.3f}, {r[c + '_hi']:+.3f}]{mark}"
    head = ["method", "seeds"] + ["clean" if c == "clean_bacc" else f"eps {c[5:]}" for c in cols]
    lines = [f"**{title}** (balanced accuracy, method minus CE, paired by training seed; "
             "[95% t-interval over seeds]; * = the interval excludes 0)", "",
             "| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * len(cols)]
    for _, r in diff.iterrows():
        lines.append("| " + " | ".join([r["method"], str(r["seeds"])] + [cell(r, c) for c in cols])
                     + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- headline


def headline_markdown(head, eps_list=HEADLINE_EPS):
    """The headline as a markdown table; a cell is the mean over the row's seeds."""
    cols = [f"{k}_{e:g}" for e in eps_list for k in ("pgd", "worst")]
    names = {f"pgd_{e:g}": f"paper PGD {e:g}" for e in eps_list}
    names.update({f"worst_{e:g}": f"**worst case {e:g}**" for e in eps_list})
    lines = ["| arch | method | seeds | clean | " + " | ".join(names[c] for c in cols) + " |",
             "|---|---|---:|---:|" + "---:|" * len(cols)]
    for _, r in head.iterrows():
        cells = ["-" if pd.isna(r[c]) else f"{r[c]:.3f}" for c in ["clean"] + cols]
        lines.append(f"| {r['arch'].upper()} | {r['method']} | {r['seeds']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_headline(aggs, head, path):
    """One panel per arch: the headline's methods, worst case (solid) against the paper's PGD
    (dashed), balanced accuracy against eps. Returns why it was not drawn, or None."""
    archs = [a for a in aggs if a in set(head["arch"])] if len(head) else []
    if not archs:
        return "no model has both the paper's PGD and a worst case"
    fig, axes = plt.subplots(1, len(archs), figsize=(6.0 * len(archs), 4.2), dpi=110,
                             squeeze=False)
    for ax, arch in zip(axes[0], archs):
        models = list(head[head["arch"] == arch]["model"])
        for i, model in enumerate(models):
            color = "black" if model.split("_")[1] == "nsr" else f"C{i}"
            for kind, style in (("worst", "-"), ("pgd", "--")):
                agg = aggs[arch].get(kind)
                if agg is None or model not in set(agg["model"]):
                    continue                # e.g. AutoAttack done, the paper's PGD still to run
                r = agg.set_index("model").loc[model]
                cols = ["clean_bacc"] + [c for c in agg.columns if c.startswith("bacc_")
                                         and c.count("_") == 1 and float(c[5:]) <= 0.3
                                         and not pd.isna(r[c])]
                xs = [0.0] + [float(c[5:]) for c in cols[1:]]
                ax.plot(xs, [r[c] for c in cols], style, marker="o", ms=3, color=color,
                        lw=2.2 if color == "black" else 1.3,
                        label=f"{r['method']}, {'worst case' if kind == 'worst' else 'paper PGD'}")
        ax.set_title(f"{arch.upper()}: worst case over every attack (solid) vs the paper's PGD "
                     "(dashed)", fontsize=9)
        ax.set_xlabel("eps (L-inf, beats in [0, 1])")
        ax.set_ylabel("balanced accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    atomic_write(path, lambda t: fig.savefig(t, format="png"))
    plt.close(fig)
    return None


def relink(lines, prefix):
    """Markdown links relative to the report's folder, made relative to another file's."""
    if prefix in ("", "."):
        return lines
    return [re.sub(r"\]\((figures|tables)/", lambda m: f"]({prefix}/{m.group(1)}/", line)
            for line in lines]


# ----------------------------------------------------------------------------- figures
def plot_curves(agg, path, title, xlabel="eps (L-inf, inputs in [0, 1])"):
    """Mean over seeds per method; a shaded band from the min to the max seed."""
    # the eps = 1 sanity run stays in the table; the curve shows the paper's range
    eps_cols = [c for c in agg.columns if c.startswith("bacc_") and c.count("_") == 1
                and float(c[5:]) <= 0.5]
    xs = [0.0] + [float(c[5:]) for c in eps_cols]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for _, r in agg.iterrows():
        cols = ["clean_bacc"] + eps_cols
        ys = [r[c] for c in cols]
        style = dict(lw=2.6, color="black") if r["method"].startswith("method 2") else dict(lw=1.4)
        label = r["method"] + (f" ({r['seeds']} seeds)" if r["seeds"] > 1 else "")
        (line,) = ax.plot(xs, ys, marker="o", ms=3.5, label=label, **style)
        if r["seeds"] > 1:
            ax.fill_between(xs, [r[c + "_min"] for c in cols], [r[c + "_max"] for c in cols],
                            color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("balanced accuracy (mean per-class sensitivity)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    atomic_write(path, lambda t: fig.savefig(t, format="png"))
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
    atomic_write(path, lambda t: fig.savefig(t, format="png"))
    plt.close(fig)
    return eps


def plot_example_beats(records, path, eps=EXAMPLE_EPS):
    """One real test beat of each class, clean and adversarial, for the CE and NSR CNN (seed 0)
    under the paper's PGD at `eps`: the adversarial beats each result stored (attack_common.
    examples), with that result's prediction on them; nothing is attacked here. Returns None,
    or why the figure was not drawn."""
    runs = {}
    for r in records:
        m = r["model_config"].get("method")
        if (table_kind(r) == "pgd" and r["arch"] == "cnn" and r["eps"] == eps and r.get("examples")
                and m in ("ce", "nsr") and r["model_config"].get("seed", 0) == 0):
            runs[m] = pick([r, runs[m]]) if m in runs else r
    if set(runs) != {"ce", "nsr"}:
        return (f"needs paper-PGD results at eps {eps:g} for the CE and the NSR CNN that store "
                "their adversarial beats (results written since 2026-12-03)")
    cache_file = (runs["ce"].get("data") or {}).get("cache")
    if not cache_file or not os.path.exists(cache_file):
        return f"data cache {cache_file} not found"
    cache = read_cache(cache_file)
    if data_digest(cache) != canonical_data_sha256(runs["ce"]["data_sha256"]):
        return f"data cache {cache_file} holds other data than the results were made from"
    adv = {m: {e["index"]: np.asarray(e["x_adv"]) for e in r["examples"]} for m, r in runs.items()}
    pred = {m: dict(zip(r["indices"], r["adv_pred"])) for m, r in runs.items()}
    clean = {m: dict(zip(r["indices"], r["clean_pred"])) for m, r in runs.items()}
    picks = sorted(set(adv["ce"]) & set(adv["nsr"]), key=lambda i: int(cache["Y_test"][i]))
    fig, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks), 3.0), dpi=110, sharey=True)
    axes = np.atleast_1d(axes)
    t = np.arange(cache["X_test"].shape[1]) / 125.0
    for i, ax in zip(picks, axes):
        name = CLASS_NAMES[int(cache["Y_test"][i])]
        ax.plot(t, cache["X_test"][i].numpy(), color="black", lw=1.6, label=f"clean ({name})")
        for m, color in (("ce", "tab:blue"), ("nsr", "tab:red")):
            wrong = " (clean: wrong)" if clean[m][i] != int(cache["Y_test"][i]) else ""
            ax.plot(t, adv[m][i], color=color, lw=0.9, alpha=0.85,
                    label=f"{METHOD_LABEL[m].split(' (')[0]} adv -> {CLASS_NAMES[pred[m][i]]}{wrong}")
        ax.set_title(f"class {name} (test beat {i})", fontsize=9)
        ax.set_xlabel("s")
        ax.legend(fontsize=7, loc="upper right")
    axes[0].set_ylabel("amplitude (scaled to [0, 1])")
    fig.suptitle(f"Paper's PGD-{runs['ce']['settings']['steps']} at eps {eps:g}: CE vs NSR CNN, "
                 "the beats its results stored (arrow: the model's prediction on them)",
                 fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return None


# ----------------------------------------------------------------------------- report
def subset_lines(records):
    """Beats per arch and attack beside what the paper's protocol asks (protocol.PRESETS
    ["paper"]): a run on fewer beats (the CNN's SPSA and AutoAttack subsets, shrunk to fit a
    CPU) is named as smaller. Within 10% counts as the protocol (class F has 161 test beats)."""
    paper = PRESETS["paper"]
    asked = {"spsa": lambda a: 5 * per_arch(paper["spsa"]["per_class"], a),
             "autoattack": lambda a: per_arch(paper["autoattack"]["max_samples"], a),
             "square": lambda a: per_arch(paper["square"]["max_samples"], a)}
    beats = defaultdict(set)
    for r in records:
        family = "square" if r["attack"] == "square" else (
            "autoattack" if r["attack"] in AUTOATTACKS + list(SMOOTH) + ["transfer"]
            else r["attack"])
        if family in asked:
            beats[(r["arch"], family)].add(len(r["labels"]))
    lines, shrunk = [], False
    for (arch, family), ns in sorted(beats.items()):
        want, n = asked[family](arch), max(ns)
        smaller = n < 0.9 * want
        shrunk |= smaller
        verdict = "smaller than the protocol" if smaller else "the protocol's"
        lines.append(f"- {arch} {family}: {n} beats (the paper's protocol asks {want}: {verdict})")
    if shrunk:
        lines += ["", "Smaller subsets come from reproduce.py's --spsa-per-class / --aa-samples "
                      "(or the quick preset): the protocol shrinks the CNN's SPSA and AutoAttack "
                      "subsets first, never the MLP's, when its plan exceeds about 10 h on one "
                      "machine."]
    return lines


def settings_lines(records):
    groups = defaultdict(set)
    for r in records:
        desc = (f"`{r['attack']}` " + ", ".join(f"{k} {v}" for k, v in sorted(run_settings(r).items()))
                + (f"; suite {r['suite']}" if r.get("suite") else "")
                + f"; {len(r['labels'])} test beats; device {r.get('device', '?')}; torch "
                f"{r.get('torch', '?')}; commit {str(r.get('git_commit', '?'))[:10]}")
        groups[desc].add(r["model"])
    return [f"- {d}: {', '.join(sorted(m))}" for d, m in sorted(groups.items())]


def training_section(histories):
    if not histories:
        return []
    lines = ["## Training", "", "| model | epochs | samples/epoch | best val bal. acc (epoch) "
             "| last val bal. acc | train time (s) |", "|---|---:|---:|---:|---:|---:|"]
    for h in sorted(histories, key=lambda h: (h["arch"], row_key(h["config"], h["arch"])[0],
                                              h["model"])):
        planned = h["config"].get("epochs", h["epochs"])
        epochs = h["epochs"] if h["epochs"] >= planned else \
            f"{h['epochs']} of {planned} (training)"
        lines.append(f"| {h['model']} | {epochs} | {h['samples_per_epoch']} | "
                     f"{h['best_val_bacc']:.3f} ({h['best_epoch']}) | {h['last_val_bacc']:.3f}"
                     f" | {h['train_s']:.0f} |")
    return lines + [""]


def compute_line(records, histories):
    """The compute behind the report: training seconds from the checkpoints' histories, attack
    seconds from the results' wall_s (a killed run's lost work is not counted)."""
    train_h = sum(h["train_s"] for h in histories) / 3600
    attack_h = sum(r.get("wall_s", 0) for r in records) / 3600
    devices = sorted({r.get("device", "?") for r in records})
    threads = sorted({str(r.get("threads", "?")) for r in records})
    return (f"Compute: {train_h + attack_h:.1f} h of process time: training {train_h:.1f} h "
            f"({len(histories)} runs), attacks {attack_h:.1f} h ({len(records)} results; device "
            f"{', '.join(devices)}, {'/'.join(threads)} thread(s) per process).")


def data_line(records):
    """Which data the results were made from (preprocess.data_sha256), with a warning where
    they differ: their numbers would not belong in one table."""
    counts = pd.Series([canonical_data_sha256(r["data_sha256"]) for r in records]).value_counts()
    if len(counts) <= 1:
        return "Data: " + (f"every result from the data with digest `{counts.index[0]}` "
                           "(preprocess.data_sha256)." if len(counts) else "no results.")
    print(f"WARNING: the results come from {len(counts)} different data caches")
    return ("**Warning**: the results come from different data (re-run the attacks on one "
            "cache): " + ", ".join(f"`{d[:12]}` ({n} results)" for d, n in counts.items()) + ".")


TITLES = {"worst": "Worst case per beat over every attack (the number to trust)",
          "pgd": "White-box PGD, the paper's variant (as the paper measures)",
          "autoattack": "AutoAttack ensemble (APGD-CE, APGD-T, FAB-T, Square; worst case per beat)",
          "smooth": "Smooth threat model: worst case per beat over SAP and strong SAP",
          "sap": "Smooth adversarial perturbation (SAP, Han et al. 2020)",
          "transfer": "Transfer: APGD-T beats crafted on the CE model of the same arch and seed",
          "spsa": "Black-box SPSA", "noise": "Uniform white noise"}
WORST_NOTE = ("A beat counts as fooled when any attack run on it fooled it: the paper's PGD, sign "
              "PGD and its restarts, SPSA, the AutoAttack components, SAP (both variants) and "
              "the transfer attack. Cells: balanced accuracy "
              "on the beats of the model's largest run at that eps, narrowed to the beats the "
              "AutoAttack ensemble attacked where it ran (n: the count most cells share; cells "
              "on other beats are named under the table).")


def read_vouched(results_dir, keep_stale):
    """(records, skipped, stale, unverified, histories) of a results folder, the stale and the
    unverified named on stdout."""
    records, skipped = load_results(os.path.join(results_dir, "attacks"))
    records, stale, unverified = vouch(records, os.path.join(results_dir, "checkpoints"),
                                       keep_stale)
    for p, why in stale:
        print(f"WARNING: {'marked' if keep_stale else 'left out'} {p}: {why}")
    if unverified:
        print(f"note: {len(unverified)} results could not be checked against their "
              f"checkpoint, e.g. {unverified[0][0]}: {unverified[0][1]}")
    return records, skipped, stale, unverified, load_histories(
        os.path.join(results_dir, "checkpoints"))


def header_lines(results_dir, records, skipped, stale, unverified, histories, keep_stale):
    """The report's title, provenance, warnings, compute and data lines."""
    lines = ["# NSR robustness: evaluation report", "",
             f"From {len(records)} attack results under `{results_dir}/attacks` "
             f"({len(skipped)} skipped) and {len(histories)} training runs; evaluate.py at "
             f"commit {git_commit()[:10]}.", "",
             "Headline metric: balanced accuracy = mean per-class sensitivity (the paper's "
             "accuracy on its class-balanced test set). Clean-misclassified beats are not "
             "attacked and count with their clean prediction.", ""]
    if skipped:
        lines += ["Skipped (corrupt or foreign): " + ", ".join(f"`{p}`" for p in skipped), ""]
    if stale:
        lines += [f"**Warning**: {len(stale)} results no longer match the checkpoint or data "
                  f"now on disk and are {'shown, marked STALE,' if keep_stale else 'left out'}"
                  ": " + "; ".join(f"`{os.path.basename(p)}` ({why})" for p, why in stale), ""]
    if unverified:
        lines += [f"**Warning**: {len(unverified)} results could not be checked against their "
                  "checkpoint (" + "; ".join(sorted({why for _, why in unverified})[:5])
                  + "): their checkpoint sha256 is in the tables' checkpoint column.", ""]
    return lines + [compute_line(records, histories), "", data_line(records), ""]


def table_section(kind, arch, cells, tables_dir, fig_dir, aggs, mixed):
    """One kind's table, curve and (with seeds) paired differences for one arch."""
    df, chosen = build_table(cells, arch, kind)
    if df is None:
        return [f"{arch.upper()}: not run.", ""]
    mixed += [f"{kind} {m}: {c}" for m, c in zip(df["model"], df["checkpoint"]) if " " in c]
    md, agg = write_table(df, os.path.join(tables_dir, f"{kind}_{arch}"),
                          f"{TITLES[kind]}, {arch.upper()}")
    aggs[arch][kind] = agg
    fig = f"{kind}_{arch}.png"
    plot_curves(agg, os.path.join(fig_dir, fig), f"{TITLES[kind].split(' (')[0]}: {arch.upper()}")
    lines = [md, f"![{kind} {arch}](figures/{fig})", ""]
    diff = paired_differences(df) if kind in ("worst", "pgd", "smooth") else None
    if diff is not None and (df["seed"].nunique() > 1):
        base = os.path.join(tables_dir, f"diff_{kind}_{arch}")
        write_csv(diff, base + ".csv")
        dmd = diff_markdown(diff, f"{TITLES[kind].split(' (')[0]}, {arch.upper()}: "
                                  "each method minus CE")
        atomic_write(base + ".md", lambda t: open(t, "w").write(dmd))
        lines += [dmd, ""]
    if kind == "pgd":
        eps = plot_per_class(chosen, arch, os.path.join(fig_dir, f"per_class_{arch}.png"))
        if eps is not None:
            lines += [f"Per-class sensitivity, CE vs NSR, PGD eps {eps:g}:", "",
                      f"![per class {arch}](figures/per_class_{arch}.png)", ""]
    return lines


def headline_section(aggs, tables_dir, fig_dir):
    """The headline table (tables/headline.md, .csv) and figure, and their report lines."""
    head = headline(aggs, HEADLINE_EPS, HEADLINE_OTHERS)
    write_csv(head, os.path.join(tables_dir, "headline.csv"))
    head_md = headline_markdown(head)
    atomic_write(os.path.join(tables_dir, "headline.md"), lambda t: open(t, "w").write(head_md))
    why = plot_headline(aggs, head, os.path.join(fig_dir, "headline.png"))
    return ["## Headline: the paper's PGD next to the worst case", "",
            f"CE, NSR and the {HEADLINE_OTHERS} best other methods by the worst case at eps "
            f"{HEADLINE_EPS[0]:g}; balanced accuracy, mean over training seeds (the full "
            "tables below give ± std).", "", head_md,
            f"Not drawn: {why}." if why else "![headline](figures/headline.png)", ""]


SMOOTH_NOTE = ("The smooth threat model (METHOD.md 5): perturbations that are a mean of Gaussian "
               "smoothings of a vector within eps, as ECG noise is smooth (Han et al. 2020). "
               "Every smooth perturbation is also within the L-inf ball, so these attacks count "
               "in the worst case above too; this table is the worst case over them alone.")


def view_markdown(agg, arch, eps):
    cols = [label for label, _ in VIEW]
    lines = [f"**{arch.upper()}, eps {eps:g}** (balanced accuracy on the worst case's beats, "
             "mean over training seeds; last column: the attacks that leave more than "
             "0.02 less than the paper's PGD, with the share of seeds)", "",
             "| method | n | seeds | " + " | ".join(cols) + " | beat the paper's PGD |",
             "|---|---:|---:|" + "---:|" * len(cols) + "---|"]
    for _, r in agg.iterrows():
        lines.append("| " + " | ".join([r["method"], str(r["n"]), str(r["seeds"])]
                                       + ["-" if pd.isna(r[c]) else f"{r[c]:.3f}" for c in cols]
                                       + [r["beat PGD"] or "none"]) + " |")
    return "\n".join(lines) + "\n"


def view_section(records, tables_dir):
    """How each attack sees each model (tables/attack_view_{arch}.md, .csv): a CE-loss attack
    that stalls on a model where margin, black-box and transfer attacks do not is the
    signature of gradient masking (METHOD.md 7, check 3)."""
    lines = ["## How each attack sees each model", "",
             "Each attack alone, on the same beats (the worst case's), at two eps. On a model "
             "whose gradients mislead, the paper's PGD (CE loss) stalls while margin losses "
             "(APGD-T, FAB-T), black-box search (Square) and beats crafted on another model "
             "(transfer) still fool it.", ""]
    for arch in ARCHS:
        parts, csv = [], []
        for eps in VIEW_EPS:
            per_model, agg = attack_view(records, arch, eps)
            if agg is None:
                continue
            parts.append(view_markdown(agg, arch, eps))
            csv.append(per_model.drop(columns=["order"]).assign(
                eps=eps, **{"beat PGD": per_model["beat PGD"].map(" ".join)}))
        if not parts:
            continue
        md = "\n".join(parts)
        base = os.path.join(tables_dir, f"attack_view_{arch}")
        atomic_write(base + ".md", lambda t: open(t, "w").write(md))
        write_csv(pd.concat(csv), base + ".csv")
        lines += [md, ""]
    return lines if len(lines) > 4 else []


def plot_surface(surfaces, path):
    """The loss surface, CE vs NSR per arch (seed 0 or the lowest seed present): margin along
    the CE-gradient sign (the paper's PGD's first step), along the straight line to APGD-T's
    beat, along a random sign; CE loss along the CE-gradient sign; input-gradient L1 norms."""
    archs = [a for a in ARCHS if any(s["arch"] == a for s in surfaces)]
    panels = (("margin", "gradient sign", "margin along sign(grad CE)"),
              ("margin", "APGD-T", "margin along the line to APGD-T's beat"),
              ("margin", "random sign", "margin along a random sign"),
              ("loss", "gradient sign", "CE loss along sign(grad CE)"))
    fig, axes = plt.subplots(len(archs), len(panels) + 1, figsize=(17, 3.4 * len(archs)),
                             squeeze=False)
    for row, arch in zip(axes, archs):
        for s in surfaces:
            if s["arch"] != arch:
                continue
            color = {"ce": "C0", "nsr": "C3"}.get(s["method"], "C2")
            t = np.asarray(s["eps"])
            # margins in units of the model's median clean margin: an MSE-trained model's logits
            # live on a smaller scale than a CE model's; the sign (fooled or not) is unchanged
            scale = abs(float(np.median(np.asarray(s["directions"]["random sign"]["margin"])[:, 0])))
            for ax, (what, d, title) in zip(row, panels):
                v = np.asarray(s["directions"][d][what]) / (scale if what == "margin" else 1)
                lo, mid, hi = np.percentile(v, [25, 50, 75], axis=0)
                ax.plot(t, mid, color=color, label=f"{METHOD_LABEL[s['method']]} ({s['model']})")
                ax.fill_between(t, lo, hi, color=color, alpha=0.2)
                ax.set_title(f"{arch.upper()}: {title}", fontsize=9)
                ax.set_xlabel("t (L-inf step)")
                if what == "margin":
                    ax.axhline(0, color="k", lw=0.6)
            g = np.asarray(s["grad_l1"])
            row[-1].hist(np.log10(g[g > 0]), bins=30, color=color, alpha=0.5,
                         label=f"{METHOD_LABEL[s['method']]}: median {np.median(g):.3g}")
            row[-1].set_title(f"{arch.upper()}: input-gradient L1 norm (log10)", fontsize=9)
        row[0].legend(fontsize=7)
        row[-1].legend(fontsize=7)
    fig.suptitle("Median and quartiles over the beats; margins in units of the model's median "
                 "clean margin (below 0: a fooled beat)", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def surface_section(results_dir, fig_dir):
    """The loss-surface figure and its numbers (surface.py's files whose checkpoint is the one
    on disk; a stale one is left out, named)."""
    surfaces, stale = load_surfaces(results_dir)
    for path, why in stale:
        print(f"WARNING: left out {path}: {why}")
    if not surfaces:
        return []
    picked = {}
    for s in sorted(surfaces, key=lambda s: s["model_config"].get("seed", 0)):
        picked.setdefault((s["arch"], s["method"]), s)
    shown = [s for k, s in picked.items() if k[1] in ("ce", "nsr")]
    plot_surface(shown, os.path.join(fig_dir, "surface.png"))
    summary = surface_summary(surfaces)
    lines = ["## The loss surface: where the paper's PGD gets stuck", "",
             "surface.py, around real test beats (the first of each class): the logit margin "
             "z_y - max z_j (below 0: fooled) and the CE loss along a step of t in every "
             "sample's direction, and the L1 norm of the input gradient of the CE loss. "
             "Fooled at t: the share of the curve's beats with a margin below 0 "
             "(clean-misclassified beats count as fooled at 0).", "",
             "![loss surface](figures/surface.png)", "",
             "| model | beats | median grad L1 | " + " | ".join(
                 f"fooled at {t:g}, {d}" for d in ("sign(grad CE)", "APGD-T line", "random")
                 for t in (0.03, 0.1)) + " |",
             "|---|---:|---:|" + "---:|" * 6]
    for _, r in summary.iterrows():
        lines.append(f"| {r['model']} | {r['beats']} | {r['grad_l1_median']:.3g} | " + " | ".join(
            f"{r[f'{d}_{t:g}']:.2f}" for d in ("gradient sign", "APGD-T", "random sign")
            for t in (0.03, 0.1)) + " |")
    return lines + [""]


def check_lines(records, worst):
    lines = ["## Sanity checks (METHOD.md 7; Carlini et al. 2019, Croce & Hein 2020)", ""]
    for name, (status, detail) in sanity_checks(records, worst):
        lines.append(f"- **{status}** {name}: {detail}")
        if status == "FAIL":
            print(f"WARNING: sanity check {name} FAILED: {detail}")
    return lines


def evaluate(results_dir=RESULTS_DIR, keep_stale=False, out_dir=None, results_md=None):
    """Write report.md, tables/ and figures/ under out_dir (default: results_dir), and
    RESULTS.md (the tables, figures and checks) when asked. Returns (report path, records,
    worst-case records)."""
    records, skipped, stale, unverified, histories = read_vouched(results_dir, keep_stale)
    worst = worst_case(records)
    aa = worst_case(records, AUTOATTACKS, "autoattack", nested=False)
    smooth = worst_case(records, SMOOTH, "smooth")
    out_dir = out_dir or results_dir
    tables_dir, fig_dir = os.path.join(out_dir, "tables"), os.path.join(out_dir, "figures")
    os.makedirs(tables_dir, exist_ok=True)
    os.makedirs(fig_dir, exist_ok=True)
    preamble = header_lines(results_dir, records, skipped, stale, unverified, histories,
                            keep_stale)
    tables, mixed, aggs = [], [], defaultdict(dict)
    for kind in ("worst", "pgd", "autoattack", "smooth", "sap", "transfer", "spsa", "noise"):
        cells = records + worst + aa + smooth
        if kind in OPTIONAL_KINDS and not any(table_kind(r) == kind for r in cells):
            continue                     # an attack added later (issue 25) this folder never ran
        tables += [f"## {TITLES[kind]}", ""] + ([WORST_NOTE, ""] if kind == "worst" else []) \
            + ([SMOOTH_NOTE, ""] if kind == "smooth" else [])
        for arch in ARCHS:
            tables += table_section(kind, arch, cells, tables_dir, fig_dir, aggs, mixed)
    if mixed:
        print("WARNING: results of one model come from different checkpoints: " + "; ".join(mixed))
        tables += ["**Warning**: rows whose cells come from different checkpoints (re-run the "
                   "attacks): " + "; ".join(mixed), ""]
    why = plot_example_beats(records, os.path.join(fig_dir, "example_beats.png"))
    tables += ["## One beat of each class, clean and adversarial", ""]
    tables += [f"Not drawn: {why}.", ""] if why else ["![example beats](figures/example_beats.png)", ""]
    tables.append("The checkpoint column names the sha256 prefix of the checkpoint every "
                  "number of that row came from (recorded in each result JSON).\n")
    tables = (headline_section(aggs, tables_dir, fig_dir)
              + view_section(records + worst + smooth, tables_dir)
              + surface_section(results_dir, fig_dir) + tables + check_lines(records, worst))
    report = preamble + training_section(histories) + tables
    report += ["", "## Attack subsets against the paper's protocol", ""] + subset_lines(records)
    report += ["", "## Settings behind the numbers", ""] + settings_lines(records) + [""]
    path = os.path.join(out_dir, "report.md")
    atomic_write(path, lambda t: open(t, "w").write("\n".join(report)))
    if results_md:
        write_results_md(results_md, out_dir, preamble[2:], tables)
    return path, records, worst


def write_results_md(path, out_dir, preamble, tables):
    """RESULTS.md: the report's tables, figures and checks (not its training histories,
    subsets and settings, which stay in report.md), links made relative to `path`."""
    here = os.path.dirname(os.path.abspath(path))
    rel = os.path.relpath(out_dir, here)
    method = os.path.relpath(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                          "METHOD.md"), here)
    lines = ["# Results", "",
             f"Generated by `evaluate.py --results-dir {out_dir} --results-md "
             f"{os.path.relpath(path)}` from the results committed under `{out_dir}/`: do not "
             "edit by hand (rerun the command). The training histories, the attack subsets "
             f"and the settings behind every number are in [`report.md`]({rel}/report.md); "
             f"the method and every check in [`METHOD.md`]({method}).", ""]
    lines += preamble
    atomic_write(path, lambda t: open(t, "w").write("\n".join(lines + relink(tables, rel))
                                                    + "\n"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--results-dir", default=RESULTS_DIR,
                   help="holds attacks/ (and checkpoints/); tables, figures, report.md go there")
    p.add_argument("--keep-stale", action="store_true",
                   help="show results whose checkpoint was since retrained or replaced (or made "
                        "on other data), marked STALE, instead of leaving them out")
    p.add_argument("--out-dir", default=None,
                   help="where tables/, figures/ and report.md go (default: the results dir)")
    p.add_argument("--results-md", default=None, metavar="FILE",
                   help="also write the report's tables, figures and checks to FILE, links "
                        "relative to it (the repository's RESULTS.md: --results-dir "
                        "results/paper --results-md RESULTS.md)")
    args = p.parse_args(argv)
    if not os.path.isdir(os.path.join(args.results_dir, "attacks")):
        print(f"error: no attack results in {args.results_dir}/attacks: run attack_pgd.py or "
              "attack_spsa.py first", file=sys.stderr)
        return 2
    out = args.out_dir or args.results_dir
    for d in (out, os.path.join(out, "tables"), os.path.join(out, "figures")):
        try:                   # a probe write: os.access says yes to root on a read-only folder
            os.makedirs(d, exist_ok=True)
            atomic_write(os.path.join(d, "probe"), lambda t: None)
            os.remove(os.path.join(d, "probe"))
        except OSError as e:
            print(f"error: cannot write the report under {d} ({type(e).__name__}: "
                  f"{e.strerror or e}): give --out-dir DIR", file=sys.stderr)
            return 2
    path, records, _ = evaluate(args.results_dir, args.keep_stale, args.out_dir, args.results_md)
    print(f"wrote {path} ({len(records)} results)" + (f" and {args.results_md}"
                                                       if args.results_md else ""))
    return 0


if __name__ == "__main__":
    run_cli(main)
