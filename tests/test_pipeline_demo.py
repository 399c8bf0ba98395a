"""The demo profile end to end through the runner, as `make demo` runs it, checking what each
stage wrote (not only the exit code), then the skip and --force behaviour. Takes minutes."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from platypus_utils.artifacts import read_jsonl
from platypus_utils.config import STAGES
from platypus_utils.demo_data import demo_corpus_labels

from .conftest import ROOT

pytestmark = pytest.mark.slow


def platypus(*args, timeout=1500):
    return subprocess.run(
        [sys.executable, "-m", "platypus_utils", "run", "params/demo.yaml", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    sets = ["--set", f"paths.runs_dir={root / 'runs'}", "--set", f"paths.reports_dir={root / 'reports'}"]
    first = platypus(*sets)
    assert first.returncode == 0, first.stderr[-4000:]
    return root / "runs" / "demo", root / "reports" / "demo", sets, first


def test_every_stage_ran_and_left_its_notebook_and_manifest(demo_run):
    runs, reports, _, _ = demo_run
    summary = json.loads((reports / "run_summary.json").read_text())
    assert [summary["stages"][s]["status"] for s in STAGES] == ["ran"] * 6
    for stage in STAGES:
        nb = json.loads((reports / "notebooks" / f"{stage}.ipynb").read_text())
        assert not any(o.get("output_type") == "error" for c in nb["cells"] for o in c.get("outputs", []))
        manifest = json.loads((runs / stage / "manifest.json").read_text())
        assert manifest["status"] == "ok" and manifest["outputs"] and "transformers" in manifest["libraries"]


def test_curate_removed_the_planted_duplicates(demo_run):
    runs, reports, _, _ = demo_run
    labels = demo_corpus_labels()
    report = json.loads((runs / "01_curate" / "curation_report.json").read_text())
    totals = report["totals"]
    assert totals["exact_dup"] == len(labels["exact_duplicates"])
    assert totals["near_dup"] == len(labels["near_duplicates"])
    assert totals["kept"] == totals["loaded"] - totals["exact_dup"] - totals["near_dup"]
    curated = read_jsonl(runs / "01_curate" / "curated.jsonl")
    assert len(curated) == totals["kept"]
    removed = read_jsonl(runs / "01_curate" / "removed.jsonl")
    for r in removed:  # the more verbose (longer) side is always the one kept
        assert len(r["duplicate_of"]["output"]) >= len(r["row"]["output"])
    assert (reports / "figures" / "01_composition.pdf").is_file()
    assert (reports / "tables" / "composition.csv").is_file()


def test_decontaminate_caught_every_planted_leak_with_its_category(demo_run):
    runs, _, _, _ = demo_run
    pairs = pd.read_csv(runs / "02_decontaminate" / "flagged_pairs.csv")
    got = {(p.test_id, p.category) for p in pairs.itertuples()}
    for leak in demo_corpus_labels()["leaks"]:
        assert (leak["item_id"], leak["category"]) in got, leak
    clean = read_jsonl(runs / "02_decontaminate" / "clean.jsonl")
    curated = read_jsonl(runs / "01_curate" / "curated.jsonl")
    removed = int((pairs.drop_duplicates("train_index")["action"] == "remove").sum())
    assert len(clean) == len(curated) - removed and removed >= 1


def test_finetune_lowered_the_heldout_loss(demo_run):
    runs, reports, _, _ = demo_run
    metrics = json.loads((runs / "03_finetune" / "metrics.json").read_text())
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]
    assert metrics["steps"] >= 1 and metrics["tokens_seen"] > 0
    assert (runs / "03_finetune" / "adapter" / "adapter_model.safetensors").is_file()
    assert (reports / "figures" / "03_loss_curve.png").is_file()


def test_merge_was_verified(demo_run):
    runs, _, _, _ = demo_run
    report = json.loads((runs / "04_merge" / "merge_report.json").read_text())
    merged = report["models"]["merged"]
    assert merged["verified"] is True and merged["max_abs_logit_diff"] < 1e-2


def test_evaluate_wrote_results_per_variant(demo_run):
    runs, _, _, _ = demo_run
    for variant in ("base", "merged"):
        summary = json.loads((runs / "05_evaluate" / f"{variant}.json").read_text())
        assert set(summary["tasks"]) == {"arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2"}
        for task in summary["tasks"].values():
            assert 0.0 <= task["value"] <= 1.0 and task["n"] > 0
        assert len(summary["mmlu_subjects"]) == 5


def test_analysis_tables_and_figures_match_the_results(demo_run):
    runs, reports, _, _ = demo_run
    board = pd.read_csv(reports / "tables" / "leaderboard.csv")
    merged = json.loads((runs / "05_evaluate" / "merged.json").read_text())
    row = board[board["variant"] == "merged"].iloc[0]
    assert abs(row["arc_challenge"] - 100 * merged["tasks"]["arc_challenge"]["value"]) < 0.01
    for ext in ("png", "pdf", "txt"):
        assert (reports / "figures" / f"mmlu_delta_merged.{ext}").is_file()
    assert (reports / "tables" / "leaderboard.tex").read_text().count("\\toprule") == 1


def test_reference_stands_beside_the_merges_and_harness_drift_is_named(demo_run):
    """The demo's released model (SmolLM2 as released: its base's weights) is evaluated from the base's
    cached results, shown as a reference in the leaderboard, compared with base (paired, exactly 0),
    and the summary says that no published numbers exist for it (no harness drift)."""
    runs, reports, _, _ = demo_run
    name = "smollm2-135m-instruct-release"
    board = pd.read_csv(reports / "tables" / "leaderboard.csv")
    assert board.loc[board["kind"] == "reference", "variant"].tolist() == [name]
    assert board.loc[board["variant"] == name, "status"].item() == "ok"
    assert board["kind"].tolist().index("reference") > board["variant"].tolist().index("merged")
    assert f"| {name}" in (reports / "tables" / "leaderboard.md").read_text()
    assert "this run (reference)" in (reports / "tables" / "leaderboard.md").read_text()
    ref = json.loads((runs / "05_evaluate" / f"{name}.json").read_text())
    base = json.loads((runs / "05_evaluate" / "base.json").read_text())
    assert (ref["kind"], ref["compare_to"], ref["published"]) == ("reference", "base", None)
    assert ref["tasks"] == base["tasks"] and ref["model_hash"] == base["model_hash"]
    manifest = json.loads((runs / "05_evaluate" / "manifest.json").read_text())
    assert all(manifest["metrics"][f"{name}_cached"].values())  # the base's results, no second evaluation
    table = pd.read_csv(reports / "tables" / "references.csv")
    assert set(table["kind"]) == {"reproduction vs release"} and (table["delta"] == 0).all()
    assert "average" in set(table["benchmark"])
    summary = (reports / "summary.md").read_text()
    assert "Released models: reproduction vs release, and harness drift" in summary
    assert f"harness drift: no published numbers exist for {name}" in summary


def test_second_run_skips_and_force_reruns(demo_run):
    runs, reports, sets, _ = demo_run
    again = platypus(*sets, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((reports / "run_summary.json").read_text())
    assert [summary["stages"][s]["status"] for s in STAGES] == ["skipped"] * 6
    forced = platypus(*sets, "--only", "06", "--force", timeout=600)
    assert forced.returncode == 0, forced.stderr[-3000:]
    summary = json.loads((reports / "run_summary.json").read_text())
    assert summary["stages"] == {
        "06_analysis": {"status": "ran", "seconds": summary["stages"]["06_analysis"]["seconds"]}
    }
