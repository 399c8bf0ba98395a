"""Stage 01_curate: build an Open-Platypus-style dataset.

Per-source loading and formatting (sources.py), exact dedup on normalised
instruction + input (keep the longer output), then similarity exclusion with
all-MiniLM-L6-v2 at cosine >= 0.8 keeping the more verbose item of each
near-duplicate group. Which rows survive does not depend on input order.
"""
from __future__ import annotations

import collections
import hashlib
import logging
import os
import random
import re
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd

from .artifacts import StageRun, atomic_path, write_json, write_jsonl, write_text
from .config import Profile
from .embeddings import Embedder, pairs_above

log = logging.getLogger("platypus")
STAGE = "01_curate"
FIELDS = ("instruction", "input", "output", "data_source")
STEPS = ("loaded", "malformed", "filtered", "exact_dup", "near_dup", "undersampled", "oversampled", "kept")


def normalise_text(text: str) -> str:
    """Unicode NFKC, case-folded, whitespace collapsed: the key for exact dedup."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().casefold()


def dedup_key(row: dict) -> str:
    return normalise_text(row["instruction"]) + "\x1f" + normalise_text(row["input"])


def embedding_text(row: dict) -> str:
    return (row["instruction"] + " " + row["input"]).strip()


def row_digest(row: dict) -> str:
    return hashlib.sha256("\x1f".join(row[f] for f in FIELDS).encode()).hexdigest()


def verbosity_order(rows: list[dict]) -> list[int]:
    """Indices from most to least verbose (output length), ties broken by content, never by position."""
    return sorted(range(len(rows)), key=lambda i: (-len(rows[i]["output"]), row_digest(rows[i])))


def exact_dedup(rows: list[dict]) -> tuple[list[int], list[dict]]:
    """Keep, per normalised instruction+input, the row with the longest output.

    Returns (kept indices in input order, removal records).
    """
    winner: dict[str, int] = {}
    for i in verbosity_order(rows):
        winner.setdefault(dedup_key(rows[i]), i)
    kept, removed = [], []
    for i, row in enumerate(rows):
        w = winner[dedup_key(row)]
        if w == i:
            kept.append(i)
        else:
            removed.append({"index": i, "reason": "exact_duplicate", "duplicate_of": w, "similarity": 1.0})
    return kept, removed


def near_dedup(rows: list[dict], embeddings: np.ndarray, threshold: float,
               block_size: int = 2048, backend: str = "numpy") -> tuple[list[int], list[dict]]:
    """Greedy exclusion in verbosity order: a row is kept unless a more verbose kept row is
    at cosine >= threshold. Returns (kept indices in input order, removal records)."""
    neighbours: dict[int, list[tuple[int, float]]] = collections.defaultdict(list)
    for ii, jj, ss in pairs_above(embeddings, None, threshold, block_size, desc="near-dup pairs", backend=backend):
        for i, j, s in zip(ii.tolist(), jj.tolist(), ss.tolist()):
            neighbours[i].append((j, s))
            neighbours[j].append((i, s))
    kept_set: set[int] = set()
    removed = []
    for i in verbosity_order(rows):
        hits = [(j, s) for j, s in neighbours.get(i, ()) if j in kept_set]
        if hits:
            j, s = max(hits, key=lambda t: (t[1], -t[0]))
            removed.append({"index": i, "reason": "near_duplicate", "duplicate_of": j, "similarity": round(s, 6)})
        else:
            kept_set.add(i)
    removed.sort(key=lambda r: r["index"])
    return sorted(kept_set), removed


def apply_weights(rows: list[dict], indices: list[int], group_of: list[int], weights: dict[int, float],
                  seed: int) -> tuple[list[int], list[dict]]:
    """Over/undersample rows per source group, deterministically.

    `indices` are the rows kept so far (input order); group_of[i] is row i's group (its configured
    source); weights[group] its weight. A group of n rows with weight w gets round(n * w) rows: every row
    floor(w) times, plus a sample of the rest; with w < 1, a sample only. The sample is drawn from the
    group's rows in content order (row_digest) with a Random seeded by (seed, group), so it depends on
    neither input order nor other groups. Returns (the final row indices, repeats adjacent and in input
    order; records for the rows left out, reason "undersampled").
    """
    copies = {i: 1 for i in indices}
    by_group: dict[int, list[int]] = collections.defaultdict(list)
    for i in indices:
        by_group[group_of[i]].append(i)
    for group, members in by_group.items():
        w = weights.get(group, 1.0)
        if w == 1.0:
            continue
        target = int(round(len(members) * w))
        whole, rest = divmod(target, len(members))
        ordered = sorted(members, key=lambda i: row_digest(rows[i]))
        random.Random(f"{seed}:{group}").shuffle(ordered)
        chosen = set(ordered[:rest])
        for i in members:
            copies[i] = whole + (1 if i in chosen else 0)
    final = [i for i in indices for _ in range(copies[i])]
    removed = [{"index": i, "reason": "undersampled", "duplicate_of": None, "similarity": None}
               for i in indices if copies[i] == 0]
    return final, removed


LICENCES = {  # PLATYPUS.md §1
    "MATH/PRM-800K": "MIT", "MATH": "MIT", "ARB": "CC BY 4.0", "scienceqa": "CC BY-NC-SA 4.0", "scibench": "MIT",
    "theoremqa": "MIT", "reclor": "non-commercial", "tigerbot-kaggle": "Apache-2.0", "leetcode_ne": "none listed",
    "airoboros": "other", "guanaco": "Apache-2.0",
}


def _load_sources(profile: Profile, run: StageRun):
    """Load every enabled source. Returns rows, their provenance, per-data_source counters and skip reasons.

    Rows are counted under their `data_source`; rows skipped before they had one are counted
    under the source's single data_source when it has one, else under the configured source name.
    """
    from . import sources

    rows, prov = [], []
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    skip_reasons: dict[str, dict] = {}
    for config_index, src in enumerate(profile.curate.sources):
        if not src.enabled:
            continue
        try:
            src_rows, problems = sources.load_source(src, profile)
        except sources.UnknownSourceError as exc:
            log.error("%s", exc)
            counts[src.name]["malformed"] += 1
            counts[src.name]["loaded"] += 1
            skip_reasons[src.name] = {"unknown_source": 1}
            continue
        if src.name == "demo":
            from .demo_data import demo_corpus_path

            run.add_input(demo_corpus_path(profile))
        elif src.path:
            run.add_input(src.path)
        labels = collections.Counter(r["data_source"] for r in src_rows)
        label = next(iter(labels)) if len(labels) == 1 else src.name
        n_filtered = sum(v for k, v in problems.items() if k.startswith("filtered"))
        n_malformed = sum(v for k, v in problems.items() if not k.startswith("filtered"))
        if problems:
            counts[label]["loaded"] += n_filtered + n_malformed
            counts[label]["malformed"] += n_malformed
            counts[label]["filtered"] += n_filtered
            skip_reasons[label] = dict(sorted(problems.items()))
        log.info("source %s: %d rows, %d filtered, %d malformed", src.name, len(src_rows), n_filtered, n_malformed)
        for k, row in enumerate(src_rows):
            rows.append({f: row[f] for f in FIELDS})
            prov.append({"source": row["data_source"], "config_source": src.name, "source_row": k,
                         "config_index": config_index})
            counts[row["data_source"]]["loaded"] += 1
    return rows, prov, counts, skip_reasons


def hub_token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")


def run_curate(profile: Profile) -> dict:
    cfg = profile.curate
    out = profile.run_dir(STAGE)
    if cfg.push_to_hub and not (cfg.push_to_hub_repo and hub_token()):
        raise ValueError(f"{profile.source_file}: curate.push_to_hub needs curate.push_to_hub_repo and a token in "
                         "$HF_TOKEN (or turn push_to_hub off)")
    with StageRun(out, STAGE, profile.fingerprint_params(STAGE)) as run:
        with run.timed("load_s"):
            rows, prov, counts, skip_reasons = _load_sources(profile, run)
        if not rows:
            raise ValueError(f"{profile.source_file}: no rows loaded from the enabled sources {skip_reasons}")
        log.info("loaded %d rows from %d sources", len(rows), len(counts))

        removed: list[dict] = []
        with run.timed("exact_dedup_s"):
            if cfg.exact_dedup:
                kept_idx, removed_exact = exact_dedup(rows)
                removed += removed_exact
            else:
                kept_idx = list(range(len(rows)))
        log.info("exact dedup: %d rows removed", len(rows) - len(kept_idx))

        embedder = Embedder(profile.models.embedding, profile.cache_dir(), cfg.embed_batch_size)
        with run.timed("embed_s"):
            emb = embedder.encode([embedding_text(rows[i]) for i in kept_idx], desc="curate")
        with run.timed("similarity_s"):
            sub = [rows[i] for i in kept_idx]
            kept_sub, removed_near = near_dedup(sub, emb, cfg.similarity_threshold, cfg.block_size, cfg.backend)
        for r in removed_near:
            r["index"], r["duplicate_of"] = kept_idx[r["index"]], kept_idx[r["duplicate_of"]]
        removed += removed_near
        final_idx = [kept_idx[i] for i in kept_sub]
        log.info("similarity exclusion at %.2f: %d rows removed, %d kept",
                 cfg.similarity_threshold, len(removed_near), len(final_idx))
        weights = {k: src.weight for k, src in enumerate(cfg.sources)}
        final_idx, removed_weight = apply_weights(rows, final_idx, [p["config_index"] for p in prov], weights,
                                                  profile.seed)
        removed += removed_weight

        step_of = {"exact_duplicate": "exact_dup", "near_duplicate": "near_dup", "undersampled": "undersampled"}
        for r in removed:
            counts[prov[r["index"]]["source"]][step_of[r["reason"]]] += 1
        for i, n in collections.Counter(final_idx).items():
            counts[prov[i]["source"]]["kept"] += n
            counts[prov[i]["source"]]["oversampled"] += n - 1

        curated = [rows[i] for i in final_idx]

        def provenance(prefix: str, i: int | None) -> dict:
            keys = ("source", "config_source", "source_row")
            return {f"{prefix}_{k}": (None if i is None else prov[i][k]) for k in keys}

        removed_records = [{
            "reason": r["reason"], "similarity": r["similarity"], **provenance("row", r["index"]),
            "row": rows[r["index"]], **provenance("duplicate_of", r["duplicate_of"]),
            "duplicate_of": None if r["duplicate_of"] is None else rows[r["duplicate_of"]],
        } for r in sorted(removed, key=lambda r: r["index"])]

        report = {
            "per_source": {s: {step: int(c.get(step, 0)) for step in STEPS} for s, c in counts.items()},
            "skipped_by_reason": skip_reasons,
            "totals": {step: int(sum(c.get(step, 0) for c in counts.values())) for step in STEPS},
            "similarity_threshold": cfg.similarity_threshold,
            "embedding_model": profile.models.embedding,
            "embedding_cache": embedder.stats,
            "similarity_backend": cfg.backend,
            "weights": {src.name if src.path is None else f"{src.name}:{Path(src.path).name}": src.weight
                        for src in cfg.sources if src.enabled and src.weight != 1.0},
        }
        paths = _write_outputs(profile, curated, removed_records, report)
        for p in paths:
            run.add_output(p)
        run.metrics.update(report["totals"])
        if cfg.push_to_hub:
            with run.timed("push_to_hub_s"):
                run.metrics["pushed_to"] = push_to_hub(curated, cfg.push_to_hub_repo, cfg.push_to_hub_private)
    return report


def _write_outputs(profile: Profile, curated: list[dict], removed: list[dict], report: dict) -> list[Path]:
    out = profile.run_dir(STAGE)
    paths = [write_jsonl(out / "curated.jsonl", curated), write_jsonl(out / "removed.jsonl", removed),
             write_json(out / "curation_report.json", report)]
    df = pd.DataFrame(curated, columns=list(FIELDS))
    with atomic_path(out / "curated.parquet") as tmp:
        df.to_parquet(tmp, index=False)
    paths.append(out / "curated.parquet")
    import datasets

    with atomic_path(out / "hf_dataset") as tmp:
        datasets.Dataset.from_pandas(df, preserve_index=False).save_to_disk(str(tmp))
    # not hashed: save_to_disk's state file holds a random fingerprint, the same rows as curated.jsonl
    table = composition_table(report)
    tables = profile.report_dir("tables")
    tables.mkdir(parents=True, exist_ok=True)
    write_text(tables / "composition.csv", table.to_csv(index=False))
    write_text(tables / "composition.md", table.to_markdown(index=False) + "\n")
    paths += [tables / "composition.csv"]
    write_text(out / "README.md", dataset_card(profile, report, table))
    paths.append(out / "README.md")
    paths += composition_figure(table, profile.report_dir("figures"))
    return paths


def push_to_hub(curated: list[dict], repo_id: str, private: bool = True) -> str:
    """Upload the curated rows as a hub dataset (split "train"); the token comes from $HF_TOKEN."""
    import datasets

    token = hub_token()
    if not token:
        raise ValueError("push_to_hub: no token in $HF_TOKEN")
    ds = datasets.Dataset.from_pandas(pd.DataFrame(curated, columns=list(FIELDS)), preserve_index=False)
    log.info("pushing %d rows to the hub dataset %s (private=%s)", len(ds), repo_id, private)
    ds.push_to_hub(repo_id, token=token, private=private)
    return repo_id


def composition_table(report: dict) -> pd.DataFrame:
    rows = [{"data_source": s, **c} for s, c in sorted(report["per_source"].items())]
    df = pd.DataFrame(rows, columns=["data_source", *STEPS])
    total = df["kept"].sum()
    df["share_%"] = (100 * df["kept"] / total).round(1) if total else 0.0
    return df


def composition_figure(table: pd.DataFrame, fig_dir: Path) -> list[Path]:
    from .plotting import save_figure, style

    plt, sns = style()
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(table) + 1.5))
    long = table.melt(id_vars="data_source", value_vars=["kept", "exact_dup", "near_dup", "filtered", "malformed"],
                      var_name="outcome", value_name="rows")
    sns.barplot(data=long, y="data_source", x="rows", hue="outcome", ax=ax)
    ax.legend(title="outcome", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_xlabel("rows")
    ax.set_ylabel("")
    ax.set_title("Curated dataset: rows per source and outcome")
    caption = "Rows per source by curation outcome.\n" + table.to_string(index=False)
    return save_figure(fig, fig_dir / "01_composition", caption)


def dataset_card(profile: Profile, report: dict, table: pd.DataFrame) -> str:
    lic = "\n".join(f"| {s} | {LICENCES.get(s, 'see the source')} |" for s in sorted(report["per_source"]))
    return f"""# Curated dataset — profile `{profile.name}`

Built by `platypus run {Path(profile.source_file or 'params/<profile>.yaml').name} --only 01` (stage 01_curate).
Schema: `instruction`, `input`, `output`, `data_source` (strings), as Open-Platypus.

## Composition
{table.to_markdown(index=False)}

## Licences
| data_source | licence |
|---|---|
{lic}

## Parameters
- exact dedup on normalised instruction + input, keeping the longer output: {profile.curate.exact_dedup}
- similarity exclusion: `{profile.models.embedding}`, cosine >= {profile.curate.similarity_threshold},
  keeping the more verbose item (longer output) of each near-duplicate group; order independent
  (similarity backend: {profile.curate.backend})
- per-source weights applied after dedup (seeded sample / repeats): {report.get("weights") or "none (all 1)"}
- seed: {profile.seed}

## Rebuild
`platypus run {profile.source_file} --only 01 --force` gives a byte-identical `curated.jsonl`
(its sha256 is in `manifest.json`). Every removed row is in `removed.jsonl` with its reason and the row it duplicated.
"""
