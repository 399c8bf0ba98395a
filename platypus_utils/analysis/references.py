"""Released models as references (evaluate.references), per benchmark and for the average:
reproduction vs release (KIND_RELEASE, paired over the same questions; delta = variant - release) and harness
drift (KIND_DRIFT, the release as evaluated here vs its published numbers; unpaired, the published value taken
without error; delta = here - published; departing settings noted on each row).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..lmeval_io import EvalRun, settings_mismatches
from ..published import PUBLISHED, SETTINGS
from .common import BENCHMARKS, KIND_DRIFT, KIND_RELEASE, LABELS, ci_text, mean_se, pct, task_entry
from .frames import Comparison
from .paired import StatsSettings, compare, normal_fields
from .tables import md_document, to_latex, to_markdown, write_table

AVERAGE = "average"
# this: the variant (vs release) or the release as evaluated here (drift); against: the release or "published: <row>"
REFERENCE_COLUMNS = (
    "comparison kind released this against benchmark n this_score against_score delta se ci_low ci_high "
    "p_value test interval note"
).split()
DRIFT_TEST = "z (unpaired; published value without error)"


def release_frame(
    runs: dict[str, EvalRun], refs: dict[str, dict], st: StatsSettings | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """Per reference with a `compare_to`: that variant against the release, paired, per benchmark and for the
    average; and notes (not evaluated, settings that differ)."""
    st = st or StatsSettings()
    rows, notes = [], []
    for k, (name, info) in enumerate(refs.items()):
        variant = info.get("compare_to")
        if not variant:
            continue
        label = f"{variant} vs {name}"
        missing = [m for m in (variant, name) if m not in runs]
        if missing:
            notes.append(f"{label} ({KIND_RELEASE}): not compared, {' and '.join(missing)} not evaluated")
            continue
        diff = settings_mismatches(runs[variant], runs[name])
        if diff:
            notes.append(f"{label} ({KIND_RELEASE}): settings differ ({'; '.join(diff[:4])}): not compared")
            continue
        weights = runs[variant].summary.get("model_hash")
        same = weights and weights == runs[name].summary.get("model_hash")
        same = "same weights (model hash) as the release: one evaluation, no difference to find" if same else ""
        got, got_notes = compare(runs, Comparison(variant, name, KIND_RELEASE), st, index=10_000 + k)
        notes += got_notes
        head = {"comparison": label, "kind": KIND_RELEASE, "released": name, "this": variant, "against": name}
        for r in (r for r in got if r["level"] == "benchmark"):
            row = {**head, "benchmark": r["unit"], "n": r["n"], "this_score": r["variant_score"]}
            row.update({c: r[c] for c in ("delta", "se", "ci_low", "ci_high", "p_value", "test", "interval")})
            note = "; ".join(n for n in (r["note"], same) if n)
            rows.append({**row, "against_score": r["reference_score"], "note": note})
    return pd.DataFrame(rows, columns=REFERENCE_COLUMNS), notes


def _departures(summary: dict, bench: str) -> list[str]:
    """How this run's settings for a benchmark depart from the published ones (shots, a limit)."""
    tasks = ((summary.get("settings") or {}).get("tasks") or {}).get(bench) or {}
    out = []
    shots, want = tasks.get("num_fewshot"), SETTINGS[bench]["num_fewshot"]
    if shots is not None and shots != want:
        out.append(f"{shots}-shot here, {want}-shot published")
    if tasks.get("limit") is not None:
        out.append(f"limit {tasks['limit']}: a subset, not the full test set")
    return out


def _drift_row(name: str, key: str, bench: str, here, se, published, n, st: StatsSettings, notes) -> dict:
    delta = here - published
    row = {"comparison": f"{name} vs published {key}", "kind": KIND_DRIFT, "released": name, "this": name}
    row.update(against=f"published: {key}", benchmark=bench, n=n, this_score=here, against_score=published)
    return {**row, "delta": delta, "note": "; ".join(notes), **normal_fields(delta, se, st, DRIFT_TEST)}


def _drift_rows(name: str, key: str, summary: dict, st: StatsSettings) -> list[dict]:
    published = PUBLISHED[key]
    rows, parts = [], []
    for bench in BENCHMARKS:
        t, pub = task_entry(summary, bench), published.value(bench)
        if t is None or pub is None:
            continue
        here, se = pct(t["value"]), pct(t.get("stderr"))
        parts.append((here, se, pub, _departures(summary, bench)))
        rows.append(_drift_row(name, key, bench, here, se, pub, t.get("n"), st, parts[-1][3]))
    if not parts:
        return rows
    full = len(parts) == len(BENCHMARKS)
    notes = sorted({d for p in parts for d in p[3]})
    if not full:
        notes.insert(0, f"over the {len(parts)} benchmarks evaluated here (published average over {len(BENCHMARKS)})")
    here = sum(p[0] for p in parts) / len(parts)
    pub = published.average if full else sum(p[2] for p in parts) / len(parts)
    return rows + [_drift_row(name, key, AVERAGE, here, mean_se(p[1] for p in parts), pub, len(parts), st, notes)]


def drift_frame(
    runs: dict[str, EvalRun], refs: dict[str, dict], st: StatsSettings | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """Per reference with a `published` row: the release as evaluated here against its published numbers
    (unpaired), per benchmark and for the average; notes name the harness on either side."""
    st = st or StatsSettings()
    rows, notes = [], []
    for name, info in refs.items():
        key = info.get("published")
        if not key:
            continue
        if key not in PUBLISHED:
            notes.append(f"{name}: published row {key!r} is not in platypus_utils.published: no {KIND_DRIFT}")
            continue
        if name not in runs:
            notes.append(f"{name} not evaluated: no {KIND_DRIFT} comparison with published {key}")
            continue
        summary = runs[name].summary
        settings = summary.get("settings") or {}
        lm_eval, batch = settings.get("lm_eval"), settings.get("batch_size")
        parts = [f"lm-eval {lm_eval}" if lm_eval else "", settings.get("backend", "hf"), settings.get("dtype", "")]
        here = ", ".join(str(x) for x in parts + [f"batch size {batch}" if batch else ""] if x)
        row = PUBLISHED[key]
        notes.append(f"{KIND_DRIFT} of {name}: here {here or 'this run'}; published ({row.source}): {row.harness}")
        rows += _drift_rows(name, key, summary, st)
    return pd.DataFrame(rows, columns=REFERENCE_COLUMNS), notes


def reference_frame(
    runs: dict[str, EvalRun], refs: dict[str, dict], st: StatsSettings | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """Both comparisons of the released models, one frame (REFERENCE_COLUMNS): reproduction vs release
    (paired), then harness drift (unpaired); and their notes."""
    release, release_notes = release_frame(runs, refs, st)
    drift, drift_notes = drift_frame(runs, refs, st)
    frames = [f for f in (release, drift) if not f.empty]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=REFERENCE_COLUMNS)
    for col in ("n", "this_score", "against_score", "delta", "se", "ci_low", "ci_high", "p_value"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame, release_notes + drift_notes


def _change_text(r, tex: bool = False, sep: str = ": ") -> str:
    """ "30.00 vs 28.00: +2.00 [-1.0, +5.0]" (the change as $math$ in LaTeX)."""
    delta = f"${r['delta']:+.2f}$" if tex else f"{r['delta']:+.2f}"
    return f"{r['this_score']:.2f} vs {r['against_score']:.2f}{sep}{delta}{ci_text(r)}"


def reference_display(frame: pd.DataFrame, tex: bool = False) -> pd.DataFrame:
    """One row per comparison: kind, and per benchmark and the average "this vs against: change [interval]"."""
    units = [b for b in (*BENCHMARKS, AVERAGE) if b in set(frame["benchmark"])]
    rows = []
    for (label, kind), g in frame.groupby(["comparison", "kind"], sort=False):
        by = g.set_index("benchmark")
        rows.append([label, kind] + [_change_text(by.loc[u], tex) if u in by.index else "–" for u in units])
    return pd.DataFrame(rows, columns=["comparison", "kind"] + [LABELS.get(u, u) for u in units])


def reference_note(st: StatsSettings | None = None) -> str:
    st = st or StatsSettings()
    return (
        f"Percent; change in points with its {st.confidence:.0%} interval. {KIND_RELEASE}: this run's variant "
        f"against the released model, both evaluated here, paired over the same questions (paired bootstrap; "
        f"McNemar or sign-flip test). {KIND_DRIFT}: the released model as evaluated here against its published "
        "numbers (platypus_utils.published), UNPAIRED: the published numbers carry no per-question scores and "
        "no standard error, so the interval is this run's alone."
    )


def write_reference_tables(
    frame: pd.DataFrame, lines: list[str], table_dir: Path, st: StatsSettings | None = None
) -> list[Path]:
    """references.{csv,md,tex}; the Markdown ends with `lines`."""
    note = reference_note(st)
    shown = to_markdown(reference_display(frame), 2) if not frame.empty else "(no comparison)"
    md = md_document(shown, "Released models: reproduction vs release, and harness drift", note, lines)
    tex = to_latex(reference_display(frame, tex=True), note, "tab:references", 2)
    return write_table(table_dir, "references", frame, md, tex)


def _sentence(g: pd.DataFrame) -> str:
    by = g.set_index("benchmark")
    return "; ".join(
        f"{LABELS.get(u, u)} {_change_text(by.loc[u], sep=', ')}" for u in (AVERAGE, *BENCHMARKS) if u in by.index
    )


def reference_lines(frame: pd.DataFrame, refs: dict[str, dict]) -> list[str]:
    """The summary's sentences: per released model, each comparison it has (or why it has none)."""
    if not refs:
        return [
            "No released model evaluated as a reference (evaluate.references): no reproduction-vs-release "
            f"and no {KIND_DRIFT} comparison."
        ]
    out = []
    for name, info in refs.items():
        for kind, how in ((KIND_RELEASE, "paired over the same questions"), (KIND_DRIFT, "unpaired")):
            g = frame[(frame["released"] == name) & (frame["kind"] == kind)]
            if not g.empty:
                same = g["note"].fillna("").str.contains("same weights").any()
                tail = " Same weights (model hash) as the release: one evaluation, 0 by construction." if same else ""
                out.append(f"{g['comparison'].iloc[0]} ({kind}, {how}): {_sentence(g)}.{tail}")
            elif kind == KIND_DRIFT and not info.get("published"):
                out.append(f"{KIND_DRIFT}: no published numbers exist for {name} ({info.get('model') or ''}).")
            elif kind == KIND_DRIFT:
                out.append(f"{KIND_DRIFT} of {name}: not computed (see the notes).")
            elif info.get("compare_to"):
                out.append(f"{info['compare_to']} vs {name} ({kind}): not computed (see the notes).")
    return out
