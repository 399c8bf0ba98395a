"""The summary report of 06_analysis: reports/<profile>/summary.md and summary.html.

The report is written once, as Markdown: headings and paragraphs as text, tables by pandas
(`DataFrame.to_markdown`), figures as images with their caption and links, and each figure's numbers
in a <details> block. summary.html is that Markdown rendered by mistune - nbconvert's Markdown engine,
used directly because importing nbconvert costs about 2.5 s and mistune 0.06 s (measured) - inside a
small HTML page with a style sheet. Free text is Markdown-escaped (`md_escape`); links are relative
to the report, so the folder can be moved or published as it is.

Sections: stage status, key numbers, the leaderboard (full and clean scores; released models evaluated
as references marked so), scores on the clean subset, MMLU change per category and what the sample size
can show, the released models (reproduction vs release, paired, and harness drift against the published
numbers, unpaired; or that no published numbers exist), every figure (06's and those 01-03 wrote) with
its caption, every table, and any other file found in the report folders.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from urllib.parse import quote

import jinja2
import mistune
import pandas as pd

from ..artifacts import write_text
from ..lmeval_io import EvalRun
from .clean import CATEGORIES
from .common import STAGE
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
)

_CSS = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:62rem;margin:2rem auto;"
    "padding:0 1rem;line-height:1.45;color:#222}table{border-collapse:collapse;margin:1rem 0;font-size:0.9rem}"
    "th,td{border-bottom:1px solid #ccc;padding:0.25rem 0.6rem;vertical-align:top}"
    "th{border-bottom:2px solid #444}td{font-variant-numeric:tabular-nums}"
    "img{max-width:100%;height:auto;border:1px solid #eee}"
    "pre{font-size:0.8rem;overflow-x:auto;background:#f6f6f6;padding:0.5rem}code{font-size:0.9em}"
)
_RENDER = mistune.create_markdown(escape=False, plugins=["table"])  # raw HTML kept: only <details> is written


def md_escape(text: str) -> str:
    """Markdown-escape free text; "_" inside a word (file names) is left, as CommonMark never reads it there."""
    text = str(text)
    out = []
    for k, ch in enumerate(text):
        inner = ch == "_" and 0 < k < len(text) - 1 and text[k - 1].isalnum() and text[k + 1].isalnum()
        out.append("\\" + ch if ch in "\\`*_[]<>|" and not inner else ch)
    return "".join(out)


def _href(path: str) -> str:
    return quote(path, safe="/._-~")


def link(text: str, href: str) -> str:
    return f"[{md_escape(text)}]({_href(href)})"


def md_table(frame: pd.DataFrame, text_columns: int = 1, links: tuple[str, ...] = ()) -> str:
    """A pipe table of `frame`, every cell escaped except those of the `links` columns (already Markdown)."""
    if frame.empty:
        return "(no rows)"
    shown = frame.astype(str).apply(lambda col: col if col.name in links else col.map(md_escape))
    align = ["left"] * text_columns + ["right"] * (len(frame.columns) - text_columns)
    return shown.to_markdown(index=False, colalign=align, disable_numparse=True)


def caption_text(paths: list[str]) -> tuple[str, str]:
    """(first line of the figure's caption file, the whole file) - the caption and the numbers."""
    txt = next((Path(p) for p in paths if p.endswith(".txt")), None)
    if txt is None or not txt.is_file():
        return "", ""
    try:
        text = txt.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return f"caption unreadable: {exc}", ""
    return text.strip().splitlines()[0] if text.strip() else "", text.rstrip()


def _stages_section(produced: dict, rel) -> list[str]:
    rows = [
        [
            r["stage"],
            r["status"],
            r.get("finished_at") or "",
            r.get("runner") or "–",
            "" if r.get("wall_s") is None or pd.isna(r.get("wall_s")) else f"{float(r['wall_s']):.1f}",
        ]
        for r in produced.get("pipeline", [])
    ] + [[STAGE, "this report", "", "–", ""]]
    stages = pd.DataFrame(rows, columns=["stage", "status", "finished", "runner record", "wall time (s)"])
    numbers = pd.DataFrame(
        [
            [
                n["stage"],
                n["quantity"],
                n["value"],
                link(Path(n["source"]).name, rel(n["source"])) if Path(n["source"]).is_file() else "–",
            ]
            for n in produced.get("key_numbers", [])
        ],
        columns=["stage", "quantity", "value", "from"],
    )
    return [
        "## Stages",
        md_table(stages, 4),
        "Status and timing from each stage's manifest.json; runner record from `run_summary.json` as found "
        "when this report was written (the runner writes it after its last stage, so when 06 ran inside the "
        "runner it describes the invocation before).",
        "## Key numbers",
        md_table(numbers, 3, links=("from",)),
    ]


def _leaderboard_section(produced: dict, leaderboard: pd.DataFrame | None, rel) -> list[str]:
    out = ["## Leaderboard"]
    if leaderboard is not None and not leaderboard.empty:
        shown = leaderboard_display(leaderboard)
        out.append(md_table(shown, 3 if "items" in shown.columns else 2))
    else:
        out.append("05_evaluate not run: no evaluation results.")
    refs = leaderboard is not None and not leaderboard.empty and has_references(leaderboard)
    out.append(
        md_escape(
            f"Scores in percent ± standard error; {metric_note(leaderboard)}." + (f" {REFERENCE_NOTE}." if refs else "")
        )
        + " "
        + file_links(produced, "table", "leaderboard", rel)
    )
    return out


def _references_section(produced: dict, references: pd.DataFrame | None, rel) -> list[str]:
    """Released models: reproduction vs release (paired) and harness drift (unpaired), or why not."""
    if "references" not in produced:
        return []
    out = ["## Released models: reproduction vs release, and harness drift"]
    if references is not None and not references.empty:
        out += [md_table(reference_display(references), 2), md_escape(reference_note())]
    out.append(_bullets(produced["references"] + produced.get("reference_notes", [])))
    out.append(file_links(produced, "table", "references", rel))
    return out


def _clean_section(produced: dict, clean: pd.DataFrame | None, rel) -> list[str]:
    out = ["## Scores on the clean subset"]
    info = produced.get("clean_subset") or {}
    if clean is not None and not clean.empty:
        out += [
            md_escape(
                CLEAN_NOTE + "; gap: clean − full in points ± its standard error; no <category>: the "
                f"items with no flagged pair of that category ({', '.join(CATEGORIES)})."
            ),
            md_table(clean_display(clean), 2),
        ]
    out += [md_escape(line) for line in [info.get("why", "")] + info.get("notes", []) if line]
    counts = info.get("flagged_counts")
    if counts:
        out += [
            "Test items 02 flagged, per benchmark and category, and how many of them were evaluated:",
            md_table(
                pd.DataFrame(counts).apply(
                    lambda col: (
                        col if col.name == "benchmark" else col.map(lambda v: "–" if pd.isna(v) else f"{int(v):,}")
                    )
                ),
                1,
            ),
        ]
    out.append(file_links(produced, "table", "clean_subset", rel))
    return out


def _categories_section(produced: dict, categories: pd.DataFrame | None, rel) -> list[str]:
    out = ["## MMLU change per category"]
    cats_frame = level(categories, "category") if categories is not None and not categories.empty else None
    if cats_frame is None or cats_frame.empty:
        return out + ["No comparison: needs the baseline and at least one other variant evaluated on MMLU."]
    out += [
        md_table(shown := category_display(categories, with_kind=True), category_text_columns(shown)),
        md_escape(
            f"Percentage points, mean over the category's subjects [interval: {method_text(cats_frame)}]; "
            "* significant after Benjamini-Hochberg."
        )
        + " "
        + file_links(produced, "table", "mmlu_delta_categories", rel),
        "## What the sample size can show",
        _bullets(produced.get("verdicts", [])),
        "Questions a change of 5 points in one category would need (two-sided exact McNemar, alpha 0.05, "
        "power 0.8; the discordance is the share of questions on which the two models disagree, as observed "
        "in that category, or assumed 0.20 where too few disagreements were seen):",
        _bullets(produced.get("power", [])),
    ]
    return out


def _figure_block(a: dict, rel) -> list[str]:
    out = [f"### {md_escape(a['title'])} ({a['stage']})"]
    if not a["files"]:
        return out + [md_escape(f"{a['status']}.")]
    caption, numbers = caption_text(a["files"])
    image = next((f for f in a["files"] if f.endswith(".png")), None) or next(
        (f for f in a["files"] if f.endswith(".svg")), None
    )
    status = "" if a["status"] == "ok" else f" [{a['status']}]"
    out += [f"![{md_escape(a['title'])}]({_href(rel(image))})"] if image else []
    out += [f"*{md_escape(caption + status)}*"] if caption + status else []
    out.append(
        " · ".join(
            link("caption and numbers" if f.endswith(".txt") else Path(f).suffix[1:].upper(), rel(f))
            for f in a["files"]
        )
    )
    if numbers:
        out += ["<details><summary>numbers shown</summary>", f"~~~~text\n{numbers}\n~~~~", "</details>"]
    return out


def _table_block(produced: dict, a: dict, rel) -> list[str]:
    out = [f"### {md_escape(a['title'])} ({a['stage']})"]
    if not a["files"]:
        return out + [md_escape(f"{a['status']}.")]
    csv = next((Path(f) for f in a["files"] if f.endswith(".csv")), None)
    small = (
        small_table(csv)
        if csv is not None and a["name"] not in ("leaderboard", "mmlu_delta_categories", "clean_subset")
        else None
    )
    if small is not None:
        out.append(md_table(*small))
    status = "" if a["status"] == "ok" else md_escape(f"Status: {a['status']}. ")
    return out + [status + file_links(produced, "table", a["name"], rel, stage=a["stage"])]


def _others_section(produced: dict, root: Path, rel) -> list[str]:
    linked = {str(Path(f)) for a in produced.get("artifacts", []) for f in a["files"]}
    others = sorted(
        str(p)
        for kind in ("figures", "tables")
        if (root / kind).is_dir()
        for p in (root / kind).iterdir()
        if p.is_file() and str(p) not in linked and not p.name.startswith(".")
    )
    if not others:
        return []
    return [
        "## Other files in the report folders",
        "Not written by this analysis nor listed above for 01-03: possibly left by an earlier run.",
        _bullets([link(rel(p), rel(p)) for p in others], escape=False),
    ]


def _seeds_section(produced: dict, rel) -> list[str]:
    """Training seeds (finetune.seeds): the spread of the merge into the base, against one run's error."""
    if "seeds" not in produced:
        return []
    return [
        "## Training seeds",
        _bullets(produced["seeds"]),
        file_links(produced, "table", "seed_spread", rel),
    ]


def summary_markdown(
    profile,
    produced: dict,
    leaderboard: pd.DataFrame | None = None,
    categories: pd.DataFrame | None = None,
    clean: pd.DataFrame | None = None,
    references: pd.DataFrame | None = None,
) -> str:
    """The report as Markdown (see the module docstring); links relative to reports/<profile>/."""
    root = profile.report_dir()

    def rel(path) -> str:
        return os.path.relpath(Path(path), root)

    blocks = [f"# Run summary: {md_escape(profile.name)}"]
    blocks += [md_escape(profile.description.strip())] if profile.description else []
    blocks.append(
        f"Profile `{profile.source_file or '(not from a file)'}`. Written by 06_analysis from the run's "
        f"artifacts in `{profile.run_dir()}`; every table and figure below is a file beside this report. "
        'Status "not run": the stage has left no artifact.'
    )
    if produced.get("notes"):
        blocks += ["## Notes", _bullets(produced["notes"])]
    blocks += _stages_section(produced, rel) + _leaderboard_section(produced, leaderboard, rel)
    blocks += _clean_section(produced, clean, rel) + _categories_section(produced, categories, rel)
    blocks += _references_section(produced, references, rel) + _seeds_section(produced, rel)
    blocks.append("## Figures")
    for a in produced.get("artifacts", []):
        blocks += _figure_block(a, rel) if a["kind"] == "figure" else []
    blocks.append("## Tables")
    for a in produced.get("artifacts", []):
        blocks += _table_block(produced, a, rel) if a["kind"] == "table" else []
    blocks += _others_section(produced, root, rel)
    return "\n\n".join(b for b in blocks if b) + "\n"


def summary_html(markdown: str, title: str) -> str:
    """The Markdown report rendered to a standalone HTML page."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8" />\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + _RENDER(markdown)
        + "</body>\n</html>\n"
    )


def write_summary(profile, produced: dict, *frames: pd.DataFrame | None) -> list[Path]:
    """reports/<profile>/summary.md and summary.html (`frames`: summary_markdown's leaderboard, categories,
    clean and references)."""
    root = profile.report_dir()
    root.mkdir(parents=True, exist_ok=True)
    markdown = summary_markdown(profile, produced, *frames)
    return [
        write_text(root / "summary.md", markdown),
        write_text(root / "summary.html", summary_html(markdown, f"Run summary: {profile.name}")),
    ]


def _bullets(items: list, escape: bool = True) -> str:
    return "\n".join("- " + (md_escape(str(i)) if escape else str(i)) for i in items)


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


def file_links(produced: dict, kind: str, name: str, rel, stage: str | None = None) -> str:
    """ "Files: a.csv, a.md, a.tex." for one artifact (Markdown links), or "" when it has none."""
    files = next(
        (
            a["files"]
            for a in produced.get("artifacts", [])
            if a["kind"] == kind and a["name"] == name and stage in (None, a["stage"])
        ),
        [],
    )
    return ("Files: " + ", ".join(link(Path(f).name, rel(f)) for f in files) + ".") if files else ""


_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    undefined=jinja2.StrictUndefined,
)


def _samples_text(run: EvalRun) -> str:
    if run.has_samples:
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
    """out/summary.md of `platypus analyse` (templates/analyse_summary.md.j2): inputs (each with its own
    settings), the comparisons, what the sample size can show (only where a comparison was tested), notes and
    the files written."""
    rows = frame[frame["level"] == "subject"] if not frame.empty else frame
    return _TEMPLATES.get_template("analyse_summary.md.j2").render(
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
