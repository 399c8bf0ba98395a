"""Artifacts shared by every stage: atomic writes, JSON lines, hashes, the stage manifest and the attempt record.

- `atomic_path` writes beside its target in `.<name>.<pid>-<random>.tmp` and swaps an old folder out as
  `.<name>.old-<pid>`; `remove_debris` (the runner, before a stage, under the run lock) deletes what an interrupted
  write left, unless the process that made it is still alive.
- A stage's `manifest.json` is written only when it succeeds; `attempt.json` when an attempt starts ("running"),
  then closed "ok", "failed" or "stopped": a stage whose last attempt is not "ok" is out of date, whatever its older
  manifest says; an unreadable record counts as no run.
- The write journal: while a `StageRun` is open, a write over an output of the last successful run first adds the
  new content's hash (None for a folder) to the attempt's "written"; a new attempt carries the journal of one that
  did not end "ok". So `edited_outputs` blames the user only for content no attempt wrote: a killed save never
  blocks a rerun, a hand edit does.
- Manifests are portable: paths under the project root are stored relative to it and parameters are compared with
  the root, its parent and the home folder made relative, so a moved project stays up to date. The manifest also
  records the code that ran (`code_fingerprint`: the stage notebook's hash and the package's code hash).
- `iter_jsonl` is the one reader of JSON-lines files (undecodable lines, malformed JSON and lone surrogates skipped,
  logged with file and line, and counted; strict=True: a BadJsonLine).
"""

from __future__ import annotations

import ast
import collections
import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import platform
import re
import resource
import shutil
import tempfile
import time
import tokenize
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from .layout import stage_notebook
from .portable import from_project, relativize_text, to_project
from .refs import resolved_snapshots

log = logging.getLogger("platypus")

MANIFEST = "manifest.json"
ATTEMPT = "attempt.json"
RUNNER_ATTEMPT_ENV = "PLATYPUS_RUNNER_ATTEMPT"  # set by the runner: it records the attempts itself
PACKAGE_DIR = Path(__file__).resolve().parent
_JOURNALS: list[StageRun] = []  # the StageRuns open in this process (innermost last)
TRACKED_LIBRARIES = ("platypus-utils", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "lm_eval",
                     "sentence-transformers", "gguf", "papermill", "pandas", "numpy")  # fmt: skip


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target` (file or folder); on success move it into place in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # the pid in the name lets `remove_debris` tell a live writer's folder from a dead one's
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}-", suffix=".tmp", dir=target.parent))
    tmp_target = tmp / target.name
    try:
        yield tmp_target
        _journal(target, tmp_target)
        if target.is_dir() and not target.is_symlink():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp_target, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_target, target)
    except OSError as exc:  # a full or read-only disk: name the file meant, not only its temp name
        if exc.errno is not None and (exc.filename is None or str(tmp) in str(exc.filename)):
            exc.filename = str(target)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _journal(target: Path, new: Path) -> None:
    """When `target` is a guarded output of an open StageRun, add `new`'s hash to its attempt's journal."""
    if not _JOURNALS:  # no StageRun open: nothing to journal (no path resolved on every write)
        return
    key = str(target.resolve())
    run = next((run for run in reversed(_JOURNALS) if key in run.guarded), None)
    record = read_attempt(run.dir) if run else None
    if not record or record.get("status") != "running":
        return
    written = record["written"] = record.get("written") if isinstance(record.get("written"), dict) else {}
    name = to_project(key, project_root_of(run.dir))
    digests = written[name] = written.get(name) if isinstance(written.get(name), list) else []
    digest = sha256_file(new) if new.is_file() else None
    if digest not in digests:
        digests.append(digest)
        write_json(Path(run.dir) / ATTEMPT, record)


_DEBRIS = re.compile(r"^\.(?P<name>.+)\.(?:(?P<pid>\d+)-[^.]*\.tmp|[^.]+\.tmp|old-(?P<oldpid>\d+))$")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (ours counts as alive)."""
    return pid > 0 and psutil.pid_exists(pid)


def debris(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Leftovers of interrupted `atomic_path` writes under `folder` whose writing process is gone."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    walker = os.walk(folder)
    for root, dirs, files in walker if recursive else [next(walker)]:
        for name in list(dirs) + list(files):
            if not (m := _DEBRIS.match(name)):
                continue
            pid = m.group("pid") or m.group("oldpid")
            if pid is not None and int(pid) != os.getpid() and pid_alive(int(pid)):
                log.info("%s: still being written by running process %s: left alone", Path(root) / name, pid)
            elif pid is None or int(pid) != os.getpid():
                found.append(Path(root) / name)
            if name in dirs:
                dirs.remove(name)  # never walk into a temp folder
    return sorted(found)


def remove_debris(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Delete `debris(folder)`, logging each path; returns what was removed. Call it only where no other run can be
    writing (the runner holds the profile's run lock; a cache holds its own lock)."""
    removed = []
    for path in debris(folder, recursive):
        log.warning("removing leftover of an interrupted write: %s", path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """One JSON object per line, UTF-8, keys in insertion order (identical rows, identical bytes: stages hash it); a
    row holding a lone surrogate is written with ASCII escapes."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            for row in rows:
                try:
                    fh.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
                except UnicodeEncodeError:
                    fh.write((json.dumps(row) + "\n").encode("ascii"))
    return Path(path)


class SkippedRows(collections.Counter):
    """Rows left out, counted by reason; `notes`: rows kept but changed; `where`: (location, reason) of each."""

    MAX_LOGGED = 20

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.notes: collections.Counter = collections.Counter()
        self.where: list[tuple[str, str]] = []

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        self[reason] += 1
        self._record(reason, where, detail, "skipped")

    def note(self, reason: str, where: str, detail: str = "") -> None:
        self.notes[reason] += 1
        self._record(reason, where, detail, "kept")

    def _record(self, reason: str, where: str, detail: str, verb: str) -> None:
        self.where.append((where, reason))
        if len(self.where) <= self.MAX_LOGGED:
            log.warning("%s: %s%s (%s)", where, reason, f": {detail}" if detail else "", verb)
        elif len(self.where) == self.MAX_LOGGED + 1:
            log.warning("more rows skipped or changed: counted, not logged one by one")


_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(value: Any) -> str | None:
    """The first lone surrogate (U+D800..U+DFFF) in the strings and keys of a JSON value, at any depth; else None."""
    if isinstance(value, str):
        found = _SURROGATE.search(value)
        return found.group() if found else None
    parts = [x for kv in value.items() for x in kv] if isinstance(value, dict) else value
    if isinstance(parts, list):
        return next(filter(None, map(lone_surrogate, parts)), None)
    return None


class BadJsonLine(ValueError):
    """A line `iter_jsonl(..., strict=True)` cannot use; the message names the file and line."""


_BAD_LINES = {"undecodable": "not UTF-8", "malformed_json": "malformed JSON", "lone_surrogate": "lone surrogate"}


def _parse_line(raw: bytes) -> tuple[Any, str | None, str]:
    """(value, None, "") for a usable line, else (None, reason, detail); reason "blank" for a blank line."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, "undecodable", f"byte 0x{raw[exc.start]:02x} at column {exc.start + 1} is not UTF-8"
    if not line.strip():
        return None, "blank", ""
    try:
        value = json.loads(line)
        ch = lone_surrogate(value) if "\\u" in line else None  # a lone surrogate can only come from a \u escape
    except (ValueError, RecursionError) as exc:  # JSONDecodeError; over-long integers; nesting too deep
        detail = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        return None, "malformed_json", detail
    if ch is not None:
        return None, "lone_surrogate", f"U+{ord(ch):04X} in a string (UTF-8 cannot encode it)"
    return value, None, ""


def iter_jsonl(path: str | Path, skipped: SkippedRows | None = None, strict: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number, JSON value) of each usable line; blank lines are passed over, bad ones ("undecodable",
    "malformed_json", "lone_surrogate") logged with file and line and counted in `skipped` (strict: BadJsonLine).
    `path` may be a package resource (importlib.resources: demo_data reads the wheel's files); a missing file is a
    FileNotFoundError."""
    path = Path(path) if isinstance(path, (str, os.PathLike)) else path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    skipped = SkippedRows() if skipped is None else skipped
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            value, reason, detail = _parse_line(raw)
            if reason is None:
                yield lineno, value
            elif reason != "blank" and strict:
                raise BadJsonLine(f"{path}, line {lineno}: {_BAD_LINES[reason]} ({detail})")
            elif reason != "blank":
                skipped.skip(reason, f"{path}, line {lineno}", detail)


def iter_json_list(
    path: str | Path, skipped: SkippedRows | None = None, strict: bool = False, start: int = 1, what: str = "rows"
) -> Iterator[tuple[int, Any]]:
    """(item number, value) of a JSON list file's items, iter_jsonl's rules (bytes that are not UTF-8 are read as
    surrogates, so only the items holding them are skipped); not a JSON list: ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    skipped = SkippedRows() if skipped is None else skipped
    try:
        data = json.loads(path.read_bytes().decode("utf-8", errors="surrogateescape"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}, line {exc.lineno}: malformed JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of {what}, got {type(data).__name__}")
    for k, obj in enumerate(data, start):
        where, ch = f"{path}, item {k}", lone_surrogate(obj)
        if ch is None:
            yield k, obj
            continue
        if "\udc80" <= ch <= "\udcff":  # surrogateescape's stand-in for a byte
            reason, detail = "undecodable", "bytes that are not UTF-8"
        else:
            reason, detail = "lone_surrogate", f"U+{ord(ch):04X} in a string (UTF-8 cannot encode it)"
        if strict:
            raise BadJsonLine(f"{where}: {detail}")
        skipped.skip(reason, where, detail)


def limit_long_fields(row: Any, max_chars: int | None, policy: str, where: str, skipped: SkippedRows) -> Any:
    """A row with a string over `max_chars`, logged, then truncated, dropped (None) or kept per `policy`."""
    if policy not in ("truncate", "drop", "keep"):
        raise ValueError(f"over-long rows: policy {policy!r}, expected one of truncate, drop, keep")
    if max_chars is None or not isinstance(row, dict):
        return row
    if not (long_fields := {k: len(v) for k, v in row.items() if isinstance(v, str) and len(v) > max_chars}):
        return row
    detail = ", ".join(f"{k} has {n:,} characters" for k, n in long_fields.items()) + f" (> {max_chars:,})"
    if policy == "drop":
        skipped.skip("filtered:over_long", where, detail)
        return None
    if policy == "truncate":
        skipped.note("over_long:truncated", where, detail + f"; cut to {max_chars:,}")
        return {k: (v[:max_chars] if k in long_fields else v) for k, v in row.items()}
    skipped.note("over_long:kept", where, detail)
    return row


def read_jsonl(
    path: str | Path, skipped: SkippedRows | None = None, max_chars: int | None = None, over_long: str = "keep"
) -> list[dict]:
    """The JSON objects of a JSON-lines file (others skipped as "not_an_object"), per `limit_long_fields`."""
    skipped = SkippedRows() if skipped is None else skipped
    rows = []
    for lineno, obj in iter_jsonl(path, skipped):
        where = f"{path}, line {lineno}"
        if not isinstance(obj, dict):
            skipped.skip("not_an_object", where, f"a JSON {type(obj).__name__}")
            continue
        obj = limit_long_fields(obj, max_chars, over_long, where, skipped)
        if obj is not None:
            rows.append(obj)
    return rows


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_path(path: str | Path) -> str:
    """Hash of a file, or of a directory tree (hidden files left out)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not found")
    return tree_sha256(path, (q for q in path.rglob("*") if q.is_file() and not q.name.startswith(".")))


def tree_sha256(root: Path, files: Iterable[Path], digest: Callable[[Path], str] = sha256_file) -> str:
    """sha256 over the names (relative to `root`) and `digest`s (default: of the contents) of `files`, sorted."""
    h = hashlib.sha256()
    for p in sorted(files):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(digest(p).encode())
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def code_only(src: str) -> str:
    """A Python source's code lines without docstrings, comments and blank lines: a wording edit keeps the eval
    cache's keys and the package hash. Cut from the text by position (not `ast.dump`, which differs between Python
    versions), so the same source gives the same text on every Python."""
    drop: set[int] = set()  # 0-based lines of docstrings (a lone one stays: it is the body)
    for node in ast.walk(ast.parse(src)):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and len(body) > 1 else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            drop.update(range(first.lineno - 1, first.end_lineno))
    lines = src.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:  # a comment runs to the end of its line
            row, col = tok.start
            lines[row - 1] = lines[row - 1][:col]
    return "\n".join(line.rstrip() for k, line in enumerate(lines) if k not in drop and line.strip())


@functools.lru_cache(maxsize=1)
def package_source_hash() -> str:
    """Hash of the code of every .py under platypus_utils/ (`code_only`: a docstring or comment edit keeps it, so
    resumable runs stay up to date); once per process."""
    return tree_sha256(
        PACKAGE_DIR, PACKAGE_DIR.rglob("*.py"), lambda p: sha256_text(code_only(p.read_text(encoding="utf-8")))
    )


def code_fingerprint(stage: str) -> dict[str, str | None]:
    """Hashes of the stage's notebook (None when absent) and of the package source."""
    notebook = stage_notebook(stage)
    return {"notebook": sha256_file(notebook) if notebook.is_file() else None, "package": package_source_hash()}


def project_root_of(stage_dir: str | Path) -> Path:
    """The nearest folder above `stage_dir` holding pyproject.toml or params/, else the one holding runs/."""
    stage_dir = Path(stage_dir).resolve()
    for folder in stage_dir.parents:
        if (folder / "pyproject.toml").is_file() or (folder / "params").is_dir():
            return folder
    return stage_dir.parents[min(2, len(stage_dir.parents) - 1)]


def portable_params(params: Any, stage_dir: str | Path) -> Any:
    """`params` as JSON values with the project root, its parent and the home folder made relative."""
    text = json.dumps(params, sort_keys=True, ensure_ascii=False, default=str)
    return json.loads(relativize_text(text, project_root_of(stage_dir)))


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in TRACKED_LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@contextlib.contextmanager
def timed(timings: dict, name: str) -> Iterator[None]:
    """The seconds a block takes, into `timings[name]` (rounded to ms)."""
    t = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - t, 3)


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (getrusage gives KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class StageRun:
    """Records one stage's run and writes its manifest.json atomically at the end."""

    def __init__(self, stage_dir: str | Path, stage: str, params: dict):
        self.dir = Path(stage_dir)
        self.stage = stage
        self.params = params
        self.inputs: dict[str, str] = {}
        self.outputs: dict[str, str] = {}
        self.metrics: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self.guarded: set[str] = set()

    def __enter__(self) -> StageRun:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._own_attempt = not os.environ.get(RUNNER_ATTEMPT_ENV)
        if self._own_attempt:
            begin_attempt(self.dir, self.stage)
        self.guarded = set((read_manifest(self.dir) or {}).get("outputs", {}))
        _JOURNALS.append(self)
        self._t0 = time.perf_counter()
        log.info("stage %s: writing to %s", self.stage, self.dir)
        return self

    def timed(self, name: str):
        return timed(self.timings, name)

    def add_input(self, path: str | Path) -> None:
        self.inputs[str(Path(path).resolve())] = sha256_path(path)

    def add_output(self, path: str | Path) -> None:
        self.outputs[str(Path(path).resolve())] = sha256_path(path)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self in _JOURNALS:
            _JOURNALS.remove(self)
        if exc_type is not None:
            if self._own_attempt:
                end_attempt(self.dir, "failed", error=f"{exc_type.__name__}: {exc}")
            return
        self.timings["wall_s"] = round(time.perf_counter() - self._t0, 3)
        root = project_root_of(self.dir)
        manifest = {
            "stage": self.stage,
            "status": "ok",
            "params": portable_params(self.params, self.dir),
            "code": code_fingerprint(self.stage),
            "inputs": {to_project(p, root): d for p, d in self.inputs.items()},
            "outputs": {to_project(p, root): d for p, d in self.outputs.items()},
            "metrics": self.metrics,
            "timings": self.timings,
            "libraries": library_versions(),
            "finished_at": _now(),
        }
        if snapshots := resolved_snapshots(clear=True):
            manifest["hub_snapshots"] = snapshots
        write_json(self.dir / MANIFEST, manifest)
        if self._own_attempt:
            end_attempt(self.dir, "ok")
        log.info("stage %s: done in %.1f s", self.stage, self.timings["wall_s"])


def artifacts_up_to_date(profile, stage: str) -> tuple[bool, str]:
    """Whether the stage's manifest matches the profile's params, the code and its files' hashes; and why (not)."""
    stage_dir = profile.run_dir(stage)
    manifest = read_manifest(stage_dir)
    if not manifest or manifest.get("status") != "ok":
        return False, read_record(Path(stage_dir) / MANIFEST)[1] or "no successful run recorded"
    if manifest.get("params") != portable_params(profile.fingerprint_params(stage), stage_dir):
        return False, "parameters changed"
    code, now = manifest.get("code") or {}, code_fingerprint(stage)
    if code.get("notebook") != now["notebook"]:
        return False, f"stage notebook {stage_notebook(stage)} changed since the last run"
    if code.get("package") != now["package"]:
        return False, f"package source ({PACKAGE_DIR}) changed since the last run"
    for kind in ("inputs", "outputs"):
        for path, digest in manifest.get(kind, {}).items():
            if not Path(path).exists():
                return False, f"{kind[:-1]} missing: {path}"
            if sha256_path(path) != digest:
                return False, f"{kind[:-1]} changed: {path}"
    return True, "inputs, parameters, code and outputs unchanged"


def read_record(path: Path) -> tuple[dict | None, str | None]:
    """(JSON object, None); (None, None) without a file; (None, why) when it cannot be read."""
    if not path.is_file():
        return None, None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, RecursionError) as exc:
        return None, f"{path} cannot be read ({type(exc).__name__}: {exc})"
    if not isinstance(value, dict):
        return None, f"{path} holds a JSON {type(value).__name__}, not an object"
    return value, None


def read_manifest(stage_dir: str | Path) -> dict | None:
    """The stage's last manifest with absolute paths; None when there is none (a damaged one is logged)."""
    manifest, problem = read_record(Path(stage_dir) / MANIFEST)
    if problem:
        log.warning("damaged manifest: %s; the stage counts as not run", problem)
    if not manifest:
        return None
    root = project_root_of(stage_dir)
    for kind in ("inputs", "outputs"):
        if isinstance(manifest.get(kind), dict):
            manifest[kind] = {from_project(p, root): d for p, d in manifest[kind].items()}
    return manifest


def begin_attempt(stage_dir: str | Path, stage: str, **info: Any) -> dict:
    """Record that an attempt starts now ("running"), carrying the journal of a last attempt not "ok"."""
    previous = read_attempt(stage_dir) or {}
    carried = previous.get("written") if previous.get("status") != "ok" else None
    record = {"stage": stage, "status": "running", "pid": os.getpid(), "started_at": _now(), **info}
    if isinstance(carried, dict) and carried:
        record["written"] = carried
    write_json(Path(stage_dir) / ATTEMPT, record)
    return record


def end_attempt(stage_dir: str | Path, status: str, **info: Any) -> dict:
    """Close the current attempt as "ok", "failed" or "stopped"."""
    record = read_attempt(stage_dir) or {}
    record.update(status=status, finished_at=_now(), **info)
    if status == "ok":
        record.pop("written", None)
    write_json(Path(stage_dir) / ATTEMPT, record)
    return record


def read_attempt(stage_dir: str | Path) -> dict | None:
    """The last attempt record; None when none was written, "unreadable" status when damaged."""
    record, problem = read_record(Path(stage_dir) / ATTEMPT)
    return {"status": "unreadable", "error": problem} if problem else record


def attempt_problem(stage_dir: str | Path) -> str | None:
    """Why the last attempt makes the stage out of date (None: it succeeded, or none was recorded)."""
    if (record := read_attempt(stage_dir)) is None or record.get("status") == "ok":
        return None
    status, when = record.get("status"), record.get("finished_at", "?")
    if status == "stopped":
        return f"last attempt was stopped ({when}): {record.get('error', 'a signal')}"
    if status == "failed":
        return f"last attempt failed ({when}): {record.get('error', 'no error recorded')}"
    if status == "running":
        pid, started = record.get("pid"), record.get("started_at")
        return f"last attempt (PID {pid}, started {started}) never finished: killed or crashed"
    return f"attempt record {Path(stage_dir) / ATTEMPT} is {status}"


def edited_outputs(stage_dir: str | Path) -> list[str]:
    """Outputs of the last successful run changed since by hand (not by a journaled attempt)."""
    manifest = read_manifest(stage_dir)
    if not manifest or manifest.get("status") != "ok":
        return []
    record = read_attempt(stage_dir) or {}
    root = project_root_of(stage_dir)
    written = record.get("written") if record.get("status") != "ok" and isinstance(record.get("written"), dict) else {}
    written = {from_project(p, root): digests for p, digests in written.items()}
    edited = []
    for path, digest in manifest.get("outputs", {}).items():
        if not Path(path).exists():
            continue
        current = sha256_path(path)
        by_stage = written.get(path) if isinstance(written.get(path), list) else []
        if current != digest and current not in by_stage and None not in by_stage:
            edited.append(path)
    return edited


def refuse_edited_outputs(stage_dir: str | Path, source_file: str | None, force: bool, error=RuntimeError) -> None:
    """Raise `error` naming the outputs edited by hand since the last successful run, unless `force`."""
    edited = edited_outputs(stage_dir)
    if edited and not force:
        name, stage = Path(source_file or "params/<profile>.yaml").name, Path(stage_dir).name
        raise error(
            f"{', '.join(edited)} changed after the run that wrote it; rerun with `platypus run "
            f"params/{name} --only {stage[:2]} --force` (force=True in the notebook) to overwrite, or "
            "move the edited files away"
        )
