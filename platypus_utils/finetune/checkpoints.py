"""Resuming an interrupted stage 03 from its checkpoints.

Contract: checkpoints live in 03_finetune/checkpoints/ beside run_key.json (the params, the sha256
of clean.jsonl and the resolved base model they were trained with). They are resumed only while
that key matches (finetune.resume: auto); checkpoints of other params or data, incomplete ones
(no trainer_state.json: interrupted while saving) and, with resume: never, all of them are
removed. In a distributed run only the main process prepares the folder; the others wait for it.
The stage removes the folder once the adapter is saved (a finished run keeps only its adapter).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from accelerate import PartialState

from ..artifacts import write_json

log = logging.getLogger("platypus")
CHECKPOINTS = "checkpoints"
RUN_KEY = "run_key.json"  # beside the checkpoints: what they were trained on


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoints that finished saving (the trainer writes trainer_state.json last), oldest first."""
    found = []
    for p in Path(ckpt_dir).glob("checkpoint-*"):
        suffix = p.name.rsplit("-", 1)[-1]
        if p.is_dir() and suffix.isdigit() and (p / "trainer_state.json").is_file():
            found.append((int(suffix), p))
    return [p for _, p in sorted(found)]


def _stored_key(key_file: Path):
    try:
        return json.loads(key_file.read_text()) if key_file.is_file() else None
    except json.JSONDecodeError:
        return None


def prepare_checkpoint_dir(ckpt_dir: Path, run_key: dict, resume: str = "auto") -> Path | None:
    """Return the checkpoint to resume from, if one was trained with the same run key; checkpoints
    from other params or data are removed (resuming them would mix two runs), and so are all of
    them with resume="never"."""
    ckpt_dir = Path(ckpt_dir)
    key_file = ckpt_dir / RUN_KEY
    run_key = json.loads(json.dumps(run_key, sort_keys=True, default=str))  # compare as it reads back
    if resume == "never" and ckpt_dir.is_dir():
        log.warning("finetune: resume=never: removing the checkpoints in %s", ckpt_dir)
        shutil.rmtree(ckpt_dir)
    if ckpt_dir.is_dir() and _stored_key(key_file) != run_key:
        log.warning("finetune: removing checkpoints in %s (trained with other params or data)", ckpt_dir)
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    write_json(key_file, run_key)
    for p in ckpt_dir.glob("checkpoint-*"):
        if p.is_dir() and not (p / "trainer_state.json").is_file():
            log.warning("finetune: removing incomplete checkpoint %s", p)
            shutil.rmtree(p)
    complete = complete_checkpoints(ckpt_dir)
    return complete[-1] if complete else None


def resume_point(ckpt_dir: Path, run_key: dict, resume: str, is_main: bool) -> Path | None:
    """The checkpoint this process resumes from: the main process prepares the folder
    (`prepare_checkpoint_dir`), every other one waits for it and reads the same answer."""
    processes = PartialState()
    found = prepare_checkpoint_dir(ckpt_dir, run_key, resume) if is_main else None
    processes.wait_for_everyone()
    if not is_main:
        complete = complete_checkpoints(ckpt_dir)
        found = complete[-1] if complete else None
    return found


def checkpoint_step(checkpoint: Path | None) -> int:
    """The optimizer step a checkpoint-N folder was saved at (0: no checkpoint)."""
    return int(Path(checkpoint).name.rsplit("-", 1)[-1]) if checkpoint else 0
