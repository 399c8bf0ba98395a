"""The Open LLM Leaderboard v1 test sets: one registry, and one parser per release format (component layer).

`load_benchmark(name, benchmarks_dir, limit)` reads the split the leaderboard evaluates (ARC-Challenge
Test, HellaSwag validation, MMLU test, TruthfulQA mc_task.json) as items {benchmark, subject, item_id,
question, choices, answer (the correct choice's text), lm_eval_task, doc_id}; HellaSwag's question is its
`ctx`. item_id: ARC's own id, "hellaswag/<ind>", "mmlu/<subject>/test/<k>", "truthfulqa/<k>". doc_id is
the item's 0-based position in the split lm-eval evaluates (non-blank lines, non-empty CSV records, list
index), so it joins exactly with lm-eval's sample logs (strip 05's `platypus_` task prefix). `limit` keeps
the first N items (MMLU: of each subject). A missing file is a FileNotFoundError saying what was
expected; a malformed row a ValueError naming file and line. `benchmarks_dir="hub"` reads the hub.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .artifacts import iter_json_list, iter_jsonl
from .published import BENCHMARKS, TEST_SET_NAMES, TEST_SETS

log = logging.getLogger("platypus")

_LETTERS = "ABCDE"
MMLU_COLUMNS = ("question", "A", "B", "C", "D", "answer")


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str  # the profile's key (decontaminate.benchmarks)
    leaderboard_name: str  # the key 05_evaluate and 06_analysis report it under
    lm_eval_task: str  # lm-eval's built-in task; "{subject}" filled in for MMLU
    test_path: str  # the evaluated split, relative to a benchmarks folder
    expected: str  # what that file or folder holds, for error messages
    hub: tuple[str, Optional[str], str]  # (dataset id, config, split)
    full_view: str  # what stage 02's "full" view adds to the question: choices | gold_ending | answer

    def task(self, subject: str = "") -> str:
        return self.lm_eval_task.format(subject=subject)


# the rest of each benchmark's spec, by its leaderboard name (published.BENCHMARKS names them, in order)
_SPECS = {
    "arc_challenge": (
        "arc_challenge",
        "arc_challenge/ARC-Challenge-Test.jsonl",
        "the ARC-Challenge Test split, JSON lines with id, question.stem, question.choices, answerKey",
        ("allenai/ai2_arc", "ARC-Challenge", "test"),
        "choices",
    ),
    "hellaswag": (
        "hellaswag",
        "hellaswag/hellaswag_val.jsonl",
        "the HellaSwag validation split, JSON lines with ind, ctx, endings, label",
        ("Rowan/hellaswag", None, "validation"),
        "gold_ending",
    ),
    "mmlu": (
        "mmlu_{subject}",
        "mmlu/test",
        "a folder of <subject>_test.csv files (question, A, B, C, D, answer letter; no header)",
        ("cais/mmlu", "all", "test"),
        "choices",
    ),
    "truthfulqa_mc2": (
        "truthfulqa_mc2",
        "truthfulqa/mc_task.json",
        "TruthfulQA's mc_task.json, a JSON list of {question, mc1_targets, mc2_targets}",
        ("truthful_qa", "multiple_choice", "validation"),
        "answer",
    ),
}
REGISTRY: dict[str, BenchmarkSpec] = {
    name: BenchmarkSpec(name, b, *_SPECS[b]) for name, b in zip(TEST_SETS, BENCHMARKS)
}
BENCHMARK_NAMES = TEST_SETS


def spec(name: str) -> BenchmarkSpec:
    """The registry entry for a profile key or a leaderboard name (truthfulqa_mc2)."""
    key = TEST_SET_NAMES.get(name, name)  # a leaderboard name -> its test set
    if key not in REGISTRY:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARK_NAMES)}")
    return REGISTRY[key]


def _item(
    benchmark: str, item_id: str, question: str, choices: list[str], answer: str, doc_id: int, subject: str = ""
) -> dict:
    return {
        "benchmark": benchmark,
        "subject": subject,
        "item_id": item_id,
        "question": question,
        "choices": choices,
        "answer": answer,
        "lm_eval_task": REGISTRY[benchmark].task(subject),
        "doc_id": doc_id,
    }


def expected_path(name: str, benchmarks_dir: str | Path) -> Path:
    """The file (MMLU: folder) of `name`'s evaluated split; FileNotFoundError saying what was expected."""
    s = spec(name)
    path = Path(benchmarks_dir) / s.test_path
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: benchmark file not found - {benchmarks_dir} has no {s.name} test set; "
            f"expected {s.test_path} there ({s.expected})"
        )
    return path


def arc_item(obj: dict, doc_id: int) -> dict:
    """An AI2 ARC row (id, question.stem, question.choices[{text, label}], answerKey) as an item."""
    q = obj["question"]
    texts = [str(c["text"]) for c in q["choices"]]
    labels = [str(c["label"]) for c in q["choices"]]
    key = str(obj["answerKey"])
    if key not in labels:
        raise KeyError(f"answerKey {key!r} is not one of the choice labels {labels}")
    if not isinstance(q["stem"], str) or not q["stem"].strip():
        raise KeyError("empty question.stem")
    return _item("arc_challenge", str(obj["id"]), q["stem"], texts, texts[labels.index(key)], doc_id)


def hellaswag_item(obj: dict, doc_id: int) -> dict:
    """A HellaSwag row (ind, ctx, endings, label; label may be a string, as on the hub) as an item."""
    endings = [str(e) for e in obj["endings"]]
    label = int(obj["label"])
    if not 0 <= label < len(endings):
        raise IndexError(f"label {label} out of range for {len(endings)} endings")
    ctx = obj["ctx"]
    if not isinstance(ctx, str) or not ctx.strip():
        raise KeyError("empty ctx")
    return _item("hellaswag", f"hellaswag/{obj['ind']}", ctx, endings, endings[label], doc_id)


def read_mmlu_csv(path: Path) -> list[list[str]]:
    """The records of one headerless `<subject>_<split>.csv`, exact strings; empty records skipped (as lm-eval)."""
    records = []
    with open(path, encoding="utf-8", newline="") as fh:
        for k, row in enumerate(csv.reader(fh), 1):
            if not row:
                continue
            if len(row) != len(MMLU_COLUMNS) or row[5].strip() not in _LETTERS[:4] or not row[0].strip():
                raise ValueError(f"{path}, row {k}: expected question,A,B,C,D,answer letter; got {len(row)} fields")
            records.append(row)
    return records


def mmlu_item(record: list[str], subject: str, doc_id: int) -> dict:
    choices = record[1:5]
    answer = choices[_LETTERS.index(record[5].strip())]
    return _item("mmlu", f"mmlu/{subject}/test/{doc_id}", record[0], choices, answer, doc_id, subject)


def truthfulqa_item(obj: dict, doc_id: int) -> dict:
    """One mc_task.json entry as an item; choices and answer from mc1_targets (one correct answer)."""
    targets = obj["mc1_targets"]
    if not isinstance(targets, dict) or not targets:
        raise KeyError("mc1_targets must be a non-empty mapping answer -> 0/1")
    correct = [c for c, v in targets.items() if v == 1]
    if len(correct) != 1:
        raise KeyError(f"mc1_targets has {len(correct)} correct answers, expected 1")
    if not isinstance(obj.get("mc2_targets"), dict):
        raise KeyError("missing mc2_targets")
    return _item("truthfulqa", f"truthfulqa/{doc_id}", obj["question"], list(targets), correct[0], doc_id)


_PARSERS = {  # the formats read from a file of items (MMLU is a folder of CSVs)
    "arc_challenge": (arc_item, "an ARC"),
    "hellaswag": (hellaswag_item, "a HellaSwag"),
    "truthfulqa": (truthfulqa_item, "a TruthfulQA"),
}


def numbered_records(path: Path) -> Iterator[tuple[str, int, Any]]:
    """(where, number, value) of each record of a JSON lines file (ARC, HellaSwag) or a JSON list (.json,
    TruthfulQA), in order; strict (a ValueError naming file and line), as a skipped row would shift every doc_id."""
    if path.suffix == ".json":
        return ((f"item {k}", k, obj) for k, obj in iter_json_list(path, strict=True, start=0, what="questions"))
    return ((f"line {n}", n, obj) for n, obj in iter_jsonl(path, strict=True))


def _load_file(name: str, root: Path) -> list[dict]:
    """Items of a JSON lines or JSON list test set (numbered_records)."""
    path = expected_path(name, root)
    parse, kind = _PARSERS[name]
    items = []
    for where, _, obj in numbered_records(path):
        try:
            items.append(parse(obj, len(items)))
        except (KeyError, TypeError, IndexError, ValueError, AttributeError) as exc:
            raise ValueError(f"{path}, {where}: not {kind} item ({exc})") from None
    return items


def _load_mmlu(root: Path, limit: Optional[int]) -> list[dict]:
    folder = expected_path("mmlu", root)
    files = sorted(folder.glob("*_test.csv"))
    if not files:
        raise FileNotFoundError(f"{folder}: no <subject>_test.csv files ({REGISTRY['mmlu'].expected})")
    items = []
    for path in files:
        subject = path.name[: -len("_test.csv")]
        items += [mmlu_item(rec, subject, k) for k, rec in enumerate(read_mmlu_csv(path)[:limit])]
    return items


def _original_row(name: str, row: dict) -> dict:
    """A hub row in the shape of the original release, for the parsers above."""
    if name == "arc_challenge":
        choices = [{"text": t, "label": lab} for t, lab in zip(row["choices"]["text"], row["choices"]["label"])]
        return {
            "id": row["id"],
            "answerKey": row["answerKey"],
            "question": {"stem": row["question"], "choices": choices},
        }
    if name == "truthfulqa":
        targets = ("mc1_targets", "mc2_targets")
        return {"question": row["question"], **{t: dict(zip(row[t]["choices"], row[t]["labels"])) for t in targets}}
    return row


def _load_hub(name: str, limit: Optional[int]) -> list[dict]:
    from datasets import load_dataset  # ~1 s to import

    hub_id, config, split = REGISTRY[name].hub
    ds = load_dataset(hub_id, config, split=split)
    if name != "mmlu":
        return [_PARSERS[name][0](_original_row(name, row), k) for k, row in enumerate(ds)][:limit]
    per_subject: dict[str, int] = {}  # doc_id counts within a subject, as lm-eval's per-subject tasks do
    items = []
    for row in ds:
        k = per_subject[row["subject"]] = per_subject.get(row["subject"], -1) + 1
        if limit is None or k < limit:
            items.append(mmlu_item([row["question"], *row["choices"], _LETTERS[int(row["answer"])]], row["subject"], k))
    return items


def load_benchmark(name: str, benchmarks_dir: str | Path, limit: Optional[int] = None) -> list[dict]:
    """Test items of one benchmark from a folder in the original layout, or "hub"."""
    name = spec(name).name
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if str(benchmarks_dir) == "hub":
        items = _load_hub(name, limit)
    elif not Path(benchmarks_dir).is_dir():
        raise FileNotFoundError(f"{benchmarks_dir}: benchmarks folder not found")
    elif name == "mmlu":
        items = _load_mmlu(Path(benchmarks_dir), limit)
    else:
        items = _load_file(name, Path(benchmarks_dir))[:limit]
    log.info("benchmark %s: %d test items from %s", name, len(items), benchmarks_dir)
    return items


def load_benchmarks(names, benchmarks_dir: str | Path, limit: Optional[int] = None) -> dict[str, list[dict]]:
    return {name: load_benchmark(name, benchmarks_dir, limit) for name in names}


def benchmark_input_paths(name: str, benchmarks_dir: str | Path) -> list[Path]:
    """The files load_benchmark reads for `name` (for a stage manifest's inputs); [] for the hub."""
    return [] if str(benchmarks_dir) == "hub" else [Path(benchmarks_dir) / spec(name).test_path]
