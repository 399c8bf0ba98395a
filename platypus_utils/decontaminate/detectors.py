"""The detectors: candidate pairs per detector, and each detector's verdict on a pair."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import leak_judge
from ..config import DecontaminateConfig
from ..embeddings import pairs_above
from ..leak_judge import uninformative_answer
from ..text import embedding_text, missing_numbers
from .embed import Embedded, ngram_texts
from .ngram import NgramIndex
from .rules import numbers_dropped
from .textmatch import answer_in_output
from .views import asked_text, full_view_kind

log = logging.getLogger("platypus")


def _cosine(pairs: pd.DataFrame) -> pd.Series:
    return pairs["embedding_cosine"].astype(float).fillna(-1.0)  # -1 where no embedding was read


def _answer_flags(pairs: pd.DataFrame, cfg: DecontaminateConfig) -> pd.Series:
    low = cfg.answer_detector_threshold
    if low is None:
        return pd.Series(False, index=pairs.index)
    return (_cosine(pairs) >= low) & pairs["answer_match"].astype(bool)


@dataclass(frozen=True)
class Detector:
    """A leak detector: the lowest cosine whose candidates it reads (None: it finds its own) and its flags per pair."""

    name: str
    lowest_cosine: Callable[[DecontaminateConfig], float | None]
    flags: Callable[[pd.DataFrame, DecontaminateConfig], pd.Series]


REGISTRY: dict[str, Detector] = {
    d.name: d
    for d in (
        Detector("embedding", lambda c: c.similarity_threshold, lambda p, c: _cosine(p) >= c.similarity_threshold),
        Detector("ngram", lambda c: None, lambda p, c: p["ngram_overlap"] >= c.ngram_overlap_threshold),
        Detector("answer", lambda c: c.answer_detector_threshold, _answer_flags),
        Detector("judge", lambda c: c.judge_threshold, lambda p, c: p["judge_verdict"].map(lambda v: v is True)),
    )
}


def lowest_cosine(cfg: DecontaminateConfig) -> float | None:
    """The lowest cosine whose candidates a selected detector reads (None: none reads cosines; n-gram finds its own)."""
    return min((x for d in cfg.detectors if (x := REGISTRY[d].lowest_cosine(cfg)) is not None), default=None)


def detector_flags(pairs: pd.DataFrame, cfg: DecontaminateConfig) -> pd.DataFrame:
    """by_<detector> per pair for every registered detector (False when the profile does not select it)."""
    return pd.DataFrame(
        {f"by_{d.name}": d.flags(pairs, cfg).astype(bool) & (d.name in cfg.detectors) for d in REGISTRY.values()},
        index=pairs.index,
    )


PAIR_COSINE_COLUMNS = (
    "train_index item_index embedding_cosine identifying_cosine question_only_cosine embed_part test_view".split()
)
NGRAM_COLUMNS = "train_index item_index ngram_overlap ngram_part ngram_view".split()
CANDIDATE_COLUMNS = PAIR_COSINE_COLUMNS + NGRAM_COLUMNS[2:]  # one row per (train, item): both detectors' columns


def embedding_candidates(emb: Embedded, threshold: float, block_size: int) -> set[tuple[int, int]]:
    """(row, item) pairs with a window x view cosine >= threshold."""
    win_row, view_item = emb.windows["row"].to_numpy(), emb.views["item"].to_numpy()
    found: set[tuple[int, int]] = set()
    for ii, jj, _ in pairs_above(emb.window_vecs, emb.view_vecs, threshold, block_size, desc="train x benchmark"):
        found.update(zip(win_row[ii].tolist(), view_item[jj].tolist()))
    return found


def ngram_candidates(rows: list[dict], emb: Embedded, cfg: DecontaminateConfig) -> pd.DataFrame:
    """Per (row, item): the best n-gram overlap over views and training parts, and the part it was in."""
    index = NgramIndex(ngram_texts(rows, cfg))
    best: dict[tuple[int, int], tuple[float, str, str]] = {}
    for item, view, text in zip(emb.views["item"].tolist(), emb.views["view"].tolist(), emb.views["text"].tolist()):
        for doc, share in index.overlaps(text, cfg.ngram_n, cfg.ngram_min_tokens).items():
            key = (doc % len(rows), item)
            if share > best.get(key, (0.0,))[0]:
                best[key] = (share, "prompt" if doc < len(rows) else "output", view)
    return pd.DataFrame([(i, j, *v) for (i, j), v in best.items()], columns=NGRAM_COLUMNS)


def pair_cosines(emb: Embedded, pairs: list[tuple[int, int]]) -> pd.DataFrame:
    """Per (row, item): max cosines (all views but question_only, identifying views, question_only) and where."""
    out = []
    parts, view_names = emb.windows["part"].to_numpy(), emb.views["view"].to_numpy()
    identifying = emb.views["identifying"].to_numpy()
    for i, j in pairs:
        w, v = emb.windows_of.get(i), emb.views_of.get(j)
        if emb.window_vecs is None or w is None or v is None:
            out.append((i, j, np.nan, np.nan, np.nan, "", ""))
            continue
        sims = emb.window_vecs[w] @ emb.view_vecs[v].T
        a, b = np.unravel_index(int(np.argmax(sims)), sims.shape)
        only = view_names[v] == "question_only"
        peaks = [float(m.max()) if m.size else np.nan for m in (sims[:, ~only], sims[:, identifying[v]], sims[:, only])]
        out.append((i, j, *peaks, parts[w[a]], view_names[v[b]]))
    return pd.DataFrame(out, columns=PAIR_COSINE_COLUMNS)


def candidate_pairs(rows: list[dict], emb: Embedded, cfg: DecontaminateConfig) -> pd.DataFrame:
    """Step: every (row, item) pair some selected detector might flag, with its cosines and n-gram overlap."""
    low = lowest_cosine(cfg)
    keys = embedding_candidates(emb, low, cfg.block_size) if low is not None else set()
    grams = ngram_candidates(rows, emb, cfg) if "ngram" in cfg.detectors else pd.DataFrame(columns=NGRAM_COLUMNS)
    hits = grams[grams["ngram_overlap"] >= cfg.ngram_overlap_threshold]
    keys |= set(zip(hits["train_index"].tolist(), hits["item_index"].tolist()))
    cos = pair_cosines(emb, sorted(keys))
    out = cos.merge(grams, on=["train_index", "item_index"], how="left")
    out["ngram_overlap"] = out["ngram_overlap"].astype(float).fillna(0.0)
    out[["ngram_part", "ngram_view"]] = out[["ngram_part", "ngram_view"]].fillna("")
    log.info(
        "%d candidate pairs (cosine >= %s, or %d-gram overlap >= %.2f)",
        len(out),
        low,
        cfg.ngram_n,
        cfg.ngram_overlap_threshold,
    )
    return out[CANDIDATE_COLUMNS]


def answer_verified(train_row: dict, item: dict) -> bool:
    """Detector "answer"'s check: the test's numbers are all in the train prompt and its answer in the output."""
    answer = item.get("answer") or ""
    return (
        not missing_numbers(item["question"], embedding_text(train_row))
        and not uninformative_answer(answer)
        and answer_in_output(answer, train_row["output"])
    )


def judge_reads(row: dict, item: dict, view: str) -> bool:
    """Whether the judge reads a candidate: the question's numbers are in the row, or it only left them out."""
    asked, prompt = asked_text(item, view), embedding_text(row)
    return not missing_numbers(asked, f"{prompt}\n{row['output']}") or numbers_dropped(row, item, view)


def judge_frame(pairs: list[tuple[dict, dict, str]]) -> pd.DataFrame:
    """leak_judge's input for (training row, test item, view) triples."""
    out = []
    for row, item, view in pairs:
        options = list(item.get("choices") or [])
        choices = list(options) if full_view_kind(item) == "choices" else []
        asked, answer = asked_text(item, view), item.get("answer") or ""
        out.append((embedding_text(row), row["output"], asked, answer, choices, options, view))
    return pd.DataFrame(out, columns=[*leak_judge.REQUIRED, "test_choices", "test_options", "test_view"])


def judge_candidates(
    cands: pd.DataFrame, rows: list[dict], items: list[dict], cfg: DecontaminateConfig, embedder=None
) -> pd.DataFrame:
    """Step: leak_judge's score and verdict for candidates at cosine >= judge_threshold it reads; NaN / None else."""
    out = pd.DataFrame({"judge_score": np.nan, "judge_verdict": None}, index=cands.index)
    if "judge" not in cfg.detectors or cands.empty:
        return out
    whole = cands["embedding_cosine"].astype(float).fillna(-1.0)
    asked = cands["question_only_cosine"].astype(float).fillna(-1.0)
    # the judge reads the question part alone ("question_only") where it matches better than the whole item
    views = pd.Series(np.where(asked > whole, "question_only", ""), index=cands.index)
    best = np.maximum(whole, asked)
    # a pair missing a number of the question is similar_but_different whatever the judge says (rule 3): not read
    read = [
        k
        for k in cands.index[best >= cfg.judge_threshold]
        if judge_reads(rows[cands.at[k, "train_index"]], items[cands.at[k, "item_index"]], views[k])
    ]
    if not read:
        return out
    frame = judge_frame([(rows[cands.at[k, "train_index"]], items[cands.at[k, "item_index"]], views[k]) for k in read])
    model = cfg.judge_model or leak_judge.DEFAULT_MODEL
    same = embedder if getattr(embedder, "model_ref", None) == model else None
    cache = getattr(getattr(embedder, "cache", None), "dir", None)  # <root>/embeddings/<model>: the root
    judged = leak_judge.judge_pairs(
        frame, model=model, embedder=same, cache_dir=Path(cache).parents[1] if cache else None
    )
    out.loc[read, "judge_score"] = judged["score"].to_numpy(dtype=float)
    out.loc[read, "judge_verdict"] = judged["verdict"].astype(bool).to_numpy()
    return out


def flag_pairs(
    cands: pd.DataFrame,
    rows: list[dict],
    items: list[dict],
    cfg: DecontaminateConfig,
    keep_unflagged: bool = False,
    embedder=None,
) -> pd.DataFrame:
    """Step: answer check, judge and detectors' verdicts per candidate; only the flagged unless keep_unflagged."""
    out = cands.copy()
    out["answer_match"] = [answer_verified(rows[i], items[j]) for i, j in zip(out["train_index"], out["item_index"])]
    out[["judge_score", "judge_verdict"]] = judge_candidates(out, rows, items, cfg, embedder)
    flags = detector_flags(out, cfg)
    out[flags.columns] = flags
    log.info("flagged pairs: %s", {k: int(v.sum()) for k, v in flags.items()})
    return out if keep_unflagged else out[flags.any(axis=1)].reset_index(drop=True)
