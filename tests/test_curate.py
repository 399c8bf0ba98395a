import random

import numpy as np

from platypus_utils.curate import exact_dedup, near_dedup, normalise_text
from platypus_utils.embeddings import EmbeddingCache, normalise, pairs_above, top_match


def row(instr, out, inp="", src="s"):
    return {"instruction": instr, "input": inp, "output": out, "data_source": src}


def test_normalise_text():
    assert normalise_text("  What\tIS  2+2?\n") == normalise_text("what is 2+2?")


def test_exact_dedup_keeps_longer_output_in_any_order():
    rows = [row("What is 2+2?", "4"), row("what is  2+2?", "It is 4, because 2+2=4."), row("Other", "x"),
            row("What is 2+2?", "Four.")]
    kept, removed = exact_dedup(rows)
    assert kept == [1, 2]
    assert {r["index"]: r["duplicate_of"] for r in removed} == {0: 1, 3: 1}
    for seed in range(5):
        perm = list(range(len(rows)))
        random.Random(seed).shuffle(perm)
        k2, _ = exact_dedup([rows[i] for i in perm])
        assert sorted(perm[i] for i in k2) == [1, 2]


def test_exact_dedup_input_field_matters():
    rows = [row("Solve", "a", inp="x=1"), row("Solve", "b", inp="x=2")]
    assert exact_dedup(rows)[0] == [0, 1]


def _emb(vectors):
    return normalise(np.asarray(vectors, dtype=np.float32))


def test_near_dedup_keeps_more_verbose_and_is_order_independent():
    rows = [row("a", "short"), row("a'", "a much longer, more verbose answer"), row("b", "unrelated"),
            row("a''", "medium answer")]
    emb = _emb([[1, 0, 0], [0.95, 0.1, 0], [0, 0, 1], [0.9, 0.2, 0]])
    kept, removed = near_dedup(rows, emb, threshold=0.8)
    assert kept == [1, 2]
    assert {r["index"]: r["duplicate_of"] for r in removed} == {0: 1, 3: 1}
    for seed in range(6):
        perm = list(range(len(rows)))
        random.Random(seed).shuffle(perm)
        k2, _ = near_dedup([rows[i] for i in perm], emb[perm], threshold=0.8)
        assert sorted(perm[i] for i in k2) == [1, 2]


def test_near_dedup_threshold_is_inclusive():
    rows = [row("a", "xx"), row("b", "x")]
    emb = _emb([[1, 0], [0.8, 0.6]])  # cosine exactly 0.8
    assert near_dedup(rows, emb, threshold=0.8)[0] == [0]
    assert near_dedup(rows, emb, threshold=0.81)[0] == [0, 1]


def test_pairs_above_blockwise_equals_dense():
    rng = np.random.default_rng(0)
    a = normalise(rng.normal(size=(70, 8)).astype(np.float32))
    b = normalise(rng.normal(size=(45, 8)).astype(np.float32))
    dense = a @ b.T
    want = {(i, j) for i, j in zip(*np.nonzero(dense >= 0.5))}
    got = set()
    for ii, jj, ss in pairs_above(a, b, 0.5, block_size=16):
        got |= set(zip(ii.tolist(), jj.tolist()))
        assert np.allclose(ss, dense[ii, jj])
    assert got == want
    self_dense = a @ a.T
    want_self = {(i, j) for i, j in zip(*np.nonzero(self_dense >= 0.5)) if i < j}
    got_self = set()
    for ii, jj, _ in pairs_above(a, None, 0.5, block_size=16):
        got_self |= set(zip(ii.tolist(), jj.tolist()))
    assert got_self == want_self
    j, s = top_match(a, b, block_size=16)
    assert (j == dense.argmax(axis=1)).all() and np.allclose(s, dense.max(axis=1))


def test_embedding_cache_roundtrip(tmp_path):
    cache = EmbeddingCache(tmp_path, "m")
    cache.put(["k1", "k2"], np.eye(2, dtype=np.float32))
    again = EmbeddingCache(tmp_path, "m")
    got = again.get(["k2", "k3"])
    assert list(got) == ["k2"] and np.allclose(got["k2"], [0, 1])
    (again.dir / "chunk-broken.npz").write_bytes(b"not a zip")
    assert list(EmbeddingCache(tmp_path, "m").get(["k1"])) == ["k1"]
