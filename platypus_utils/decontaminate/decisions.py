"""A reviewer's decisions on flagged pairs (`decontaminate.decisions`), applied on the next run.

A CSV (columns pair_id, decision; others ignored) or YAML mapping pair_id -> keep | remove. A decision replaces
the pair's `action` (shown in `decision`); decisions naming no flagged pair are reported, never dropped.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd
import yaml

from ..artifacts import sha256_text
from ..config import DecontaminateConfig
from ..text import embedding_text

DECISIONS = ("keep", "remove")


def pair_id(row: dict, item: dict) -> str:
    """sha256 of the row's prompt and output (12 hex digits) and the item id: "3f2a9c01b7de:mmlu/.../test/35"."""
    return f"{sha256_text(embedding_text(row) + chr(10) + row['output'])[:12]}:{item.get('item_id', '')}"


def _checked(path: Path, where: str, pid, decision) -> tuple[str, str]:
    if not isinstance(pid, str) or not pid.strip():
        raise ValueError(f"decisions file {path}: {where}: pair_id must be a flagged_pairs.csv pair_id, got {pid!r}")
    value = str(decision).strip().lower() if decision is not None else ""
    if value not in DECISIONS:
        raise ValueError(f"decisions file {path}: {where}: decision must be keep or remove, got {decision!r}")
    return pid.strip(), value


def read_decisions(path: str | Path) -> dict[str, str]:
    """pair_id -> "keep" | "remove"; ValueError naming the file and line or key, also for a pair decided both ways."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"decisions file {path}: not found (decontaminate.decisions)")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"decisions file {path}: expected a mapping pair_id -> keep | remove")
        entries = [_checked(path, f"key {k!r}", k, v) for k, v in data.items()]
    else:
        reader = csv.DictReader(io.StringIO(text))
        missing = {"pair_id", "decision"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"decisions file {path}: missing column(s) {sorted(missing)}; expected pair_id,decision")
        entries = [_checked(path, f"line {n}", r["pair_id"], r["decision"]) for n, r in enumerate(reader, 2)]
    out: dict[str, str] = {}
    for pid, value in entries:
        if out.get(pid, value) != value:
            raise ValueError(f"decisions file {path}: pair {pid} is decided both keep and remove")
        out[pid] = value
    return out


def apply_decisions(pairs: pd.DataFrame, decisions: dict[str, str]) -> tuple[pd.DataFrame, dict]:
    """The pairs with each decision in `decision` and `action`, and counts of decisions read, applied, overruled."""
    out = pairs.copy()
    out["decision"] = given = out["pair_id"].map(decisions).fillna("") if len(out) else pd.Series(dtype=str)
    changed = (given != "") & (given != out["action"])
    out.loc[given != "", "action"] = given[given != ""]
    matched = set(out["pair_id"]) & set(decisions)
    return out, {
        "decisions": len(decisions),
        "decisions_applied": len(matched),
        "decisions_overruled": int(changed.sum()),
        "overruled_pairs": sorted(out.loc[changed, "pair_id"].tolist()),
        "unmatched_decisions": sorted(set(decisions) - matched),
    }


def decide(pairs: pd.DataFrame, cfg: DecontaminateConfig) -> tuple[pd.DataFrame, dict]:
    """Step: the profile's decisions file applied, or the pairs as they are and {} without one."""
    if not cfg.decisions:
        return pairs, {}
    return apply_decisions(pairs, read_decisions(cfg.decisions))
