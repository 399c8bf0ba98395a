"""Recall and false-alarm rate of each contamination detector on the hand-labelled pairs (prints a table).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_detectors.py [--pairs tests/fixtures/contamination_labelled.jsonl]

The labelled set holds (train row, benchmark question, answer) pairs written for this purpose:
verbatim copies and rewordings (label "leak"; category duplicate / gray_area) and same-shape-other-
numbers, other-answer and unrelated-but-topical pairs (label "no_leak"). Split "dev" (84 pairs) is the
one the answer-matching rules were designed on; "heldout" (32 pairs) was written afterwards and
measured once, so it is the fairer figure (both were written by the rules' author: a set written by
someone else would be fairer still). A detector "says leak" as follows:
  embedding >= t        the paper's way: every pair at cosine >= t is removed
  n-gram                13-gram overlap >= 0.5 (short questions: the whole question as one gram)
  embedding or n-gram   either of the two, every flagged pair removed
  (a)+(b) + rules       flagged by either, removed when the rules say duplicate or gray-area
  (c) answer-verified   cosine >= 0.6, the test's numbers in the train text, its answer in the output
  (a)+(b)+(c) + rules   the stage's default: flagged by any, removed when the rules say so
Recall: share of leak pairs said to leak; false alarms: share of no-leak pairs said to leak.
The embeddings are all-MiniLM-L6-v2 (embedded), through the shared cache.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PLATYPUS_PROGRESS", "0")

import pandas as pd  # noqa: E402

from platypus_utils.config import DecontaminateConfig  # noqa: E402
from platypus_utils.decontaminate import score_pairs  # noqa: E402
from platypus_utils.embeddings import Embedder  # noqa: E402
from platypus_utils.models import default_cache_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LEAK_CATEGORIES = ("duplicate", "gray_area")


def rates(says_leak: pd.Series, is_leak: pd.Series) -> dict:
    return {"recall": says_leak[is_leak].mean(), "false_alarms": says_leak[~is_leak].mean(),
            "caught": int(says_leak[is_leak].sum()), "leaks": int(is_leak.sum()),
            "false": int(says_leak[~is_leak].sum()), "no_leaks": int((~is_leak).sum())}


def detector_table(scores: pd.DataFrame, is_leak: pd.Series, cfg: DecontaminateConfig) -> pd.DataFrame:
    removed_by_rules = scores["category"].isin(LEAK_CATEGORIES)
    a_or_b = scores["by_embedding"] | scores["by_ngram"]
    rows = {
        f"(a) embedding >= {cfg.similarity_threshold:g}": scores["by_embedding"],
        f"(b) {cfg.ngram_n}-gram overlap >= {cfg.ngram_overlap_threshold:g}": scores["by_ngram"],
        "(a) or (b), all removed": a_or_b,
        "(a) or (b) + category rules": a_or_b & removed_by_rules,
        f"(c) answer-verified, cosine >= {cfg.answer_detector_threshold:g}": scores["by_answer"],
        "(a)+(b)+(c) + category rules (default)": removed_by_rules,
    }
    return pd.DataFrame([{"detector": name, **rates(flag, is_leak)} for name, flag in rows.items()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", default=str(ROOT / "tests" / "fixtures" / "contamination_labelled.jsonl"))
    ap.add_argument("--embedding-model", default="embedded:all-minilm-l6-v2")
    ap.add_argument("--cache-dir", default=str(default_cache_dir()))
    args = ap.parse_args()
    pairs = [json.loads(line) for line in Path(args.pairs).read_text(encoding="utf-8").splitlines() if line.strip()]
    embedder = Embedder(args.embedding_model, args.cache_dir)
    cfg = DecontaminateConfig()
    scores = score_pairs(pairs, cfg, embedder)
    is_leak = pd.Series([p["label"] == "leak" for p in pairs])
    split = pd.Series([p.get("split", "dev") for p in pairs])
    fmt = {"recall": "{:.1%}".format, "false_alarms": "{:.1%}".format}
    for name, mask in [("dev (the rules were designed on it)", split == "dev"),
                       ("held-out (written after the rules, measured once)", split == "heldout"), ("all", split == split)]:
        sub, leak = scores[mask].reset_index(drop=True), is_leak[mask].reset_index(drop=True)
        kinds = pd.Series([p["kind"] for p, m in zip(pairs, mask) if m]).value_counts().to_dict()
        print(f"== {name}: {len(sub)} pairs, {int(leak.sum())} leaks, {int((~leak).sum())} no-leaks; {kinds}")
        print(detector_table(sub, leak, cfg).to_string(index=False, formatters=fmt) + "\n")

    print("threshold sweep, all pairs (recall / false alarms):")
    print(f"{'cosine t':>9} {'embedding >= t':>16} {'(c) at t':>16} {'(a)+(b)+(c) rules':>18}")
    for t in (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8):
        c = cfg.model_copy(update={"answer_detector_threshold": t})
        s = score_pairs(pairs, c, embedder)
        e = rates(s["embedding_cosine"] >= t, is_leak)
        a = rates(s["by_answer"], is_leak)
        full = rates(s["category"].isin(LEAK_CATEGORIES), is_leak)
        print(f"{t:>9.2f} " + " ".join(f"{r['recall']:>7.1%} / {r['false_alarms']:>5.1%}" for r in (e, a, full)))

    expected = pd.Series([p["category"] for p in pairs])
    flagged_leaks = is_leak & scores["category"].isin(LEAK_CATEGORIES)
    agree = (scores["category"] == expected)[flagged_leaks]
    print(f"\ncategory of caught leaks as expected (duplicate vs gray-area): {int(agree.sum())}/{len(agree)}")
    sbd = ~is_leak & (expected == "similar_but_different") & (scores["category"] != "")
    print(f"similar-but-different pairs flagged and kept as similar_but_different: "
          f"{int((scores['category'][sbd] == 'similar_but_different').sum())}/{int(sbd.sum())}")
    print("\nmistakes of the default (all pairs):")
    for k, p in enumerate(pairs):
        said = scores["category"][k] in LEAK_CATEGORIES
        if said != is_leak[k] or (said and scores["category"][k] != p["category"]):
            print(f"  {p['id']:10} {p['label']:7} expected {p['category']:21} got {scores['category'][k] or '-':21} "
                  f"cos {scores['embedding_cosine'][k]:.3f}  {scores['rule'][k] or p.get('note', '')}")


if __name__ == "__main__":
    main()
