import random
from pathlib import Path

import numpy as np

from platypus_utils.curate import exact_dedup, near_dedup
from platypus_utils.embeddings import EmbeddingCache, normalise, pairs_above, top_match
from platypus_utils.text import normalise_text


def row(instr, out, inp="", src="s"):
    return {"instruction": instr, "input": inp, "output": out, "data_source": src}


def test_normalise_text():
    assert normalise_text("  What\tIS  2+2?\n") == normalise_text("what is 2+2?")


def test_exact_dedup_keeps_longer_output_in_any_order():
    rows = [
        row("What is 2+2?", "4"),
        row("what is  2+2?", "It is 4, because 2+2=4."),
        row("Other", "x"),
        row("What is 2+2?", "Four."),
    ]
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
    rows = [
        row("a", "short"),
        row("a'", "a much longer, more verbose answer"),
        row("b", "unrelated"),
        row("a''", "medium answer"),
    ]
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


# ---------------------------------------------------------------- FAISS backend
def _clustered(n, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    k = n // 4
    x[-k:] = x[:k] + 0.25 * rng.standard_normal((k, dim)).astype(np.float32)  # near-duplicates of the first rows
    return normalise(x[rng.permutation(n)])


def _pair_set(gen):
    out = {}
    for ii, jj, ss in gen:
        out.update({(i, j): s for i, j, s in zip(ii.tolist(), jj.tolist(), ss.tolist())})
    return out


def test_faiss_backend_gives_the_numpy_pairs():
    pytest.importorskip("faiss")
    a, b = _clustered(300), _clustered(170, seed=1)
    for other in (None, b):
        want = _pair_set(pairs_above(a, other, 0.5, block_size=64))
        got = _pair_set(pairs_above(a, other, 0.5, block_size=64, backend="faiss"))
        assert set(got) == set(want) and want
        assert all(abs(got[k] - want[k]) < 1e-5 for k in want)
        assert all(i < j for i, j in got) or other is not None
    rows = [row(f"q{i}", "x" * (i % 13)) for i in range(len(a))]
    (k_faiss, r_faiss), (k_numpy, r_numpy) = near_dedup(rows, a, 0.8, 64, backend="faiss"), near_dedup(rows, a, 0.8, 64)
    assert k_faiss == k_numpy and r_numpy
    assert [(r["index"], r["duplicate_of"]) for r in r_faiss] == [(r["index"], r["duplicate_of"]) for r in r_numpy]


def test_faiss_ivf_backend_is_exact_below_its_size_and_close_above(monkeypatch):
    pytest.importorskip("faiss")
    from platypus_utils import embeddings

    a = _clustered(4000, dim=32, seed=2)
    want = _pair_set(pairs_above(a, None, 0.8, block_size=512))
    rows = [row(f"q{i}", "x" * (i % 13)) for i in range(len(a))]
    (k_ivf, r_ivf), (k_numpy, r_numpy) = (
        near_dedup(rows, a, 0.8, 512, backend="faiss_ivf"),
        near_dedup(rows, a, 0.8, 512),
    )
    assert k_ivf == k_numpy and [(r["index"], r["duplicate_of"]) for r in r_ivf] == [  # exact below its size
        (r["index"], r["duplicate_of"]) for r in r_numpy
    ]
    monkeypatch.setattr(embeddings, "IVF_MIN_ROWS", 1000)
    monkeypatch.setattr(embeddings, "IVF_NPROBE", 2)  # few lists probed, so that some pairs can be missed
    got = _pair_set(pairs_above(a, None, 0.8, block_size=512, backend="faiss_ivf"))
    assert set(got) <= set(want) and all(i < j for i, j in got)  # each pair once, at its exact cosine
    assert all(abs(got[k] - want[k]) < 1e-5 for k in got)
    assert 0.9 * len(want) <= len(got) and len(want) >= 500


def test_unknown_backend_and_missing_faiss_are_clear(monkeypatch):
    a = _clustered(8)
    with pytest.raises(ValueError, match="backend 'annoy'"):
        list(pairs_above(a, None, 0.5, backend="annoy"))
    import builtins

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("no faiss")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        list(pairs_above(a, None, 0.5, backend="faiss"))


def test_near_dedup_random_clusters_order_independent():
    emb = _clustered(200, dim=16, seed=3)
    rows = [row(f"q{i}", "y" * (i * 7 % 23)) for i in range(len(emb))]
    kept, removed = near_dedup(rows, emb, 0.8, block_size=32)
    assert removed and len(kept) + len(removed) == len(rows)
    for r in removed:  # the row it duplicated is kept and at least as verbose
        assert r["duplicate_of"] in kept and len(rows[r["duplicate_of"]]["output"]) >= len(rows[r["index"]]["output"])
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(len(rows))
        k2, _ = near_dedup([rows[i] for i in perm], emb[perm], 0.8, block_size=32)
        assert sorted(int(perm[i]) for i in k2) == kept


# ---------------------------------------------------------------- the embedding cache
class CountingModel:
    """Stands in for a SentenceTransformer: vectors from a hash of the text, and a record of what it encoded."""

    def __init__(self):
        self.seen: list[str] = []

    def encode(self, texts, **kwargs):
        self.seen += list(texts)
        vectors = [np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(8) for t in texts]
        return np.stack(vectors).astype(np.float32)


def test_embedder_encodes_only_new_text(tmp_path):
    from platypus_utils.embeddings import Embedder

    first = Embedder("embedded:all-minilm-l6-v2", tmp_path, backend="torch")  # the stand-in is encode()'d
    first._model = CountingModel()
    v1 = first.encode(["alpha", "beta", "alpha"])
    assert sorted(first._model.seen) == ["alpha", "beta"] and first.stats == {"cached": 1, "encoded": 2}
    # a new process: reads the cache from disk
    second = Embedder("embedded:all-minilm-l6-v2", tmp_path, backend="torch")
    second._model = CountingModel()
    v2 = second.encode(["alpha", "beta", "alpha"])
    assert second._model.seen == [] and second.stats == {"cached": 3, "encoded": 0}
    assert np.array_equal(v1, v2)
    second.encode(["beta", "gamma"])
    assert second._model.seen == ["gamma"]


# ---------------------------------------------------------------- weights
def test_apply_weights_is_seeded_and_order_independent():
    from platypus_utils.curate import apply_weights

    rows = [row(f"q{i}", "o", src="a" if i < 10 else "b") for i in range(16)]
    group = [0 if i < 10 else 1 for i in range(16)]
    final, removed = apply_weights(rows, list(range(16)), group, {0: 0.5, 1: 1.5}, seed=1)
    assert sum(g == 0 for g in (group[i] for i in final)) == 5 and len(removed) == 5
    assert sum(group[i] == 1 for i in final) == 9  # 6 rows, 3 of them twice
    assert final == sorted(final)  # input order, copies adjacent
    assert final == apply_weights(rows, list(range(16)), group, {0: 0.5, 1: 1.5}, seed=1)[0]
    assert final != apply_weights(rows, list(range(16)), group, {0: 0.5, 1: 1.5}, seed=2)[0]
    perm = list(reversed(range(16)))
    again, _ = apply_weights([rows[i] for i in perm], list(range(16)), [group[i] for i in perm], {0: 0.5, 1: 1.5}, 1)
    assert sorted(perm[i] for i in again) == final
    assert apply_weights(rows, list(range(16)), group, {0: 2.0}, 1)[0].count(3) == 2


# ---------------------------------------------------------------- the stage on small fixtures
import json  # noqa: E402
import re  # noqa: E402
import zlib  # noqa: E402

import pytest  # noqa: E402

from platypus_utils import curate  # noqa: E402


class BagOfWordsEmbedder:
    """Stands in for the embedding model in stage tests: rewordings that share most words are near-duplicates."""

    def __init__(self, *args, **kwargs):
        self.stats = {"cached": 0, "encoded": 0}

    def encode(self, texts, desc=""):
        out = np.zeros((len(texts), 256), dtype=np.float32)
        for k, t in enumerate(texts):
            for w in re.findall(r"\w+", normalise_text(t)):
                out[k, zlib.crc32(w.encode()) % 256] += 1
        self.stats["encoded"] += len(texts)
        return normalise(out + 1e-6)


def _jsonl(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


@pytest.fixture
def fixture_sources(tmp_path):
    a = _jsonl(
        tmp_path / "alpha.jsonl",
        [
            row("What is the boiling point of water at sea level?", "100 degrees Celsius.", src="alpha"),
            row(
                "what is the boiling point of water  at sea level?",
                "It boils at 100 degrees Celsius at sea level.",
                src="alpha",
            ),  # exact duplicate after normalising, longer output: kept instead
            row("Name the largest planet in the solar system.", "Jupiter.", src="alpha"),
            "{not json",
            {"instruction": "Q", "input": 3, "output": "A"},
            {"instruction": "", "input": "", "output": "A"},
        ]
        + [
            row(q, a, src="alpha")
            for q, a in [
                ("Define kinetic energy.", "Energy of motion, one half m v squared."),
                ("Who proposed the theory of general relativity?", "Albert Einstein."),
                ("Convert 3 kilometres to metres.", "3000 metres."),
                ("Why is the sky blue?", "Rayleigh scattering of sunlight."),
                ("List three prime numbers.", "2, 3 and 5."),
                ("What does DNA encode?", "Genetic instructions for proteins."),
            ]
        ],
    )
    b = _jsonl(
        tmp_path / "beta.jsonl",
        [
            row("Name the largest planet in our solar system, please.", "Jupiter is the largest planet.", src="beta"),
            row(
                "Explain photosynthesis in one sentence.",
                "Plants turn light, water and CO2 into sugar and oxygen.",
                src="beta",
            ),
        ],
    )
    return a, b


def _profile(make_profile, a, b, **curate_extra):
    sources = [{"name": "jsonl", "path": str(a)}, {"name": "jsonl", "path": str(b)}, {"name": "reclor_local"}]
    return make_profile(curate={"sources": sources, **curate_extra})


def test_stage_counts_every_row_and_rebuilds_byte_identical(make_profile, fixture_sources, monkeypatch):
    monkeypatch.setattr(curate, "Embedder", BagOfWordsEmbedder)
    a, b = fixture_sources
    profile = _profile(make_profile, a, b)
    report = curate.run_curate(profile)
    per = report["per_source"]
    assert per["alpha"]["exact_dup"] == 1 and per["alpha"]["kept"] >= 7
    assert per["alpha"]["malformed"] == 3 and per["alpha"]["loaded"] == 12
    assert report["skipped_by_reason"]["alpha"] == {
        "empty_field:instruction": 1,
        "malformed_json": 1,
        "non_string_field:input": 1,
    }
    assert report["skipped_by_reason"]["reclor_local"] == {"unknown_source": 1}  # counted; the run went on
    assert per["beta"]["near_dup"] + per["alpha"]["near_dup"] == 1  # the two "largest planet" rows
    for s, c in per.items():  # nothing dropped without being counted
        assert (
            c["loaded"]
            - c["malformed"]
            - c["filtered"]
            - c["exact_dup"]
            - c["near_dup"]
            - c["undersampled"]
            + c["oversampled"]
            == c["kept"]
        ), s
    out = profile.run_dir("01_curate")
    curated = [json.loads(x) for x in (out / "curated.jsonl").read_text().splitlines()]
    assert "It boils at 100 degrees Celsius at sea level." in [r["output"] for r in curated]
    assert "Jupiter is the largest planet." in [r["output"] for r in curated]  # the more verbose of the pair
    removed = [json.loads(x) for x in (out / "removed.jsonl").read_text().splitlines()]
    assert {r["reason"] for r in removed} == {"exact_duplicate", "near_duplicate"}
    first = (out / "curated.jsonl").read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    curate.run_curate(profile)
    assert (out / "curated.jsonl").read_bytes() == first
    assert json.loads((out / "manifest.json").read_text())["outputs"] == manifest["outputs"]

    swapped = make_profile(
        curate={"sources": [{"name": "jsonl", "path": str(b)}, {"name": "jsonl", "path": str(a)}]},
        paths={"runs_dir": str(out.parent.parent.parent / "runs2")},
    )
    curate.run_curate(swapped)
    again = [json.loads(x) for x in (swapped.run_dir("01_curate") / "curated.jsonl").read_text().splitlines()]
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert sorted(map(key, again)) == sorted(map(key, curated))  # same rows whatever the source order


def test_stage_skips_a_lone_surrogate_and_a_non_utf8_line_naming_file_and_line(
    make_profile, fixture_sources, monkeypatch, tmp_path, caplog
):
    """Issue 21, items 6 and 9: a row holding "\\ud800" (valid JSON, not UTF-8-encodable) and a line that
    is not UTF-8 are each skipped and counted with file and line; the stage runs and writes valid UTF-8."""
    monkeypatch.setattr(curate, "Embedder", BagOfWordsEmbedder)
    a, b = fixture_sources
    gamma = tmp_path / "gamma.jsonl"
    good = json.dumps(row("Describe a lone surrogate.", "Half of a UTF-16 pair, alone.", src="gamma"))
    gamma.write_bytes(
        good.encode()
        + b'\n{"instruction": "Q \\ud800", "input": "", "output": "A", "data_source": "gamma"}\n'
        + b'{"instruction": "caf\xe9?", "input": "", "output": "A", "data_source": "gamma"}\n'
    )
    profile = make_profile(curate={"sources": [{"name": "jsonl", "path": str(p)} for p in (a, b, gamma)]})
    with caplog.at_level("WARNING", logger="platypus"):
        report = curate.run_curate(profile)
    assert report["skipped_by_reason"]["gamma"] == {"lone_surrogate": 1, "undecodable": 1}
    assert report["per_source"]["gamma"]["malformed"] == 2 and report["per_source"]["gamma"]["kept"] == 1
    assert f"{gamma}, line 2: lone_surrogate" in caplog.text and f"{gamma}, line 3: undecodable" in caplog.text
    curated = (profile.run_dir("01_curate") / "curated.jsonl").read_bytes().decode("utf-8")
    assert "Half of a UTF-16 pair, alone." in curated and "\\ud800" not in curated


def test_stage_weights_and_missing_file(make_profile, fixture_sources, monkeypatch, tmp_path):
    monkeypatch.setattr(curate, "Embedder", BagOfWordsEmbedder)
    a, b = fixture_sources
    profile = make_profile(
        curate={
            "sources": [
                {"name": "jsonl", "path": str(a), "weight": 0.5},
                {"name": "jsonl", "path": str(b), "weight": 2},
            ]
        }
    )
    report = curate.run_curate(profile)
    per = report["per_source"]
    after_dedup = per["alpha"]["kept"] + per["alpha"]["undersampled"]
    assert per["alpha"]["kept"] == round(after_dedup * 0.5) and per["alpha"]["undersampled"] > 0
    assert per["beta"]["oversampled"] == per["beta"]["kept"] // 2 > 0
    removed = [json.loads(x) for x in (profile.run_dir("01_curate") / "removed.jsonl").read_text().splitlines()]
    assert sum(r["reason"] == "undersampled" for r in removed) == per["alpha"]["undersampled"]
    assert report["weights"] == {"jsonl:alpha.jsonl": 0.5, "jsonl:beta.jsonl": 2.0}

    missing = make_profile(curate={"sources": [{"name": "jsonl", "path": str(tmp_path / "gone.jsonl")}]})
    with pytest.raises(FileNotFoundError, match="gone.jsonl"):
        curate.run_curate(missing)


def test_push_to_hub_is_off_by_default_and_uses_the_token(make_profile, fixture_sources, monkeypatch):
    import datasets

    monkeypatch.setattr(curate, "Embedder", BagOfWordsEmbedder)
    calls = []
    monkeypatch.setattr(
        datasets.Dataset, "push_to_hub", lambda self, repo, **kw: calls.append((repo, len(self), kw)), raising=True
    )
    a, b = fixture_sources
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    curate.run_curate(_profile(make_profile, a, b))
    assert calls == []
    pushing = _profile(make_profile, a, b, push_to_hub=True, push_to_hub_repo="me/rebuild")
    assert pushing.needs_hub()
    with pytest.raises(ValueError, match="HF_TOKEN"):
        curate.run_curate(pushing)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    report = curate.run_curate(pushing)
    assert calls == [("me/rebuild", report["totals"]["kept"], {"token": "hf_test", "private": True})]
    manifest = json.loads((pushing.run_dir("01_curate") / "manifest.json").read_text())
    assert manifest["metrics"]["pushed_to"] == "me/rebuild"


# ---------------------------------------------------------------- the stage's steps, one by one
def _rows_in_clusters(n=60, dim=16, seed=0):
    """Rows with embeddings in tight clusters, so pairs spread over 0.6-1.0."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n // 4, dim))
    vecs = centres[rng.integers(0, len(centres), n)] + rng.normal(scale=0.45, size=(n, dim))
    rows = [row(f"q{k}", "x" * int(rng.integers(1, 30)), src=f"s{k % 3}") for k in range(n)]
    return rows, normalise(vecs.astype(np.float32))


def test_choose_kept_from_lower_floor_equals_a_run_at_the_threshold():
    rows, emb = _rows_in_clusters()
    cands = [k for k in range(len(rows)) if k % 5]  # as after exact dedup: a subset, global indices
    pairs = curate.near_duplicate_pairs(rows, emb[cands], cands, 0.6)
    assert list(pairs.columns) == curate.PAIR_COLUMNS and (pairs["i"] < pairs["j"]).all()
    assert set(pairs["i"]) | set(pairs["j"]) <= set(cands)
    assert pairs["score"].is_monotonic_decreasing and pairs["score"].min() >= np.float32(0.6)
    first = pairs.iloc[0]
    assert first["text_i"] == rows[first["i"]]["instruction"] and first["source_j"] == rows[first["j"]]["data_source"]
    sub = [rows[k] for k in cands]
    sims = emb[cands] @ emb[cands].T
    for t in (0.6, 0.7, 0.75, 0.8, 0.9):
        kept, removed = curate.choose_kept(rows, pairs, t, cands)
        k2, r2 = near_dedup(sub, emb[cands], t)  # pairs computed at t itself, local indices
        assert kept == [cands[i] for i in k2], t
        assert [(r["index"], r["duplicate_of"], r["similarity"]) for r in removed] == [
            (cands[r["index"]], cands[r["duplicate_of"]], r["similarity"]) for r in r2
        ], t
        reference = []  # the rule itself, on the full matrix: most verbose first, drop what a kept row is close to
        for a in sorted(range(len(sub)), key=lambda a: (-len(sub[a]["output"]), curate.row_digest(sub[a]))):
            if not any(sims[a, b] >= np.float32(t) for b in reference):
                reference.append(a)
        assert kept == sorted(cands[a] for a in reference), t
    assert len(curate.choose_kept(rows, pairs, 0.7, cands)[1]) > len(curate.choose_kept(rows, pairs, 0.9, cands)[1])


def test_threshold_exploration_is_computed_from_the_pairs():
    rows, emb = _rows_in_clusters(seed=1)
    everything = list(range(len(rows)))
    pairs = curate.near_duplicate_pairs(rows, emb, everything, 0.65)
    effects = curate.threshold_effects(rows, pairs, everything, [0.7, 0.9], reference=0.8)
    assert list(effects["threshold"]) == [0.7, 0.8, 0.9] and effects["reference"].tolist() == [False, True, False]
    for e in effects.itertuples():
        kept, removed = curate.choose_kept(rows, pairs, e.threshold, everything)
        assert (e.rows_removed, e.rows_kept) == (len(removed), len(kept))
        assert e.pairs == int((pairs["score"] >= np.float32(e.threshold)).sum())
    assert effects.loc[1, "vs_reference"] == 0 and effects.loc[0, "vs_reference"] > 0 > effects.loc[2, "vs_reference"]
    extra = curate.removed_at_only(rows, pairs, everything, 0.7, 0.8)
    assert len(extra) >= effects.loc[0, "vs_reference"] and (extra["similarity"] < 0.8).all()
    dist = curate.similarity_distribution(pairs, 0.8)
    assert dist["pairs"].sum() == len(pairs)
    assert dist.loc[dist["at_or_above_threshold"], "pairs"].sum() == (pairs["score"] >= 0.8).sum()


def test_steps_show_rows_per_source_and_removals_side_by_side(make_profile, fixture_sources):
    a, b = fixture_sources
    loaded = curate.load_sources(_profile(make_profile, a, b))
    per = loaded.per_source()
    assert per.loc["alpha", "read"] == 12 and per.loc["alpha", "malformed"] == 3 and per.loc["alpha", "rows"] == 9
    assert per.loc["reclor_local", "rows"] == 0 and len(loaded.frame()) == len(loaded.rows) == 11
    assert loaded.frame()["config_source"].tolist().count("jsonl") == 11
    assert [Path(p).name for p in loaded.inputs] == ["alpha.jsonl", "beta.jsonl"]
    kept, removed = exact_dedup(loaded.rows)
    frame = curate.removed_frame(loaded.rows, removed)
    assert (
        frame.loc[0, "reason"] == "exact_duplicate"
        and frame.loc[0, "kept_output_chars"] > frame.loc[0, "removed_output_chars"]
    )


def test_save_refuses_hand_edited_outputs_unless_forced(make_profile, fixture_sources, monkeypatch):
    monkeypatch.setattr(curate, "Embedder", BagOfWordsEmbedder)
    a, b = fixture_sources
    profile = _profile(make_profile, a, b)
    curate.run_curate(profile)
    curate.run_curate(profile)  # unchanged outputs: saved again without force
    curated = profile.run_dir("01_curate") / "curated.jsonl"
    curated.write_text(curated.read_text() + "{}\n")
    with pytest.raises(curate.CurateError, match=r"curated.jsonl changed after the run.*--only 01 --force"):
        curate.run_curate(profile)
    assert curated.read_text().endswith("{}\n")  # nothing was overwritten
    curate.run_curate(profile, force=True)
    assert not curated.read_text().endswith("{}\n")


# ---------------------------------------------------------------- training_data: as_released
RELEASED_SHA = "0123456789abcdef0123456789abcdef01234567"  # a stand-in commit: no hub is asked
RELEASED_ROWS = [  # rows as the hub holds them, duplicates a rebuild would remove included
    row("What is the boiling point of water at sea level?", "100 degrees Celsius.", src="scienceqa"),
    row("what is the boiling point of water  at sea level?", "It boils at 100 C.", src="scienceqa"),  # exact dup
    row("Name the largest planet in the solar system.", "Jupiter.", src="airoboros"),
    row("Name the largest planet in our solar system, please.", "Jupiter is the largest.", src="guanaco"),  # near
    row("Explain photosynthesis in one sentence.", "Plants make sugar from light.", src="MATH/PRM-800K"),
]


@pytest.fixture
def released_hub(monkeypatch):
    """datasets.load_dataset stands in for the hub: Open-Platypus's train split is RELEASED_ROWS."""
    import datasets

    calls = []

    def load_dataset(hub_id, split=None, **kwargs):
        calls.append((hub_id, split, kwargs))
        assert hub_id == "garage-bAInd/Open-Platypus" and split == "train"
        return [dict(r) for r in RELEASED_ROWS]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_as_released_keeps_every_hub_row_through_01_and_02_and_says_so(make_profile, released_hub, monkeypatch):
    from platypus_utils.decontaminate import stage as decontaminate
    from platypus_utils.decontaminate import stage as decontaminate_stage

    def nothing_to_embed(*a, **k):
        raise AssertionError("as released: nothing is embedded and no benchmark is read")

    monkeypatch.setattr(curate, "Embedder", nothing_to_embed)
    monkeypatch.setattr(decontaminate_stage, "Embedder", nothing_to_embed)
    monkeypatch.setattr(decontaminate_stage, "load_benchmark_items", nothing_to_embed)
    source = {"name": "hub", "hub_id": f"garage-bAInd/Open-Platypus@{RELEASED_SHA}"}
    profile = make_profile(training_data="as_released", curate={"sources": [source]})
    report = curate.run_curate(profile)
    assert released_hub == [("garage-bAInd/Open-Platypus", "train", {"revision": RELEASED_SHA})]
    out = profile.run_dir("01_curate")
    curated = [json.loads(x) for x in (out / "curated.jsonl").read_text().splitlines()]
    assert curated == RELEASED_ROWS  # every row, in the hub's order, the duplicates included
    assert (out / "removed.jsonl").read_text() == ""
    assert report["as_released"] == "as released: 5 rows, 0 removed, near-dup pass not run"
    assert report["totals"]["exact_dup"] == report["totals"]["near_dup"] == 0 and report["totals"]["kept"] == 5
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["as_released"] == report["as_released"] and manifest["params"]["training_data"] == (
        "as_released"
    )
    assert manifest["hub_snapshots"] == {
        source["hub_id"]: {"repo_id": "garage-bAInd/Open-Platypus", "revision": RELEASED_SHA, "commit": RELEASED_SHA}
    }
    assert "as released: 5 rows" in (out / "README.md").read_text()

    summary = decontaminate.run_decontaminate(profile)
    dec = profile.run_dir("02_decontaminate")
    assert (dec / "clean.jsonl").read_bytes() == (out / "curated.jsonl").read_bytes()  # the rows unchanged
    assert (dec / "flagged_pairs.csv").read_text().strip() == ",".join(decontaminate.PAIR_COLUMNS)  # header only
    assert summary["removed_rows"] == 0 and summary["clean_rows"] == 5 and summary["benchmark_items"] == 0
    assert summary["leak_detection"] == decontaminate.AS_RELEASED_REASON and summary["detectors"] == []
    assert json.loads((dec / "manifest.json").read_text())["metrics"]["leak_detection"].startswith("skipped")
    assert (dec / "contamination_table.csv").is_file() and (dec / "decontamination_report.json").is_file()


def test_the_same_hub_rows_rebuilt_lose_their_duplicates(make_profile, released_hub, monkeypatch):
    """What as_released keeps is what a rebuild would remove: the exact and the near duplicate."""
    monkeypatch.setattr(curate, "Embedder", BagOfWordsEmbedder)
    profile = make_profile(curate={"sources": [{"name": "hub"}]})  # training_data: rebuild (the default)
    report = curate.run_curate(profile)
    assert report["training_data"] == "rebuild" and "as_released" not in report
    assert report["totals"]["exact_dup"] == 1 and report["totals"]["near_dup"] == 1 and report["totals"]["kept"] == 3
    assert released_hub == [("garage-bAInd/Open-Platypus", "train", {})]  # unpinned: no revision asked


def test_plan_counts_the_rows_stage_03_trains_on(make_profile):
    from platypus_utils import plan

    rebuilt = plan.data_assumptions(make_profile())
    released = plan.data_assumptions(make_profile(training_data="as_released"))
    eval_size = make_profile().finetune.eval_size
    assert released["train_examples"] == plan.OPEN_PLATYPUS_ROWS - eval_size  # 24,926 less the held-out rows
    assert released["examples_source"] == "Open-Platypus as released: 24,926 rows"
    assert rebuilt["train_examples"] == plan.OPEN_PLATYPUS_ROWS - plan.DECONTAMINATION_REMOVED - eval_size
