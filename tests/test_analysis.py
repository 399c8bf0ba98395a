"""06_analysis: tables, figures and the summary report from fabricated artifacts; partial runs."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pytest
from scipy.stats import norm

from platypus_utils.analysis.common import (
    KIND_FINETUNED,
    KIND_MERGED,
    KIND_OTHER,
    KIND_PARTNER,
    KIND_PARTNER_BASE,
    KIND_RELEASE,
    NOT_RUN,
    ROLE_MERGED_PARTNER,
    ROLE_PARTNER,
)
from platypus_utils.analysis.frames import Comparison, comparisons, load_summaries, merged_variants, runs_from_summaries
from platypus_utils.analysis.paired import PAIRED, UNPAIRED, StatsSettings, level, paired_delta_frame
from platypus_utils.analysis.references import drift_frame, reference_lines, release_frame
from platypus_utils.analysis.stage import compute_analysis, run_analysis, save_analysis, stage_figures
from platypus_utils.artifacts import StageRun, read_manifest
from platypus_utils.config import Profile
from platypus_utils.published import PUBLISHED, SOURCE_LABEL

SUBJECTS = {
    "abstract_algebra": "stem",
    "anatomy": "stem",
    "world_religions": "humanities",
    "econometrics": "social_sciences",
    "marketing": "other",
    "philosophy": "humanities",
}


def md_rows(text: str) -> list[list[str]]:
    """The cells of every pipe-table row in a Markdown text (header and body; padding stripped)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not set(line) <= set("|:- "):
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return rows


def has_row(text: str, *cells: str) -> bool:
    """Some table row holds `cells` side by side; a cell ending in "…" matches by prefix."""

    def same(got: str, want: str) -> bool:
        return got.startswith(want[:-1]) if want.endswith("…") else got == want

    return any(
        all(same(row[k + i], c) for i, c in enumerate(cells))
        for row in md_rows(text)
        for k in range(len(row) - len(cells) + 1)
    )


def summary(variant: str, values: dict, subjects: dict[str, tuple], n: int = 100) -> dict:
    """A 05_evaluate summary; a subject is (acc, stderr) or (acc, stderr, n)."""
    subjects = {s: (v + (n,))[:3] for s, v in subjects.items()}
    accs = [a for a, _, _ in subjects.values()]
    tasks = {}
    for bench, (value, stderr) in values.items():
        metric = {"arc_challenge": "acc_norm", "hellaswag": "acc_norm", "mmlu": "acc", "truthfulqa_mc2": "mc2"}[bench]
        tasks[bench] = {"metric": metric, "value": value, "stderr": stderr, "n": n}
    if "mmlu" in tasks:
        tasks["mmlu"].update(value=sum(accs) / len(accs), weighted_value=0.5, n=n * len(subjects))
    present = [t["value"] for t in tasks.values()]
    return {
        "variant": variant,
        "model": f"/models/{variant}",
        "model_hash": "h" + variant,
        "settings": {},
        "tasks": tasks,
        "average": sum(present) / len(present),
        "mmlu_subjects": {
            s: {"acc": a, "stderr": se, "n": k, "category": SUBJECTS[s]} for s, (a, se, k) in subjects.items()
        },
    }


BASE = summary(
    "base",
    {
        "arc_challenge": (0.30, 0.013),
        "hellaswag": (0.42, 0.005),
        "mmlu": (None, 0.004),
        "truthfulqa_mc2": (0.40, 0.017),
    },
    {
        "abstract_algebra": (0.25, 0.04),
        "anatomy": (0.40, 0.04),
        "world_religions": (0.50, 0.04),
        "econometrics": (0.30, 0.04),
        "marketing": (0.60, 0.04),
        "philosophy": (0.45, 0.04),
    },
)
MERGED = summary(
    "merged",
    {
        "arc_challenge": (0.33, 0.014),
        "hellaswag": (0.41, 0.005),
        "mmlu": (None, 0.004),
        "truthfulqa_mc2": (0.44, 0.017),
    },
    {
        "abstract_algebra": (0.35, 0.05),
        "anatomy": (0.41, 0.05),
        "world_religions": (0.40, 0.03),
        "econometrics": (0.32, 0.04),
        "marketing": (0.70, 0.03),
        "philosophy": (0.44, 0.04),
    },
)
ORCA = summary(
    "orca",
    {"arc_challenge": (0.50, 0.01), "hellaswag": (0.60, 0.01), "mmlu": (None, 0.004), "truthfulqa_mc2": (0.45, 0.02)},
    {
        "abstract_algebra": (0.30, 0.04),
        "anatomy": (0.50, 0.04),
        "world_religions": (0.55, 0.04),
        "econometrics": (0.30, 0.04),
        "marketing": (0.65, 0.04),
        "philosophy": (0.50, 0.04),
    },
)
ORCA_PLATYPUS = summary(
    "orca-platypus",
    {"arc_challenge": (0.56, 0.01), "hellaswag": (0.59, 0.01), "mmlu": (None, 0.004), "truthfulqa_mc2": (0.52, 0.02)},
    {
        "abstract_algebra": (0.40, 0.05, 300),
        "anatomy": (0.52, 0.05, 100),
        "world_religions": (0.50, 0.03),
        "econometrics": (0.40, 0.04),
        "marketing": (0.66, 0.03),
        "philosophy": (0.50, 0.04),
    },
)


def make_profile(tmp_path, variants=("base", "merged", "adapter"), partners=(), **analysis) -> Profile:
    return Profile.model_validate(
        {
            "name": "antest",
            "paths": {
                "runs_dir": str(tmp_path / "runs"),
                "reports_dir": str(tmp_path / "reports"),
                "cache_dir": str(tmp_path / "cache"),
            },
            "merge": {"partners": [{"name": p, "model": f"org/{p}"} for p in partners]},
            "evaluate": {"variants": list(variants)},
            "analysis": analysis,
        }
    )


def write_eval(profile, summaries: list[dict], failed: dict | None = None):
    out = profile.run_dir("05_evaluate")
    out.mkdir(parents=True, exist_ok=True)
    for s in summaries:
        (out / f"{s['variant']}.json").write_text(json.dumps(s))
        (out / f"{s['variant']}.raw.json").write_text(json.dumps({"results": {}}))  # must be ignored
    variants = {s["variant"]: {"status": "ok"} for s in summaries}
    variants.update({v: {"status": "failed", "error": e} for v, e in (failed or {}).items()})
    (out / "evaluate_report.json").write_text(json.dumps({"variants": variants, "failed": sorted(failed or {})}))


def write_stage(profile, stage: str, files: dict[Path, str]) -> None:
    """Files written as the stage's outputs, with its manifest (hashes), like a real stage does."""
    with StageRun(profile.run_dir(stage), stage, {}) as run:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            run.add_output(path)


@pytest.fixture(scope="module")
def basic_run(tmp_path_factory):
    """base + merged evaluated, adapter failed: one analysis shared by the tests that only read it."""
    profile = make_profile(tmp_path_factory.mktemp("basic"), published_results=True)
    write_eval(profile, [MERGED, BASE], failed={"adapter": "FileNotFoundError: no adapter"})
    return profile, run_analysis(profile)


def test_leaderboard_tables_match_inputs(basic_run):
    profile, produced = basic_run
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
    paper = frame[frame["source"] == SOURCE_LABEL].set_index("variant")
    assert paper.loc["Llama-2-13b (base)", "truthfulqa_mc2"] == 37.39
    assert len(paper) == len(PUBLISHED)

    md = (tables / "leaderboard.md").read_text()
    assert has_row(
        md, "base", "this run", "30.00 ± 1.30", "42.00 ± 0.50", f"{100 * BASE['tasks']['mmlu']['value']:.2f} ± 0.40"
    )
    assert has_row(md, "adapter", "this run", "failed", "failed")
    assert "size-weighted mean over questions: base 50.00, merged 50.00." in md
    assert has_row(md, "Platypus2-70B-instruct", "paper (Lee et al. 2023)", "71.84", "87.94", "70.48", "62.26", "73.13")
    assert "02_decontaminate not run (flagged_pairs.csv absent): no clean subset" in md  # and no clean rows
    assert md_rows(md)[0] == ["model", "source", "ARC", "HellaSwag", "MMLU", "TruthfulQA", "average"]
    tex = (tables / "leaderboard.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "$30.00 \\pm 1.30$" in tex and "Llama-2-13b (base)" in tex and "Lee et al. 2023" in tex
    assert tex.count(" \\\\") == 1 + 3 + len(PUBLISHED)  # header + our 3 rows + paper rows
    assert produced["failed_variants"] == {"adapter": "FileNotFoundError: no adapter"}
    caption = (profile.report_dir("figures") / "leaderboard.txt").read_text()
    assert "base: ARC 30.00 ± 1.30" in caption
    for fmt in ("png", "pdf"):
        assert (profile.report_dir("figures") / f"leaderboard.{fmt}").stat().st_size > 1000


def test_mmlu_deltas_without_samples_fall_back_to_the_unpaired_error(basic_run):
    profile, produced = basic_run
    deltas = pd.read_csv(profile.report_dir("tables") / "mmlu_delta.csv")
    assert list(deltas["comparison"].unique()) == ["merged vs base"] and len(deltas) == len(SUBJECTS)
    assert set(deltas["kind"]) == {KIND_FINETUNED}  # "merged" is the adapter folded into its own base
    assert list(deltas["delta"]) == sorted(deltas["delta"])  # sorted for the bar chart
    assert set(deltas["interval"]) == {UNPAIRED}  # no samples.jsonl: named as the fallback
    row = deltas.set_index("unit").loc["abstract_algebra"]
    se = 100 * math.hypot(0.05, 0.04)
    assert row["delta"] == pytest.approx(10.0) and row["se"] == pytest.approx(se)
    assert row["ci_high"] - row["delta"] == pytest.approx(1.959964 * se, rel=1e-5)
    assert row["p_value"] == pytest.approx(2 * norm.sf(10.0 / se))
    assert row["q_value"] == pytest.approx(
        min(
            1.0,
            min(
                sorted(deltas["p_value"])[k] * 6 / (k + 1)
                for k in range(sorted(deltas["p_value"]).index(row["p_value"]), 6)
            ),
        )
    )
    cats = pd.read_csv(profile.report_dir("tables") / "mmlu_delta_categories.csv").set_index("unit")
    assert list(cats.index) == ["stem", "humanities", "social_sciences", "other", "all"]
    assert cats.loc["humanities", "delta"] == pytest.approx((-10.0 - 1.0) / 2)
    assert cats.loc["humanities", "se"] == pytest.approx(100 * math.sqrt(0.03**2 + 0.04**2 + 0.04**2 + 0.04**2) / 2)
    assert cats.loc["all", "delta"] == pytest.approx(deltas["delta"].mean())
    assert cats.loc["all", "variant_score"] == pytest.approx(100 * MERGED["tasks"]["mmlu"]["value"])
    fig = profile.report_dir("figures")
    assert produced["figures"]["mmlu_delta_merged"] == [
        str(fig / f"mmlu_delta_merged.{e}") for e in ("png", "pdf", "txt")
    ]
    caption = (fig / "mmlu_delta_merged.txt").read_text()
    assert "UNPAIRED normal sqrt(se_a² + se_b²)" in caption
    assert f"abstract_algebra (stem): 25.00 -> 35.00, +10.00 [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]" in caption
    assert "merged vs base: no subject changes beyond chance at n = 600 questions over 6 subjects" in caption
    assert "mmlu_delta_base" not in produced["figures"]  # the baseline is not compared with itself
    heat = (fig / "mmlu_delta_heatmap.txt").read_text()
    assert "  abstract_algebra (stem): +10.00" in heat and "  anatomy (stem): +1.00" in heat


def samples(variant: str, scores: dict[str, list[float]], bench: str = "mmlu") -> list[dict]:
    """05_evaluate's samples.jsonl rows: per subject (or benchmark) the per-question 0/1 scores."""
    metric = {"mmlu": "acc", "arc_challenge": "acc_norm"}[bench]
    rows = []
    for unit, values in scores.items():
        task = f"platypus_mmlu_{unit}" if bench == "mmlu" else f"platypus_{unit}"
        rows += [
            {"variant": variant, "benchmark": bench, "task": task, "doc_id": k, metric: v, "doc": {"question": "q"}}
            for k, v in enumerate(values)
        ]
    return rows


def write_samples(profile, variant: str, rows: list[dict]) -> None:
    path = profile.run_dir("05_evaluate") / f"{variant}.samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def paired_pair(tmp_path):
    """base and tuned with per-question scores: anatomy 8 up / 0 down of 40, world_religions 1 up / 1 down."""
    base_s = {"anatomy": [0] * 8 + [1] * 12 + [0] * 20, "world_religions": [1, 0] + [1] * 18}
    tuned_s = {"anatomy": [1] * 8 + [1] * 12 + [0] * 20, "world_religions": [0, 1] + [1] * 18}
    profile = make_profile(tmp_path, variants=["base", "tuned"], formats=["pdf"])

    def summ(name, sc):
        return summary(name, {"mmlu": (None, 0.01)}, {s: (sum(v) / len(v), 0.05, len(v)) for s, v in sc.items()})

    write_eval(profile, [summ("base", base_s), summ("tuned", tuned_s)])
    write_samples(profile, "base", samples("base", base_s))
    write_samples(profile, "tuned", samples("tuned", tuned_s))
    return profile


def test_paired_statistics_from_logged_samples(tmp_path):
    profile = paired_pair(tmp_path)
    produced = run_analysis(profile)
    deltas = pd.read_csv(profile.report_dir("tables") / "mmlu_delta.csv").set_index("unit")
    anatomy = deltas.loc["anatomy"]
    assert anatomy["interval"] == PAIRED and anatomy["test"] == "McNemar exact"
    assert anatomy["delta"] == pytest.approx(20.0) and anatomy["n"] == 40
    assert (anatomy["discordant_b"], anatomy["discordant_c"]) == (8, 0)
    assert anatomy["p_value"] == pytest.approx(2 / 2**8)  # exact McNemar, 8 vs 0
    wr = deltas.loc["world_religions"]
    assert wr["p_value"] == pytest.approx(1.0) and wr["delta"] == pytest.approx(0.0)
    assert anatomy["q_value"] == pytest.approx(2 * (2 / 2**8))  # BH over the two subjects
    assert anatomy["significant"] and not wr["significant"]
    # the paired interval: the bootstrap of 40 differences (8 ones, 32 zeros) never goes below 0
    assert 0.0 <= anatomy["ci_low"] < 20.0 < anatomy["ci_high"] <= 45.0
    caption = (profile.report_dir("figures") / "mmlu_delta_tuned.txt").read_text()
    assert "tuned vs base: 1 of 2 subjects change beyond chance" in caption and "anatomy +20.0" in caption
    assert "UNPAIRED" not in caption and "paired bootstrap over questions" in caption
    cats = pd.read_csv(profile.report_dir("tables") / "mmlu_delta_categories.csv").set_index("unit")
    assert cats.loc["all", "delta"] == pytest.approx(10.0) and cats.loc["all", "interval"] == PAIRED
    assert cats.loc["all", "test"] == "sign-flip (stratified)"
    assert any(line.startswith("tuned vs base: STEM") for line in produced["power"])
    md = (profile.report_dir() / "summary.md").read_text()
    assert "What the sample size can show" in md and "questions a change of 5 points" in md.lower()
    pdf = (profile.report_dir("figures") / "mmlu_delta_tuned.pdf").read_bytes()
    assert b"/Subtype /Image" not in pdf and b"/FontFile2" in pdf  # vector, TrueType fonts embedded


def test_identical_runs_show_no_change_and_say_so(tmp_path):
    profile = paired_pair(tmp_path)
    (profile.run_dir("05_evaluate") / "tuned.samples.jsonl").write_bytes(
        (profile.run_dir("05_evaluate") / "base.samples.jsonl").read_bytes()
    )
    tuned = json.loads((profile.run_dir("05_evaluate") / "base.json").read_text())
    tuned["variant"] = "tuned"
    (profile.run_dir("05_evaluate") / "tuned.json").write_text(json.dumps(tuned))
    produced = run_analysis(profile)
    assert produced["verdicts"] == [
        "tuned vs base: no subject changes beyond chance at n = 60 questions over "
        "2 subjects (Benjamini-Hochberg, FDR 0.05)."
    ]
    assert "assumed discordance 0.20" in produced["power"][0]


def test_missing_subject_and_mismatched_settings_are_named(tmp_path):
    profile = paired_pair(tmp_path)
    ev = profile.run_dir("05_evaluate")
    tuned = json.loads((ev / "tuned.json").read_text())
    del tuned["mmlu_subjects"]["world_religions"]
    (ev / "tuned.json").write_text(json.dumps(tuned))
    runs = runs_from_summaries(ev, load_summaries(ev)[0])
    frame, notes = paired_delta_frame(runs, [Comparison("tuned", "base", KIND_OTHER)])
    assert list(level(frame, "subject")["unit"]) == ["anatomy"]
    assert notes == [
        "tuned vs base: 1 MMLU subject(s) only in base (world_religions): compared on the 1 common subjects"
    ]
    raw = {
        "mmlu": {
            "results": {"platypus_mmlu_anatomy": {}},
            "n-shot": {"platypus_mmlu_anatomy": 5},
            "versions": {"platypus_mmlu_anatomy": 1.0},
            "config": {"limit": None},
        }
    }
    (ev / "base.raw.json").write_text(json.dumps(raw))
    raw["mmlu"]["n-shot"]["platypus_mmlu_anatomy"] = 0
    (ev / "tuned.raw.json").write_text(json.dumps(raw))
    produced = run_analysis(profile)
    assert produced["notes"][-1].startswith(
        "tuned vs base: settings differ (platypus_mmlu_anatomy: num_fewshot 0 in "
        "tuned but 5 in base): comparison refused"
    ) or any("comparison refused" in n for n in produced["notes"])
    assert not [k for k in produced["figures"] if k.startswith("mmlu_delta_tuned")]


def test_comparisons_follow_the_variants_roles(tmp_path):
    profile = make_profile(tmp_path, partners=["orca", "stable"])
    report = {
        "models": {
            "merged": {"partner": None},
            "orca-platypus": {"partner": "orca"},
            "stable-platypus": {"partner": "stable"},
        }
    }
    merged = merged_variants(profile, report)
    assert merged == {"merged": None, "orca-platypus": "orca", "stable-platypus": "stable"}
    pairs, notes = comparisons(
        ["base", "adapter", "merged", "orca", "orca-platypus", "stable-platypus"], "base", merged
    )
    assert [(c.label, c.kind) for c in pairs] == [
        ("adapter vs base", KIND_FINETUNED),
        ("merged vs base", KIND_FINETUNED),
        ("orca vs base", KIND_PARTNER_BASE),
        ("orca-platypus vs base", KIND_MERGED),
        ("orca-platypus vs orca", KIND_PARTNER),
        ("stable-platypus vs base", KIND_MERGED),
    ]
    assert notes == [
        "partner 'stable' of 'stable-platypus' not evaluated: no merged-vs-partner comparison "
        "(add it to evaluate.variants)"
    ]
    pairs, _ = comparisons(["orca", "orca-platypus"], "base", merged)  # no baseline: only vs the partner
    assert [c.label for c in pairs] == ["orca-platypus vs orca"]


def test_partner_merge_categories_and_tradeoff_match_inputs(tmp_path):
    # PDF only: the PNG path is exercised by the other tests; this one checks the figures are vector
    profile = make_profile(
        tmp_path, variants=["base", "merged", "orca", "orca-platypus"], partners=["orca"], formats=["pdf"]
    )
    write_eval(profile, [BASE, MERGED, ORCA, ORCA_PLATYPUS])
    merge_dir = profile.run_dir("04_merge")
    merge_dir.mkdir(parents=True)
    (merge_dir / "merge_report.json").write_text(
        json.dumps(
            {
                "models": {
                    "merged": {
                        "method": "merge_and_unload",
                        "partner": None,
                        "verified": True,
                        "max_abs_logit_diff": 1e-4,
                    },
                    "orca-platypus": {
                        "method": "merge_and_unload",
                        "partner": "orca",
                        "verified": True,
                        "max_abs_logit_diff": 2e-4,
                    },
                }
            }
        )
    )
    produced = run_analysis(profile)
    tables, fig = profile.report_dir("tables"), profile.report_dir("figures")

    cats = pd.read_csv(tables / "mmlu_delta_categories.csv")
    vs_partner = cats[cats["comparison"] == "orca-platypus vs orca"].set_index("unit")
    assert vs_partner.loc["stem", "delta"] == pytest.approx((10.0 + 2.0) / 2)
    assert vs_partner.loc["stem", "se"] == pytest.approx(100 * math.sqrt(2 * (0.05**2 + 0.04**2)) / 2)
    assert vs_partner.loc["humanities", "delta"] == pytest.approx(-2.5)
    assert vs_partner.loc["stem", "kind"] == KIND_PARTNER
    md = (tables / "mmlu_delta_categories.md").read_text()
    lo, hi = (vs_partner.loc["stem", k] for k in ("ci_low", "ci_high"))
    assert has_row(md, "orca-platypus vs orca", f"+6.00 [{lo:+.1f}, {hi:+.1f}]")
    kinds = dict(zip(cats["comparison"], cats["kind"]))
    assert kinds == {
        "merged vs base": KIND_FINETUNED,
        "orca vs base": KIND_PARTNER_BASE,
        "orca-platypus vs base": KIND_MERGED,
        "orca-platypus vs orca": KIND_PARTNER,
    }
    for name in (
        "mmlu_delta_merged",
        "mmlu_delta_orca",
        "mmlu_delta_orca-platypus",
        "mmlu_delta_orca-platypus_vs_orca",
        "mmlu_delta_categories",
        "mmlu_delta_heatmap",
        "merge_tradeoff",
        "merged_vs_parts_orca-platypus",
    ):
        assert [Path(p).name for p in produced["figures"][name]] == [f"{name}.{e}" for e in ("pdf", "txt")]
    parts = (fig / "merged_vs_parts_orca-platypus.txt").read_text()
    assert "orca-platypus vs base:" in parts and "orca-platypus vs orca:" in parts and "orca vs base:" in parts
    assert f"  STEM: 40.00 -> 46.00, +6.00 [{lo:+.2f}, {hi:+.2f}]" in parts
    heat = (fig / "mmlu_delta_heatmap.txt").read_text()
    # columns: merged, orca, orca-platypus vs base, orca-platypus vs orca
    assert "  abstract_algebra (stem): +10.00 | +5.00 | +15.00 | +10.00" in heat
    for pdf in fig.glob("*.pdf"):  # vector: text and paths; the one raster allowed is the heatmap's colour bar
        assert pdf.read_bytes().count(b"/Subtype /Image") == (pdf.stem == "mmlu_delta_heatmap"), pdf.name
        assert b"/FontFile2" in pdf.read_bytes(), pdf.name  # fonts embedded (TrueType, pdf.fonttype 42)

    bench = pd.read_csv(tables / "benchmark_deltas.csv")
    arc = bench[(bench["comparison"] == "orca-platypus vs orca") & (bench["unit"] == "arc_challenge")].iloc[0]
    assert arc["delta"] == pytest.approx(6.0) and arc["se"] == pytest.approx(100 * math.hypot(0.01, 0.01))
    avg = bench[(bench["comparison"] == "orca-platypus vs orca") & (bench["unit"] == "average")].iloc[0]
    assert avg["delta"] == pytest.approx(100 * (ORCA_PLATYPUS["average"] - ORCA["average"]))
    trade = pd.read_csv(tables / "merge_tradeoff.csv").set_index("variant")
    assert trade.loc["orca-platypus", "others_mean"] == pytest.approx(100 * (0.56 + 0.59 + 0.52) / 3)
    assert trade.loc["orca-platypus", "mmlu"] == pytest.approx(100 * ORCA_PLATYPUS["tasks"]["mmlu"]["value"])
    assert trade.loc["orca-platypus", "role"] == ROLE_MERGED_PARTNER and trade.loc["orca-platypus", "partner"] == "orca"
    assert trade.loc["orca", "role"] == ROLE_PARTNER and trade.loc["merged", "method"] == "merge_and_unload"
    caption = (fig / "merge_tradeoff.txt").read_text()
    mmlu = 100 * ORCA_PLATYPUS["tasks"]["mmlu"]["value"]
    others_se = 100 * math.sqrt(0.01**2 + 0.01**2 + 0.02**2) / 3
    assert (
        f"orca-platypus (merged into partner, merge_and_unload into orca): MMLU {mmlu:.2f} ± 0.40, "
        f"others 55.67 ± {others_se:.2f} (ARC HellaSwag TruthfulQA)"
    ) in caption
    assert "orca-platypus vs orca: ARC 50.00 -> 56.00, +6.00 [+3.23, +8.77]" in caption
    assert produced["notes"] == [
        "02_decontaminate not run (flagged_pairs.csv absent): no clean subset; full scores only."
    ] + [
        f"{v}: no {v}.samples.jsonl (evaluate.log_samples off?): unpaired errors"
        for v in ("base", "merged", "orca", "orca-platypus")
    ]


def test_summary_links_every_artifact_and_key_numbers(tmp_path):
    profile = make_profile(tmp_path, variants=["base", "merged"], formats=["png"])
    figs, tabs = profile.report_dir("figures"), profile.report_dir("tables")
    write_stage(
        profile,
        "01_curate",
        {
            profile.run_dir("01_curate") / "curation_report.json": json.dumps(
                {
                    "totals": {
                        "loaded": 1000,
                        "malformed": 3,
                        "filtered": 7,
                        "exact_dup": 40,
                        "near_dup": 50,
                        "kept": 900,
                    },
                    "per_source": {"a": {}, "b": {}},
                }
            ),
            figs / "01_composition.png": "png",
            figs / "01_composition.pdf": "pdf",
            figs / "01_composition.txt": "Rows per source by curation outcome.\n  a 500\n",
            tabs / "composition.csv": "data_source,kept\na,500\nb,400\n",
            tabs / "composition.md": "| a |\n",
        },
    )
    write_stage(
        profile,
        "02_decontaminate",
        {
            profile.run_dir("02_decontaminate") / "decontamination_report.json": json.dumps(
                {
                    "train_rows": 900,
                    "flagged_rows": 12,
                    "removed_rows": 7,
                    "clean_rows": 893,
                    "pairs_by_category": {"duplicate": 4, "gray_area": 5, "similar_but_different": 3},
                }
            ),
            profile.run_dir("02_decontaminate")
            / "contamination_table.csv": "data_source,benchmark,removed\na,mmlu,7\n",
            tabs / "contamination_table.csv": "data_source,benchmark,removed\na,mmlu,7\n",
            figs / "02_contamination.png": "png",
            figs / "02_contamination.txt": "Flagged training rows.\n",
        },
    )
    write_stage(
        profile,
        "03_finetune",
        {
            profile.run_dir("03_finetune") / "metrics.json": json.dumps(
                {
                    "eval_loss_before": 2.0,
                    "eval_loss_after": 1.5,
                    "steps": 25,
                    "train_loss_history": [{"step": 1, "loss": 2.8}, {"step": 25, "loss": 1.6}],
                }
            ),
            figs / "03_loss_curve.png": "png",
            figs / "03_loss_curve.txt": "Loss curves.\n",
        },
    )
    (figs / "03_loss_curve.txt").write_text("Edited by hand.\n")  # no longer what 03 wrote
    write_eval(profile, [BASE, MERGED])
    (profile.report_dir() / "run_summary.json").write_text(
        json.dumps(
            {
                "stages": {
                    "03_finetune": {"status": "ran", "seconds": 12.5},
                    "04_merge": {"status": "failed", "error": "MergeError: boom"},
                }
            }
        )
    )
    produced = run_analysis(profile)

    md = (profile.report_dir() / "summary.md").read_text()
    for cells in (
        ("01_curate", "rows kept", "900"),
        ("01_curate", "exact duplicates removed", "40"),
        ("02_decontaminate", "leaks removed (rows)", "7"),
        ("02_decontaminate", "flagged pairs by category", "duplicate 4, gray_area 5, similar_but_different 3"),
        ("03_finetune", "held-out loss before → after", "2.0000 → 1.5000 (-0.5000)"),
        ("03_finetune", "train loss first → last logged", "2.8000 → 1.6000"),
        ("05_evaluate", "merged: leaderboard average", f"{100 * MERGED['average']:.2f}"),
        ("03_finetune", "ok"),
        ("04_merge", "failed"),
        ("base", "this run", "30.00 ± 1.30", "42.00 ± 0.50"),
        ("merged vs base", "fine-tuned vs base", "+5.50 \\[…"),
        ("a", "mmlu", "7"),
    ):
        assert has_row(md, *cells), cells
    for line in (
        "failed: MergeError: boom",
        "*Rows per source by curation outcome.*",
        "[PDF](figures/01_composition.pdf)",
        "![Benchmark contamination of the training data](figures/02_contamination.png)",
        "changed since 03_finetune wrote it: 03_loss_curve.txt",
    ):
        assert line in md, line
    assert produced["upstream"]["figure:01_composition"] == "ok"
    assert produced["upstream"]["figure:03_loss_curve"] == "changed since 03_finetune wrote it: 03_loss_curve.txt"
    assert produced["stages"]["04_merge"] == "failed"

    page = ET.fromstring((profile.report_dir() / "summary.html").read_text())  # well-formed
    targets = {unquote(e.get("href") or e.get("src")) for e in page.iter() if e.get("href") or e.get("src")}
    for target in targets:
        assert (profile.report_dir() / target).exists(), target
    linked = {(profile.report_dir() / t).resolve() for t in targets}
    for path in list(figs.iterdir()) + list(tabs.iterdir()):
        assert path.resolve() in linked, f"{path.name} not linked from summary.html"
    assert "Edited by hand." in "".join(page.itertext())  # captions with their numbers
    manifest = read_manifest(profile.run_dir("06_analysis"))  # paths absolute again
    assert str((figs / "01_composition.txt").resolve()) in manifest["inputs"]
    assert str((profile.run_dir("03_finetune") / "metrics.json").resolve()) in manifest["inputs"]
    assert str((profile.report_dir() / "run_summary.json").resolve()) not in manifest["inputs"]
    assert str((profile.report_dir() / "summary.html").resolve()) in manifest["outputs"]


def test_figures_and_tables_are_reproducible(basic_run):
    profile, _ = basic_run
    files = [
        profile.report_dir("tables") / "leaderboard.csv",
        profile.report_dir("tables") / "mmlu_delta.csv",
        profile.report_dir("figures") / "mmlu_delta_merged.png",
        profile.report_dir("figures") / "mmlu_delta_merged.pdf",
        profile.report_dir("figures") / "mmlu_delta_heatmap.pdf",
        profile.report_dir("figures") / "merge_tradeoff.pdf",
        profile.report_dir() / "summary.md",
        profile.report_dir() / "summary.html",
    ]
    first = [p.read_bytes() for p in files]
    run_analysis(profile)
    assert [p.read_bytes() for p in files] == first


def test_nothing_run_yet(tmp_path):
    profile = make_profile(tmp_path, formats=["png"])
    produced = run_analysis(profile)
    assert produced["variants"] == [] and "05_evaluate not run (no evaluation summaries)" in produced["notes"]
    assert set(produced["stages"].values()) == {NOT_RUN}
    assert set(produced["upstream"].values()) == {NOT_RUN}
    md = (profile.report_dir("tables") / "leaderboard.md").read_text()
    assert "05_evaluate not run" in md
    assert pd.read_csv(profile.report_dir("tables") / "mmlu_delta.csv").empty
    assert (profile.report_dir("figures") / "leaderboard.png").is_file()
    assert sorted(p.stem for p in profile.report_dir("figures").glob("*.png")) == ["clean_subset", "leaderboard"]
    assert (
        "05_evaluate not run: no scores, so no clean subset."
        in (profile.report_dir("figures") / "clean_subset.txt").read_text()
    )
    summary_md = (profile.report_dir() / "summary.md").read_text()
    for stage in ("01_curate", "02_decontaminate", "03_finetune", "04_merge", "05_evaluate"):
        assert has_row(summary_md, stage, "not run")
    assert "### Fine-tuning loss curves (03_finetune)\n\nnot run." in summary_md
    assert "### Merge trade-off: MMLU against the other benchmarks (06_analysis)\n\nnot drawn" in summary_md
    ET.fromstring((profile.report_dir() / "summary.html").read_text())
    assert (profile.run_dir("06_analysis") / "manifest.json").is_file()


def test_stale_figures_of_an_earlier_analysis_are_removed(tmp_path):
    profile = make_profile(tmp_path, formats=["png"])
    write_eval(profile, [BASE, MERGED])
    run_analysis(profile)
    figs = profile.report_dir("figures")
    (figs / "mmlu_delta_heatmap.txt").write_text("annotated by hand\n")  # edited: must survive
    (profile.run_dir("05_evaluate") / "merged.json").unlink()  # merged no longer evaluated
    produced = run_analysis(profile)
    assert not (figs / "mmlu_delta_merged.png").exists() and not (figs / "merge_tradeoff.txt").exists()
    assert (figs / "mmlu_delta_heatmap.txt").read_text() == "annotated by hand\n"
    note = next(n for n in produced["notes"] if n.startswith("removed figures and tables"))
    assert "mmlu_delta_merged.png" in note and "mmlu_delta_heatmap.png" in note
    summary_md = (profile.report_dir() / "summary.md").read_text()
    assert "## Other files in the report folders" in summary_md and "figures/mmlu_delta_heatmap.txt" in summary_md


def test_partial_runs_and_upstream_artifacts(tmp_path):
    profile = make_profile(tmp_path, baseline="base", formats=["png"])
    only_two = summary(
        "merged", {"arc_challenge": (0.5, 0.01), "truthfulqa_mc2": (0.3, 0.02)}, {"anatomy": (0.4, 0.04)}
    )
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
        "math,mmlu,3,2,1,5\nmath,arc_challenge,1,0,0,1\nguanaco,mmlu,1,1,0,2\n"
    )
    ft = profile.run_dir("03_finetune")
    ft.mkdir(parents=True)
    (ft / "metrics.json").write_text("{truncated")
    (profile.run_dir("04_merge")).mkdir(parents=True)
    (profile.run_dir("04_merge") / "merge_report.json").write_text("[]")  # not an object: ignored
    produced = run_analysis(profile)

    assert produced["variants"] == ["merged"]
    assert "baseline 'base' not evaluated: no MMLU deltas against it" in produced["notes"]
    assert not [k for k in produced["figures"] if k.startswith("mmlu_delta")]
    assert "merge_tradeoff" not in produced["figures"]  # merged has no MMLU
    md = (profile.report_dir("tables") / "leaderboard.md").read_text()
    assert has_row(md, "merged", "this run", "50.00 ± 1.00", "not run", "not run", "30.00 ± 2.00", "40.00 (2 of 4)")
    stages = produced["stages"]
    assert stages["01_curate"] == "ok (no manifest)"
    assert stages["02_decontaminate"] == "ok (no manifest)"
    assert stages["03_finetune"].startswith("unreadable: JSONDecodeError")
    assert stages["04_merge"] == "ok (no manifest)"
    pipeline = pd.read_csv(profile.report_dir("tables") / "pipeline.csv").set_index("stage")
    assert pipeline.loc["01_curate", "details"] == "rows_in=1000; rows_out=900"
    assert "removed (all benchmarks)=8" in pipeline.loc["02_decontaminate", "details"]
    contamination = pd.read_csv(profile.report_dir("tables") / "contamination_by_benchmark.csv").set_index("benchmark")
    assert contamination.loc["mmlu", "removed"] == 7 and contamination.loc["mmlu", "duplicate"] == 4
    summary_md = (profile.report_dir() / "summary.md").read_text()
    assert has_row(summary_md, "03_finetune", "metrics.json", "unreadable: JSONDecodeError…")
    assert has_row(summary_md, "merged: leaderboard average", "40.00 (over 2 of 4)")
    manifest = read_manifest(profile.run_dir("06_analysis"))  # paths absolute again
    assert str((cur / "curation_report.json").resolve()) in manifest["inputs"]
    assert str((profile.report_dir("tables") / "leaderboard.tex").resolve()) in manifest["outputs"]


# ---------------------------------------------------------------- released models as references (issue 20)
def test_published_numbers_have_one_home_with_their_source(tmp_path):
    from platypus_utils import published
    from platypus_utils.config import ProfileError, load_profile

    assert PUBLISHED is published.PUBLISHED and SOURCE_LABEL == published.SOURCE_LABEL
    assert set(published.PUBLISHED) == {
        "Platypus2-70B-instruct",
        "Camel-Platypus2-70B",
        "OpenOrca-Platypus2-13B",
        "Stable-Platypus2-13B",
        "Llama-2-13b",
    }
    for row in published.PUBLISHED.values():
        assert set(row.values) == set(published.BENCHMARKS)
        assert row.average == pytest.approx(sum(row.values.values()) / 4, abs=0.006)  # published rounded
        assert "2308.07317" in row.source and "b281b09" in row.harness and row.model.count("/") == 1
    assert published.PUBLISHED["Stable-Platypus2-13B"].values["truthfulqa_mc2"] == 52.52
    profile = tmp_path / "p.yaml"
    profile.write_text(
        "evaluate:\n  variants: [base, merged]\n  references:\n"
        "    - {name: rel, model: org/rel, compare_to: merged, published: Stable-Platypus2-7B}\n"
    )
    with pytest.raises(ProfileError, match=r"evaluate\.references\.0\.published.*Stable-Platypus2-7B"):
        load_profile(profile)
    profile.write_text(profile.read_text().replace("Stable-Platypus2-7B", "Stable-Platypus2-13B"))
    assert load_profile(profile).evaluate.references[0].published == "Stable-Platypus2-13B"


def eval_run(name: str, scores: dict[tuple[str, str], list[float]], stderr: float = 0.02, **summary_fields):
    """An EvalRun with per-question scores per (benchmark, subject) and a summary made from them."""
    from platypus_utils.lmeval_io import SAMPLE_COLUMNS, EvalRun

    rows = [(b, s, k, v) for (b, s), values in scores.items() for k, v in enumerate(values)]
    tasks, subjects = {}, {}
    for (bench, subject), values in scores.items():
        mean = sum(values) / len(values)
        if bench == "mmlu":
            subjects[subject] = {"acc": mean, "stderr": stderr, "n": len(values), "category": SUBJECTS[subject]}
        else:
            tasks[bench] = {"metric": "m", "value": mean, "stderr": stderr, "n": len(values)}
    if subjects:
        accs = [s["acc"] for s in subjects.values()]
        tasks["mmlu"] = {"metric": "acc", "value": sum(accs) / len(accs), "stderr": stderr, "n": len(rows)}
    summary = {"variant": name, "model": f"org/{name}", "model_hash": "h" + name, "tasks": tasks}
    summary.update(mmlu_subjects=subjects, settings={}, **summary_fields)
    return EvalRun(name, "memory", summary, {}, pd.DataFrame(rows, columns=SAMPLE_COLUMNS))


RELEASE_SCORES = {  # the released model: its answers per question
    ("arc_challenge", ""): [0] * 5 + [1] * 3 + [0] * 12,
    ("hellaswag", ""): [1, 0, 1, 1, 0, 1],
    ("mmlu", "anatomy"): [1, 0, 0, 0],
    ("mmlu", "world_religions"): [1, 0],
    ("truthfulqa_mc2", ""): [0.5, 0.6, 0.5, 0.7],
}
REPRO_SCORES = {  # this run's variant on the same questions: ARC 5 up 0 down, HellaSwag the same, ...
    ("arc_challenge", ""): [1] * 5 + [1] * 3 + [0] * 12,
    ("hellaswag", ""): [1, 0, 1, 1, 0, 1],
    ("mmlu", "anatomy"): [1, 1, 0, 0],
    ("mmlu", "world_religions"): [1, 0],
    ("truthfulqa_mc2", ""): [0.6, 0.7, 0.5, 0.8],
}


def test_reproduction_vs_release_is_paired_from_the_samples():
    runs = {"repro": eval_run("repro", REPRO_SCORES), "repro-released": eval_run("repro-released", RELEASE_SCORES)}
    refs = {"repro-released": {"model": "org/x", "compare_to": "repro", "published": None}}
    frame, notes = release_frame(runs, refs, StatsSettings(n_boot=500))
    assert notes == []
    by = frame.set_index("benchmark")
    assert list(by.index) == ["arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2", "average"]
    assert set(frame["kind"]) == {KIND_RELEASE} and set(frame["interval"]) == {PAIRED}
    assert set(frame["comparison"]) == {"repro vs repro-released"}
    arc = by.loc["arc_challenge"]
    assert arc["delta"] == pytest.approx(25.0) and arc["n"] == 20 and arc["test"] == "McNemar exact"
    assert arc["p_value"] == pytest.approx(2 / 2**5)  # exact McNemar, 5 vs 0
    assert (arc["this_score"], arc["against_score"]) == (pytest.approx(40.0), pytest.approx(15.0))
    assert 0.0 <= arc["ci_low"] < 25.0 < arc["ci_high"]  # paired: the differences are never negative
    assert by.loc["hellaswag", "delta"] == 0.0 and by.loc["hellaswag", "p_value"] == 1.0
    assert by.loc["mmlu", "delta"] == pytest.approx((25.0 + 0.0) / 2)  # mean over subjects, as the leaderboard
    assert by.loc["truthfulqa_mc2", "delta"] == pytest.approx(7.5) and by.loc["truthfulqa_mc2", "test"] == "sign-flip"
    assert by.loc["average", "delta"] == pytest.approx((25.0 + 0.0 + 12.5 + 7.5) / 4)
    assert by.loc["average", "test"] == "sign-flip (weighted)"
    # not evaluated, or settings that differ: no comparison, a note
    frame, notes = release_frame({"repro": runs["repro"]}, refs)
    assert frame.empty and notes == [
        "repro vs repro-released (reproduction vs release): not compared, repro-released not evaluated"
    ]


def test_harness_drift_is_unpaired_against_the_published_row():
    from platypus_utils.published import PUBLISHED

    values = {"arc_challenge": 0.60, "hellaswag": 0.80, "mmlu": 0.58, "truthfulqa_mc2": 0.50}
    ses = {"arc_challenge": 0.014, "hellaswag": 0.004, "mmlu": 0.0035, "truthfulqa_mc2": 0.015}
    summary_ = {
        "variant": "rel",
        "model": "garage-bAInd/Stable-Platypus2-13B",
        "tasks": {b: {"metric": "m", "value": v, "stderr": ses[b], "n": 100} for b, v in values.items()},
        "settings": {
            "lm_eval": "0.4.13",
            "dtype": "bfloat16",
            "batch_size": "auto",
            "tasks": {"arc_challenge": {"num_fewshot": 25, "limit": 5}, "mmlu": {"num_fewshot": 3, "limit": None}},
        },
    }
    from platypus_utils.lmeval_io import EvalRun

    runs = {"rel": EvalRun("rel", "memory", summary_)}
    refs = {
        "rel": {"model": "garage-bAInd/Stable-Platypus2-13B", "compare_to": None, "published": "Stable-Platypus2-13B"},
        "tiny": {"model": "embedded:smollm2-135m-instruct", "compare_to": None, "published": None},
    }
    frame, notes = drift_frame(runs, refs)
    row = PUBLISHED["Stable-Platypus2-13B"]
    by = frame.set_index("benchmark")
    assert set(frame["kind"]) == {"harness drift"} and set(frame["interval"]) == {UNPAIRED}
    assert set(frame["comparison"]) == {"rel vs published Stable-Platypus2-13B"}
    arc = by.loc["arc_challenge"]
    assert arc["delta"] == pytest.approx(60.0 - 62.71) and arc["se"] == pytest.approx(1.4)
    assert arc["ci_high"] - arc["delta"] == pytest.approx(1.959964 * 1.4, rel=1e-5)
    assert arc["p_value"] == pytest.approx(2 * norm.sf(2.71 / 1.4))
    assert "limit 5: a subset, not the full test set" in arc["note"]
    assert by.loc["mmlu", "note"] == "3-shot here, 5-shot published"
    avg = by.loc["average"]
    assert avg["this_score"] == pytest.approx(62.0) and avg["against_score"] == row.average
    assert avg["se"] == pytest.approx(100 * math.sqrt(sum(s * s for s in ses.values())) / 4)
    assert len(notes) == 1 and "harness drift of rel: here lm-eval 0.4.13, hf, bfloat16, batch size auto" in notes[0]
    assert "b281b09" in notes[0] and "2308.07317" in notes[0]  # the other side: harness and source
    lines = reference_lines(frame, refs)
    assert lines[0].startswith("rel vs published Stable-Platypus2-13B (harness drift, unpaired): average 62.00 vs")
    assert lines[1] == "harness drift: no published numbers exist for tiny (embedded:smollm2-135m-instruct)."


def test_references_stand_beside_the_merges_in_the_tables_and_summary(tmp_path):
    """A demo-sized run with two released models evaluated as references: one the release of "merged"
    with a published row, one the release of the base without one."""
    profile = Profile.model_validate(
        {
            "name": "refs",
            "paths": {"runs_dir": str(tmp_path / "runs"), "reports_dir": str(tmp_path / "reports")},
            "evaluate": {
                "variants": ["base", "merged"],
                "references": [
                    {"name": "merged-released", "model": "org/m", "compare_to": "merged", "published": "Llama-2-13b"},
                    {"name": "base-released", "model": "embedded:smollm2-135m-instruct", "compare_to": "base"},
                ],
            },
            "analysis": {"formats": ["png"], "n_bootstrap": 200},
        }
    )
    runs = {
        "base": eval_run("base", RELEASE_SCORES),
        "merged": eval_run("merged", REPRO_SCORES),
        "merged-released": eval_run("merged-released", RELEASE_SCORES, kind="reference"),
        "base-released": eval_run("base-released", RELEASE_SCORES, kind="reference"),
    }
    runs["base-released"].summary["model_hash"] = runs["base"].summary["model_hash"]
    write_eval(profile, [r.summary for r in runs.values()])
    for name, run in runs.items():
        rows = [
            {
                "task": f"platypus_mmlu_{r.subject}" if r.benchmark == "mmlu" else f"platypus_{r.benchmark}",
                "doc_id": r.doc_id,
                ("acc_norm" if r.benchmark in ("arc_challenge", "hellaswag") else "acc"): r.score,
            }
            for r in run.samples.itertuples()
        ]
        write_samples(profile, name, rows)
    produced = run_analysis(profile)
    tables = profile.report_dir("tables")
    board = pd.read_csv(tables / "leaderboard.csv")
    assert board[["variant", "kind"]].values.tolist() == [
        ["base", "variant"],
        ["merged", "variant"],
        ["merged-released", "reference"],
        ["base-released", "reference"],
    ]
    md = (tables / "leaderboard.md").read_text()
    assert has_row(md, "merged", "this run", "40.00 ± 2.00")
    assert has_row(md, "merged-released", "this run (reference)", "15.00 ± 2.00")
    assert "reference: a released model evaluated in this run as it is" in md
    # the references are not compared with the baseline among the merges: they have their own comparisons
    deltas = pd.read_csv(tables / "mmlu_delta.csv")
    assert set(deltas["comparison"]) == {"merged vs base"}
    refs = pd.read_csv(tables / "references.csv")
    assert refs.groupby(["comparison", "kind"]).size().to_dict() == {
        ("base vs base-released", "reproduction vs release"): 5,
        ("merged vs merged-released", "reproduction vs release"): 5,
        ("merged-released vs published Llama-2-13b", "harness drift"): 5,
    }
    same = refs[refs["comparison"] == "base vs base-released"]
    assert (same["delta"] == 0).all() and same["note"].str.contains("same weights").all()
    assert "one evaluation, 0 by construction" in next(r for r in produced["references"] if "base vs" in r)
    summary_md = (profile.report_dir() / "summary.md").read_text()
    assert "## Released models: reproduction vs release, and harness drift" in summary_md
    assert "merged-released vs published Llama-2-13b (harness drift, unpaired): average" in summary_md
    assert "harness drift: no published numbers exist for base-released" in summary_md
    assert any(
        line.startswith("merged vs merged-released (reproduction vs release, paired") for line in produced["references"]
    )
    assert (tables / "references.tex").read_text().count("\\toprule") == 1


def test_summary_says_when_no_reference_is_evaluated(basic_run):
    profile, produced = basic_run
    assert produced["references"] == [
        "No released model evaluated as a reference (evaluate.references): no reproduction-vs-release and "
        "no harness drift comparison."
    ]
    assert "No released model evaluated as a reference" in (profile.report_dir() / "summary.md").read_text()


def test_training_seeds_show_their_spread_beside_one_runs_error(tmp_path):
    """finetune.seeds: 06 tabulates the merge of each seed (the profile's seed is `merged`), per benchmark
    and the average: mean, sample sd between seeds, range, and one run's standard error; the summary says
    whether the spread is larger than that error."""
    profile = Profile.model_validate(
        {
            "name": "seeds",
            "seed": 1,
            "paths": {"runs_dir": str(tmp_path / "runs"), "reports_dir": str(tmp_path / "reports")},
            "finetune": {"seeds": [2, 3]},
            "evaluate": {"variants": ["base", "merged"]},
        }
    )
    assert profile.evaluate.variants == ["base", "merged", "merged-seed2", "merged-seed3"]  # evaluated beside it
    subjects = {"abstract_algebra": (0.3, 0.05)}
    arc = {"merged": 0.50, "merged-seed2": 0.54, "merged-seed3": 0.58}
    write_eval(
        profile,
        [summary("base", {"arc_challenge": (0.45, 0.01), "mmlu": (0.3, 0.05)}, subjects)]
        + [summary(v, {"arc_challenge": (a, 0.01), "mmlu": (0.3, 0.05)}, subjects) for v, a in arc.items()],
    )
    produced = run_analysis(profile)
    frame = pd.read_csv(profile.report_dir("tables") / "seed_spread.csv").set_index("benchmark")
    assert frame.at["ARC", "seeds"] == 3 and frame.at["ARC", "mean"] == pytest.approx(54.0)
    assert frame.at["ARC", "sd"] == pytest.approx(4.0)  # 50, 54, 58: sample sd 4 points
    assert frame.at["ARC", "range"] == pytest.approx(8.0) and frame.at["ARC", "run_stderr"] == pytest.approx(1.0)
    assert frame.at["ARC", "seed 1"] == pytest.approx(50.0) and frame.at["ARC", "seed 3"] == pytest.approx(58.0)
    assert frame.at["MMLU", "sd"] == pytest.approx(0.0)
    assert "seed spread is larger than it" in produced["seeds"][0] and "within it" in produced["seeds"][1]
    text = (profile.report_dir() / "summary.md").read_text()
    assert "## Training seeds" in text and "seed_spread.csv" in text
    # without finetune.seeds: no table, no section
    one_seed = make_profile(tmp_path / "none")
    write_eval(one_seed, [BASE, MERGED])
    assert "seeds" not in run_analysis(one_seed)
    assert not (one_seed.report_dir("tables") / "seed_spread.csv").exists()


def test_the_save_step_writes_what_the_steps_computed(tmp_path):
    """save_analysis writes the frames and figures it is given and recomputes nothing (notebook 06 saves what
    its kernel shows): a leaderboard cut to one row and a caption changed after the steps are what the files
    hold; run_analysis composes the same steps and saves the same figures."""
    profile = make_profile(tmp_path, formats=["png"])
    write_eval(profile, [BASE, MERGED])
    result = compute_analysis(profile)
    figures = stage_figures(profile, result)
    assert [f.name for f in figures if f.figure is None] == []
    result.board = result.board[result.board["variant"] == "base"]
    figures[-1].caption = "as drawn in the kernel"
    produced = save_analysis(profile, result, figures, {"notebook_s": 1.5})
    assert list(pd.read_csv(profile.report_dir("tables") / "leaderboard.csv")["variant"]) == ["base"]
    assert (profile.report_dir("figures") / f"{figures[-1].name}.txt").read_text() == "as drawn in the kernel\n"
    manifest = read_manifest(profile.run_dir("06_analysis"))
    assert manifest["timings"]["notebook_s"] == 1.5 and manifest["metrics"]["comparisons"] == len(result.pairs) == 1
    assert produced["comparisons"] == [{"comparison": "merged vs base", "kind": "fine-tuned vs base"}]
    assert sorted(run_analysis(profile)["figures"]) == sorted(produced["figures"]) == sorted(f.name for f in figures)


def test_figure_legends_clear_the_x_label_and_no_change_spans_a_point(tmp_path):
    """Under a short figure (two subjects) the legend sits below the x-axis label, not over it (an offset in
    axes fractions put it there); and changes that are all zero span ±1 point on an axis labelled in
    points, not matplotlib's ±0.05, which reads as fractions."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    profile = paired_pair(tmp_path)
    eval_dir = profile.run_dir("05_evaluate")
    (eval_dir / "tuned.samples.jsonl").write_bytes((eval_dir / "base.samples.jsonl").read_bytes())
    tuned = json.loads((eval_dir / "base.json").read_text())
    (eval_dir / "tuned.json").write_text(json.dumps(tuned | {"variant": "tuned"}))
    figures = {f.name: f.figure for f in stage_figures(profile, compute_analysis(profile))}
    for name in ("mmlu_delta_tuned", "mmlu_delta_categories"):
        fig = figures[name]
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        ax = fig.axes[0]
        renderer = canvas.get_renderer()
        legend, label = ax.get_legend().get_window_extent(renderer), ax.xaxis.label.get_window_extent(renderer)
        ticks = ax.xaxis.get_tightbbox(renderer)
        assert legend.y1 <= label.y0 and legend.y1 <= ticks.y0, name
        lo, hi = ax.get_xlim()
        assert lo <= -1 and hi >= 1 and "points" in ax.get_xlabel(), (name, lo, hi)
