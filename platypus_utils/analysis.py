"""Stage 06_analysis: the leaderboard table, per-subject MMLU deltas, and the pipeline at a glance.

Reads the normalised summaries of 05_evaluate (`<variant>.json`, not the raw lm-eval output)
and, where present, the artifacts of 01-03. Every input is optional: a stage that has not run
shows as "not run", a variant that failed shows as "failed", and nothing here raises because
an upstream artifact is absent or unreadable.

Writes to reports/<profile>/tables/:
  leaderboard.{csv,md,tex}  - every variant (and the paper's numbers with analysis.published_results),
                              scores in percent +- standard error
  mmlu_delta.csv            - per subject: each variant minus the baseline, the combined standard
                              error and whether the delta is within it
  mmlu_delta_categories.csv - the same per category (mean over the category's subjects)
  pipeline.{csv,md}         - status and headline numbers of every stage
and to reports/<profile>/figures/: leaderboard.*, mmlu_delta_<variant>.* (each with a .txt caption
holding the numbers shown).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd

from .artifacts import StageRun, read_manifest, write_json, write_text

log = logging.getLogger("platypus")
STAGE = "06_analysis"
BENCHMARKS = ("arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2")
LABELS = {"arc_challenge": "ARC", "hellaswag": "HellaSwag", "mmlu": "MMLU", "truthfulqa_mc2": "TruthfulQA"}
METRIC_NOTE = "ARC 25-shot acc_norm, HellaSwag 10-shot acc_norm, MMLU 5-shot acc (mean over subjects), TruthfulQA 0-shot mc2"
CATEGORY_LABELS = {"stem": "STEM", "humanities": "humanities", "social_sciences": "social sciences", "other": "other"}
NOT_RUN = "not run"
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


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    esc = [[c.replace("|", "\\|") for c in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in esc]
    return "\n".join(lines) + "\n"


def _tex_escape(text: str) -> str:
    if text.startswith("$") and text.endswith("$"):
        return text
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in text)


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$"}


def _latex(header: list[str], rows: list[list[str]], caption: str, label: str) -> str:
    lines = ["% requires \\usepackage{booktabs}", "\\begin{table}[t]", "\\centering", "\\small",
             f"\\begin{{tabular}}{{ll{'r' * (len(header) - 2)}}}", "\\toprule",
             " & ".join(_tex_escape(h) for h in header) + " \\\\", "\\midrule"]
    for k, row in enumerate(rows):
        if k and row[1] != rows[k - 1][1]:  # a rule between our rows and the paper's
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
        palette = sns.color_palette("colorblind", len(ours))
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
        ax.legend(title="variant", frameon=False, ncols=min(4, len(ours)))
    ax.set_title("Open LLM Leaderboard v1 benchmarks")
    return save_figure(fig, stem, "\n".join(lines), formats=formats)


# ---------------------------------------------------------------- MMLU deltas
def mmlu_delta_frame(summaries: dict[str, dict], baseline: str) -> pd.DataFrame:
    """Per subject, each variant minus the baseline (percentage points), with the combined
    standard error sqrt(se_v^2 + se_b^2); `within_stderr` marks |delta| <= that error."""
    cols = ["variant", "baseline", "subject", "category", "baseline_acc", "variant_acc", "delta",
            "combined_stderr", "within_stderr", "n"]
    base = (summaries.get(baseline) or {}).get("mmlu_subjects") or {}
    rows = []
    for variant, s in summaries.items():
        if variant == baseline:
            continue
        for subject, v in sorted((s.get("mmlu_subjects") or {}).items()):
            b = base.get(subject)
            if not b or v.get("acc") is None or b.get("acc") is None:
                continue
            delta = 100.0 * (v["acc"] - b["acc"])
            se = (100.0 * math.sqrt(v["stderr"] ** 2 + b["stderr"] ** 2)
                  if v.get("stderr") is not None and b.get("stderr") is not None else None)
            rows.append({"variant": variant, "baseline": baseline, "subject": subject,
                         "category": v.get("category") or b.get("category") or "other",
                         "baseline_acc": 100.0 * b["acc"], "variant_acc": 100.0 * v["acc"], "delta": delta,
                         "combined_stderr": se, "within_stderr": bool(se is not None and abs(delta) <= se),
                         "n": v.get("n")})
    frame = pd.DataFrame(rows, columns=cols)
    return frame.sort_values(["variant", "delta", "subject"], kind="mergesort").reset_index(drop=True)


def category_delta_frame(deltas: pd.DataFrame) -> pd.DataFrame:
    """Mean delta over each category's subjects; its error sqrt(sum se_i^2) / k (independent subjects)."""
    cols = ["variant", "category", "subjects", "delta", "combined_stderr", "within_stderr"]
    rows = []
    for (variant, category), g in deltas.groupby(["variant", "category"], sort=True):
        se = (math.sqrt(float((g["combined_stderr"] ** 2).sum())) / len(g)
              if g["combined_stderr"].notna().all() else None)
        delta = float(g["delta"].mean())
        rows.append({"variant": variant, "category": category, "subjects": len(g), "delta": delta,
                     "combined_stderr": se, "within_stderr": bool(se is not None and abs(delta) <= se)})
    return pd.DataFrame(rows, columns=cols)


def mmlu_delta_figure(deltas: pd.DataFrame, categories: pd.DataFrame, variant: str, baseline: str,
                      stem: Path, formats: list[str]) -> list[Path]:
    from matplotlib.patches import Patch

    from .plotting import save_figure, style

    plt, sns = style()
    d = deltas[deltas["variant"] == variant].sort_values(["delta", "subject"], kind="mergesort")
    c = categories[categories["variant"] == variant]
    cats = [k for k in CATEGORY_LABELS if k in set(d["category"])] + sorted(set(d["category"]) - set(CATEGORY_LABELS))
    colours = dict(zip(cats, sns.color_palette("colorblind", len(cats))))
    grey = (0.82, 0.82, 0.82)
    c = c.set_index("category").reindex([k for k in cats if k in set(c["category"])]).reset_index()
    height = max(3.6, 0.2 * len(d) + 1.4)
    fig = plt.figure(figsize=(10, height))
    # left: one bar per subject; right: the category means (top) above the legend
    grid = fig.add_gridspec(2, 2, width_ratios=[3, 1.3], height_ratios=[max(len(c), 1) * 0.55 + 1.2, max(height - len(c) * 0.55 - 1.2, 1.0)])
    ax, axc, axl = fig.add_subplot(grid[:, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, 1])

    def bars(axis, labels, values, errors, cat_of, within):
        for k, (val, err, cat, inside) in enumerate(zip(values, errors, cat_of, within)):
            axis.barh(k, val, xerr=None if err is None or pd.isna(err) else err, capsize=1.5,
                      color=grey if inside else colours[cat], edgecolor=colours[cat],
                      hatch="///" if inside else None, linewidth=0.8, error_kw={"elinewidth": 0.7})
        axis.set_yticks(range(len(labels)), labels)
        axis.set_ylim(-0.6, len(labels) - 0.4)
        axis.axvline(0, color="black", linewidth=0.8)

    bars(ax, [s.replace("_", " ") for s in d["subject"]], d["delta"], d["combined_stderr"], d["category"],
         d["within_stderr"])  # ascending from the bottom: the largest gain on top
    ax.tick_params(axis="y", labelsize=7.5)
    ax.set_xlabel(f"MMLU accuracy: {variant} − {baseline} (percentage points)")
    ax.set_title(f"Per subject ({len(d)})")
    rev = c.iloc[::-1]  # STEM on top
    bars(axc, [CATEGORY_LABELS.get(k, k) for k in rev["category"]], rev["delta"], rev["combined_stderr"],
         rev["category"], rev["within_stderr"])
    axc.set_title("Per category (mean)")
    axc.set_xlabel("percentage points")
    handles = [Patch(facecolor=colours[k], label=CATEGORY_LABELS.get(k, k)) for k in cats]
    handles.append(Patch(facecolor=grey, edgecolor="black", hatch="///", label="within ±1 combined s.e."))
    axl.set_axis_off()
    axl.legend(handles=handles, loc="upper left", frameon=False, title="category")
    fig.suptitle(f"MMLU per-subject change, {variant} vs {baseline}")
    fig.tight_layout()

    def line(r):
        se = "n/a" if r["combined_stderr"] is None or pd.isna(r["combined_stderr"]) else f"{r['combined_stderr']:.2f}"
        mark = " (within s.e.)" if r["within_stderr"] else ""
        return f"{r['delta']:+.2f} ± {se}{mark}"

    caption = [f"MMLU 5-shot accuracy change of {variant} against {baseline}, in percentage points, sorted; "
               "error bars: ±1 combined standard error sqrt(se_variant² + se_baseline²); grey hatched bars are "
               "within it. Right: mean change per category.",
               "", "Per category:"]
    caption += [f"  {CATEGORY_LABELS.get(r['category'], r['category'])} ({r['subjects']} subjects): {line(r)}"
                for _, r in c.iterrows()]
    caption += ["", "Per subject (baseline -> variant, change):"]
    caption += [f"  {r['subject']}: {r['baseline_acc']:.2f} -> {r['variant_acc']:.2f}, {line(r)}" for _, r in d.iterrows()]
    return save_figure(fig, stem, "\n".join(caption), formats=formats)


# ---------------------------------------------------------------- upstream stages
def pipeline_status(profile) -> tuple[pd.DataFrame, pd.DataFrame | None, list[Path]]:
    """(one row per stage: status and headline numbers, contamination per benchmark or None, files read)."""
    read: list[Path] = []
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
        row = {"stage": stage, "artifact": str(artifact), "status": NOT_RUN, "details": ""}
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
        rows.append(row)
    return pd.DataFrame(rows, columns=["stage", "status", "details", "artifact"]), contamination, read


# ---------------------------------------------------------------- the stage
def run_analysis(profile) -> dict:
    """Write the tables and figures; returns what was produced and what was missing."""
    cfg = profile.analysis
    tables, figures = profile.report_dir("tables"), profile.report_dir("figures")
    out = profile.run_dir(STAGE)
    produced: dict[str, Any] = {"tables": {}, "figures": {}, "notes": []}
    with StageRun(out, STAGE, profile.fingerprint_params(STAGE)) as run:
        eval_dir = profile.run_dir("05_evaluate")
        summaries, failed, read = load_summaries(eval_dir, list(profile.evaluate.variants))
        if not summaries:
            produced["notes"].append("05_evaluate not run (no evaluation summaries)")
        produced["variants"] = list(summaries)
        produced["failed_variants"] = failed

        frame = leaderboard_frame(summaries, failed, published=cfg.published_results)
        produced["tables"]["leaderboard"] = [str(p) for p in write_leaderboard(frame, tables)]
        produced["figures"]["leaderboard"] = [
            str(p) for p in leaderboard_figure(frame, figures / "leaderboard", list(cfg.formats))]

        deltas = mmlu_delta_frame(summaries, cfg.baseline)
        cats = category_delta_frame(deltas)
        produced["tables"]["mmlu_delta"] = [str(write_text(tables / "mmlu_delta.csv", deltas.to_csv(index=False))),
                                            str(write_text(tables / "mmlu_delta_categories.csv", cats.to_csv(index=False)))]
        if summaries and cfg.baseline not in summaries:
            produced["notes"].append(f"baseline {cfg.baseline!r} not evaluated: no MMLU deltas")
        for variant in summaries:
            if variant == cfg.baseline or deltas.empty or variant not in set(deltas["variant"]):
                continue
            paths = mmlu_delta_figure(deltas, cats, variant, cfg.baseline, figures / f"mmlu_delta_{variant}",
                                      list(cfg.formats))
            produced["figures"][f"mmlu_delta_{variant}"] = [str(p) for p in paths]

        stages, contamination, upstream = pipeline_status(profile)
        produced["stages"] = dict(zip(stages["stage"], stages["status"]))
        header = list(stages.columns[:3])
        produced["tables"]["pipeline"] = [
            str(write_text(tables / "pipeline.csv", stages.to_csv(index=False))),
            str(write_text(tables / "pipeline.md", "# Pipeline status\n\n" + _markdown(
                header, [[str(r[c]) for c in header] for _, r in stages.iterrows()])))]
        if contamination is not None:
            produced["tables"]["contamination_by_benchmark"] = [
                str(write_text(tables / "contamination_by_benchmark.csv", contamination.to_csv(index=False)))]

        for path in read + upstream:
            run.add_input(path)
        report = write_json(out / "analysis_report.json", produced)
        for group in ("tables", "figures"):
            for paths in produced[group].values():
                for p in paths:
                    run.add_output(p)
        run.add_output(report)
        run.metrics.update({"variants": len(summaries), "failed_variants": len(failed),
                            "figures": sum(len(v) for v in produced["figures"].values())})
        produced["report"] = str(report)
    return produced


__all__ = ["run_analysis", "load_summaries", "leaderboard_frame", "write_leaderboard", "mmlu_delta_frame",
           "category_delta_frame", "mmlu_delta_figure", "leaderboard_figure", "pipeline_status", "PUBLISHED"]
