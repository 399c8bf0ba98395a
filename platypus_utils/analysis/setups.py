"""How each run was evaluated, in words (few-shot, limit, task version as its own lm-eval output records, never
assumed), for captions and table headers: shared by a column's rows, in the header, else in each cell.
"""

from __future__ import annotations

import pandas as pd

from ..lmeval_io import EvalRun
from ..published import SETTINGS as PUBLISHED_SETTINGS
from .common import BENCHMARKS, LABELS, ROW_PUBLISHED, task_entry

METRICS = {"arc_challenge": "acc_norm", "hellaswag": "acc_norm", "truthfulqa_mc2": "mc2"}
METRICS["mmlu"] = "acc (mean over subjects)"
NOT_RECORDED = "few-shot counts not recorded in the inputs"


def _distinct(items: list[dict], key: str) -> list[str]:
    values = {f"{x:g}" if isinstance(x, float) else str(x) for s in items if (x := s.get(key)) is not None}
    return sorted(values, key=lambda v: (len(v), v))


def _recorded(run: EvalRun, bench: str, subject: str = "") -> list[dict]:
    """The settings of the run's tasks for a benchmark (one subject, or all of MMLU's), else the summary's."""
    items = [s for s in run.settings.values() if s["benchmark"] == bench and (not subject or s["subject"] == subject)]
    if items:
        return items
    tasks = ((run.summary.get("settings") or {}).get("tasks") or {}) if isinstance(run.summary, dict) else {}
    entry = tasks.get(bench) if isinstance(tasks, dict) else None
    return [entry] if isinstance(entry, dict) else []


def setup_text(run: EvalRun, bench: str, subject: str = "", versions: bool = False) -> str:
    """ "5-shot, limit 10" (with `versions`, ", version 1.0") for a benchmark or MMLU subject; several values
    joined by "/"; "" when the run records none."""
    items = _recorded(run, bench, subject)
    shots = _distinct(items, "num_fewshot")
    if not shots:
        return ""
    keys = ("limit", "version") if versions else ("limit",)
    return ", ".join(
        [f"{'/'.join(shots)}-shot"] + [f"{k} {'/'.join(got)}" for k in keys if (got := _distinct(items, k))]
    )


def version_text(run: EvalRun, bench: str, subject: str = "") -> str:
    return "/".join(_distinct(_recorded(run, bench, subject), "version"))


def run_setups(runs: dict[str, EvalRun]) -> dict[str, dict[str, str]]:
    """variant -> benchmark -> setup_text (benchmarks the run records nothing for left out)."""
    return {name: {b: t for b in BENCHMARKS if (t := setup_text(run, b))} for name, run in runs.items()}


def _row_setups(board: pd.DataFrame, bench: str) -> list[str] | None:
    """Each row's setup for a benchmark (published rows: the leaderboard's), or None when no evaluated row has one."""
    col = f"{bench}_setup"
    if col not in board.columns:
        return None
    ours = board["kind"] != ROW_PUBLISHED if "kind" in board.columns else pd.Series(True, index=board.index)
    texts = [str(t) if isinstance(t, str) else "" for t in board[col]]
    if not any(t for t, o in zip(texts, ours) if o):
        return None
    return [t if o else f"{PUBLISHED_SETTINGS[bench]['num_fewshot']}-shot" for t, o in zip(texts, ours)]


def column_labels(board: pd.DataFrame) -> dict[str, tuple[str, list[str]]]:
    """Per benchmark: (header, per-row suffix): "MMLU (5-shot)" when every scored row shares one setup, else
    "MMLU" and each row's own (" (0-shot)")."""
    out = {}
    for bench in BENCHMARKS:
        texts = _row_setups(board, bench)
        if texts is None:
            out[bench] = (LABELS[bench], [""] * len(board))
            continue
        scored = [t for t, v in zip(texts, board[bench] if bench in board else []) if pd.notna(v)]
        if len(set(scored)) == 1 and scored[0]:
            out[bench] = (f"{LABELS[bench]} ({scored[0]})", [""] * len(board))
        else:
            out[bench] = (LABELS[bench], [f" ({t or 'not recorded'})" for t in texts])
    return out


def metric_note(board: pd.DataFrame | None) -> str:
    """The metrics and each benchmark's settings as recorded: "ARC acc_norm (25-shot), MMLU acc (mean over
    subjects) (base 0-shot; tuned 1-shot)"; with NOT_RECORDED when no input records them."""
    parts, known = [], False
    for bench in BENCHMARKS:
        texts = _row_setups(board, bench) if board is not None and not board.empty else None
        if texts is None:
            parts.append(f"{LABELS[bench]} {METRICS[bench]}")
            continue
        known = True
        ours = zip(board["variant"], texts, board["kind"], board[bench])
        rows = [(str(v), t) for v, t, k, s in ours if k != ROW_PUBLISHED and pd.notna(s)]
        distinct = sorted({t for _, t in rows})
        each = "; ".join(f"{v} {t or 'not recorded'}" for v, t in rows)
        shown = each if len(distinct) > 1 else distinct[0] if distinct else "not run"
        parts.append(f"{LABELS[bench]} {METRICS[bench]} ({shown})")
    return ", ".join(parts) + ("" if known else f"; {NOT_RECORDED}")


def comparison_setup(frame: pd.DataFrame, comparison: str, unit_level: str = "category") -> str:
    """One comparison's settings from its delta rows of `unit_level` (the last: "all subjects" for categories):
    "both 5-shot", "tuned 1-shot; base 0-shot", or "" when neither run records any."""
    if frame.empty or "variant_setup" not in frame.columns:
        return ""
    rows = frame[(frame["comparison"] == comparison) & (frame["level"] == unit_level)]
    r = rows.iloc[-1] if len(rows) else {}
    v, ref = (r.get(k) if isinstance(r.get(k), str) else "" for k in ("variant_setup", "reference_setup"))
    if v == ref:
        return f"both {v}" if v else ""
    return f"{r['variant']} {v or 'not recorded'}; {r['reference']} {ref or 'not recorded'}"


def ran_units(run: EvalRun) -> set[tuple[str, str]]:
    s = run.summary
    units = {(b, "") for b, t in (s.get("tasks") or {}).items() if b != "mmlu" and isinstance(t, dict)}
    units |= {("mmlu", x) for x, t in (s.get("mmlu_subjects") or {}).items() if (t or {}).get("acc") is not None}
    return {(b, x) for b, x in units if b in BENCHMARKS and (x or task_entry(s, b))}


def ran_text(run: EvalRun) -> str:
    """What a run evaluated, with its settings: "ARC (0-shot, limit 10, version 1), MMLU 2 subjects (0-shot)"."""
    units = ran_units(run)
    parts = []
    for bench in BENCHMARKS:
        subjects = sorted(x for b, x in units if b == bench and x)
        if not subjects and (bench, "") not in units:
            continue
        what = f"{LABELS[bench]} {len(subjects)} subject{'s' * (len(subjects) != 1)}" if subjects else LABELS[bench]
        setup = setup_text(run, bench, versions=True)
        parts.append(f"{what} ({setup})" if setup else what)
    return ", ".join(parts) or "no leaderboard task"


def no_common_task(v: EvalRun, r: EvalRun) -> str | None:
    """Why a comparison has nothing to compare (no benchmark or MMLU subject scored by both), or None."""
    if ran_units(v) & ran_units(r):
        return None
    return f"{v.name} vs {r.name}: no task in common ({v.name} ran {ran_text(v)}; {r.name} ran {ran_text(r)})"
