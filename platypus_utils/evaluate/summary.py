"""lm-eval's outputs as the normalised summary 06_analysis reads, and as frames and a figure.

MMLU's `value` is the leaderboard's mean over subjects, se = sqrt(sum se_i^2) / k; `weighted_value` is
lm-eval's group value (mean over questions). `average`: the mean of the benchmark values present.
"""

from __future__ import annotations

import math

import pandas as pd

from ..lmeval_io import LEADERBOARD_METRICS, as_float, summary_from_results
from ..plotting import new_figure
from .tasks import TaskSuite


def _mmlu_task(raw: dict, suite: TaskSuite, task: dict, subjects: dict[str, dict]) -> dict:
    """lmeval_io's MMLU entry, with `weighted_value` and a pooled stderr where a subject has none (one
    question: N/A): with equal subject sizes the mean over subjects is the mean over all N questions,
    se sqrt(p (1 - p) / (N - 1)); other sizes: None."""
    results, n_total = raw["results"], task["n"]
    group = suite.task_names["mmlu"]
    if group in results:
        weighted = as_float(results[group][f"{LEADERBOARD_METRICS['mmlu'][0]},none"])
        weighted_se = as_float(results[group].get("acc_stderr,none"))
    else:  # a subject subset on the hub: lm-eval's size weighting, done here
        weighted, weighted_se = sum(s["acc"] * s["n"] for s in subjects.values()) / n_total, None
    task = {**task, "stderr_method": "per-subject"}
    if task["stderr"] is None:
        task["stderr_method"] = None
        if len({s["n"] for s in subjects.values()}) == 1 and n_total >= 2:
            task["stderr"] = math.sqrt(task["value"] * (1 - task["value"]) / (n_total - 1))
            task["stderr_method"] = "pooled over questions (equal subject sizes)"
        weighted_se = task["stderr"] if weighted_se is None else weighted_se
    return task | {
        "weighted_value": weighted,
        "weighted_stderr": weighted_se,
        "weighted_aggregation": "mean over questions, subjects weighted by size (lm-eval's mmlu group)",
    }


def summarise(variant: str, model: str, mhash: str, settings: dict, raws: dict[str, dict], suite: TaskSuite) -> dict:
    """lm-eval outputs -> the normalised summary 06_analysis reads; RuntimeError when a benchmark has no result."""
    read = summary_from_results(variant, raws.values(), model)
    tasks, subjects = read["tasks"], read["mmlu_subjects"]
    if "mmlu" in raws:
        if not subjects:
            raise RuntimeError(
                f"lm-eval output for MMLU has no subject results ({sorted(raws['mmlu']['results'])[:5]}...)"
            )
        tasks["mmlu"] = _mmlu_task(raws["mmlu"], suite, tasks["mmlu"], subjects)
    missing = sorted(b for b in raws if b not in tasks or tasks[b]["value"] is None)
    if missing:
        raise RuntimeError(f"lm-eval output has no result for {missing}")
    return {**read, "model_hash": mhash, "settings": settings, "tasks": {b: tasks[b] for b in raws}}


def scores_frame(summaries: dict[str, dict], cached: dict[str, dict] | None = None) -> pd.DataFrame:
    """One row per (variant, benchmark): metric, value, stderr, n (and whether it came from the cache)."""
    rows = []
    for variant, summary in summaries.items():
        for bench, t in summary["tasks"].items():
            row = {"variant": variant, "benchmark": bench, **{k: t[k] for k in ("metric", "value", "stderr", "n")}}
            if cached is not None:
                row["cached"] = cached.get(variant, {}).get(bench)
            rows.append(row)
        average = {"metric": "mean", "value": summary["average"], "stderr": None, "n": len(summary["average_over"])}
        rows.append({"variant": variant, "benchmark": "average", **average})
    columns = ["variant", "benchmark", "metric", "value", "stderr", "n"] + (["cached"] if cached is not None else [])
    return pd.DataFrame(rows, columns=columns)


def mmlu_subjects_frame(summaries: dict[str, dict]) -> pd.DataFrame:
    """One row per MMLU subject: category, questions, and each variant's accuracy (and stderr)."""
    frames = [
        pd.DataFrame.from_dict(s.get("mmlu_subjects") or {}, orient="index", columns=["category", "n", "acc", "stderr"])
        .rename(columns={"acc": v, "stderr": f"{v}_stderr"})
        .set_index(["category", "n"], append=True)
        for v, s in summaries.items()
    ]
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, axis=1).reset_index(level=["category", "n"])
    out.index.name = "subject"
    return out.sort_index()


def plot_scores(scores: pd.DataFrame, ax=None):
    """Each benchmark's value per variant, with ±1 standard error where lm-eval gives one."""
    fig, ax = new_figure(ax, (7.0, 3.8))
    data = scores[scores["benchmark"] != "average"]
    benches, variants = list(dict.fromkeys(data["benchmark"])), list(dict.fromkeys(data["variant"]))
    width = 0.8 / max(len(variants), 1)
    for k, variant in enumerate(variants):
        rows = data[data["variant"] == variant].set_index("benchmark").reindex(benches)
        xs = [i + (k - (len(variants) - 1) / 2) * width for i in range(len(benches))]
        yerr = rows["stderr"].astype(float).fillna(0)
        ax.bar(xs, rows["value"].astype(float), width, yerr=yerr, capsize=3, label=variant)
    metrics = data.groupby("benchmark", sort=False)["metric"].first().reindex(benches)
    ax.set_xticks(range(len(benches)), [f"{b}\n({m})" for b, m in zip(benches, metrics)])
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.legend(title="variant", fontsize="small")
    return fig
