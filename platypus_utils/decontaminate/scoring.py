"""Measuring the detectors on labelled pairs (tests/fixtures/contamination_labelled.jsonl; bench/bench_detectors.py)."""

from __future__ import annotations

import pandas as pd

from ..config import DecontaminateConfig
from ..text import embedding_text
from .detectors import flag_pairs, pair_cosines
from .embed import embed_texts
from .ngram import NgramIndex
from .rules import categorise_flagged


def score_pairs(
    pairs: list[dict], cfg: DecontaminateConfig, embedder=None, cosines: list[float] | None = None
) -> pd.DataFrame:
    """Score labelled pairs ({"train": row, "question", "answer", "benchmark", "choices"?}) one by one as
    stage.detect would: candidate columns, detector verdicts, category and rule ("" when no detector flags it).
    Cosines come from `embedder`, or are given (`cosines`, one per pair)."""
    cfg = cfg.model_copy(update={"candidates": "exhaustive"})
    rows = [{"input": "", **p["train"]} for p in pairs]
    items = [{"subject": "", "choices": [], **{k: v for k, v in p.items() if k != "train"}} for p in pairs]
    emb = embed_texts(
        rows, items, cfg if cosines is None else cfg.model_copy(update={"detectors": ["ngram"]}), embedder
    )
    cands = pair_cosines(emb, [(k, k) for k in range(len(pairs))])
    if cosines is not None:
        cands["embedding_cosine"] = cands["identifying_cosine"] = [float(c) for c in cosines]
        cands["embed_part"], cands["test_view"] = "prompt", "question"
    grams = []
    for k, row in enumerate(rows):
        index = NgramIndex([embedding_text(row)] + ([row["output"]] if cfg.search_outputs else []))
        views = emb.views[emb.views["item"] == k]
        hits = [
            (s, "prompt" if d == 0 else "output", v)
            for v, t in zip(views["view"], views["text"])
            for d, s in index.overlaps(t, cfg.ngram_n, cfg.ngram_min_tokens).items()
        ]
        grams.append(max(hits, default=(0.0, "", "")))
    for c, name in enumerate(("ngram_overlap", "ngram_part", "ngram_view")):
        cands[name] = [g[c] for g in grams]
    scored = flag_pairs(cands, rows, items, cfg, keep_unflagged=True, embedder=embedder)
    cats = [
        categorise_flagged(s, rows[k], items[k], cfg)[:2]
        if any((s.by_embedding, s.by_ngram, s.by_answer, s.by_judge))
        else ("", "")
        for k, s in enumerate(scored.itertuples(index=False))
    ]
    scored["category"], scored["rule"] = [c for c, _ in cats], [r for _, r in cats]
    return scored.drop(columns=["train_index", "item_index"])
