"""Training seeds (finetune.seeds): the spread of the merge into the base across seeds, against one run's error."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .common import BENCHMARKS, LABELS, missing
from .tables import md_document, to_markdown, write_table

AVERAGE = "average"
SEED_COLUMNS = ["benchmark", "seeds", "mean", "sd", "min", "max", "range", "run_stderr"]


def seed_spread_frame(board: pd.DataFrame, seed_variants: dict[int, str]) -> pd.DataFrame:
    """One row per benchmark (and the average) that two or more seeds' merges were scored on: SEED_COLUMNS,
    then "seed <s>" per seed. Empty without two evaluated seeds."""
    ok = board[board["status"] == "ok"].drop_duplicates("variant").set_index("variant")
    rows = []
    for bench in [*BENCHMARKS, AVERAGE]:
        seeds = {s: v for s, v in seed_variants.items() if v in ok.index and not missing(ok.at[v, bench])}
        if len(seeds) < 2:
            continue
        scores = {s: float(ok.at[v, bench]) for s, v in seeds.items()}
        values = pd.Series(list(scores.values()))
        errors = [ok.at[v, f"{bench}_stderr"] for v in seeds.values()] if bench != AVERAGE else []
        errors = [float(e) for e in errors if not missing(e)]
        row = {"benchmark": LABELS.get(bench, bench), "seeds": len(scores), "mean": values.mean()}
        row.update(sd=values.std(ddof=1), min=values.min(), max=values.max(), range=values.max() - values.min())
        row["run_stderr"] = sum(errors) / len(errors) if errors else None
        rows.append(row | {f"seed {s}": x for s, x in scores.items()})
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=SEED_COLUMNS)


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
            text += f"; one run's standard error over the questions is {r.run_stderr:.2f}: "
            text += f"the seed spread is {larger} it"
        lines.append(text)
    return lines


def seed_display(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.round(2)


def write_seed_tables(frame: pd.DataFrame, lines: list[str], tables: Path) -> list[Path]:
    """seed_spread.csv and seed_spread.md (the table and `lines`)."""
    return write_table(tables, "seed_spread", frame, md_document(to_markdown(seed_display(frame)), lines=lines))
