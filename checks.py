"""The reviewer's sanity checks (METHOD.md 7), one function per check, each returning
(status, detail): "PASS", "FAIL" with the offending numbers, or "not run". After Carlini et al.
2019 (On evaluating adversarial robustness, sec. 5: the checklist) and Croce & Hein 2020
(AutoAttack: the ensemble and the per-point worst case). Thresholds are the constants below."""
import os
from collections import defaultdict

from analysis import acc_count, pick, provenance, series_key, table_kind, worst_case
from attack_autoattack import ATTACKS as AUTOATTACKS
from preprocess import classification_metrics

# thresholds of the sanity checks (METHOD.md 7)
ONE_SAMPLE = 1.0       # checks 1-4: tolerance of one beat in the count
SATURATED = 0.98       # check 4 skips an eps where PGD fooled this share of the attacked beats
NOISE_SHARE = 0.5      # check 4: "far less" = white noise costs at most this share of PGD's drop
EPS_ONE_MAX_ACC = 0.05  # check 5: accuracy left by PGD at eps >= 1
BUDGET_TOL = 1e-6      # check 6: |x_adv - x|_inf <= eps + this
ZERO_GRAD_MAX = 0.01   # check 8: share of beats with an all-zero input gradient
AA_MARGIN = 0.02       # check 9: AutoAttack may not beat the paper's PGD by more (balanced acc)
BLACKBOX = ("spsa", "square", "transfer")  # check 3: attacks that never use the model's gradients
BLACKBOX_MARGIN = 0.02  # check 3: a black-box attack may not beat the paper's PGD by more


def paper_pgd_runs(records):
    """{(model, eps): the paper's PGD run} (of several, the one on most beats): what checks 3
    and 9 compare the other attacks with."""
    pgd = {}
    for r in records:
        if table_kind(r) == "pgd":
            key = (r["model"], r["eps"])
            pgd[key] = pick([r, pgd[key]]) if key in pgd else r
    return pgd


def check_monotone_eps(records):
    """Check 1. Not for white noise, nor for the transfer attack: it never optimises against the
    model it is scored on, and beats crafted at a larger eps need not transfer better."""
    series = defaultdict(list)
    for r in records:
        if r["attack"] not in ("noise", "transfer"):
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


def check_blackbox_vs_pgd(records):
    """Check 3 (METHOD.md 7; Carlini et al. 2019, sec. 5: gradient-free attacks should not beat
    gradient-based ones; Croce & Hein 2020 flag the same; Athalye et al. 2018, sec. 5: nor should
    beats transferred from another model): on the beats both ran, a black-box attack (SPSA,
    Square, transfer) may not lower balanced accuracy more than BLACKBOX_MARGIN below the
    white-box paper PGD at the same eps (and by more than one beat: on SPSA's 15-beat demo
    subsets one beat moves balanced accuracy by 0.067). If it does, the gradients mislead the white-box
    attack: suspect gradient masking. FAIL names model, eps and attack."""
    pgd = paper_pgd_runs(records)
    bad, n = [], 0
    for r in sorted(records, key=lambda r: (r["model"], r["eps"], r["attack"])):
        p = pgd.get((r["model"], r["eps"]))
        if r["attack"] not in BLACKBOX or p is None or provenance(p) != provenance(r):
            continue
        pp = dict(zip(p["indices"], p["adv_pred"]))
        common = [i for i in r["indices"] if i in pp]
        if not common:
            continue
        n += 1
        label, mine = dict(zip(r["indices"], r["labels"])), dict(zip(r["indices"], r["adv_pred"]))
        y = [label[i] for i in common]
        b_pgd, b_bb = bacc_on(y, [pp[i] for i in common]), bacc_on(y, [mine[i] for i in common])
        beats = sum(pp[i] == label[i] for i in common) - sum(mine[i] == label[i] for i in common)
        if b_pgd - b_bb > BLACKBOX_MARGIN and beats > ONE_SAMPLE:
            bad.append(f"{r['model']} eps {r['eps']:g}: {r['attack']} {b_bb:.3f} against the "
                       f"paper's PGD {b_pgd:.3f} on {len(common)} beats (suspect gradient "
                       "masking)")
    return _verdict(n, bad, f"no black-box attack beats the paper's PGD by more than "
                            f"{BLACKBOX_MARGIN} ({n} runs on common beats)")


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


def check_worst_case(records, worst):
    """Check 7 (METHOD.md 7; Croce & Hein 2020: robust accuracy is the per-point worst case over
    the attacks): every model and eps an attack ran at has a worst-case cell, and that cell is
    a worst case: each beat it holds is fooled wherever any run of the same checkpoint and data
    fooled it, at this eps or a smaller one. FAIL names the cell and the run it missed."""
    cells = {(w["model"], w["eps"]): w for w in worst}
    runs_of = defaultdict(list)
    for r in records:
        if r["attack"] != "noise":
            runs_of[r["model"]].append(r)
    if not any(len({r["attack"] for r in runs}) > 1 for runs in runs_of.values()):
        return "not run", "no model was attacked by two or more attacks"
    bad, n = [], 0
    for model, runs in sorted(runs_of.items()):
        for eps in sorted({r["eps"] for r in runs}):
            w = cells.get((model, eps))
            if w is None:
                bad.append(f"{model} eps {eps:g}: attacked, but no worst-case cell")
                continue
            n += 1
            fooled = {i for i, y, p in zip(w["indices"], w["labels"], w["adv_pred"]) if p != y}
            held = set(w["indices"])
            for r in runs:
                if r["eps"] > eps or provenance(r) != provenance(w):
                    continue
                missed = [i for i, y, p in zip(r["indices"], r["labels"], r["adv_pred"])
                          if p != y and i in held and i not in fooled]
                if missed:
                    bad.append(f"{model} eps {eps:g}: {len(missed)} beats that "
                               f"{os.path.basename(r.get('path', r['attack']))} fooled count as "
                               f"robust (e.g. test beat {missed[0]})")
    return _verdict(n, bad, f"worst case over attacks and restarts reported per beat for {n} "
                            "model/eps pairs, each beat fooled wherever any run fooled it "
                            "(tables worst_*)")


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
    pgd = paper_pgd_runs(records)
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
        ("3. a black-box attack (SPSA, Square, transfer) does not beat the paper's white-box PGD by more "
         f"than {BLACKBOX_MARGIN}", check_blackbox_vs_pgd(records)),
        ("4. white noise does far less damage than PGD", check_noise_vs_pgd(records)),
        ("5. PGD at eps = 1.0 drives accuracy to ~0", check_eps_one(records)),
        ("6. every x_adv within eps and [0, 1]", check_budget(records)),
        ("7. per-sample worst case over attacks and restarts", check_worst_case(records, worst)),
        ("8. beats with an all-zero input gradient", check_zero_grad(records)),
        ("9. AutoAttack does not beat the paper's PGD by more than "
         f"{AA_MARGIN}", check_autoattack(records)),
    ]
