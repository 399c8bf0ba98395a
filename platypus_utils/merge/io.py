"""Stage 04's files and memory: checkpoints read and written one tensor at a time (plain reads, not
mmap, whose pages would count as resident), variants written atomically, and their peak resident memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import math
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from ..artifacts import atomic_path, peak_rss_mb, read_record, write_json
from ..models import hub_snapshot, make_files_readable, model_content_hash
from ..refs import split_revision
from .arithmetic import Options
from .errors import MergeError

log = logging.getLogger("platypus")

MERGE_INFO = "merge_info.json"  # inside each merged dir: what it was made from, and its checks
MAX_SHARD_BYTES = 4 << 30
MERGE_DTYPES = ("float32", "float16", "bfloat16")
_ST_NAMES = "F64:float64 F32:float32 F16:float16 BF16:bfloat16 I64:int64 I32:int32 I16:int16 I8:int8 U8:uint8"
ST_DTYPES = {  # safetensors' dtype codes
    code: getattr(torch, name)
    for code, name in (p.split(":") for p in f"{_ST_NAMES} BOOL:bool F8_E4M3:float8_e4m3fn F8_E5M2:float8_e5m2".split())
}


def proc_status_mb(field_name: str) -> float | None:
    """A memory figure of /proc/self/status (VmRSS, VmHWM) in MB; None where there is no /proc."""
    try:
        m = re.search(rf"^{field_name}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return round(int(m.group(1)) / 1024, 1) if m else None


def release_freed_memory() -> None:
    with contextlib.suppress(Exception):  # glibc keeps freed heap: hand it back so the next peak starts low
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def return_large_blocks_to_the_os() -> None:
    """A fixed 1 MiB glibc mmap threshold: freed tensor buffers are unmapped, not left to fragment the heap."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD


@contextlib.contextmanager
def measure_peak_rss() -> Iterator[dict]:
    """Peak resident memory of the block {"peak_rss_mb", "rss_start_mb", "scope"}: "block" (Linux) or "process"."""
    release_freed_memory()
    out: dict[str, Any] = {"rss_start_mb": proc_status_mb("VmRSS"), "scope": "process"}
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
        out["scope"] = "block"
    try:
        yield out
    finally:
        hwm = proc_status_mb("VmHWM") if out["scope"] == "block" else None
        out["peak_rss_mb"] = hwm if hwm is not None else peak_rss_mb()


def st_dtype(code: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype code (e.g. BF16)."""
    if code not in ST_DTYPES:
        raise MergeError(f"safetensors dtype {code!r} is not supported by this merge")
    return ST_DTYPES[code]


@dataclass
class TensorEntry:
    file: Path
    dtype: str  # safetensors code, e.g. F32
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int


class SafetensorsCheckpoint:
    """The tensors of a local safetensors checkpoint (one file or an index of shards), read one at a time."""

    def __init__(self, model_dir: str | Path):
        self.dir = Path(model_dir)
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (self.dir / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            raise MergeError(
                f"{self.dir}: no model.safetensors or model.safetensors.index.json; full-model merges read safetensors checkpoints (re-save a .bin one with save_pretrained)"
            )
        self.entries: dict[str, TensorEntry] = {}
        for name in files:
            path = self.dir / name
            with open(path, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
            header.pop("__metadata__", None)
            for key, meta in header.items():
                start, end = meta["data_offsets"]
                self.entries[key] = TensorEntry(path, meta["dtype"], tuple(meta["shape"]), 8 + n + start, 8 + n + end)

    def names(self) -> list[str]:
        return sorted(self.entries)

    def read(self, name: str) -> torch.Tensor:
        e = self.entries[name]
        dtype, size = st_dtype(e.dtype), e.end - e.start
        if size == 0:
            return torch.empty(e.shape, dtype=dtype)
        buf = bytearray(size)
        with open(e.file, "rb") as fh:
            fh.seek(e.start)
            if fh.readinto(buf) != size:
                raise MergeError(f"{e.file}: truncated while reading tensor {name!r}")
        return torch.frombuffer(buf, dtype=dtype).reshape(e.shape)


def write_safetensors(
    out_dir: Path, specs: list[tuple], produce: Callable[[str], torch.Tensor], max_shard_bytes: int = MAX_SHARD_BYTES
) -> list[str]:
    """Write `specs` (name, dtype, shape), asking `produce(name)` just before each; sharded over max_shard_bytes."""
    shards: list[list[tuple]] = [[]]
    filled = 0
    for name, dtype, shape in specs:
        nbytes = math.prod(shape) * dtype.itemsize
        if shards[-1] and filled + nbytes > max_shard_bytes:
            shards.append([])
            filled = 0
        shards[-1].append((name, dtype, shape, nbytes))
        filled += nbytes
    codes = {v: k for k, v in ST_DTYPES.items()}
    files, weight_map = [], {}
    for i, shard in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, dtype, shape, nbytes in shard:
            header[name] = {"dtype": codes[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[name] = fname
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes
        with open(out_dir / fname, "wb") as fh:
            fh.write(struct.pack("<Q", len(raw)))
            fh.write(raw)
            for name, dtype, shape, nbytes in shard:
                t = produce(name)
                if t.dtype != dtype or tuple(t.shape) != tuple(shape):
                    raise RuntimeError(f"{name}: produced {t.dtype} {tuple(t.shape)}, header says {dtype} {shape}")
                if nbytes:
                    fh.write(memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy()))
                del t  # before the next tensor is made
        files.append(fname)
    if len(shards) > 1:
        total = sum(item[3] for shard in shards for item in shard)
        write_json(
            out_dir / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map}
        )
    return files


@dataclass
class ModelMergeSpec:
    """A full-model merge with every reference resolved to a local checkpoint folder."""

    name: str
    method: str
    models: list[str]  # local folders, in the order of `weights`
    labels: list[str]  # how the profile named them (variant or reference)
    weights: list[float]
    density: float | None = None
    majority_sign_method: str = "total"
    base: str | None = None  # folder of the common base (task-vector methods)
    base_label: str | None = None
    normalize: bool | None = None  # mergekit's parameters as the profile gives them (None: its default)
    rescale: bool | None = None
    lam: float = 1.0
    int8_mask: bool = False

    @property
    def uses_base(self) -> bool:
        return self.method not in ("linear", "slerp")

    @property
    def options(self) -> Options:
        return Options.of(self.method, self.normalize, self.rescale, self.lam)

    def checkpoints(self) -> tuple[list[SafetensorsCheckpoint], SafetensorsCheckpoint | None]:
        """The input checkpoints, and the base's when the method uses one."""
        base = SafetensorsCheckpoint(self.base) if self.uses_base else None
        return [SafetensorsCheckpoint(p) for p in self.models], base


def load_lm(path: str, dtype) -> torch.nn.Module:
    """A causal LM from a local folder (or the hub), in `dtype`, in eval mode."""
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


def has_tokenizer(path: str | Path) -> bool:
    return (Path(path) / "tokenizer_config.json").is_file()


def save_tokenizer(tokenizer_dirs: list[str], out: Path, label: str) -> str:
    """Save the first usable tokenizer among `tokenizer_dirs` (a hub id counts as usable) into `out`."""
    source = next((d for d in tokenizer_dirs if has_tokenizer(d) or not Path(d).exists()), None)
    if source is None:
        raise MergeError(f"no tokenizer found for {label} in {tokenizer_dirs}")
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return str(source)


def local_checkpoint(path: str) -> str:
    """A folder for a reference: a folder as it is; a hub id fetched by models.hub_snapshot (unpinned: main)."""
    if Path(path).is_dir():
        return path
    repo_id, revision = split_revision(path)
    return hub_snapshot(repo_id, revision or "main")


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def stored_dtype(model_dir: str | Path) -> torch.dtype:
    """A checkpoint's config `dtype` or `torch_dtype`; float32 when it names none or one not in MERGE_DTYPES."""
    config = AutoConfig.from_pretrained(str(model_dir))
    named = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = dtype_name(named) if named is not None else None
    if name in MERGE_DTYPES:
        return getattr(torch, name)
    if name not in (None, "auto"):
        log.warning("%s: config dtype %r; merging in float32", model_dir, name)
    return torch.float32


def read_merge_info(out_dir: str | Path) -> dict | None:
    """The MERGE_INFO record beside a variant's weights; None when absent or damaged (logged)."""
    info, problem = read_record(Path(out_dir) / MERGE_INFO)
    if problem:
        log.warning("damaged merge record: %s; the variant counts as not made", problem)
    return info


def write_variant(out_dir: Path, build: Callable[[Path], dict], verify: Callable | None, info: dict) -> dict:
    """Build and verify in a temporary folder renamed to `out_dir` after; writes and returns MERGE_INFO."""
    info = dict(info)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        with measure_peak_rss() as memory:
            info.update(build(tmp) or {})
        info["memory"] = {"merge_peak_rss_mb": memory["peak_rss_mb"], "merge_rss_start_mb": memory["rss_start_mb"]}
        info["memory"]["scope"] = memory["scope"]
        if verify is not None:
            with measure_peak_rss() as memory:
                info["verification"] = verify(tmp)
            info["memory"].update(verify_peak_rss_mb=memory["peak_rss_mb"])
        release_freed_memory()
        info["content_sha256"] = model_content_hash(tmp)
        write_json(tmp / MERGE_INFO, info)
        make_files_readable(tmp)
    return info
