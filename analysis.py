"""The analysis behind the report: naming rows, the per-beat worst case over attacks, the
tables (one row per model, mean over training seeds), the paired differences with their
intervals, and the headline. Pure functions of the records that records.py reads."""
import json
import os
import re
from collections import Counter, defaultdict

import numpy as np
import pandas as pd

import protocol
from attack_autoattack import ATTACKS as AUTOATTACKS
from preprocess import canonical_data_sha256, classification_metrics


METHOD_ORDER = ["ce", "mse", "mse_margin", "jacob", "adv", "align", "nsr"]


METHOD_LABEL = {"ce": "CE", "mse": "MSE", "mse_margin": "MSE+margin", "jacob": "Jacobian",
                "adv": "adv", "align": "method 1 (align)", "nsr": "method 2 (NSR)"}


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
    if r["attack"] in ("worst", "autoattack", "smooth", "transfer"):
        return r["attack"]
    if r["attack"] == "sap-han":
        return "sap"
    return None


def pick(records):
    """Of several runs for one cell, the one on most beats, then with most steps."""
    return max(records, key=lambda r: (len(r["labels"]), r["settings"].get("steps", 0),
                                       r["settings"].get("n_dirs", 0)))


def acc_count(r):
    return sum(int(p == y) for p, y in zip(r["adv_pred"], r["labels"]))


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


def headline(aggs, eps_list, others):
    """The front page's table: per arch, CE, NSR and the `others` best other methods by the
    worst case at eps_list[0], each with the paper's PGD next to the worst case at each eps; a
    model not yet attacked by the paper's PGD at eps_list[0] is left out.
    `aggs`: {arch: {"pgd": aggregate table, "worst": aggregate table}}. Returns a DataFrame."""
    rows = []
    for arch, by_kind in aggs.items():
        pgd, worst = by_kind.get("pgd"), by_kind.get("worst")
        if pgd is None or worst is None:
            continue
        key = f"bacc_{eps_list[0]:g}"
        if key not in worst:
            continue
        # a model enters once the paper's PGD ran at the first eps (its attacks may still run)
        done = set(pgd.dropna(subset=[key])["model"]) if key in pgd else set()
        ranked = worst[worst["model"].isin(done)].dropna(subset=[key]).sort_values(
            key, ascending=False)
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


SMOOTH = ("sap-han", "sap-strong")       # the smooth threat model's attacks (METHOD.md 5)
# the columns of "how each attack sees each model": (label, which runs)
VIEW = (("paper PGD", lambda r: table_kind(r) == "pgd"),
        *((name, lambda r, a=attack: r["attack"] == a) for name, attack in (
            ("APGD-CE", "apgd-ce"), ("APGD-T", "apgd-t"), ("FAB-T", "fab-t"),
            ("Square", "square"), ("SAP", "sap-han"), ("SAP strong", "sap-strong"),
            ("transfer", "transfer"), ("smooth worst", "smooth"), ("worst case", "worst"))))
BEATS_PGD_BY = 0.02       # a column that is this far below the paper's PGD is named (check 3, 9)


def attack_view(records, arch, eps):
    """How each attack sees each model at one eps: per model, the balanced accuracy each attack
    of VIEW leaves on the worst case's beats (NaN where it did not run on all of them), and the
    attacks that beat the paper's PGD by more than BEATS_PGD_BY there; then the mean over
    training seeds per group. Returns (per-model DataFrame, per-group DataFrame) or (None, None)."""
    worst = {r["model"]: r for r in records if r["attack"] == "worst" and r["arch"] == arch
             and r["eps"] == eps}
    at_eps = defaultdict(list)              # this eps's runs per model, read once
    for r in records:
        if r["eps"] == eps and r["model"] in worst:
            at_eps[r["model"]].append(r)
    rows = []
    for model, w in worst.items():
        keep = w["indices"]
        row = {"model": model, "group": group_of(model), "n": len(keep),
               "order": row_key(w["model_config"], arch)[0],
               "method": row_key(w["model_config"], arch)[1],
               "seed": w["model_config"].get("seed", 0)}
        for label, match in VIEW:
            runs = [r for r in at_eps[model] if match(r) and provenance(r) == provenance(w)]
            row[label] = np.nan
            if runs:
                r = pick(runs)
                pred, y = dict(zip(r["indices"], r["adv_pred"])), dict(zip(r["indices"],
                                                                             r["labels"]))
                if all(i in pred for i in keep):
                    row[label] = classification_metrics(
                        [y[i] for i in keep], [pred[i] for i in keep])["balanced_accuracy"]
        pgd = row["paper PGD"]
        row["beat PGD"] = [label for label, _ in VIEW[1:-2]
                           if not np.isnan(pgd) and pgd - row[label] > BEATS_PGD_BY]
        rows.append(row)
    if not rows:
        return None, None
    df = pd.DataFrame(rows).sort_values(["order", "model"])
    cols = [label for label, _ in VIEW]
    groups = []
    for group, g in df.groupby("group", sort=False):
        flagged = Counter(a for lst in g["beat PGD"] for a in lst)
        groups.append({"method": g["method"].iloc[0], "model": group, "seeds": len(g),
                       "n": g["n"].iloc[0], **{c: g[c].astype(float).mean() for c in cols},
                       "beat PGD": ", ".join(f"{a} ({k}/{len(g)})" if len(g) > 1 else a
                                             for a, k in flagged.items())})
    return df, pd.DataFrame(groups)


def surface_summary(surfaces):
    """Per surface.py file: the median input-gradient L1 norm and the share of its curve's
    beats fooled (margin < 0) at t = 0.03 and 0.1 along each direction."""
    rows = []
    for s in sorted(surfaces, key=lambda s: (s["arch"], row_key(s["model_config"], s["arch"])[0],
                                             s["model"])):
        t = np.asarray(s["eps"])
        row = {"model": s["model"], "arch": s["arch"], "method": s["method"],
               "beats": len(s["curve_labels"]), "grad_l1_median": float(np.median(s["grad_l1"]))}
        for d, v in s["directions"].items():
            m = np.asarray(v["margin"])
            for e in (0.03, 0.1):
                row[f"{d}_{e:g}"] = float((m[:, int(np.argmin(np.abs(t - e)))] < 0).mean())
        rows.append(row)
    return pd.DataFrame(rows)
