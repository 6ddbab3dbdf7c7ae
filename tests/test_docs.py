"""The front page and the documents: every link resolves, the README's numbers are the committed
tables', and RESULTS.md is what evaluate.py generates from results/paper."""
import glob
import os
import re

import numpy as np
import pandas as pd
import pytest

import evaluate
import analysis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER = os.path.join(ROOT, "results", "paper")
DOCS = ["README.md", "RESULTS.md", "METHOD.md"] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
NUMBER = re.compile(r"(?<![\d.])\d\.\d{3}(?!\d)")


def read(rel):
    with open(os.path.join(ROOT, rel)) as f:
        return f.read()


def prose(text):
    """The text outside code blocks (a link inside one is an example, not a link)."""
    return re.sub(r"```.*?```", "", text, flags=re.S)


def slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lstrip("#").strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(rel):
    return {slug(line) for line in prose(read(rel)).splitlines() if line.startswith("#")}


def test_every_link_resolves():
    """Every relative link and image of the README, RESULTS.md, METHOD.md and docs/ names a file
    that exists, and every #anchor a heading of its file (web links are not fetched: no network
    in CI)."""
    bad = []
    for rel in DOCS:
        for target in LINK.findall(prose(read(rel))):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(ROOT, os.path.dirname(rel), path)) if path \
                else os.path.join(ROOT, rel)
            if not os.path.exists(full):
                bad.append(f"{rel}: {target} (no such file)")
            elif anchor and full.endswith(".md") and \
                    anchor not in anchors(os.path.relpath(full, ROOT)):
                bad.append(f"{rel}: {target} (no such heading)")
    assert not bad, "\n".join(bad)


def test_readme_is_a_front_page():
    lines = read("README.md").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines (a front page: ~200 at most)"
    text = "\n".join(lines)
    first = text.index("## Two commands")
    assert text.index("bash reproduce.sh quick", first) < text.index("## The headline")
    assert "bash test.sh" in text[first:text.index("## The headline")]


def table_rows(text):
    return [line for line in text.splitlines() if line.startswith("| ")
            and not line.startswith("| arch |")]


def test_readme_headline_equals_the_committed_table():
    """The README's headline table is, row by row, the one evaluate.py wrote from
    results/paper (tables/headline.md); the figure beside it exists."""
    readme = read("README.md")
    part = readme[readme.index("## The headline"):readme.index("## The finding")]
    committed = read(os.path.join("results", "paper", "tables", "headline.md"))
    assert table_rows(committed), "the committed headline table is empty"
    assert table_rows(part) == table_rows(committed)
    assert "results/paper/figures/headline.png" in part


def committed_numbers():
    """Every figure RESULTS.md shows, and every per-seed cell of the committed tables at three
    decimals (the prose quotes single seeds too)."""
    found = set(NUMBER.findall(read("RESULTS.md")))
    for path in glob.glob(os.path.join(PAPER, "tables", "*_per_seed.csv")):
        df = pd.read_csv(path, na_values="-")
        for c in df.columns:
            if c.startswith(("bacc_", "clean_bacc")):
                found |= {f"{v:.3f}" for v in df[c].dropna().astype(float)}
    return found


@pytest.mark.parametrize("rel", ["README.md", "docs/findings.md"])
def test_quoted_results_are_the_committed_ones(rel):
    """Every three-decimal figure in the prose of the front page and of the findings is one the
    committed results show (a number left behind after a rerun fails here)."""
    text = prose(read(rel))
    if rel == "README.md":       # its table is checked cell by cell above
        text = text[text.index("## The finding"):]
    missing = sorted(set(NUMBER.findall(text)) - committed_numbers())
    assert not missing, f"{rel} quotes numbers no committed table has: {missing}"


def test_headline_picks_ce_nsr_and_the_best_others():
    """headline(): CE and NSR first, then the best other methods by the worst case at the first
    eps (not by the paper's PGD); a method missing an eps shows '-'."""
    def agg(rows):
        return pd.DataFrame([{"model": m, "method": m.split("_")[1].upper(), "seeds": 3,
                              "clean_bacc": 0.9, "bacc_0.03": a, "bacc_0.1": b}
                             for m, a, b in rows])
    worst = agg([("mlp_ce", 0.1, 0.0), ("mlp_nsr", 0.4, 0.0), ("mlp_jacob", 0.8, 0.3),
                 ("mlp_adv", 0.7, np.nan), ("mlp_mse", 0.2, 0.0)])
    pgd = agg([("mlp_ce", 0.2, 0.0), ("mlp_nsr", 0.9, 0.5), ("mlp_jacob", 0.8, 0.3),
               ("mlp_adv", 0.7, 0.6), ("mlp_mse", 0.95, 0.9)])
    head = analysis.headline({"mlp": {"worst": worst, "pgd": pgd}}, (0.03, 0.1), 2)
    assert list(head["model"]) == ["mlp_ce", "mlp_nsr", "mlp_jacob", "mlp_adv"]
    assert head.set_index("model").loc["mlp_nsr", "pgd_0.03"] == 0.9
    md = evaluate.headline_markdown(head, (0.03, 0.1))
    assert "| MLP | ADV | 3 | 0.900 | 0.700 | 0.700 | 0.600 | - |" in md


@pytest.mark.slow
def test_results_md_is_what_evaluate_writes(tmp_path):
    """The committed RESULTS.md and headline table are what evaluate.py writes from the
    committed results today (only the commit it names and the links' folder may differ)."""
    out = tmp_path / "report"
    evaluate.evaluate(PAPER, out_dir=str(out), results_md=str(tmp_path / "RESULTS.md"))
    fresh = (tmp_path / "RESULTS.md").read_text()
    assert table_rows(fresh) == table_rows(read("RESULTS.md"))
    assert table_rows((out / "tables" / "headline.md").read_text()) == \
        table_rows(read(os.path.join("results", "paper", "tables", "headline.md")))


def test_headline_with_a_model_not_yet_under_the_papers_pgd(tmp_path):
    """A model with a worst case but no paper-PGD row yet (its attacks still running) stays out
    of the headline table, and the figure draws only what a model has, not an error."""
    import evaluate

    def agg(rows):
        return pd.DataFrame([{"model": m, "method": m.split("_")[1].upper(), "seeds": 1,
                              "clean_bacc": 0.9, "bacc_0.03": a, "bacc_0.1": b, "bacc_0.1_min": b,
                              "bacc_0.1_max": b} for m, a, b in rows])
    worst = agg([("cnn_ce", 0.1, 0.0), ("cnn_nsr", 0.4, 0.0), ("cnn_mse", 0.5, 0.1)])
    pgd = agg([("cnn_ce", 0.2, 0.0), ("cnn_nsr", 0.9, 0.5)])
    aggs = {"cnn": {"worst": worst, "pgd": pgd}}
    head = analysis.headline(aggs, (0.03, 0.1), 2)
    assert list(head["model"]) == ["cnn_ce", "cnn_nsr"]      # MSE: no paper PGD yet
    assert evaluate.plot_headline(aggs, head, str(tmp_path / "h.png")) is None
    head = pd.concat([head, pd.DataFrame([dict(head.iloc[0], model="cnn_mse", method="MSE")])],
                     ignore_index=True)
    assert evaluate.plot_headline(aggs, head, str(tmp_path / "h.png")) is None
    assert (tmp_path / "h.png").stat().st_size > 0
