"""lm-eval task functions for the Open LLM Leaderboard v1 benchmarks read from local files in
their ORIGINAL release formats (no hub access).

Each task YAML `include:`s the installed built-in lm-eval task and overrides only where the
data comes from:
  * `custom_dataset: !function utils.load_<benchmark>` reads the local files, row by row, in
    the original format (a malformed row raises an error naming file, line and field);
  * `process_docs: !function utils.process_<benchmark>` converts those rows to the hub schema
    of the dataset the built-in task was written for (allenai/ai2_arc, Rowan/hellaswag,
    cais/mmlu, truthfulqa/truthful_qa), so the built-in doc_to_text / doc_to_choice /
    doc_to_target / process_results apply unchanged.

This file is copied next to the generated YAMLs (lm-eval resolves `!function utils.x` relative
to the YAML), so it imports nothing from platypus_utils: the task folder also works with the
plain `lm_eval` command line.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import datasets

MMLU_COLUMNS = ("question", "A", "B", "C", "D", "answer")
MMLU_LETTERS = ("A", "B", "C", "D")


class BenchmarkFileError(ValueError):
    """A benchmark file that is missing or malformed; the message names the file, row and field."""


def _path(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise BenchmarkFileError(f"{path}: benchmark data file not found")
    return path


def _jsonl(path: str | Path) -> list[dict]:
    path = _path(path)
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BenchmarkFileError(f"{path}, line {lineno}: malformed JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise BenchmarkFileError(f"{path}, line {lineno}: expected a JSON object")
            row["_source"] = f"{path.name}:{lineno}"
            rows.append(row)
    return rows


def _require(row: dict, field: str, kind: type | tuple, where: str) -> Any:
    value = row
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            raise BenchmarkFileError(f"{where}: field '{field}' missing")
        value = value[part]
    if not isinstance(value, kind):
        raise BenchmarkFileError(f"{where}: field '{field}' should be {kind}, got {type(value).__name__}")
    return value


def _dataset_dict(splits: dict[str, list[dict]]) -> datasets.DatasetDict:
    return datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()})


def _line(file: str | Path, row: dict) -> str:
    return f"{file}, line {row['_source'].rsplit(':', 1)[1]}"


# ---------------------------------------------------------------- ARC (AI2 ARC JSON lines)
def load_arc(data_files: dict[str, str], **_metadata) -> datasets.DatasetDict:
    """ARC-Challenge-{Train,Dev,Test}.jsonl: id, question.stem, question.choices[{text,label}], answerKey."""
    splits = {}
    for split, file in data_files.items():
        rows = _jsonl(file)
        for row in rows:
            where = _line(file, row)
            _require(row, "id", str, where)
            _require(row, "question.stem", str, where)
            choices = _require(row, "question.choices", list, where)
            labels = []
            for k, choice in enumerate(choices):
                _require(choice, "text", str, f"{where}, question.choices[{k}]")
                labels.append(_require(choice, "label", str, f"{where}, question.choices[{k}]"))
            key = _require(row, "answerKey", str, where)
            if key not in labels:
                raise BenchmarkFileError(f"{where}: answerKey {key!r} is not one of the choice labels {labels}")
        # the same keys on every row (Dataset.from_list takes its columns from the first row)
        splits[split] = [{"id": r["id"], "answerKey": r["answerKey"], "_source": r["_source"],
                          "question": {"stem": r["question"]["stem"],
                                       "choices": [{"text": c["text"], "label": c["label"]} for c in r["question"]["choices"]]}}
                         for r in rows]
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
_HELLASWAG_KEYS = ("ind", "activity_label", "ctx", "ctx_a", "ctx_b", "endings", "label", "source_id", "split",
                   "split_type", "_source")


def load_hellaswag(data_files: dict[str, str], **_metadata) -> datasets.DatasetDict:
    """hellaswag_<split>.jsonl: ind, activity_label, ctx, endings (4), label (0-3)."""
    splits = {}
    for split, file in data_files.items():
        rows = _jsonl(file)
        for row in rows:
            where = _line(file, row)
            _require(row, "activity_label", str, where)
            if "ctx_a" in row and "ctx_b" in row:  # a full original-release row: keep its split of the context
                _require(row, "ctx_a", str, where)
                _require(row, "ctx_b", str, where)
            else:
                _require(row, "ctx", str, where)
            endings = _require(row, "endings", list, where)
            if not endings or not all(isinstance(e, str) for e in endings):
                raise BenchmarkFileError(f"{where}: field 'endings' should be a non-empty list of strings")
            label = row.get("label")
            if isinstance(label, str) and label.isdigit():
                label = int(label)
            if not isinstance(label, int) or not 0 <= label < len(endings):
                raise BenchmarkFileError(f"{where}: field 'label' should be an index into endings, got {row.get('label')!r}")
            row["label"] = label
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
    # the built-in task's own process_docs (query / choices / gold) runs on the hub-schema rows
    from lm_eval.tasks.hellaswag.utils import process_docs as builtin_process_docs

    return builtin_process_docs(datasets.Dataset.from_list([hellaswag_to_hub(doc) for doc in dataset]))


# ---------------------------------------------------------------- MMLU (headerless CSV per subject)
def read_mmlu_csv(path: str | Path) -> list[dict]:
    """One `<subject>_<split>.csv`: question, A, B, C, D, answer letter; no header. Every value
    is kept as the exact string in the file (pandas would turn "None" or "1.50" into other values)."""
    path = _path(path)
    rows = []
    with open(path, encoding="utf-8", newline="") as fh:
        for k, rec in enumerate(csv.reader(fh), 1):
            if not rec:
                continue
            if len(rec) != len(MMLU_COLUMNS):
                raise BenchmarkFileError(f"{path}, record {k}: expected {len(MMLU_COLUMNS)} fields "
                                         f"(question, A, B, C, D, answer), got {len(rec)}")
            row = dict(zip(MMLU_COLUMNS, rec))
            if row["answer"].strip() not in MMLU_LETTERS:
                raise BenchmarkFileError(f"{path}, record {k}: field 'answer' should be one of A-D, got {row['answer']!r}")
            row["_source"] = f"{path.name}:{k}"
            rows.append(row)
    return rows


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
            where = f"{path}, item {k}"
            if not isinstance(item, dict):
                raise BenchmarkFileError(f"{where}: expected a JSON object")
            _require(item, "question", str, where)
            row = {"question": item["question"], "_source": f"{path.name}:{k}"}
            for field in ("mc1_targets", "mc2_targets"):
                targets = _require(item, field, dict, where)
                if not targets or not all(v in (0, 1) for v in targets.values()):
                    raise BenchmarkFileError(f"{where}: field '{field}' should map answers to 0/1")
                if 1 not in targets.values():
                    raise BenchmarkFileError(f"{where}: field '{field}' has no correct (1) answer")
                row[field] = json.dumps(targets, ensure_ascii=False)
            rows.append(row)
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
