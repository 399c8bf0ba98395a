"""What the stage shows and writes: the contamination table, the summary, the review frame, the figure."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import seaborn as sns

from ..artifacts import write_json, write_jsonl, write_text
from ..config import DETECTORS, DecontaminateConfig
from ..layout import CLEAN, FLAGGED_PAIRS
from ..plotting import PALETTE, new_figure, save_figure
from .common import CATEGORIES, SEVERITY


def contamination_table(pairs: pd.DataFrame, removed: set[int]) -> pd.DataFrame:
    """Training source x benchmark: rows per category (most severe per row and benchmark) and rows removed."""
    cols = ["data_source", "benchmark", *CATEGORIES, "removed"]
    if pairs.empty:
        return pd.DataFrame(columns=cols)
    worst = worst_per_row(pairs).rename(columns={"train_source": "data_source"})
    keys = [worst["data_source"], worst["benchmark"]]
    out = pd.crosstab(keys, worst["category"]).reindex(columns=list(CATEGORIES), fill_value=0)
    out["removed"] = worst["train_index"].isin(removed).groupby(keys).sum()
    return out.reset_index().rename_axis(columns=None)[cols]


def worst_per_row(pairs: pd.DataFrame) -> pd.DataFrame:
    """One pair per (training row, benchmark): its most severe category."""
    return (
        pairs.assign(sev=pairs["category"].map(SEVERITY))
        .sort_values(["sev", "train_index"], kind="stable")
        .drop_duplicates(["train_index", "benchmark"])
        .drop(columns="sev")
    )


def summarise(
    pairs: pd.DataFrame,
    rows: list[dict],
    items: list[dict],
    removed: set[int],
    cfg: DecontaminateConfig,
    cands: pd.DataFrame | None = None,
) -> dict:
    """Step: the stage's counts (decontamination_report.json; the command line prints it)."""
    by = {d: pairs[f"by_{d}"].astype(bool) for d in DETECTORS}
    below = 0  # candidates below the embedding threshold that "answer" checked
    if cands is not None and (low := cfg.answer_detector_threshold) is not None:
        below = int(cands["embedding_cosine"].between(low, cfg.similarity_threshold, "left").sum())
    by_source = pairs.drop_duplicates("train_index")["train_source"]
    by_benchmark = pairs.drop_duplicates(["benchmark", "test_id"])["benchmark"]
    return {
        "train_rows": len(rows),
        "benchmark_items": len(items),
        "flagged_pairs": len(pairs),
        "flagged_rows": int(pairs["train_index"].nunique()),
        "removed_rows": len(removed),
        "clean_rows": len(rows) - len(removed),
        "detectors": list(cfg.detectors),
        "views": list(cfg.views),
        "search_outputs": cfg.search_outputs,
        "pairs_by_detector": {
            **{d: int(v.sum()) for d, v in by.items()},
            "embedding_and_ngram": int((by["embedding"] & by["ngram"]).sum()),
            "answer_only": int((by["answer"] & ~by["embedding"] & ~by["ngram"]).sum()),
            "judge_only": int((by["judge"] & ~by["embedding"] & ~by["ngram"] & ~by["answer"]).sum()),
        },
        "pairs_by_category": {c: int((pairs["category"] == c).sum()) for c in CATEGORIES},
        "flagged_rows_by_source": by_source.value_counts().sort_index().to_dict(),
        "removed_rows_by_source": dict(sorted(collections.Counter(rows[i]["data_source"] for i in removed).items())),
        "flagged_items_by_benchmark": by_benchmark.value_counts().sort_index().to_dict(),
        "candidate_pairs": 0 if cands is None else len(cands),
        "answer_detector_candidates": below,
        "actions": dict(cfg.actions),
    }


def detector_counts(flagged: pd.DataFrame) -> pd.DataFrame:
    """Pairs flagged per detector, alone and with others (a frame of flag_pairs' verdicts)."""
    names = [d for d in DETECTORS if f"by_{d}" in flagged]
    rows = []
    for d in names:
        hit, others = flagged[f"by_{d}"], flagged[[f"by_{o}" for o in names if o != d]].any(axis=1)
        rows.append((d, int(hit.sum()), int((hit & ~others).sum()), flagged.loc[hit, "train_index"].nunique()))
    return pd.DataFrame(rows, columns=["detector", "pairs", "only_this_one", "training_rows"])


def review_frame(pairs: pd.DataFrame) -> pd.DataFrame:
    """The flagged pairs as a reviewer reads them: pair_id, both texts, category, rule, action and decision."""
    cols = (
        "pair_id category train_source train_text test_text benchmark lm_eval_task doc_id embedding_cosine "
        "ngram_overlap test_view rule action decision"
    ).split()
    sev = pairs["category"].map(SEVERITY)
    order = pairs.assign(sev=sev).sort_values(["sev", "benchmark", "train_index"], kind="stable")
    return order[cols].reset_index(drop=True)


def removals_under(pairs: pd.DataFrame, actions: dict[str, str]) -> dict:
    """What another policy would remove, from the categorised pairs alone: rows and test items touched."""
    hit = pairs[pairs["category"].map(actions) == "remove"]
    return {
        "removed_rows": int(hit["train_index"].nunique()),
        "test_items": len(hit[["benchmark", "test_id"]].drop_duplicates()),
    }


def category_counts(pairs: pd.DataFrame) -> pd.DataFrame:
    """Flagged training rows per source (rows) and category (columns), most severe category per benchmark."""
    if pairs.empty:
        return pd.DataFrame(columns=list(CATEGORIES))
    return (
        worst_per_row(pairs)
        .groupby(["train_source", "category"])
        .size()
        .unstack(fill_value=0)
        .reindex(columns=list(CATEGORIES), fill_value=0)
    )


def contamination_figure(pairs: pd.DataFrame, ax=None):
    """Flagged training rows per source and category, stacked bars; returns the figure (never saves)."""
    fig, ax = new_figure(ax, (7, 3.8))
    if pairs.empty:
        ax.text(0.5, 0.5, "no flagged pairs", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        category_counts(pairs).plot.barh(stacked=True, ax=ax, color=sns.color_palette(PALETTE, 3))
        ax.legend(title="category", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("flagged training rows (most severe category per benchmark)")
        ax.set_ylabel("")
    ax.set_title("Benchmark contamination of the training data")
    return fig


def figure_caption(pairs: pd.DataFrame) -> str:
    if pairs.empty:
        return "No training row was flagged against any benchmark."
    return "Flagged training rows per source and category.\n" + category_counts(pairs).to_string()


@dataclass
class Result:
    clean: list[dict]
    pairs: pd.DataFrame
    table: pd.DataFrame
    summary: dict
    candidates: pd.DataFrame | None = None


def save_outputs(result: Result, out: Path, fig_dir: Path, table_dir: Path | None = None) -> list[Path]:
    """Step (last): clean.jsonl, flagged_pairs.csv, contamination_table.csv, the report and the figure."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        write_jsonl(out / CLEAN[1], result.clean),
        write_text(out / FLAGGED_PAIRS[1], result.pairs.to_csv(index=False)),
        write_text(out / "contamination_table.csv", result.table.to_csv(index=False)),
        write_json(out / "decontamination_report.json", result.summary),
    ]
    if table_dir is not None:
        table_dir.mkdir(parents=True, exist_ok=True)
        paths.append(write_text(table_dir / "contamination_table.csv", result.table.to_csv(index=False)))
        md = result.table.to_markdown(index=False) if len(result.table) else "_no flagged rows_"
        paths.append(write_text(table_dir / "contamination_table.md", md + "\n"))
    fig = contamination_figure(result.pairs)
    paths += save_figure(fig, fig_dir / "02_contamination", figure_caption(result.pairs))
    return paths
