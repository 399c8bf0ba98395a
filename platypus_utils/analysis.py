"""Stage 06_analysis: the paper's tables and figures, and a summary report, from the run's artifacts.

Reads the normalised summaries of 05_evaluate (`<variant>.json`, not the raw lm-eval output),
04_merge's report, and what 01-03 wrote. Every input is optional: a stage that has not run
shows as "not run", a variant that failed shows as "failed", and nothing here raises because
an upstream artifact is absent or unreadable.

Comparisons (see `comparisons`): fine-tuned vs base ("adapter", "merged"), merged vs base and
merged vs partner ("<partner>-platypus" against the base and against "<partner>" when that
was evaluated), partner vs base.

Writes to reports/<profile>/tables/:
  leaderboard.{csv,md,tex}  - every variant (and the paper's numbers with analysis.published_results),
                              scores in percent +- standard error
  mmlu_delta.csv            - per comparison and subject: the change, the combined standard error and
                              whether the change is within it
  mmlu_delta_categories.{csv,md,tex} - the same per lm-eval category and over all subjects
  benchmark_deltas.csv      - per comparison and benchmark
  merge_tradeoff.csv        - per variant: MMLU against the mean of the other three benchmarks
  pipeline.{csv,md}         - status and headline numbers of every stage
to reports/<profile>/figures/ (each as PNG + PDF and a .txt caption holding the numbers shown):
  leaderboard, mmlu_delta_<variant>[_vs_<reference>], mmlu_delta_categories, mmlu_delta_heatmap,
  merge_tradeoff
and reports/<profile>/summary.{md,html}: stage status, key numbers, and every table and figure
(including 01-03's composition, contamination and loss-curve ones) with its caption.
"""
from __future__ import annotations

import html
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from .artifacts import MANIFEST, StageRun, read_manifest, sha256_path, write_json, write_text
from .merge import MERGED_VARIANT, PARTNER_SUFFIX

log = logging.getLogger("platypus")
STAGE = "06_analysis"
BENCHMARKS = ("arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2")
LABELS = {"arc_challenge": "ARC", "hellaswag": "HellaSwag", "mmlu": "MMLU", "truthfulqa_mc2": "TruthfulQA"}
METRIC_NOTE = "ARC 25-shot acc_norm, HellaSwag 10-shot acc_norm, MMLU 5-shot acc (mean over subjects), TruthfulQA 0-shot mc2"
CATEGORY_ORDER = ("stem", "humanities", "social_sciences", "other")  # lm-eval's MMLU groups
ALL_SUBJECTS = "all"
UNCATEGORISED = "uncategorised"
CATEGORY_LABELS = {"stem": "STEM", "humanities": "humanities", "social_sciences": "social sciences", "other": "other",
                   ALL_SUBJECTS: "all subjects"}
NOT_RUN = "not run"
PALETTE = "colorblind"  # plotting.PALETTE, without importing matplotlib here
ADAPTER_VARIANT = "adapter"  # 05_evaluate: base + the unmerged LoRA adapter
KIND_FINETUNED, KIND_MERGED, KIND_PARTNER = "fine-tuned vs base", "merged vs base", "merged vs partner"
KIND_PARTNER_BASE, KIND_OTHER = "partner vs base", "vs base"
ROLE_BASE, ROLE_FINETUNED, ROLE_MERGED_BASE = "base", "fine-tuned (adapter)", "fine-tuned (merged)"
ROLE_MERGED_PARTNER, ROLE_PARTNER, ROLE_OTHER = "merged into partner", "partner", "other"
ROLE_MARKERS = {ROLE_BASE: "o", ROLE_FINETUNED: "s", ROLE_MERGED_BASE: "D", ROLE_MERGED_PARTNER: "^",
                ROLE_PARTNER: "v", ROLE_OTHER: "P"}
LABEL_OFFSETS = ((7, 6, "left"), (7, -12, "left"), (-7, 6, "right"), (-7, -12, "right"))
WITHIN_FILL, WITHIN_HATCH = (0.85, 0.85, 0.85), "////"
# what 01-03 write into reports/<profile>/: linked from the summary, not redrawn here
UPSTREAM = (
    ("01_curate", "figure", "01_composition", "Composition of the curated training set"),
    ("01_curate", "table", "composition", "Rows per data source and curation outcome"),
    ("02_decontaminate", "figure", "02_contamination", "Benchmark contamination of the training data"),
    ("02_decontaminate", "table", "contamination_table", "Flagged and removed training rows per source and benchmark"),
    ("03_finetune", "figure", "03_loss_curve", "Fine-tuning loss curves"),
)
FIGURE_EXTS, TABLE_EXTS = ("png", "pdf", "svg", "txt"), ("csv", "md", "tex")
# PLATYPUS.md section 6: Open LLM Leaderboard v1 numbers reported for the paper's models (percent)
PUBLISHED = {
    "Platypus2-70B-instruct": (71.84, 87.94, 70.48, 62.26, 73.13),
    "Camel-Platypus2-70B": (71.16, 87.66, 69.80, 57.77, 71.60),
    "OpenOrca-Platypus2-13B": (62.88, 83.19, 59.50, 52.69, 64.56),
    "Stable-Platypus2-13B": (62.71, 82.29, 58.30, 52.52, 63.96),
    "Llama-2-13b (base)": (59.3, 82.15, 55.67, 37.39, 58.63),
}
PUBLISHED_SOURCE = "paper (Lee et al. 2023)"


# ---------------------------------------------------------------- reading
def _read_json(path: Path) -> tuple[Any, str | None]:
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"unreadable: {type(exc).__name__}: {exc}"


def load_summaries(eval_dir: str | Path, order: list[str] | None = None) -> tuple[dict[str, dict], dict[str, str], list[Path]]:
    """(summaries by variant, failed variants -> error, files read) from a 05_evaluate folder.

    A summary is a `<variant>.json` holding "variant" and "tasks"; the raw lm-eval output,
    the report and the manifest are skipped. Variants come in `order` first, then by name.
    """
    eval_dir = Path(eval_dir)
    summaries: dict[str, dict] = {}
    failed: dict[str, str] = {}
    read: list[Path] = []
    if not eval_dir.is_dir():
        return summaries, failed, read
    for path in sorted(eval_dir.glob("*.json")):
        if path.name.endswith(".raw.json") or path.name in ("manifest.json", "evaluate_report.json"):
            continue
        data, err = _read_json(path)
        if err or not isinstance(data, dict) or "tasks" not in data or "variant" not in data:
            log.warning("%s: not an evaluation summary (%s); skipped", path, err or "no 'variant'/'tasks'")
            continue
        summaries[data["variant"]] = data
        read.append(path)
    report = eval_dir / "evaluate_report.json"
    data, err = _read_json(report) if report.is_file() else (None, None)
    if isinstance(data, dict):
        read.append(report)
        for name, info in (data.get("variants") or {}).items():
            if isinstance(info, dict) and info.get("status") == "failed" and name not in summaries:
                failed[name] = str(info.get("error", "failed"))
    rank = {v: k for k, v in enumerate(order or [])}
    ordered = sorted(summaries, key=lambda v: (rank.get(v, len(rank)), v))
    return {v: summaries[v] for v in ordered}, failed, read


def _task(summary: dict, bench: str) -> dict | None:
    t = (summary.get("tasks") or {}).get(bench)
    return t if isinstance(t, dict) and isinstance(t.get("value"), (int, float)) else None


def _pct(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else 100.0 * float(x)


# ---------------------------------------------------------------- leaderboard
def leaderboard_frame(summaries: dict[str, dict], failed: dict[str, str] | None = None,
                      published: bool = False) -> pd.DataFrame:
    """One row per variant: each benchmark in percent with its standard error, and the average."""
    rows = []
    for variant, s in summaries.items():
        row: dict[str, Any] = {"variant": variant, "source": "this run", "status": "ok", "model": s.get("model", "")}
        for bench in BENCHMARKS:
            t = _task(s, bench)
            row[bench] = _pct(t["value"]) if t else None
            row[f"{bench}_stderr"] = _pct(t.get("stderr")) if t else None
            row[f"{bench}_n"] = t.get("n") if t else None
        mm = _task(s, "mmlu")
        row["mmlu_weighted"] = _pct(mm.get("weighted_value")) if mm else None
        present = [row[b] for b in BENCHMARKS if row[b] is not None]
        row["average"] = sum(present) / len(present) if present else None
        row["average_over"] = len(present)
        rows.append(row)
    for variant, err in (failed or {}).items():
        rows.append({"variant": variant, "source": "this run", "status": f"failed: {err}", "model": ""})
    if published:
        for name, values in PUBLISHED.items():
            row = {"variant": name, "source": PUBLISHED_SOURCE, "status": "published", "model": name,
                   "average": values[4], "average_over": 4}
            row.update(dict(zip(BENCHMARKS, values[:4])))
            rows.append(row)
    cols = (["variant", "source", "status", "model"]
            + [c for b in BENCHMARKS for c in (b, f"{b}_stderr", f"{b}_n")]
            + ["mmlu_weighted", "average", "average_over"])
    return pd.DataFrame(rows, columns=cols)


def _cell(value: Any, stderr: Any = None, tex: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NOT_RUN
    if stderr is None or (isinstance(stderr, float) and math.isnan(stderr)):
        return f"{value:.2f}"
    return f"${value:.2f} \\pm {stderr:.2f}$" if tex else f"{value:.2f} ± {stderr:.2f}"


def _display_rows(frame: pd.DataFrame, tex: bool = False) -> tuple[list[str], list[list[str]]]:
    header = ["model", "source"] + [LABELS[b] for b in BENCHMARKS] + ["average"]
    out = []
    for _, r in frame.iterrows():
        if str(r["status"]).startswith("failed"):
            cells = [r["variant"], r["source"]] + ["failed"] * (len(BENCHMARKS) + 1)
        else:
            cells = [r["variant"], r["source"]] + [_cell(r[b], r.get(f"{b}_stderr"), tex) for b in BENCHMARKS]
            avg = _cell(r["average"], None, tex)
            if avg != NOT_RUN and int(r["average_over"]) < len(BENCHMARKS):
                avg += f" ({int(r['average_over'])} of {len(BENCHMARKS)})"
            cells.append(avg)
        out.append([str(c) for c in cells])
    return header, out


def _markdown(header: list[str], rows: list[list[str]], text_columns: int = 2) -> str:
    esc = [[c.replace("|", "\\|") for c in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * text_columns + ["---:"] * (len(header) - text_columns)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in esc]
    return "\n".join(lines) + "\n"


def _tex_escape(text: str) -> str:
    if text.startswith("$") and text.endswith("$"):
        return text
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in text)


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$"}


def _latex(header: list[str], rows: list[list[str]], caption: str, label: str, split_on_source: bool = True,
           text_columns: int = 2) -> str:
    lines = ["% requires \\usepackage{booktabs}", "\\begin{table}[t]", "\\centering", "\\small",
             f"\\begin{{tabular}}{{{'l' * text_columns}{'r' * (len(header) - text_columns)}}}", "\\toprule",
             " & ".join(_tex_escape(h) for h in header) + " \\\\", "\\midrule"]
    for k, row in enumerate(rows):
        if split_on_source and k and row[1] != rows[k - 1][1]:  # a rule between our rows and the paper's
            lines.append("\\midrule")
        lines.append(" & ".join(_tex_escape(c) for c in row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{_tex_escape(caption)}}}", f"\\label{{{label}}}",
              "\\end{table}"]
    return "\n".join(lines) + "\n"


def write_leaderboard(frame: pd.DataFrame, table_dir: Path) -> list[Path]:
    table_dir = Path(table_dir)
    header, rows = _display_rows(frame)
    _, tex_rows = _display_rows(frame, tex=True)
    note = f"Scores in percent ± standard error. {METRIC_NOTE}."
    if frame.empty:
        note += " No evaluation results: 05_evaluate not run."
    md = "# Leaderboard\n\n" + note + "\n\n" + _markdown(header, rows)
    weighted = [f"{r['variant']} {r['mmlu_weighted']:.2f}" for _, r in frame.iterrows()
                if r["source"] == "this run" and not pd.isna(r.get("mmlu_weighted"))]
    if weighted:
        md += ("\nMMLU above is the mean over subjects (the leaderboard's); lm-eval's size-weighted mean "
               "over questions: " + ", ".join(weighted) + ".\n")
    return [write_text(table_dir / "leaderboard.csv", frame.to_csv(index=False)),
            write_text(table_dir / "leaderboard.md", md),
            write_text(table_dir / "leaderboard.tex", _latex(header, tex_rows, note, "tab:leaderboard"))]


def leaderboard_figure(frame: pd.DataFrame, stem: Path, formats: list[str]) -> list[Path]:
    from .plotting import save_figure, style

    plt, sns = style()
    ours = frame[frame["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    lines = ["Leaderboard scores (percent, error bars: ±1 standard error). " + METRIC_NOTE + "."]
    if ours.empty:
        ax.text(0.5, 0.5, "no evaluation results (05_evaluate not run)", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        lines.append("No variant was evaluated.")
    else:
        palette = sns.color_palette(PALETTE, len(ours))
        width = 0.8 / len(ours)
        for k, (_, r) in enumerate(ours.iterrows()):
            xs, ys, es = [], [], []
            for j, bench in enumerate(BENCHMARKS):
                if r[bench] is not None and not pd.isna(r[bench]):
                    xs.append(j + (k - (len(ours) - 1) / 2) * width)
                    ys.append(r[bench])
                    es.append(0.0 if pd.isna(r[f"{bench}_stderr"]) else r[f"{bench}_stderr"])
            ax.bar(xs, ys, width=width, yerr=es, capsize=2, color=palette[k], label=r["variant"])
            lines.append(f"{r['variant']}: " + ", ".join(
                f"{LABELS[b]} {_cell(r[b], r[f'{b}_stderr'])}" for b in BENCHMARKS) + f"; average {_cell(r['average'])}")
        ax.set_xticks(range(len(BENCHMARKS)), [LABELS[b] for b in BENCHMARKS])
        ax.set_ylabel("score (%)")
        ax.set_ylim(0, 100)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False, ncols=min(4, len(ours)))
    ax.set_title("Open LLM Leaderboard v1 benchmarks")
    return save_figure(fig, stem, "\n".join(lines), formats=formats)


# ---------------------------------------------------------------- comparisons
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
    """Merged variant -> the partner its adapter was merged into (None: the base it was trained on).

    From the profile (what 04_merge makes) and, where present, 04_merge's report (what it made)."""
    out: dict[str, str | None] = {}
    if profile.merge.merge_into_base:
        out[MERGED_VARIANT] = None
    for partner in profile.merge.partners:
        out[partner.name + PARTNER_SUFFIX] = partner.name
    models = (merge_report or {}).get("models")
    for name, info in (models.items() if isinstance(models, dict) else ()):
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


def comparisons(variants: list[str], baseline: str, merged: dict[str, str | None]) -> tuple[list[Comparison], list[str]]:
    """The comparisons the evaluated variants allow, and a note for each one they do not.

    fine-tuned vs base: "adapter" (unmerged) and "merged" (the adapter folded into its own base);
    merged vs base and merged vs partner: "<partner>-platypus" (the adapter merged into a partner);
    partner vs base, and any other variant vs base, for context."""
    pairs: list[Comparison] = []
    notes: list[str] = []
    for variant in variants:
        if variant == baseline:
            continue
        role = variant_role(variant, baseline, merged)
        if baseline in variants:
            kind = {ROLE_FINETUNED: KIND_FINETUNED, ROLE_MERGED_BASE: KIND_FINETUNED,
                    ROLE_MERGED_PARTNER: KIND_MERGED, ROLE_PARTNER: KIND_PARTNER_BASE}.get(role, KIND_OTHER)
            pairs.append(Comparison(variant, baseline, kind))
        partner = merged.get(variant)
        if partner and partner in variants and partner != baseline:
            pairs.append(Comparison(variant, partner, KIND_PARTNER))
        elif partner and partner not in variants:
            notes.append(f"partner {partner!r} of {variant!r} not evaluated: no merged-vs-partner comparison "
                         "(add it to evaluate.variants)")
    return pairs, notes


# ---------------------------------------------------------------- MMLU deltas
def _se(*ses: Any) -> float | None:
    return None if any(s is None or pd.isna(s) for s in ses) else math.sqrt(sum(float(s) ** 2 for s in ses))


def mmlu_delta_frame(summaries: dict[str, dict], baseline: str, pairs: list[Comparison] | None = None) -> pd.DataFrame:
    """Per comparison and subject, variant minus reference (percentage points), with the combined
    standard error sqrt(se_v^2 + se_r^2) (ignores that both saw the same questions: conservative);
    `within_stderr` marks |delta| <= that error. Without `pairs`: every variant vs `baseline`."""
    if pairs is None:
        pairs = [Comparison(v, baseline, KIND_OTHER) for v in summaries if v != baseline and baseline in summaries]
    cols = ["comparison", "kind", "variant", "reference", "subject", "category", "reference_acc", "variant_acc",
            "delta", "combined_stderr", "within_stderr", "n"]
    rows = []
    for rank, c in enumerate(pairs):
        ref = (summaries.get(c.reference) or {}).get("mmlu_subjects") or {}
        for subject, v in sorted(((summaries.get(c.variant) or {}).get("mmlu_subjects") or {}).items()):
            b = ref.get(subject)
            if not isinstance(v, dict) or not isinstance(b, dict) or v.get("acc") is None or b.get("acc") is None:
                continue
            delta = 100.0 * (v["acc"] - b["acc"])
            se = _se(v.get("stderr"), b.get("stderr"))
            se = None if se is None else 100.0 * se
            rows.append({"comparison": c.label, "kind": c.kind, "variant": c.variant, "reference": c.reference,
                         "subject": subject, "category": v.get("category") or b.get("category") or UNCATEGORISED,
                         "reference_acc": 100.0 * b["acc"], "variant_acc": 100.0 * v["acc"], "delta": delta,
                         "combined_stderr": se, "within_stderr": bool(se is not None and abs(delta) <= se),
                         "n": v.get("n"), "_rank": rank})
    frame = pd.DataFrame(rows, columns=cols + ["_rank"])
    frame = frame.sort_values(["_rank", "delta", "subject"], kind="mergesort")
    return frame.drop(columns="_rank").reset_index(drop=True)


def _category_order(categories) -> list[str]:
    present = set(categories)
    return [c for c in CATEGORY_ORDER if c in present] + sorted(present - set(CATEGORY_ORDER) - {ALL_SUBJECTS})


def category_delta_frame(deltas: pd.DataFrame) -> pd.DataFrame:
    """Per comparison and MMLU category (lm-eval's four groups, then "all" subjects):
    `delta` - mean of the subjects' deltas (the leaderboard's mean over subjects), error
    sqrt(sum se_i^2) / k; `delta_weighted` - weighted by questions (lm-eval's group score).
    Where some subject has no standard error (one question each, as in small CPU profiles), the
    error is the paired one over the subjects, stdev(delta_i) / sqrt(k) (`stderr_method`)."""
    cols = ["comparison", "kind", "variant", "reference", "category", "subjects", "n", "reference_acc",
            "variant_acc", "delta", "combined_stderr", "within_stderr", "delta_weighted", "weighted_stderr",
            "stderr_method"]
    rows = []
    for _, g in deltas.groupby("comparison", sort=False):
        first = g.iloc[0]
        for category in _category_order(g["category"]) + [ALL_SUBJECTS]:
            h = g if category == ALL_SUBJECTS else g[g["category"] == category]
            k = len(h)
            has_se = bool(h["combined_stderr"].notna().all())
            se = math.sqrt(float((h["combined_stderr"] ** 2).sum())) / k if has_se else None
            method = "per-subject" if has_se else None
            if not has_se and k >= 2:
                se, method = float(h["delta"].std(ddof=1)) / math.sqrt(k), "paired over subjects"
            delta = float(h["delta"].mean())
            n = h["n"]
            weighted = weighted_se = None
            if n.notna().all() and float(n.sum()) > 0:
                w = n.astype(float) / float(n.sum())
                weighted = float((w * h["delta"]).sum())
                weighted_se = math.sqrt(float(((w * h["combined_stderr"]) ** 2).sum())) if has_se else None
            rows.append({"comparison": first["comparison"], "kind": first["kind"], "variant": first["variant"],
                         "reference": first["reference"], "category": category, "subjects": k,
                         "n": int(n.sum()) if n.notna().all() else None,
                         "reference_acc": float(h["reference_acc"].mean()), "variant_acc": float(h["variant_acc"].mean()),
                         "delta": delta, "combined_stderr": se, "within_stderr": bool(se is not None and abs(delta) <= se),
                         "delta_weighted": weighted, "weighted_stderr": weighted_se, "stderr_method": method})
    return pd.DataFrame(rows, columns=cols)


def _signed(delta: float, se: Any, within: bool, tex: bool = False) -> str:
    if se is None or pd.isna(se):
        text = f"{delta:+.2f}"
        return f"${text}$" if tex else text
    if tex:
        dagger = r"^\dagger" if within else ""
        return f"${delta:+.2f} \\pm {se:.2f}{dagger}$"
    return f"{delta:+.2f} ± {se:.2f}" + (" †" if within else "")


def write_category_tables(categories: pd.DataFrame, table_dir: Path) -> list[Path]:
    """mmlu_delta_categories.{csv,md,tex}: one row per comparison, one column per category."""
    table_dir = Path(table_dir)
    cats = _category_order(categories["category"]) + [ALL_SUBJECTS]
    header = ["comparison"] + [CATEGORY_LABELS.get(c, c) for c in cats]

    def rows(tex: bool) -> list[list[str]]:
        out = []
        for label, g in categories.groupby("comparison", sort=False):
            by = g.set_index("category")
            out.append([label] + [_signed(by.loc[c, "delta"], by.loc[c, "combined_stderr"], by.loc[c, "within_stderr"], tex)
                                  if c in by.index else "–" for c in cats])
        return out

    note = ("MMLU 5-shot accuracy change in percentage points, mean over the category's subjects ± combined "
            "standard error; † within ±1 standard error.")
    if categories.empty:
        note += " No comparison: the baseline or 05_evaluate did not run."
    return [write_text(table_dir / "mmlu_delta_categories.csv", categories.to_csv(index=False)),
            write_text(table_dir / "mmlu_delta_categories.md",
                       "# MMLU change per category\n\n" + note + "\n\n" + _markdown(header, rows(False), text_columns=1)),
            write_text(table_dir / "mmlu_delta_categories.tex",
                       _latex(header, rows(True), note, "tab:mmlu-categories", split_on_source=False,
                              text_columns=1))]


def _category_colours(sns, categories) -> dict[str, Any]:
    palette = sns.color_palette(PALETTE, 10)
    colours = dict(zip(CATEGORY_ORDER, [palette[k] for k in (0, 1, 2, 4)]))  # not 3: vermillion is close to orange
    extra = sorted(set(categories) - set(CATEGORY_ORDER))
    colours.update(zip(extra, [palette[k % 10] for k in range(5, 5 + len(extra))]))
    return colours


def _within_line(r) -> str:
    se = "n/a" if r["combined_stderr"] is None or pd.isna(r["combined_stderr"]) else f"{r['combined_stderr']:.2f}"
    return f"{r['delta']:+.2f} ± {se}" + (" (within s.e.)" if r["within_stderr"] else "")


def _subjects(k: int) -> str:
    return f"{k} subject" + ("" if k == 1 else "s")


def mmlu_delta_figure(deltas: pd.DataFrame, categories: pd.DataFrame, comparison: str,
                      stem: Path, formats: list[str]) -> list[Path]:
    """Sorted bar chart of one comparison's per-subject MMLU change, beside its category means."""
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    from .plotting import save_figure, style

    plt, sns = style()
    d = deltas[deltas["comparison"] == comparison].sort_values(["delta", "subject"], kind="mergesort")
    c = categories[categories["comparison"] == comparison]
    variant, reference = d["variant"].iloc[0], d["reference"].iloc[0]
    colours = _category_colours(sns, d["category"])
    colours[ALL_SUBJECTS] = (0.25, 0.25, 0.25)
    order = _category_order(c["category"]) + [ALL_SUBJECTS]
    c = c.set_index("category").reindex([k for k in order if k in set(c["category"])]).reset_index()
    per_subject_h = 0.15 if len(d) > 20 else 0.28
    height = max(3.4, per_subject_h * len(d) + 1.5)
    cat_h = 0.32 * len(c) + 0.9
    fig = plt.figure(figsize=(7.2, height), layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=[2.3, 1], height_ratios=[cat_h, max(height - cat_h, 1.2)])
    ax, axc, axl = fig.add_subplot(grid[:, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, 1])
    _delta_bars(ax, [s.replace("_", " ") for s in d["subject"]], d["delta"], d["combined_stderr"],
                [colours[k] for k in d["category"]], d["within_stderr"])  # ascending: the largest gain on top
    if len(d) > 20:
        ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel(f"{variant} − {reference} (percentage points)")
    ax.set_title(f"Per subject ({len(d)})")
    rev = c.iloc[::-1]  # STEM on top, all subjects at the bottom
    _delta_bars(axc, [CATEGORY_LABELS.get(k, k) for k in rev["category"]], rev["delta"], rev["combined_stderr"],
                [colours[k] for k in rev["category"]], rev["within_stderr"])
    axc.xaxis.set_major_locator(MaxNLocator(nbins=4))
    axc.set_title("Per category (mean)")
    axc.set_xlabel("percentage points")
    handles = [Patch(facecolor=colours[k], label=CATEGORY_LABELS.get(k, k)) for k in _category_order(d["category"])]
    handles.append(Patch(facecolor=WITHIN_FILL, edgecolor="black", hatch=WITHIN_HATCH, label="within ±1 s.e."))
    axl.set_axis_off()
    axl.legend(handles=handles, loc="upper left", frameon=False, title="category")
    fig.suptitle(f"MMLU change per subject: {variant} vs {reference}")
    caption = [f"MMLU 5-shot accuracy change of {variant} against {reference}, in percentage points, sorted; "
               "error bars: ±1 combined standard error sqrt(se_variant² + se_reference²); grey hatched bars are "
               "within it. Right: mean change per category (lm-eval's grouping) and over all subjects."
               + _no_stderr_note(d), "", "Per category:"]
    caption += [f"  {CATEGORY_LABELS.get(r['category'], r['category'])} ({_subjects(r['subjects'])}): "
                f"{r['reference_acc']:.2f} -> {r['variant_acc']:.2f}, {_within_line(r)}" for _, r in c.iterrows()]
    caption += ["", "Per subject (reference -> variant, change):"]
    caption += [f"  {r['subject']}: {r['reference_acc']:.2f} -> {r['variant_acc']:.2f}, {_within_line(r)}"
                for _, r in d.iloc[::-1].iterrows()]
    return save_figure(fig, stem, "\n".join(caption), formats=formats)


def _no_stderr_note(deltas: pd.DataFrame) -> str:
    missing = int(deltas["combined_stderr"].isna().sum())
    if not missing:
        return ""
    return (" No standard error for any subject: none is marked." if missing == len(deltas)
            else f" No standard error for {_subjects(missing)}: not marked.")


def _delta_bars(axis, labels, values, errors, colours, within) -> None:
    """Horizontal bars from 0; within ±1 s.e.: grey and hatched, edged in the bar's colour. A dot at
    each value keeps a zero change visible."""
    values, within = [float(v) for v in values], [bool(w) for w in within]
    errors = [0.0 if e is None or pd.isna(e) else float(e) for e in errors]
    ys = list(range(len(values)))
    # one call each (not one per bar): a 57-subject chart stays quick to draw and save
    axis.barh(ys, values, height=0.72, color=[WITHIN_FILL if w else c for c, w in zip(colours, within)],
              edgecolor=list(colours), hatch=[WITHIN_HATCH if w else None for w in within], linewidth=0.8)
    if any(errors):
        axis.errorbar(values, ys, xerr=errors, fmt="none", ecolor="black", elinewidth=0.7, capsize=1.5)
    axis.plot(values, ys, marker="o", markersize=2.5, color="black", linestyle="none")
    axis.set_yticks(range(len(labels)), labels)
    axis.set_ylim(-0.6, len(labels) - 0.4)
    axis.axvline(0, color="black", linewidth=0.8)
    axis.grid(axis="y", visible=False)


def mmlu_delta_heatmap(deltas: pd.DataFrame, stem: Path, formats: list[str]) -> list[Path]:
    """Subjects (grouped by category) x comparisons, coloured by the change; within-s.e. cells hatched."""
    from matplotlib.patches import Patch, Rectangle

    from .plotting import DIVERGING, save_figure, style

    plt, sns = style()
    comps = list(dict.fromkeys(deltas["comparison"]))
    cat_of = deltas.drop_duplicates("subject").set_index("subject")["category"]
    cats = _category_order(cat_of)
    subjects = sorted(cat_of.index, key=lambda s: (cats.index(cat_of[s]), s))
    values = deltas.pivot(index="subject", columns="comparison", values="delta").reindex(index=subjects, columns=comps)
    within = (deltas.pivot(index="subject", columns="comparison", values="within_stderr")
              .reindex(index=subjects, columns=comps))
    limit = max(1.0, math.ceil(float(values.abs().max().max())))
    small = len(subjects) > 20
    height = max(3.0, (0.15 if small else 0.3) * len(subjects) + 2.0)
    width = min(11.0, 3.4 + 0.95 * len(comps))
    fig = plt.figure(figsize=(width, height), layout="constrained")
    fig.get_layout_engine().set(wspace=0.01)
    grid = fig.add_gridspec(1, 3, width_ratios=[0.18, 0.95 * len(comps), 0.18])
    strip, ax, cax = fig.add_subplot(grid[0]), fig.add_subplot(grid[1]), fig.add_subplot(grid[2])
    mesh = ax.pcolormesh(values.to_numpy(dtype=float), cmap=DIVERGING, vmin=-limit, vmax=limit,
                         edgecolors="white", linewidth=0.5)
    ax.set_xlim(0, len(comps))
    ax.set_ylim(len(subjects), 0)
    ax.set_xticks([k + 0.5 for k in range(len(comps))], [c.replace(" vs ", "\nvs ") for c in comps],
                  fontsize=8 if small else None)
    ax.xaxis.tick_top()
    ax.set_yticks([])
    ax.grid(False)
    for i, subject in enumerate(subjects):
        for j, comp in enumerate(comps):
            v = values.iat[i, j]
            if pd.isna(v):
                ax.add_patch(Rectangle((j, i), 1, 1, facecolor="white", edgecolor="0.6", hatch="xx", linewidth=0))
                continue
            inside = bool(within.iat[i, j])
            if inside:
                ax.add_patch(Rectangle((j, i), 1, 1, fill=False, edgecolor="0.55", hatch="///", linewidth=0))
            # on hatched cells the value sits on a patch of the cell's own colour, clear of the hatching
            ax.text(j + 0.5, i + 0.5, f"({v:+.1f})" if inside else f"{v:+.1f}", ha="center", va="center",
                    fontsize=6.5 if small else 8, color="white" if abs(v) > 0.6 * limit else "black",
                    bbox={"boxstyle": "square,pad=0.15", "facecolor": mesh.cmap(mesh.norm(v)), "edgecolor": "none"}
                    if inside else None)
    colours = _category_colours(sns, cats)
    for i, subject in enumerate(subjects):
        strip.add_patch(Rectangle((0, i), 1, 1, facecolor=colours[cat_of[subject]], linewidth=0))
    strip.set_xlim(0, 1)
    strip.set_ylim(len(subjects), 0)
    strip.set_xticks([])
    strip.set_yticks([k + 0.5 for k in range(len(subjects))], [s.replace("_", " ") for s in subjects],
                     fontsize=7 if small else None)
    strip.grid(False)
    for k in range(1, len(subjects)):  # a rule between categories
        if cat_of[subjects[k]] != cat_of[subjects[k - 1]]:
            for axis in (ax, strip):
                axis.axhline(k, color="black", linewidth=1.0)
    fig.colorbar(mesh, cax=cax, label="change (percentage points)")
    handles = [Patch(facecolor=colours[c], label=CATEGORY_LABELS.get(c, c)) for c in cats]
    handles.append(Patch(facecolor="white", edgecolor="0.55", hatch="///", label="within ±1 s.e. (value in brackets)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(3, len(handles)), frameon=False, fontsize=8)
    fig.suptitle("MMLU change per subject across comparisons")
    caption = ["MMLU 5-shot accuracy change per subject (rows, grouped by lm-eval category) for each comparison "
               "(columns), in percentage points; hatched cells, values in brackets: within ±1 combined standard "
               f"error. Colour scale ±{limit:g} points." + _no_stderr_note(deltas), ""]
    for comp in comps:
        d = deltas[deltas["comparison"] == comp]
        outside = ~d["within_stderr"] & d["combined_stderr"].notna()  # no error: neither inside nor out
        no_se = int(d["combined_stderr"].isna().sum())
        caption.append(f"{comp}: mean {d['delta'].mean():+.2f} over {_subjects(len(d))}; "
                       f"{int(outside.sum())} outside ±1 s.e. "
                       f"({int((outside & (d['delta'] > 0)).sum())} up, {int((outside & (d['delta'] < 0)).sum())} down)"
                       + (f"; {no_se} without a standard error ({int((d['combined_stderr'].isna() & (d['delta'] > 0)).sum())}"
                          f" up, {int((d['combined_stderr'].isna() & (d['delta'] < 0)).sum())} down)" if no_se else ""))
    caption += ["", "subject (category): " + " | ".join(comps)]
    caption += [f"  {s} ({cat_of[s]}): " + " | ".join(
        "n/a" if pd.isna(values.at[s, c]) else f"{values.at[s, c]:+.2f}" + (" (within s.e.)" if within.at[s, c] else "")
        for c in comps) for s in subjects]
    return save_figure(fig, stem, "\n".join(caption), formats=formats)


def mmlu_category_figure(categories: pd.DataFrame, stem: Path, formats: list[str]) -> list[Path]:
    """Grouped bars: the change per category (and over all subjects) for every comparison."""
    from matplotlib.patches import Patch

    from .plotting import save_figure, style

    plt, sns = style()
    comps = list(dict.fromkeys(categories["comparison"]))
    cats = _category_order(categories["category"]) + [ALL_SUBJECTS]
    colours = dict(zip(comps, sns.color_palette(PALETTE, len(comps))))
    bar = min(0.8 / len(comps), 0.3)
    fig, ax = plt.subplots(figsize=(max(5.0, min(9.0, 1.6 + len(cats) * (0.22 * len(comps) + 0.35))), 3.6),
                           layout="constrained")
    for j, comp in enumerate(comps):
        by = categories[categories["comparison"] == comp].set_index("category")
        for i, cat in enumerate(cats):
            if cat not in by.index:
                continue
            r = by.loc[cat]
            x = i + (j - (len(comps) - 1) / 2) * bar
            inside = bool(r["within_stderr"])
            ax.bar(x, r["delta"], width=bar * 0.9, color="white" if inside else colours[comp],
                   edgecolor=colours[comp], hatch=WITHIN_HATCH if inside else None, linewidth=1.0)
            if r["combined_stderr"] is not None and not pd.isna(r["combined_stderr"]) and r["combined_stderr"] > 0:
                ax.errorbar(x, r["delta"], yerr=r["combined_stderr"], fmt="none", ecolor="black", elinewidth=0.8,
                            capsize=2)
            ax.plot([x], [r["delta"]], marker="o", markersize=2.5, color="black", linestyle="none")
    ax.set_xticks(range(len(cats)), [CATEGORY_LABELS.get(c, c) for c in cats])
    ax.set_xlim(-0.5, len(cats) - 0.5)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.grid(axis="x", visible=False)
    ax.set_ylabel("MMLU change (points)")
    ax.set_title("MMLU change per category")
    handles = [Patch(facecolor=colours[c], edgecolor=colours[c], label=c) for c in comps]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch=WITHIN_HATCH, label="within ±1 s.e."))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(3, len(handles)), frameon=False, fontsize=9)
    caption = ["MMLU 5-shot accuracy change per lm-eval category and over all subjects (mean over the subjects), "
               "in percentage points; error bars: ±1 combined standard error sqrt(sum se_i²)/k; hatched bars "
               "are within it. Size-weighted (lm-eval's group score) in brackets."
               + (" Where subjects have no standard error (a single question each), the error is the paired "
                  "one over the subjects, stdev(delta_i)/sqrt(k)."
                  if (categories["stderr_method"] == "paired over subjects").any() else ""), ""]
    for comp in comps:
        caption.append(f"{comp}:")
        for _, r in categories[categories["comparison"] == comp].iterrows():
            weighted = ("" if r["delta_weighted"] is None or pd.isna(r["delta_weighted"])
                        else f" [weighted {r['delta_weighted']:+.2f}]")
            caption.append(f"  {CATEGORY_LABELS.get(r['category'], r['category'])} ({_subjects(r['subjects'])}): "
                           f"{r['reference_acc']:.2f} -> {r['variant_acc']:.2f}, {_within_line(r)}{weighted}")
    return save_figure(fig, stem, "\n".join(caption), formats=formats)


# ---------------------------------------------------------------- benchmark deltas, merge trade-off
def benchmark_delta_frame(summaries: dict[str, dict], pairs: list[Comparison]) -> pd.DataFrame:
    """Per comparison and benchmark (and the average of the four), variant minus reference in points."""
    cols = ["comparison", "kind", "variant", "reference", "benchmark", "reference_score", "variant_score",
            "delta", "combined_stderr", "within_stderr"]
    rows = []
    for c in pairs:
        scores = {}
        for who in (c.variant, c.reference):
            s = summaries.get(who) or {}
            scores[who] = {b: (_pct(t["value"]), _pct(t.get("stderr"))) for b in BENCHMARKS if (t := _task(s, b))}
        v, r = scores[c.variant], scores[c.reference]
        common = [b for b in BENCHMARKS if b in v and b in r]
        for bench in common:
            delta = v[bench][0] - r[bench][0]
            se = _se(v[bench][1], r[bench][1])
            rows.append({"comparison": c.label, "kind": c.kind, "variant": c.variant, "reference": c.reference,
                         "benchmark": bench, "reference_score": r[bench][0], "variant_score": v[bench][0],
                         "delta": delta, "combined_stderr": se, "within_stderr": bool(se is not None and abs(delta) <= se)})
        if len(common) == len(BENCHMARKS):
            delta = sum(v[b][0] - r[b][0] for b in common) / len(common)
            ses = [x for b in common for x in (v[b][1], r[b][1])]
            se = None if any(x is None for x in ses) else math.sqrt(sum(x * x for x in ses)) / len(common)
            rows.append({"comparison": c.label, "kind": c.kind, "variant": c.variant, "reference": c.reference,
                         "benchmark": "average", "reference_score": sum(r[b][0] for b in common) / len(common),
                         "variant_score": sum(v[b][0] for b in common) / len(common), "delta": delta,
                         "combined_stderr": se, "within_stderr": bool(se is not None and abs(delta) <= se)})
    return pd.DataFrame(rows, columns=cols)


def tradeoff_frame(summaries: dict[str, dict], baseline: str, merged: dict[str, str | None],
                   merge_report: dict | None = None) -> pd.DataFrame:
    """Per variant: MMLU against the mean of the other three benchmarks, with the merge that made it."""
    cols = ["variant", "role", "method", "partner", "mmlu", "mmlu_stderr", "others_mean", "others_stderr",
            "others_over"]
    models = (merge_report or {}).get("models") if isinstance((merge_report or {}).get("models"), dict) else {}
    rows = []
    for variant, s in summaries.items():
        mm = _task(s, "mmlu")
        others = [(b, _pct(t["value"]), _pct(t.get("stderr"))) for b in BENCHMARKS if b != "mmlu" and (t := _task(s, b))]
        if not mm or not others:
            continue
        ses = [se for _, _, se in others]
        info = models.get(variant) if isinstance(models.get(variant), dict) else {}
        rows.append({"variant": variant, "role": variant_role(variant, baseline, merged),
                     "method": info.get("method") or "", "partner": merged.get(variant) or "",
                     "mmlu": _pct(mm["value"]), "mmlu_stderr": _pct(mm.get("stderr")),
                     "others_mean": sum(v for _, v, _ in others) / len(others),
                     "others_stderr": (None if any(x is None for x in ses)
                                       else math.sqrt(sum(x * x for x in ses)) / len(ses)),
                     "others_over": " ".join(LABELS[b] for b, _, _ in others)})
    return pd.DataFrame(rows, columns=cols)


def merge_tradeoff_figure(tradeoff: pd.DataFrame, bench_deltas: pd.DataFrame, stem: Path,
                          formats: list[str]) -> list[Path]:
    """Left: MMLU against the mean of ARC, HellaSwag and TruthfulQA per variant, arrows from each
    reference to what was made from it. Right: the change on each benchmark per comparison.
    One colour per variant in both panels; marker shape: the role (left), the reference (right)."""
    from matplotlib.lines import Line2D

    from .plotting import save_figure, style

    plt, sns = style()
    fig, (ax, axd) = plt.subplots(1, 2, figsize=(10, 4.8), width_ratios=[1.1, 1], layout="constrained")
    colours = dict(zip(tradeoff["variant"], sns.color_palette(PALETTE, len(tradeoff))))
    at, handles = {}, []
    for _, r in tradeoff.iterrows():
        at[r["variant"]] = (r["mmlu"], r["others_mean"])
        marker = ROLE_MARKERS.get(r["role"], "o")
        ax.errorbar(r["mmlu"], r["others_mean"], xerr=_nz(r["mmlu_stderr"]), yerr=_nz(r["others_stderr"]),
                    fmt=marker, color=colours[r["variant"]], markersize=8, markeredgecolor="black",
                    markeredgewidth=0.6, elinewidth=0.8, capsize=2, zorder=3)
        handles.append(Line2D([], [], marker=marker, linestyle="none", markersize=7, color=colours[r["variant"]],
                              markeredgecolor="black", label=f"{r['variant']}: {r['role']}"))
    for variant, reference in (c for c in _arrow_pairs(bench_deltas) if c[0] in at and c[1] in at):
        ax.annotate("", xy=at[variant], xytext=at[reference], zorder=2,
                    arrowprops={"arrowstyle": "->", "color": "0.35", "linewidth": 0.9, "shrinkA": 6, "shrinkB": 6})
    ax.margins(0.2)
    ax.set_xlabel("MMLU (%)")
    ax.set_ylabel("mean of ARC, HellaSwag, TruthfulQA (%)")
    ax.set_title("Each variant (arrows: made from)")
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2, frameon=False, fontsize=8)
    comps = bench_deltas.drop_duplicates("comparison")
    benches = [b for b in list(BENCHMARKS) + ["average"] if b in set(bench_deltas["benchmark"])]
    step = min(0.7 / max(len(comps), 1), 0.25)
    handles = []
    for j, (_, c) in enumerate(comps.iterrows()):
        colour = colours.get(c["variant"], "black")
        marker = "o" if c["kind"] != KIND_PARTNER else "s"  # against the partner: squares
        by = bench_deltas[bench_deltas["comparison"] == c["comparison"]].set_index("benchmark")
        for i, bench in enumerate(benches):
            if bench not in by.index:
                continue
            r = by.loc[bench]
            axd.errorbar(r["delta"], i + (j - (len(comps) - 1) / 2) * step, xerr=_nz(r["combined_stderr"]),
                         fmt=marker, markersize=6, capsize=2, color=colour, elinewidth=0.8,
                         markerfacecolor="white" if r["within_stderr"] else colour)
        handles.append(Line2D([], [], marker=marker, linestyle="none", color=colour, label=c["comparison"]))
    handles.append(Line2D([], [], marker="o", linestyle="none", color="black", markerfacecolor="white",
                          label="hollow: within ±1 s.e."))
    if not benches:
        axd.text(0.5, 0.5, "no comparison\n(reference not evaluated)", ha="center", va="center", transform=axd.transAxes)
        axd.set_axis_off()
    axd.set_yticks(range(len(benches)), [LABELS.get(b, b) for b in benches])
    axd.set_ylim(max(len(benches), 1) - 0.5, -0.5)
    axd.axvline(0, color="black", linewidth=0.8)
    axd.grid(axis="y", visible=False)
    axd.set_xlabel("change (percentage points)")
    axd.set_title("Change against the reference")
    axd.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2, frameon=False, fontsize=8)
    fig.suptitle("Merges: what the adapter trades between benchmarks")
    caption = ["Left: MMLU (mean over subjects) against the mean of ARC, HellaSwag and TruthfulQA for each "
               "evaluated variant, ±1 standard error; arrows run from a reference model to the model made from "
               "it. Right: change on each benchmark against the reference, ±1 combined standard error; hollow "
               "markers are within it.", "", "Variants:"]
    for _, r in tradeoff.iterrows():
        made = f", {r['method']}" + (f" into {r['partner']}" if r["partner"] else "") if r["method"] else ""
        caption.append(f"  {r['variant']} ({r['role']}{made}): MMLU {_cell(r['mmlu'], _nan(r['mmlu_stderr']))}, "
                       f"others {_cell(r['others_mean'], _nan(r['others_stderr']))} ({r['others_over']})")
    caption += ["", "Changes:"]
    for comp in comps["comparison"]:
        by = bench_deltas[bench_deltas["comparison"] == comp]
        caption.append(f"  {comp}: " + ", ".join(f"{LABELS.get(r['benchmark'], r['benchmark'])} {_within_line(r)}"
                                                 for _, r in by.iterrows()))
    return save_figure(fig, stem, "\n".join(caption), formats=formats)


def _arrow_pairs(bench_deltas: pd.DataFrame) -> list[tuple[str, str]]:
    """(variant, reference) to draw: each made model from what it was made from (the partner when evaluated)."""
    pairs = bench_deltas.drop_duplicates("comparison")
    partnered = set(pairs.loc[pairs["kind"] == KIND_PARTNER, "variant"])
    out = []
    for _, r in pairs.iterrows():
        if r["kind"] in (KIND_FINETUNED, KIND_PARTNER) or (r["kind"] == KIND_MERGED and r["variant"] not in partnered):
            out.append((r["variant"], r["reference"]))
    return out


def _nz(x: Any) -> float:
    return 0.0 if x is None or pd.isna(x) else float(x)


def _nan(x: Any) -> Any:
    return None if x is None or pd.isna(x) else x


# ---------------------------------------------------------------- upstream stages
def pipeline_status(profile) -> tuple[pd.DataFrame, pd.DataFrame | None, list[Path]]:
    """(one row per stage: status and headline numbers, contamination per benchmark or None, files read).

    Status from the stage's artifact and manifest; `runner` is the stage's entry in the runner's
    run_summary.json as found now (the runner writes it after its last stage: when 06 runs inside
    the runner, that is the previous invocation's record)."""
    read: list[Path] = []
    runner = _runner_record(profile)
    artifacts = {
        "01_curate": profile.run_dir("01_curate") / "curation_report.json",
        "02_decontaminate": profile.run_dir("02_decontaminate") / "contamination_table.csv",
        "03_finetune": profile.run_dir("03_finetune") / "metrics.json",
        "04_merge": profile.run_dir("04_merge") / "merge_report.json",
        "05_evaluate": profile.run_dir("05_evaluate") / "evaluate_report.json",
    }
    rows = []
    contamination = None
    for stage, artifact in artifacts.items():
        manifest = read_manifest(profile.run_dir(stage))
        if manifest and (profile.run_dir(stage) / MANIFEST).is_file():
            read.append(profile.run_dir(stage) / MANIFEST)
        row = {"stage": stage, "artifact": str(artifact), "status": NOT_RUN, "details": "",
               "finished_at": (manifest or {}).get("finished_at", ""),
               "wall_s": ((manifest or {}).get("timings") or {}).get("wall_s"), "runner": runner.get(stage, "")}
        if artifact.is_file():
            row["status"] = "ok" if manifest and manifest.get("status") == "ok" else "ok (no manifest)"
            details: dict[str, Any] = {}
            if artifact.suffix == ".json":
                data, err = _read_json(artifact)
                if err:
                    row["status"] = err
                elif isinstance(data, dict):
                    details = {k: v for k, v in data.items() if isinstance(v, (int, float, str, bool)) and len(str(v)) < 80}
                    if stage == "04_merge" and isinstance(data.get("models"), dict):
                        details["models"] = ", ".join(sorted(data["models"]))
                    if stage == "05_evaluate":
                        details["failed"] = ", ".join(data.get("failed") or []) or "none"
                    read.append(artifact)
            else:
                try:
                    table = pd.read_csv(artifact)
                    read.append(artifact)
                    numeric = [c for c in table.columns if c not in ("data_source", "benchmark")
                               and pd.api.types.is_numeric_dtype(table[c])]
                    if "benchmark" in table.columns and numeric:
                        contamination = table.groupby("benchmark", sort=True)[numeric].sum().reset_index()
                        details = {f"{c} (all benchmarks)": int(table[c].sum()) for c in numeric}
                    else:
                        details = {"rows": len(table)}
                except Exception as exc:  # noqa: BLE001 - a bad upstream file must not stop the analysis
                    row["status"] = f"unreadable: {type(exc).__name__}: {exc}"
            if not details and manifest:
                details = {k: v for k, v in (manifest.get("metrics") or {}).items() if isinstance(v, (int, float))}
            row["details"] = "; ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in sorted(details.items()))
        elif manifest:
            row["status"] = f"artifact missing ({artifact.name})"
        elif runner.get(stage, "").startswith("failed"):
            row["status"] = "failed"
        rows.append(row)
    cols = ["stage", "status", "details", "artifact", "finished_at", "wall_s", "runner"]
    return pd.DataFrame(rows, columns=cols), contamination, read


def _runner_record(profile) -> dict[str, str]:
    """Stage -> "ran (12.3 s)" / "skipped: why" / "failed: error" from run_summary.json; {} without one.

    Not recorded as an input of this stage: the runner rewrites it after every invocation, which
    would make 06 look out of date every time."""
    data, err = _read_json(profile.report_dir() / "run_summary.json")
    stages = data.get("stages") if isinstance(data, dict) else None
    out = {}
    for stage, info in (stages.items() if isinstance(stages, dict) else ()):
        if not isinstance(info, dict):
            continue
        status = str(info.get("status", "?"))
        if info.get("seconds") is not None:
            status += f" ({info['seconds']} s)"
        why = info.get("error") or info.get("reason")
        out[stage] = f"{status}: {why}" if why else status
    return out


def upstream_artifacts(profile) -> list[dict]:
    """The tables and figures 01-03 wrote into reports/<profile>/, each with its status: "ok",
    "not run", missing, or changed since its stage wrote it (hash against the stage's manifest)."""
    out = []
    for stage, kind, name, title in UPSTREAM:
        folder = profile.report_dir("figures" if kind == "figure" else "tables")
        files = [folder / f"{name}.{ext}" for ext in (FIGURE_EXTS if kind == "figure" else TABLE_EXTS)
                 if (folder / f"{name}.{ext}").is_file()]
        manifest = read_manifest(profile.run_dir(stage))
        if not files:
            status = NOT_RUN if manifest is None else f"missing: {stage} ran but {name} is not in {folder}"
        elif manifest is None:
            status = "ok (no manifest)"
        else:
            recorded = manifest.get("outputs") if isinstance(manifest.get("outputs"), dict) else {}
            changed = [f.name for f in files
                       if str(f.resolve()) in recorded and recorded[str(f.resolve())] != sha256_path(f)]
            status = f"changed since {stage} wrote it: {', '.join(changed)}" if changed else "ok"
        out.append({"stage": stage, "kind": kind, "name": name, "title": title, "status": status,
                    "files": [str(f) for f in files]})
    return out


def key_numbers(profile, summaries: dict[str, dict] | None = None,
                failed: dict | None = None) -> tuple[list[dict], list[Path]]:
    """Headline numbers of every stage, each with the file it comes from: (rows, files read)."""
    rows: list[dict] = []
    read: list[Path] = []

    def add(stage, quantity, value, source):
        rows.append({"stage": stage, "quantity": quantity, "value": value, "source": str(source)})

    def load(stage, name):
        path = profile.run_dir(stage) / name
        if not path.is_file():
            add(stage, name, NOT_RUN, path)
            return None
        data, err = _read_json(path)
        if err or not isinstance(data, dict):
            add(stage, name, err or "unreadable: not a JSON object", path)
            return None
        read.append(path)
        return data

    path = profile.run_dir("01_curate") / "curation_report.json"
    if (cur := load("01_curate", "curation_report.json")) is not None:
        totals = cur.get("totals")
        if not isinstance(totals, dict):
            totals = {}
            for counts in (cur.get("per_source") or {}).values():
                for k, v in (counts.items() if isinstance(counts, dict) else ()):
                    if isinstance(v, (int, float)):
                        totals[k] = totals.get(k, 0) + v
        for key, label in (("loaded", "rows loaded"), ("malformed", "rows malformed"), ("filtered", "rows filtered"),
                           ("exact_dup", "exact duplicates removed"), ("near_dup", "near duplicates removed"),
                           ("kept", "rows kept")):
            if key in totals:
                add("01_curate", label, f"{totals[key]:,}", path)
        if isinstance(cur.get("per_source"), dict):
            add("01_curate", "data sources", str(len(cur["per_source"])), path)

    path = profile.run_dir("02_decontaminate") / "decontamination_report.json"
    if (dec := load("02_decontaminate", "decontamination_report.json")) is not None:
        for key, label in (("train_rows", "training rows checked"), ("benchmark_items", "benchmark items compared"),
                           ("flagged_rows", "rows flagged"), ("removed_rows", "leaks removed (rows)"),
                           ("clean_rows", "rows kept for training")):
            if isinstance(dec.get(key), (int, float)):
                add("02_decontaminate", label, f"{dec[key]:,}", path)
        if isinstance(dec.get("pairs_by_category"), dict):
            add("02_decontaminate", "flagged pairs by category",
                ", ".join(f"{k} {v}" for k, v in sorted(dec["pairs_by_category"].items())), path)

    path = profile.run_dir("03_finetune") / "metrics.json"
    if (ft := load("03_finetune", "metrics.json")) is not None:
        before, after = ft.get("eval_loss_before"), ft.get("eval_loss_after")
        if isinstance(before, (int, float)) and isinstance(after, (int, float)):
            add("03_finetune", "held-out loss before → after",
                f"{before:.4f} → {after:.4f} ({after - before:+.4f})", path)
        history = [h.get("loss") for h in ft.get("train_loss_history") or [] if isinstance(h, dict)
                   and isinstance(h.get("loss"), (int, float))]
        if history:
            add("03_finetune", "train loss first → last logged", f"{history[0]:.4f} → {history[-1]:.4f}", path)
        for key, label, fmt in (("steps", "optimizer steps", "{:,}"), ("examples_train", "training examples", "{:,}"),
                                ("tokens_per_s", "tokens per second", "{:.1f}"),
                                ("train_wall_s", "training time (s)", "{:.0f}")):
            if isinstance(ft.get(key), (int, float)):
                add("03_finetune", label, fmt.format(ft[key]), path)

    path = profile.run_dir("04_merge") / "merge_report.json"
    if (mr := load("04_merge", "merge_report.json")) is not None:
        for name, info in sorted((mr.get("models") or {}).items()):
            if not isinstance(info, dict):
                continue
            into = f"into partner {info['partner']}" if info.get("partner") else "into its base"
            check = (f"verified, max |Δlogit| {info['max_abs_logit_diff']:.2g}" if info.get("verified")
                     and isinstance(info.get("max_abs_logit_diff"), (int, float)) else "not verified")
            add("04_merge", f"merged model {name}", f"{info.get('method', '?')} {into}; {check}", path)

    eval_report = profile.run_dir("05_evaluate") / "evaluate_report.json"
    if summaries:
        for variant, s in summaries.items():
            avg = s.get("average")
            over = s.get("average_over") or [b for b in BENCHMARKS if _task(s, b)]
            partial = f" (over {len(over)} of 4)" if over and len(over) < 4 else ""
            add("05_evaluate", f"{variant}: leaderboard average", NOT_RUN if avg is None else f"{100 * avg:.2f}{partial}",
                profile.run_dir("05_evaluate") / f"{variant}.json")
    else:
        add("05_evaluate", "evaluated variants", NOT_RUN, eval_report)
    for variant, err in (failed or {}).items():
        add("05_evaluate", f"{variant}: leaderboard average", f"failed: {err}", eval_report)
    return rows, read


# ---------------------------------------------------------------- the summary report
class _Doc:
    """A small document, rendered to Markdown and to HTML (escaped; well-formed XHTML).

    Inline content is a str, ("link", text, href), ("code", text) or a list of these."""

    def __init__(self) -> None:
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, *spans) -> None:
        self.blocks.append(("p", list(spans)))

    def bullets(self, items: list) -> None:
        if items:
            self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list], numeric_from: int = 99) -> None:
        self.blocks.append(("table", header, rows, numeric_from))

    def figure(self, image: str | None, title: str, caption: str, links: list[tuple[str, str]], numbers: str) -> None:
        self.blocks.append(("figure", image, title, caption, links, numbers))

    # -- Markdown
    @staticmethod
    def _md_inline(span) -> str:
        if isinstance(span, list):
            return "".join(_Doc._md_inline(s) for s in span)
        if isinstance(span, tuple) and span[0] == "link":
            return f"[{_md_escape(span[1])}]({_href(span[2])})"
        if isinstance(span, tuple) and span[0] == "code":
            return f"`{span[1].replace('`', '')}`"
        return _md_escape(str(span))

    def to_markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + _md_escape(b[2]))
            elif b[0] == "p":
                out.append(self._md_inline(b[1]))
            elif b[0] == "ul":
                out.append("\n".join("- " + self._md_inline(item) for item in b[1]))
            elif b[0] == "table":
                header, rows, numeric_from = b[1], b[2], b[3]
                lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |",
                         "|" + "|".join("---:" if k >= numeric_from else "---" for k in range(len(header))) + "|"]
                lines += ["| " + " | ".join(self._md_inline(c).replace("\n", " ") for c in row) + " |" for row in rows]
                out.append("\n".join(lines))
            elif b[0] == "figure":
                _, image, title, caption, links, _ = b
                parts = [f"![{_md_escape(title)}]({_href(image)})"] if image else []
                parts.append(f"*{_md_escape(caption)}*" if caption else "")
                parts.append(" · ".join(f"[{_md_escape(t)}]({_href(h)})" for t, h in links))
                out.append("\n\n".join(p for p in parts if p))
        return "\n\n".join(out) + "\n"

    # -- HTML
    @staticmethod
    def _html_inline(span) -> str:
        if isinstance(span, list):
            return "".join(_Doc._html_inline(s) for s in span)
        if isinstance(span, tuple) and span[0] == "link":
            return f'<a href="{html.escape(_href(span[2]))}">{html.escape(span[1])}</a>'
        if isinstance(span, tuple) and span[0] == "code":
            return f"<code>{html.escape(span[1])}</code>"
        return html.escape(str(span))

    def to_html(self, title: str) -> str:
        out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8" />',
               f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>"]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                out.append(f"<p>{self._html_inline(b[1])}</p>")
            elif b[0] == "ul":
                out.append("<ul>" + "".join(f"<li>{self._html_inline(i)}</li>" for i in b[1]) + "</ul>")
            elif b[0] == "table":
                header, rows, numeric_from = b[1], b[2], b[3]

                def cls(k):
                    return ' class="num"' if k >= numeric_from else ""
                out.append("<table><thead><tr>"
                           + "".join(f"<th{cls(k)}>{html.escape(h)}</th>" for k, h in enumerate(header))
                           + "</tr></thead><tbody>")
                out += ["<tr>" + "".join(f"<td{cls(k)}>{self._html_inline(c)}</td>" for k, c in enumerate(row)) + "</tr>"
                        for row in rows]
                out.append("</tbody></table>")
            elif b[0] == "figure":
                _, image, title, caption, links, numbers = b
                out.append("<figure>")
                if image:
                    out.append(f'<img src="{html.escape(_href(image))}" alt="{html.escape(title)}" />')
                out.append(f"<figcaption>{html.escape(caption)}<br />"
                           + " · ".join(f'<a href="{html.escape(_href(h))}">{html.escape(t)}</a>' for t, h in links)
                           + "</figcaption>")
                if numbers:
                    out.append(f"<details><summary>numbers shown</summary><pre>{html.escape(numbers)}</pre></details>")
                out.append("</figure>")
        out += ["</body>", "</html>"]
        return "\n".join(out) + "\n"


_CSS = ("body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:62rem;margin:2rem auto;"
        "padding:0 1rem;line-height:1.45;color:#222}table{border-collapse:collapse;margin:1rem 0;font-size:0.9rem}"
        "th,td{border-bottom:1px solid #ccc;padding:0.25rem 0.6rem;text-align:left;vertical-align:top}"
        "th{border-bottom:2px solid #444}.num{text-align:right;font-variant-numeric:tabular-nums}"
        "figure{margin:1.5rem 0}img{max-width:100%;height:auto;border:1px solid #eee}"
        "figcaption{font-size:0.9rem;color:#444}pre{font-size:0.8rem;overflow-x:auto;background:#f6f6f6;padding:0.5rem}"
        "code{font-size:0.9em}")


def _md_escape(text: str) -> str:
    text = str(text)
    out = []
    for k, ch in enumerate(text):
        # "_" inside a word (file names) never starts emphasis in CommonMark: left as is, for legible source
        inner = ch == "_" and 0 < k < len(text) - 1 and text[k - 1].isalnum() and text[k + 1].isalnum()
        out.append("\\" + ch if ch in "\\`*_[]<>|" and not inner else ch)
    return "".join(out)


def _href(path: str) -> str:
    return quote(path, safe="/._-~")


def _caption_text(paths: list[str]) -> tuple[str, str]:
    """(first line of the figure's caption file, the whole file) - the caption and the numbers."""
    txt = next((Path(p) for p in paths if p.endswith(".txt")), None)
    if txt is None or not txt.is_file():
        return "", ""
    try:
        text = txt.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return f"caption unreadable: {exc}", ""
    return text.strip().splitlines()[0] if text.strip() else "", text.rstrip()


def write_summary(profile, produced: dict, leaderboard: pd.DataFrame | None = None,
                  categories: pd.DataFrame | None = None) -> list[Path]:
    """reports/<profile>/summary.md and summary.html: stage status, key numbers, and every table
    and figure (06's and those 01-03 wrote) with its caption, linked relative to the report."""
    root = profile.report_dir()
    root.mkdir(parents=True, exist_ok=True)

    def rel(path) -> str:
        return os.path.relpath(Path(path), root)

    doc = _Doc()
    doc.h(1, f"Run summary: {profile.name}")
    if profile.description:
        doc.p(profile.description.strip())
    doc.p("Profile ", ("code", str(profile.source_file or "(not from a file)")), ". Written by 06_analysis from the "
          "run's artifacts in ", ("code", str(profile.run_dir())), "; every table and figure below is a file beside "
          "this report. Status \"not run\": the stage has left no artifact.")
    if produced.get("notes"):
        doc.h(2, "Notes")
        doc.bullets([str(n) for n in produced["notes"]])

    doc.h(2, "Stages")
    rows = []
    for r in produced.get("pipeline", []):
        wall = "" if r.get("wall_s") is None or pd.isna(r.get("wall_s")) else f"{float(r['wall_s']):.1f}"
        rows.append([r["stage"], r["status"], r.get("finished_at") or "", r.get("runner") or "–", wall])
    rows.append([STAGE, "this report", "", "–", ""])
    doc.table(["stage", "status", "finished", "runner record", "wall time (s)"], rows, numeric_from=4)
    doc.p("Status and timing from each stage's manifest.json; runner record from ",
          ("code", "run_summary.json"), " as found when this report was written (the runner writes it after its "
          "last stage, so when 06 ran inside the runner it describes the invocation before).")

    doc.h(2, "Key numbers")
    doc.table(["stage", "quantity", "value", "from"],
              [[n["stage"], n["quantity"], n["value"],
                ("link", Path(n["source"]).name, rel(n["source"])) if Path(n["source"]).is_file() else "–"]
               for n in produced.get("key_numbers", [])])

    doc.h(2, "Leaderboard")
    if leaderboard is not None and not leaderboard.empty:
        header, rows = _display_rows(leaderboard)
        doc.table(header, rows, numeric_from=2)
    else:
        doc.p("05_evaluate not run: no evaluation results.")
    doc.p(f"Scores in percent ± standard error; {METRIC_NOTE}. ", *_file_links(produced, "table", "leaderboard", rel))

    doc.h(2, "MMLU change per category")
    if categories is not None and not categories.empty:
        cats = _category_order(categories["category"]) + [ALL_SUBJECTS]
        rows = []
        for label, g in categories.groupby("comparison", sort=False):
            by = g.set_index("category")
            rows.append([label, g["kind"].iloc[0]] + [
                _signed(by.loc[c, "delta"], by.loc[c, "combined_stderr"], by.loc[c, "within_stderr"])
                if c in by.index else "–" for c in cats])
        doc.table(["comparison", "kind"] + [CATEGORY_LABELS.get(c, c) for c in cats], rows, numeric_from=2)
        paired = (categories["stderr_method"] == "paired over subjects").any()
        doc.p("Percentage points, mean over the category's subjects ± combined standard error"
              + (" (paired over the subjects, stdev(delta_i)/sqrt(k), where subjects have a single question)"
                 if paired else "") + "; † within it. ",
              *_file_links(produced, "table", "mmlu_delta_categories", rel))
    else:
        doc.p("No comparison: needs the baseline and at least one other variant evaluated on MMLU.")

    doc.h(2, "Figures")
    for a in produced.get("artifacts", []):
        if a["kind"] != "figure":
            continue
        doc.h(3, f"{a['title']} ({a['stage']})")
        if not a["files"]:
            doc.p(f"{a['status']}.")
            continue
        caption, numbers = _caption_text(a["files"])
        image = next((f for f in a["files"] if f.endswith(".png")), None) or next(
            (f for f in a["files"] if f.endswith(".svg")), None)
        links = [("caption and numbers" if f.endswith(".txt") else Path(f).suffix[1:].upper(), rel(f))
                 for f in a["files"]]
        status = "" if a["status"] == "ok" else f" [{a['status']}]"
        doc.figure(rel(image) if image else None, a["title"], caption + status, links, numbers)

    doc.h(2, "Tables")
    shown_above = {"leaderboard", "mmlu_delta_categories"}
    for a in produced.get("artifacts", []):
        if a["kind"] != "table":
            continue
        doc.h(3, f"{a['title']} ({a['stage']})")
        if not a["files"]:
            doc.p(f"{a['status']}.")
            continue
        csv = next((Path(f) for f in a["files"] if f.endswith(".csv")), None)
        small = _small_table(csv) if csv is not None and a["name"] not in shown_above else None
        if small is not None:
            doc.table(*small)
        status = "" if a["status"] == "ok" else f"Status: {a['status']}. "
        doc.p(status, *_file_links(produced, "table", a["name"], rel, stage=a["stage"]))

    linked = {str(Path(f)) for a in produced.get("artifacts", []) for f in a["files"]}
    others = sorted(str(p) for kind in ("figures", "tables") if (root / kind).is_dir()
                    for p in (root / kind).iterdir() if p.is_file() and str(p) not in linked and not p.name.startswith("."))
    if others:
        doc.h(2, "Other files in the report folders")
        doc.p("Not written by this analysis nor listed above for 01-03: possibly left by an earlier run.")
        doc.bullets([[("link", rel(p), rel(p))] for p in others])

    return [write_text(root / "summary.md", doc.to_markdown()),
            write_text(root / "summary.html", doc.to_html(f"Run summary: {profile.name}"))]


def _small_table(csv: Path, max_rows: int = 20, max_cols: int = 10) -> tuple[list[str], list[list[str]], int] | None:
    """(header, rows, first numeric column) of a CSV small enough to show inline; None otherwise."""
    try:
        frame = pd.read_csv(csv)
    except Exception:  # noqa: BLE001 - shown as a link only
        return None
    if frame.empty or len(frame) > max_rows or len(frame.columns) > max_cols:
        return None
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    first = next((k for k in range(len(numeric)) if all(numeric[k:])), len(numeric))

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    return [str(c) for c in frame.columns], [[cell(v) for v in row] for row in frame.itertuples(index=False)], first


def _file_links(produced: dict, kind: str, name: str, rel, stage: str | None = None) -> list:
    files = next((a["files"] for a in produced.get("artifacts", []) if a["kind"] == kind and a["name"] == name
                  and stage in (None, a["stage"])), [])
    spans: list = ["Files: "] if files else []
    for k, f in enumerate(files):
        spans += [", " if k else "", ("link", Path(f).name, rel(f))]
    return spans + (["."] if files else [])


# ---------------------------------------------------------------- the stage
def _remove_stale(previous: Any, produced: dict, report_root: Path) -> list[str]:
    """Delete what an earlier 06 run wrote into the report folders and this run does not write (say
    mmlu_delta_<v>.* of a variant no longer evaluated), so no stale figure sits beside fresh ones.
    Only files whose content is still what 06 recorded: anything edited since is left alone."""
    if not isinstance(previous, dict):
        return []
    now = {str(Path(p).resolve()) for group in ("tables", "figures") for paths in produced[group].values() for p in paths}
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


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)


def run_analysis(profile) -> dict:
    """Write the tables, figures and summary report; returns what was produced and what was missing."""
    cfg = profile.analysis
    formats = list(cfg.formats)
    tables, figures = profile.report_dir("tables"), profile.report_dir("figures")
    out = profile.run_dir(STAGE)
    produced: dict[str, Any] = {"tables": {}, "figures": {}, "notes": [], "artifacts": []}

    def register(kind: str, name: str, title: str, paths: list[Path]) -> None:
        produced["tables" if kind == "table" else "figures"][name] = [str(p) for p in paths]
        produced["artifacts"].append({"stage": STAGE, "kind": kind, "name": name, "title": title, "status": "ok",
                                      "files": [str(p) for p in paths]})

    def absent(kind: str, name: str, title: str, why: str) -> None:
        produced["artifacts"].append({"stage": STAGE, "kind": kind, "name": name, "title": title, "status": why,
                                      "files": []})

    previous = (read_manifest(out) or {}).get("outputs")
    with StageRun(out, STAGE, profile.fingerprint_params(STAGE)) as run:
        upstream = upstream_artifacts(profile)
        produced["artifacts"] += upstream
        produced["upstream"] = {f"{a['kind']}:{a['name']}": a["status"] for a in upstream}
        summaries, failed, read = load_summaries(profile.run_dir("05_evaluate"), list(profile.evaluate.variants))
        if not summaries:
            produced["notes"].append("05_evaluate not run (no evaluation summaries)")
        produced["variants"] = list(summaries)
        produced["failed_variants"] = failed
        merge_path = profile.run_dir("04_merge") / "merge_report.json"
        merge_report, _ = _read_json(merge_path) if merge_path.is_file() else (None, None)
        merge_report = merge_report if isinstance(merge_report, dict) else None
        merged = merged_variants(profile, merge_report)

        frame = leaderboard_frame(summaries, failed, published=cfg.published_results)
        register("table", "leaderboard", "Leaderboard: every variant on the four benchmarks",
                 write_leaderboard(frame, tables))
        register("figure", "leaderboard", "Leaderboard scores per benchmark",
                 leaderboard_figure(frame, figures / "leaderboard", formats))

        pairs, pair_notes = comparisons(list(summaries), cfg.baseline, merged)
        produced["notes"] += pair_notes
        produced["comparisons"] = [{"comparison": c.label, "kind": c.kind} for c in pairs]
        if summaries and cfg.baseline not in summaries:
            produced["notes"].append(f"baseline {cfg.baseline!r} not evaluated: no MMLU deltas against it")
        deltas = mmlu_delta_frame(summaries, cfg.baseline, pairs)
        cats = category_delta_frame(deltas)
        register("table", "mmlu_delta", "MMLU change per subject, every comparison",
                 [write_text(tables / "mmlu_delta.csv", deltas.to_csv(index=False))])
        register("table", "mmlu_delta_categories", "MMLU change per category, every comparison",
                 write_category_tables(cats, tables))
        if deltas.empty:
            why = "not drawn: no MMLU comparison (needs the baseline and another variant evaluated on MMLU)"
            absent("figure", "mmlu_delta_categories", "MMLU change per category", why)
            absent("figure", "mmlu_delta_heatmap", "MMLU change per subject across comparisons", why)
        else:
            register("figure", "mmlu_delta_categories", "MMLU change per category",
                     mmlu_category_figure(cats, figures / "mmlu_delta_categories", formats))
            register("figure", "mmlu_delta_heatmap", "MMLU change per subject across comparisons",
                     mmlu_delta_heatmap(deltas, figures / "mmlu_delta_heatmap", formats))
        for c in pairs:
            if c.label not in set(deltas["comparison"]):
                continue
            name = f"mmlu_delta_{_safe(c.variant)}" + ("" if c.reference == cfg.baseline else f"_vs_{_safe(c.reference)}")
            register("figure", name, f"MMLU change per subject: {c.label}",
                     mmlu_delta_figure(deltas, cats, c.label, figures / name, formats))

        bench = benchmark_delta_frame(summaries, pairs)
        register("table", "benchmark_deltas", "Change per benchmark, every comparison",
                 [write_text(tables / "benchmark_deltas.csv", bench.to_csv(index=False))])
        trade = tradeoff_frame(summaries, cfg.baseline, merged, merge_report)
        register("table", "merge_tradeoff", "MMLU against the other benchmarks, per variant",
                 [write_text(tables / "merge_tradeoff.csv", trade.to_csv(index=False))])
        if trade["role"].isin([ROLE_MERGED_BASE, ROLE_MERGED_PARTNER]).any():
            register("figure", "merge_tradeoff", "Merge trade-off: MMLU against the other benchmarks",
                     merge_tradeoff_figure(trade, bench, figures / "merge_tradeoff", formats))
        else:
            why = "not drawn: no merged variant evaluated on MMLU and another benchmark"
            produced["notes"].append(f"merge trade-off {why}")
            absent("figure", "merge_tradeoff", "Merge trade-off: MMLU against the other benchmarks", why)

        stages, contamination, stage_files = pipeline_status(profile)
        produced["stages"] = dict(zip(stages["stage"], stages["status"]))
        produced["pipeline"] = json.loads(stages.to_json(orient="records"))
        header = list(stages.columns[:3])
        register("table", "pipeline", "Pipeline status", [
            write_text(tables / "pipeline.csv", stages.to_csv(index=False)),
            write_text(tables / "pipeline.md", "# Pipeline status\n\n" + _markdown(
                header, [[str(r[c]) for c in header] for _, r in stages.iterrows()], text_columns=3))])
        if contamination is not None:
            register("table", "contamination_by_benchmark", "Contamination per benchmark (all sources)",
                     [write_text(tables / "contamination_by_benchmark.csv", contamination.to_csv(index=False))])
        removed = _remove_stale(previous, produced, profile.report_dir())
        if removed:
            produced["notes"].append("removed figures and tables of an earlier analysis that this one does not "
                                     "produce: " + ", ".join(removed))
        numbers, number_files = key_numbers(profile, summaries, failed)
        produced["key_numbers"] = numbers
        produced["summary"] = [str(p) for p in write_summary(profile, produced, frame, cats)]

        inputs = read + stage_files + number_files + ([merge_path] if merge_report is not None else [])
        inputs += [Path(f) for a in upstream for f in a["files"]]
        for path in dict.fromkeys(Path(p) for p in inputs):
            run.add_input(path)
        report = write_json(out / "analysis_report.json", produced)
        for group in ("tables", "figures"):
            for paths in produced[group].values():
                for p in paths:
                    run.add_output(p)
        for p in produced["summary"]:
            run.add_output(p)
        run.add_output(report)
        run.metrics.update({"variants": len(summaries), "failed_variants": len(failed), "comparisons": len(pairs),
                            "figures": sum(len(v) for v in produced["figures"].values())})
        produced["report"] = str(report)
    return produced


__all__ = ["run_analysis", "load_summaries", "leaderboard_frame", "write_leaderboard", "leaderboard_figure",
           "Comparison", "merged_variants", "variant_role", "comparisons", "mmlu_delta_frame", "category_delta_frame",
           "write_category_tables", "mmlu_delta_figure", "mmlu_delta_heatmap", "mmlu_category_figure",
           "benchmark_delta_frame", "tradeoff_frame", "merge_tradeoff_figure", "pipeline_status",
           "upstream_artifacts", "key_numbers", "write_summary", "PUBLISHED"]
