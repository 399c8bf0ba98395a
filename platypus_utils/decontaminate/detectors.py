"""The detectors: candidate pairs per detector, and each detector's verdict on a pair."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from .. import leak_judge
from ..config import DecontaminateConfig
from ..embeddings import pairs_above
from ..leak_judge import uninformative_answer
from ..text import embedding_text, missing_numbers
from .embed import Embedded, ngram_texts
from .ngram import NgramIndex
from .textmatch import answer_in_output
from .views import asked_text, full_view_kind

log = logging.getLogger("platypus")


class PairScores(NamedTuple):
    """What the detectors read of a candidate pair (cosine -1 where no embedding was read)."""

    cosine: float
    ngram: float
    answer_match: bool
    judge_verdict: bool | None


@dataclass(frozen=True)
class Detector:
    """A leak detector: the lowest cosine whose candidates it reads (None: it finds its own) and its verdict."""

    name: str
    lowest_cosine: Callable[[DecontaminateConfig], float | None]
    flags: Callable[[PairScores, DecontaminateConfig], bool]

    @property
    def column(self) -> str:
        return f"by_{self.name}"


def _answer_flags(s: PairScores, cfg: DecontaminateConfig) -> bool:
    low = cfg.answer_detector_threshold
    return low is not None and s.cosine >= low and s.answer_match


REGISTRY: dict[str, Detector] = {
    d.name: d
    for d in (
        Detector(
            "embedding", lambda cfg: cfg.similarity_threshold, lambda s, cfg: s.cosine >= cfg.similarity_threshold
        ),
        Detector("ngram", lambda cfg: None, lambda s, cfg: s.ngram >= cfg.ngram_overlap_threshold),
        Detector("answer", lambda cfg: cfg.answer_detector_threshold, _answer_flags),
        Detector("judge", lambda cfg: cfg.judge_threshold, lambda s, cfg: s.judge_verdict is True),
    )
}
DETECTORS = tuple(REGISTRY)

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
    keys: set[tuple[int, int]] = set()
    # the lowest cosine a selected detector reads (None: no detector reads cosines)
    low = min((x for d in cfg.detectors if (x := REGISTRY[d].lowest_cosine(cfg)) is not None), default=None)
    if low is not None:
        keys |= embedding_candidates(emb, low, cfg.block_size)
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


def judged_view(cands: pd.DataFrame) -> pd.Series:
    """Per candidate, the view the judge reads: "question_only" when it matches better than the whole item, else ""."""
    whole = cands["embedding_cosine"].astype(float).fillna(-1.0)
    if "question_only_cosine" not in cands:
        return pd.Series("", index=cands.index)
    asked = cands["question_only_cosine"].astype(float).fillna(-1.0)
    return pd.Series(np.where(asked > whole, "question_only", ""), index=cands.index)


def judge_reads(row: dict, item: dict, view: str) -> bool:
    """Whether the judge reads a candidate: the question's numbers are in the row, or it only left them out."""
    asked, prompt = asked_text(item, view), embedding_text(row)
    if not missing_numbers(asked, f"{prompt}\n{row['output']}"):
        return True
    answer, options = item.get("answer") or "", list(item.get("choices") or [])
    return leak_judge.context_numbers_dropped(asked, prompt, row["output"], answer, options)


def judge_frame(pairs: list[tuple[dict, dict, str]]) -> pd.DataFrame:
    """leak_judge's input for (training row, test item, view) triples."""
    return pd.DataFrame(
        {
            "train_text": [embedding_text(r) for r, _, _ in pairs],
            "train_output": [r["output"] for r, _, _ in pairs],
            "test_question": [asked_text(it, view) for _, it, view in pairs],
            "test_answer": [it.get("answer") or "" for _, it, _ in pairs],
            "test_choices": [
                list(it.get("choices") or []) if full_view_kind(it) == "choices" else [] for _, it, _ in pairs
            ],
            "test_options": [list(it.get("choices") or []) for _, it, _ in pairs],
            "test_view": [view for _, _, view in pairs],
        }
    )


def judge_candidates(
    cands: pd.DataFrame, rows: list[dict], items: list[dict], cfg: DecontaminateConfig, embedder=None
) -> pd.DataFrame:
    """Step: leak_judge's score and verdict for candidates at cosine >= judge_threshold it reads; NaN / None else."""
    out = pd.DataFrame({"judge_score": np.nan, "judge_verdict": None}, index=cands.index)
    if "judge" not in cfg.detectors or cands.empty:
        return out
    if leak_judge is None:
        raise ValueError(
            "decontaminate.detectors includes 'judge', but platypus_utils.leak_judge is not in this "
            "tree; choose from embedding, ngram, answer"
        )
    views = judged_view(cands)
    best = cands["embedding_cosine"].astype(float).fillna(0.0)
    if "question_only_cosine" in cands:
        best = np.maximum(best, cands["question_only_cosine"].astype(float).fillna(0.0))
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


def detector_verdicts(
    cosine: float, ngram: float, answer_match: bool, cfg: DecontaminateConfig, judge_verdict: bool | None = None
) -> dict[str, bool]:
    """{"by_<detector>": verdict} for every detector of the REGISTRY (False when not selected; NaN cosine: -1)."""
    scores = PairScores(-1.0 if cosine != cosine else cosine, ngram, bool(answer_match), judge_verdict)
    return {d.column: d.name in cfg.detectors and d.flags(scores, cfg) for d in REGISTRY.values()}


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
    verdicts = [
        detector_verdicts(c, g, a, cfg, v)
        for c, g, a, v in zip(out["embedding_cosine"], out["ngram_overlap"], out["answer_match"], out["judge_verdict"])
    ]
    columns = [d.column for d in REGISTRY.values()]
    for name in columns:
        out[name] = [v[name] for v in verdicts]
    flagged = out[columns].any(axis=1)
    log.info("flagged pairs: %s", {k: int(out[k].sum()) for k in columns})
    return out if keep_unflagged else out[flagged].reset_index(drop=True)
