"""Turn attack results into the paper's tables and curves, a report, and the reviewer's checks.

    python evaluate.py                         # reads results/attacks/*.json
    python evaluate.py --results-dir results/paper

Reads every result JSON that attack_pgd.py / attack_spsa.py wrote (a corrupt or foreign file is
named and skipped) and the training histories in checkpoints/, then writes under the results dir:
  tables/{worst,pgd,autoattack,spsa,noise}_{mlp,cnn}.md and .csv  rows = methods in the
        paper's order, columns = clean and each eps, cells = balanced accuracy (the CSV has plain
        accuracy too), and the sha256 prefix of the checkpoint behind the row; a missing run is
        "-", never 0. "worst" is the per-beat worst case over every attack of a model at an eps
        or a smaller one (paper PGD, sign PGD and restarts, SPSA, AutoAttack), on the beats of
        its largest run narrowed to those AutoAttack attacked (where it ran at that eps);
        "autoattack" the same over the four AutoAttack components only, at that eps alone.
  figures/{kind}_{arch}.png      accuracy-vs-eps curves, one line per method;
  figures/per_class_{arch}.png   per-class sensitivity, NSR vs CE, under PGD;
  figures/example_beats.png      a beat of each class, clean vs adversarial, CE vs NSR CNN;
  report.md   the tables, figures, the settings behind every number and METHOD.md 7's checks 1-9,
              each PASS, FAIL (with the offending numbers; also a WARNING line on stdout) or
              "not run".
"""
import argparse
import glob
import json
import os
import re
import sys
from collections import Counter, defaultdict

import matplotlib
import numpy as np
import pandas as pd
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import protocol  # noqa: E402
from attack_autoattack import ATTACKS as AUTOATTACKS  # noqa: E402
from attack_common import read_result  # noqa: E402
from models import CLASS_NAMES  # noqa: E402
from preprocess import (canonical_data_sha256, classification_metrics, data_digest,  # noqa: E402
                        read_cache)
from utils import HelpFormatter, atomic_write, git_commit, run_cli, sha256_file  # noqa: E402

RESULTS_DIR = "results"
ARCHS = ("mlp", "cnn")
METHOD_ORDER = ["ce", "mse", "mse_margin", "jacob", "adv", "align", "nsr"]
METHOD_LABEL = {"ce": "CE", "mse": "MSE", "mse_margin": "MSE+margin", "jacob": "Jacobian",
                "adv": "adv", "align": "method 1 (align)", "nsr": "method 2 (NSR)"}
# thresholds of the sanity checks (METHOD.md 7)
ONE_SAMPLE = 1.0       # checks 1-3: tolerance of one beat in the count
SATURATED = 0.98       # check 4 skips an eps where PGD fooled this share of the attacked beats
NOISE_SHARE = 0.5      # check 4: "far less" = white noise costs at most this share of PGD's drop
EPS_ONE_MAX_ACC = 0.05  # check 5: accuracy left by PGD at eps >= 1
BUDGET_TOL = 1e-6      # check 6: |x_adv - x|_inf <= eps + this
ZERO_GRAD_MAX = 0.01   # check 8: share of beats with an all-zero input gradient
AA_MARGIN = 0.02       # check 9: AutoAttack may not beat the paper's PGD by more (balanced acc)
EXAMPLE_EPS = 0.03     # the clean-vs-adversarial beat figure
HEADLINE_EPS = (0.03, 0.1)  # the headline table: paper PGD next to the worst case at these eps
HEADLINE_OTHERS = 2    # ... for CE, NSR and this many best other methods (worst case, 1st eps)


# ----------------------------------------------------------------------------- reading
def load_results(attack_dir):
    """Every complete result JSON (attack_common.read_result); a corrupt, incomplete or foreign
    one is named and skipped. Hidden temp files (.NAME.tmp) never match *.json."""
    records, skipped = [], []
    for path in sorted(glob.glob(os.path.join(attack_dir, "*.json"))):
        try:
            r = read_result(path)
            # the tables use metrics recomputed from the per-beat labels and predictions, never
            # the stored summary (a hand-edited or stale summary cannot show)
            r["clean"] = classification_metrics(r["labels"], r["clean_pred"])
            r["adversarial"] = classification_metrics(r["labels"], r["adv_pred"])
        except ValueError as e:
            print(f"WARNING: skipped {path}: {e}")
            skipped.append(path)
            continue
        r["path"] = path
        records.append(r)
    return records, skipped


def checkpoint_identity(path):
    """(sha256, data digest it was trained on or None, why it cannot vouch or None)."""
    if not os.path.exists(path):
        return None, None, f"its checkpoint {path} is not on disk"
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        data = (ck.get("data") or {}).get("sha256")
    except Exception as e:
        return None, None, f"its checkpoint {path} does not load ({type(e).__name__})"
    return sha256_file(path), data and canonical_data_sha256(data), None


def vouch(records, ckpt_dir, keep_stale=False):
    """Match every result against the checkpoint now in ckpt_dir under its name: one made from
    a checkpoint since retrained or replaced (other sha256), or on other data than that
    checkpoint was trained on, is left out (keep_stale: kept, its row marked). A result whose
    checkpoint is not on disk (a results folder copied without checkpoints/) is kept and named.
    Returns (records kept, [(path, why)] left out or marked, [(path, why)] unverified)."""
    ids, kept, stale, unverified = {}, [], [], []
    for r in records:
        if r.get("arch") not in ARCHS:       # benchmark.py's outside models: keyed to their files
            kept.append(r)
            continue
        path = os.path.join(ckpt_dir, os.path.basename(str(r.get("checkpoint", ""))))
        if path not in ids:
            ids[path] = checkpoint_identity(path)
        sha, data, why = ids[path]
        if why is not None:
            unverified.append((r["path"], why))
            kept.append(r)
            continue
        if sha != r["checkpoint_sha256"]:
            why = (f"made from checkpoint {r['checkpoint_sha256'][:12]}, but {path} is now "
                   f"{sha[:12]} (retrained or replaced: re-run the attack)")
        elif data is not None and data != canonical_data_sha256(r["data_sha256"]):
            why = (f"made on data {r['data_sha256'][:12]}, but {path} was trained on "
                   f"{data[:12]}")
        if why is None:
            kept.append(r)
            continue
        stale.append((r["path"], why))
        if keep_stale:
            kept.append(dict(r, stale=why))
    return kept, stale, unverified


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
    """(order, label) of a model's row: the paper's order; the label names every training
    setting that differs from the paper's frozen value (protocol.py), e.g. "method 2 (NSR,
    nsr_eps 0.02)" (not the budget: epochs and samples per epoch are in the training table)."""
    method = cfg.get("method", "?")
    order = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    label = METHOD_LABEL.get(method, method)
    if method == "adv":
        label = f"adv {cfg.get('adv_eps', 0):g}"
    paper = protocol.paper_config(arch, method) if method in METHOD_ORDER else {}
    diffs = [f"{k} {cfg[k]:g}" if isinstance(cfg[k], (int, float)) and not isinstance(cfg[k], bool)
             else f"{k} {cfg[k]}" for k in paper
             if k not in ("arch", "method", "seed", "adv_eps", "max_train_samples")
             and k in cfg and cfg[k] != paper[k]]
    if diffs:
        label = (label[:-1] + ", " if label.endswith(")") else label + " (") \
            + ", ".join(diffs) + ")"
    return (order, cfg.get("adv_eps", 0) if method == "adv" else cfg.get("beta") or 0), label


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
    if r["attack"] in ("worst", "autoattack"):
        return r["attack"]
    return None


def pick(records):
    """Of several runs for one cell, the one on most beats, then with most steps."""
    return max(records, key=lambda r: (len(r["labels"]), r["settings"].get("steps", 0),
                                       r["settings"].get("n_dirs", 0)))


def acc_count(r):
    return sum(int(p == y) for p, y in zip(r["adv_pred"], r["labels"]))


# ----------------------------------------------------------------------------- worst case
def provenance(r):
    """The checkpoint and data a result was made from: results combine only when these match."""
    return r["checkpoint_sha256"], canonical_data_sha256(r["data_sha256"])


def worst_case(records, attacks=None, name="worst", nested=True):
    """Per (model, eps): a beat counts as fooled if any run of the chosen attacks (default:
    every attack but white noise) fooled it, at this eps or, with `nested`, at any smaller eps
    of the same model (a perturbation within eps' <= eps is one within eps, so the worst case
    never rises with eps; without it an eps only SPSA ran at, 0.15 or 0.25, would show SPSA
    alone); its prediction is then that run's. The beats: those of its largest run at this eps,
    narrowed to the beats the AutoAttack ensemble attacked where it ran at that eps. (The
    paper's PGD covers the whole test split and AutoAttack a balanced subset; on the whole split,
    the beats AutoAttack never saw would count as robust to it and dilute the worst case.)
    Returns pseudo-records shaped like the attack results."""
    groups = defaultdict(list)
    for r in records:
        if r["attack"] != "noise" and (attacks is None or r["attack"] in attacks):
            groups[(r["model"], r["eps"])].append(r)
    runs_of = defaultdict(list)
    for (model, _), rs in groups.items():
        runs_of[model].extend(rs)
    out = []
    for (model, eps), rs in groups.items():
        base = pick(rs)
        # only runs of the base's checkpoint and data combine (like with like)
        rs = [r for r in rs if provenance(r) == provenance(base)]
        keep = base["indices"]
        ensemble = [r for r in rs if r["attack"] in AUTOATTACKS]
        if ensemble:
            covered = set(pick(ensemble)["indices"])
            keep = [i for i in keep if i in covered]
        pred = dict(zip(base["indices"], base["adv_pred"]))
        label = dict(zip(base["indices"], base["labels"]))
        fooling = [r for r in runs_of[model] if r["eps"] <= eps
                   and provenance(r) == provenance(base)] if nested else rs
        for r in fooling:
            for i, p in zip(r["indices"], r["adv_pred"]):
                if i in pred and pred[i] == label[i] and p != label[i]:
                    pred[i] = p
        clean = dict(zip(base["indices"], base["clean_pred"]))
        y, p, c = ([d[i] for i in keep] for d in (label, pred, clean))
        out.append({"model": model, "arch": base["arch"], "model_config": base["model_config"],
                    "attack": name, "eps": eps, "settings": {"eps": eps},
                    "sources": [os.path.basename(r["path"]) for r in fooling],
                    "checkpoint_sha256": base["checkpoint_sha256"],
                    "data_sha256": base["data_sha256"],
                    "stale": next((r["stale"] for r in fooling if r.get("stale")), None),
                    "checkpoints": sorted({r["checkpoint_sha256"] for r in fooling}),
                    "indices": keep, "labels": y, "adv_pred": p,
                    "clean_pred": c, "adversarial": classification_metrics(y, p),
                    "clean": classification_metrics(y, c)})
    return out


# ----------------------------------------------------------------------------- tables
def build_table(records, arch, kind):
    """DataFrame: one row per model, columns clean + eps (balanced accuracy and accuracy)."""
    cells = defaultdict(list)
    for r in records:
        if r["arch"] == arch and table_kind(r) == kind:
            cells[(r["model"], r["eps"])].append(r)
    if not cells:
        return None, {}
    chosen = {k: pick(v) for k, v in cells.items()}
    by_model = defaultdict(dict)
    for (m, e), r in chosen.items():
        by_model[m][e] = r
    # a row is one protocol: a cell from a run with other settings than the row's (the eps-1
    # sanity-check run beside the paper's PGD-100) is left out of the row and named under it
    other = {}
    for m, rs in by_model.items():
        proto = run_settings(row_base(rs))
        off = {e: r for e, r in rs.items() if run_settings(r) != proto}
        for e in off:
            del rs[e]
            del chosen[(m, e)]
        other[m] = "; ".join(f"eps {e:g}: {settings_text(r, proto)}" for e, r in sorted(off.items()))
    first_of = {m: row_base(rs) for m, rs in by_model.items()}
    models = sorted(by_model, key=lambda m: row_key(first_of[m]["model_config"], arch)[0])
    eps_list = sorted({e for _, e in chosen if not (kind == "noise" and e == 0)})
    rows = []
    for m in models:
        rs, first = by_model[m], first_of[m]
        n_row = len(first["labels"])
        shas = sorted({s for r in rs.values()
                       for s in r.get("checkpoints", [r.get("checkpoint_sha256", "?")])})
        stale = " STALE" if any(r.get("stale") for r in rs.values()) else ""
        row = {"method": row_key(first["model_config"], arch)[1] + stale, "model": m,
               "group": group_of(m), "seed": first["model_config"].get("seed", 0),
               "order": row_key(first["model_config"], arch)[0],
               "checkpoint": " ".join(s[:8] for s in shas),
               "clean_bacc": first["clean"]["balanced_accuracy"], "clean_acc": first["clean"]["accuracy"],
               "n": n_row, "n_other": "; ".join(f"eps {e:g}: {len(r['labels'])}"
                                                 for e, r in sorted(rs.items())
                                                 if len(r["labels"]) != n_row),
               "other_settings": other[m]}
        for e in eps_list:
            r = rs.get(e)
            row[f"bacc_{e:g}"] = r["adversarial"]["balanced_accuracy"] if r else np.nan
            row[f"acc_{e:g}"] = r["adversarial"]["accuracy"] if r else np.nan
        rows.append(row)
    return pd.DataFrame(rows), chosen


def settings_text(r, proto):
    """How a run's settings differ from a row's protocol, e.g. 'steps 20 (row: 100)'."""
    s = run_settings(r)
    return ", ".join(f"{k} {s.get(k, '-')} (row: {proto.get(k, '-')})"
                     for k in sorted(set(s) | set(proto)) if s.get(k) != proto.get(k))


def row_base(cells):
    """The run a table row takes its n and clean from: of the beat counts of the row's cells
    (eps -> run), the one most cells share (a worst case on the AutoAttack subset beside a
    sanity-check run on its own subset); the cells on other beats are named under the table."""
    counts = Counter(len(r["labels"]) for r in cells.values())
    n = max(counts, key=lambda k: (counts[k], k))
    return pick([r for r in cells.values() if len(r["labels"]) == n])


def group_of(model):
    """The run without its training seed: rows of one group are averaged over seeds."""
    return re.sub(r"_s\d+$", "", model)


def aggregate(df):
    """One row per group (method and settings): the mean over training seeds of every cell,
    its std (ddof 1), min and max, and how many seeds."""
    cols = [c for c in df.columns if c.startswith(("bacc_", "acc_", "clean_"))]
    rows = []
    for group, g in sorted(df.groupby("group", sort=False), key=lambda kv: kv[1]["order"].iloc[0]):
        row = {"method": g["method"].iloc[0], "model": group, "seeds": len(g),
               "seed_list": " ".join(str(s) for s in sorted(g["seed"])), "n": g["n"].iloc[0],
               "n_other": "; ".join(dict.fromkeys(x for x in g["n_other"] if x)),
               "other_settings": "; ".join(dict.fromkeys(x for x in g["other_settings"] if x)),
               "checkpoint": " ".join(g["checkpoint"])}
        for c in cols:
            v = g[c].astype(float)
            row[c] = v.mean()
            if c.startswith(("bacc_", "clean_bacc")):
                row[c + "_std"] = v.std(ddof=1) if v.notna().sum() > 1 else np.nan
                row[c + "_min"], row[c + "_max"] = v.min(), v.max()
        rows.append(row)
    return pd.DataFrame(rows)


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


def paired_differences(df, baseline="ce"):
    """Each method minus CE per eps, paired by training seed (same data order, same attack
    seed): mean difference and its 95% t-interval over seeds (n >= 2)."""
    from scipy import stats
    eps_cols = [c for c in df.columns if c.startswith("bacc_")]
    base = df[df["group"].str.split("_").str[1] == baseline]
    if base.empty:
        return None
    base = base.set_index("seed")
    rows = []
    for group, g in sorted(df.groupby("group", sort=False), key=lambda kv: kv[1]["order"].iloc[0]):
        if group in set(base["group"]):
            continue
        g = g.set_index("seed")
        seeds = sorted(set(g.index) & set(base.index))
        row = {"method": g["method"].iloc[0], "model": group, "seeds": len(seeds)}
        for c in ["clean_bacc"] + eps_cols:
            d = (g.loc[seeds, c] - base.loc[seeds, c]).astype(float).dropna()
            n = len(d)
            half = (stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n)) if n > 1 else np.nan
            row[c] = d.mean() if n else np.nan
            row[c + "_lo"], row[c + "_hi"] = row[c] - half, row[c] + half
            row[c + "_n"] = n
        rows.append(row)
    return pd.DataFrame(rows) if rows else None


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
def headline(aggs, eps_list=HEADLINE_EPS, others=HEADLINE_OTHERS):
    """The front page's table: per arch, CE, NSR and the `others` best other methods by the
    worst case at eps_list[0], each with the paper's PGD next to the worst case at each eps.
    `aggs`: {arch: {"pgd": aggregate table, "worst": aggregate table}}. Returns a DataFrame."""
    rows = []
    for arch, by_kind in aggs.items():
        pgd, worst = by_kind.get("pgd"), by_kind.get("worst")
        if pgd is None or worst is None:
            continue
        key = f"bacc_{eps_list[0]:g}"
        if key not in worst:
            continue
        ranked = worst.dropna(subset=[key]).sort_values(key, ascending=False)
        base = [m for m in ranked["model"] if m.split("_")[1] in ("ce", "nsr")]
        rest = [m for m in ranked["model"] if m not in base][:others]
        for model in sorted(base, key=lambda m: m.split("_")[1] != "ce") + rest:
            w = worst.set_index("model").loc[model]
            p = pgd.set_index("model").loc[model] if model in set(pgd["model"]) else None
            row = {"arch": arch, "method": w["method"], "model": model, "seeds": int(w["seeds"]),
                   "clean": (p if p is not None else w)["clean_bacc"]}
            for e in eps_list:
                c = f"bacc_{e:g}"
                row[f"pgd_{e:g}"] = p[c] if p is not None and c in p else np.nan
                row[f"worst_{e:g}"] = w[c] if c in w else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


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
                agg = aggs[arch][kind]
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
    """A real beat of each class, clean vs its adversarial version under the paper's PGD at
    `eps`, for the CE and the NSR CNN (predicted labels in the legend). The attack is re-run on
    these 5 beats from the checkpoints the results name (their sha256 must still match).
    Returns None, or why the figure was not drawn."""
    import attack_pgd
    from attack_common import predict
    from models import load_checkpoint
    runs = {}
    for r in records:
        m = r["model_config"].get("method")
        if (table_kind(r) == "pgd" and r["arch"] == "cnn" and r["eps"] == eps
                and m in ("ce", "nsr") and r["model_config"].get("seed", 0) == 0):
            runs[m] = pick([r, runs[m]]) if m in runs else r
    if set(runs) != {"ce", "nsr"}:
        return f"needs paper-PGD results at eps {eps:g} for the CE and the NSR CNN"
    models = {}
    for m, r in runs.items():
        if not os.path.exists(r["checkpoint"]) or sha256_file(r["checkpoint"]) != r["checkpoint_sha256"]:
            return f"checkpoint {r['checkpoint']} is missing or changed since its results"
        models[m] = load_checkpoint(r["checkpoint"])[0]
    cache_file = (runs["ce"].get("data") or {}).get("cache")
    if not cache_file or not os.path.exists(cache_file):
        return f"data cache {cache_file} not found"
    cache = read_cache(cache_file)
    if data_digest(cache) != canonical_data_sha256(runs["ce"]["data_sha256"]):
        return f"data cache {cache_file} holds other data than the results were made from"
    x_all, y_all = cache["X_test"], cache["Y_test"]
    picks = []
    for c in range(len(CLASS_NAMES)):
        for i in runs["ce"]["indices"]:
            if int(y_all[i]) == c and all(int(predict(mo, x_all[i:i + 1])[0]) == c
                                          for mo in models.values()):
                picks.append(i)
                break
    idx = torch.tensor(picks)
    x, y = x_all[idx], y_all[idx]
    adv = {}
    for m, mo in models.items():
        s = runs[m]["settings"]
        xa = attack_pgd.pgd_attack(mo, x, y, eps, s["steps"], s["step_size"], seed=s["seed"])
        adv[m] = (xa, predict(mo, xa))
    fig, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks), 3.0), dpi=110, sharey=True)
    axes = np.atleast_1d(axes)
    t = np.arange(x.shape[1]) / 125.0
    for k, ax in enumerate(axes):
        name = CLASS_NAMES[int(y[k])]
        ax.plot(t, x[k].numpy(), color="black", lw=1.6, label=f"clean ({name})")
        for m, color in (("ce", "tab:blue"), ("nsr", "tab:red")):
            xa, pred = adv[m]
            ax.plot(t, xa[k].numpy(), color=color, lw=0.9, alpha=0.85,
                    label=f"{METHOD_LABEL[m].split(' (')[0]} adv -> {CLASS_NAMES[int(pred[k])]}")
        ax.set_title(f"class {name} (test beat {picks[k]})", fontsize=9)
        ax.set_xlabel("s")
        ax.legend(fontsize=7, loc="upper right")
    axes[0].set_ylabel("amplitude (scaled to [0, 1])")
    fig.suptitle(f"Paper's PGD-{runs['ce']['settings']['steps']} at eps {eps:g}: CE vs NSR CNN "
                 "(arrow: the model's prediction on its adversarial beat)", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return None


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
        if drop_noise > NOISE_SHARE * drop_pgd + ONE_SAMPLE:
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
           f"{r['adversarial']['accuracy']:.3f}" for r in rs if r["adversarial"]["accuracy"] > EPS_ONE_MAX_ACC]
    return _verdict(len(rs), bad, f"PGD at eps >= 1 leaves <= {EPS_ONE_MAX_ACC:.0%} accuracy "
                                  f"({len(rs)} runs)")


def check_budget(records):
    bad = [f"{os.path.basename(r['path'])}: max |x_adv - x| = {r['max_linf']:.6g} for eps "
           f"{r['eps']:g}, in [0,1]: {r['in_range']}" for r in records
           if r["max_linf"] > r["eps"] + BUDGET_TOL or not r["in_range"]]
    return _verdict(len(records), bad,
                    f"all {len(records)} runs within eps + {BUDGET_TOL:g} and [0, 1]")


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
           sorted(per_model.items()) if f > ZERO_GRAD_MAX]
    counts = ", ".join(f"{m} {z}/{n}" for m, (f, n, z) in sorted(per_model.items()))
    return ("FAIL", "; ".join(bad) + f" (all: {counts})") if bad else ("PASS", counts)


def bacc_on(labels, preds):
    return classification_metrics(labels, preds)["balanced_accuracy"]


def check_autoattack(records):
    """Check 9: on the beats both ran, the AutoAttack ensemble (per-beat worst case of its
    components) may not lower balanced accuracy more than AA_MARGIN below the paper's PGD."""
    pgd = {}
    for r in records:
        if table_kind(r) == "pgd":
            key = (r["model"], r["eps"])
            pgd[key] = pick([r, pgd[key]]) if key in pgd else r
    by_cell = defaultdict(list)
    for r in records:
        if r["attack"] in AUTOATTACKS:
            by_cell[(r["model"], r["eps"])].append(r)
    bad, n = [], 0
    for w in worst_case(records, AUTOATTACKS, "autoattack", nested=False):
        p = pgd.get((w["model"], w["eps"]))
        if p is None or w["eps"] == 0 or provenance(p) != provenance(w):
            continue
        pp, label = dict(zip(p["indices"], p["adv_pred"])), dict(zip(p["indices"], p["labels"]))
        ens = dict(zip(w["indices"], w["adv_pred"]))
        common = [i for i in w["indices"] if i in pp]
        if not common:
            continue
        n += 1
        y = [label[i] for i in common]
        b_pgd, b_ens = bacc_on(y, [pp[i] for i in common]), bacc_on(y, [ens[i] for i in common])
        if b_pgd - b_ens <= AA_MARGIN:
            continue
        alone = []
        for r in by_cell[(w["model"], w["eps"])]:
            rp = dict(zip(r["indices"], r["adv_pred"]))
            c = [i for i in common if i in rp]
            if c:
                yc = [label[i] for i in c]
                gap = bacc_on(yc, [pp[i] for i in c]) - bacc_on(yc, [rp[i] for i in c])
                alone.append((gap, r["attack"]))
        found = ", ".join(f"{a} ({g:+.3f})" for g, a in sorted(alone, reverse=True) if g > 0)
        bad.append(f"{w['model']} eps {w['eps']:g}: paper PGD {b_pgd:.3f}, AutoAttack {b_ens:.3f} "
                   f"on {len(common)} beats; found by {found or 'the ensemble only'} (the paper's "
                   "PGD overstates robustness here)")
    return _verdict(n, bad, f"AutoAttack within {AA_MARGIN} of the paper's PGD ({n} model/eps "
                            "pairs on common beats)")


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
        ("9. AutoAttack does not beat the paper's PGD by more than "
         f"{AA_MARGIN}", check_autoattack(records)),
    ]


# ----------------------------------------------------------------------------- report
def subset_lines(records):
    """Beats per arch and attack beside what the paper's protocol asks (reproduce.PRESETS
    ["paper"]): a run on fewer beats (the CNN's SPSA and AutoAttack subsets, shrunk to fit a
    CPU) is named as smaller. Within 10% counts as the protocol (class F has 161 test beats)."""
    from reproduce import PRESETS, per_arch     # here, not at the top: reproduce imports us
    paper = PRESETS["paper"]
    asked = {"spsa": lambda a: 5 * per_arch(paper["spsa"]["per_class"], a),
             "autoattack": lambda a: per_arch(paper["autoattack"]["max_samples"], a),
             "square": lambda a: per_arch(paper["square"]["max_samples"], a)}
    beats = defaultdict(set)
    for r in records:
        family = "square" if r["attack"] == "square" else (
            "autoattack" if r["attack"] in AUTOATTACKS else r["attack"])
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


def evaluate(results_dir=RESULTS_DIR, keep_stale=False, out_dir=None, results_md=None):
    records, skipped = load_results(os.path.join(results_dir, "attacks"))
    records, stale, unverified = vouch(records, os.path.join(results_dir, "checkpoints"),
                                       keep_stale)
    for p, why in stale:
        print(f"WARNING: {'marked' if keep_stale else 'left out'} {p}: {why}")
    if unverified:
        print(f"note: {len(unverified)} results could not be checked against their "
              f"checkpoint, e.g. {unverified[0][0]}: {unverified[0][1]}")
    histories = load_histories(os.path.join(results_dir, "checkpoints"))
    worst = worst_case(records)
    out_dir = out_dir or results_dir
    tables_dir, fig_dir = os.path.join(out_dir, "tables"), os.path.join(out_dir, "figures")
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
    if stale:
        report += [f"**Warning**: {len(stale)} results no longer match the checkpoint or data "
                   f"now on disk and are {'shown, marked STALE,' if keep_stale else 'left out'}"
                   ": " + "; ".join(f"`{os.path.basename(p)}` ({why})" for p, why in stale), ""]
    if unverified:
        report += [f"**Warning**: {len(unverified)} results could not be checked against their "
                   "checkpoint (" + "; ".join(sorted({why for _, why in unverified})[:5])
                   + "): their checkpoint sha256 is in the tables' checkpoint column.", ""]
    report += [compute_line(records, histories), "", data_line(records), ""]
    preamble_end = len(report)
    report += training_section(histories)
    aa = worst_case(records, AUTOATTACKS, "autoattack", nested=False)
    titles = {"worst": "Worst case per beat over every attack (the number to trust)",
              "pgd": "White-box PGD, the paper's variant (as the paper measures)",
              "autoattack": "AutoAttack ensemble (APGD-CE, APGD-T, FAB-T, Square; worst case "
                            "per beat)",
              "spsa": "Black-box SPSA", "noise": "Uniform white noise"}
    mixed, aggs, tables_start = [], defaultdict(dict), len(report)
    for kind in ("worst", "pgd", "autoattack", "spsa", "noise"):
        report += [f"## {titles[kind]}", ""]
        if kind == "worst":
            report += ["A beat counts as fooled when any attack run on it fooled it: the paper's "
                       "PGD, sign PGD and its restarts, SPSA and the AutoAttack components. "
                       "Cells: balanced accuracy on the beats of the model's largest run at "
                       "that eps, narrowed to the beats the AutoAttack ensemble attacked where "
                       "it ran (n: the count most cells share; cells on other beats are named "
                       "under the table).", ""]
        for arch in ARCHS:
            df, chosen = build_table(records + worst + aa, arch, kind)
            if df is None:
                report += [f"{arch.upper()}: not run.", ""]
                continue
            mixed += [f"{kind} {m}: {c}" for m, c in zip(df["model"], df["checkpoint"]) if " " in c]
            md, agg = write_table(df, os.path.join(tables_dir, f"{kind}_{arch}"),
                                  f"{titles[kind]}, {arch.upper()}")
            aggs[arch][kind] = agg
            fig = f"{kind}_{arch}.png"
            plot_curves(agg, os.path.join(fig_dir, fig), f"{titles[kind].split(' (')[0]}: "
                                                         f"{arch.upper()}")
            report += [md, f"![{kind} {arch}](figures/{fig})", ""]
            diff = paired_differences(df) if kind in ("worst", "pgd") else None
            if diff is not None and (df["seed"].nunique() > 1):
                base = os.path.join(tables_dir, f"diff_{kind}_{arch}")
                write_csv(diff, base + ".csv")
                dmd = diff_markdown(diff, f"{titles[kind].split(' (')[0]}, {arch.upper()}: "
                                          "each method minus CE")
                atomic_write(base + ".md", lambda t, s=dmd: open(t, "w").write(s))
                report += [dmd, ""]
            if kind == "pgd":
                eps = plot_per_class(chosen, arch, os.path.join(fig_dir, f"per_class_{arch}.png"))
                if eps is not None:
                    report += [f"Per-class sensitivity, CE vs NSR, PGD eps {eps:g}:", "",
                               f"![per class {arch}](figures/per_class_{arch}.png)", ""]
    if mixed:
        print("WARNING: results of one model come from different checkpoints: " + "; ".join(mixed))
        report += ["**Warning**: rows whose cells come from different checkpoints (re-run the "
                   "attacks): " + "; ".join(mixed), ""]
    why = plot_example_beats(records, os.path.join(fig_dir, "example_beats.png"))
    report += ["## One beat of each class, clean and adversarial", ""]
    report += ([f"Not drawn: {why}.", ""] if why else
               ["![example beats](figures/example_beats.png)", ""])
    report.append("The checkpoint column names the sha256 prefix of the checkpoint every "
                  "number of that row came from (recorded in each result JSON).\n")
    report += ["## Sanity checks (METHOD.md 7; Carlini et al. 2019, Croce & Hein 2020)", ""]
    for name, (status, detail) in sanity_checks(records, worst):
        report.append(f"- **{status}** {name}: {detail}")
        if status == "FAIL":
            print(f"WARNING: sanity check {name} FAILED: {detail}")
    tables_end = len(report)
    head = headline(aggs)
    write_csv(head, os.path.join(tables_dir, "headline.csv"))
    head_md = headline_markdown(head)
    atomic_write(os.path.join(tables_dir, "headline.md"), lambda t: open(t, "w").write(head_md))
    why = plot_headline(aggs, head, os.path.join(fig_dir, "headline.png"))
    head_lines = ["## Headline: the paper's PGD next to the worst case", "",
                  f"CE, NSR and the {HEADLINE_OTHERS} best other methods by the worst case at eps "
                  f"{HEADLINE_EPS[0]:g}; balanced accuracy, mean over training seeds (the full "
                  "tables below give ± std).", "", head_md,
                  f"Not drawn: {why}." if why else "![headline](figures/headline.png)", ""]
    report[tables_start:tables_start] = head_lines
    tables_end += len(head_lines)
    report += ["", "## Attack subsets against the paper's protocol", ""] + subset_lines(records)
    report += ["", "## Settings behind the numbers", ""] + settings_lines(records) + [""]
    path = os.path.join(out_dir, "report.md")
    atomic_write(path, lambda t: open(t, "w").write("\n".join(report)))
    if results_md:
        write_results_md(results_md, out_dir, report[2:preamble_end],
                         report[tables_start:tables_end])
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
