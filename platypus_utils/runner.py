"""Run a profile: execute the stage notebooks in order with papermill.

Executed notebooks go to reports/<profile>/notebooks/. A stage is skipped when its last
manifest records the same parameters and its recorded inputs and outputs still hash the
same (so an upstream rerun that changes nothing does not force downstream work).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from .artifacts import read_manifest, sha256_path, write_json
from .config import STAGES, Profile, ProfileError, load_profile

log = logging.getLogger("platypus")
NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


class StageFailed(RuntimeError):
    pass


def parse_stage(name: str) -> str:
    """'03', '3', '03_finetune' or 'finetune' -> '03_finetune'."""
    key = name.strip().lower()
    for stage in STAGES:
        num, section = stage.split("_", 1)
        if key in (stage, section, num, num.lstrip("0")):
            return stage
    raise ProfileError(f"unknown stage '{name}': choose from {', '.join(STAGES)}")


def select_stages(only: list[str] | None = None, start: str | None = None) -> list[str]:
    if only:
        wanted = {parse_stage(s) for s in only}
        return [s for s in STAGES if s in wanted]
    if start:
        first = parse_stage(start)
        return list(STAGES[STAGES.index(first):])
    return list(STAGES)


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def up_to_date(profile: Profile, stage: str) -> tuple[bool, str]:
    """Whether `stage` can be skipped, and why (or why not)."""
    fresh, why = artifacts_up_to_date(profile, stage)
    if fresh and not executed_notebook(profile, stage).is_file():
        return False, "executed notebook missing"
    return fresh, why


def artifacts_up_to_date(profile: Profile, stage: str) -> tuple[bool, str]:
    """Whether the stage's last manifest matches the params, inputs and outputs (notebook aside)."""
    manifest = read_manifest(profile.run_dir(stage))
    if not manifest or manifest.get("status") != "ok":
        return False, "no successful run recorded"
    if manifest.get("params") != _jsonable(profile.fingerprint_params(stage)):
        return False, "parameters changed"
    for kind in ("inputs", "outputs"):
        for path, digest in manifest.get(kind, {}).items():
            if not Path(path).exists():
                return False, f"{kind[:-1]} missing: {path}"
            if sha256_path(path) != digest:
                return False, f"{kind[:-1]} changed: {path}"
    return True, "inputs, parameters and outputs unchanged"


def executed_notebook(profile: Profile, stage: str) -> Path:
    return profile.report_dir("notebooks") / f"{stage}.ipynb"


def execute_stage(profile: Profile, stage: str, overrides: dict, verbose: bool = False) -> float:
    import papermill as pm

    src = NOTEBOOK_DIR / f"{stage}.ipynb"
    if not src.is_file():
        raise StageFailed(f"{src}: stage notebook not found")
    dst = executed_notebook(profile, stage)
    dst.parent.mkdir(parents=True, exist_ok=True)
    params = {
        "profile_path": profile.source_file,
        "overrides": overrides,
        "stage_params": profile.stage_params(stage),
    }
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(str(src), str(dst), parameters=params, kernel_name="python3",
                            cwd=str(NOTEBOOK_DIR), progress_bar=True, log_output=verbose)
    except pm.PapermillExecutionError as exc:
        raise StageFailed(
            f"stage {stage} failed in {dst}, cell {exc.cell_index} (execution count {exc.exec_count}): "
            f"{exc.ename}: {exc.evalue}") from None
    return time.perf_counter() - t0


def launch_distributed_finetune(profile: Profile, overrides: dict, force: bool = False, say=None) -> float | None:
    """finetune.num_gpus > 1: train stage 03 under `accelerate launch` (one process per GPU) before
    its notebook runs; the notebook then shows the results. Skipped when a finished run matches."""
    import shlex
    import subprocess

    from .config import project_root_for
    from .finetune import STAGE, accelerate_command

    say = say or _printer()
    if not force and artifacts_up_to_date(profile, STAGE)[0]:
        say(f"[{STAGE}] the {profile.finetune.num_gpus}-GPU training is up to date: not relaunched")
        return None
    try:
        cmd = accelerate_command(profile, overrides)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        raise StageFailed(f"stage {STAGE}: {exc}") from None
    say(f"[{STAGE}] training on {profile.finetune.num_gpus} GPUs: {shlex.join(cmd)}")
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=str(project_root_for(Path(profile.source_file))))
    if done.returncode != 0:
        raise StageFailed(f"stage {STAGE}: accelerate launch exited with status {done.returncode}: {shlex.join(cmd)}")
    return time.perf_counter() - t0


def run(profile_path: str | Path, only: list[str] | None = None, start: str | None = None,
        force: bool = False, overrides: dict | None = None, verbose: bool = False) -> dict:
    """Validate the profile, then run the selected stages in order. Returns {stage: summary}."""
    overrides = overrides or {}
    profile = load_profile(profile_path, overrides)  # fails here, before any stage, on a bad key
    stages = select_stages(only, start)
    if not profile.needs_hub():  # nothing to fetch: never wait on a hub that cannot be reached
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            os.environ.setdefault(var, "1")
    summary_path = profile.report_dir() / "run_summary.json"
    summary: dict = {"profile": profile.name, "profile_file": profile.source_file, "stages": {}}
    say = _printer()
    say(f"profile {profile.name} ({profile.source_file}): stages {', '.join(stages)}")
    t_all = time.perf_counter()
    for stage in stages:
        if not force:
            fresh, why = up_to_date(profile, stage)
            if fresh:
                say(f"[{stage}] skipped: {why} (use --force to rerun)")
                summary["stages"][stage] = {"status": "skipped", "reason": why}
                continue
            say(f"[{stage}] running: {why}")
        else:
            say(f"[{stage}] running (--force)")
        try:
            if stage == "03_finetune" and profile.finetune.num_gpus > 1:
                launch_distributed_finetune(profile, overrides, force, say)
            seconds = execute_stage(profile, stage, overrides, verbose)
        except StageFailed as exc:
            summary["stages"][stage] = {"status": "failed", "error": str(exc)}
            write_json(summary_path, summary)
            say(f"[{stage}] FAILED: {exc}")
            raise
        say(f"[{stage}] done in {seconds:.1f} s -> {executed_notebook(profile, stage)}")
        summary["stages"][stage] = {"status": "ran", "seconds": round(seconds, 1)}
    summary["total_seconds"] = round(time.perf_counter() - t_all, 1)
    write_json(summary_path, summary)
    say(f"all done in {summary['total_seconds']:.1f} s; reports in {profile.report_dir()}")
    return summary


def _printer():
    def say(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)
    return say

