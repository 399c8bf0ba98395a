"""lm-eval task functions for the Open LLM Leaderboard v1 benchmarks read from local files in
their ORIGINAL release formats (no hub access).

Each task YAML `include:`s the installed built-in lm-eval task and overrides only where the
data comes from:
  * `custom_dataset: !function utils.load_<benchmark>` reads the local files, row by row, in
    the original format (a malformed row raises BenchmarkFileError naming file, line and field);
  * `process_docs: !function utils.process_<benchmark>` converts those rows to the hub schema
    of the dataset the built-in task was written for (allenai/ai2_arc, Rowan/hellaswag,
    cais/mmlu, truthfulqa/truthful_qa), so the built-in doc_to_text / doc_to_choice /
    doc_to_target / process_results apply unchanged.

One parser per format: each row is checked by `platypus_utils.benchmarks`' parser of its format
(arc_item, hellaswag_item, read_mmlu_csv, truthfulqa_item - what stage 02 reads the test sets
with), so a file 02 accepts is one 05 accepts, row for row and in the same order (the doc_ids 02's
items carry). Here only what lm-eval's built-in tasks read beyond those items is checked (HellaSwag's
activity_label, TruthfulQA's mc2 labels) and the rows are mapped to the hub schema.

This file is copied next to the generated YAMLs (lm-eval resolves `!function utils.x` relative to
the YAML); `platypus_utils` is importable there because the package is installed (`pip install -e .`),
so the task folder also works with the plain `lm_eval` command line of the same environment.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets

from platypus_utils import benchmarks
from platypus_utils.artifacts import BadJsonLine, iter_jsonl

MMLU_COLUMNS = benchmarks.MMLU_COLUMNS
MMLU_LETTERS = ("A", "B", "C", "D")


class BenchmarkFileError(ValueError):
    """A benchmark file that is missing or malformed; the message names the file, row and field."""


def _path(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise BenchmarkFileError(f"{path}: benchmark data file not found")
    return path


def _reason(exc: Exception) -> str:
    """A parser's exception as words: a KeyError of one word names the missing field."""
    if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], str):
        return f"field {exc.args[0]!r} missing" if " " not in exc.args[0] else exc.args[0]
    return str(exc)


def _check(parse: Callable, obj: Any, doc_id: int, where: str, kind: str) -> None:
    """Run benchmarks' parser of the format on one row; its complaint becomes a BenchmarkFileError."""
    try:
        parse(obj, doc_id)
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as exc:
        raise BenchmarkFileError(f"{where}: not {kind} row ({_reason(exc)})") from None


def _jsonl(path: str | Path, parse: Callable, kind: str) -> list[dict]:
    """The non-blank lines of a JSON lines file (their order is lm-eval's doc_id), each checked by `parse`.
    Strict: a line artifacts.iter_jsonl cannot use is a BenchmarkFileError, as skipping it would shift
    the doc_ids 02 gave its items."""
    path = _path(path)
    rows = []
    try:
        for lineno, row in iter_jsonl(path, strict=True):
            if not isinstance(row, dict):
                raise BenchmarkFileError(f"{path}, line {lineno}: expected a JSON object")
            _check(parse, row, len(rows), f"{path}, line {lineno}", kind)
            row["_source"] = f"{path.name}:{lineno}"
            rows.append(row)
    except BadJsonLine as exc:
        raise BenchmarkFileError(str(exc)) from None
    return rows


def _dataset_dict(splits: dict[str, list[dict]]) -> datasets.DatasetDict:
    return datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()})


# ---------------------------------------------------------------- ARC (AI2 ARC JSON lines)
def load_arc(data_files: dict[str, str], **_metadata) -> datasets.DatasetDict:
    """ARC-Challenge-{Train,Dev,Test}.jsonl: id, question.stem, question.choices[{text,label}], answerKey."""
    splits = {}
    for split, file in data_files.items():
        rows = _jsonl(file, benchmarks.arc_item, "an ARC")
        # the same keys and types on every row (Dataset.from_list takes its columns from the first row)
        splits[split] = [
            {
                "id": str(r["id"]),
                "answerKey": str(r["answerKey"]),
                "_source": r["_source"],
                "question": {
                    "stem": r["question"]["stem"],
                    "choices": [{"text": str(c["text"]), "label": str(c["label"])} for c in r["question"]["choices"]],
                },
            }
            for r in rows
        ]
    return _dataset_dict(splits)


def arc_to_hub(doc: dict) -> dict:
    """Original ARC row -> allenai/ai2_arc row (id, question, choices{text,label}, answerKey)."""
    choices = doc["question"]["choices"]
    return {
        "id": doc["id"],
        "question": doc["question"]["stem"],
        "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]},
        "answerKey": doc["answerKey"],
    }


def process_arc(dataset: datasets.Dataset) -> datasets.Dataset:
    return datasets.Dataset.from_list([arc_to_hub(doc) for doc in dataset])


# ---------------------------------------------------------------- HellaSwag (JSON lines, ctx joined)
_HELLASWAG_KEYS = (
    "ind",
    "activity_label",
    "ctx",
    "ctx_a",
    "ctx_b",
    "endings",
    "label",
    "source_id",
    "split",
    "split_type",
    "_source",
)


def _hellaswag_row(obj: dict, doc_id: int) -> None:
    """benchmarks' HellaSwag parser, plus what lm-eval's query reads: activity_label, and ctx_a / ctx_b
    when a full original-release row has them (else they are recovered from ctx, see below)."""
    benchmarks.hellaswag_item(obj, doc_id)
    if not isinstance(obj.get("activity_label"), str):
        raise TypeError("field 'activity_label' should be a string (lm-eval's query starts with it)")
    if "ctx_a" in obj and "ctx_b" in obj and not (isinstance(obj["ctx_a"], str) and isinstance(obj["ctx_b"], str)):
        raise TypeError("fields 'ctx_a' and 'ctx_b' should be strings (a full original-release row)")


def load_hellaswag(data_files: dict[str, str], **_metadata) -> datasets.DatasetDict:
    """hellaswag_<split>.jsonl: ind, activity_label, ctx (ctx_a, ctx_b when present), endings (4), label (0-3)."""
    splits = {}
    for split, file in data_files.items():
        rows = _jsonl(file, _hellaswag_row, "a HellaSwag")
        for row in rows:
            row["label"] = int(row["label"])
            row["endings"] = [str(e) for e in row["endings"]]
        splits[split] = [{k: r.get(k) for k in _HELLASWAG_KEYS} for r in rows]  # same keys on every row
    return _dataset_dict(splits)


# The last sentence of an ActivityNet context is cut after a few words; that fragment is ctx_b
# (lower-case, e.g. "the lady"). It follows the last sentence end of ctx_a.
_LAST_SENTENCE = re.compile(r"^(?P<a>.*[.!?][\"')\]]*)\s+(?P<b>[^.!?]*[^.!?\s])$", re.DOTALL)


def split_hellaswag_context(ctx: str) -> tuple[str, str]:
    """Recover (ctx_a, ctx_b) from a context where they were joined as ctx_a + " " + ctx_b.

    lm-eval builds the query from ctx_a + " " + ctx_b.capitalize(), so the only place the
    split matters is ctx_b's capitalisation. ctx_b is taken to be a trailing fragment that
    starts lower-case after the last sentence end (ActivityNet items: "... the pole. the lady");
    otherwise ctx_b is "" (WikiHow items end with a full sentence, and their ctx_b is empty
    or starts with a capital, so .capitalize() leaves them unchanged apart from the rare
    upper-case letter later in the fragment - the one residual difference, documented).
    A context with no sentence end that starts lower-case is treated as all ctx_b.
    """
    m = _LAST_SENTENCE.match(ctx)
    if m and m.group("b")[:1].islower():
        return m.group("a"), m.group("b")
    if not m and ctx[:1].islower() and not re.search(r"[.!?]\s", ctx):
        return "", ctx
    return ctx, ""


def hellaswag_to_hub(doc: dict) -> dict:
    """Local HellaSwag row -> Rowan/hellaswag row (label as a string, as on the hub)."""
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
    # the built-in task's own process_docs (query / choices / gold) runs on the hub-schema rows; imported
    # here: lm_eval.tasks takes ~4 s to import (measured), and inside lm-eval it is loaded already
    from lm_eval.tasks.hellaswag.utils import process_docs as builtin_process_docs

    return builtin_process_docs(datasets.Dataset.from_list([hellaswag_to_hub(doc) for doc in dataset]))


# ---------------------------------------------------------------- MMLU (headerless CSV per subject)
def read_mmlu_csv(path: str | Path) -> list[dict]:
    """One `<subject>_<split>.csv` (question, A, B, C, D, answer letter; no header), read by benchmarks'
    parser: exact strings (pandas would turn "None" or "1.50" into other values), empty records skipped."""
    path = _path(path)
    try:
        records = benchmarks.read_mmlu_csv(path)
    except ValueError as exc:  # also UnicodeDecodeError
        raise BenchmarkFileError(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from None
    return [{**dict(zip(MMLU_COLUMNS, rec)), "_source": f"{path.name}:{k}"} for k, rec in enumerate(records)]


def load_mmlu(data_files: dict[str, str], subject: str, **_metadata) -> datasets.DatasetDict:
    splits = {}
    for split, file in data_files.items():
        rows = read_mmlu_csv(file)
        for row in rows:
            row["subject"] = subject
        splits[split] = rows
    return _dataset_dict(splits)


def mmlu_to_hub(doc: dict) -> dict:
    """Local MMLU row -> cais/mmlu row (question, subject, choices[4], answer index)."""
    return {
        "question": doc["question"],
        "subject": doc["subject"],
        "choices": [doc[letter] for letter in MMLU_LETTERS],
        "answer": MMLU_LETTERS.index(doc["answer"].strip()),
    }


def process_mmlu(dataset: datasets.Dataset) -> datasets.Dataset:
    return datasets.Dataset.from_list([mmlu_to_hub(doc) for doc in dataset])


# ---------------------------------------------------------------- TruthfulQA (mc_task.json)
def _truthfulqa_row(item: Any, doc_id: int) -> None:
    """benchmarks' TruthfulQA parser (question, mc1_targets with one correct answer), plus what the
    built-in mc2 task reads: mc2_targets mapping answers to 0/1, at least one 1."""
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
    """mc_task.json: a JSON list of {question, mc1_targets{answer: 0/1}, mc2_targets{answer: 0/1}}.

    Arrow cannot hold a mapping whose keys differ per row, so each targets mapping is kept
    as its JSON text (key order preserved); process_docs turns it into the hub's lists.
    """
    splits = {}
    for split, file in data_files.items():
        path = _path(file)
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise BenchmarkFileError(f"{path}: malformed JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(items, list):
            raise BenchmarkFileError(f"{path}: expected a JSON list of questions")
        rows = []
        for k, item in enumerate(items):
            _check(_truthfulqa_row, item, k, f"{path}, item {k}", "a TruthfulQA")
            rows.append(
                {
                    "question": item["question"],
                    "_source": f"{path.name}:{k}",
                    **{f: json.dumps(item[f], ensure_ascii=False) for f in ("mc1_targets", "mc2_targets")},
                }
            )
        splits[split] = rows
    return _dataset_dict(splits)


def truthfulqa_to_hub(doc: dict) -> dict:
    """Local TruthfulQA row -> truthfulqa/truthful_qa 'multiple_choice' row."""
    out = {"question": doc["question"]}
    for field in ("mc1_targets", "mc2_targets"):
        targets = doc[field] if isinstance(doc[field], dict) else json.loads(doc[field])
        out[field] = {"choices": list(targets.keys()), "labels": [int(v) for v in targets.values()]}
    return out


def process_truthfulqa(dataset: datasets.Dataset) -> datasets.Dataset:
    return datasets.Dataset.from_list([truthfulqa_to_hub(doc) for doc in dataset])
