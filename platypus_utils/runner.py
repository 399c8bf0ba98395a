"""Run a profile: execute the stage notebooks in order with papermill.

Executed notebooks go to reports/<profile>/notebooks/. A stage is skipped when its last attempt
succeeded, its manifest records the same parameters and code (the stage notebook's and the package
source's hashes; the package's docstrings and comments aside) and its recorded inputs and outputs still hash the same.

Trust after a crash, a kill, a second run or an edit:
- One run per profile at a time: a filelock on `runs/<profile>/.run.lock`, the holder's PID, start time and
  command in `run.lock`: a second run exits with RunLocked naming the holder, or waits (`--wait`); the lock
  of a dead process is free again.
- Each attempt is recorded in `runs/<profile>/<stage>/attempt.json` ("running", then "ok", "failed"
  or "stopped"). A stage whose own or upstream last attempt is not "ok" is out of date; so is 03 while
  it holds checkpoints of an interrupted training (which resumes). No stage starts on an upstream
  stage whose last attempt is not "ok" (UpstreamNotOk, exit 2), unless --force.
- The notebook executes into `<stage>.running.ipynb`; on success it replaces `<stage>.ipynb`, on
  failure it becomes `<stage>.failed.ipynb` beside the last good one. Leftovers of interrupted writes
  (`artifacts.debris`) are removed before a stage runs, under the lock.
- `--force` reruns every selected stage and sets PLATYPUS_FORCE=1 for its processes (`forced()`).
- SIGTERM and SIGINT stop the run in order: the kernel and other children are killed, the attempt is
  closed "stopped", the lock freed, then the runner exits (StageFailed).
- A stage notebook whose code cells differ from its committed version (JupyterLab saves edits that
  papermill would run) is refused (EditedNotebook, exit 2) unless --allow-edited-notebooks.
- A runs or reports folder that cannot be written is RunFolderError (exit 2), naming the path.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from .artifacts import (
    ATTEMPT,
    RUNNER_ATTEMPT_ENV,
    artifacts_up_to_date,
    attempt_problem,
    begin_attempt,
    end_attempt,
    environ,
    pid_alive,
    read_record,
    remove_debris,
    write_json,
)
from .config import STAGES, Profile, ProfileError, load_profile
from .layout import STAGE_NOTEBOOKS, git_output
from .notebook import KERNEL_ENV, kernel_name, profile_command, stage_parameters
from .preflight import preflight

NOTEBOOK_DIR = STAGE_NOTEBOOKS
FORCE_ENV = "PLATYPUS_FORCE"
RUN_KEY_FILE = Path("checkpoints") / "run_key.json"  # finetune.CHECKPOINTS / finetune.RUN_KEY


def _say(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


class StageFailed(RuntimeError):
    pass


class RunLocked(RuntimeError):
    """Another process is running this profile; the message names it (PID, start time, command)."""


class UpstreamNotOk(ProfileError):
    """An earlier stage's last attempt is not "ok"."""


class RunFolderError(ProfileError):
    """A runs or reports folder that cannot be written; the message names the path."""


class RunStopped(BaseException):
    """SIGTERM or SIGINT reached the runner."""


def forced() -> bool:
    """Whether this process runs a stage under `platypus run --force`."""
    return os.environ.get(FORCE_ENV) == "1"


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
    return list(STAGES[STAGES.index(parse_stage(start)) :] if start else STAGES)


def up_to_date(profile: Profile, stage: str) -> tuple[bool, str]:
    """Whether `stage` can be skipped, and why (or why not)."""
    if problem := attempt_problem(profile.run_dir(stage)):
        return False, problem
    upstream, problem = _upstream_problem(profile, stage)
    if problem:
        return False, f"upstream stage {upstream}: {problem}"
    if interrupted := interrupted_training(profile, stage):
        return False, interrupted
    fresh, why = artifacts_up_to_date(profile, stage)
    if fresh and not executed_notebook(profile, stage).is_file():
        return False, "executed notebook missing"
    return fresh, why


def _upstream_problem(profile: Profile, stage: str) -> tuple[str | None, str | None]:
    """(the first earlier stage whose last attempt is not "ok", why); (None, None) when none."""
    for upstream in STAGES[: STAGES.index(stage)]:
        if problem := attempt_problem(profile.run_dir(upstream)):
            return upstream, problem
    return None, None


def upstream_not_ok(profile: Profile, stage: str) -> str | None:
    """Why `stage` must not start: an earlier stage whose last attempt is not "ok" (None: none is)."""
    upstream, problem = _upstream_problem(profile, stage)
    if not problem:
        return None
    return (
        f"stage {stage} needs stage {upstream}, whose {problem} (attempt record {profile.run_dir(upstream) / ATTEMPT}); "
        f"its files may be half written: run `{profile_command(profile, upstream)}` first, or pass --force to run "
        f"{stage} on them anyway"
    )


def interrupted_training(profile: Profile, stage: str) -> str | None:
    """Why a stage folder holding resumable checkpoints (03) is not done."""
    key = profile.run_dir(stage) / RUN_KEY_FILE
    done = [p for p in key.parent.glob("checkpoint-*") if (p / "trainer_state.json").is_file()] if key.is_file() else []
    if done:
        return f"an interrupted training left {len(done)} checkpoint(s) in {key.parent}: it resumes from the last"
    return None


def executed_notebook(profile: Profile, stage: str) -> Path:
    """The executed notebook of the stage's last successful attempt."""
    return profile.report_dir("notebooks") / f"{stage}.ipynb"


def check_notebooks_apart(profile: Profile) -> None:
    """ProfileError when the executed notebooks would go into the stage notebooks' folder."""
    out, src = profile.report_dir("notebooks").resolve(), NOTEBOOK_DIR.resolve()
    if out == src or src in out.parents:
        raise ProfileError(
            f"{profile.source_file}: keys 'paths.reports_dir' and 'name' put the executed notebooks in {out}, "
            "the folder of the stage notebooks themselves: choose another reports_dir or name"
        )


class EditedNotebook(ProfileError):
    """A stage notebook's code cells differ from its committed version."""


def _code_cells(text: str, where: Path | str) -> list[tuple[str, str]]:
    """(id, source) of a notebook's code cells, in order; a file that is not a notebook is EditedNotebook."""
    try:
        cells = enumerate(json.loads(text).get("cells", []))
        return [(c.get("id", f"#{i}"), "".join(c.get("source", ""))) for i, c in cells if c.get("cell_type") == "code"]
    except (ValueError, AttributeError, TypeError) as exc:
        raise EditedNotebook(f"{where}: not a notebook ({type(exc).__name__}: {exc})") from None


def edited_cells(notebook: Path) -> list[str]:
    """Code cells differing from git HEAD's, by id ("<id>: <first line>", "<id>: removed", "<id>: moved");
    outputs, metadata and markdown don't count; [] outside a git checkout (a wheel's notebooks are the shipped copy)."""
    if not (top := git_output(notebook.parent, "rev-parse", "--show-toplevel")):
        return []
    try:
        rel = notebook.resolve().relative_to(Path(top.strip()).resolve()).as_posix()
    except ValueError:  # not under the checkout's folder
        return []
    committed = git_output(notebook.parent, "show", f"HEAD:{rel}")
    if committed is None and git_output(notebook.parent, "check-ignore", "-q", str(notebook.resolve())) is not None:
        return []  # a wheel installed in a venv inside a checkout: git does not track its copy
    shipped = dict(_code_cells(committed, f"HEAD:{rel}")) if committed is not None else {}
    now = _code_cells(notebook.read_text(encoding="utf-8"), notebook)
    changed = [f"{i}: {(s.strip() or '(empty)').splitlines()[0]}" for i, s in now if shipped.get(i) != s]
    ids = {i for i, _ in now}
    kept_now = [i for i, _ in now if i in shipped]
    kept_shipped = [i for i in shipped if i in ids]
    moved = [f"{a}: moved" for a, b in zip(kept_now, kept_shipped) if a != b]
    return changed + [f"{i}: removed" for i in shipped if i not in ids] + moved


def check_notebooks_shipped(stages: list[str], allow: bool, say) -> dict[str, list[str]]:
    """{stage: edited cells} of the stage notebooks; EditedNotebook naming them unless `allow`."""
    notebooks = {s: NOTEBOOK_DIR / f"{s}.ipynb" for s in stages}
    edited = {s: cells for s, nb in notebooks.items() if nb.is_file() and (cells := edited_cells(nb))}
    listed = "; ".join(f"{NOTEBOOK_DIR / s}.ipynb: cells {', '.join(c)}" for s, c in edited.items())
    if edited and not allow:
        raise EditedNotebook(
            f"stage notebooks differ from their committed version ({listed}): commit or undo these cells "
            "(`git diff notebooks/`), or pass --allow-edited-notebooks to run them"
        )
    if edited:
        say(f"running edited notebook cells (--allow-edited-notebooks): {listed}")
    return edited


def running_notebook(profile: Profile, stage: str) -> Path:
    return profile.report_dir("notebooks") / f"{stage}.running.ipynb"


def failed_notebook(profile: Profile, stage: str) -> Path:
    """The executed notebook of the stage's last failed attempt."""
    return profile.report_dir("notebooks") / f"{stage}.failed.ipynb"


def clear_leftovers(profile: Profile, stage: str, say=_say) -> list[Path]:
    """Remove what interrupted attempts of `stage` left (under the run lock only)."""
    removed = remove_debris(profile.run_dir(stage))
    stale = running_notebook(profile, stage)
    if stale.is_file():
        stale.unlink()
        removed.append(stale)
    for path in removed:
        say(f"[{stage}] removed leftover of an interrupted attempt: {path}")
    return removed


def execute_stage(
    profile: Profile, stage: str, overrides: dict, verbose: bool = False, force: bool | None = None
) -> float:
    """Execute the stage's notebook with papermill (`notebook.stage_parameters` injected); returns seconds."""
    import papermill as pm

    src = NOTEBOOK_DIR / f"{stage}.ipynb"
    if not src.is_file():
        raise StageFailed(f"{src}: stage notebook not found")
    check_notebooks_apart(profile)
    dst = running_notebook(profile, stage)
    dst.parent.mkdir(parents=True, exist_ok=True)
    params = stage_parameters(profile, stage, overrides, forced() if force is None else force)
    t0 = time.perf_counter()
    try:
        with environ(KERNEL_ENV):
            kernel = kernel_name()
            pm.execute_notebook(
                str(src), str(dst), parameters=params, kernel_name=kernel, cwd=str(NOTEBOOK_DIR), log_output=verbose
            )
    except BaseException as exc:  # the failed attempt's notebook goes beside the last good one
        kept = failed_notebook(profile, stage)
        if dst.is_file():
            os.replace(dst, kept)
        if isinstance(exc, pm.PapermillExecutionError):
            raise StageFailed(
                f"stage {stage} failed in {kept}, cell {exc.cell_index} (execution count {exc.exec_count}): "
                f"{exc.ename}: {exc.evalue}"
            ) from None
        if isinstance(exc, Exception):  # the kernel died, papermill itself failed...
            raise StageFailed(
                f"stage {stage} stopped ({type(exc).__name__}: {exc}); its notebook so far: {kept}"
            ) from exc
        raise  # Ctrl-C, a signal
    os.replace(dst, executed_notebook(profile, stage))
    failed_notebook(profile, stage).unlink(missing_ok=True)
    return time.perf_counter() - t0


def launch_distributed_finetune(profile: Profile, overrides: dict, force: bool = False, say=_say) -> float | None:
    """finetune.num_gpus > 1: train stage 03 under `accelerate launch` before its notebook runs, unless up to date."""
    from .config import project_root_for
    from .finetune.distributed import accelerate_command
    from .finetune.stage import STAGE

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


def run(
    profile_path: str | Path,
    only: list[str] | None = None,
    start: str | None = None,
    force: bool = False,
    overrides: dict | None = None,
    verbose: bool = False,
    wait: bool = False,
    allow_edited_notebooks: bool = False,
) -> dict:
    """Validate, run the preflight checks, take the run lock (RunLocked unless `wait`), run the stages."""
    overrides = overrides or {}
    profile = load_profile(profile_path, overrides)
    check_notebooks_apart(profile)
    stages = select_stages(only, start)
    preflight(profile, stages)
    edited = check_notebooks_shipped(stages, allow_edited_notebooks, _say)
    try:
        with stop_on_signals(), run_lock(profile, wait=wait):
            return _run_stages(profile, stages, force, overrides, verbose, edited)
    except RunStopped as exc:
        raise StageFailed(f"stopped by {exc}: the stage's attempt is recorded as stopped") from None
    except OSError as exc:
        raise RunFolderError(
            f"cannot write {exc.filename or profile.run_dir()}: {exc.strerror or exc} (keys 'paths.runs_dir' "
            f"and 'paths.reports_dir' of {profile.source_file}): free some space or make the folder writable"
        ) from None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """In the main thread, SIGTERM and SIGINT kill the child processes and raise RunStopped (then are ignored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        stop_children()  # first: a kernel left to papermill's cleanup still writes for a while
        raise RunStopped(signal.Signals(signum).name)

    saved = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def stop_children() -> list[int]:
    """SIGKILL this process's child processes (kernel, accelerate workers) and wait for them; returns their PIDs."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(children, timeout=10.0)
    return [c.pid for c in children]


def _run_stages(profile: Profile, stages: list[str], force: bool, overrides: dict, verbose: bool, edited: dict) -> dict:
    summary_path = profile.report_dir() / "run_summary.json"
    summary: dict = {"profile": profile.name, "profile_file": profile.source_file, "stages": {}}
    records, say = summary["stages"], _say
    say(f"profile {profile.name} ({profile.source_file}): stages {', '.join(stages)}")
    t_all = time.perf_counter()
    for stage in stages:
        if not force:
            fresh, why = up_to_date(profile, stage)
            if fresh:
                say(f"[{stage}] skipped: {why} (use --force to rerun)")
                records[stage] = {"status": "skipped", "reason": why}
                continue
            if blocked := upstream_not_ok(profile, stage):
                records[stage] = {"status": "refused", "error": blocked}
                write_json(summary_path, summary)
                raise UpstreamNotOk(blocked)
            say(f"[{stage}] running: {why}")
        else:
            say(f"[{stage}] running (--force)")
        say(f"[{stage}] notebook {NOTEBOOK_DIR / f'{stage}.ipynb'}")
        try:
            seconds = _attempt_stage(profile, stage, overrides, verbose, force, say, edited.get(stage))
        except StageFailed as exc:
            records[stage] = {"status": "failed", "error": str(exc)}
            write_json(summary_path, summary)
            say(f"[{stage}] FAILED: {exc}")
            if executed_notebook(profile, stage).is_file():
                say(f"[{stage}] the last good report stays at {executed_notebook(profile, stage)}")
            raise
        say(f"[{stage}] done in {seconds:.1f} s -> {executed_notebook(profile, stage)}")
        records[stage] = {"status": "ran", "seconds": round(seconds, 1)}
        if edited.get(stage):
            records[stage]["edited_cells"] = edited[stage]
    summary["total_seconds"] = round(time.perf_counter() - t_all, 1)
    write_json(summary_path, summary)
    say(f"all done in {summary['total_seconds']:.1f} s; reports in {profile.report_dir()}")
    return summary


def _attempt_stage(
    profile: Profile, stage: str, overrides: dict, verbose: bool, force: bool, say, edited: list | None
) -> float:
    """One recorded attempt at a stage: leftovers cleared, attempt.json "running" -> "ok"/"failed"/"stopped"."""
    stage_dir = profile.run_dir(stage)
    rebuild_training = force or not (artifacts_up_to_date(profile, stage)[0] and not attempt_problem(stage_dir))
    clear_leftovers(profile, stage, say)
    notebook = str(running_notebook(profile, stage))
    info = {"edited_cells": edited} if edited else {}
    begin_attempt(stage_dir, stage, runner=True, command=shlex.join(sys.argv), notebook=notebook, **info)
    env = {RUNNER_ATTEMPT_ENV: "1", FORCE_ENV: "1" if force else "0"}
    try:
        with environ(env):
            if stage == "03_finetune" and profile.finetune.num_gpus > 1:
                launch_distributed_finetune(profile, overrides, rebuild_training, say)
            seconds = execute_stage(profile, stage, overrides, verbose)
    except BaseException as exc:
        failed = str(failed_notebook(profile, stage))
        if isinstance(exc, StageFailed):
            end_attempt(stage_dir, "failed", error=str(exc), notebook=failed)
        elif isinstance(exc, RunStopped):
            error = f"stopped by {exc}; processes ended: {stop_children()}"
            end_attempt(stage_dir, "stopped", error=error, notebook=failed)
            say(f"[{stage}] stopped by {exc}; attempt recorded in {stage_dir / ATTEMPT}")
        else:  # a kernel that died: the attempt is not ok
            stop_children()
            end_attempt(stage_dir, "failed", error=f"{type(exc).__name__}: {exc}", notebook=failed)
        raise
    end_attempt(stage_dir, "ok", notebook=str(executed_notebook(profile, stage)), seconds=round(seconds, 1))
    return seconds


def _describe(holder: dict) -> str:
    if not holder:
        return "another process (no details recorded)"
    pid, host, started, command = (holder.get(k) for k in ("pid", "host", "started_at", "command"))
    return f"PID {pid} on {host}, started {started} ({command})"


@contextlib.contextmanager
def run_lock(profile: Profile, wait: bool = False, say=_say) -> Iterator[Path]:
    """Hold the profile's run lock, the holder named in run.lock (yielded); RunLocked if held, unless `wait`."""
    path = profile.run_dir() / "run.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path.with_name("." + path.name))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = read_record(path)[0] or {}
        if not wait:
            raise RunLocked(
                f"profile {profile.name} is already being run by {_describe(holder)}; lock "
                f"{path}. Wait for it to finish, or pass --wait to queue behind it"
            ) from None
        say(f"waiting for the run of profile {profile.name} by {_describe(holder)} to finish ({path})")
        lock.acquire()
    try:
        previous = read_record(path)[0] or {}
        if previous.get("pid") and not pid_alive(int(previous["pid"])):
            say(f"taking over the lock {path} left by {_describe(previous)}: that process is gone")
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": shlex.join(sys.argv),
        }
        try:
            path.write_text(json.dumps(me) + "\n", encoding="utf-8")
        except OSError as exc:  # a full disk (the record is emptied below)
            exc.filename = exc.filename or str(path)
            raise
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.write_text("")
        lock.release()
