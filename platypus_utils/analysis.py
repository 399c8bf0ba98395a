"""Stage 06_analysis: the paper's tables and figures, and a summary report, from the run's artifacts.

Reads the normalised summaries of 05_evaluate (`<variant>.json`), its logged samples and lm-eval
settings (`<variant>.samples.jsonl`, `<variant>.raw.json`, through `lmeval_io`), 04_merge's report, and what 01-03 wrote. Every input is optional: a stage that has not run
shows as "not run", a variant that failed shows as "failed", and nothing here raises because
an upstream artifact is absent or unreadable.

Comparisons (see `comparisons`): fine-tuned vs base ("adapter", "merged"), merged vs base and
merged vs partner (each merged variant of `layout.merge_pairs` and 04's merge_report.json against
the base and against its partner when that was evaluated), partner vs base.

Statistics (`paired_delta_frame`, with `stats`): where both models have logged samples
(`<variant>.samples.jsonl`) each change is paired over the same questions - a seeded paired bootstrap
interval (subjects resampled separately for a category or the mean over subjects), the exact McNemar
p-value for a subject's accuracy (a paired sign-flip test for a group or for mc2), and Benjamini-
Hochberg q-values per comparison over its subjects, its categories, and its benchmarks. Without
samples a change falls back to the normal interval from sqrt(se_a^2 + se_b^2), named "unpaired normal"
in the tables and captions. Comparisons whose lm-eval settings (few-shot, task version, limit) differ
are refused and noted. `analyse` does the same for any lm-eval output folders (`platypus analyse`).
Plot functions take an optional `ax` and return the figure; `save_figure` writes it (PDF fonts embedded).

Writes to reports/<profile>/tables/:
  leaderboard.{csv,md,tex}  - every variant (and the paper's numbers with analysis.published_results),
                              scores in percent +- standard error
  mmlu_delta.csv            - per comparison and subject: the change, its interval, p, q and whether it
                              survives the FDR correction
  mmlu_delta_categories.{csv,md,tex} - the same per lm-eval category and over all subjects
  benchmark_deltas.csv      - per comparison and benchmark
  merge_tradeoff.csv        - per variant: MMLU against the mean of the other three benchmarks
  pipeline.{csv,md}         - status and headline numbers of every stage
to reports/<profile>/figures/ (each as PNG + PDF and a .txt caption holding the numbers shown):
  leaderboard, mmlu_delta_<variant>[_vs_<reference>], mmlu_delta_categories, mmlu_delta_heatmap,
  merged_vs_parts_<merged variant>, merge_tradeoff
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

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from . import layout, stats
from .artifacts import MANIFEST, StageRun, read_manifest, sha256_path, write_json, write_text
from .lmeval_io import (MMLU_CATEGORIES, EvalRun, is_pipeline_dir, read_lm_eval_dir, read_pipeline_variant,
                        settings_mismatches)
from .plotting import DIVERGING, style
from .plotting import save_figure as _plotting_save

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
ADAPTER_VARIANT = layout.ADAPTER_VARIANT  # 05_evaluate: base + the unmerged LoRA adapter
KIND_FINETUNED, KIND_MERGED, KIND_PARTNER = "fine-tuned vs base", "merged vs base", "merged vs partner"
KIND_PARTNER_BASE, KIND_OTHER = "partner vs base", "vs base"
ROLE_BASE, ROLE_FINETUNED, ROLE_MERGED_BASE = "base", "fine-tuned (adapter)", "fine-tuned (merged)"
ROLE_MERGED_PARTNER, ROLE_PARTNER, ROLE_OTHER = "merged into partner", "partner", "other"
ROLE_MARKERS = {ROLE_BASE: "o", ROLE_FINETUNED: "s", ROLE_MERGED_BASE: "D", ROLE_MERGED_PARTNER: "^",
                ROLE_PARTNER: "v", ROLE_OTHER: "P"}
LABEL_OFFSETS = ((7, 6, "left"), (7, -12, "left"), (-7, 6, "right"), (-7, -12, "right"))
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
    out = dict(layout.merge_pairs(profile))
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


# ---------------------------------------------------------------- paired statistics
@dataclass(frozen=True)
class StatsSettings:
    """How intervals and tests are made (analysis.confidence, n_bootstrap, fdr_alpha; the profile's seed)."""
    confidence: float = stats.DEFAULT_CONFIDENCE
    n_boot: int = stats.DEFAULT_N_BOOT
    alpha: float = 0.05
    seed: int = 0

    @classmethod
    def from_profile(cls, profile) -> "StatsSettings":
        cfg = profile.analysis
        return cls(cfg.confidence, cfg.n_bootstrap, cfg.fdr_alpha, profile.seed)


PAIRED, UNPAIRED, NO_ERROR = "paired bootstrap", "unpaired normal", "no error"
DELTA_COLUMNS = ["comparison", "kind", "variant", "reference", "level", "unit", "category", "n", "reference_score",
                 "variant_score", "delta", "se", "ci_low", "ci_high", "p_value", "q_value", "significant", "test",
                 "interval", "discordant_b", "discordant_c", "note"]


def runs_from_summaries(eval_dir: Path, summaries: dict[str, dict]) -> dict[str, EvalRun]:
    """EvalRuns for 05_evaluate's variants: the summaries as read, samples and settings beside them."""
    return {v: read_pipeline_variant(eval_dir, v, s) for v, s in summaries.items()}


def _scores(run: EvalRun, bench: str, subject: str) -> pd.Series | None:
    s = run.samples
    if s.empty:
        return None
    hit = s[(s["benchmark"] == bench) & (s["subject"] == subject)]
    return None if hit.empty else hit.set_index("doc_id")["score"]


def _unit(x: pd.Series | None, y: pd.Series | None, v: tuple, r: tuple, st: StatsSettings,
          rng: np.random.Generator) -> tuple[dict, np.ndarray | None, np.ndarray | None]:
    """One subject or benchmark: (row fields, bootstrap draws, per-question differences); v and r are
    (score, stderr, n) from the summaries, used when per-question scores are missing (unpaired)."""
    if x is not None and y is not None:
        common = x.index.intersection(y.index)
        if len(common):
            xs, ys = x.loc[common].to_numpy(float), y.loc[common].to_numpy(float)
            d = xs - ys
            draws = stats.bootstrap_means(d, st.n_boot, rng)
            lo, hi = stats.percentile_interval(draws, st.confidence)
            binary = stats.is_binary(xs, ys)
            b, c = stats.discordant(xs, ys) if binary else (None, None)
            p = stats.mcnemar_exact(b, c) if binary else stats.sign_flip_p([d], st.n_boot, rng=rng)
            dropped = max(len(x), len(y)) - len(common)
            return ({"n": len(common), "reference_score": 100 * ys.mean(), "variant_score": 100 * xs.mean(),
                     "delta": 100 * d.mean(), "se": 100 * float(draws.std(ddof=1)), "ci_low": 100 * lo,
                     "ci_high": 100 * hi, "p_value": p, "test": "McNemar exact" if binary else "sign-flip",
                     "interval": PAIRED, "discordant_b": b, "discordant_c": c,
                     "note": f"paired on {len(common)} common questions ({dropped} in one model only)" if dropped else ""},
                    draws, d)
    row = {"n": v[2] if len(v) > 2 else None, "reference_score": _pct(r[0]), "variant_score": _pct(v[0]), "delta": 100 * (v[0] - r[0]),
           "discordant_b": None, "discordant_c": None, "note": "no per-question scores: unpaired error"}
    if v[1] is None or r[1] is None:
        return {**row, "se": None, "ci_low": None, "ci_high": None, "p_value": None, "test": "", "interval": NO_ERROR}, None, None
    lo, hi, p = stats.unpaired_interval(v[0] - r[0], v[1], r[1], st.confidence)
    return ({**row, "se": 100 * math.hypot(v[1], r[1]), "ci_low": 100 * lo, "ci_high": 100 * hi, "p_value": p,
             "test": "z (unpaired)", "interval": UNPAIRED}, None, None)


def _group(rows: list[dict], draws: list, diffs: list, st: StatsSettings, rng: np.random.Generator) -> dict:
    """The mean over subjects (a category, all of MMLU, the leaderboard average): stratified paired
    bootstrap and sign-flip test when every member is paired, else the normal interval from
    sqrt(sum se_i^2) / k."""
    k = len(rows)
    out = {"n": sum(int(r["n"]) for r in rows) if all(r["n"] for r in rows) else None,
           "reference_score": float(np.mean([r["reference_score"] for r in rows])),
           "variant_score": float(np.mean([r["variant_score"] for r in rows])),
           "delta": float(np.mean([r["delta"] for r in rows])), "discordant_b": None, "discordant_c": None}
    if all(d is not None for d in draws):
        mean_draws = np.mean(draws, axis=0)
        lo, hi = stats.percentile_interval(mean_draws, st.confidence)
        b = [r["discordant_b"] for r in rows]
        c = [r["discordant_c"] for r in rows]
        if all(x is not None for x in b + c):
            out.update(discordant_b=sum(b), discordant_c=sum(c))
        return {**out, "se": 100 * float(mean_draws.std(ddof=1)), "ci_low": 100 * lo, "ci_high": 100 * hi,
                "p_value": stats.sign_flip_p(diffs, st.n_boot, rng=rng), "test": "sign-flip (stratified)",
                "interval": PAIRED, "note": ""}
    ses = [r["se"] for r in rows]
    if any(s is None or pd.isna(s) for s in ses):
        return {**out, "se": None, "ci_low": None, "ci_high": None, "p_value": None, "test": "", "interval": NO_ERROR,
                "note": "a member has no error"}
    se = math.sqrt(sum(s * s for s in ses)) / k
    lo, hi, p = stats.unpaired_interval(out["delta"], se, 0.0, st.confidence)
    mixed = any(r["interval"] == PAIRED for r in rows)
    return {**out, "se": se, "ci_low": lo, "ci_high": hi, "p_value": p, "test": "z", "interval": UNPAIRED,
            "note": "some members without per-question scores: normal interval" if mixed else ""}


def _summary_pair(run: EvalRun, bench: str, subject: str = "") -> tuple:
    s = run.summary
    if subject:
        t = (s.get("mmlu_subjects") or {}).get(subject) or {}
        return t.get("acc"), t.get("stderr"), t.get("n")
    t = _task(s, bench) or {}
    return t.get("value"), t.get("stderr"), t.get("n")


def compare(runs: dict[str, EvalRun], c: Comparison, st: StatsSettings, index: int = 0) -> tuple[list[dict], list[str]]:
    """Every row of one comparison (subjects, categories, all, benchmarks, average) and its notes."""
    rng = np.random.default_rng([st.seed, index])
    v, r = runs[c.variant], runs[c.reference]
    head = {"comparison": c.label, "kind": c.kind, "variant": c.variant, "reference": c.reference}
    notes = []
    vs, rs = v.summary.get("mmlu_subjects") or {}, r.summary.get("mmlu_subjects") or {}
    common = sorted(s for s in set(vs) & set(rs) if vs[s].get("acc") is not None and rs[s].get("acc") is not None)
    for who, mine, other in ((c.variant, vs, rs), (c.reference, rs, vs)):
        only = sorted(set(mine) - set(other))
        if only and common:
            notes.append(f"{c.label}: {len(only)} MMLU subject(s) only in {who} ({', '.join(only[:5])}"
                         + (" ..." if len(only) > 5 else "") + f"): compared on the {len(common)} common subjects")
    rows, members = [], {}
    for s in common:
        cat = vs[s].get("category") or rs[s].get("category") or MMLU_CATEGORIES.get(s, UNCATEGORISED)
        fields, draws, d = _unit(_scores(v, "mmlu", s), _scores(r, "mmlu", s), _summary_pair(v, "mmlu", s),
                                 _summary_pair(r, "mmlu", s), st, rng)
        rows.append({**head, "level": "subject", "unit": s, "category": cat, **fields})
        members.setdefault(cat, []).append((rows[-1], draws, d))
    every = [m for cat in _category_order(members) for m in members[cat]]
    for cat in _category_order(members) + ([ALL_SUBJECTS] if every else []):
        group = every if cat == ALL_SUBJECTS else members[cat]
        rows.append({**head, "level": "category", "unit": cat, "category": cat,
                     **_group([m[0] for m in group], [m[1] for m in group], [m[2] for m in group], st, rng)})
    bench_rows, bench_draws = [], []
    for bench in BENCHMARKS:
        if bench == "mmlu":
            if every:
                bench_rows.append({**rows[-1], "level": "benchmark", "unit": "mmlu", "category": ""})
                bench_draws.append(np.mean([m[1] for m in every], axis=0) if all(m[1] is not None for m in every) else None)
            continue
        vp, rp = _summary_pair(v, bench), _summary_pair(r, bench)
        if vp[0] is None or rp[0] is None:
            continue
        fields, draws, d = _unit(_scores(v, bench, ""), _scores(r, bench, ""), vp, rp, st, rng)
        bench_rows.append({**head, "level": "benchmark", "unit": bench, "category": "", **fields})
        bench_draws.append(draws)
    rows += bench_rows
    if len(bench_rows) == len(BENCHMARKS):
        avg = _group(bench_rows, bench_draws, [np.zeros(1)] * len(bench_rows), st, rng)
        if avg["interval"] == PAIRED:  # the p of the average: normal from its bootstrap error
            avg["p_value"] = stats.unpaired_interval(avg["delta"], avg["se"], 0.0, st.confidence)[2] if avg["se"] else 1.0
            avg["test"] = "z (bootstrap error)"
        rows.append({**head, "level": "benchmark", "unit": "average", "category": "", **avg})
    return rows, notes


def paired_delta_frame(runs: dict[str, EvalRun], pairs: list[Comparison],
                       st: StatsSettings | None = None) -> tuple[pd.DataFrame, list[str]]:
    """One row per comparison and unit (level: subject, category, benchmark), points (percent), with the
    interval, p-value and Benjamini-Hochberg q-value; the FDR family is one comparison's subjects, its
    categories (with "all"), or its benchmarks. `significant`: q <= alpha. Subjects sorted by change."""
    st = st or StatsSettings()
    rows, notes = [], []
    for k, c in enumerate(pairs):
        got, n = compare(runs, c, st, k)
        rows += got
        notes += n
    frame = pd.DataFrame(rows, columns=DELTA_COLUMNS)
    for col in ("q_value", "p_value", "ci_low", "ci_high", "se", "discordant_b", "discordant_c", "n"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    for _, idx in frame.groupby(["comparison", "level"], sort=False).groups.items():
        frame.loc[idx, "q_value"] = stats.bh_adjust(frame.loc[idx, "p_value"].to_numpy(float))
    frame["significant"] = frame["q_value"].le(st.alpha)
    subject = frame["level"] == "subject"  # subjects sorted by change; categories, benchmarks as made
    keys = pd.DataFrame({"rank": frame["comparison"].map({c.label: k for k, c in enumerate(pairs)}),
                         "level": frame["level"].map({"subject": 0, "category": 1, "benchmark": 2}),
                         "delta": np.where(subject, frame["delta"], 0.0),
                         "tie": np.where(subject, frame["unit"], [f"{k:08d}" for k in range(len(frame))])})
    order = keys.sort_values(["rank", "level", "delta", "tie"], kind="mergesort").index
    return frame.loc[order].reset_index(drop=True), notes


def level(frame: pd.DataFrame, name: str, comparison: str | None = None) -> pd.DataFrame:
    out = frame[frame["level"] == name]
    return out if comparison is None else out[out["comparison"] == comparison]


def settings_notes(runs: dict[str, EvalRun], pairs: list[Comparison]) -> dict[str, list[str]]:
    """Comparison label -> mismatched settings (few-shot, task version, limit); empty when they agree."""
    return {c.label: settings_mismatches(runs[c.variant], runs[c.reference]) for c in pairs}


def power_lines(frame: pd.DataFrame, st: StatsSettings, change: float = 5.0, power: float = 0.8) -> list[str]:
    """Per comparison and category: questions a change of `change` points would need (two-sided
    McNemar at alpha 0.05, `power`), with the discordance observed in that category, or assumed 0.20."""
    out = []
    for comp, g in level(frame, "category").groupby("comparison", sort=False):
        parts = []
        for _, r in g[g["unit"] != ALL_SUBJECTS].iterrows():
            observed = (r["discordant_b"] + r["discordant_c"]) / r["n"] if pd.notna(r["discordant_b"]) and r["n"] else None
            psi = observed if observed is not None and observed >= change / 100 else 0.20
            need = stats.questions_for_change(change / 100, psi, 0.05, power)
            how = f"observed discordance {psi:.2f}" if psi is observed else "assumed discordance 0.20"
            parts.append(f"{CATEGORY_LABELS.get(r['unit'], r['unit'])} {need:,} ({how}; has {_n_text(r['n'])})")
        if parts:
            out.append(f"{comp}: " + "; ".join(parts))
    return out


def _n_text(n: Any) -> str:
    return "n/a" if n is None or pd.isna(n) else f"{int(n):,}"


def verdict(frame: pd.DataFrame, comparison: str, st: StatsSettings) -> str:
    """One sentence: how many subjects change beyond chance after the FDR correction."""
    d = level(frame, "subject", comparison)
    sig = d[d["significant"]]
    n = _n_text(d["n"].sum()) if d["n"].notna().all() and len(d) else "n/a"
    tested = int(d["p_value"].notna().sum())
    if not tested:
        return f"{comparison}: no subject can be tested (no per-question scores or standard errors)."
    if sig.empty:
        return (f"{comparison}: no subject changes beyond chance at n = {n} questions over {_subjects(len(d))} "
                f"(Benjamini-Hochberg, FDR {st.alpha:g}).")
    up, down = int((sig["delta"] > 0).sum()), int((sig["delta"] < 0).sum())
    return (f"{comparison}: {len(sig)} of {_subjects(tested)} change beyond chance (Benjamini-Hochberg, FDR "
            f"{st.alpha:g}; {up} up, {down} down) at n = {n} questions: " + ", ".join(
                f"{r['unit']} {r['delta']:+.1f}" for _, r in sig.sort_values("delta").iterrows()) + ".")


# ---------------------------------------------------------------- tables
def _category_order(categories) -> list[str]:
    present = set(categories)
    return [c for c in CATEGORY_ORDER if c in present] + sorted(present - set(CATEGORY_ORDER) - {ALL_SUBJECTS})


def _interval_text(r, tex: bool = False) -> str:
    if r["ci_low"] is None or pd.isna(r["ci_low"]):
        text = f"{r['delta']:+.2f}"
        return f"${text}$" if tex else text
    mark = "*" if r["significant"] else ""
    if tex:
        return f"${r['delta']:+.2f}{'^{*}' if mark else ''}$ [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}]"
    return f"{r['delta']:+.2f}{mark} [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}]"


def write_category_tables(frame: pd.DataFrame, table_dir: Path, st: StatsSettings | None = None) -> list[Path]:
    """mmlu_delta_categories.{csv,md,tex}: one row per comparison, one column per category."""
    st = st or StatsSettings()
    table_dir = Path(table_dir)
    cats_frame = level(frame, "category")
    cats = _category_order(cats_frame["unit"]) + ([ALL_SUBJECTS] if not cats_frame.empty else [])
    header = ["comparison"] + [CATEGORY_LABELS.get(c, c) for c in cats]

    def rows(tex: bool) -> list[list[str]]:
        out = []
        for label, g in cats_frame.groupby("comparison", sort=False):
            by = g.set_index("unit")
            out.append([label] + [_interval_text(by.loc[c], tex) if c in by.index else "–" for c in cats])
        return out

    note = (f"MMLU 5-shot accuracy change in percentage points, mean over the category's subjects, "
            f"[{st.confidence:.0%} interval: {_method_text(cats_frame)}]; * significant after Benjamini-Hochberg "
            f"over the categories at FDR {st.alpha:g}.")
    if cats_frame.empty:
        note += " No comparison: the baseline or 05_evaluate did not run."
    return [write_text(table_dir / "mmlu_delta_categories.csv", cats_frame.to_csv(index=False)),
            write_text(table_dir / "mmlu_delta_categories.md",
                       "# MMLU change per category\n\n" + note + "\n\n" + _markdown(header, rows(False), text_columns=1)),
            write_text(table_dir / "mmlu_delta_categories.tex",
                       _latex(header, rows(True), note, "tab:mmlu-categories", split_on_source=False,
                              text_columns=1))]


def _method_text(rows: pd.DataFrame) -> str:
    methods = set(rows["interval"]) if not rows.empty else set()
    parts = []
    if PAIRED in methods:
        parts.append("paired bootstrap over questions (subjects resampled separately)")
    if UNPAIRED in methods:
        parts.append("UNPAIRED normal sqrt(se_a² + se_b²) where a model has no logged samples")
    if NO_ERROR in methods:
        parts.append("none where a standard error is missing")
    return "; ".join(parts) or "none"


def _subjects(k: int) -> str:
    return f"{k} subject" + ("" if k == 1 else "s")


# ---------------------------------------------------------------- figures (return the figure; `save_figure` writes)
def _category_colours(categories) -> dict[str, Any]:
    palette = sns.color_palette(PALETTE, 10)
    colours = dict(zip(CATEGORY_ORDER, [palette[k] for k in (0, 1, 2, 4)]))  # not 3: vermillion is close to orange
    extra = sorted(set(categories) - set(CATEGORY_ORDER) - {ALL_SUBJECTS})
    colours.update(zip(extra, [palette[k % 10] for k in range(5, 5 + len(extra))]))
    colours[ALL_SUBJECTS] = (0.25, 0.25, 0.25)
    return colours


def _axes(ax, size: tuple[float, float]):
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=size, layout="constrained")
    plt.close(fig)  # usable, not kept in pyplot (displayed once in a notebook), as plotting.new_figure
    return fig, ax


def _errors(d: pd.DataFrame) -> np.ndarray:
    lo = (d["delta"] - d["ci_low"]).fillna(0).clip(lower=0)
    hi = (d["ci_high"] - d["delta"]).fillna(0).clip(lower=0)
    return np.vstack([lo.to_numpy(float), hi.to_numpy(float)])


def subject_delta_figure(frame: pd.DataFrame, comparison: str, ax=None, st: StatsSettings | None = None):
    """Per-subject change of one comparison, sorted, coloured by category, with intervals; significant
    subjects (after BH) solid and starred, the others pale. Column width (3.5 in)."""
    st = st or StatsSettings()
    style()
    d = level(frame, "subject", comparison).sort_values(["delta", "unit"], kind="mergesort")
    fig, ax = _axes(ax, (3.5, max(2.4, 0.12 * len(d) + 1.4)))
    colours = _category_colours(d["category"])
    ys = np.arange(len(d))
    cols = [colours[c] for c in d["category"]]
    sig = d["significant"].to_numpy(bool)
    ax.barh(ys, d["delta"], height=0.75, color=[c if s else (*c[:3], 0.35) for c, s in zip(cols, sig)],
            edgecolor=cols, linewidth=0.6)
    ax.errorbar(d["delta"], ys, xerr=_errors(d), fmt="none", ecolor="black", elinewidth=0.5, capsize=1)
    ax.plot(d["delta"], ys, marker="o", markersize=1.8, color="black", linestyle="none")  # a zero stays visible
    for y, (_, r) in zip(ys, d.iterrows()):
        if r["significant"]:
            edge = r["ci_high"] if r["delta"] >= 0 else r["ci_low"]
            ax.text(edge, y, " *" if r["delta"] >= 0 else "* ", va="center", ha="left" if r["delta"] >= 0 else "right",
                    fontsize=7, fontweight="bold")
    ax.set_yticks(ys, [s.replace("_", " ") for s in d["unit"]], fontsize=6 if len(d) > 20 else 8)
    ax.set_ylim(-0.6, len(d) - 0.4)
    ax.axvline(0, color="black", linewidth=0.7)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.grid(axis="y", visible=False)
    ax.set_xlabel(f"{d['variant'].iloc[0]} − {d['reference'].iloc[0]} (points)" if len(d) else "points", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    handles = [Patch(facecolor=colours[c], label=CATEGORY_LABELS.get(c, c)) for c in _category_order(d["category"])]
    handles.append(Patch(facecolor="white", edgecolor="black", label=f"* q ≤ {st.alpha:g} (BH)"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12 if len(d) < 15 else -0.05),
              ncols=2, frameon=False, fontsize=6.5)
    ax.set_title(comparison, fontsize=9)
    return fig


def category_delta_figure(frame: pd.DataFrame, comparisons: list[str] | None = None, ax=None,
                          st: StatsSettings | None = None):
    """Per category and over all subjects: each comparison's change as a dot with its interval
    (filled: significant after BH over the categories). Categories on the y axis, so labels never collide."""
    st = st or StatsSettings()
    style()
    cats_frame = level(frame, "category")
    comps = comparisons or list(dict.fromkeys(cats_frame["comparison"]))
    cats = _category_order(cats_frame["unit"]) + [ALL_SUBJECTS]
    fig, ax = _axes(ax, (3.5, 0.9 + 0.28 * len(cats) * max(1, min(len(comps), 4)) ** 0.5 + 0.2 * len(comps)))
    colours = dict(zip(comps, sns.color_palette(PALETTE, max(len(comps), 1))))
    markers = "osD^vP"
    step = min(0.7 / max(len(comps), 1), 0.22)
    for j, comp in enumerate(comps):
        by = cats_frame[cats_frame["comparison"] == comp].set_index("unit")
        rows = by.reindex([c for c in cats if c in by.index])
        ys = np.array([cats.index(c) for c in rows.index]) + (j - (len(comps) - 1) / 2) * step
        ax.errorbar(rows["delta"], ys, xerr=_errors(rows), fmt="none", ecolor=colours[comp], elinewidth=0.9, capsize=1.5)
        sig = rows["significant"].to_numpy(bool)
        ax.scatter(rows["delta"], ys, marker=markers[j % len(markers)], s=18, edgecolors=colours[comp],
                   facecolors=[colours[comp] if s else "white" for s in sig], linewidths=0.9, zorder=3, label=comp)
    ax.set_yticks(range(len(cats)), [CATEGORY_LABELS.get(c, c) for c in cats], fontsize=8)
    ax.set_ylim(len(cats) - 0.5, -0.5)
    ax.axvline(0, color="black", linewidth=0.7)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("MMLU change (points)", fontsize=8)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncols=1, frameon=False, fontsize=6.5,
              title=f"filled: q ≤ {st.alpha:g} (BH)", title_fontsize=6.5)
    return fig


def delta_heatmap(frame: pd.DataFrame, ax=None):
    """Subjects (grouped by category, colour strip on the left) x comparisons, coloured by the change;
    a star marks a change significant after BH within its comparison."""
    style()
    d = level(frame, "subject")
    comps = list(dict.fromkeys(d["comparison"]))
    cat_of = d.drop_duplicates("unit").set_index("unit")["category"]
    cats = _category_order(cat_of)
    subjects = sorted(cat_of.index, key=lambda s: (cats.index(cat_of[s]), s))
    values = d.pivot(index="unit", columns="comparison", values="delta").reindex(index=subjects, columns=comps)
    sig = d.pivot(index="unit", columns="comparison", values="significant").reindex(index=subjects, columns=comps)
    limit = max(1.0, math.ceil(float(np.nanmax(np.abs(values.to_numpy(float)))) if values.size else 1.0))
    fig, ax = _axes(ax, (min(7.0, 2.6 + 0.75 * len(comps)), max(2.5, 0.13 * len(subjects) + 1.6)))
    grid = values.to_numpy(float)
    mesh = ax.pcolormesh(np.arange(len(comps) + 1), np.arange(len(subjects) + 1), grid, cmap=DIVERGING,
                         vmin=-limit, vmax=limit, edgecolors="white", linewidth=0.4)
    small = len(subjects) > 20
    for i in range(len(subjects)):
        for j in range(len(comps)):
            v = grid[i, j]
            text = "n/a" if np.isnan(v) else f"{v:+.1f}" + ("*" if bool(sig.iat[i, j]) else "")
            ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=5.5 if small else 7,
                    color="white" if not np.isnan(v) and abs(v) > 0.6 * limit else "black")
    colours = _category_colours(cats)
    for i, s in enumerate(subjects):
        ax.add_patch(Rectangle((-0.12, i), 0.1, 1, facecolor=colours[cat_of[s]], linewidth=0, clip_on=False))
    ax.set_xlim(0, len(comps))
    ax.set_ylim(len(subjects), 0)
    ax.set_xticks(np.arange(len(comps)) + 0.5, [c.replace(" vs ", "\nvs ") for c in comps], fontsize=6.5)
    ax.xaxis.tick_top()
    ax.set_yticks(np.arange(len(subjects)) + 0.5, [s.replace("_", " ") for s in subjects], fontsize=5.5 if small else 7)
    ax.tick_params(axis="y", pad=8, length=0)
    ax.grid(False)
    for k in range(1, len(subjects)):
        if cat_of[subjects[k]] != cat_of[subjects[k - 1]]:
            ax.axhline(k, color="black", linewidth=0.8)
    bar = fig.colorbar(mesh, ax=ax, shrink=0.5, pad=0.02)
    bar.set_label("change (points)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    handles = [Patch(facecolor=colours[c], label=CATEGORY_LABELS.get(c, c)) for c in cats]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncols=2, frameon=False, fontsize=6.5)
    return fig


def merged_vs_parts_figure(frame: pd.DataFrame, merged: str, base: str | None, partner: str | None, ax=None,
                           st: StatsSettings | None = None):
    """The paper's Table-3 argument per category: the merged model against the base and against the
    partner it was merged into (and the partner against the base), each change with its interval."""
    comps = [f"{merged} vs {p}" for p in (base, partner) if p] + ([f"{partner} vs {base}"] if partner and base else [])
    present = set(level(frame, "category")["comparison"])
    return category_delta_figure(frame, [c for c in comps if c in present], ax=ax, st=st)


def leaderboard_figure(frame: pd.DataFrame, ax=None):
    """Grouped bars: every evaluated variant on the four benchmarks, ±1 standard error."""
    style()
    ours = frame[frame["status"] == "ok"]
    fig, ax = _axes(ax, (7.0, 3.6))
    if ours.empty:
        ax.text(0.5, 0.5, "no evaluation results (05_evaluate not run)", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    palette = sns.color_palette(PALETTE, len(ours))
    width = 0.8 / len(ours)
    for k, (_, r) in enumerate(ours.iterrows()):
        present = [j for j, b in enumerate(BENCHMARKS) if r[b] is not None and not pd.isna(r[b])]
        ax.bar([j + (k - (len(ours) - 1) / 2) * width for j in present], [r[BENCHMARKS[j]] for j in present],
               width=width, yerr=[_nz(r[f"{BENCHMARKS[j]}_stderr"]) for j in present], capsize=2, color=palette[k],
               label=r["variant"])
    ax.set_xticks(range(len(BENCHMARKS)), [LABELS[b] for b in BENCHMARKS])
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False, ncols=min(4, len(ours)), fontsize=8)
    ax.set_title("Open LLM Leaderboard v1 benchmarks")
    return fig


def leaderboard_caption(frame: pd.DataFrame) -> str:
    ours = frame[frame["status"] == "ok"]
    lines = ["Leaderboard scores (percent, error bars: ±1 standard error). " + METRIC_NOTE + "."]
    if ours.empty:
        lines.append("No variant was evaluated.")
    for _, r in ours.iterrows():
        lines.append(f"{r['variant']}: " + ", ".join(f"{LABELS[b]} {_cell(r[b], r[f'{b}_stderr'])}" for b in BENCHMARKS)
                     + f"; average {_cell(r['average'])}")
    return "\n".join(lines)


def _row_line(r) -> str:
    ci = "" if pd.isna(r["ci_low"]) else f" [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
    p = "" if pd.isna(r["p_value"]) else f", p {r['p_value']:.3g}, q {r['q_value']:.3g}" + (" *" if r["significant"] else "")
    interval = "" if r["interval"] == PAIRED else f" ({r['interval']})"
    return (f"{r['reference_score']:.2f} -> {r['variant_score']:.2f}, {r['delta']:+.2f}{ci}{p}, n {_n_text(r['n'])}"
            f"{interval}")


def _method_caption(rows: pd.DataFrame, st: StatsSettings) -> str:
    return (f"Intervals: {st.confidence:.0%}, {_method_text(rows)} ({st.n_boot} resamples, seed {st.seed}). "
            f"Tests: exact McNemar on the discordant questions for accuracy, a paired sign-flip test otherwise; "
            f"* significant after Benjamini-Hochberg at FDR {st.alpha:g}.")


def subject_caption(frame: pd.DataFrame, comparison: str, st: StatsSettings, notes: list[str] = ()) -> str:
    d = level(frame, "subject", comparison)
    c = level(frame, "category", comparison)
    lines = [f"MMLU 5-shot accuracy change per subject, {comparison}, in percentage points, sorted. "
             + _method_caption(d, st) + " Solid bars: significant; pale: not. Colour: lm-eval category.",
             verdict(frame, comparison, st)]
    lines += [n for n in notes if n.startswith(comparison + ":")]
    lines += ["", "Per category (mean over subjects; BH over the categories):"]
    lines += [f"  {CATEGORY_LABELS.get(r['unit'], r['unit'])}: {_row_line(r)}" for _, r in c.iterrows()]
    lines += ["", "Per subject (reference -> variant, change [interval], p, q, n):"]
    lines += [f"  {r['unit']} ({r['category']}): {_row_line(r)}" for _, r in d.iloc[::-1].iterrows()]
    return "\n".join(lines)


def category_caption(frame: pd.DataFrame, comparisons: list[str], st: StatsSettings, power: list[str] = ()) -> str:
    c = level(frame, "category")
    c = c[c["comparison"].isin(comparisons)]
    lines = ["MMLU 5-shot accuracy change per lm-eval category and over all subjects (mean over subjects), in "
             "percentage points. " + _method_caption(c, st) + " Filled markers: significant (BH over the "
             "categories of each comparison)."]
    for comp in comparisons:
        lines.append(f"{comp}:")
        lines += [f"  {CATEGORY_LABELS.get(r['unit'], r['unit'])}: {_row_line(r)}" for _, r in
                  c[c["comparison"] == comp].iterrows()]
    if power:
        lines += ["", "Questions a 5-point change in one category would need (two-sided McNemar, alpha 0.05, power 0.8):"]
        lines += [f"  {p}" for p in power if p.split(":")[0] in comparisons]
    return "\n".join(lines)


def heatmap_caption(frame: pd.DataFrame, st: StatsSettings) -> str:
    d = level(frame, "subject")
    comps = list(dict.fromkeys(d["comparison"]))
    lines = ["MMLU 5-shot accuracy change per subject (rows, grouped by lm-eval category) for each comparison "
             "(columns), in percentage points. " + _method_caption(d, st)]
    lines += [verdict(frame, comp, st) for comp in comps]
    values = d.pivot(index="unit", columns="comparison", values="delta")
    sig = d.pivot(index="unit", columns="comparison", values="significant")
    cat_of = d.drop_duplicates("unit").set_index("unit")["category"]
    lines += ["", "subject (category): " + " | ".join(comps)]
    for s in sorted(values.index, key=lambda s: (CATEGORY_ORDER.index(cat_of[s]) if cat_of[s] in CATEGORY_ORDER else 9, s)):
        lines.append(f"  {s} ({cat_of[s]}): " + " | ".join(
            "n/a" if c not in values.columns or pd.isna(values.at[s, c]) else
            f"{values.at[s, c]:+.2f}" + (" *" if sig.at[s, c] is True else "") for c in comps))
    return "\n".join(lines)


def benchmark_caption_lines(frame: pd.DataFrame) -> list[str]:
    b = level(frame, "benchmark")
    return [f"  {comp}: " + "; ".join(f"{LABELS.get(r['unit'], r['unit'])} {_row_line(r)}" for _, r in g.iterrows())
            for comp, g in b.groupby("comparison", sort=False)]


def save_figure(fig, stem: Path, caption: str, formats) -> list[Path]:
    """The save step: stem.<fmt> for each format (vector PDF, fonts embedded as TrueType) and stem.txt."""
    with plt.rc_context({"pdf.fonttype": 42, "ps.fonttype": 42, "svg.hashsalt": "platypus"}):
        return _plotting_save(fig, stem, caption, formats=formats)


# ---------------------------------------------------------------- merge trade-off
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


def merge_tradeoff_figure(tradeoff: pd.DataFrame, frame: pd.DataFrame, axes=None):
    """Left: MMLU against the mean of ARC, HellaSwag and TruthfulQA per variant, arrows from each
    reference to what was made from it. Right: the change on each benchmark per comparison, with its
    interval (hollow: not significant). `axes`: two axes to draw into, or None for a new figure."""
    style()
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(7.2, 4.2), width_ratios=[1.1, 1], layout="constrained")
        plt.close(fig)
    ax, axd = axes
    fig = ax.figure
    bench = level(frame, "benchmark")
    colours = dict(zip(tradeoff["variant"], sns.color_palette(PALETTE, max(len(tradeoff), 1))))
    at, handles = {}, []
    for _, r in tradeoff.iterrows():
        at[r["variant"]] = (r["mmlu"], r["others_mean"])
        marker = ROLE_MARKERS.get(r["role"], "o")
        ax.errorbar(r["mmlu"], r["others_mean"], xerr=_nz(r["mmlu_stderr"]), yerr=_nz(r["others_stderr"]),
                    fmt=marker, color=colours[r["variant"]], markersize=7, markeredgecolor="black",
                    markeredgewidth=0.6, elinewidth=0.8, capsize=2, zorder=3)
        handles.append(Line2D([], [], marker=marker, linestyle="none", markersize=6, color=colours[r["variant"]],
                              markeredgecolor="black", label=f"{r['variant']}: {r['role']}"))
    for variant, reference in (c for c in _arrow_pairs(bench) if c[0] in at and c[1] in at):
        ax.annotate("", xy=at[variant], xytext=at[reference], zorder=2,
                    arrowprops={"arrowstyle": "->", "color": "0.35", "linewidth": 0.9, "shrinkA": 6, "shrinkB": 6})
    ax.margins(0.2)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
    ax.set_xlabel("MMLU (%)", fontsize=8)
    ax.set_ylabel("mean of ARC, HellaSwag, TruthfulQA (%)", fontsize=8)
    ax.set_title("Each variant (arrows: made from)", fontsize=9)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=1, frameon=False, fontsize=6.5)
    comps = bench.drop_duplicates("comparison")
    benches = [b for b in list(BENCHMARKS) + ["average"] if b in set(bench["unit"])]
    step = min(0.7 / max(len(comps), 1), 0.25)
    handles = []
    for j, (_, c) in enumerate(comps.iterrows()):
        colour = colours.get(c["variant"], "black")
        marker = "o" if c["kind"] != KIND_PARTNER else "s"  # against the partner: squares
        by = bench[bench["comparison"] == c["comparison"]].set_index("unit").reindex(
            [b for b in benches if b in set(bench.loc[bench["comparison"] == c["comparison"], "unit"])])
        ys = np.array([benches.index(b) for b in by.index]) + (j - (len(comps) - 1) / 2) * step
        axd.errorbar(by["delta"], ys, xerr=_errors(by), fmt="none", ecolor=colour, elinewidth=0.8, capsize=2)
        axd.scatter(by["delta"], ys, marker=marker, s=22, edgecolors=colour, zorder=3,
                    facecolors=[colour if s else "white" for s in by["significant"].to_numpy(bool)])
        handles.append(Line2D([], [], marker=marker, linestyle="none", color=colour, label=c["comparison"]))
    handles.append(Line2D([], [], marker="o", linestyle="none", color="black", markerfacecolor="white",
                          label="hollow: not significant"))
    if not benches:
        axd.text(0.5, 0.5, "no comparison\n(reference not evaluated)", ha="center", va="center", transform=axd.transAxes)
        axd.set_axis_off()
    axd.set_yticks(range(len(benches)), [LABELS.get(b, b) for b in benches], fontsize=8)
    axd.set_ylim(max(len(benches), 1) - 0.5, -0.5)
    axd.axvline(0, color="black", linewidth=0.8)
    axd.xaxis.set_major_locator(MaxNLocator(nbins=4))
    axd.grid(axis="y", visible=False)
    axd.set_xlabel("change (points)", fontsize=8)
    axd.set_title("Change against the reference", fontsize=9)
    axd.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=1, frameon=False, fontsize=6.5)
    return fig


def tradeoff_caption(tradeoff: pd.DataFrame, frame: pd.DataFrame, st: StatsSettings) -> str:
    bench = level(frame, "benchmark")
    lines = ["Left: MMLU (mean over subjects) against the mean of ARC, HellaSwag and TruthfulQA for each "
             "evaluated variant, ±1 standard error; arrows run from a reference model to the model made from "
             "it. Right: change on each benchmark against the reference. " + _method_caption(bench, st)
             + " Hollow markers: not significant (BH over the benchmarks of each comparison).", "", "Variants:"]
    for _, r in tradeoff.iterrows():
        made = f", {r['method']}" + (f" into {r['partner']}" if r["partner"] else "") if r["method"] else ""
        lines.append(f"  {r['variant']} ({r['role']}{made}): MMLU {_cell(r['mmlu'], _nan(r['mmlu_stderr']))}, "
                     f"others {_cell(r['others_mean'], _nan(r['others_stderr']))} ({r['others_over']})")
    return "\n".join(lines + ["", "Changes:"] + benchmark_caption_lines(frame))


def _arrow_pairs(bench: pd.DataFrame) -> list[tuple[str, str]]:
    """(variant, reference) to draw: each made model from what it was made from (the partner when evaluated)."""
    pairs = bench.drop_duplicates("comparison")
    partnered = set(pairs.loc[pairs["kind"] == KIND_PARTNER, "variant"])
    return [(r["variant"], r["reference"]) for _, r in pairs.iterrows()
            if r["kind"] in (KIND_FINETUNED, KIND_PARTNER) or (r["kind"] == KIND_MERGED and r["variant"] not in partnered)]


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
    cats_frame = level(categories, "category") if categories is not None and not categories.empty else None
    if cats_frame is not None and not cats_frame.empty:
        cats = _category_order(cats_frame["unit"]) + [ALL_SUBJECTS]
        rows = []
        for label, g in cats_frame.groupby("comparison", sort=False):
            by = g.set_index("unit")
            rows.append([label, g["kind"].iloc[0]] + [_interval_text(by.loc[c]) if c in by.index else "–" for c in cats])
        doc.table(["comparison", "kind"] + [CATEGORY_LABELS.get(c, c) for c in cats], rows, numeric_from=2)
        doc.p(f"Percentage points, mean over the category's subjects [interval: {_method_text(cats_frame)}]; "
              "* significant after Benjamini-Hochberg. ", *_file_links(produced, "table", "mmlu_delta_categories", rel))
        doc.h(2, "What the sample size can show")
        doc.bullets([str(v) for v in produced.get("verdicts", [])])
        doc.p("Questions a change of 5 points in one category would need (two-sided exact McNemar, alpha 0.05, "
              "power 0.8; the discordance is the share of questions on which the two models disagree, as observed "
              "in that category, or assumed 0.20 where too few disagreements were seen):")
        doc.bullets([str(v) for v in produced.get("power", [])])
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


# ---------------------------------------------------------------- writing the comparisons
def _refuse_mismatched(runs: dict[str, EvalRun], pairs: list[Comparison], force: bool, notes: list[str]) -> list[Comparison]:
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
    return f"mmlu_delta_{_safe(c.variant)}" + ("" if c.reference == baseline else f"_vs_{_safe(c.reference)}")


def write_comparisons(runs: dict[str, EvalRun], pairs: list[Comparison], st: StatsSettings, tables: Path,
                      figures: Path, formats, register, absent, produced: dict, baseline: str,
                      merged: dict[str, str | None]) -> pd.DataFrame:
    """The paired tables and figures of every comparison; returns the delta frame. Adds to `produced`:
    notes (missing subjects, fallbacks), verdicts (what survives the FDR) and power lines."""
    frame, notes = paired_delta_frame(runs, pairs, st)
    produced["notes"] += notes
    register("table", "mmlu_delta", "MMLU change per subject, every comparison",
             [write_text(tables / "mmlu_delta.csv", level(frame, "subject").to_csv(index=False))])
    register("table", "mmlu_delta_categories", "MMLU change per category, every comparison",
             write_category_tables(frame, tables, st))
    register("table", "benchmark_deltas", "Change per benchmark, every comparison",
             [write_text(tables / "benchmark_deltas.csv", level(frame, "benchmark").to_csv(index=False))])
    subjects = level(frame, "subject")
    produced["verdicts"] = [verdict(frame, c.label, st) for c in pairs if c.label in set(subjects["comparison"])]
    produced["power"] = power_lines(frame, st)
    if subjects.empty:
        why = "not drawn: no MMLU comparison (needs the baseline and another variant evaluated on MMLU)"
        absent("figure", "mmlu_delta_categories", "MMLU change per category", why)
        absent("figure", "mmlu_delta_heatmap", "MMLU change per subject across comparisons", why)
        return frame
    comps = list(dict.fromkeys(subjects["comparison"]))
    register("figure", "mmlu_delta_categories", "MMLU change per category",
             save_figure(category_delta_figure(frame, comps, st=st), figures / "mmlu_delta_categories",
                         category_caption(frame, comps, st, produced["power"]), formats))
    register("figure", "mmlu_delta_heatmap", "MMLU change per subject across comparisons",
             save_figure(delta_heatmap(frame), figures / "mmlu_delta_heatmap", heatmap_caption(frame, st), formats))
    for c in pairs:
        if c.label in comps:
            name = _figure_name(c, baseline)
            register("figure", name, f"MMLU change per subject: {c.label}",
                     save_figure(subject_delta_figure(frame, c.label, st=st), figures / name,
                                 subject_caption(frame, c.label, st, produced["notes"]), formats))
    for variant, partner in merged.items():
        base = baseline if f"{variant} vs {baseline}" in comps else None
        parts = [f"{variant} vs {p}" for p in (base, partner) if p]
        if partner and any(p in comps for p in parts):
            drawn = [p for p in parts + [f"{partner} vs {baseline}"] if p in comps]
            name = f"merged_vs_parts_{_safe(variant)}"
            register("figure", name, f"MMLU per category: {variant} against its parts",
                     save_figure(merged_vs_parts_figure(frame, variant, base, partner, st=st), figures / name,
                                 category_caption(frame, drawn, st, produced["power"]), formats))
    return frame


def _inputs(specs: list[str]) -> list[tuple[Path, str | None]]:
    out = []
    for spec in specs:
        path, _, name = spec.partition("=")
        out.append((Path(path), name or None))
    return out


def load_runs(specs: list[str]) -> tuple[dict[str, EvalRun], list[str]]:
    """DIR[=NAME] inputs -> runs by name: an lm-eval output folder is one model (NAME, default its folder's
    name); a 05_evaluate folder gives every variant in it (or only NAME)."""
    runs: dict[str, EvalRun] = {}
    notes: list[str] = []
    for path, name in _inputs(specs):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or directory")
        if is_pipeline_dir(path):
            summaries, _, _ = load_summaries(path)
            chosen = {name: summaries[name]} if name in summaries else summaries
            if name and name not in summaries:
                raise ValueError(f"{path}: no variant {name!r} (has {', '.join(summaries) or 'none'})")
            got = runs_from_summaries(path, chosen)
        else:
            run = read_lm_eval_dir(path, name)
            got = {run.name: run}
        for n, run in got.items():
            if n in runs:
                raise ValueError(f"two inputs are both named {n!r}: name them DIR=NAME")
            runs[n] = run
            notes += run.notes
    return runs, notes


def analyse(specs: list[str], baseline: str, out: str | Path, force: bool = False, formats=("png", "pdf"),
            st: StatsSettings | None = None, merged: dict[str, str | None] | None = None) -> dict:
    """`platypus analyse`: the leaderboard and the paired per-subject tables and figures from lm-eval
    output folders (or 05_evaluate folders) into out/{tables,figures}/ and out/summary.md. Every variant
    is compared with `baseline`, and each merged variant in `merged` with its partner. Comparisons whose
    settings differ are refused (ValueError) unless `force`."""
    st = st or StatsSettings()
    out = Path(out)
    runs, notes = load_runs(specs)
    if baseline not in runs:
        raise ValueError(f"--baseline {baseline!r} is not among the inputs ({', '.join(runs)})")
    merged = merged or {}
    pairs, pair_notes = comparisons(list(runs), baseline, merged)
    produced: dict[str, Any] = {"tables": {}, "figures": {}, "notes": notes + pair_notes, "artifacts": [],
                                "variants": list(runs), "comparisons": [c.label for c in pairs]}
    refused: list[str] = []
    pairs = _refuse_mismatched(runs, pairs, force, refused)
    produced["notes"] += refused
    if refused and not force:
        raise ValueError("mismatched evaluation settings; a paired comparison needs the same few-shot count, "
                         "task version and limit (pass --force to compare anyway):\n  " + "\n  ".join(refused))

    def register(kind, name, title, paths):
        produced["tables" if kind == "table" else "figures"][name] = [str(p) for p in paths]

    def absent(kind, name, title, why):
        produced["notes"].append(f"{name} {why}")

    tables, figures = out / "tables", out / "figures"
    summaries = {n: r.summary for n, r in runs.items()}
    board = leaderboard_frame(summaries)
    register("table", "leaderboard", "", write_leaderboard(board, tables))
    register("figure", "leaderboard", "", save_figure(leaderboard_figure(board), figures / "leaderboard",
                                                      leaderboard_caption(board), list(formats)))
    frame = write_comparisons(runs, pairs, st, tables, figures, list(formats), register, absent, produced,
                              baseline, merged)
    produced["summary"] = str(write_text(out / "summary.md", _analyse_summary(runs, produced, frame, st)))
    return produced


def _analyse_summary(runs: dict[str, EvalRun], produced: dict, frame: pd.DataFrame, st: StatsSettings) -> str:
    lines = ["# Analysis of lm-eval runs", "", "Inputs:"]
    lines += [f"- {n}: `{r.source}` ({'per-question samples' if r.has_samples else 'NO samples: unpaired errors'})"
              for n, r in runs.items()]
    lines += ["", "## What the sample size can show", ""] + [f"- {v}" for v in produced.get("verdicts", [])]
    lines += ["", "Questions a 5-point change in one category would need (two-sided exact McNemar, alpha 0.05, "
              "power 0.8, the observed discordance or an assumed 0.20):", ""]
    lines += [f"- {p}" for p in produced.get("power", [])]
    if produced["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in produced["notes"]]
    lines += ["", "## Files", ""] + [f"- {p}" for group in ("tables", "figures") for ps in produced[group].values()
                                    for p in ps]
    return "\n".join(lines) + "\n"


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
                 save_figure(leaderboard_figure(frame), figures / "leaderboard", leaderboard_caption(frame), formats))

        pairs, pair_notes = comparisons(list(summaries), cfg.baseline, merged)
        produced["notes"] += pair_notes
        produced["comparisons"] = [{"comparison": c.label, "kind": c.kind} for c in pairs]
        if summaries and cfg.baseline not in summaries:
            produced["notes"].append(f"baseline {cfg.baseline!r} not evaluated: no MMLU deltas against it")
        runs = runs_from_summaries(profile.run_dir("05_evaluate"), summaries)
        produced["notes"] += [n for r in runs.values() for n in r.notes]
        read += [Path(r.source) / f"{v}.samples.jsonl" for v, r in runs.items() if r.has_samples]
        pairs = _refuse_mismatched(runs, pairs, False, produced["notes"])
        deltas = write_comparisons(runs, pairs, StatsSettings.from_profile(profile), tables, figures, formats,
                                   register, absent, produced, cfg.baseline, merged)
        trade = tradeoff_frame(summaries, cfg.baseline, merged, merge_report)
        register("table", "merge_tradeoff", "MMLU against the other benchmarks, per variant",
                 [write_text(tables / "merge_tradeoff.csv", trade.to_csv(index=False))])
        if trade["role"].isin([ROLE_MERGED_BASE, ROLE_MERGED_PARTNER]).any():
            register("figure", "merge_tradeoff", "Merge trade-off: MMLU against the other benchmarks",
                     save_figure(merge_tradeoff_figure(trade, deltas), figures / "merge_tradeoff",
                                 tradeoff_caption(trade, deltas, StatsSettings.from_profile(profile)), formats))
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
        produced["summary"] = [str(p) for p in write_summary(profile, produced, frame, deltas)]

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


__all__ = ["run_analysis", "analyse", "load_runs", "load_summaries", "leaderboard_frame", "write_leaderboard",
           "leaderboard_figure", "leaderboard_caption", "Comparison", "merged_variants", "variant_role", "comparisons",
           "StatsSettings", "runs_from_summaries", "compare", "paired_delta_frame", "level", "verdict", "power_lines",
           "write_category_tables", "write_comparisons", "subject_delta_figure", "category_delta_figure",
           "delta_heatmap", "merged_vs_parts_figure", "subject_caption", "category_caption", "heatmap_caption",
           "tradeoff_frame", "merge_tradeoff_figure", "tradeoff_caption", "save_figure", "pipeline_status",
           "upstream_artifacts", "key_numbers", "write_summary", "PUBLISHED"]
