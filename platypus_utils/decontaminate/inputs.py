"""The stage's inputs: the benchmark test items of a profile, and training rows in the Open-Platypus schema."""

from __future__ import annotations

import logging
from pathlib import Path

from ..artifacts import SkippedRows, iter_json_list, iter_jsonl
from ..benchmarks import load_benchmark
from ..config import DecontaminateConfig, Profile
from ..demo_data import demo_benchmarks_dir
from ..sources import validate_rows

log = logging.getLogger("platypus")


def load_benchmark_items(cfg: DecontaminateConfig, profile: Profile | None = None) -> tuple[list[dict], Path | None]:
    """Step: the test items of cfg.benchmarks and their folder (None for "hub")."""
    bdir = str(demo_benchmarks_dir(profile)) if cfg.benchmarks_dir == "demo" else cfg.benchmarks_dir
    items = [it for name in cfg.benchmarks for it in load_benchmark(name, bdir, limit=cfg.limit_per_benchmark)]
    return items, (None if bdir == "hub" else Path(bdir))


def read_training_rows(path: str | Path) -> tuple[list[dict], SkippedRows]:
    """Step: rows in the Open-Platypus schema (.jsonl or .json list) and those skipped by reason; errors when none."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: training file not found")
    skipped = SkippedRows()
    read = iter_json_list if path.suffix == ".json" else iter_jsonl
    records = [value for _, value in read(path, skipped)]
    records = [{**r, "input": r.get("input") or ""} if isinstance(r, dict) else r for r in records]
    rows = validate_rows(records, path.stem, skipped)
    if not rows:
        detail = f"all {sum(skipped.values())} rows unusable: {dict(sorted(skipped.items()))}" if skipped else "no rows"
        raise ValueError(f"{path}: empty training set ({detail})")
    if skipped:
        log.warning("%s: skipped %d rows %s", path, sum(skipped.values()), dict(sorted(skipped.items())))
    return rows, skipped
