"""06_analysis: tables and figures from fabricated 05_evaluate summaries; partial runs."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from platypus_utils import analysis as an
from platypus_utils.config import Profile

SUBJECTS = {"abstract_algebra": "stem", "anatomy": "stem", "world_religions": "humanities",
            "econometrics": "social_sciences", "marketing": "other", "philosophy": "humanities"}


def summary(variant: str, values: dict, subjects: dict[str, tuple[float, float]], n: int = 100) -> dict:
    accs = [a for a, _ in subjects.values()]
    tasks = {}
    for bench, (value, stderr) in values.items():
        metric = {"arc_challenge": "acc_norm", "hellaswag": "acc_norm", "mmlu": "acc", "truthfulqa_mc2": "mc2"}[bench]
        tasks[bench] = {"metric": metric, "value": value, "stderr": stderr, "n": n}
    if "mmlu" in tasks:
        tasks["mmlu"].update(value=sum(accs) / len(accs), weighted_value=0.5, n=n * len(subjects))
    present = [t["value"] for t in tasks.values()]
    return {"variant": variant, "model": f"/models/{variant}", "model_hash": "h" + variant, "settings": {},
            "tasks": tasks, "average": sum(present) / len(present),
            "mmlu_subjects": {s: {"acc": a, "stderr": se, "n": n, "category": SUBJECTS[s]} for s, (a, se) in subjects.items()}}


BASE = summary("base", {"arc_challenge": (0.30, 0.013), "hellaswag": (0.42, 0.005), "mmlu": (None, 0.004),
                        "truthfulqa_mc2": (0.40, 0.017)},
               {"abstract_algebra": (0.25, 0.04), "anatomy": (0.40, 0.04), "world_religions": (0.50, 0.04),
                "econometrics": (0.30, 0.04), "marketing": (0.60, 0.04), "philosophy": (0.45, 0.04)})
MERGED = summary("merged", {"arc_challenge": (0.33, 0.014), "hellaswag": (0.41, 0.005), "mmlu": (None, 0.004),
                            "truthfulqa_mc2": (0.44, 0.017)},
                 {"abstract_algebra": (0.35, 0.05), "anatomy": (0.41, 0.05), "world_religions": (0.40, 0.03),
                  "econometrics": (0.32, 0.04), "marketing": (0.70, 0.03), "philosophy": (0.44, 0.04)})


def make_profile(tmp_path, **analysis) -> Profile:
    return Profile.model_validate({
        "name": "antest", "paths": {"runs_dir": str(tmp_path / "runs"), "reports_dir": str(tmp_path / "reports"),
                                    "cache_dir": str(tmp_path / "cache")},
        "evaluate": {"variants": ["base", "merged", "adapter"]},
        "analysis": analysis,
    })


def write_eval(profile, summaries: list[dict], failed: dict | None = None):
    out = profile.run_dir("05_evaluate")
    out.mkdir(parents=True, exist_ok=True)
    for s in summaries:
        (out / f"{s['variant']}.json").write_text(json.dumps(s))
        (out / f"{s['variant']}.raw.json").write_text(json.dumps({"results": {}}))  # must be ignored
    variants = {s["variant"]: {"status": "ok"} for s in summaries}
    variants.update({v: {"status": "failed", "error": e} for v, e in (failed or {}).items()})
    (out / "evaluate_report.json").write_text(json.dumps({"variants": variants, "failed": sorted(failed or {})}))


def test_leaderboard_tables_match_inputs(tmp_path):
    profile = make_profile(tmp_path, published_results=True)
    write_eval(profile, [MERGED, BASE], failed={"adapter": "FileNotFoundError: no adapter"})
    produced = an.run_analysis(profile)
    tables = profile.report_dir("tables")
    frame = pd.read_csv(tables / "leaderboard.csv")
    ours = frame[frame["source"] == "this run"].set_index("variant")
    assert list(ours.index) == ["base", "merged", "adapter"]  # profile order, failed one last
    for s in (BASE, MERGED):
        row = ours.loc[s["variant"]]
        for bench, t in s["tasks"].items():
            assert row[bench] == pytest.approx(100 * t["value"])
            assert row[f"{bench}_stderr"] == pytest.approx(100 * t["stderr"])
        assert row["mmlu_weighted"] == pytest.approx(50.0)
        assert row["average"] == pytest.approx(100 * s["average"])
    assert ours.loc["adapter", "status"].startswith("failed: FileNotFoundError")
    paper = frame[frame["source"] == an.PUBLISHED_SOURCE].set_index("variant")
    assert paper.loc["Llama-2-13b (base)", "truthfulqa_mc2"] == 37.39
    assert len(paper) == len(an.PUBLISHED)

    md = (tables / "leaderboard.md").read_text()
    assert f"| base | this run | 30.00 ± 1.30 | 42.00 ± 0.50 | {100 * BASE['tasks']['mmlu']['value']:.2f} ± 0.40 |" in md
    assert "| adapter | this run | failed | failed |" in md
    assert "size-weighted mean over questions: base 50.00, merged 50.00." in md
    assert "| Platypus2-70B-instruct | paper (Lee et al. 2023) | 71.84 | 87.94 | 70.48 | 62.26 | 73.13 |" in md
    tex = (tables / "leaderboard.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "$30.00 \\pm 1.30$" in tex and "Llama-2-13b (base)" in tex and "Lee et al. 2023" in tex
    assert tex.count(" \\\\") == 1 + 3 + len(an.PUBLISHED)  # header + our 3 rows + paper rows
    assert produced["failed_variants"] == {"adapter": "FileNotFoundError: no adapter"}
    caption = (profile.report_dir("figures") / "leaderboard.txt").read_text()
    assert "base: ARC 30.00 ± 1.30" in caption
    for fmt in ("png", "pdf"):
        assert (profile.report_dir("figures") / f"leaderboard.{fmt}").stat().st_size > 1000


def test_mmlu_deltas_match_inputs(tmp_path):
    profile = make_profile(tmp_path)
    write_eval(profile, [BASE, MERGED])
    produced = an.run_analysis(profile)
    deltas = pd.read_csv(profile.report_dir("tables") / "mmlu_delta.csv")
    assert list(deltas["variant"].unique()) == ["merged"] and len(deltas) == len(SUBJECTS)
    assert list(deltas["delta"]) == sorted(deltas["delta"])  # sorted for the bar chart
    row = deltas.set_index("subject").loc["abstract_algebra"]
    assert row["delta"] == pytest.approx(10.0)
    assert row["combined_stderr"] == pytest.approx(100 * math.hypot(0.05, 0.04))
    assert not row["within_stderr"]  # 10 points > 6.4
    assert deltas.set_index("subject").loc["anatomy", "within_stderr"]  # 1 point < 6.4
    cats = pd.read_csv(profile.report_dir("tables") / "mmlu_delta_categories.csv").set_index("category")
    assert cats.loc["humanities", "delta"] == pytest.approx((-10.0 - 1.0) / 2)
    assert cats.loc["humanities", "subjects"] == 2
    assert cats.loc["humanities", "combined_stderr"] == pytest.approx(
        100 * math.sqrt(0.03 ** 2 + 0.04 ** 2 + 0.04 ** 2 + 0.04 ** 2) / 2)
    fig = profile.report_dir("figures")
    assert produced["figures"]["mmlu_delta_merged"] == [str(fig / f"mmlu_delta_merged.{e}") for e in ("png", "pdf", "txt")]
    caption = (fig / "mmlu_delta_merged.txt").read_text()
    assert "abstract_algebra: 25.00 -> 35.00, +10.00 ± 6.40" in caption
    assert "anatomy: 40.00 -> 41.00, +1.00 ± 6.40 (within s.e.)" in caption
    assert "humanities (2 subjects): -5.50" in caption
    assert "mmlu_delta_base" not in produced["figures"]  # the baseline is not compared with itself


def test_figures_and_tables_are_reproducible(tmp_path):
    profile = make_profile(tmp_path)
    write_eval(profile, [BASE, MERGED])
    an.run_analysis(profile)
    files = [profile.report_dir("tables") / "leaderboard.csv", profile.report_dir("tables") / "mmlu_delta.csv",
             profile.report_dir("figures") / "mmlu_delta_merged.png", profile.report_dir("figures") / "mmlu_delta_merged.pdf"]
    first = [p.read_bytes() for p in files]
    an.run_analysis(profile)
    assert [p.read_bytes() for p in files] == first


def test_nothing_run_yet(tmp_path):
    profile = make_profile(tmp_path)
    produced = an.run_analysis(profile)
    assert produced["variants"] == [] and "05_evaluate not run (no evaluation summaries)" in produced["notes"]
    assert set(produced["stages"].values()) == {an.NOT_RUN}
    md = (profile.report_dir("tables") / "leaderboard.md").read_text()
    assert "05_evaluate not run" in md
    assert pd.read_csv(profile.report_dir("tables") / "mmlu_delta.csv").empty
    assert (profile.report_dir("figures") / "leaderboard.png").is_file()
    assert (profile.run_dir("06_analysis") / "manifest.json").is_file()


def test_partial_runs_and_upstream_artifacts(tmp_path):
    profile = make_profile(tmp_path, baseline="base")
    only_two = summary("merged", {"arc_challenge": (0.5, 0.01), "truthfulqa_mc2": (0.3, 0.02)}, {"anatomy": (0.4, 0.04)})
    only_two["mmlu_subjects"] = {}
    write_eval(profile, [only_two])
    (profile.run_dir("05_evaluate") / "broken.json").write_text("{not json")  # skipped, not fatal
    cur = profile.run_dir("01_curate")
    cur.mkdir(parents=True)
    (cur / "curation_report.json").write_text(json.dumps({"rows_in": 1000, "rows_out": 900, "nested": {"x": 1}}))
    dec = profile.run_dir("02_decontaminate")
    dec.mkdir(parents=True)
    (dec / "contamination_table.csv").write_text(
        "data_source,benchmark,duplicate,gray_area,similar_but_different,removed\n"
        "math,mmlu,3,2,1,5\nmath,arc_challenge,1,0,0,1\nguanaco,mmlu,1,1,0,2\n")
    ft = profile.run_dir("03_finetune")
    ft.mkdir(parents=True)
    (ft / "metrics.json").write_text("{truncated")
    produced = an.run_analysis(profile)

    assert produced["variants"] == ["merged"]
    assert "baseline 'base' not evaluated: no MMLU deltas" in produced["notes"]
    assert not [k for k in produced["figures"] if k.startswith("mmlu_delta")]
    md = (profile.report_dir("tables") / "leaderboard.md").read_text()
    assert "| merged | this run | 50.00 ± 1.00 | not run | not run | 30.00 ± 2.00 | 40.00 (2 of 4) |" in md
    stages = produced["stages"]
    assert stages["01_curate"] == "ok (no manifest)"
    assert stages["02_decontaminate"] == "ok (no manifest)"
    assert stages["03_finetune"].startswith("unreadable: JSONDecodeError")
    assert stages["04_merge"] == an.NOT_RUN
    pipeline = pd.read_csv(profile.report_dir("tables") / "pipeline.csv").set_index("stage")
    assert pipeline.loc["01_curate", "details"] == "rows_in=1000; rows_out=900"
    assert "removed (all benchmarks)=8" in pipeline.loc["02_decontaminate", "details"]
    contamination = pd.read_csv(profile.report_dir("tables") / "contamination_by_benchmark.csv").set_index("benchmark")
    assert contamination.loc["mmlu", "removed"] == 7 and contamination.loc["mmlu", "duplicate"] == 4
    manifest = json.loads((profile.run_dir("06_analysis") / "manifest.json").read_text())
    assert str((cur / "curation_report.json").resolve()) in manifest["inputs"]
    assert str((profile.report_dir("tables") / "leaderboard.tex").resolve()) in manifest["outputs"]
