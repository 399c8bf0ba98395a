"""Frames of 06_analysis: 05's summaries and runs, the leaderboard, the comparisons and the merge trade-off."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .. import layout
from ..lmeval_io import RESULTS_RULES, EvalRun, is_pipeline_dir, read_lm_eval_dir, read_pipeline_variant
from ..published import PUBLISHED, SOURCE_LABEL
from .common import (
    ADAPTER_VARIANT,
    BENCHMARKS,
    KIND_FINETUNED,
    KIND_MERGED,
    KIND_OTHER,
    KIND_PARTNER,
    KIND_PARTNER_BASE,
    LABELS,
    ROLE_BASE,
    ROLE_FINETUNED,
    ROLE_MERGED_BASE,
    ROLE_MERGED_PARTNER,
    ROLE_OTHER,
    ROLE_PARTNER,
    ROW_PUBLISHED,
    ROW_REFERENCE,
    ROW_VARIANT,
    mean_se,
    pct,
    read_json,
    task_entry,
)

log = logging.getLogger("platypus")
NOT_SUMMARIES = ("manifest.json", "attempt.json", "evaluate_report.json", "evaluate_report.failed.json")


def load_summaries(
    eval_dir: str | Path, order: list[str] | None = None
) -> tuple[dict[str, dict], dict[str, str], list[Path]]:
    """(summaries by variant, failed variants -> error, files read) from a 05_evaluate folder: each `<variant>.json`
    holding "variant" and "tasks", in `order` first, then by name."""
    eval_dir = Path(eval_dir)
    summaries, failed, read = {}, {}, []
    if not eval_dir.is_dir():
        return summaries, failed, read
    for path in sorted(eval_dir.glob("*.json")):
        if path.name.endswith(".raw.json") or path.name in NOT_SUMMARIES:
            continue
        data, err = read_json(path)
        if err or not isinstance(data, dict) or "tasks" not in data or "variant" not in data:
            log.warning("%s: not an evaluation summary (%s); skipped", path, err or "no 'variant'/'tasks'")
            continue
        summaries[data["variant"]] = data
        read.append(path)
    report = eval_dir / "evaluate_report.json"
    data, err = read_json(report) if report.is_file() else (None, None)
    if isinstance(data, dict):
        read.append(report)
        for name, info in (data.get("variants") or {}).items():
            if isinstance(info, dict) and info.get("status") == "failed" and name not in summaries:
                failed[name] = str(info.get("error", "failed"))
    rank = {v: k for k, v in enumerate(order or [])}
    ordered = sorted(summaries, key=lambda v: (rank.get(v, len(rank)), v))
    return {v: summaries[v] for v in ordered}, failed, read


def reference_info(profile=None, summaries: dict[str, dict] | None = None) -> dict[str, dict]:
    """Released models evaluated as references: name -> {model, compare_to, published}, from the profile's
    evaluate.references, or else the summaries 05 wrote with kind "reference"."""
    if profile is not None:
        return {
            r.name: {"model": r.model, "compare_to": r.compare_to, "published": r.published}
            for r in profile.evaluate.references
        }
    return {
        name: {"model": s.get("model", ""), "compare_to": s.get("compare_to"), "published": s.get("published")}
        for name, s in (summaries or {}).items()
        if s.get("kind") == ROW_REFERENCE
    }


def _variant_row(variant: str, s: dict, clean: pd.DataFrame | None, kind: str = ROW_VARIANT) -> dict[str, Any]:
    row: dict[str, Any] = {"variant": variant, "source": "this run", "kind": kind, "status": "ok"}
    row["model"] = s.get("model", "")
    for bench in BENCHMARKS:
        t = task_entry(s, bench)
        row[bench] = pct(t["value"]) if t else None
        row[f"{bench}_stderr"] = pct(t.get("stderr")) if t else None
        row[f"{bench}_n"] = t.get("n") if t else None
    mm = task_entry(s, "mmlu")
    row["mmlu_weighted"] = pct(mm.get("weighted_value")) if mm else None
    present = [row[b] for b in BENCHMARKS if row[b] is not None]
    row["average"] = sum(present) / len(present) if present else None
    row["average_over"] = len(present)
    if clean is not None and not clean.empty:
        mine = clean[(clean["variant"] == variant) & (clean["level"] == "benchmark") & (clean["subset"] == "clean")]
        by = mine.set_index("unit")
        for bench in BENCHMARKS:
            row[f"{bench}_clean"] = float(by.at[bench, "score"]) if bench in by.index else None
            row[f"{bench}_clean_n"] = int(by.at[bench, "n"]) if bench in by.index else None
        scores = [row[f"{b}_clean"] for b in BENCHMARKS]
        complete = all(x is not None and not math.isnan(x) for x in scores)
        row["average_clean"] = sum(scores) / len(scores) if complete else None
    return row


def leaderboard_frame(
    summaries: dict[str, dict],
    failed: dict[str, str] | None = None,
    published: bool = False,
    clean: pd.DataFrame | None = None,
    references: list[str] | dict | None = None,
    setups: dict[str, dict[str, str]] | None = None,
) -> pd.DataFrame:
    """One row per variant, then per reference: each benchmark in percent with standard error and item count,
    and the average; with `clean`, `<bench>_clean[_n]` and `average_clean` (over all four, else None); with
    `published`, the paper's rows; `setups` (setups.run_setups) as `<bench>_setup`."""
    refs = set(references or ())
    rows = []
    for kind in (ROW_VARIANT, ROW_REFERENCE):  # the variants (failed ones last), then the references
        ours = {v for v in [*summaries, *(failed or {})] if (v in refs) == (kind == ROW_REFERENCE)}
        rows += [_variant_row(v, s, clean, kind) for v, s in summaries.items() if v in ours]
        failed_row = {"source": "this run", "kind": kind, "model": ""}
        rows += [{"variant": v, **failed_row, "status": f"failed: {e}"} for v, e in (failed or {}).items() if v in ours]
    if published:
        for p in PUBLISHED.values():
            row = {"variant": p.label, "source": SOURCE_LABEL, "kind": ROW_PUBLISHED, "status": "published"}
            rows.append({**row, "model": p.model, "average": p.average, "average_over": len(p.values), **p.values})
    cols = (
        ["variant", "source", "kind", "status", "model"]
        + [c for b in BENCHMARKS for c in (b, f"{b}_stderr", f"{b}_n")]
        + ["mmlu_weighted", "average", "average_over"]
        + [c for b in BENCHMARKS for c in (f"{b}_clean", f"{b}_clean_n")]
        + ["average_clean"]
        + [f"{b}_setup" for b in BENCHMARKS]
    )
    for row in rows:
        if row["kind"] != ROW_PUBLISHED:
            row.update({f"{b}_setup": (setups or {}).get(row["variant"], {}).get(b, "") for b in BENCHMARKS})
    return pd.DataFrame(rows, columns=cols)


@dataclass(frozen=True)
class Comparison:
    """One variant against one reference model; `kind` says which of the paper's questions it answers."""

    variant: str
    reference: str
    kind: str

    @property
    def label(self) -> str:
        return f"{self.variant} vs {self.reference}"


def merged_variants(profile, merge_report: dict | None = None) -> dict[str, str | None]:
    """Merged variant -> the partner its adapter was merged into (None: its own base), from the profile and, where
    present, 04_merge's report."""
    out = dict(layout.merge_pairs(profile))
    models = (merge_report or {}).get("models")
    for name, info in models.items() if isinstance(models, dict) else ():
        if isinstance(info, dict):
            out[name] = info.get("partner") or None
    return out


def variant_role(variant: str, baseline: str, merged: dict[str, str | None]) -> str:
    if variant == baseline:
        return ROLE_BASE
    if variant == ADAPTER_VARIANT:
        return ROLE_FINETUNED
    if variant in merged:
        return ROLE_MERGED_PARTNER if merged[variant] else ROLE_MERGED_BASE
    if variant in {p for p in merged.values() if p}:
        return ROLE_PARTNER
    return ROLE_OTHER


ROLE_KINDS = {ROLE_FINETUNED: KIND_FINETUNED, ROLE_MERGED_BASE: KIND_FINETUNED, ROLE_MERGED_PARTNER: KIND_MERGED}
ROLE_KINDS[ROLE_PARTNER] = KIND_PARTNER_BASE  # a comparison with the base: its kind by the variant's role


def comparisons(
    variants: list[str], baseline: str, merged: dict[str, str | None]
) -> tuple[list[Comparison], list[str]]:
    """The comparisons the evaluated variants allow (each vs the base; a merged one vs its partner too), and a
    note for each one they do not."""
    pairs, notes = [], []
    for variant in variants:
        if variant == baseline:
            continue
        if baseline in variants:
            kind = ROLE_KINDS.get(variant_role(variant, baseline, merged), KIND_OTHER)
            pairs.append(Comparison(variant, baseline, kind))
        partner = merged.get(variant)
        if partner and partner in variants and partner != baseline:
            pairs.append(Comparison(variant, partner, KIND_PARTNER))
        elif partner and partner not in variants:
            notes.append(
                f"partner {partner!r} of {variant!r} not evaluated: no merged-vs-partner comparison "
                "(add it to evaluate.variants)"
            )
    return pairs, notes


def runs_from_summaries(eval_dir: Path, summaries: dict[str, dict]) -> dict[str, EvalRun]:
    return {v: read_pipeline_variant(eval_dir, v, s) for v, s in summaries.items()}


def tradeoff_frame(
    summaries: dict[str, dict], baseline: str, merged: dict[str, str | None], merge_report: dict | None = None
) -> pd.DataFrame:
    """Per variant: MMLU against the mean of the other three benchmarks, with the merge that made it."""
    cols = "variant role method partner mmlu mmlu_stderr others_mean others_stderr others_over".split()
    models = (merge_report or {}).get("models") if isinstance((merge_report or {}).get("models"), dict) else {}
    rows = []
    for variant, s in summaries.items():
        mm = task_entry(s, "mmlu")
        entries = {b: task_entry(s, b) for b in BENCHMARKS if b != "mmlu"}
        others = [(b, pct(t["value"]), pct(t.get("stderr"))) for b, t in entries.items() if t]
        if not mm or not others:
            continue
        info = models.get(variant) if isinstance(models.get(variant), dict) else {}
        role, partner = variant_role(variant, baseline, merged), merged.get(variant) or ""
        row = [variant, role, info.get("method") or "", partner, pct(mm["value"]), pct(mm.get("stderr"))]
        mean = sum(v for _, v, _ in others) / len(others)
        rows.append(row + [mean, mean_se(se for _, _, se in others), " ".join(LABELS[b] for b, _, _ in others)])
    return pd.DataFrame(rows, columns=cols)


def load_runs(specs: list[str], results_files: list[str] | tuple = ()) -> tuple[dict[str, EvalRun], list[str]]:
    """DIR[=NAME] inputs -> (runs by name, notes): an lm-eval output folder is one model (NAME, default its
    folder's name), a 05_evaluate folder every variant in it (or only NAME). `results_files`: which results file
    of a folder holding several (lmeval_io.choose_results); one no input holds is a ValueError."""
    runs: dict[str, EvalRun] = {}
    notes, used = [], set()
    for path, _, name in (spec.partition("=") for spec in specs):
        path, name = Path(path), name or None
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or directory")
        if is_pipeline_dir(path):
            summaries, _, _ = load_summaries(path)
            chosen = {name: summaries[name]} if name in summaries else summaries
            if name and name not in summaries:
                raise ValueError(f"{path}: no variant {name!r} (has {', '.join(summaries) or 'none'})")
            got = runs_from_summaries(path, chosen)
        else:
            run = read_lm_eval_dir(path, name, results_files)
            got = {run.name: run}
            held = {f.name for f in ([path] if path.is_file() else path.rglob("results_*.json"))}
            used |= held & set(results_files)
        for n, run in got.items():
            if n in runs:
                raise ValueError(f"two inputs are both named {n!r}: name them DIR=NAME")
            runs[n] = run
            notes += run.notes
    unused = [f for f in results_files if f not in RESULTS_RULES and f not in used and Path(f).name not in used]
    if unused:
        raise ValueError(f"--results-file {', '.join(unused)}: no input folder holds such a results file")
    return runs, notes
