"""The eval cache: one lm-eval result per (model content hash, benchmark, settings, task definition).

An entry is `<key>.samples.jsonl` then `<key>.json` ({format, key, raw, samples_sha256}), written last.
An entry that cannot be read or whose samples fail their checksum is logged, deleted and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from ..artifacts import iter_jsonl, read_record, sha256_file, write_json, write_jsonl

log = logging.getLogger("platypus")
CACHE_FORMAT = 2  # 2: samples_sha256 in the entry


def cache_key(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


class EvalCache:
    """lm-eval results on disk: <dir>/<key>.json (results) + <key>.samples.jsonl (logged samples)."""

    def __init__(self, root: str | Path):
        self.dir = Path(root)

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.dir / f"{key}.json", self.dir / f"{key}.samples.jsonl"

    def get(self, key: str) -> dict | None:
        """The entry {format, key, raw, samples_sha256, samples} or None (absent, or damaged: removed)."""
        path, samples = self.paths(key)
        if not path.exists():
            if samples.exists():  # left by a put that was killed before its .json
                self._drop(key, "samples without an entry (interrupted write)")
            return None
        try:
            return self._read(path, samples)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._drop(key, f"{type(exc).__name__}: {exc}")
            return None

    def _read(self, path: Path, samples: Path) -> dict:
        entry, problem = read_record(path)
        if entry is None:
            raise ValueError(problem)
        if entry.get("format") != CACHE_FORMAT:
            raise ValueError(f"format {entry.get('format')!r}, expected {CACHE_FORMAT}")
        if not isinstance(entry.get("raw"), dict):
            raise KeyError("no 'raw' lm-eval output")
        digest = sha256_file(samples)  # FileNotFoundError when the samples are missing
        if digest != entry.get("samples_sha256"):
            raise ValueError(
                f"{samples.name}: sha256 {digest[:12]}... does not match the entry's "
                f"{str(entry.get('samples_sha256'))[:12]}..."
            )
        entry["samples"] = [obj for _, obj in iter_jsonl(samples, strict=True)]  # a bad line: damaged entry
        return entry

    def _drop(self, key: str, why: str) -> None:
        path, samples = self.paths(key)
        log.warning("eval cache entry %s is damaged (%s): removed, it will be computed again", path, why)
        for p in (path, samples):
            p.unlink(missing_ok=True)

    def put(self, key: str, fields: dict, raw: dict, samples: list[dict]) -> None:
        path, samples_path = self.paths(key)
        write_jsonl(samples_path, samples)
        write_json(
            path, {"format": CACHE_FORMAT, "key": fields, "raw": raw, "samples_sha256": sha256_file(samples_path)}
        )
