"""Training seeds (finetune.seeds): how much the merge into the base moves when only the training seed changes.

Stage 03 trains one adapter per seed on the same rows, 04 merges each into the base
(layout.seed_variants: the profile's seed is the merge itself, each other seed <merged>-seed<seed>) and 05
evaluates them on the same questions. `seed_spread_frame` gives, per benchmark and for the average, each
seed's score, their mean, sample standard deviation (between seeds), range, and the mean of the runs' own
standard errors (the sampling error of one run over the questions): a spread across seeds larger than that
error means a one-seed difference between two models can be the seed, not the method. Scores are in
percent, from the leaderboard frame.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .common import BENCHMARKS, LABELS, missing
from .tables import md_document, to_markdown, write_table

AVERAGE = "average"
SEED_COLUMNS = ["benchmark", "seeds", "mean", "sd", "min", "max", "range", "run_stderr"]


def _score(board: pd.DataFrame, variant: str, column: str) -> float | None:
    rows = board[(board["variant"] == variant) & (board["status"] == "ok")]
    if rows.empty or column not in rows.columns:
        return None
    return None if missing(value := rows.iloc[0][column]) else float(value)


def seed_spread_frame(board: pd.DataFrame, seed_variants: dict[int, str]) -> pd.DataFrame:
    """One row per benchmark (and the average) that at least two seeds' merges were scored on: SEED_COLUMNS,
    then a column per seed ("seed <s>") with its score. Empty without two evaluated seeds."""
    rows = []
    for bench in [*BENCHMARKS, AVERAGE]:
        scores = {s: _score(board, v, bench) for s, v in seed_variants.items()}
        scores = {s: x for s, x in scores.items() if x is not None}
        if len(scores) < 2:
            continue
        values = pd.Series(list(scores.values()))
        errors = [_score(board, seed_variants[s], f"{bench}_stderr") for s in scores] if bench != AVERAGE else []
        errors = [e for e in errors if e is not None]
        row = {
            "benchmark": LABELS.get(bench, bench),
            "seeds": len(scores),
            "mean": values.mean(),
            "sd": values.std(ddof=1),
            "min": values.min(),
            "max": values.max(),
            "range": values.max() - values.min(),
            "run_stderr": sum(errors) / len(errors) if errors else None,
        }
        row.update({f"seed {s}": x for s, x in scores.items()})
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=SEED_COLUMNS)
    return pd.DataFrame(rows)


def seed_lines(frame: pd.DataFrame, seed_variants: dict[int, str]) -> list[str]:
    """The summary's sentences: the spread of each benchmark across seeds against one run's own error."""
    if frame.empty:
        evaluated = ", ".join(seed_variants.values())
        return [f"fewer than two of the seed merges ({evaluated}) were evaluated: no spread across seeds"]
    lines = []
    for r in frame.itertuples(index=False):
        text = (
            f"{r.benchmark}: {r.mean:.2f} on average over {r.seeds} training seeds, sd {r.sd:.2f} "
            f"(range {r.min:.2f}-{r.max:.2f})"
        )
        if not missing(r.run_stderr):
            larger = "larger than" if r.sd > r.run_stderr else "within"
            text += (
                f"; one run's standard error over the questions is {r.run_stderr:.2f}: the seed spread is {larger} it"
            )
        lines.append(text)
    return lines


def seed_display(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame rounded to two decimals, for the notebook and the report."""
    return frame.round(2)


def write_seed_tables(frame: pd.DataFrame, lines: list[str], tables: Path) -> list[Path]:
    """seed_spread.csv and seed_spread.md (the table and its sentences)."""
    return write_table(tables, "seed_spread", frame, md_document(to_markdown(seed_display(frame)), lines=lines))
