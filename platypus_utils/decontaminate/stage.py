"""Stage 02 as steps, and the standalone command (`platypus decontaminate`): load, detect, save."""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..artifacts import StageRun, refuse_edited_outputs, timed
from ..config import DecontaminateConfig, Profile
from ..embeddings import Embedder
from ..layout import CLEAN, CURATED, FLAGGED_PAIRS, artifact
from ..models import default_cache_dir
from ..plotting import FORMATS
from .common import PAIR_COLUMNS, STAGE
from .decisions import decide
from .detectors import candidate_pairs, flag_pairs
from .embed import embed_texts, uses_embeddings
from .index import build_index, load_index
from .inputs import load_benchmark_items, read_training_rows
from .report import Result, contamination_table, save_outputs, summarise
from .rules import categorise_pairs, choose_removals

log = logging.getLogger("platypus")


class DecontaminateError(RuntimeError):
    """The stage refuses to go on; the message says why and what to do."""


@dataclass
class Inputs:
    """What the stage reads: 01's rows (odd ones counted), the benchmark items, and the paths to hash."""

    rows: list[dict]
    skipped: dict
    items: list[dict]
    paths: list[Path]

    def per_source(self) -> pd.Series:
        return pd.Series(collections.Counter(r["data_source"] for r in self.rows), name="rows").sort_index()

    def per_benchmark(self) -> pd.Series:
        return pd.Series(collections.Counter(it["benchmark"] for it in self.items), name="test items").sort_index()


AS_RELEASED_REASON = "skipped: rows as released, already decontaminated by the authors"  # report, manifest


def as_released(profile: Profile) -> bool:
    """training_data: as_released: the rows pass through with no leak detection."""
    return profile.training_data == "as_released"


def passed_through(rows: list[dict], cfg: DecontaminateConfig) -> Result:
    """The stage's result when no detection runs: every row kept, no pair, the reason in the summary."""
    pairs = pd.DataFrame(columns=PAIR_COLUMNS)
    summary = summarise(pairs, rows, [], set(), cfg)
    summary.update(detectors=[], views=[], leak_detection=AS_RELEASED_REASON, training_data="as_released")
    return Result(list(rows), pairs, contamination_table(pairs, set()), summary)


def load_inputs(profile: Profile) -> Inputs:
    """Step 1: 01_curate's curated.jsonl and the profile's benchmark test items (none when as released)."""
    train_path = artifact(profile, CURATED)
    rows, skipped = read_training_rows(train_path)
    items, bdir = ([], None) if as_released(profile) else load_benchmark_items(profile.decontaminate, profile)
    return Inputs(rows, dict(sorted(skipped.items())), items, [train_path] + ([bdir] if bdir is not None else []))


def embedder_for(profile: Profile) -> Embedder | None:
    """The profile's embedding model through the shared cache; None when no selected detector reads cosines."""
    if not uses_embeddings(profile.decontaminate):
        return None
    return Embedder(profile.models.embedding, profile.cache_dir(), backend=profile.models.embedding_backend)


def row_pairs(rows: list[dict], items: list[dict], cfg: DecontaminateConfig, embedder, timings: dict, index):
    """Steps 2-4, per training row (engine: ray runs them per block): (candidate pairs, categorised flagged pairs)."""
    with timed(timings, "embed_s"):
        emb = embed_texts(rows, items, cfg, embedder, index)
    with timed(timings, "candidates_s"):
        cands = candidate_pairs(rows, emb, cfg)
    with timed(timings, "categorise_s"):
        pairs = categorise_pairs(flag_pairs(cands, rows, items, cfg, embedder=embedder), rows, items, cfg)
    return cands, pairs


def detect(
    rows: list[dict],
    items: list[dict],
    cfg: DecontaminateConfig,
    embedder=None,
    timings: dict | None = None,
    index=None,
) -> Result:
    """Steps 2-5: row_pairs (locally or on Ray), a reviewer's decisions, removals and summary."""
    if not rows:
        raise ValueError("empty training set: nothing to check")
    if not items:
        raise ValueError("no benchmark items: nothing to check against")
    steps = (rows, items, cfg, embedder, {} if timings is None else timings, index)
    if cfg.engine == "ray":
        from .engine_ray import pairs_on_ray

        cands, pairs = pairs_on_ray(*steps, local=row_pairs)
    else:
        cands, pairs = row_pairs(*steps)
    pairs, decided = decide(pairs, cfg)
    clean, removed = choose_removals(pairs, rows)
    summary = {**summarise(pairs, rows, items, removed, cfg, cands), **decided}
    return Result(clean, pairs, contamination_table(pairs, removed), summary, cands)


def save(
    profile: Profile, inputs: Inputs, result: Result, timings: dict | None = None, force: bool = False
) -> list[Path]:
    """Step 6: the artifacts, figure, tables and manifest.json; DecontaminateError instead of overwriting outputs
    edited by hand since the last run (a reviewed flagged_pairs.csv) unless `force`."""
    out = profile.run_dir(STAGE)
    refuse_edited_outputs(out, profile.source_file, force, DecontaminateError)
    result.summary["skipped_train_rows"] = dict(inputs.skipped)
    with StageRun(out, STAGE, profile.fingerprint_params(STAGE)) as run:
        run.timings.update(timings or {})
        for path in inputs.paths:
            run.add_input(path)
        with run.timed("save_s"):
            paths = save_outputs(result, out, profile.report_dir("figures"), profile.report_dir("tables"))
        for p in paths:
            run.add_output(p)
        run.metrics.update({k: v for k, v in result.summary.items() if isinstance(v, (int, float))})
        run.metrics["training_data"] = profile.training_data
        if profile.decontaminate.decisions and "decisions" in result.summary:  # the reviewer's file, hashed
            run.add_input(profile.decontaminate.decisions)
            run.metrics.update({k: result.summary[k] for k in ("overruled_pairs", "unmatched_decisions")})
        if "leak_detection" in result.summary:
            run.metrics["leak_detection"] = result.summary["leak_detection"]
    log.info(
        "decontamination: %d pairs flagged, %d rows removed, %d clean rows",
        result.summary["flagged_pairs"],
        result.summary["removed_rows"],
        len(result.clean),
    )
    return paths


def run_decontaminate(profile: Profile, force: bool = False) -> dict:
    """The whole stage (load, detect, save) for scripts and tests; returns the summary."""
    timings: dict = {}
    with timed(timings, "load_s"):
        inputs = load_inputs(profile)
    if as_released(profile):
        log.info("leak detection %s (training_data: as_released): every row of 01 is kept", AS_RELEASED_REASON)
        result = passed_through(inputs.rows, profile.decontaminate)
    else:
        result = detect(inputs.rows, inputs.items, profile.decontaminate, embedder_for(profile), timings)
    save(profile, inputs, result, timings, force=force)
    return result.summary


CHECK_FILE_OUTPUTS = (  # what check_file writes into `out` (report.save_outputs)
    *(CLEAN[1], FLAGGED_PAIRS[1], "contamination_table.csv", "decontamination_report.json"),
    *(f"02_contamination.{ext}" for ext in (*FORMATS, "txt")),
)


def check_out_apart(train_file: str | Path, out: str | Path) -> None:
    """ValueError unless `out` is a folder (or not there yet) and no file written into it is the input."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file, not a folder; give the folder the outputs go into")
    if any(p.exists() and not p.is_dir() for p in out.parents):
        raise ValueError(f"--out {out}: a folder on its path is a file; give the folder the outputs go into")
    train = Path(train_file).resolve()
    if clash := [name for name in CHECK_FILE_OUTPUTS if (out / name).resolve() == train]:
        raise ValueError(
            f"--out {out}: would write {clash[0]} over the input {train_file}; choose another output folder"
        )


def _benchmark_side(benchmarks_dir: str, cfg: DecontaminateConfig | None, embedding_model: str, cache_dir):
    """The standalone commands' settings (`cfg` with the benchmarks' folder), test items and embedder."""
    cfg = (cfg or DecontaminateConfig()).model_copy(update={"benchmarks_dir": str(benchmarks_dir)})
    items, _ = load_benchmark_items(cfg)
    cache = Path(cache_dir or default_cache_dir()).expanduser().resolve()
    return cfg, items, Embedder(embedding_model, cache) if uses_embeddings(cfg) else None


def check_file(
    train_file: str | Path,
    benchmarks_dir: str,
    out: str | Path,
    cfg: DecontaminateConfig | None = None,
    embedding_model: str = "embedded:all-minilm-l6-v2",
    cache_dir: str | Path | None = None,
    index: str | Path | None = None,
) -> dict:
    """`platypus decontaminate`: check a dataset against benchmarks, writing CHECK_FILE_OUTPUTS into `out`
    (`cache_dir`: default $PLATYPUS_CACHE or ~/.cache/platypus; `index`: a benchmark index file)."""
    check_out_apart(train_file, out)
    rows, skipped = read_training_rows(train_file)
    cfg, items, embedder = _benchmark_side(benchmarks_dir, cfg, embedding_model, cache_dir)
    loaded = load_index(index, items, cfg, embedder) if index is not None else None
    result = detect(rows, items, cfg, embedder, index=loaded)
    result.summary["skipped_train_rows"] = dict(sorted(skipped.items()))
    save_outputs(result, Path(out), Path(out))
    return result.summary


def build_benchmark_index(
    benchmarks_dir: str,
    out: str | Path,
    cfg: DecontaminateConfig | None = None,
    embedding_model: str = "embedded:all-minilm-l6-v2",
    cache_dir: str | Path | None = None,
) -> dict:
    """`platypus decontaminate --build-index OUT`: the benchmark side in one file (check_file(index=OUT)); its meta."""
    if Path(out).is_dir():
        raise ValueError(f"--build-index {out}: is a folder; give the file to write")
    cfg, items, embedder = _benchmark_side(benchmarks_dir, cfg, embedding_model, cache_dir)
    return build_index(items, cfg, embedder, out)
