"""lm-eval task functions for the leaderboard benchmarks read from local files in their original formats.

Each task YAML `include:`s the built-in task and overrides only the data: `utils.load_<benchmark>` reads
the rows, each checked by `platypus_utils.benchmarks`' parser (stage 02's, so doc_ids agree; a bad row is
a BenchmarkFileError naming file, row and field), and `utils.process_<benchmark>` converts them to the hub
schema the built-in task was written for. Copied next to the generated YAMLs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets

from platypus_utils import benchmarks

MMLU_LETTERS = ("A", "B", "C", "D")


class BenchmarkFileError(ValueError):
    """A benchmark file that is missing or malformed; the message names the file, row and field."""


def _path(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise BenchmarkFileError(f"{path}: benchmark data file not found")
    return path


def _reason(exc: Exception) -> str:
    if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], str):
        return f"field {exc.args[0]!r} missing" if " " not in exc.args[0] else exc.args[0]
    return str(exc)


def _rows(path: str | Path, parse: Callable, kind: str) -> list[dict]:
    """The rows of a JSON lines file or a JSON list (.json), in order, each checked by `parse`; strict,
    as a skipped row would shift the doc_ids."""
    path = _path(path)
    try:
        numbered = list(benchmarks.numbered_records(path))
    except ValueError as exc:  # BadJsonLine, malformed JSON or no list: the message names file and line
        raise BenchmarkFileError(str(exc)) from None
    rows = []
    for where, number, row in numbered:
        try:
            if not isinstance(row, dict):
                raise TypeError("expected a JSON object")
            parse(row, len(rows))
        except (KeyError, TypeError, IndexError, ValueError, AttributeError) as exc:
            raise BenchmarkFileError(f"{path}, {where}: not {kind} row ({_reason(exc)})") from None
        rows.append({**row, "_source": f"{path.name}:{number}"})
    return rows


def _dataset_dict(load_split: Callable[[str], list[dict]], data_files: dict[str, str]) -> datasets.DatasetDict:
    return datasets.DatasetDict({s: datasets.Dataset.from_list(load_split(f)) for s, f in data_files.items()})


def load_arc(data_files: dict[str, str], **_metadata) -> datasets.DatasetDict:
    """ARC-Challenge-{Train,Dev,Test}.jsonl: id, question.stem, question.choices[{text,label}], answerKey."""

    def rows(file: str) -> list[dict]:  # the same keys and types on every row (Dataset.from_list)
        return [
            {
                "id": str(r["id"]),
                "answerKey": str(r["answerKey"]),
                "_source": r["_source"],
                "question": {
                    "stem": r["question"]["stem"],
                    "choices": [{"text": str(c["text"]), "label": str(c["label"])} for c in r["question"]["choices"]],
                },
            }
            for r in _rows(file, benchmarks.arc_item, "an ARC")
        ]

    return _dataset_dict(rows, data_files)


def arc_to_hub(doc: dict) -> dict:
    """Original ARC row -> allenai/ai2_arc row."""
    return {
        "id": doc["id"],
        "question": doc["question"]["stem"],
        "choices": {k: [c[k] for c in doc["question"]["choices"]] for k in ("text", "label")},
        "answerKey": doc["answerKey"],
    }


def process_arc(dataset: datasets.Dataset) -> datasets.Dataset:
    return datasets.Dataset.from_list([arc_to_hub(doc) for doc in dataset])


_HELLASWAG_KEYS = tuple("ind activity_label ctx ctx_a ctx_b endings label source_id split split_type _source".split())


def _hellaswag_row(obj: dict, doc_id: int) -> None:
    """benchmarks' HellaSwag parser, plus what lm-eval's query reads: activity_label, ctx_a / ctx_b if present."""
    benchmarks.hellaswag_item(obj, doc_id)
    if not isinstance(obj.get("activity_label"), str):
        raise TypeError("field 'activity_label' should be a string (lm-eval's query starts with it)")
    if "ctx_a" in obj and "ctx_b" in obj and not (isinstance(obj["ctx_a"], str) and isinstance(obj["ctx_b"], str)):
        raise TypeError("fields 'ctx_a' and 'ctx_b' should be strings (a full original-release row)")


def load_hellaswag(data_files: dict[str, str], **_metadata) -> datasets.DatasetDict:
    """hellaswag_<split>.jsonl: ind, activity_label, ctx (ctx_a, ctx_b when present), endings (4), label (0-3)."""

    def rows(file: str) -> list[dict]:  # the same keys on every row
        return [
            {k: r.get(k) for k in _HELLASWAG_KEYS}
            | {"label": int(r["label"]), "endings": [str(e) for e in r["endings"]]}
            for r in _rows(file, _hellaswag_row, "a HellaSwag")
        ]

    return _dataset_dict(rows, data_files)


# ActivityNet's ctx_b: a lower-case fragment ("the lady") after the last sentence end of ctx_a
_LAST_SENTENCE = re.compile(r"^(?P<a>.*[.!?][\"')\]]*)\s+(?P<b>[^.!?]*[^.!?\s])$", re.DOTALL)


def split_hellaswag_context(ctx: str) -> tuple[str, str]:
    """Recover (ctx_a, ctx_b) from ctx_a + " " + ctx_b (lm-eval's query capitalises ctx_b): ctx_b is a
    trailing lower-case fragment after the last sentence end, else ""; a lower-case context with no
    sentence end is all ctx_b."""
    m = _LAST_SENTENCE.match(ctx)
    if m and m.group("b")[:1].islower():
        return m.group("a"), m.group("b")
    if not m and ctx[:1].islower() and not re.search(r"[.!?]\s", ctx):
        return "", ctx
    return ctx, ""


def hellaswag_to_hub(doc: dict) -> dict:
    """Local HellaSwag row -> Rowan/hellaswag row (label a string, as on the hub)."""
    if doc.get("ctx_a") is not None and doc.get("ctx_b") is not None:
        ctx_a, ctx_b = doc["ctx_a"], doc["ctx_b"]
    else:
        ctx_a, ctx_b = split_hellaswag_context(doc["ctx"])
    return {
        "ind": doc.get("ind"),
        "activity_label": doc["activity_label"],
        "ctx_a": ctx_a,
        "ctx_b": ctx_b,
        "ctx": doc.get("ctx") or f"{ctx_a} {ctx_b}",
        "endings": list(doc["endings"]),
        "source_id": doc.get("source_id") or "",
        "split": doc.get("split") or "val",
        "split_type": doc.get("split_type") or "",
        "label": str(doc["label"]),
    }


def process_hellaswag(dataset: datasets.Dataset) -> datasets.Dataset:
    # the built-in process_docs runs on the hub-schema rows; lm_eval.tasks takes ~4 s to import
    from lm_eval.tasks.hellaswag.utils import process_docs as builtin_process_docs

    return builtin_process_docs(datasets.Dataset.from_list([hellaswag_to_hub(doc) for doc in dataset]))


def read_mmlu_csv(path: str | Path) -> list[dict]:
    """One headerless `<subject>_<split>.csv` read by benchmarks' parser (exact strings, empty records skipped)."""
    path = _path(path)
    try:
        records = benchmarks.read_mmlu_csv(path)
    except ValueError as exc:  # also UnicodeDecodeError
        raise BenchmarkFileError(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from None
    return [{**dict(zip(benchmarks.MMLU_COLUMNS, rec)), "_source": f"{path.name}:{k}"} for k, rec in enumerate(records)]


def load_mmlu(data_files: dict[str, str], subject: str, **_metadata) -> datasets.DatasetDict:
    return _dataset_dict(lambda file: [{**row, "subject": subject} for row in read_mmlu_csv(file)], data_files)


def mmlu_to_hub(doc: dict) -> dict:
    """Local MMLU row -> cais/mmlu row."""
    return {
        "question": doc["question"],
        "subject": doc["subject"],
        "choices": [doc[letter] for letter in MMLU_LETTERS],
        "answer": MMLU_LETTERS.index(doc["answer"].strip()),
    }


def process_mmlu(dataset: datasets.Dataset) -> datasets.Dataset:
    return datasets.Dataset.from_list([mmlu_to_hub(doc) for doc in dataset])


def _truthfulqa_row(item: Any, doc_id: int) -> None:
    """benchmarks' TruthfulQA parser, plus what mc2 reads: both targets map answers to 0/1, with a 1."""
    benchmarks.truthfulqa_item(item, doc_id)
    if not isinstance(item["question"], str):
        raise TypeError("field 'question' should be a string")
    for name in ("mc1_targets", "mc2_targets"):
        targets = item[name]
        if not targets or not all(v in (0, 1) for v in targets.values()):
            raise ValueError(f"field '{name}' should map answers to 0/1")
        if 1 not in targets.values():
            raise ValueError(f"field '{name}' has no correct (1) answer")


def load_truthfulqa(data_files: dict[str, str], **_metadata) -> datasets.DatasetDict:
    """mc_task.json: a JSON list of {question, mc1_targets, mc2_targets}; the targets kept as JSON text
    (Arrow cannot hold a mapping whose keys differ per row)."""

    def rows(file: str) -> list[dict]:
        return [
            {
                "question": item["question"],
                "_source": item["_source"],
                **{f: json.dumps(item[f], ensure_ascii=False) for f in ("mc1_targets", "mc2_targets")},
            }
            for item in _rows(file, _truthfulqa_row, "a TruthfulQA")
        ]

    return _dataset_dict(rows, data_files)


def truthfulqa_to_hub(doc: dict) -> dict:
    """Local TruthfulQA row (targets as JSON text) -> truthfulqa/truthful_qa 'multiple_choice' row."""
    targets = {f: json.loads(doc[f]) for f in ("mc1_targets", "mc2_targets")}
    return {"question": doc["question"]} | {
        f: {"choices": list(t), "labels": [int(v) for v in t.values()]} for f, t in targets.items()
    }


def process_truthfulqa(dataset: datasets.Dataset) -> datasets.Dataset:
    return datasets.Dataset.from_list([truthfulqa_to_hub(doc) for doc in dataset])
