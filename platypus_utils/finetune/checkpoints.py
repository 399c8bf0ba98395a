"""Resuming an interrupted stage 03 from its checkpoints, only while run_key.json (params, clean.jsonl's
sha256, the resolved base) matches; others, incomplete ones and, with resume: never, all are removed."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from transformers.trainer_utils import get_last_checkpoint

from accelerate import PartialState

from ..artifacts import read_record, write_json

log = logging.getLogger("platypus")
CHECKPOINTS = "checkpoints"
RUN_KEY = "run_key.json"  # beside the checkpoints: what they were trained on


def _last_checkpoint(ckpt_dir: Path) -> Path | None:
    last = get_last_checkpoint(ckpt_dir) if Path(ckpt_dir).is_dir() else None
    return Path(last) if last else None


def prepare_checkpoint_dir(ckpt_dir: Path, run_key: dict, resume: str = "auto") -> Path | None:
    """The checkpoint to resume from, if one was trained with the same run key."""
    ckpt_dir = Path(ckpt_dir)
    key_file = ckpt_dir / RUN_KEY
    run_key = json.loads(json.dumps(run_key, sort_keys=True, default=str))  # compare as it reads back
    if resume == "never" and ckpt_dir.is_dir():
        log.warning("finetune: resume=never: removing the checkpoints in %s", ckpt_dir)
        shutil.rmtree(ckpt_dir)
    if ckpt_dir.is_dir() and read_record(key_file)[0] != run_key:  # an unreadable key file matches nothing
        log.warning("finetune: removing checkpoints in %s (trained with other params or data)", ckpt_dir)
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    write_json(key_file, run_key)
    for p in ckpt_dir.glob("checkpoint-*"):
        if p.is_dir() and not (p / "trainer_state.json").is_file():  # the trainer writes it last
            log.warning("finetune: removing incomplete checkpoint %s", p)
            shutil.rmtree(p)
    return _last_checkpoint(ckpt_dir)


def resume_point(ckpt_dir: Path, run_key: dict, resume: str, is_main: bool) -> Path | None:
    """The checkpoint this process resumes from: the main process prepares the folder, the others wait."""
    found = prepare_checkpoint_dir(ckpt_dir, run_key, resume) if is_main else None
    PartialState().wait_for_everyone()
    return found if is_main else _last_checkpoint(ckpt_dir)
