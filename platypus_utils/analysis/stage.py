"""Stage 06_analysis: `run_analysis(profile)` for the runner, and `analyse(specs, ...)` for `platypus analyse`
on any lm-eval output folders.

`compute_analysis` runs every step into an `Analysis`, `stage_figures` draws every figure from it, and
`save_analysis` writes those frames and figures as they are, with the manifest; notebook 06 runs the same
steps one per cell. Every input is optional: a stage that has not run shows as "not run", a failed variant
as "failed", and nothing raises because an upstream artifact is absent or unreadable. Comparisons whose
lm-eval settings (few-shot, task version, limit) differ are refused and noted. Statistics: paired.py;
released models: references.py; clean subset: clean.py.

Writes to reports/<profile>/tables/:
  leaderboard.{csv,md,tex}  - every variant, then every reference (a released model evaluated here), and
                              the paper's numbers with analysis.published_results; full scores ± standard
                              error and, when 02 ran and 05 logged samples, a clean row per variant
  clean_subset.{csv,md,tex} - per variant, benchmark and MMLU subject: scores on the full test set, the
                              clean subset and each no-<category> subset, with item counts and the gap
  mmlu_delta.csv            - per comparison and subject: the change, its interval, p, q and significance
  mmlu_delta_categories.{csv,md,tex} - the same per lm-eval category and over all subjects
  benchmark_deltas.csv      - per comparison and benchmark
  merge_tradeoff.csv        - per variant: MMLU against the mean of the other three benchmarks
  references.{csv,md,tex}   - per released model: reproduction vs release (paired), harness drift (unpaired)
  contamination_by_benchmark.csv - when 02 ran: its contamination table summed per benchmark
  seed_spread.{csv,md}      - with finetune.seeds: each training seed's merge score and their spread
  pipeline.{csv,md}         - status and headline numbers of every stage
to reports/<profile>/figures/ (each as PNG + PDF and a .txt caption holding the numbers shown):
  leaderboard, clean_subset, mmlu_delta_<variant>[_vs_<reference>], mmlu_delta_categories,
  mmlu_delta_heatmap, merged_vs_parts_<merged variant>, merge_tradeoff
and reports/<profile>/summary.{md,html} (summary.py), and runs/<profile>/06_analysis/analysis_report.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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
from .tables import NO_COMPARISON, write_category_tables, write_clean_tables, write_leaderboard, write_pipeline_tables
from .upstream import key_numbers, pipeline_status, upstream_artifacts


class Outputs:
    """Where a run writes (tables/, figures/, formats) and what it `produced` (files by name, artifacts, notes)."""

    def __init__(self, tables: Path, figures: Path, formats, **extra) -> None:
        self.tables, self.figures, self.formats = Path(tables), Path(figures), list(formats)
        self.produced: dict[str, Any] = {"tables": {}, "figures": {}, "notes": [], "artifacts": [], **extra}

    def _add(self, kind: str, name: str, title: str, status: str, paths) -> None:
        entry = {"stage": STAGE, "kind": kind, "name": name, "title": title, "status": status}
        self.produced["artifacts"].append({**entry, "files": [str(p) for p in paths]})

    def register(self, kind: str, name: str, title: str, paths: list[Path]) -> None:
        self.produced["tables" if kind == "table" else "figures"][name] = [str(p) for p in paths]
        self._add(kind, name, title, "ok", paths)

    def csv(self, name: str, title: str, frame: pd.DataFrame) -> None:
        self.register("table", name, title, [write_text(self.tables / f"{name}.csv", frame.to_csv(index=False))])

    def save(self, f: StageFigure) -> None:
        """A figure as drawn (figures/<name>.<format> and its .txt caption), or the reason it was not drawn."""
        if f.figure is None:
            return self._add("figure", f.name, f.title, f.why, [])
        self.register("figure", f.name, f.title, save_figure(f.figure, self.figures / f.name, f.caption, self.formats))


@dataclass
class StageFigure:
    """One figure: file name (figures/<name>.*), title, caption, and the figure - or None, with `why` not."""

    name: str
    title: str
    figure: Any = None
    caption: str = ""
    why: str = ""


CATEGORIES_FIGURE = ("mmlu_delta_categories", "MMLU change per category")
HEATMAP_FIGURE = ("mmlu_delta_heatmap", "MMLU change per subject across comparisons")


def _refuse_mismatched(
    runs: dict[str, EvalRun], pairs: list[Comparison], force: bool, notes: list[str]
) -> list[Comparison]:
    """Comparisons whose runs share few-shot count, task version and limit; others noted, dropped unless `force`."""
    diffs = {c: settings_mismatches(runs[c.variant], runs[c.reference]) for c in pairs}
    how = "compared anyway (--force)" if force else "comparison refused (use --force)"
    for c, diff in ((c, d) for c, d in diffs.items() if d):
        notes.append(f"{c.label}: settings differ ({'; '.join(diff[:4])}{' ...' if len(diff) > 4 else ''}): {how}")
    return [c for c in pairs if force or not diffs[c]]


def write_delta_tables(
    out: Outputs, frame: pd.DataFrame, pairs: list[Comparison], st: StatsSettings, empty_why: str = NO_COMPARISON
) -> None:
    """mmlu_delta.csv, mmlu_delta_categories.{csv,md,tex} and benchmark_deltas.csv; verdicts and power lines."""
    out.csv("mmlu_delta", "MMLU change per subject, every comparison", level(frame, "subject"))
    tables = write_category_tables(frame, out.tables, st, empty_why)
    out.register("table", "mmlu_delta_categories", "MMLU change per category, every comparison", tables)
    out.csv("benchmark_deltas", "Change per benchmark, every comparison", level(frame, "benchmark"))
    subjects = set(level(frame, "subject")["comparison"])
    out.produced["verdicts"] = [verdict(frame, c.label, st) for c in pairs if c.label in subjects]
    out.produced["power"] = power_lines(frame, st)


def comparison_figures(
    frame: pd.DataFrame,
    pairs: list[Comparison],
    st: StatsSettings,
    baseline: str,
    merged: dict,
    notes: list[str] = (),
    empty_why: str = NO_COMPARISON,
) -> list[StageFigure]:
    """Categories and heatmap, each comparison's subjects, each merged model against its parts; without an MMLU
    comparison the first two, not drawn, with `empty_why`. `notes`: for the subject captions."""
    comps = list(dict.fromkeys(level(frame, "subject")["comparison"]))
    if not comps:
        why = f"not drawn: no MMLU comparison ({empty_why.removeprefix('No comparison: ').rstrip('.')})"
        return [StageFigure(*CATEGORIES_FIGURE, why=why), StageFigure(*HEATMAP_FIGURE, why=why)]
    power = power_lines(frame, st)
    categories = category_delta_figure(frame, comps, st=st), category_caption(frame, comps, st, power)
    figures = [
        StageFigure(*CATEGORIES_FIGURE, *categories),
        StageFigure(*HEATMAP_FIGURE, delta_heatmap(frame), heatmap_caption(frame, st)),
    ]
    for c in (c for c in pairs if c.label in comps):
        drawn = subject_delta_figure(frame, c.label, st=st), subject_caption(frame, c.label, st, list(notes))
        against = "" if c.reference == baseline else f"_vs_{safe_name(c.reference)}"
        name = f"mmlu_delta_{safe_name(c.variant)}{against}"
        figures.append(StageFigure(name, f"MMLU change per subject: {c.label}", *drawn))
    for variant, partner in merged.items():
        base = baseline if f"{variant} vs {baseline}" in comps else None
        parts = [f"{variant} vs {p}" for p in (base, partner) if p]
        if partner and any(p in comps for p in parts):
            shown = [p for p in parts + [f"{partner} vs {baseline}"] if p in comps]
            drawn = merged_vs_parts_figure(frame, variant, base, partner, st=st)
            title = f"MMLU per category: {variant} against its parts"
            caption = category_caption(frame, shown, st, power)
            figures.append(StageFigure(f"merged_vs_parts_{safe_name(variant)}", title, drawn, caption))
    return figures


def _remove_stale(previous: Any, produced: dict, report_root: Path) -> list[str]:
    """Delete files an earlier 06 run wrote into the report folders that this run does not write, when unedited."""
    if not isinstance(previous, dict):
        return []
    written = (p for group in ("tables", "figures") for paths in produced[group].values() for p in paths)
    now = {str(Path(p).resolve()) for p in written}
    folders = [str((report_root / kind).resolve()) for kind in ("tables", "figures")]
    ours = [(Path(p), d) for p, d in sorted(previous.items()) if p not in now and str(Path(p).parent) in folders]
    stale = [f for f, digest in ours if f.is_file() and sha256_path(f) == digest]
    for f in stale:
        f.unlink()
    return [f.name for f in stale]


def board_figure(board: pd.DataFrame) -> StageFigure:
    return StageFigure(
        "leaderboard", "Leaderboard scores per benchmark", leaderboard_figure(board), leaderboard_caption(board)
    )


def clean_figure(clean: pd.DataFrame, info: dict, confidence: float = 0.95) -> StageFigure:
    why, title = info.get("why", ""), "Clean subset minus full score, per benchmark and MMLU subject"
    drawn = clean_subset_figure(clean, why=why, confidence=confidence)
    return StageFigure("clean_subset", title, drawn, clean_caption(clean, why, info.get("notes", []), confidence))


def write_leaderboard_step(out: Outputs, board: pd.DataFrame, clean_why: str, figure: StageFigure) -> None:
    tables = write_leaderboard(board, out.tables, clean_why)
    out.register("table", "leaderboard", "Leaderboard: every variant on the four benchmarks", tables)
    out.save(figure)


def write_clean_step(out: Outputs, clean: pd.DataFrame, info: dict, figure: StageFigure) -> None:
    out.produced["clean_subset"] = info
    tables = write_clean_tables(clean, out.tables, figure.caption)
    out.register("table", "clean_subset", "Scores on the full test set and on the clean subset", tables)
    out.save(figure)


def write_reference_step(
    out: Outputs, frame: pd.DataFrame, notes: list[str], refs: dict[str, dict], st: StatsSettings
) -> None:
    """references.{csv,md,tex}; the summary's sentences in `produced["references"]`, notes in "reference_notes"."""
    out.produced["references"] = reference_lines(frame, refs)
    out.produced["reference_notes"] = notes
    tables = write_reference_tables(frame, out.produced["references"] + notes, out.tables, st)
    out.register("table", "references", "Released models: reproduction vs release, and harness drift", tables)


def load_step(profile) -> dict[str, Any]:
    """What 04 and 05 left: summaries, failed, runs, merge report, merged -> partner, references, files read, notes."""
    eval_dir = profile.run_dir(layout.EVALUATE)
    refs = reference_info(profile)
    summaries, failed, read = load_summaries(eval_dir, list(profile.evaluate.variants) + list(refs))
    merge_path = layout.artifact(profile, layout.MERGE_REPORT)
    merge_report = read_json(merge_path)[0] if merge_path.is_file() else None
    merge_report = merge_report if isinstance(merge_report, dict) else None
    runs = runs_from_summaries(eval_dir, summaries)
    notes = [] if summaries else ["05_evaluate not run (no evaluation summaries)"]
    read += [Path(r.source) / f"{v}.samples.jsonl" for v, r in runs.items() if not r.samples.empty]
    read += [merge_path] if merge_report is not None else []
    data = {"summaries": summaries, "failed": failed, "runs": runs, "merge_report": merge_report}
    return data | {"merged": merged_variants(profile, merge_report), "references": refs, "read": read, "notes": notes}


def stage_comparisons(profile, data: dict) -> tuple[list[Comparison], list[str]]:
    """The comparisons the evaluated variants allow (references apart), mismatched settings refused; and notes."""
    baseline = profile.analysis.baseline
    variants = [v for v in data["summaries"] if v not in data.get("references", {})]
    pairs, notes = comparisons(variants, baseline, data["merged"])
    if data["summaries"] and baseline not in data["summaries"]:
        notes.append(f"baseline {baseline!r} not evaluated: no MMLU deltas against it")
    notes += [n for r in data["runs"].values() for n in r.notes]
    return _refuse_mismatched(data["runs"], pairs, False, notes), notes


def stage_leaderboard(profile, data: dict, clean: pd.DataFrame) -> pd.DataFrame:
    """frames.leaderboard_frame of what `load_step` read (the paper's rows with analysis.published_results)."""
    published, setups = profile.analysis.published_results, run_setups(data["runs"])
    return leaderboard_frame(data["summaries"], data["failed"], published, clean, data["references"], setups)


def stage_tradeoff(profile, data: dict) -> pd.DataFrame:
    """Per variant (references apart): MMLU against the mean of the other three benchmarks, with its role."""
    variants = {v: s for v, s in data["summaries"].items() if v not in data["references"]}
    return tradeoff_frame(variants, profile.analysis.baseline, data["merged"], data["merge_report"])


@dataclass
class Analysis:
    """What stage 06 computes before writing (seed_spread None without finetune.seeds); saved as it is."""

    data: dict
    pairs: list[Comparison]
    pair_notes: list[str]
    deltas: pd.DataFrame
    delta_notes: list[str]
    released: pd.DataFrame
    released_notes: list[str]
    clean: pd.DataFrame
    clean_info: dict
    board: pd.DataFrame
    seed_spread: pd.DataFrame | None
    tradeoff: pd.DataFrame


def compute_analysis(profile) -> Analysis:
    """Every step of the stage before its save, as notebook 06 runs them one by one."""
    st, data = StatsSettings.from_profile(profile), load_step(profile)
    compared = stage_comparisons(profile, data)  # (pairs, notes), as each step below: (frame, notes or info)
    deltas = paired_delta_frame(data["runs"], compared[0], st)
    released = reference_frame(data["runs"], data["references"], st)
    clean = load_clean_subset(data["runs"], layout.artifact(profile, layout.FLAGGED_PAIRS))
    board, seeds = stage_leaderboard(profile, data, clean[0]), layout.seed_variants(profile)
    spread = seed_spread_frame(board, seeds) if seeds else None
    return Analysis(data, *compared, *deltas, *released, *clean, board, spread, stage_tradeoff(profile, data))


def stage_figures(profile, result: Analysis) -> list[StageFigure]:
    """Every figure the stage saves, drawn from `result` (or why it is not drawn)."""
    st, baseline = StatsSettings.from_profile(profile), profile.analysis.baseline
    figures = [board_figure(result.board), clean_figure(result.clean, result.clean_info, st.confidence)]
    merged = result.data["merged"]
    figures += comparison_figures(result.deltas, result.pairs, st, baseline, merged, _notes(result))
    title = "Merge trade-off: MMLU against the other benchmarks"
    if result.tradeoff["role"].isin([ROLE_MERGED_BASE, ROLE_MERGED_PARTNER]).any():
        drawn = merge_tradeoff_figure(result.tradeoff, result.deltas)
        caption = tradeoff_caption(result.tradeoff, result.deltas, st)
        figures.append(StageFigure("merge_tradeoff", title, drawn, caption))
    else:
        why = "not drawn: no merged variant evaluated on MMLU and another benchmark"
        figures.append(StageFigure("merge_tradeoff", title, why=why))
    return figures


def _notes(result: Analysis) -> list[str]:
    info = result.clean_info
    clean_notes = [n for n in [info.get("why", "")] + info.get("notes", []) if n]
    return result.data["notes"] + clean_notes + result.pair_notes + result.delta_notes


def _write_tables(profile, out: Outputs, result: Analysis, figures: dict[str, StageFigure]) -> None:
    """Every table and figure, in the order the summary walks them."""
    st, produced = StatsSettings.from_profile(profile), out.produced
    write_leaderboard_step(out, result.board, result.clean_info["why"], figures["leaderboard"])
    if result.seed_spread is not None:
        seeds = layout.seed_variants(profile)
        produced["seeds"] = seed_lines(result.seed_spread, seeds)
        tables = write_seed_tables(result.seed_spread, produced["seeds"], out.tables)
        out.register("table", "seed_spread", "Training seeds: spread of the merge into the base", tables)
    write_clean_step(out, result.clean, result.clean_info, figures["clean_subset"])
    write_delta_tables(out, result.deltas, result.pairs, st)
    for name, f in figures.items():
        if name not in ("leaderboard", "clean_subset", "merge_tradeoff"):
            out.save(f)
    write_reference_step(out, result.released, result.released_notes, result.data["references"], st)
    out.csv("merge_tradeoff", "MMLU against the other benchmarks, per variant", result.tradeoff)
    out.save(figures["merge_tradeoff"])


def save_analysis(
    profile, result: Analysis, figures: list[StageFigure] | None = None, timings: dict | None = None
) -> dict:
    """The save step: tables, `figures` (default `stage_figures`), pipeline tables, summary and
    analysis_report.json, recorded in the manifest; stale files of an earlier run removed. Returns `produced`."""
    figures = {f.name: f for f in (figures if figures is not None else stage_figures(profile, result))}
    out = Outputs(profile.report_dir("tables"), profile.report_dir("figures"), profile.analysis.formats)
    previous = (read_manifest(profile.run_dir(STAGE)) or {}).get("outputs")
    data, produced = result.data, out.produced
    with StageRun(profile.run_dir(STAGE), STAGE, profile.fingerprint_params(STAGE)) as run:
        run.timings.update(timings or {})
        upstream = upstream_artifacts(profile)
        produced["artifacts"] += upstream
        produced["upstream"] = {f"{a['kind']}:{a['name']}": a["status"] for a in upstream}
        produced.update(variants=list(data["summaries"]), failed_variants=data["failed"], notes=_notes(result))
        produced["comparisons"] = [{"comparison": c.label, "kind": c.kind} for c in result.pairs]
        _write_tables(profile, out, result, figures)
        if figures["merge_tradeoff"].figure is None:
            produced["notes"].append(f"merge trade-off {figures['merge_tradeoff'].why}")
        stages, contamination, stage_files = pipeline_status(profile)
        produced["stages"] = dict(zip(stages["stage"], stages["status"]))
        produced["pipeline"] = json.loads(stages.to_json(orient="records"))
        out.register("table", "pipeline", "Pipeline status", write_pipeline_tables(stages, out.tables))
        if contamination is not None:
            out.csv("contamination_by_benchmark", "Contamination per benchmark (all sources)", contamination)
        if removed := _remove_stale(previous, produced, profile.report_dir()):
            stale = "removed figures and tables of an earlier analysis that this one does not produce: "
            produced["notes"].append(stale + ", ".join(removed))
        produced["key_numbers"], number_files = key_numbers(profile, data["summaries"], data["failed"])
        paths = write_summary(profile, produced, result.board, result.deltas, result.clean, result.released)
        produced["summary"] = [str(p) for p in paths]
        report = write_json(profile.run_dir(STAGE) / "analysis_report.json", produced)
        flagged = layout.artifact(profile, layout.FLAGGED_PAIRS)
        inputs = data["read"] + stage_files + number_files + ([flagged] if flagged.is_file() else [])
        for path in dict.fromkeys(Path(p) for p in inputs + [f for a in upstream for f in a["files"]]):
            run.add_input(path)
        written = [p for group in ("tables", "figures") for ps in produced[group].values() for p in ps]
        for p in written + produced["summary"] + [report]:
            run.add_output(p)
        figure_files = sum(len(v) for v in produced["figures"].values())
        run.metrics.update(variants=len(data["summaries"]), failed_variants=len(data["failed"]))
        run.metrics.update(comparisons=len(result.pairs), figures=figure_files)
        produced["report"] = str(report)
    return produced


def run_analysis(profile) -> dict:
    """The whole stage as `platypus run` runs it: `compute_analysis`, then `save_analysis`."""
    return save_analysis(profile, compute_analysis(profile))


def _comparable(runs: dict[str, EvalRun], pairs: list[Comparison], notes: list[str]) -> list[Comparison]:
    """The comparisons whose runs scored a task in common; each other one explained in `notes`."""
    whys = {c: no_common_task(runs[c.variant], runs[c.reference]) for c in pairs}
    notes += [why + ": nothing to compare" for why in whys.values() if why]
    return [c for c in pairs if not whys[c]]


def _no_mmlu_why(runs: dict[str, EvalRun], pairs: list[Comparison], asked: int) -> str:
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
    """`platypus analyse`: leaderboard, paired deltas, tables and figures of lm-eval (or 05) output folders into
    out/{tables,figures}/ and out/summary.md; every variant vs `baseline`, each merged one vs its partner;
    `flagged_pairs` (02's csv) adds the clean subset. Raises ValueError on mismatched settings unless `force`."""
    st, out = st or StatsSettings(), Path(out)
    runs, notes = load_runs(specs, results_files)
    if baseline not in runs:
        raise ValueError(f"--baseline {baseline!r} is not among the inputs ({', '.join(runs)})")
    merged = merged or {}
    summaries = {n: r.summary for n, r in runs.items()}
    refs = reference_info(None, summaries)  # 05 folders mark their references
    asked, pair_notes = comparisons([n for n in runs if n not in refs], baseline, merged)
    labels = [c.label for c in asked]
    outputs = Outputs(out / "tables", out / "figures", formats, variants=list(runs), comparisons=labels)
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
    clean, info = pd.DataFrame(columns=CLEAN_COLUMNS), {"why": "", "notes": []}
    if flagged_pairs:
        clean, info = load_clean_subset(runs, flagged_pairs)
    board = leaderboard_frame(summaries, clean=clean, references=refs, setups=run_setups(runs))
    write_leaderboard_step(outputs, board, info["why"], board_figure(board))
    if flagged_pairs:
        outputs.produced["notes"] += [n for n in [info["why"], *info["notes"]] if n]
        write_clean_step(outputs, clean, info, clean_figure(clean, info, st.confidence))
    why = _no_mmlu_why(runs, pairs, len(asked))
    frame, delta_notes = paired_delta_frame(runs, pairs, st)
    outputs.produced["notes"] += delta_notes  # missing subjects, fallbacks: the subject figures repeat them
    write_delta_tables(outputs, frame, pairs, st, why)
    for f in comparison_figures(frame, pairs, st, baseline, merged, outputs.produced["notes"], why):
        outputs.save(f)
    outputs.produced.update(compared=[c.label for c in pairs], no_comparison=why)
    if refs:
        write_reference_step(outputs, *reference_frame(runs, refs, st), refs, st)
    produced = outputs.produced
    produced["summary"] = str(write_text(out / "summary.md", analyse_summary(runs, produced, frame, st)))
    return produced
