"""Benchmark loaders: the original release formats, from small fixtures written here."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from platypus_utils.benchmarks import BENCHMARK_NAMES, benchmark_input_paths, load_benchmark, load_benchmarks

REAL_BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmarks"
ITEM_KEYS = ["benchmark", "subject", "item_id", "question", "choices", "answer"]


def _arc(i, stem, texts, key, labels="ABCD"):
    return {"id": f"ARC_{i}", "question": {"stem": stem, "choices": [{"text": t, "label": lab} for t, lab in zip(texts, labels)]},
            "answerKey": key}


@pytest.fixture
def bench(tmp_path) -> Path:
    root = tmp_path / "benchmarks"
    (root / "arc_challenge").mkdir(parents=True)
    (root / "arc_challenge" / "ARC-Challenge-Test.jsonl").write_text("".join(json.dumps(x) + "\n" for x in [
        _arc(1, "Which is a metal?", ["wood", "iron", "glass", "paper"], "B"),
        _arc(2, "Which layer is liquid?", ["crust", "mantle", "outer core"], "3", labels="123"),
    ]) + "\n")
    (root / "arc_challenge" / "ARC-Challenge-Train.jsonl").write_text(json.dumps(_arc(9, "train only", ["a", "b"], "A")) + "\n")
    (root / "hellaswag").mkdir()
    (root / "hellaswag" / "hellaswag_val.jsonl").write_text("".join(json.dumps(x) + "\n" for x in [
        {"ind": 4, "activity_label": "Cooking", "ctx": "A man flips a pancake. He", "endings": ["e0", "e1", "e2", "e3"], "label": 2},
        {"ind": 7, "activity_label": "Rowing", "ctx": "A woman rows. She", "endings": ["f0", "f1", "f2", "f3"], "label": "0"},
    ]))
    for split, subjects in (("test", {"astronomy": 3, "virology": 2}), ("dev", {"astronomy": 5})):
        (root / "mmlu" / split).mkdir(parents=True, exist_ok=True)
        for subject, n in subjects.items():
            lines = [f'"{subject} question {i}, with a comma",a{i},b{i},c{i},d{i},{"ABCD"[i % 4]}\n' for i in range(n)]
            (root / "mmlu" / split / f"{subject}_{split}.csv").write_text("".join(lines))
    (root / "truthfulqa").mkdir()
    (root / "truthfulqa" / "mc_task.json").write_text(json.dumps([
        {"question": "Q0?", "mc1_targets": {"true0": 1, "false0": 0}, "mc2_targets": {"true0": 1, "also": 1, "false0": 0}},
        {"question": "Q1?", "mc1_targets": {"no": 0, "yes": 1}, "mc2_targets": {"yes": 1, "no": 0}},
    ], indent=2))
    return root


def test_arc_items(bench):
    items = load_benchmark("arc_challenge", bench)
    assert all(list(it) == ITEM_KEYS for it in items)
    assert items[0] == {"benchmark": "arc_challenge", "subject": "", "item_id": "ARC_1", "question": "Which is a metal?",
                        "choices": ["wood", "iron", "glass", "paper"], "answer": "iron"}
    assert items[1]["answer"] == "outer core"  # numeric labels
    assert len(items) == 2  # only the Test split, blank lines ignored


def test_hellaswag_items(bench):
    items = load_benchmark("hellaswag", bench)
    assert [it["item_id"] for it in items] == ["hellaswag/4", "hellaswag/7"]
    assert items[0]["question"] == "A man flips a pancake. He" and items[0]["answer"] == "e2"
    assert items[1]["answer"] == "f0"  # a string label, as the hub release has


def test_mmlu_items_and_per_subject_limit(bench):
    items = load_benchmark("mmlu", bench)
    assert [it["item_id"] for it in items] == [
        "mmlu/astronomy/test/0", "mmlu/astronomy/test/1", "mmlu/astronomy/test/2", "mmlu/virology/test/0",
        "mmlu/virology/test/1"]
    assert items[1]["question"] == "astronomy question 1, with a comma"
    assert items[1]["choices"] == ["a1", "b1", "c1", "d1"] and items[1]["answer"] == "b1"
    assert items[3]["subject"] == "virology"
    limited = load_benchmark("mmlu", bench, limit=1)
    assert [it["item_id"] for it in limited] == ["mmlu/astronomy/test/0", "mmlu/virology/test/0"]


def test_truthfulqa_items(bench):
    items = load_benchmark("truthfulqa", bench)
    assert [it["item_id"] for it in items] == ["truthfulqa/0", "truthfulqa/1"]
    assert items[0]["choices"] == ["true0", "false0"] and items[0]["answer"] == "true0"
    assert items[1]["answer"] == "yes"


def test_limit_keeps_the_first_items(bench):
    assert [it["item_id"] for it in load_benchmark("arc_challenge", bench, limit=1)] == ["ARC_1"]
    assert [it["item_id"] for it in load_benchmark("hellaswag", bench, limit=1)] == ["hellaswag/4"]
    assert len(load_benchmark("truthfulqa", bench, limit=5)) == 2
    with pytest.raises(ValueError, match="limit"):
        load_benchmark("truthfulqa", bench, limit=0)


def test_load_benchmarks_and_input_paths(bench):
    loaded = load_benchmarks(BENCHMARK_NAMES, bench)
    assert {k: len(v) for k, v in loaded.items()} == {"arc_challenge": 2, "hellaswag": 2, "mmlu": 5, "truthfulqa": 2}
    assert all(p.exists() for name in BENCHMARK_NAMES for p in benchmark_input_paths(name, bench))
    assert benchmark_input_paths("mmlu", "hub") == []


# ---------------------------------------------------------------- errors
def test_unknown_benchmark(bench):
    with pytest.raises(ValueError, match="unknown benchmark 'gsm8k'; known: arc_challenge"):
        load_benchmark("gsm8k", bench)


@pytest.mark.parametrize("name, rel", [
    ("arc_challenge", "arc_challenge/ARC-Challenge-Test.jsonl"),
    ("hellaswag", "hellaswag/hellaswag_val.jsonl"),
    ("mmlu", "mmlu/test"),
    ("truthfulqa", "truthfulqa/mc_task.json"),
])
def test_missing_file_names_the_expected_path(bench, name, rel):
    target = bench / rel
    if target.is_dir():
        for p in target.iterdir():
            p.unlink()
        target.rmdir()
    else:
        target.unlink()
    with pytest.raises(FileNotFoundError, match=str(target).replace("\\", "\\\\")):
        load_benchmark(name, bench)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="benchmarks folder not found"):
        load_benchmark("mmlu", tmp_path / "nope")


def test_arc_malformed_line_names_file_and_line(bench):
    path = bench / "arc_challenge" / "ARC-Challenge-Test.jsonl"
    path.write_text(path.read_text() + "{broken\n")
    with pytest.raises(ValueError, match=r"ARC-Challenge-Test.jsonl, line 4: malformed JSON"):
        load_benchmark("arc_challenge", bench)


def test_arc_answer_key_not_a_label(bench):
    path = bench / "arc_challenge" / "ARC-Challenge-Test.jsonl"
    path.write_text(json.dumps(_arc(1, "Q", ["a", "b"], "E")) + "\n")
    with pytest.raises(ValueError, match=r"line 1: not an ARC item \(.*answerKey 'E'"):
        load_benchmark("arc_challenge", bench)


def test_hellaswag_label_out_of_range(bench):
    path = bench / "hellaswag" / "hellaswag_val.jsonl"
    path.write_text(json.dumps({"ind": 0, "ctx": "c", "endings": ["a", "b"], "label": 3}) + "\n")
    with pytest.raises(ValueError, match="hellaswag_val.jsonl, line 1: not a HellaSwag item"):
        load_benchmark("hellaswag", bench)


@pytest.mark.parametrize("bad_row", ["q,a,b,c,d\n", "q,a,b,c,d,F\n", ",a,b,c,d,A\n"])
def test_mmlu_malformed_row_names_file_and_row(bench, bad_row):
    path = bench / "mmlu" / "test" / "virology_test.csv"
    path.write_text(path.read_text() + bad_row)
    with pytest.raises(ValueError, match=r"virology_test.csv, row 3: expected question,A,B,C,D,answer letter"):
        load_benchmark("mmlu", bench)


@pytest.mark.parametrize("content, message", [
    ('{"question": "x"}', "expected a JSON list"),
    ('[{"question": "x", "mc1_targets": {"a": 1, "b": 1}, "mc2_targets": {}}]', r"item 0: .*2 correct answers"),
    ('[{"question": "x", "mc1_targets": {"a": 1}}]', r"item 0: .*mc2_targets"),
    ('[{"question": "x",', r"mc_task.json, line 1: malformed JSON"),
])
def test_truthfulqa_malformed(bench, content, message):
    (bench / "truthfulqa" / "mc_task.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        load_benchmark("truthfulqa", bench)


# ---------------------------------------------------------------- hub path (with a stand-in for datasets)
def test_hub_path_maps_the_hub_schemas(monkeypatch):
    tables = {
        "allenai/ai2_arc": [{"id": "Mercury_1", "question": "Q?", "choices": {"text": ["x", "y"], "label": ["A", "B"]},
                             "answerKey": "B"}],
        "Rowan/hellaswag": [{"ind": 24, "ctx": "He", "endings": ["a", "b", "c", "d"], "label": "3", "activity_label": "x"}],
        "cais/mmlu": [{"question": f"q{i}", "subject": s, "choices": ["a", "b", "c", "d"], "answer": i % 4}
                      for s in ("anatomy", "virology") for i in range(3)],
        "truthful_qa": [{"question": "Q", "mc1_targets": {"choices": ["no", "yes"], "labels": [0, 1]},
                         "mc2_targets": {"choices": ["yes"], "labels": [1]}}],
    }
    calls = []

    def load_dataset(hub_id, config=None, split=None):
        calls.append((hub_id, config, split))
        return tables[hub_id]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    arc = load_benchmark("arc_challenge", "hub")
    assert arc[0]["item_id"] == "Mercury_1" and arc[0]["answer"] == "y"
    assert load_benchmark("hellaswag", "hub")[0]["item_id"] == "hellaswag/24"
    mmlu = load_benchmark("mmlu", "hub", limit=2)
    assert [it["item_id"] for it in mmlu] == ["mmlu/anatomy/test/0", "mmlu/anatomy/test/1",
                                              "mmlu/virology/test/0", "mmlu/virology/test/1"]
    assert mmlu[1]["answer"] == "b"
    assert load_benchmark("truthfulqa", "hub")[0]["answer"] == "yes"
    assert calls == [("allenai/ai2_arc", "ARC-Challenge", "test"), ("Rowan/hellaswag", None, "validation"),
                     ("cais/mmlu", "all", "test"), ("truthful_qa", "multiple_choice", "validation")]


# ---------------------------------------------------------------- the real offline benchmarks (optional)
@pytest.mark.skipif(not REAL_BENCHMARKS.is_dir(), reason="../shared/data is not available")
def test_real_benchmarks_load_with_official_counts():
    expected = {"arc_challenge": 1172, "hellaswag": 10042, "mmlu": 14042, "truthfulqa": 817}
    for name, n in expected.items():
        items = load_benchmark(name, REAL_BENCHMARKS)
        assert len(items) == n, name
        assert len({it["item_id"] for it in items}) == n, name
        assert all(it["answer"] in it["choices"] and it["question"].strip() for it in items), name
    assert len({it["subject"] for it in load_benchmark("mmlu", REAL_BENCHMARKS, limit=1)}) == 57
