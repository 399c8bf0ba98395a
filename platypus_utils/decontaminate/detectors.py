"""The detectors: candidate pairs per detector, and each detector's verdict on a pair."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from ..config import DecontaminateConfig
from ..embeddings import pairs_above
from ..text import embedding_text, missing_numbers
from .embed import Embedded
from .ngram import NgramIndex
from .textmatch import answer_in_output
from .views import asked_text, full_view_kind

try:  # the rewording judge (detector "judge") is optional: it lands in its own module
    from .. import leak_judge
    from ..leak_judge import own_numbers, uninformative_answer
except ImportError:  # pragma: no cover - depends on the tree
    leak_judge = own_numbers = None

    def uninformative_answer(answer: str) -> bool:
        return False


log = logging.getLogger("platypus")


# ---------------------------------------------------------------- the detector registry
class PairScores(NamedTuple):
    """What the detectors read of a candidate pair (cosine -1 where no embedding was read)."""

    cosine: float
    ngram: float
    answer_match: bool
    judge_verdict: bool | None


@dataclass(frozen=True)
class Detector:
    """A leak detector (decontaminate.detectors names them): the lowest cosine whose candidates it reads
    (None: it finds its own, as the n-gram index does) and its verdict on a pair's scores."""

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
        # the paper's: every training row at cosine >= similarity_threshold (not only the most similar one)
        Detector(
            "embedding", lambda cfg: cfg.similarity_threshold, lambda s, cfg: s.cosine >= cfg.similarity_threshold
        ),
        # the share of the test view's n-grams found in the training text (GPT-3 / lm-eval)
        Detector("ngram", lambda cfg: None, lambda s, cfg: s.ngram >= cfg.ngram_overlap_threshold),
        # a rewording below 0.8 whose numbers all agree and whose output holds the test answer
        Detector("answer", lambda cfg: cfg.answer_detector_threshold, _answer_flags),
        # platypus_utils.leak_judge: the same question, possibly reworded with its answer
        Detector("judge", lambda cfg: cfg.judge_threshold, lambda s, cfg: s.judge_verdict is True),
    )
}
DETECTORS = tuple(REGISTRY)

PAIR_COSINE_COLUMNS = [
    "train_index",
    "item_index",
    "embedding_cosine",
    "identifying_cosine",
    "question_only_cosine",
    "embed_part",
    "test_view",
]
NGRAM_COLUMNS = ["train_index", "item_index", "ngram_overlap", "ngram_part", "ngram_view"]
CANDIDATE_COLUMNS = PAIR_COSINE_COLUMNS + NGRAM_COLUMNS[2:]  # one row per (train, item): both detectors' columns


def embedding_candidates(emb: Embedded, threshold: float, block_size: int) -> set[tuple[int, int]]:
    """(row, item) pairs with a window x view cosine >= threshold (blockwise: memory bounded by the blocks)."""
    win_row, view_item = emb.windows["row"].to_numpy(), emb.views["item"].to_numpy()
    found: set[tuple[int, int]] = set()
    for ii, jj, _ in pairs_above(emb.window_vecs, emb.view_vecs, threshold, block_size, desc="train x benchmark"):
        found.update(zip(win_row[ii].tolist(), view_item[jj].tolist()))
    return found


def ngram_candidates(rows: list[dict], emb: Embedded, cfg: DecontaminateConfig) -> pd.DataFrame:
    """Per (row, item): the best n-gram overlap over views and training parts, and the part it was in."""
    texts = [embedding_text(r) for r in rows] + ([r["output"] for r in rows] if cfg.search_outputs else [])
    index = NgramIndex(texts)
    best: dict[tuple[int, int], tuple[float, str, str]] = {}
    for item, view, text in zip(emb.views["item"].tolist(), emb.views["view"].tolist(), emb.views["text"].tolist()):
        for doc, share in index.overlaps(text, cfg.ngram_n, cfg.ngram_min_tokens).items():
            key = (doc % len(rows), item)
            if share > best.get(key, (0.0,))[0]:
                best[key] = (share, "prompt" if doc < len(rows) else "output", view)
    return pd.DataFrame([(i, j, *v) for (i, j), v in best.items()], columns=NGRAM_COLUMNS)


def pair_cosines(emb: Embedded, pairs: list[tuple[int, int]]) -> pd.DataFrame:
    """For given (row, item) pairs: the max cosine over windows x views (embedding_cosine; the question_only
    view apart), the max over identifying views only, the question_only view's (question_only_cosine: NaN
    without one), and where the best of them was (training part, test view). NaN cosines without embeddings."""
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
        whole, asked = sims[:, ~only], sims[:, only]
        ident = sims[:, identifying[v]]
        out.append(
            (
                i,
                j,
                float(whole.max()) if whole.size else np.nan,
                float(ident.max()) if ident.size else np.nan,
                float(asked.max()) if asked.size else np.nan,
                parts[w[a]],
                view_names[v[b]],
            )
        )
    return pd.DataFrame(out, columns=PAIR_COSINE_COLUMNS)


def candidate_threshold(cfg: DecontaminateConfig) -> float | None:
    """The lowest cosine any selected embedding-reading detector looks at (None: no such detector)."""
    lows = [REGISTRY[d].lowest_cosine(cfg) for d in cfg.detectors]
    lows = [x for x in lows if x is not None]
    return min(lows) if lows else None


def candidate_pairs(rows: list[dict], emb: Embedded, cfg: DecontaminateConfig) -> pd.DataFrame:
    """Step: every (row, item) pair some selected detector might flag, with its cosines and n-gram overlap
    (CANDIDATE_COLUMNS): embedding candidates at the lowest cosine read, n-gram ones above their threshold."""
    keys: set[tuple[int, int]] = set()
    low = candidate_threshold(cfg)
    if low is not None:
        keys |= embedding_candidates(emb, low, cfg.block_size)
    grams = ngram_candidates(rows, emb, cfg) if "ngram" in cfg.detectors else pd.DataFrame(columns=NGRAM_COLUMNS)
    keys |= set(
        zip(
            *[
                grams.loc[grams["ngram_overlap"] >= cfg.ngram_overlap_threshold, c].tolist()
                for c in ("train_index", "item_index")
            ]
        )
    )
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


# ---------------------------------------------------------------- detectors' verdicts
def answer_verified(train_row: dict, item: dict) -> bool:
    """Detector "answer"'s check: the test's numbers are all in the train prompt and its answer in the output."""
    answer = item.get("answer") or ""
    return (
        not missing_numbers(item["question"], embedding_text(train_row))
        and not uninformative_answer(answer)
        and answer_in_output(answer, train_row["output"])
    )


def judged_view(cands: pd.DataFrame) -> pd.Series:
    """Per candidate, the view the judge reads it against: "question_only" when the question part of a long
    stem matches better than the whole item (a rewording that dropped the passage), else "" (the stem)."""
    whole = cands["embedding_cosine"].astype(float).fillna(-1.0)
    if "question_only_cosine" not in cands:
        return pd.Series("", index=cands.index)
    asked = cands["question_only_cosine"].astype(float).fillna(-1.0)
    return pd.Series(np.where(asked > whole, "question_only", ""), index=cands.index)


def judge_reads(row: dict, item: dict, view: str) -> bool:
    """Whether the judge reads a candidate: the test question's numbers are all in the row, or the row left them
    out without naming others, its output stating the answer (leak_judge.context_numbers_dropped)."""
    asked, prompt = asked_text(item, view), embedding_text(row)
    if not missing_numbers(asked, f"{prompt}\n{row['output']}"):
        return True
    answer, options = item.get("answer") or "", list(item.get("choices") or [])
    return leak_judge.context_numbers_dropped(asked, prompt, row["output"], answer, options)


def judge_frame(pairs: list[tuple[dict, dict, str]]) -> pd.DataFrame:
    """leak_judge's input for (training row, test item, view) triples (view: judged_view's)."""
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
    """Step (detector "judge"): leak_judge's score and verdict (True: the same question, possibly reworded)
    for the candidates at cosine >= judge_threshold (the whole item's, or its question_only view's: then the
    judge reads the question part alone) whose numbers agree; NaN / None for the others, and all of them when
    the judge is not selected. The judge reuses the stage's embedder when it judges with the same model."""
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
    # a pair with a number of the test question missing from the whole row is similar_but_different (rule 3)
    # whatever the judge says, and the judge would say "different" too: it is not read, which keeps the judge's
    # cost to the pairs it can decide (most MATH x MMLU candidates share a topic but not their numbers); unless
    # the row only left them out (leak_judge.context_numbers_dropped)
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
    """Which selected detectors flag a (train row, test item) pair, from its scores (NaN cosine: none):
    {"by_<detector>": verdict} for every detector of the REGISTRY, False for those not selected."""
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
    """Step: each candidate's answer check, the judge's score and verdict, and each detector's verdict; only
    the flagged pairs (all of them with keep_unflagged, for measuring on a labelled set)."""
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
