"""Benchmark test items for the contamination check (stage 02), from the Open LLM Leaderboard v1 test sets.

`load_benchmark(name, benchmarks_dir)` reads one benchmark in its original release format (the layout
of ../shared/data/benchmarks, which the demo benchmarks copy) and returns items

    {"benchmark", "subject", "item_id", "question", "choices", "answer"}

from the split the leaderboard evaluates: ARC-Challenge Test, HellaSwag validation, MMLU test,
TruthfulQA (all 817 questions, mc_task.json). `answer` is the text of the correct choice.

Item ids are stable across runs and readers:
  ARC            its own id (e.g. "Mercury_7175875")
  HellaSwag      "hellaswag/<ind>"
  MMLU           "mmlu/<subject>/test/<row>"   (row: 0-based line of <subject>_test.csv)
  TruthfulQA     "truthfulqa/<index>"          (0-based position in mc_task.json)

The question text for HellaSwag is its context `ctx` (what a leaked training row would copy); for the
others it is the question stem.

`limit` keeps the first N items of a benchmark in file order; for MMLU it keeps the first N items of
*each subject*, so a small limit still covers every subject (MMLU's 57 subjects differ a lot, and a
global first-N would only test abstract_algebra).

`benchmarks_dir="hub"` loads the same splits from the Hugging Face hub (allenai/ai2_arc, Rowan/hellaswag,
cais/mmlu, truthful_qa); that path needs network access and is not exercised by the tests.
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Callable, Optional

log = logging.getLogger("platypus")

BENCHMARK_NAMES = ("arc_challenge", "hellaswag", "mmlu", "truthfulqa")

HUB_IDS = {
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "test"),
    "hellaswag": ("Rowan/hellaswag", None, "validation"),
    "mmlu": ("cais/mmlu", "all", "test"),
    "truthfulqa": ("truthful_qa", "multiple_choice", "validation"),
}

# Relative paths of the evaluated split inside a benchmarks folder.
TEST_FILES = {
    "arc_challenge": "arc_challenge/ARC-Challenge-Test.jsonl",
    "hellaswag": "hellaswag/hellaswag_val.jsonl",
    "mmlu": "mmlu/test",
    "truthfulqa": "truthfulqa/mc_task.json",
}

_LETTERS = "ABCDE"


def _item(benchmark: str, item_id: str, question: str, choices: list[str], answer: str, subject: str = "") -> dict:
    return {"benchmark": benchmark, "subject": subject, "item_id": item_id, "question": question,
            "choices": choices, "answer": answer}


def _need(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path}: benchmark file not found")
    return path


def _jsonl(path: Path):
    """Yield (line number, object) for each non-empty line; a bad line is a ValueError naming it."""
    with open(_need(path), encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {lineno}: malformed JSON ({exc.msg})") from None


# ---------------------------------------------------------------- original formats
def _arc_item(obj: dict) -> dict:
    q = obj["question"]
    choices = q["choices"]
    texts = [str(c["text"]) for c in choices]
    labels = [str(c["label"]) for c in choices]
    key = str(obj["answerKey"])
    if key not in labels:
        raise KeyError(f"answerKey {key!r} is not one of the choice labels {labels}")
    if not isinstance(q["stem"], str) or not q["stem"].strip():
        raise KeyError("empty question.stem")
    return _item("arc_challenge", str(obj["id"]), q["stem"], texts, texts[labels.index(key)])


def _load_arc(root: Path) -> list[dict]:
    path = root / TEST_FILES["arc_challenge"]
    items = []
    for lineno, obj in _jsonl(path):
        try:
            items.append(_arc_item(obj))
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"{path}, line {lineno}: not an ARC item ({exc})") from None
    return items


def _hellaswag_item(obj: dict) -> dict:
    endings = [str(e) for e in obj["endings"]]
    label = int(obj["label"])  # the hub release stores it as a string
    if not 0 <= label < len(endings):
        raise IndexError(f"label {label} out of range for {len(endings)} endings")
    ctx = obj["ctx"]
    if not isinstance(ctx, str) or not ctx.strip():
        raise KeyError("empty ctx")
    return _item("hellaswag", f"hellaswag/{obj['ind']}", ctx, endings, endings[label])


def _load_hellaswag(root: Path) -> list[dict]:
    path = root / TEST_FILES["hellaswag"]
    items = []
    for lineno, obj in _jsonl(path):
        try:
            items.append(_hellaswag_item(obj))
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise ValueError(f"{path}, line {lineno}: not a HellaSwag item ({exc})") from None
    return items


def _mmlu_subject_items(path: Path, subject: str, limit: Optional[int]) -> list[dict]:
    items = []
    with open(path, encoding="utf-8", newline="") as fh:
        for row_index, row in enumerate(csv.reader(fh)):
            if limit is not None and row_index >= limit:
                break
            if len(row) != 6 or row[5].strip() not in _LETTERS[:4] or not row[0].strip():
                raise ValueError(f"{path}, row {row_index + 1}: expected question,A,B,C,D,answer letter; got {len(row)} fields")
            choices = row[1:5]
            items.append(_item("mmlu", f"mmlu/{subject}/test/{row_index}", row[0], choices,
                               choices[_LETTERS.index(row[5].strip())], subject))
    return items


def _load_mmlu(root: Path, limit: Optional[int]) -> list[dict]:
    folder = _need(root / TEST_FILES["mmlu"])
    files = sorted(folder.glob("*_test.csv"))
    if not files:
        raise FileNotFoundError(f"{folder}: no <subject>_test.csv files")
    items = []
    for path in files:
        items.extend(_mmlu_subject_items(path, path.name[: -len("_test.csv")], limit))
    return items


def _truthfulqa_item(index: int, obj: dict) -> dict:
    targets = obj["mc1_targets"]
    if not isinstance(targets, dict) or not targets:
        raise KeyError("mc1_targets must be a non-empty mapping answer -> 0/1")
    choices = list(targets)
    correct = [c for c, v in targets.items() if v == 1]
    if len(correct) != 1:
        raise KeyError(f"mc1_targets has {len(correct)} correct answers, expected 1")
    if not isinstance(obj.get("mc2_targets"), dict):
        raise KeyError("missing mc2_targets")
    return _item("truthfulqa", f"truthfulqa/{index}", obj["question"], choices, correct[0])


def _load_truthfulqa(root: Path) -> list[dict]:
    path = _need(root / TEST_FILES["truthfulqa"])
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}, line {exc.lineno}: malformed JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of questions, got {type(data).__name__}")
    items = []
    for i, obj in enumerate(data):
        try:
            items.append(_truthfulqa_item(i, obj))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}, item {i}: not a TruthfulQA item ({exc})") from None
    return items


# ---------------------------------------------------------------- hub (needs network)
def _load_hub(name: str, limit: Optional[int]) -> list[dict]:
    from datasets import load_dataset

    hub_id, config, split = HUB_IDS[name]
    ds = load_dataset(hub_id, config, split=split) if config else load_dataset(hub_id, split=split)
    items: list[dict] = []
    if name == "arc_challenge":
        for row in ds:
            texts, labels = list(row["choices"]["text"]), [str(x) for x in row["choices"]["label"]]
            items.append(_item(name, row["id"], row["question"], texts, texts[labels.index(str(row["answerKey"]))]))
    elif name == "hellaswag":
        for row in ds:
            items.append(_hellaswag_item({"ind": row["ind"], "ctx": row["ctx"], "endings": row["endings"],
                                          "label": row["label"]}))
    elif name == "mmlu":
        per_subject: dict[str, int] = {}
        for row in ds:
            subject = row["subject"]
            n = per_subject.get(subject, 0)
            per_subject[subject] = n + 1
            if limit is not None and n >= limit:
                continue
            choices = list(row["choices"])
            items.append(_item(name, f"mmlu/{subject}/test/{n}", row["question"], choices, choices[int(row["answer"])], subject))
        return items
    elif name == "truthfulqa":
        for i, row in enumerate(ds):
            mc1 = row["mc1_targets"]
            choices = list(mc1["choices"])
            items.append(_item(name, f"truthfulqa/{i}", row["question"], choices, choices[list(mc1["labels"]).index(1)]))
    return items if limit is None else items[:limit]


_LOADERS: dict[str, Callable[[Path], list[dict]]] = {
    "arc_challenge": _load_arc,
    "hellaswag": _load_hellaswag,
    "truthfulqa": _load_truthfulqa,
}


def load_benchmark(name: str, benchmarks_dir: str | Path, limit: Optional[int] = None) -> list[dict]:
    """Test items of one benchmark. See the module docstring for the item fields and ids.

    benchmarks_dir: a folder in the original layout (arc_challenge/, hellaswag/, mmlu/, truthfulqa/),
    or "hub". A missing file is a FileNotFoundError naming the expected path; a malformed line or row is a
    ValueError naming the file and the line/row.
    """
    if name not in BENCHMARK_NAMES:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARK_NAMES)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if str(benchmarks_dir) == "hub":
        items = _load_hub(name, limit)
    else:
        root = Path(benchmarks_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: benchmarks folder not found")
        if name == "mmlu":
            items = _load_mmlu(root, limit)
        else:
            items = _LOADERS[name](root)
            if limit is not None:
                items = items[:limit]
    log.info("benchmark %s: %d test items from %s", name, len(items), benchmarks_dir)
    return items


def load_benchmarks(names, benchmarks_dir: str | Path, limit: Optional[int] = None) -> dict[str, list[dict]]:
    """load_benchmark for each name, in the given order."""
    return {name: load_benchmark(name, benchmarks_dir, limit) for name in names}


def benchmark_input_paths(name: str, benchmarks_dir: str | Path) -> list[Path]:
    """The files load_benchmark reads for `name` (for a stage manifest's inputs); [] for the hub."""
    if str(benchmarks_dir) == "hub":
        return []
    return [Path(benchmarks_dir) / TEST_FILES[name]]
