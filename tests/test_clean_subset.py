"""Scores on the clean subset (issue 14 part 4): hand-made per-question scores and flagged pairs with
answers worked out by hand -> exact clean scores, counts and gaps; the stage's tables, figure and
summary; 02 flagging nothing, samples absent, a flagged_pairs.csv without the id columns."""

from __future__ import annotations

import json
import math
import re

import matplotlib
import pandas as pd
import pytest
from matplotlib.figure import Figure

from platypus_utils.analysis.captions import clean_caption
from platypus_utils.analysis.clean import (
    clean_subset_frame,
    flagged_counts,
    load_clean_subset,
    read_flagged_items,
    subset_gap,
)
from platypus_utils.analysis.figures import clean_gap_figure, clean_subset_figure
from platypus_utils.analysis.stage import run_analysis
from platypus_utils.artifacts import read_manifest
from platypus_utils.config import Profile
from platypus_utils.lmeval_io import EvalRun, samples_frame
from platypus_utils.plotting import save_figure

# ARC: 10 questions, 4 right. Flagged: doc 0 duplicate, doc 1 gray_area (twice: two training rows),
# doc 4 similar_but_different; doc 99 was not evaluated. Clean: docs 2,3,5-9 -> 2 right of 7.
ARC = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
# MMLU: anatomy 3 of 4 (doc 2 flagged duplicate); philosophy 1 of 2, both flagged gray_area (none left).
MMLU = {"anatomy": [1, 0, 1, 1], "philosophy": [0, 1]}
PAIRS = [  # (lm_eval_task, doc_id, category) as stage 02 writes them
    ("arc_challenge", 0, "duplicate"),
    ("arc_challenge", 1, "gray_area"),
    ("arc_challenge", 1, "gray_area"),
    ("arc_challenge", 4, "similar_but_different"),
    ("arc_challenge", 99, "duplicate"),
    ("mmlu_anatomy", 2, "duplicate"),
    ("mmlu_philosophy", 0, "gray_area"),
    ("mmlu_philosophy", 1, "gray_area"),
    ("hellaswag", 3, "duplicate"),
    ("gsm8k", 5, "duplicate"),
    ("mmlu_anatomy", -1, "gray_area"),
]


def has_row(markdown: str, *cells: str) -> bool:
    """A pipe-table row of `markdown` holds `cells` side by side (padding stripped)."""
    for line in markdown.splitlines():
        row = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]] if line.startswith("|") else []
        if any(row[k : k + len(cells)] == list(cells) for k in range(len(row))):
            return True
    return False


def sample_rows(arc=ARC, mmlu=MMLU) -> list[dict]:
    """05's samples.jsonl rows (local task names carry the platypus_ prefix)."""
    rows = [{"task": "platypus_arc_challenge", "doc_id": k, "acc_norm": float(v)} for k, v in enumerate(arc)]
    rows += [
        {"task": f"platypus_mmlu_{s}", "doc_id": k, "acc": float(v)} for s, vs in mmlu.items() for k, v in enumerate(vs)
    ]
    return rows


def pairs_csv(pairs=PAIRS) -> str:
    frame = pd.DataFrame(
        [
            {
                "train_index": k,
                "train_source": "MATH",
                "benchmark": t.split("_")[0],
                "lm_eval_task": t,
                "doc_id": d,
                "test_text": "q",
                "category": c,
                "action": "remove",
            }
            for k, (t, d, c) in enumerate(pairs)
        ],
        columns=[
            "train_index",
            "train_source",
            "benchmark",
            "lm_eval_task",
            "doc_id",
            "test_text",
            "category",
            "action",
        ],
    )
    return frame.to_csv(index=False)


def run_of(name: str, rows: list[dict]) -> EvalRun:
    return EvalRun(name, "mem", {}, samples=samples_frame(rows))


@pytest.fixture()
def flagged(tmp_path):
    path = tmp_path / "flagged_pairs.csv"
    path.write_text(pairs_csv())
    return read_flagged_items(path)


def test_flagged_pairs_are_read_by_lm_eval_ids(flagged):
    frame, notes = flagged
    got = sorted(map(tuple, frame[["benchmark", "subject", "doc_id", "category"]].values.tolist()))
    assert got == sorted(
        [
            ("arc_challenge", "", 0, "duplicate"),
            ("arc_challenge", "", 1, "gray_area"),
            ("arc_challenge", "", 4, "similar_but_different"),
            ("arc_challenge", "", 99, "duplicate"),
            ("mmlu", "anatomy", 2, "duplicate"),
            ("mmlu", "philosophy", 0, "gray_area"),
            ("mmlu", "philosophy", 1, "gray_area"),
            ("hellaswag", "", 3, "duplicate"),
        ]
    )
    assert notes == [
        "flagged_pairs.csv: 2 flagged pair(s) name no lm-eval test item (task outside the leaderboard "
        "or no doc_id; lines 11, 12): the clean subsets cannot leave them out"
    ]


def test_clean_scores_and_counts_are_exact(flagged):
    clean = clean_subset_frame({"base": run_of("base", sample_rows())}, flagged[0])
    bench = clean[clean["level"] == "benchmark"].set_index(["unit", "subset"])
    arc = bench.loc["arc_challenge"]
    assert arc.loc["full", ["n", "n_flagged"]].tolist() == [10, 0] and arc.loc["full", "score"] == pytest.approx(40.0)
    assert arc.loc["clean", ["n", "n_flagged"]].tolist() == [7, 3]
    assert arc.loc["clean", "score"] == pytest.approx(100 * 2 / 7)
    assert arc.loc["clean", "gap"] == pytest.approx(100 * (2 / 7 - 4 / 10))
    # kept: 2 of 7 right (sample variance 2/7*5/7*7/6), left out: docs 0, 1, 4 = 1, 1, 0 (variance 1/3)
    se = 0.3 * math.sqrt((2 / 7 * 5 / 7 * 7 / 6) / 7 + (1 / 3) / 3)
    assert arc.loc["clean", "gap_se"] == pytest.approx(100 * se)
    assert arc.loc["no_duplicate", ["n", "score"]].tolist() == [9, pytest.approx(100 * 3 / 9)]
    assert arc.loc["no_gray_area", ["n", "score"]].tolist() == [9, pytest.approx(100 * 3 / 9)]
    assert arc.loc["no_similar_but_different", ["n", "score"]].tolist() == [9, pytest.approx(100 * 4 / 9)]
    subjects = clean[clean["level"] == "subject"].set_index(["unit", "subset"])
    assert subjects.loc[("anatomy", "clean"), ["n", "score"]].tolist() == [3, pytest.approx(100 * 2 / 3)]
    assert subjects.loc[("anatomy", "clean"), "category"] == "stem"
    assert subjects.loc[("philosophy", "clean"), "n"] == 0 and math.isnan(
        subjects.loc[("philosophy", "clean"), "score"]
    )
    mmlu = bench.loc["mmlu"]
    assert mmlu.loc["full", "score"] == pytest.approx((75 + 50) / 2)  # mean over subjects
    assert mmlu.loc["clean", ["n", "n_flagged"]].tolist() == [3, 3]
    assert mmlu.loc["clean", "score"] == pytest.approx(100 * 2 / 3)  # philosophy keeps nothing: left out
    assert mmlu.loc["clean", "gap"] == pytest.approx(100 * 2 / 3 - 62.5) and math.isnan(mmlu.loc["clean", "gap_se"])
    assert mmlu.loc["no_duplicate", "score"] == pytest.approx((100 * 2 / 3 + 50) / 2)
    assert mmlu.loc["no_similar_but_different", "gap"] == pytest.approx(0.0)
    assert "hellaswag" not in bench.index.get_level_values(0)  # flagged, but not evaluated
    counts = flagged_counts(flagged[0], clean).set_index("benchmark")
    assert counts.loc["arc_challenge", ["flagged", "duplicate", "evaluated", "flagged_evaluated"]].tolist() == [
        4,
        2,
        10,
        3,
    ]
    assert counts.loc["hellaswag", "flagged"] == 1 and pd.isna(counts.loc["hellaswag", "evaluated"])


def test_subset_gap_edges():
    assert subset_gap(pd.Series([1.0, 0.0]).to_numpy(), pd.Series([False, False]).to_numpy()) == (0.5, 0.0, 0.0)
    mean, gap, se = subset_gap(pd.Series([1.0, 0.0]).to_numpy(), pd.Series([True, True]).to_numpy())
    assert math.isnan(mean) and math.isnan(gap) and math.isnan(se)
    mean, gap, se = subset_gap(pd.Series([1.0, 0.0, 0.0]).to_numpy(), pd.Series([True, False, False]).to_numpy())
    assert (mean, gap) == (0.0, pytest.approx(-1 / 3)) and math.isnan(se)  # one item left out: no variance


def test_bad_flagged_files_name_the_problem(tmp_path):
    path = tmp_path / "flagged_pairs.csv"
    path.write_text("train_index,benchmark,category\n0,mmlu,duplicate\n")
    with pytest.raises(ValueError, match=r"flagged_pairs.csv: no column\(s\) lm_eval_task, doc_id"):
        read_flagged_items(path)
    path.write_text(pairs_csv([("arc_challenge", 1, "duplicate")]).replace(",1,", ",x,"))
    with pytest.raises(ValueError, match=r"flagged_pairs.csv line 2: doc_id 'x' is not a non-negative integer"):
        read_flagged_items(path)
    path.write_text(pairs_csv([("arc_challenge", 1, "leak")]))
    with pytest.raises(ValueError, match="line 2: category 'leak' is not one of"):
        read_flagged_items(path)
    clean, info = load_clean_subset({"base": run_of("base", sample_rows())}, path)
    assert clean.empty and info["why"].startswith("clean subset not computed:") and "category 'leak'" in info["why"]
    path.write_text("")
    with pytest.raises(ValueError, match="flagged_pairs.csv: empty, not even a header"):
        read_flagged_items(path)


def test_figure_is_returned_and_saved(flagged, tmp_path):
    clean = clean_subset_frame(
        {"base": run_of("base", sample_rows()), "tuned": run_of("tuned", sample_rows(arc=[1] * 10))}, flagged[0]
    )
    fig = clean_subset_figure(clean)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    left, right = fig.axes
    assert [t.get_text().split("\n")[0] for t in left.get_yticklabels()] == ["ARC", "MMLU"]
    assert [t.get_text() for t in right.get_yticklabels()] == ["anatomy (1/4)", "philosophy (2/2)"]
    one = matplotlib.pyplot.figure()
    ax = one.add_subplot()
    assert clean_gap_figure(clean, ax=ax) is one  # draws into the given axes
    caption = clean_caption(clean)
    assert "base ARC: full 40.00 n 10; clean 28.57 (-11.43 ± 11.43) n 7" in caption
    assert "tuned ARC: full 100.00 n 10; clean 100.00 (+0.00 ± 0.00) n 7" in caption
    paths = save_figure(fig, tmp_path / "clean_subset", caption, ["png"])
    assert [p.name for p in paths] == ["clean_subset.png", "clean_subset.txt"]
    assert paths[0].stat().st_size > 1000 and paths[1].read_text().startswith("Score on the clean subset")
    empty = clean_subset_figure(clean_subset_frame({}, flagged[0]), why="02_decontaminate not run")
    assert isinstance(empty, Figure) and "02_decontaminate not run" in empty.axes[0].texts[0].get_text()


def make_profile(tmp_path) -> Profile:
    return Profile.model_validate(
        {
            "name": "cleantest",
            "paths": {
                "runs_dir": str(tmp_path / "runs"),
                "reports_dir": str(tmp_path / "reports"),
                "cache_dir": str(tmp_path / "cache"),
            },
            "evaluate": {"variants": ["base", "tuned"]},
            "analysis": {"formats": ["png"], "n_bootstrap": 200},
        }
    )


def write_run(profile, pairs: str | None, samples: bool = True) -> None:
    ev = profile.run_dir("05_evaluate")
    ev.mkdir(parents=True)
    for variant, arc in (("base", ARC), ("tuned", [1] * 10)):
        rows = sample_rows(arc=arc)
        frame = samples_frame(rows)
        subjects = {
            s: {
                "acc": g["score"].mean(),
                "stderr": 0.1,
                "n": len(g),
                "category": "stem" if s == "anatomy" else "humanities",
            }
            for s, g in frame[frame["benchmark"] == "mmlu"].groupby("subject")
        }
        arc_mean = sum(arc) / len(arc)
        summary = {
            "variant": variant,
            "model": variant,
            "tasks": {
                "arc_challenge": {"metric": "acc_norm", "value": arc_mean, "stderr": 0.1, "n": 10},
                "mmlu": {"metric": "acc", "value": sum(s["acc"] for s in subjects.values()) / 2, "stderr": 0.1, "n": 6},
            },
            "mmlu_subjects": subjects,
            "average": None,
        }
        (ev / f"{variant}.json").write_text(json.dumps(summary))
        if samples:
            (ev / f"{variant}.samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if pairs is not None:
        dec = profile.run_dir("02_decontaminate")
        dec.mkdir(parents=True)
        (dec / "flagged_pairs.csv").write_text(pairs)


def test_stage_shows_full_and_clean_scores(tmp_path):
    profile = make_profile(tmp_path)
    write_run(profile, pairs_csv())
    produced = run_analysis(profile)
    tables, figures = profile.report_dir("tables"), profile.report_dir("figures")
    board = pd.read_csv(tables / "leaderboard.csv").set_index("variant")
    assert board.loc["base", "arc_challenge_clean"] == pytest.approx(100 * 2 / 7)
    assert board.loc["base", "arc_challenge_clean_n"] == 7 and board.loc["base", "arc_challenge_n"] == 10
    md = (tables / "leaderboard.md").read_text()
    assert has_row(md, "base", "this run", "clean", "28.57 (n 7 of 10)", "not run", "66.67 (n 3 of 6)")
    assert has_row(md, "base", "this run", "full", "40.00 ± 10.00", "not run", "62.50 ± 10.00")
    tex = (tables / "leaderboard.tex").read_text()
    assert "base & this run & clean & 28.57 (n 7 of 10)" in tex and "$40.00 \\pm 10.00$" in tex
    clean = pd.read_csv(tables / "clean_subset.csv")
    row = clean[(clean["variant"] == "tuned") & (clean["unit"] == "arc_challenge") & (clean["subset"] == "clean")]
    assert row[["n", "n_flagged", "score", "gap"]].values.tolist() == [[7, 3, 100.0, 0.0]]
    assert has_row(
        (tables / "clean_subset.md").read_text(),
        "base",
        "ARC",
        "40.00 (10)",
        "28.57 (7)",
        "-11.43 ± 11.43",
        "33.33 (9)",
        "33.33 (9)",
        "44.44 (9)",
    )
    assert [p.name for p in map(lambda p: tables.parent / p, produced["figures"]["clean_subset"])] == [
        "clean_subset.png",
        "clean_subset.txt",
    ]
    assert "base ARC: full 40.00 n 10; clean 28.57" in (figures / "clean_subset.txt").read_text()
    summary = (profile.report_dir() / "summary.md").read_text()
    assert "## Scores on the clean subset" in summary and has_row(summary, "base", "ARC", "40.00 (10)", "28.57 (7)")
    assert has_row(summary, "arc_challenge", "4", "2", "1", "1", "10", "3")  # flagged items per benchmark
    assert "flagged_pairs.csv: 2 flagged pair(s) name no lm-eval test item" in produced["notes"][-1] or any(
        n.startswith("flagged_pairs.csv: 2 flagged pair(s)") for n in produced["notes"]
    )
    manifest = read_manifest(profile.run_dir("06_analysis"))  # paths absolute again
    assert str((profile.run_dir("02_decontaminate") / "flagged_pairs.csv").resolve()) in manifest["inputs"]


@pytest.mark.parametrize("case", ["nothing flagged", "no samples"])
def test_stage_without_flags_or_samples_says_so(tmp_path, case):
    profile = make_profile(tmp_path)
    write_run(profile, pairs_csv([]) if case == "nothing flagged" else pairs_csv(), samples=case != "no samples")
    produced = run_analysis(profile)
    why = {
        "nothing flagged": "02_decontaminate flagged no test item: the clean subset is the full test set.",
        "no samples": "no per-question samples (05's <variant>.samples.jsonl",
    }[case]
    caption = (profile.report_dir("figures") / "clean_subset.txt").read_text()
    assert why in caption and any(n.startswith(why) for n in produced["notes"])
    assert why.replace("<", "\\<").replace(">", "\\>") in (profile.report_dir() / "summary.md").read_text()
    assert (profile.report_dir("figures") / "clean_subset.png").stat().st_size > 1000
    board = pd.read_csv(profile.report_dir("tables") / "leaderboard.csv").set_index("variant")
    if case == "nothing flagged":  # clean = full, with the full count
        assert board.loc["base", "arc_challenge_clean"] == pytest.approx(40.0)
        assert board.loc["base", "arc_challenge_clean_n"] == 10
    else:
        assert board["arc_challenge_clean"].isna().all()
