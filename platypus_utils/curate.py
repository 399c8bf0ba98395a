"""Stage 01_curate: build an Open-Platypus-style dataset, as steps that return data.

    loaded = load_sources(profile)                              # rows + provenance + counts per source
    kept, removed_exact = exact_dedup(loaded.rows)              # normalised instruction + input
    emb, cache = embed(profile, loaded.rows, kept)              # all-MiniLM-L6-v2, cached
    pairs = near_duplicate_pairs(loaded.rows, emb, kept, 0.7)   # frame: i, j, score, both texts
    final, removed_near = choose_kept(loaded.rows, pairs, 0.8, kept)  # pure: try any threshold >= 0.7
    curation = assemble(profile, loaded, removed_exact, final, removed_near, cache)
    save(profile, loaded, curation)                             # artifacts + manifest

`run_curate(profile)` is that composition. With `training_data: as_released` every loaded row is
kept (no dedup, no embedding). Which rows survive never depends on input order (ties broken by
content); row indices (`i`, `j`, `index`, `duplicate_of`) point into `loaded.rows`.
"""

from __future__ import annotations

import collections
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from . import sources
from .artifacts import StageRun, atomic_path, refuse_edited_outputs, timed, write_json, write_jsonl, write_text
from .config import Profile
from .demo_data import demo_corpus_path
from .embeddings import Embedder, pairs_above
from .plotting import new_figure, save_figure
from .refs import split_revision
from .sources import DEFAULT_HUB_ID
from .text import FIELDS, dedup_key, embedding_text, row_digest

log = logging.getLogger("platypus")
STAGE = "01_curate"
STEPS = ("loaded", "malformed", "filtered", "exact_dup", "near_dup", "undersampled", "oversampled", "kept")
EXPLORE_FLOOR = 0.7  # the notebook's pairs floor: the authors' code used 0.7, the paper 0.8


class CurateError(ValueError):
    """Stage 01 cannot go on; the message names the profile key or the file."""


def as_released(profile: Profile) -> bool:
    """training_data: as_released: the rows pass through as released (no dedup, no near-dup pass)."""
    return profile.training_data == "as_released"


def as_released_note(rows: int, removed: int = 0) -> str:
    return f"as released: {rows:,} rows, {removed:,} removed, near-dup pass not run"


def warn_if_not_open_platypus(profile: Profile) -> None:
    others = [
        src.hub_id or src.name
        for src in profile.curate.sources
        if src.enabled and not (src.name == "hub" and split_revision(src.hub_id or DEFAULT_HUB_ID)[0] == DEFAULT_HUB_ID)
    ]
    if others:
        log.warning(
            f"training_data: as_released passes these sources through without dedup too: {', '.join(others)} (as "
            f"released means {DEFAULT_HUB_ID} as the authors published it)"
        )


@dataclass
class Loaded:
    """Every row loaded from the enabled sources, in source order, with where it came from."""

    rows: list[dict]
    provenance: list[dict]  # per row: source (its data_source), config_source, source_row, config_index
    counts: dict[str, collections.Counter]  # per data_source: loaded, malformed, filtered
    skip_reasons: dict[str, dict]  # per data_source: rows left out by reason
    inputs: list[Path] = field(default_factory=list)  # files read: hashed into the manifest

    def frame(self) -> pd.DataFrame:
        """One line per row: the four fields and its provenance."""
        prov = pd.DataFrame(self.provenance, columns=["config_source", "source_row"])
        return pd.concat([pd.DataFrame(self.rows, columns=list(FIELDS)), prov], axis=1)

    def per_source(self) -> pd.DataFrame:
        names, steps = sorted(self.counts), ["loaded", "malformed", "filtered"]
        out = pd.DataFrame(
            [[self.counts[s][k] for k in steps] for s in names], pd.Index(names, name="data_source"), steps
        )
        out = out.rename(columns={"loaded": "read"})
        out["rows"] = out["read"] - out["malformed"] - out["filtered"]
        return out


def load_sources(profile: Profile) -> Loaded:
    """Every enabled source's rows, counted per data_source; an unknown source is counted and logged."""
    loaded = Loaded([], [], collections.defaultdict(collections.Counter), {})
    for config_index, src in enumerate(profile.curate.sources):
        if not src.enabled:
            continue
        try:
            src_rows, problems = sources.load_source(src, profile)
        except sources.UnknownSourceError as exc:
            log.error("%s", exc)
            loaded.counts[src.name].update(malformed=1, loaded=1)
            loaded.skip_reasons[src.name] = {"unknown_source": 1}
            continue
        if src.name == "demo":
            loaded.inputs.append(demo_corpus_path(profile))
        elif src.path:
            loaded.inputs.append(Path(src.path))
        if problems:  # under the source's single data_source, else its configured name
            labels = {r["data_source"] for r in src_rows}
            label = labels.pop() if len(labels) == 1 else src.name
            n_filtered = sum(v for k, v in problems.items() if k.startswith("filtered"))
            n_read = sum(problems.values())
            loaded.counts[label].update(loaded=n_read, malformed=n_read - n_filtered, filtered=n_filtered)
            loaded.skip_reasons[label] = dict(sorted(problems.items()))
        loaded.rows += src_rows
        for k, row in enumerate(src_rows):
            loaded.provenance.append(
                {"source": row["data_source"], "config_source": src.name, "source_row": k, "config_index": config_index}
            )
            loaded.counts[row["data_source"]]["loaded"] += 1
    if not loaded.rows:
        raise CurateError(
            f"{profile.source_file}: no rows loaded from the enabled sources (curate.sources): {loaded.skip_reasons}"
        )
    log.info("loaded %d rows from %d sources", len(loaded.rows), len(loaded.counts))
    return loaded


def verbosity_order(rows: list[dict], indices=None) -> list[int]:
    """Indices (all, or `indices`) from most to least verbose (output length), ties by content."""
    indices = range(len(rows)) if indices is None else indices
    return sorted(indices, key=lambda i: (-len(rows[i]["output"]), row_digest(rows[i])))


def exact_dedup(rows: list[dict]) -> tuple[list[int], list[dict]]:
    """Keep, per normalised instruction+input, the row with the longest output: (kept indices, removal records)."""
    keys = [dedup_key(row) for row in rows]  # normalising is the slow part: once per row
    winner: dict[str, int] = {}
    for i in verbosity_order(rows):
        winner.setdefault(keys[i], i)
    removed = [
        {"index": i, "reason": "exact_duplicate", "duplicate_of": winner[k], "similarity": 1.0}
        for i, k in enumerate(keys)
        if winner[k] != i
    ]
    return [i for i, k in enumerate(keys) if winner[k] == i], removed


def removed_frame(rows: list[dict], removed: list[dict]) -> pd.DataFrame:
    """Removal records with the removed row and the row it duplicated side by side."""
    out = pd.DataFrame(removed, columns=["index", "reason", "similarity", "duplicate_of"])
    for col, key in (("removed", "index"), ("kept", "duplicate_of")):
        out[f"{col}_text"] = [None if pd.isna(i) else embedding_text(rows[int(i)]) for i in out[key]]
        out[f"{col}_output_chars"] = [None if pd.isna(i) else len(rows[int(i)]["output"]) for i in out[key]]
    return out


def embed(profile: Profile, rows: list[dict], indices: list[int]) -> tuple[np.ndarray, dict]:
    """L2-normalised embeddings of rows[indices] (cached) and the cache counts {"cached", "encoded"}."""
    models = profile.models
    embedder = Embedder(
        models.embedding, profile.cache_dir(), profile.curate.embed_batch_size, backend=models.embedding_backend
    )
    emb = embedder.encode([embedding_text(rows[i]) for i in indices], desc="curate")
    return emb, dict(embedder.stats)


PAIR_COLUMNS = ["i", "j", "score", "source_i", "source_j", "text_i", "text_j", "output_chars_i", "output_chars_j"]


def empty_pairs() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=np.float32 if c == "score" else object) for c in PAIR_COLUMNS})


def near_duplicate_pairs(
    rows: list[dict], emb: np.ndarray, indices: list[int], floor: float, block_size: int = 2048, backend: str = "numpy"
) -> pd.DataFrame:
    """Every pair of rows[indices] at cosine >= floor (emb[k] embeds rows[indices[k]]), highest score first."""
    found = [(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))]
    found += pairs_above(emb, None, floor, block_size, desc="near-dup pairs", backend=backend)
    ii, jj, ss = (np.concatenate(col) for col in zip(*found))
    idx = np.asarray(indices, dtype=np.int64)
    i, j = np.minimum(idx[ii], idx[jj]), np.maximum(idx[ii], idx[jj])
    pairs = pd.DataFrame({"i": i, "j": j, "score": ss.astype(np.float32)})
    texts = {k: embedding_text(rows[k]) for k in set(i.tolist()) | set(j.tolist())}  # one string per row, shared
    for side in ("i", "j"):
        pairs[f"source_{side}"] = [rows[k]["data_source"] for k in pairs[side]]
        pairs[f"text_{side}"] = [texts[k] for k in pairs[side]]
        pairs[f"output_chars_{side}"] = [len(rows[k]["output"]) for k in pairs[side]]
    pairs = pairs.sort_values(["score", "i", "j"], ascending=[False, True, True], kind="stable")
    return pairs.reset_index(drop=True)[PAIR_COLUMNS]


def choose_kept(
    rows: list[dict], pairs: pd.DataFrame, threshold: float, indices: list[int] | None = None
) -> tuple[list[int], list[dict]]:
    """Greedy exclusion in verbosity order: a row is kept unless a more verbose kept row is at cosine >=
    threshold; `pairs` must come from a floor <= threshold. Returns (kept indices, removal records)."""
    indices = list(range(len(rows))) if indices is None else list(indices)
    hit = pairs[pairs["score"].to_numpy(np.float32) >= np.float32(threshold)]  # as pairs_above compares
    neighbours: dict[int, list[tuple[int, float]]] = collections.defaultdict(list)
    for i, j, s in zip(hit["i"].tolist(), hit["j"].tolist(), hit["score"].tolist()):
        neighbours[i].append((j, s))
        neighbours[j].append((i, s))
    kept: set[int] = set()
    removed = []
    for i in verbosity_order(rows, indices):
        hits = [(j, s) for j, s in neighbours.get(i, ()) if j in kept]
        if hits:
            j, s = max(hits, key=lambda t: (t[1], -t[0]))
            removed.append({"index": i, "reason": "near_duplicate", "duplicate_of": j, "similarity": round(s, 6)})
        else:
            kept.add(i)
    removed.sort(key=lambda r: r["index"])
    return sorted(kept), removed


def near_dedup(
    rows: list[dict], embeddings: np.ndarray, threshold: float, block_size: int = 2048, backend: str = "numpy"
) -> tuple[list[int], list[dict]]:
    everything = list(range(len(rows)))
    pairs = near_duplicate_pairs(rows, embeddings, everything, threshold, block_size, backend)
    return choose_kept(rows, pairs, threshold, everything)


def similarity_distribution(pairs: pd.DataFrame, threshold: float, width: float = 0.025) -> pd.DataFrame:
    """Pairs per similarity bin of `width` from the lowest score to 1, and whether it is at or above the threshold."""
    if not len(pairs):
        return pd.DataFrame(columns=["bin_from", "bin_to", "pairs", "at_or_above_threshold"])
    lo = np.floor(float(pairs["score"].min()) / width) * width
    edges = np.round(np.arange(lo, 1.0 + width, width), 6)
    counts, _ = np.histogram(pairs["score"].clip(upper=1.0), bins=edges)
    start, end = edges[:-1], edges[1:]
    return pd.DataFrame(
        {"bin_from": start, "bin_to": end, "pairs": counts, "at_or_above_threshold": start >= threshold - 1e-9}
    )


def threshold_effects(
    rows: list[dict], pairs: pd.DataFrame, indices: list[int], thresholds, reference: float
) -> pd.DataFrame:
    """What each threshold would remove, from the pairs alone, against `reference`."""
    chosen = {t: choose_kept(rows, pairs, t, indices) for t in sorted(set(thresholds) | {reference})}
    scores = pairs["score"].to_numpy(np.float32)
    return pd.DataFrame(
        {
            "threshold": t,
            "pairs": int((scores >= np.float32(t)).sum()),
            "rows_removed": len(removed),
            "rows_kept": len(kept),
            "vs_reference": len(removed) - len(chosen[reference][1]),
            "reference": t == reference,
        }
        for t, (kept, removed) in chosen.items()
    )


def removed_at_only(
    rows: list[dict], pairs: pd.DataFrame, indices: list[int], threshold: float, reference: float
) -> pd.DataFrame:
    """Rows `threshold` removes that `reference` keeps, beside the row each would duplicate."""
    at_ref = {r["index"] for r in choose_kept(rows, pairs, reference, indices)[1]}
    extra = [r for r in choose_kept(rows, pairs, threshold, indices)[1] if r["index"] not in at_ref]
    return removed_frame(rows, extra)


def plot_similarity(pairs: pd.DataFrame, threshold: float, others=(), ax=None, width: float = 0.01):
    """Histogram of near-duplicate pair scores with the threshold (solid) and others (dashed)."""
    fig, ax = new_figure(ax, (6.5, 3.5))
    lo = float(pairs["score"].min()) if len(pairs) else threshold
    bins = np.arange(np.floor(lo / width) * width, 1.0 + width, width)
    ax.hist(pairs["score"].clip(upper=1.0), bins=bins, color="0.55")
    ax.axvline(threshold, color="C3", lw=2, label=f"threshold {threshold:g}")
    for k, t in enumerate(others):
        ax.axvline(t, color=f"C{k}", lw=1.2, ls="--", label=f"{t:g}")
    ax.set_xlabel("cosine similarity of the pair")
    ax.set_ylabel("pairs")
    n_at = int((pairs["score"].to_numpy(np.float32) >= np.float32(threshold)).sum())
    ax.set_title(f"{len(pairs)} near-duplicate pairs, {n_at} at or above {threshold:g}")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(frameon=False, fontsize="small")
    return fig


@dataclass
class Curation:
    curated: list[dict]
    removed: list[dict]  # removed.jsonl records: reason, similarity, both rows and their provenance
    report: dict  # curation_report.json


def assemble(
    profile: Profile,
    loaded: Loaded,
    removed_exact: list[dict],
    kept: list[int],
    removed_near: list[dict],
    embedding_cache: dict | None = None,
) -> Curation:
    """Apply the source weights, count every row per source and step, build the removal records and report."""
    cfg, rows, prov = profile.curate, loaded.rows, loaded.provenance
    weights = {k: src.weight for k, src in enumerate(cfg.sources)}
    final, removed_weight = apply_weights(rows, kept, [p["config_index"] for p in prov], weights, profile.seed)
    removed = removed_exact + removed_near + removed_weight
    counts = collections.defaultdict(collections.Counter, {s: collections.Counter(c) for s, c in loaded.counts.items()})
    step_of = {"exact_duplicate": "exact_dup", "near_duplicate": "near_dup", "undersampled": "undersampled"}
    for r in removed:
        counts[prov[r["index"]]["source"]][step_of[r["reason"]]] += 1
    for i, n in collections.Counter(final).items():
        counts[prov[i]["source"]]["kept"] += n
        counts[prov[i]["source"]]["oversampled"] += n - 1

    def provenance(prefix: str, i: int | None) -> dict:
        return {f"{prefix}_{k}": (None if i is None else prov[i][k]) for k in ("source", "config_source", "source_row")}

    records = [
        {
            "reason": r["reason"],
            "similarity": r["similarity"],
            **provenance("row", r["index"]),
            "row": rows[r["index"]],
            **provenance("duplicate_of", r["duplicate_of"]),
            "duplicate_of": None if r["duplicate_of"] is None else rows[r["duplicate_of"]],
        }
        for r in sorted(removed, key=lambda r: r["index"])
    ]
    report = {
        "training_data": profile.training_data,
        "per_source": {s: {step: int(c.get(step, 0)) for step in STEPS} for s, c in counts.items()},
        "skipped_by_reason": loaded.skip_reasons,
        "totals": {step: int(sum(c.get(step, 0) for c in counts.values())) for step in STEPS},
        "similarity_threshold": cfg.similarity_threshold,
        "embedding_model": profile.models.embedding,
        "embedding_cache": embedding_cache or {},
        "similarity_backend": cfg.backend,
        "weights": {
            src.name if src.path is None else f"{src.name}:{Path(src.path).name}": src.weight
            for src in cfg.sources
            if src.enabled and src.weight != 1.0
        },
    }
    if as_released(profile):
        report["as_released"] = as_released_note(len(final), len(removed))
        report["exact_dedup"] = report["near_duplicate_pass"] = "not run (training_data: as_released)"
    return Curation([rows[i] for i in final], records, report)


def apply_weights(
    rows: list[dict], indices: list[int], group_of: list[int], weights: dict[int, float], seed: int
) -> tuple[list[int], list[dict]]:
    """Over/undersample rows per source group: n rows of weight w give round(n * w), every row floor(w) times
    plus a sample seeded by (seed, group) in content order. Returns (final indices, repeats adjacent;
    "undersampled" records)."""
    copies = {i: 1 for i in indices}
    by_group: dict[int, list[int]] = collections.defaultdict(list)
    for i in indices:
        by_group[group_of[i]].append(i)
    for group, members in by_group.items():
        w = weights.get(group, 1.0)
        if w == 1.0:
            continue
        whole, rest = divmod(int(round(len(members) * w)), len(members))
        ordered = sorted(members, key=lambda i: row_digest(rows[i]))
        random.Random(f"{seed}:{group}").shuffle(ordered)
        chosen = set(ordered[:rest])
        copies.update({i: whole + (i in chosen) for i in members})
    final = [i for i in indices for _ in range(copies[i])]
    removed = [
        {"index": i, "reason": "undersampled", "duplicate_of": None, "similarity": None}
        for i in indices
        if copies[i] == 0
    ]
    return final, removed


def composition_table(report: dict) -> pd.DataFrame:
    rows = [{"data_source": s, **c} for s, c in sorted(report["per_source"].items())]
    df = pd.DataFrame(rows, columns=["data_source", *STEPS])
    total = df["kept"].sum()
    df["share_%"] = (100 * df["kept"] / total).round(1) if total else 0.0
    return df


def plot_composition(table: pd.DataFrame, ax=None):
    """Bars of rows per source by curation outcome (nothing written)."""
    fig, ax = new_figure(ax, (6.5, 0.45 * len(table) + 1.5))
    outcomes = ["kept", "exact_dup", "near_dup", "filtered", "malformed"]
    long = table.melt(id_vars="data_source", value_vars=outcomes, var_name="outcome", value_name="rows")
    sns.barplot(data=long, y="data_source", x="rows", hue="outcome", ax=ax)
    ax.legend(title="outcome", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_xlabel("rows")
    ax.set_ylabel("")
    ax.set_title("Curated dataset: rows per source and outcome")
    return fig


def hub_token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")


def check_push_settings(profile: Profile) -> None:
    cfg = profile.curate
    if cfg.push_to_hub and not (cfg.push_to_hub_repo and hub_token()):
        raise CurateError(
            f"{profile.source_file}: curate.push_to_hub needs curate.push_to_hub_repo and a token "
            "in $HF_TOKEN (or turn push_to_hub off)"
        )


def save(
    profile: Profile, loaded: Loaded, curation: Curation, timings: dict | None = None, force: bool = False
) -> list[Path]:
    """Write the artifacts and manifest.json, push when asked; CurateError on outputs edited since, unless `force`."""
    check_push_settings(profile)
    refuse_edited_outputs(profile.run_dir(STAGE), profile.source_file, force, CurateError)
    with StageRun(profile.run_dir(STAGE), STAGE, profile.fingerprint_params(STAGE)) as run:
        run.timings.update(timings or {})
        for path in loaded.inputs:
            run.add_input(path)
        with run.timed("save_s"):
            paths = write_outputs(profile, curation)
        for p in paths:
            run.add_output(p)
        run.metrics.update(curation.report["totals"])
        run.metrics["training_data"] = profile.training_data
        if "as_released" in curation.report:
            run.metrics["as_released"] = curation.report["as_released"]
        if profile.curate.push_to_hub:
            with run.timed("push_to_hub_s"):
                run.metrics["pushed_to"] = push_to_hub(
                    curation.curated, profile.curate.push_to_hub_repo, profile.curate.push_to_hub_private
                )
    return paths


def _hf_dataset(rows: list[dict]):
    import datasets

    return datasets.Dataset.from_pandas(pd.DataFrame(rows, columns=list(FIELDS)), preserve_index=False)


def write_outputs(profile: Profile, curation: Curation) -> list[Path]:
    """The stage's files; returns those hashed into the manifest."""
    out = profile.run_dir(STAGE)
    paths = [
        write_jsonl(out / "curated.jsonl", curation.curated),
        write_jsonl(out / "removed.jsonl", curation.removed),
        write_json(out / "curation_report.json", curation.report),
    ]
    with atomic_path(out / "curated.parquet") as tmp:
        pd.DataFrame(curation.curated, columns=list(FIELDS)).to_parquet(tmp, index=False)
    paths.append(out / "curated.parquet")
    with atomic_path(out / "hf_dataset") as tmp:
        _hf_dataset(curation.curated).save_to_disk(str(tmp))
    # not hashed: save_to_disk's state file holds a random fingerprint, the same rows as curated.jsonl
    table = composition_table(curation.report)
    tables = profile.report_dir("tables")
    write_text(tables / "composition.csv", table.to_csv(index=False))
    write_text(tables / "composition.md", table.to_markdown(index=False) + "\n")
    paths += [tables / "composition.csv"]
    paths.append(write_text(out / "README.md", dataset_card(profile, curation.report, table)))
    caption = "Rows per source by curation outcome.\n" + table.to_string(index=False)
    paths += save_figure(plot_composition(table), profile.report_dir("figures") / "01_composition", caption)
    return paths


def push_to_hub(curated: list[dict], repo_id: str, private: bool = True) -> str:
    """Upload the curated rows as a hub dataset (split "train"); the token comes from $HF_TOKEN."""
    token = hub_token()
    if not token:
        raise CurateError("push_to_hub: no token in $HF_TOKEN")
    ds = _hf_dataset(curated)
    log.info("pushing %d rows to the hub dataset %s (private=%s)", len(ds), repo_id, private)
    ds.push_to_hub(repo_id, token=token, private=private)
    return repo_id


def run_curate(profile: Profile, force: bool = False) -> dict:
    """The whole stage; returns the curation report."""
    cfg, timings = profile.curate, {}
    check_push_settings(profile)
    with timed(timings, "load_s"):
        loaded = load_sources(profile)
    everything = list(range(len(loaded.rows)))
    if as_released(profile):
        warn_if_not_open_platypus(profile)
        curation = assemble(profile, loaded, [], everything, [], {})
        log.info("%s", curation.report["as_released"])
        save(profile, loaded, curation, timings, force=force)
        return curation.report
    with timed(timings, "exact_dedup_s"):
        kept, removed_exact = exact_dedup(loaded.rows) if cfg.exact_dedup else (everything, [])
    with timed(timings, "embed_s"):
        emb, cache = embed(profile, loaded.rows, kept)
    with timed(timings, "similarity_s"):
        pairs = near_duplicate_pairs(loaded.rows, emb, kept, cfg.similarity_threshold, cfg.block_size, cfg.backend)
        final, removed_near = choose_kept(loaded.rows, pairs, cfg.similarity_threshold, kept)
    log.info(
        f"exact dedup removed {len(removed_exact)} rows; similarity exclusion at {cfg.similarity_threshold:.2f} "
        f"removed {len(removed_near)}, kept {len(final)}"
    )
    curation = assemble(profile, loaded, removed_exact, final, removed_near, cache)
    save(profile, loaded, curation, timings, force=force)
    return curation.report


LICENCES = {  # PLATYPUS.md §1
    "MATH/PRM-800K": "MIT",
    "MATH": "MIT",
    "ARB": "CC BY 4.0",
    "scienceqa": "CC BY-NC-SA 4.0",
    "scibench": "MIT",
    "theoremqa": "MIT",
    "reclor": "non-commercial",
    "tigerbot-kaggle": "Apache-2.0",
    "leetcode_ne": "none listed",
    "airoboros": "other",
    "guanaco": "Apache-2.0",
}


def dataset_card(profile: Profile, report: dict, table: pd.DataFrame) -> str:
    lic = "\n".join(f"| {s} | {LICENCES.get(s, 'see the source')} |" for s in sorted(report["per_source"]))
    note = report.get("as_released")
    note = f" ({note}; the exact dedup and similarity settings below were not applied)" if note else ""
    return f"""# Curated dataset — profile `{profile.name}`

Built by `platypus run {Path(profile.source_file or "params/<profile>.yaml").name} --only 01` (stage 01_curate).
Schema: `instruction`, `input`, `output`, `data_source` (strings), as Open-Platypus.

## Composition
{table.to_markdown(index=False)}

## Licences
| data_source | licence |
|---|---|
{lic}

## Parameters
- training data: `{profile.training_data}`{note}
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
