"""Stage 06_analysis: the steps composed - `run_analysis(profile)` for the runner and notebook 06, and
`analyse(specs, ...)` for `platypus analyse` on any lm-eval output folders.

Reads (every input optional; a stage that has not run shows as "not run", a failed variant as
"failed", and nothing raises because an upstream artifact is absent or unreadable): 05_evaluate's
summaries, logged samples and settings (`<variant>.json`, `.samples.jsonl`, `.raw.json`), 04_merge's
merge_report.json, 02_decontaminate's flagged_pairs.csv (the clean subset), and what 01-03 wrote.

Comparisons: fine-tuned vs base ("adapter", "merged"), merged vs base and merged vs partner, partner vs
base; those whose lm-eval settings (few-shot, task version, limit) differ are refused and noted.
Released models evaluated as references (evaluate.references) stand beside the variants in the leaderboard
and get their own two comparisons (references.py): this run's variant vs the release (paired) and the
release vs its published numbers (harness drift, unpaired).
Statistics: paired.py; clean subset: clean.py.

Writes to reports/<profile>/tables/:
  leaderboard.{csv,md,tex}  - every variant, then every reference (a released model evaluated here,
                              marked "reference"), and the paper's numbers with analysis.published_results,
                              full scores ± standard error, and a clean row per variant (score on the
                              items 02 did not flag, with its item count) when 02 ran and 05 logged samples
  clean_subset.{csv,md,tex} - per variant, benchmark and MMLU subject: the score on the full test set,
                              the clean subset and each no-<category> subset, with item counts and the gap
  mmlu_delta.csv            - per comparison and subject: the change, its interval, p, q and whether it
                              survives the FDR correction
  mmlu_delta_categories.{csv,md,tex} - the same per lm-eval category and over all subjects
  benchmark_deltas.csv      - per comparison and benchmark
  merge_tradeoff.csv        - per variant: MMLU against the mean of the other three benchmarks
  references.{csv,md,tex}   - per released model, per benchmark and the average: reproduction vs release
                              (paired) and harness drift (unpaired); notes where a comparison is impossible
  seed_spread.{csv,md}      - with finetune.seeds: per benchmark and the average, each training seed's merge
                              score, their mean, sd between seeds and range, beside one run's standard error
  pipeline.{csv,md}         - status and headline numbers of every stage
to reports/<profile>/figures/ (each as PNG + PDF and a .txt caption holding the numbers shown):
  leaderboard, clean_subset, mmlu_delta_<variant>[_vs_<reference>], mmlu_delta_categories,
  mmlu_delta_heatmap, merged_vs_parts_<merged variant>, merge_tradeoff
and reports/<profile>/summary.{md,html} (summary.py), and runs/<profile>/06_analysis/analysis_report.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from .. import layout
from ..artifacts import StageRun, read_manifest, sha256_path, write_json, write_text
from ..lmeval_io import EvalRun, settings_mismatches
from ..plotting import save_figure
from .captions import (
    category_caption,
    clean_caption,
    heatmap_caption,
    leaderboard_caption,
    subject_caption,
    tradeoff_caption,
)
from .clean import CLEAN_COLUMNS, load_clean_subset
from .common import ROLE_MERGED_BASE, ROLE_MERGED_PARTNER, STAGE, read_json, safe_name
from .figures import (
    category_delta_figure,
    clean_subset_figure,
    delta_heatmap,
    leaderboard_figure,
    merge_tradeoff_figure,
    merged_vs_parts_figure,
    subject_delta_figure,
)
from .frames import (
    Comparison,
    comparisons,
    leaderboard_frame,
    load_runs,
    load_summaries,
    merged_variants,
    reference_info,
    runs_from_summaries,
    tradeoff_frame,
)
from .paired import StatsSettings, level, paired_delta_frame, power_lines, verdict
from .references import reference_frame, reference_lines, write_reference_tables
from .seeds import seed_lines, seed_spread_frame, write_seed_tables
from .setups import no_common_task, ran_units, run_setups
from .summary import analyse_summary, write_summary
from .tables import (
    NO_COMPARISON,
    write_category_tables,
    write_clean_tables,
    write_leaderboard,
    write_pipeline_tables,
)
from .upstream import key_numbers, pipeline_status, upstream_artifacts


class Outputs:
    """Where a run writes (tables/, figures/, formats) and what it produced: `produced` holds tables and
    figures by name, the artifact list the summary walks (with the reason for each one not drawn), notes."""

    def __init__(self, tables: Path, figures: Path, formats, **extra) -> None:
        self.tables, self.figures, self.formats = Path(tables), Path(figures), list(formats)
        self.produced: dict[str, Any] = {"tables": {}, "figures": {}, "notes": [], "artifacts": [], **extra}

    def register(self, kind: str, name: str, title: str, paths: list[Path]) -> None:
        self.produced["tables" if kind == "table" else "figures"][name] = [str(p) for p in paths]
        self.produced["artifacts"].append(
            {
                "stage": STAGE,
                "kind": kind,
                "name": name,
                "title": title,
                "status": "ok",
                "files": [str(p) for p in paths],
            }
        )

    def figure(self, name: str, title: str, fig, caption: str) -> None:
        """The save step of one figure: figures/<name>.<format> and .txt, registered."""
        self.register("figure", name, title, save_figure(fig, self.figures / name, caption, self.formats))

    def absent(self, kind: str, name: str, title: str, why: str) -> None:
        self.produced["artifacts"].append(
            {"stage": STAGE, "kind": kind, "name": name, "title": title, "status": why, "files": []}
        )


def _refuse_mismatched(
    runs: dict[str, EvalRun], pairs: list[Comparison], force: bool, notes: list[str]
) -> list[Comparison]:
    """Comparisons whose variants ran with the same few-shot count, task version and limit; the others are
    dropped with the reason in `notes` (kept, with the reason noted, when `force`)."""
    kept = []
    for c in pairs:
        diff = settings_mismatches(runs[c.variant], runs[c.reference])
        if diff:
            head = f"{c.label}: settings differ ({'; '.join(diff[:4])}" + (" ..." if len(diff) > 4 else "") + ")"
            notes.append(head + (": compared anyway (--force)" if force else ": comparison refused (use --force)"))
            if not force:
                continue
        kept.append(c)
    return kept


def _figure_name(c: Comparison, baseline: str) -> str:
    return f"mmlu_delta_{safe_name(c.variant)}" + ("" if c.reference == baseline else f"_vs_{safe_name(c.reference)}")


def write_comparisons(
    runs: dict[str, EvalRun],
    pairs: list[Comparison],
    st: StatsSettings,
    out: Outputs,
    baseline: str,
    merged: dict[str, str | None],
    empty_why: str = NO_COMPARISON,
) -> pd.DataFrame:
    """The paired tables and figures of every comparison; returns the delta frame. Adds to `out.produced`:
    notes (missing subjects, fallbacks), verdicts (what survives the FDR) and power lines. `empty_why`:
    why there is no MMLU comparison, said in the tables and for the figures not drawn."""
    produced, tables = out.produced, out.tables
    frame, notes = paired_delta_frame(runs, pairs, st)
    produced["notes"] += notes
    subjects = level(frame, "subject")
    out.register(
        "table",
        "mmlu_delta",
        "MMLU change per subject, every comparison",
        [write_text(tables / "mmlu_delta.csv", subjects.to_csv(index=False))],
    )
    out.register(
        "table",
        "mmlu_delta_categories",
        "MMLU change per category, every comparison",
        write_category_tables(frame, tables, st, empty_why),
    )
    out.register(
        "table",
        "benchmark_deltas",
        "Change per benchmark, every comparison",
        [write_text(tables / "benchmark_deltas.csv", level(frame, "benchmark").to_csv(index=False))],
    )
    produced["verdicts"] = [verdict(frame, c.label, st) for c in pairs if c.label in set(subjects["comparison"])]
    produced["power"] = power_lines(frame, st)
    if subjects.empty:
        why = f"not drawn: no MMLU comparison ({empty_why.removeprefix('No comparison: ').rstrip('.')})"
        out.absent("figure", "mmlu_delta_categories", "MMLU change per category", why)
        out.absent("figure", "mmlu_delta_heatmap", "MMLU change per subject across comparisons", why)
    else:
        write_comparison_figures(frame, pairs, st, out, baseline, merged)
    return frame


def write_comparison_figures(
    frame: pd.DataFrame, pairs: list[Comparison], st: StatsSettings, out: Outputs, baseline: str, merged: dict
) -> None:
    """Categories and heatmap across comparisons, each comparison's subjects, each merged model against its parts."""
    power = out.produced["power"]
    comps = list(dict.fromkeys(level(frame, "subject")["comparison"]))
    out.figure(
        "mmlu_delta_categories",
        "MMLU change per category",
        category_delta_figure(frame, comps, st=st),
        category_caption(frame, comps, st, power),
    )
    out.figure(
        "mmlu_delta_heatmap",
        "MMLU change per subject across comparisons",
        delta_heatmap(frame),
        heatmap_caption(frame, st),
    )
    for c in (c for c in pairs if c.label in comps):
        out.figure(
            _figure_name(c, baseline),
            f"MMLU change per subject: {c.label}",
            subject_delta_figure(frame, c.label, st=st),
            subject_caption(frame, c.label, st, out.produced["notes"]),
        )
    for variant, partner in merged.items():
        base = baseline if f"{variant} vs {baseline}" in comps else None
        parts = [f"{variant} vs {p}" for p in (base, partner) if p]
        if partner and any(p in comps for p in parts):
            drawn = [p for p in parts + [f"{partner} vs {baseline}"] if p in comps]
            out.figure(
                f"merged_vs_parts_{safe_name(variant)}",
                f"MMLU per category: {variant} against its parts",
                merged_vs_parts_figure(frame, variant, base, partner, st=st),
                category_caption(frame, drawn, st, power),
            )


def _remove_stale(previous: Any, produced: dict, report_root: Path) -> list[str]:
    """Delete what an earlier 06 run wrote into the report folders and this run does not write (say
    mmlu_delta_<v>.* of a variant no longer evaluated), so no stale figure sits beside fresh ones.
    Only files whose content is still what 06 recorded: anything edited since is left alone."""
    if not isinstance(previous, dict):
        return []
    now = {
        str(Path(p).resolve()) for group in ("tables", "figures") for paths in produced[group].values() for p in paths
    }
    folders = [str((report_root / kind).resolve()) for kind in ("tables", "figures")]
    removed = []
    for path, digest in sorted(previous.items()):
        f = Path(path)
        if path in now or str(f.parent) not in folders or not f.is_file():
            continue
        if sha256_path(f) == digest:
            f.unlink()
            removed.append(f.name)
    return removed


def write_leaderboard_step(out: Outputs, frame: pd.DataFrame, clean_why: str = "") -> None:
    out.register(
        "table",
        "leaderboard",
        "Leaderboard: every variant on the four benchmarks",
        write_leaderboard(frame, out.tables, clean_why),
    )
    out.register(
        "figure",
        "leaderboard",
        "Leaderboard scores per benchmark",
        save_figure(leaderboard_figure(frame), out.figures / "leaderboard", leaderboard_caption(frame), out.formats),
    )


def write_clean_step(out: Outputs, clean: pd.DataFrame, info: dict, confidence: float = 0.95) -> None:
    """clean_subset tables and figure; the figure says why when there is nothing to draw."""
    caption = clean_caption(clean, info.get("why", ""), info.get("notes", []), confidence)
    out.produced["clean_subset"] = info
    out.produced["notes"] += [n for n in [info.get("why", "")] + info.get("notes", []) if n]
    out.register(
        "table",
        "clean_subset",
        "Scores on the full test set and on the clean subset",
        write_clean_tables(clean, out.tables, caption),
    )
    out.register(
        "figure",
        "clean_subset",
        "Clean subset minus full score, per benchmark and MMLU subject",
        save_figure(
            clean_subset_figure(clean, why=info.get("why", ""), confidence=confidence),
            out.figures / "clean_subset",
            caption,
            out.formats,
        ),
    )


def write_tradeoff_step(
    out: Outputs,
    summaries: dict,
    deltas: pd.DataFrame,
    baseline: str,
    merged: dict,
    merge_report: dict | None,
    st: StatsSettings,
) -> None:
    trade = tradeoff_frame(summaries, baseline, merged, merge_report)
    out.register(
        "table",
        "merge_tradeoff",
        "MMLU against the other benchmarks, per variant",
        [write_text(out.tables / "merge_tradeoff.csv", trade.to_csv(index=False))],
    )
    title = "Merge trade-off: MMLU against the other benchmarks"
    if trade["role"].isin([ROLE_MERGED_BASE, ROLE_MERGED_PARTNER]).any():
        out.register(
            "figure",
            "merge_tradeoff",
            title,
            save_figure(
                merge_tradeoff_figure(trade, deltas),
                out.figures / "merge_tradeoff",
                tradeoff_caption(trade, deltas, st),
                out.formats,
            ),
        )
    else:
        why = "not drawn: no merged variant evaluated on MMLU and another benchmark"
        out.produced["notes"].append(f"merge trade-off {why}")
        out.absent("figure", "merge_tradeoff", title, why)


def write_reference_step(
    out: Outputs, runs: dict[str, EvalRun], refs: dict[str, dict], st: StatsSettings
) -> pd.DataFrame:
    """references.{csv,md,tex}: reproduction vs release (paired) and harness drift (unpaired) of every
    released model; `produced["references"]` holds the summary's sentences, `reference_notes` the notes
    (the summary shows both in its released-models section)."""
    frame, notes = reference_frame(runs, refs, st)
    out.produced["references"] = reference_lines(frame, refs)
    out.produced["reference_notes"] = notes
    out.register(
        "table",
        "references",
        "Released models: reproduction vs release, and harness drift",
        write_reference_tables(frame, out.produced["references"] + notes, out.tables, st),
    )
    return frame


def write_seed_step(out: Outputs, board: pd.DataFrame, profile) -> pd.DataFrame | None:
    """seed_spread.{csv,md} when the profile trains several seeds (finetune.seeds); `produced["seeds"]`
    holds the summary's sentences. None (nothing written) without finetune.seeds."""
    variants = layout.seed_variants(profile)
    if not variants:
        return None
    frame = seed_spread_frame(board, variants)
    out.produced["seeds"] = seed_lines(frame, variants)
    out.register(
        "table",
        "seed_spread",
        "Training seeds: spread of the merge into the base",
        write_seed_tables(frame, out.produced["seeds"], out.tables),
    )
    return frame


def write_pipeline_step(out: Outputs, profile) -> list[Path]:
    """pipeline tables and the contamination per benchmark; returns the files read."""
    stages, contamination, read = pipeline_status(profile)
    out.produced["stages"] = dict(zip(stages["stage"], stages["status"]))
    out.produced["pipeline"] = json.loads(stages.to_json(orient="records"))
    out.register("table", "pipeline", "Pipeline status", write_pipeline_tables(stages, out.tables))
    if contamination is not None:
        out.register(
            "table",
            "contamination_by_benchmark",
            "Contamination per benchmark (all sources)",
            [write_text(out.tables / "contamination_by_benchmark.csv", contamination.to_csv(index=False))],
        )
    return read


def load_step(profile) -> dict[str, Any]:
    """What 04 and 05 left: summaries, failed variants, runs (with samples), the merge report and
    merged -> partner, the files read, and notes."""
    eval_dir = profile.run_dir(layout.EVALUATE)
    refs = reference_info(profile)
    summaries, failed, read = load_summaries(eval_dir, list(profile.evaluate.variants) + list(refs))
    merge_path = layout.artifact(profile, layout.MERGE_REPORT)
    merge_report, _ = read_json(merge_path) if merge_path.is_file() else (None, None)
    merge_report = merge_report if isinstance(merge_report, dict) else None
    runs = runs_from_summaries(eval_dir, summaries)
    notes = [] if summaries else ["05_evaluate not run (no evaluation summaries)"]
    read += [Path(r.source) / f"{v}.samples.jsonl" for v, r in runs.items() if r.has_samples]
    read += [merge_path] if merge_report is not None else []
    return {
        "summaries": summaries,
        "failed": failed,
        "runs": runs,
        "merge_report": merge_report,
        "merged": merged_variants(profile, merge_report),
        "references": refs,
        "read": read,
        "notes": notes,
    }


def compare_step(out: Outputs, profile, data: dict, st: StatsSettings) -> tuple[pd.DataFrame, int]:
    """The comparisons the evaluated variants allow, refused where settings differ; their tables and figures."""
    baseline = profile.analysis.baseline
    variants = [v for v in data["summaries"] if v not in data.get("references", {})]  # references: references.py
    pairs, pair_notes = comparisons(variants, baseline, data["merged"])
    out.produced["notes"] += pair_notes
    out.produced["comparisons"] = [{"comparison": c.label, "kind": c.kind} for c in pairs]
    if data["summaries"] and baseline not in data["summaries"]:
        out.produced["notes"].append(f"baseline {baseline!r} not evaluated: no MMLU deltas against it")
    out.produced["notes"] += [n for r in data["runs"].values() for n in r.notes]
    pairs = _refuse_mismatched(data["runs"], pairs, False, out.produced["notes"])
    return write_comparisons(data["runs"], pairs, st, out, baseline, data["merged"]), len(pairs)


def _record(run: StageRun, out: Outputs, inputs: list[Path], report: Path) -> None:
    for path in dict.fromkeys(Path(p) for p in inputs):
        run.add_input(path)
    for group in ("tables", "figures"):
        for paths in out.produced[group].values():
            for p in paths:
                run.add_output(p)
    for p in out.produced["summary"] + [report]:
        run.add_output(p)


def run_analysis(profile) -> dict:
    """Write the tables, figures and summary report; returns what was produced and what was missing."""
    cfg, st = profile.analysis, StatsSettings.from_profile(profile)
    out = Outputs(profile.report_dir("tables"), profile.report_dir("figures"), cfg.formats)
    previous = (read_manifest(profile.run_dir(STAGE)) or {}).get("outputs")
    with StageRun(profile.run_dir(STAGE), STAGE, profile.fingerprint_params(STAGE)) as run:
        upstream = upstream_artifacts(profile)
        out.produced["artifacts"] += upstream
        out.produced["upstream"] = {f"{a['kind']}:{a['name']}": a["status"] for a in upstream}
        data = load_step(profile)
        out.produced.update(variants=list(data["summaries"]), failed_variants=data["failed"])
        out.produced["notes"] += data["notes"]
        flagged_path = layout.artifact(profile, layout.FLAGGED_PAIRS)
        clean, info = load_clean_subset(data["runs"], flagged_path)
        refs = data["references"]
        setups = run_setups(data["runs"])
        board = leaderboard_frame(data["summaries"], data["failed"], cfg.published_results, clean, refs, setups)
        write_leaderboard_step(out, board, info["why"])
        write_seed_step(out, board, profile)
        write_clean_step(out, clean, info, st.confidence)
        deltas, n_pairs = compare_step(out, profile, data, st)
        released = write_reference_step(out, data["runs"], refs, st)
        variants = {v: s for v, s in data["summaries"].items() if v not in refs}
        write_tradeoff_step(out, variants, deltas, cfg.baseline, data["merged"], data["merge_report"], st)
        stage_files = write_pipeline_step(out, profile)
        removed = _remove_stale(previous, out.produced, profile.report_dir())
        if removed:
            out.produced["notes"].append(
                "removed figures and tables of an earlier analysis that this one does not "
                "produce: " + ", ".join(removed)
            )
        out.produced["key_numbers"], number_files = key_numbers(profile, data["summaries"], data["failed"])
        out.produced["summary"] = [str(p) for p in write_summary(profile, out.produced, board, deltas, clean, released)]
        report = write_json(profile.run_dir(STAGE) / "analysis_report.json", out.produced)
        inputs = data["read"] + stage_files + number_files + ([flagged_path] if flagged_path.is_file() else [])
        _record(run, out, inputs + [Path(f) for a in upstream for f in a["files"]], report)
        run.metrics.update(
            {
                "variants": len(data["summaries"]),
                "failed_variants": len(data["failed"]),
                "comparisons": n_pairs,
                "figures": sum(len(v) for v in out.produced["figures"].values()),
            }
        )
        out.produced["report"] = str(report)
    return out.produced


def _comparable(runs: dict[str, EvalRun], pairs: list[Comparison], notes: list[str]) -> list[Comparison]:
    """The comparisons whose two runs scored some task in common; each other one explained in `notes`."""
    kept = []
    for c in pairs:
        why = no_common_task(runs[c.variant], runs[c.reference])
        if why:
            notes.append(why + ": nothing to compare")
        else:
            kept.append(c)
    return kept


def _no_mmlu_why(runs: dict[str, EvalRun], pairs: list[Comparison], asked: int) -> str:
    """Why `platypus analyse` has no MMLU comparison, for its tables, figures and summary."""
    if not asked:
        return "No comparison: give at least two inputs, one of them the --baseline."
    if not pairs:
        return "No comparison: no two compared runs scored a task in common (see the notes)."
    shared = [ran_units(runs[c.variant]) & ran_units(runs[c.reference]) for c in pairs]
    if not any(bench == "mmlu" for units in shared for bench, _ in units):
        return "No comparison on MMLU: no compared pair of runs scored an MMLU subject in common."
    return NO_COMPARISON


def analyse(
    specs: list[str],
    baseline: str,
    out: str | Path,
    force: bool = False,
    formats=("png", "pdf"),
    st: StatsSettings | None = None,
    merged: dict[str, str | None] | None = None,
    flagged_pairs: str | Path | None = None,
    results_files: list[str] | tuple = (),
) -> dict:
    """`platypus analyse`: the leaderboard and the paired per-subject tables and figures from lm-eval
    output folders (or 05_evaluate folders) into out/{tables,figures}/ and out/summary.md. Every variant
    is compared with `baseline`, and each merged variant in `merged` with its partner; with `flagged_pairs`
    (a stage-02 flagged_pairs.csv) the clean-subset table and figure too. Comparisons whose settings
    differ are refused (ValueError) unless `force`; those of runs with no task in common are explained.
    `results_files`: which results file of a folder holding several (lmeval_io.choose_results)."""
    st = st or StatsSettings()
    out = Path(out)
    runs, notes = load_runs(specs, results_files)
    if baseline not in runs:
        raise ValueError(f"--baseline {baseline!r} is not among the inputs ({', '.join(runs)})")
    merged = merged or {}
    refs = reference_info(None, {n: r.summary for n, r in runs.items()})  # 05 folders mark their references
    asked, pair_notes = comparisons([n for n in runs if n not in refs], baseline, merged)
    outputs = Outputs(
        out / "tables", out / "figures", formats, variants=list(runs), comparisons=[c.label for c in asked]
    )
    outputs.produced["notes"] += notes + pair_notes
    pairs = _comparable(runs, asked, outputs.produced["notes"])
    refused: list[str] = []
    pairs = _refuse_mismatched(runs, pairs, force, refused)
    outputs.produced["notes"] += refused
    if refused and not force:
        raise ValueError(
            "mismatched evaluation settings; a paired comparison needs the same few-shot count, "
            "task version and limit (pass --force to compare anyway):\n  " + "\n  ".join(refused)
        )
    clean, info = (
        load_clean_subset(runs, flagged_pairs)
        if flagged_pairs
        else (pd.DataFrame(columns=CLEAN_COLUMNS), {"why": "", "notes": []})
    )
    board = leaderboard_frame(
        {n: r.summary for n, r in runs.items()}, clean=clean, references=refs, setups=run_setups(runs)
    )
    write_leaderboard_step(outputs, board, info["why"])
    if flagged_pairs:
        write_clean_step(outputs, clean, info, st.confidence)
    why = _no_mmlu_why(runs, pairs, len(asked))
    frame = write_comparisons(runs, pairs, st, outputs, baseline, merged, why)
    outputs.produced.update(compared=[c.label for c in pairs], no_comparison=why)
    if refs:
        write_reference_step(outputs, runs, refs, st)
    produced = outputs.produced
    produced["summary"] = str(write_text(out / "summary.md", analyse_summary(runs, produced, frame, st)))
    return produced


__all__ = [
    "Outputs",
    "run_analysis",
    "analyse",
    "load_step",
    "compare_step",
    "write_comparisons",
    "write_leaderboard_step",
    "write_clean_step",
    "write_tradeoff_step",
    "write_reference_step",
    "write_pipeline_step",
]
