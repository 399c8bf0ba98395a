"""Artifacts shared by every stage: atomic writes, JSON lines, hashes and the stage manifest."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator

log = logging.getLogger("platypus")

MANIFEST = "manifest.json"
TRACKED_LIBRARIES = ("platypus-utils", "torch", "transformers", "peft", "trl", "datasets", "accelerate",
                     "lm_eval", "sentence-transformers", "gguf", "papermill", "pandas", "numpy")


# ---------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success move it into place in one rename.

    Works for files and directories: an interrupted write never leaves a half artifact.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp_target = tmp / target.name
    try:
        yield tmp_target
        if target.is_dir() and not target.is_symlink():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp_target, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_target, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """One JSON object per line, keys in insertion order, UTF-8: byte-identical for identical rows."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {lineno}: malformed JSON ({exc.msg})") from None
    return rows


# ---------------------------------------------------------------- hashes
def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_path(path: str | Path) -> str:
    """Hash of a file, or of a directory tree (relative names and contents, sorted)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not found")
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file() and not q.name.startswith(".")):
        h.update(str(p.relative_to(path)).encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in TRACKED_LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


# ---------------------------------------------------------------- manifest
class StageRun:
    """Records one stage's run and writes its manifest.json atomically at the end.

    with StageRun(stage_dir, "01_curate", params) as run:
        run.add_input(path); ...; run.add_output(path); run.metrics["rows"] = 3
    """

    def __init__(self, stage_dir: str | Path, stage: str, params: dict):
        self.dir = Path(stage_dir)
        self.stage = stage
        self.params = params
        self.inputs: dict[str, str] = {}
        self.outputs: dict[str, str] = {}
        self.metrics: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self._t0 = 0.0

    def __enter__(self) -> "StageRun":
        self.dir.mkdir(parents=True, exist_ok=True)
        self._t0 = time.perf_counter()
        log.info("stage %s: writing to %s", self.stage, self.dir)
        return self

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t, 3)

    def add_input(self, path: str | Path) -> None:
        self.inputs[str(Path(path).resolve())] = sha256_path(path)

    def add_output(self, path: str | Path) -> None:
        path = Path(path)
        self.outputs[str(path.resolve())] = sha256_path(path)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            return  # a failed stage leaves no manifest: the runner will not skip it next time
        self.timings["wall_s"] = round(time.perf_counter() - self._t0, 3)
        manifest = {
            "stage": self.stage,
            "status": "ok",
            "params": self.params,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "metrics": self.metrics,
            "timings": self.timings,
            "libraries": library_versions(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json(self.dir / MANIFEST, manifest)
        log.info("stage %s: done in %.1f s", self.stage, self.timings["wall_s"])


def read_manifest(stage_dir: str | Path) -> dict | None:
    path = Path(stage_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
