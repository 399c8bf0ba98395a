"""Stage 03's data: clean.jsonl rows -> Alpaca prompt/completion pairs -> token lengths and the held-out
split. Every row not trained on is counted per reason."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
from datasets import Dataset

log = logging.getLogger("platypus")

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
IGNORE = -100  # the label of a token left out of the loss


def format_alpaca_prompt(instruction: str, input: str = "") -> str:  # noqa: A002 - the dataset's field name
    """The Alpaca prompt the Platypus models were trained with, ending at "### Response:\\n"."""
    return (PROMPT_WITH_INPUT if input else PROMPT_NO_INPUT).format(instruction=instruction, input=input)


def _row_problem(row: dict, eos_token: str | None) -> str | None:
    instruction, output, inp = row.get("instruction"), row.get("output"), row.get("input", "")
    if not isinstance(instruction, str) or not instruction.strip():
        return "missing_instruction"
    if not isinstance(output, str) or not output.strip():
        return "missing_output"
    if inp is not None and not isinstance(inp, str):
        return "input_not_a_string"
    if eos_token and eos_token in output:
        return "output_contains_eos_text"
    return None


def select_rows(
    rows: Sequence[dict], source: str | Path = "<rows>", eos_token: str | None = None
) -> tuple[list[dict], list[int], dict[str, int]]:
    """(kept rows, their 1-based row numbers, count skipped per reason): a row needs a non-empty string
    `instruction` and `output`, and an output without the EOS text (it would read as a stop token)."""
    problems = [_row_problem(row, eos_token) for row in rows]
    kept_lines = [lineno for lineno, problem in enumerate(problems, 1) if problem is None]
    skipped = dict(Counter(p for p in problems if p))
    for reason, n in skipped.items():
        log.warning("%s: skipped %d row(s) with %s (first at row %d)", source, n, reason, problems.index(reason) + 1)
    return [rows[i - 1] for i in kept_lines], kept_lines, skipped


def to_prompt_completion(rows: Iterable[dict], eos_token: str) -> list[dict]:
    """prompt = Alpaca template; completion = output + EOS, appended here exactly once."""
    if not eos_token:
        raise ValueError("the tokenizer has no EOS token: the completions need one to teach the model to stop")
    return [
        {"prompt": format_alpaca_prompt(r["instruction"], r.get("input") or ""), "completion": r["output"] + eos_token}
        for r in rows
    ]


def records_dataset(records: Sequence[dict]) -> Dataset:
    """prompt/completion records as the `datasets.Dataset` TRL's SFTTrainer takes."""
    return Dataset.from_dict({k: [r[k] for r in records] for k in ("prompt", "completion")})


def token_lengths(tokenizer, records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, int]:
    """(prompt tokens, prompt+completion tokens) per record, tokenized as TRL does, and the number of
    records whose prompt is not a token prefix of prompt+completion (TRL starts the completion where
    they diverge)."""
    if not records:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), 0
    prompts = tokenizer([r["prompt"] for r in records])["input_ids"]
    full = tokenizer([r["prompt"] + r["completion"] for r in records])["input_ids"]
    prompt_len = [len(os.path.commonprefix([p, f])) for p, f in zip(prompts, full)]
    merges = sum(n < len(p) for n, p in zip(prompt_len, prompts))
    return np.array(prompt_len, dtype=np.int64), np.array([len(f) for f in full], dtype=np.int64), int(merges)


def tokenize_example(tokenizer, record: dict, cutoff_len: Optional[int] = None) -> dict:
    """One record as the trainer sees it: {input_ids, labels}, prompt labels IGNORE, cut as TRL's keep_start."""
    prompt = tokenizer(record["prompt"])["input_ids"]
    full = tokenizer(record["prompt"] + record["completion"])["input_ids"]
    start = len(os.path.commonprefix([prompt, full]))
    labels = [IGNORE] * start + list(full[start:])
    return {"input_ids": list(full[:cutoff_len]), "labels": labels[:cutoff_len]}


def example_frame(tokenizer, example: dict) -> pd.DataFrame:
    """A tokenized example, one line per token: its id, its text, its label, and whether it is in the loss."""
    ids, labels = list(example["input_ids"]), list(example["labels"])
    return pd.DataFrame(
        {
            "token_id": ids,
            "token": [tokenizer.decode([t]) for t in ids],
            "label": labels,
            "in_loss": [lab != IGNORE for lab in labels],
        }
    ).rename_axis("position")


def split_heldout(n: int, eval_size: int, seed: int, max_train: int | None = None) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices), drawn with `seed`; both sorted (the trainer shuffles, seeded)."""
    perm = np.random.default_rng(seed).permutation(n)
    return sorted(int(i) for i in perm[eval_size:][:max_train]), sorted(int(i) for i in perm[:eval_size])


def check_prepared_example(input_ids: Sequence[int], labels: Sequence[int], eos_id: int, truncated: bool) -> str | None:
    """Why a tokenized example breaks the recipe (prompt masked, labels = ids, EOS once at the end), or None."""
    if len(input_ids) != len(labels):
        return "labels and input_ids differ in length"
    start = next((i for i, lab in enumerate(labels) if lab != IGNORE), None)
    if start is None:
        return "no completion token"
    if any(lab != tok for lab, tok in zip(labels[start:], input_ids[start:])):
        return "a completion label differs from its token (masked inside the completion?)"
    if not truncated:
        if input_ids[-1] != eos_id:
            return "does not end with EOS"
        if list(input_ids[start:]).count(eos_id) != 1:
            return "EOS appears more than once in the completion (added twice?)"
    return None


@dataclass
class TrainingData:
    """clean.jsonl as trained on; `train_idx`, `eval_idx` index records, rows and row_lines (1-based)."""

    source: Path
    rows_read: int
    rows: list[dict]
    row_lines: list[int]
    skipped: dict[str, int]
    records: list[dict]  # prompt / completion per kept row
    prompt_len: np.ndarray  # tokens per prompt
    full_len: np.ndarray  # tokens per prompt + completion, before truncation
    boundary_merges: int
    train_idx: np.ndarray
    eval_idx: np.ndarray
    cutoff_len: int
    tokenizer: Any = None
    base_model: str = ""  # resolved
    source_sha256: str = ""

    @property
    def truncated(self) -> np.ndarray:
        """Per record: longer than cutoff_len (cut from the end by the trainer)."""
        return self.full_len > self.cutoff_len

    def example_tokens(self) -> np.ndarray:
        """Tokens of each training example after truncation (what the batch plan counts)."""
        return self.full_len[self.train_idx].clip(max=self.cutoff_len)

    def datasets(self) -> tuple[Dataset, Dataset]:
        """(train, held-out) prompt/completion datasets, in index order."""
        return tuple(records_dataset([self.records[i] for i in idx]) for idx in (self.train_idx, self.eval_idx))

    def skipped_frame(self) -> pd.DataFrame:
        """Rows read, skipped per reason, and the split of those kept."""
        counts = {
            "rows read": self.rows_read,
            **{f"skipped: {k}": v for k, v in sorted(self.skipped.items())},
            "train": len(self.train_idx),
            "held out": len(self.eval_idx),
            "train, truncated to cutoff_len": int(self.truncated[self.train_idx].sum()),
        }
        return pd.Series(counts, name="rows").to_frame()

    def frame(self) -> pd.DataFrame:
        """One line per kept row: its row number, split, the fields and its token counts."""
        split = np.full(len(self.records), "unused", dtype=object)
        split[self.train_idx], split[self.eval_idx] = "train", "held out"
        out = pd.DataFrame(self.rows, columns=["instruction", "input", "output", "data_source"])
        return out.assign(
            row=self.row_lines, split=split, prompt_tokens=self.prompt_len, tokens=self.full_len
        ).set_index("row")


def prepare_rows(
    raw: list[dict], source: Path, tokenizer, cutoff_len: int, eval_size: int, seed: int, max_train: int | None = None
) -> TrainingData:
    """Usable rows as records, their tokens and the held-out split; ValueError when too few rows."""
    if not raw:
        raise ValueError(f"{source}: no rows to fine-tune on (is the 02_decontaminate output empty?)")
    rows, row_lines, skipped = select_rows(raw, source, tokenizer.eos_token)
    records = to_prompt_completion(rows, tokenizer.eos_token)
    prompt_len, full_len, merges = token_lengths(tokenizer, records)
    too_long = prompt_len >= cutoff_len  # a prompt that fills cutoff_len leaves no completion token
    if too_long.any():
        skipped["prompt_longer_than_cutoff"] = n = int(too_long.sum())
        log.warning("%s: skipped %d row(s) whose prompt alone has >= cutoff_len=%d tokens", source, n, cutoff_len)
    usable = np.flatnonzero(~too_long)
    if len(usable) <= eval_size:
        raise ValueError(
            f"{source}: {len(usable)} usable rows (of {len(raw)}); need more than "
            f"finetune.eval_size={eval_size} to hold some out and still train"
        )
    train_pos, eval_pos = split_heldout(len(usable), eval_size, seed, max_train)
    counted, split = (prompt_len, full_len, merges), (usable[train_pos], usable[eval_pos])
    return TrainingData(
        Path(source), len(raw), rows, row_lines, skipped, records, *counted, *split, cutoff_len, tokenizer
    )
