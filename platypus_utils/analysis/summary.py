"""The summary report of 06_analysis: reports/<profile>/summary.md (templates/summary.md.j2) and summary.html
(that Markdown rendered by mistune: importing nbconvert costs 2.5 s). Free text is escaped; links are relative.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote

import mistune
import pandas as pd

from ..artifacts import write_text
from ..lmeval_io import EvalRun
from .clean import CATEGORIES
from .common import STAGE, TEMPLATES
from .paired import StatsSettings, level, method_text
from .references import reference_display, reference_note
from .setups import comparison_setup, metric_note, ran_text
from .tables import (
    CLEAN_NOTE,
    REFERENCE_NOTE,
    category_display,
    category_text_columns,
    clean_display,
    has_references,
    leaderboard_display,
    to_markdown,
)

_RENDER = mistune.create_markdown(escape=False, plugins=["table"])  # raw HTML kept: only <details> is written
_MD_SPECIAL = re.compile(r"[\\`*\[\]<>|]|(?<![^\W_])_|_(?![^\W_])")  # "_" only at a word's edge


def md_escape(text: str) -> str:
    """Markdown-escape free text; "_" inside a word (file names) is left, as CommonMark never reads it there."""
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(), str(text))


def _href(path: str) -> str:
    return quote(path, safe="/._-~")


def link(text: str, href: str) -> str:
    return f"[{md_escape(text)}]({_href(href)})"


def md_table(frame: pd.DataFrame, text_columns: int = 1, links: tuple[str, ...] = ()) -> str:
    """A pipe table of `frame`, every cell escaped except those of the `links` columns (already Markdown)."""
    shown = frame.astype(str).apply(lambda col: col if col.name in links else col.map(md_escape))
    return to_markdown(shown, text_columns, escape=False).rstrip("\n")


def _bullets(items: list, escape: bool = True) -> str:
    return "\n".join("- " + (md_escape(str(i)) if escape else str(i)) for i in items)


def caption_text(paths: list[str]) -> tuple[str, str]:
    """(first line of the figure's caption file, the whole file) - the caption and the numbers."""
    txt = next((Path(p) for p in paths if p.endswith(".txt")), None)
    try:
        text = txt.read_text(encoding="utf-8") if txt is not None and txt.is_file() else ""
    except (OSError, UnicodeDecodeError) as exc:
        return f"caption unreadable: {exc}", ""
    return (text.strip().splitlines() or [""])[0], text.rstrip()


def small_table(csv: Path, max_rows: int = 20, max_cols: int = 10) -> tuple[pd.DataFrame, int] | None:
    """(frame with cells as text, first column of the numeric tail) of a CSV small enough to show inline."""
    try:
        frame = pd.read_csv(csv)
    except Exception:  # noqa: BLE001 - shown as a link only
        return None
    if frame.empty or len(frame) > max_rows or len(frame.columns) > max_cols:
        return None
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    first = next((k for k in range(len(numeric)) if all(numeric[k:])), len(numeric))
    shown = frame.apply(
        lambda col: col.map(lambda v: "" if pd.isna(v) else f"{v:.4g}" if isinstance(v, float) else str(v))
    )
    return shown, first


def file_links(files: list[str], rel) -> str:
    """ "Files: a.csv, a.md, a.tex." for one artifact's files (Markdown links), or "" when it has none."""
    return ("Files: " + ", ".join(link(Path(f).name, rel(f)) for f in files) + ".") if files else ""


def _stage_tables(produced: dict, rel) -> dict:
    """The stages' status and timing, and their key numbers, as Markdown tables."""
    stages = []
    for r in produced.get("pipeline", []):
        wall = "" if r.get("wall_s") is None or pd.isna(r.get("wall_s")) else f"{float(r['wall_s']):.1f}"
        stages.append([r["stage"], r["status"], r.get("finished_at") or "", r.get("runner") or "–", wall])
    stages.append([STAGE, "this report", "", "–", ""])
    numbers = []
    for n in produced.get("key_numbers", []):
        source = link(Path(n["source"]).name, rel(n["source"])) if Path(n["source"]).is_file() else "–"
        numbers.append([n["stage"], n["quantity"], n["value"], source])
    columns = ["stage", "status", "finished", "runner record", "wall time (s)"]
    return {
        "stages": md_table(pd.DataFrame(stages, columns=columns), 4),
        "numbers": md_table(pd.DataFrame(numbers, columns=["stage", "quantity", "value", "from"]), 3, ("from",)),
    }


def _results(produced: dict, board, categories, clean, references, files) -> dict:
    """The leaderboard, clean-subset, category, reference and seed sections' tables and sentences."""
    board = board if board is not None and not board.empty else None
    shown = leaderboard_display(board) if board is not None else None
    note = f"Scores in percent ± standard error; {metric_note(board)}."
    note += f" {REFERENCE_NOTE}." if board is not None and has_references(board) else ""
    info = produced.get("clean_subset") or {}
    counts = pd.DataFrame(info.get("flagged_counts") or [])
    counts = counts.apply(
        lambda col: col if col.name == "benchmark" else col.map(lambda v: "–" if pd.isna(v) else f"{int(v):,}")
    )
    has_cats = categories is not None and not categories.empty and not level(categories, "category").empty
    shown_cats = category_display(categories, with_kind=True) if has_cats else None
    refs = references is not None and not references.empty
    cats_note = ""
    if has_cats:
        method = method_text(level(categories, "category"))
        cats = f"Percentage points, mean over the category's subjects [interval: {method}]; "
        cats_note = f"{md_escape(cats + '* significant after Benjamini-Hochberg.')} {files('mmlu_delta_categories')}"
    return {
        "leaderboard": md_table(shown, 3 if "items" in shown.columns else 2) if shown is not None else "",
        "leaderboard_note": md_escape(note) + " " + files("leaderboard"),
        "clean": md_table(clean_display(clean), 2) if clean is not None and not clean.empty else "",
        "clean_note": md_escape(
            CLEAN_NOTE + "; gap: clean − full in points ± its standard error; no <category>: the "
            f"items with no flagged pair of that category ({', '.join(CATEGORIES)})."
        ),
        "clean_lines": [md_escape(line) for line in [info.get("why", ""), *info.get("notes", [])] if line],
        "flagged_counts": md_table(counts, 1) if info.get("flagged_counts") else "",
        "clean_files": files("clean_subset"),
        "categories": md_table(shown_cats, category_text_columns(shown_cats)) if has_cats else "",
        "categories_note": cats_note,
        "verdicts": _bullets(produced.get("verdicts", [])),
        "power": _bullets(produced.get("power", [])),
        "released": "references" in produced,
        "references": md_table(reference_display(references), 2) if refs else "",
        "references_note": md_escape(reference_note()),
        "reference_lines": _bullets(produced.get("references", []) + produced.get("reference_notes", [])),
        "reference_files": files("references"),
        "seeds": _bullets(produced["seeds"]) if "seeds" in produced else None,
        "seed_files": files("seed_spread"),
    }


def _figure(a: dict, rel) -> dict:
    """A figure's heading, image, caption (first line of its .txt), links and the numbers it shows."""
    caption, numbers = caption_text(a["files"])
    image = next((f for ext in (".png", ".svg") for f in a["files"] if f.endswith(ext)), None)
    caption += "" if a["status"] == "ok" else f" [{a['status']}]"
    names = ["caption and numbers" if f.endswith(".txt") else Path(f).suffix[1:].upper() for f in a["files"]]
    links = " · ".join(link(n, rel(f)) for n, f in zip(names, a["files"]))
    return {
        "image": _href(rel(image)) if image else "",
        "caption": md_escape(caption),
        "numbers": numbers,
        "links": links,
    }


def _table(a: dict, rel) -> dict:
    """A table's links, and the table itself when it is small and not shown in a section above."""
    csv = next((Path(f) for f in a["files"] if f.endswith(".csv")), None)
    shown = ("leaderboard", "mmlu_delta_categories", "clean_subset")
    small = small_table(csv) if csv is not None and a["name"] not in shown else None
    status = "" if a["status"] == "ok" else md_escape(f"Status: {a['status']}. ")
    return {
        "small": md_table(*small) if small is not None else "",
        "links": status + file_links(a["files"], rel),
    }


def _artifacts(produced: dict, kind: str, rel) -> list[dict]:
    """Every figure or table of the run (06's and 01-03's), or why it is missing."""
    out = []
    for a in (a for a in produced.get("artifacts", []) if a["kind"] == kind):
        entry = {"title": md_escape(a["title"]), "stage": a["stage"], "missing": md_escape(f"{a['status']}.")}
        if a["files"]:
            entry.update(missing="", **(_figure(a, rel) if kind == "figure" else _table(a, rel)))
        out.append(entry)
    return out


def _others(produced: dict, root: Path, rel) -> str:
    """Links to files in the report folders that nothing above lists."""
    linked = {str(Path(f)) for a in produced.get("artifacts", []) for f in a["files"]}
    folders = [root / kind for kind in ("figures", "tables") if (root / kind).is_dir()]
    files = (p for folder in folders for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    others = sorted(str(p) for p in files if str(p) not in linked)
    return _bullets([link(rel(p), rel(p)) for p in others], escape=False)


def summary_markdown(
    profile,
    produced: dict,
    leaderboard: pd.DataFrame | None = None,
    categories: pd.DataFrame | None = None,
    clean: pd.DataFrame | None = None,
    references: pd.DataFrame | None = None,
) -> str:
    """The report as Markdown (templates/summary.md.j2); links relative to reports/<profile>/."""
    root = profile.report_dir()

    def rel(path) -> str:
        return os.path.relpath(Path(path), root)

    def files(name: str) -> str:
        tables = (a["files"] for a in produced.get("artifacts", []) if (a["kind"], a["name"]) == ("table", name))
        return file_links(next(tables, []), rel)

    text = TEMPLATES.get_template("summary.md.j2").render(
        name=md_escape(profile.name),
        description=md_escape(profile.description.strip()) if profile.description else "",
        source_file=profile.source_file or "(not from a file)",
        run_dir=profile.run_dir(),
        notes=_bullets(produced.get("notes", [])),
        **_stage_tables(produced, rel),
        **_results(produced, leaderboard, categories, clean, references, files),
        figures=_artifacts(produced, "figure", rel),
        tables=_artifacts(produced, "table", rel),
        others=_others(produced, root, rel),
    )
    return text.rstrip("\n") + "\n"


def write_summary(profile, produced: dict, *frames: pd.DataFrame | None) -> list[Path]:
    """reports/<profile>/summary.md and summary.html; `frames`: summary_markdown's leaderboard, categories, clean
    and references."""
    root = profile.report_dir()
    root.mkdir(parents=True, exist_ok=True)
    markdown = summary_markdown(profile, produced, *frames)
    body = _RENDER(markdown)
    page = TEMPLATES.get_template("summary.html.j2").render(title=f"Run summary: {profile.name}", body=body)
    return [write_text(root / "summary.md", markdown), write_text(root / "summary.html", page)]


def _samples_text(run: EvalRun) -> str:
    if not run.samples.empty:
        return "per-question samples"
    if any("git-LFS pointer" in n for n in run.notes):
        return "samples are git-LFS pointers: unpaired errors from the results file"
    return "NO samples: unpaired errors"


def _comparison_lines(produced: dict, frame: pd.DataFrame) -> list[str]:
    """The comparisons made, each with the two runs' own MMLU settings, or why there is none."""
    made = produced.get("compared", [])
    if not made:
        return [produced.get("no_comparison") or "No comparison."]
    setups = {c: comparison_setup(frame, c) or comparison_setup(frame, c, "benchmark") for c in made}
    return [f"- {c}" + (f" (MMLU {setups[c]})" if setups[c] else "") for c in made]


def analyse_summary(runs: dict[str, EvalRun], produced: dict, frame: pd.DataFrame, st: StatsSettings) -> str:
    """out/summary.md of `platypus analyse` (templates/analyse_summary.md.j2)."""
    rows = frame[frame["level"] == "subject"] if not frame.empty else frame
    return TEMPLATES.get_template("analyse_summary.md.j2").render(
        inputs=[(n, r.source, ran_text(r), _samples_text(r)) for n, r in runs.items()],
        comparisons=_comparison_lines(produced, frame),
        verdicts=produced.get("verdicts", []),
        power=produced.get("power", []),
        method=f"{st.confidence:.0%} intervals, {method_text(rows)}; exact McNemar for accuracy, a paired "
        f"sign-flip test otherwise; Benjamini-Hochberg at FDR {st.alpha:g}.",
        references=produced["references"] + produced.get("reference_notes", []) if produced.get("references") else [],
        notes=produced["notes"],
        files=[p for group in ("tables", "figures") for ps in produced[group].values() for p in ps],
    )
