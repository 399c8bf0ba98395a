"""Benchmark loaders: the original release formats, from small fixtures written here."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from platypus_utils.benchmarks import (
    BENCHMARK_NAMES,
    REGISTRY,
    benchmark_input_paths,
    load_benchmark,
    load_benchmarks,
    spec,
)

REAL_BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmarks"
ITEM_KEYS = ["benchmark", "subject", "item_id", "question", "choices", "answer", "lm_eval_task", "doc_id"]


def _arc(i, stem, texts, key, labels="ABCD"):
    return {
        "id": f"ARC_{i}",
        "question": {"stem": stem, "choices": [{"text": t, "label": lab} for t, lab in zip(texts, labels)]},
        "answerKey": key,
    }


@pytest.fixture
def bench(tmp_path) -> Path:
    root = tmp_path / "benchmarks"
    (root / "arc_challenge").mkdir(parents=True)
    (root / "arc_challenge" / "ARC-Challenge-Test.jsonl").write_text(
        "".join(
            json.dumps(x) + "\n"
            for x in [
                _arc(1, "Which is a metal?", ["wood", "iron", "glass", "paper"], "B"),
                _arc(2, "Which layer is liquid?", ["crust", "mantle", "outer core"], "3", labels="123"),
            ]
        )
        + "\n"
    )
    (root / "arc_challenge" / "ARC-Challenge-Train.jsonl").write_text(
        json.dumps(_arc(9, "train only", ["a", "b"], "A")) + "\n"
    )
    (root / "hellaswag").mkdir()
    (root / "hellaswag" / "hellaswag_val.jsonl").write_text(
        "".join(
            json.dumps(x) + "\n"
            for x in [
                {
                    "ind": 4,
                    "activity_label": "Cooking",
                    "ctx": "A man flips a pancake. He",
                    "endings": ["e0", "e1", "e2", "e3"],
                    "label": 2,
                },
                {
                    "ind": 7,
                    "activity_label": "Rowing",
                    "ctx": "A woman rows. She",
                    "endings": ["f0", "f1", "f2", "f3"],
                    "label": "0",
                },
            ]
        )
    )
    for split, subjects in (("test", {"astronomy": 3, "virology": 2}), ("dev", {"astronomy": 5})):
        (root / "mmlu" / split).mkdir(parents=True, exist_ok=True)
        for subject, n in subjects.items():
            lines = [f'"{subject} question {i}, with a comma",a{i},b{i},c{i},d{i},{"ABCD"[i % 4]}\n' for i in range(n)]
            (root / "mmlu" / split / f"{subject}_{split}.csv").write_text("".join(lines))
    (root / "truthfulqa").mkdir()
    (root / "truthfulqa" / "mc_task.json").write_text(
        json.dumps(
            [
                {
                    "question": "Q0?",
                    "mc1_targets": {"true0": 1, "false0": 0},
                    "mc2_targets": {"true0": 1, "also": 1, "false0": 0},
                },
                {"question": "Q1?", "mc1_targets": {"no": 0, "yes": 1}, "mc2_targets": {"yes": 1, "no": 0}},
            ],
            indent=2,
        )
    )
    return root


def test_arc_items(bench):
    items = load_benchmark("arc_challenge", bench)
    assert all(list(it) == ITEM_KEYS for it in items)
    assert items[0] == {
        "benchmark": "arc_challenge",
        "subject": "",
        "item_id": "ARC_1",
        "question": "Which is a metal?",
        "choices": ["wood", "iron", "glass", "paper"],
        "answer": "iron",
        "lm_eval_task": "arc_challenge",
        "doc_id": 0,
    }
    assert items[1]["answer"] == "outer core"  # numeric labels
    assert len(items) == 2  # only the Test split, blank lines ignored


def test_hellaswag_items(bench):
    items = load_benchmark("hellaswag", bench)
    assert [it["item_id"] for it in items] == ["hellaswag/4", "hellaswag/7"]
    assert [(it["lm_eval_task"], it["doc_id"]) for it in items] == [("hellaswag", 0), ("hellaswag", 1)]  # not ind
    assert items[0]["question"] == "A man flips a pancake. He" and items[0]["answer"] == "e2"
    assert items[1]["answer"] == "f0"  # a string label, as the hub release has


def test_mmlu_items_and_per_subject_limit(bench):
    items = load_benchmark("mmlu", bench)
    assert [it["item_id"] for it in items] == [
        "mmlu/astronomy/test/0",
        "mmlu/astronomy/test/1",
        "mmlu/astronomy/test/2",
        "mmlu/virology/test/0",
        "mmlu/virology/test/1",
    ]
    assert items[1]["question"] == "astronomy question 1, with a comma"
    assert items[1]["choices"] == ["a1", "b1", "c1", "d1"] and items[1]["answer"] == "b1"
    assert items[3]["subject"] == "virology"
    assert [(it["lm_eval_task"], it["doc_id"]) for it in items] == [
        ("mmlu_astronomy", 0),
        ("mmlu_astronomy", 1),
        ("mmlu_astronomy", 2),
        ("mmlu_virology", 0),
        ("mmlu_virology", 1),
    ]
    limited = load_benchmark("mmlu", bench, limit=1)
    assert [it["item_id"] for it in limited] == ["mmlu/astronomy/test/0", "mmlu/virology/test/0"]


def test_truthfulqa_items(bench):
    items = load_benchmark("truthfulqa", bench)
    assert [it["item_id"] for it in items] == ["truthfulqa/0", "truthfulqa/1"]
    assert items[0]["choices"] == ["true0", "false0"] and items[0]["answer"] == "true0"
    assert items[1]["answer"] == "yes"
    assert [(it["lm_eval_task"], it["doc_id"]) for it in items] == [("truthfulqa_mc2", 0), ("truthfulqa_mc2", 1)]
    assert load_benchmark("truthfulqa_mc2", bench) == items  # the leaderboard's name for it is accepted


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


@pytest.mark.parametrize(
    "name, rel",
    [
        ("arc_challenge", "arc_challenge/ARC-Challenge-Test.jsonl"),
        ("hellaswag", "hellaswag/hellaswag_val.jsonl"),
        ("mmlu", "mmlu/test"),
        ("truthfulqa", "truthfulqa/mc_task.json"),
    ],
)
def test_missing_file_names_the_expected_path(bench, name, rel):
    target = bench / rel
    if target.is_dir():
        for p in target.iterdir():
            p.unlink()
        target.rmdir()
    else:
        target.unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_benchmark(name, bench)
    message = str(err.value)
    assert str(target) in message and f"no {name} test set; expected {rel} there" in message
    assert spec(name).expected in message  # what the file should hold


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


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"question": "x"}', "expected a JSON list"),
        ('[{"question": "x", "mc1_targets": {"a": 1, "b": 1}, "mc2_targets": {}}]', r"item 0: .*2 correct answers"),
        ('[{"question": "x", "mc1_targets": {"a": 1}}]', r"item 0: .*mc2_targets"),
        ('[{"question": "x",', r"mc_task.json, line 1: malformed JSON"),
    ],
)
def test_truthfulqa_malformed(bench, content, message):
    (bench / "truthfulqa" / "mc_task.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        load_benchmark("truthfulqa", bench)


# ---------------------------------------------------------------- hub path (with a stand-in for datasets)
def test_hub_path_maps_the_hub_schemas(monkeypatch):
    tables = {
        "allenai/ai2_arc": [
            {
                "id": "Mercury_1",
                "question": "Q?",
                "choices": {"text": ["x", "y"], "label": ["A", "B"]},
                "answerKey": "B",
            }
        ],
        "Rowan/hellaswag": [
            {"ind": 24, "ctx": "He", "endings": ["a", "b", "c", "d"], "label": "3", "activity_label": "x"}
        ],
        "cais/mmlu": [
            {"question": f"q{i}", "subject": s, "choices": ["a", "b", "c", "d"], "answer": i % 4}
            for s in ("anatomy", "virology")
            for i in range(3)
        ],
        "truthful_qa": [
            {
                "question": "Q",
                "mc1_targets": {"choices": ["no", "yes"], "labels": [0, 1]},
                "mc2_targets": {"choices": ["yes"], "labels": [1]},
            }
        ],
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
    assert [it["item_id"] for it in mmlu] == [
        "mmlu/anatomy/test/0",
        "mmlu/anatomy/test/1",
        "mmlu/virology/test/0",
        "mmlu/virology/test/1",
    ]
    assert mmlu[1]["answer"] == "b"
    assert [(it["lm_eval_task"], it["doc_id"]) for it in mmlu] == [
        ("mmlu_anatomy", 0),
        ("mmlu_anatomy", 1),
        ("mmlu_virology", 0),
        ("mmlu_virology", 1),
    ]
    assert load_benchmark("truthfulqa", "hub")[0]["answer"] == "yes"
    assert calls == [
        ("allenai/ai2_arc", "ARC-Challenge", "test"),
        ("Rowan/hellaswag", None, "validation"),
        ("cais/mmlu", "all", "test"),
        ("truthful_qa", "multiple_choice", "validation"),
    ]


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


# ---------------------------------------------------------------- ids as lm-eval's sample logs name them
def _task_docs(name: str, root: Path) -> dict[str, list[str]]:
    """lm-eval task -> the question text of each doc, in doc_id order, as stage 05's local tasks read them
    (lm_eval_tasks/utils.py: the loader, then process_docs)."""
    from platypus_utils.lm_eval_tasks import utils

    files = {"test": str(root / REGISTRY[name].test_path)}
    if name == "arc_challenge":
        return {"arc_challenge": [d["question"] for d in utils.process_arc(utils.load_arc(files)["test"])]}
    if name == "hellaswag":  # the built-in process_docs rewrites ctx into "query"; ctx is kept
        return {"hellaswag": [d["ctx"] for d in utils.process_hellaswag(utils.load_hellaswag(files)["test"])]}
    if name == "truthfulqa":
        return {
            "truthfulqa_mc2": [d["question"] for d in utils.process_truthfulqa(utils.load_truthfulqa(files)["test"])]
        }
    out = {}
    for path in sorted((root / "mmlu" / "test").glob("*_test.csv")):
        subject = path.name[: -len("_test.csv")]
        docs = utils.process_mmlu(utils.load_mmlu({"test": str(path)}, subject)["test"])
        out[f"mmlu_{subject}"] = [d["question"] for d in docs]
    return out


def _assert_ids_join(items: list[dict], docs: dict[str, list[str]]) -> None:
    assert sum(len(v) for v in docs.values()) == len(items)
    for it in items:
        assert docs[it["lm_eval_task"]][it["doc_id"]] == it["question"], it["item_id"]


@pytest.mark.parametrize("name", BENCHMARK_NAMES)
def test_doc_ids_are_lm_evals_on_the_demo_benchmarks(tmp_path, name):
    """(lm_eval_task, doc_id) of every demo item points at the same question in stage 05's task data."""
    pytest.importorskip("lm_eval")
    from platypus_utils.demo_data import write_demo_benchmarks

    root = write_demo_benchmarks(tmp_path / "demo")
    _assert_ids_join(load_benchmark(name, root), _task_docs(name, root))


def test_doc_ids_skip_blank_lines_and_records_as_lm_eval_does(bench):
    pytest.importorskip("lm_eval")
    arc = bench / "arc_challenge" / "ARC-Challenge-Test.jsonl"
    arc.write_text("\n" + arc.read_text().replace("\n", "\n\n"))
    mmlu = bench / "mmlu" / "test" / "astronomy_test.csv"
    mmlu.write_text("\n" + mmlu.read_text().replace("\n", "\n\n", 1))
    for name in ("arc_challenge", "mmlu"):
        items = load_benchmark(name, bench)
        _assert_ids_join(items, _task_docs(name, bench))
    assert [it["doc_id"] for it in load_benchmark("arc_challenge", bench)] == [0, 1]


@pytest.mark.skipif(not REAL_BENCHMARKS.is_dir(), reason="../shared/data is not available")
@pytest.mark.parametrize("name", BENCHMARK_NAMES)
def test_doc_ids_join_on_the_real_benchmarks(name):
    pytest.importorskip("lm_eval")
    _assert_ids_join(load_benchmark(name, REAL_BENCHMARKS), _task_docs(name, REAL_BENCHMARKS))
