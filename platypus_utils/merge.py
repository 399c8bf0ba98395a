"""Stage 04_merge: fold LoRA adapters into full models, combine adapters and models, verify every result.

What it makes (each a variant: a full model in runs/<profile>/04_merge/<variant>/, listed in
`merge_report.json["models"]` with its path, for stage 05 to evaluate when named in evaluate.variants):

  - "merged": the 03 adapter folded into the base it was trained on (peft `merge_and_unload`);
  - "<partner>-platypus": the paper's merge, the same adapter added into a *different* fine-tune of
    the same base (OpenOrca-Platypus2 = OpenOrcaxOpenChat + Platypus LoRA), after checking that
    architecture and every target module's shape match. A partner given with `adapter:` is built
    here first (variant "<partner>": that adapter merged into `model`), which is how the demo gets a
    partner fine-tune: 03's second, small adapter trained on the general rows;
  - adapter mixes (`merge.adapter_mixes`): several adapters combined by peft's `add_weighted_adapter`
    (linear, cat, ties, dare_linear, dare_ties, svd), then merged into the base;
  - full-model merges (`merge.model_merges`, and the grid `merge.sweep`, variants
    "sweep-<method>-w<w1>_<w2>[-d<density>]"): linear, slerp, task_arithmetic, ties, dare_linear,
    dare_ties over two or more fine-tunes of one base. Stage 05 evaluates a sweep point when its
    name is listed in evaluate.variants; `sweep_variant_names(profile)` gives the names.

How the full-model merges are computed, and why not mergekit: mergekit 0.1.5 does install here
beside transformers 5 / torch 2.13 without changing any installed version (it adds immutables,
protobuf, sentencepiece), and runs. It is not used, for two reasons. (1) Verification: mergekit
seeds the global RNG once, so a DARE mask depends on the order its task graph runs; no independent
computation can reproduce it, and the issue asks for every merge to be checked against one. Here
each DARE draw is seeded from (profile seed, tensor name, chunk), so the check redraws it exactly,
whatever the order. (2) One set of formulas: the full-model methods call the same
`peft.utils.merge_utils` functions (task_arithmetic, ties' sign election and disjoint mean,
dare_linear, dare_ties) that `add_weighted_adapter` uses on adapters, so "ties" means one thing in
this stage; SLERP is our own (mergekit's formula: spherical between the two weight tensors, linear
when they are nearly parallel). No new dependency enters the environment. The cost: mergekit's
other methods (della, model_stock, passthrough/frankenmerges) are not offered.

Memory: full-model merges stream tensor by tensor, and within a tensor CHUNK entries at a time.
Inputs are read with plain file reads from the safetensors files (no mmap, whose pages would count
as resident), in their own dtype; the output's header is written first (every name, dtype and
shape is known) and each merged tensor is written as soon as it is computed. The peak is the
largest tensor's inputs and output plus one chunk of float32 work (TIES also holds one float32
task vector for its top-k), not a model: measured 0.9-1.2 GB above the process's start for three
0.76 GB bf16 checkpoints (0.41 B parameters, a 100 M-entry embedding), and the check streams the
same way. The adapter merges (merge_and_unload, mixes) hold one model in memory, as peft does.
On CPU, ties and dare_* cost several times linear/slerp/task_arithmetic (top-k, random draws).

Verification (merge.verify): every variant is checked on its temporary copy before the rename, so
a merge that fails never appears at its path.
  - adapter folded into a model (merged, partners): every weight equals W + (alpha/r)·B·A computed
    here from the adapter's tensors, untouched weights are bit-identical, and the unmerged
    model + adapter gives the same logits as the merged model on fixed prompts;
  - adapter mixes: every weight equals W + the mix computed here from the source adapters'
    factors by the method's own formula (DARE with the masks peft drew, recorded), and the unmerged
    model + the mixed adapter (saved in <variant>/mixed_adapter/) gives the same logits;
  - full-model merges: every tensor equals a reference computed on the task vectors by code that
    does not call peft (DARE masks redrawn from the same seeds, TIES keeping the same top-k;
    tensors all inputs share must be copied bit for bit), all values are finite, the files open
    with safetensors' own reader, and a model of up to SMOKE_LOAD_MAX_BYTES loads with
    transformers and gives finite logits. No unmerged model exists to compare logits with, so
    none are compared.
Peak memory (resident, this step only where /proc allows resetting the high-water mark) is
recorded per merge and per verification in merge_report.json.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import json
import logging
import math
import os
import re
import resource
import shutil
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .artifacts import StageRun, atomic_path, sha256_path, write_json
from .models import make_files_readable, model_content_hash, pick_dtype, resolve_model

if TYPE_CHECKING:
    import torch

    from .config import AdapterMixConfig, ModelMergeConfig, MergeSweepConfig, Profile

log = logging.getLogger("platypus")

STAGE = "04_merge"
REPORT = "merge_report.json"
MERGE_INFO = "merge_info.json"  # inside each merged dir: what it was made from, and its checks
MERGED_VARIANT = "merged"
PARTNER_SUFFIX = "-platypus"
SWEEP_PREFIX = "sweep-"
METHOD = "merge_and_unload"
MIX_METHOD = "add_weighted_adapter"
MIXED_ADAPTER = "mixed_adapter"  # inside an adapter-mix variant: the combined adapter, unmerged
MERGE_FORMAT = 1  # bump when a method's arithmetic changes: old outputs then no longer count as reusable
KIND_ADAPTER, KIND_MIX, KIND_MODELS = "adapter_into_model", "adapter_mix", "model_merge"
RESERVED_VARIANTS = ("base", "adapter")  # names stage 05 gives another meaning
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MAX_SHARD_BYTES = 4 << 30
# Config fields two checkpoints must share for one LoRA to apply to both.
ARCHITECTURE_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads")
VERIFY_PROMPTS = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "Question: What is the sum of 17 and 25?\nAnswer:",
    "The mitochondria is the powerhouse of the cell because",
)
# Logits go through every layer: allow a relative error per logit scale on top of verify_atol.
LOGIT_RTOL_FP32 = 1e-4
SLERP_DOT_THRESHOLD = 0.9995  # mergekit's: nearer to parallel than this, slerp is computed as lerp
CHUNK = 1 << 22  # entries per step of a full-model merge and of its check: bounds their float32 work
SMOKE_LOAD_MAX_BYTES = 2 << 30  # a merged model up to this size is also loaded and run by its check


class MergeError(ValueError):
    """A merge that must not happen (incompatible models, unsupported adapter, existing output)."""


class MergeVerificationError(RuntimeError):
    """A merged model that does not equal what it was made from; the message carries the numbers."""


# ---------------------------------------------------------------- the adapter, read by hand
@dataclass
class LoraDelta:
    """One LoRA-adapted Linear module: its update is scale · B @ A."""

    module: str  # name in the causal LM, e.g. model.layers.0.mlp.gate_proj
    lora_a: "torch.Tensor"  # (r, in_features)
    lora_b: "torch.Tensor"  # (out_features, r)
    scale: float
    fan_in_fan_out: bool = False

    @property
    def rank(self) -> int:
        return int(self.lora_a.shape[0])

    @property
    def weight_shape(self) -> tuple[int, int]:
        shape = (self.lora_b.shape[0], self.lora_a.shape[1])
        return shape[::-1] if self.fan_in_fan_out else shape

    def delta(self) -> "torch.Tensor":
        d = (self.lora_b.float() @ self.lora_a.float()) * self.scale
        return d.T if self.fan_in_fan_out else d


@dataclass
class DenseDelta:
    """A weight update given in full (the expected update of an adapter mix)."""

    module: str
    value: "torch.Tensor"

    @property
    def weight_shape(self) -> tuple[int, int]:
        return tuple(self.value.shape)

    def delta(self) -> "torch.Tensor":
        return self.value


def _pattern_value(patterns: dict, module: str, default: Any) -> Any:
    # Same matching rule as peft's get_pattern_key: the pattern matches the end of the module name.
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_adapter(adapter_dir: str | Path) -> tuple[dict, dict[str, LoraDelta]]:
    """The adapter's config and its per-module LoRA factors, read from adapter_model.safetensors."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    weights_path = adapter_dir / ADAPTER_WEIGHTS
    for p in (config_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: not found; is {adapter_dir} a peft adapter saved by stage 03_finetune?")
    config = json.loads(config_path.read_text())
    if config.get("peft_type") != "LORA":
        raise MergeError(f"{config_path}: peft_type {config.get('peft_type')!r}; only LORA adapters can be merged")
    for flag in ("use_dora", "lora_bias"):
        if config.get(flag):
            raise MergeError(f"{config_path}: {flag}=true is not supported by this merge and its check")
    r_default, alpha_default = int(config["r"]), float(config["lora_alpha"])
    tensors = load_file(str(weights_path))
    factors: dict[str, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])\.weight", key)
        if not m:
            raise MergeError(f"{weights_path}: tensor {key!r} is not a LoRA A/B factor of a Linear layer "
                             "(modules_to_save / embedding LoRA are not supported by this merge)")
        factors.setdefault(m.group(1), {})[m.group(2)] = tensor
    if not factors:
        raise MergeError(f"{weights_path}: no LoRA tensors")
    deltas = {}
    for module, ab in sorted(factors.items()):
        if set(ab) != {"A", "B"}:
            raise MergeError(f"{weights_path}: module {module!r} has lora_{''.join(ab)} but not both A and B")
        a, b = ab["A"], ab["B"]
        r = a.shape[0]
        if b.shape[1] != r:
            raise MergeError(f"{weights_path}: module {module!r}: lora_A is {tuple(a.shape)}, lora_B {tuple(b.shape)}")
        if r != _pattern_value(config.get("rank_pattern"), module, r_default):
            raise MergeError(f"{weights_path}: module {module!r} has rank {r}, config says otherwise")
        alpha = float(_pattern_value(config.get("alpha_pattern"), module, alpha_default))
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        deltas[module] = LoraDelta(module, a, b, scale, bool(config.get("fan_in_fan_out")))
    return config, deltas


# ---------------------------------------------------------------- compatibility checks
def check_architecture(config, reference, label: str, reference_label: str) -> None:
    """Refuse to merge when `config` is not the same architecture as `reference` (the adapter's base)."""
    problems = []
    for key in ARCHITECTURE_KEYS:
        a, b = getattr(config, key, None), getattr(reference, key, None)
        if a != b:
            problems.append(f"{key}: {a} vs {b}")
    if problems:
        raise MergeError(f"{label} is not the same architecture as {reference_label}: {'; '.join(problems)}")
    if getattr(config, "vocab_size", None) != getattr(reference, "vocab_size", None):
        log.warning("%s has vocab_size %s, %s %s: tokenizers differ, the merge may behave oddly",
                    label, getattr(config, "vocab_size", None), reference_label,
                    getattr(reference, "vocab_size", None))


def check_targets(model, deltas: dict[str, LoraDelta | DenseDelta], label: str) -> None:
    """Every LoRA target module must exist in `model` as a Linear weight of the adapter's shape."""
    problems = []
    for name, d in deltas.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            problems.append(f"{name}: missing")
            continue
        weight = getattr(module, "weight", None)
        if weight is None or weight.dim() != 2:
            problems.append(f"{name}: {type(module).__name__} has no 2-D weight")
        elif tuple(weight.shape) != tuple(d.weight_shape):
            problems.append(f"{name}: weight {tuple(weight.shape)}, adapter needs {tuple(d.weight_shape)}")
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} modules in all)" if len(problems) > 8 else "")
        raise MergeError(f"the adapter does not fit {label}: {shown}")


def adapter_ranks(config: dict) -> set[int]:
    """Every rank an adapter uses (its r and any rank_pattern values)."""
    return {int(config["r"]), *(int(v) for v in (config.get("rank_pattern") or {}).values())}


# ---------------------------------------------------------------- memory
def peak_rss_mb() -> float:
    """The process's peak resident memory so far (getrusage; KiB on Linux). Monotonic over the process."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _proc_status_mb(field_name: str) -> float | None:
    try:
        m = re.search(rf"^{field_name}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return round(int(m.group(1)) / 1024, 1) if m else None


def _release_freed_memory() -> None:
    with contextlib.suppress(Exception):  # glibc keeps freed heap: hand it back so the next peak starts low
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _return_large_blocks_to_the_os() -> None:
    """glibc serves freed blocks of up to 32 MiB from its heap once it has seen one freed (a dynamic
    mmap threshold), so a stream of tensor-sized buffers fragments the heap and resident memory
    creeps up with the number of tensors. A fixed 1 MiB threshold maps every tensor buffer on its
    own and unmaps it when freed: memory stays at what is alive."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD


@contextlib.contextmanager
def measure_peak_rss() -> Iterator[dict]:
    """Peak resident memory of the block: {"peak_rss_mb", "rss_start_mb", "scope"}.

    On Linux the high-water mark is reset first (/proc/self/clear_refs, "5"), so the peak is this
    block's; elsewhere it is the process peak so far (scope "process").
    """
    _release_freed_memory()
    out: dict[str, Any] = {"rss_start_mb": _proc_status_mb("VmRSS"), "scope": "process"}
    try:
        Path("/proc/self/clear_refs").write_text("5")
        out["scope"] = "block"
    except OSError:
        pass
    try:
        yield out
    finally:
        hwm = _proc_status_mb("VmHWM") if out["scope"] == "block" else None
        out["peak_rss_mb"] = hwm if hwm is not None else peak_rss_mb()


# ---------------------------------------------------------------- safetensors, one tensor at a time
_ST_DTYPES = ("F64:float64 F32:float32 F16:float16 BF16:bfloat16 I64:int64 I32:int32 I16:int16 I8:int8 "
              "U8:uint8 BOOL:bool F8_E4M3:float8_e4m3fn F8_E5M2:float8_e5m2").split()


def _st_dtype(code: str) -> "torch.dtype":
    import torch

    names = dict(pair.split(":") for pair in _ST_DTYPES)
    if code not in names:
        raise MergeError(f"safetensors dtype {code!r} is not supported by this merge")
    return getattr(torch, names[code])


def _st_code(dtype: "torch.dtype") -> str:
    names = {v: k for k, v in (pair.split(":") for pair in _ST_DTYPES)}
    return names[str(dtype).replace("torch.", "")]


@dataclass
class _TensorEntry:
    file: Path
    dtype: str  # safetensors code, e.g. F32
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int


class SafetensorsCheckpoint:
    """The tensors of a local safetensors checkpoint (one file or an index of shards), read one at a
    time with plain file reads: memory holds only the tensor asked for."""

    def __init__(self, model_dir: str | Path):
        self.dir = Path(model_dir)
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (self.dir / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            raise MergeError(f"{self.dir}: no model.safetensors or model.safetensors.index.json; full-model "
                             "merges read safetensors checkpoints (re-save a .bin one with save_pretrained)")
        self.entries: dict[str, _TensorEntry] = {}
        for name in files:
            path = self.dir / name
            with open(path, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
            for key, meta in header.items():
                if key == "__metadata__":
                    continue
                start, end = meta["data_offsets"]
                self.entries[key] = _TensorEntry(path, meta["dtype"], tuple(meta["shape"]), 8 + n + start, 8 + n + end)

    def names(self) -> list[str]:
        return sorted(self.entries)

    def read(self, name: str) -> "torch.Tensor":
        import torch

        e = self.entries[name]
        dtype = _st_dtype(e.dtype)
        size = e.end - e.start
        if size == 0:
            return torch.empty(e.shape, dtype=dtype)
        buf = bytearray(size)
        with open(e.file, "rb") as fh:
            fh.seek(e.start)
            if fh.readinto(buf) != size:
                raise MergeError(f"{e.file}: truncated while reading tensor {name!r}")
        return torch.frombuffer(buf, dtype=dtype).reshape(e.shape)


def write_safetensors(out_dir: Path, specs: list[tuple[str, "torch.dtype", tuple[int, ...]]],
                      produce: Callable[[str], "torch.Tensor"], max_shard_bytes: int = MAX_SHARD_BYTES) -> list[str]:
    """Write tensors named in `specs` (name, dtype, shape), in that order, asking `produce(name)` for
    each just before it is written. The header goes first, so no tensor waits in memory for the rest.
    More than `max_shard_bytes` of tensors: shards plus model.safetensors.index.json, as HF names them."""
    import torch

    sized = [(name, dtype, shape, math.prod(shape) * torch.empty((), dtype=dtype).element_size())
             for name, dtype, shape in specs]
    shards: list[list] = [[]]
    filled = 0
    for item in sized:
        if shards[-1] and filled + item[3] > max_shard_bytes:
            shards.append([])
            filled = 0
        shards[-1].append(item)
        filled += item[3]
    files, weight_map = [], {}
    for i, shard in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, dtype, shape, nbytes in shard:
            header[name] = {"dtype": _st_code(dtype), "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
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
                weight_map[name] = fname
                del t  # before the next tensor is made
        files.append(fname)
    if len(shards) > 1:
        write_json(out_dir / "model.safetensors.index.json",
                   {"metadata": {"total_size": sum(s[3] for s in sized)}, "weight_map": weight_map})
    return files


# ---------------------------------------------------------------- tensor arithmetic: the merge
def _chunks(n: int) -> list[slice]:
    """Consecutive slices of CHUNK entries covering a flattened tensor of n entries."""
    return [slice(i, min(i + CHUNK, n)) for i in range(0, max(n, 1), CHUNK)]


def chunk_seed(seed: int, name: str, index: int) -> int:
    """The seed of one chunk's random draw (DARE): fixed by the run seed, the tensor's name and the
    chunk, so a mask does not depend on the order of the work, and a check can redraw it."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}:{index}".encode()).digest()[:8], "little") >> 1


def slerp_coefficients(t: float, v0: "torch.Tensor", v1: "torch.Tensor") -> tuple[float, float, bool]:
    """SLERP from v0 (t=0) to v1 (t=1) as mergekit computes it: the angle between the flattened,
    normalised tensors gives coefficients (c0, c1) that multiply the tensors themselves; nearly
    parallel (|cos| > SLERP_DOT_THRESHOLD) or zero: linear (1-t, t). Returns (c0, c1, linear)."""
    a, b = v0.reshape(-1), v1.reshape(-1)
    n0 = n1 = dot = 0.0
    for part in _chunks(a.numel()):
        x, y = a[part].float(), b[part].float()
        n0, n1, dot = n0 + float(x @ x), n1 + float(y @ y), dot + float(x @ y)
    if n0 < 1e-24 or n1 < 1e-24:
        return 1 - t, t, True
    cos = dot / math.sqrt(n0 * n1)
    if abs(cos) > SLERP_DOT_THRESHOLD:
        return 1 - t, t, True
    theta = math.acos(max(-1.0, min(1.0, cos)))
    return math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta), False


def _top_magnitudes(tensor: "torch.Tensor", base: "torch.Tensor", density: float) -> "torch.Tensor":
    """TIES's trim: the k = int(density·n) entries of the task vector (tensor - base) with the largest
    magnitude, as a bool mask; among equal magnitudes at the cut, the first by position (peft leaves
    that choice to torch.topk; kept zeros change nothing, so zeros at the cut are not kept). The
    k-th largest magnitude is found by bisection on the float32 bit patterns (non-negative floats
    order as their bits): about 31 counting passes over one float32 copy, where torch.topk would
    sort-select with several copies (2 GB and 15 s for a 100 M-entry tensor here)."""
    import torch

    magnitude = tensor.reshape(-1).to(torch.float32, copy=True).sub_(base.reshape(-1)).abs_()  # never the input
    k = int(density * magnitude.numel())
    if density >= 1:
        return torch.ones(magnitude.numel(), dtype=torch.bool)
    if k == 0:
        return torch.zeros(magnitude.numel(), dtype=torch.bool)
    bits = magnitude.view(torch.int32)
    low, high = 0, int(bits.max())  # invariant: at least k entries have bits >= low
    while low < high:
        middle = (low + high + 1) // 2
        if int((bits >= middle).sum()) >= k:
            low = middle
        else:
            high = middle - 1
    keep = bits > low
    missing = k - int(keep.sum())
    if missing > 0 and low > 0:
        keep[(bits == low).nonzero().squeeze(1)[:missing]] = True
    return keep


def merge_tensor(method: str, tensors: list["torch.Tensor"], base: "torch.Tensor | None", weights: list[float],
                 density: float | None, majority_sign_method: str, seed: int, name: str,
                 out_dtype=None) -> tuple["torch.Tensor", dict]:
    """One tensor of a full-model merge, computed in float32 with peft's merge utilities (SLERP: ours),
    CHUNK entries at a time after the tensor-wide choices (TIES: each task vector's top-k; SLERP: the
    angle), so memory holds the inputs, the output and one chunk's work, not float32 copies of it all.
    DARE draws each chunk's mask from chunk_seed(seed, name, chunk)."""
    import torch
    from peft.utils import merge_utils

    out_dtype = out_dtype or tensors[0].dtype
    same = base if base is not None else tensors[0]
    if all(torch.equal(t, same) for t in tensors):
        return same.to(out_dtype, copy=True), {"unchanged": True}  # no task vector: nothing to merge
    w = torch.tensor(weights, dtype=torch.float32)
    info: dict[str, Any] = {}
    flat = [t.reshape(-1) for t in tensors]
    flat_base = base.reshape(-1) if base is not None else None
    keep = None
    if method == "slerp":
        c0, c1, info["slerp_linear"] = slerp_coefficients(float(w[1] / w.sum()), tensors[0], tensors[1])
    elif method == "ties":  # the trim is tensor-wide: each task vector's kept entries, one vector at a time
        keep = [_top_magnitudes(t, flat_base, density) for t in flat]
    elif method not in ("linear", "task_arithmetic", "dare_linear", "dare_ties"):
        raise MergeError(f"unknown merge method {method!r}")
    out = torch.empty(flat[0].numel(), dtype=out_dtype)
    for index, part in enumerate(_chunks(out.numel())):
        xs = [t[part].float() for t in flat]
        if method == "linear":
            out[part] = merge_utils.task_arithmetic(xs, w / w.sum()).to(out_dtype)
            continue
        if method == "slerp":
            out[part] = (c0 * xs[0] + c1 * xs[1]).to(out_dtype)
            continue
        b = flat_base[part].float()
        task_vectors = [x - b for x in xs]
        if method == "task_arithmetic":
            mixed = merge_utils.task_arithmetic(task_vectors, w)
        elif method == "ties":  # peft's ties() with the trim already done tensor-wide
            trimmed = torch.stack([tv * k[part] for tv, k in zip(task_vectors, keep)])
            signs = merge_utils.calculate_majority_sign_mask(trimmed, method=majority_sign_method)
            weighted = trimmed * merge_utils.reshape_weight_task_tensors(trimmed, w)
            mixed = merge_utils.disjoint_merge(weighted, signs)
        else:
            with torch.random.fork_rng(devices=[]):  # peft draws from the global generator: seed it per chunk
                torch.manual_seed(chunk_seed(seed, name, index))
                if method == "dare_linear":
                    mixed = merge_utils.dare_linear(task_vectors, w, density)
                else:
                    mixed = merge_utils.dare_ties(task_vectors, w, density, majority_sign_method)
        out[part] = (b + mixed).to(out_dtype)
    return out.reshape(tensors[0].shape), info


# ---------------------------------------------------------------- tensor arithmetic: the check
# Written from the methods' definitions without peft. Shared with the merge are only the random
# draw (same generator, same seed) and the top-k choice among equal magnitudes. Full-model checks
# compute in float32 (another order of operations than peft's: a few ulps apart, far inside the
# tolerance, at half the time and memory of float64); the small adapter-mix checks in float64.
SCALE_SAMPLE = 1 << 16  # entries per tensor for the check's scale figures


def _peft_keep_top(x32: "torch.Tensor", density: float) -> "torch.Tensor":
    """The entries peft's magnitude_based_pruning keeps (add_weighted_adapter's TIES): torch.topk's
    k = int(density·n) largest magnitudes, its own choice among equals (bool mask)."""
    import torch

    if density >= 1:
        return torch.ones_like(x32, dtype=torch.bool)
    keep = torch.zeros(x32.numel(), dtype=torch.bool)
    keep[torch.topk(x32.reshape(-1).abs(), int(density * x32.numel())).indices] = True
    return keep.reshape(x32.shape)


def _reference_keep_top(x32: "torch.Tensor", density: float) -> "torch.Tensor":
    """The entries a full-model TIES keeps (see _top_magnitudes), found another way: the k-th
    largest magnitude by torch.kthvalue, everything above it, then the first equals by position."""
    import torch

    magnitude = x32.reshape(-1).abs_()
    k = int(density * magnitude.numel())
    if density >= 1 or k == 0:
        return torch.full((magnitude.numel(),), density >= 1, dtype=torch.bool)
    threshold = magnitude.kthvalue(magnitude.numel() - k + 1).values
    keep = magnitude > threshold
    missing = k - int(keep.sum())
    if missing > 0 and float(threshold) > 0:
        keep[(magnitude == threshold).nonzero().squeeze(1)[:missing]] = True
    return keep


def _reference_dare_masks(length: int, count: int, density: float, seed: int) -> list["torch.Tensor"]:
    """The entries DARE keeps in one chunk, drawn as peft draws them (one bernoulli per task vector,
    in order) from the chunk's seed."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [torch.bernoulli(torch.full((length,), density, dtype=torch.float32)).bool() for _ in range(count)]


def _reference_combine(method: str, xs: list["torch.Tensor"], weights: list[float], density: float | None,
                       majority_sign_method: str, masks: list["torch.Tensor"] | None = None) -> "torch.Tensor":
    """Combine task tensors `xs` by `method`: task_arithmetic/linear: weighted sum; ties:
    keep the entries in `masks` (the top-density magnitudes), elect a sign per entry, weighted mean
    of the entries that agree with it; dare_linear / dare_ties: keep the entries in `masks` (random),
    rescale by 1/density, then a weighted sum / as ties. masks None: keep everything."""
    import torch

    if method in ("linear", "task_arithmetic"):
        return sum(w * x for w, x in zip(weights, xs))
    if method not in ("ties", "dare_linear", "dare_ties"):
        raise MergeError(f"unknown method {method!r}")
    kept = xs if masks is None else [x * m for x, m in zip(xs, masks)]
    if method.startswith("dare") and masks is not None:
        kept = [x / density for x in kept]
    if method == "dare_linear":
        return sum(w * x for w, x in zip(weights, kept))
    signs = [torch.sign(x) for x in kept]
    score = sum(kept) if majority_sign_method == "total" else sum(signs)
    elected = torch.where(score >= 0, 1.0, -1.0).to(kept[0].dtype)
    agree = [(s == elected) for s in signs]  # a zero agrees with nothing
    total = sum(w * x * a for w, x, a in zip(weights, kept, agree))
    count = sum(a.to(kept[0].dtype) for a in agree)
    return total / count.clamp(min=1.0)


def _slerp_coefficients(t: float, v0: "torch.Tensor", v1: "torch.Tensor") -> tuple[float, float, bool]:
    """(c0, c1, linear): slerp(t, v0, v1) = c0·v0 + c1·v1, from float64 sums taken chunk by chunk."""
    a, b = v0.reshape(-1), v1.reshape(-1)
    n0 = n1 = dot = 0.0
    for part in _chunks(a.numel()):
        x, y = a[part].double(), b[part].double()
        n0, n1, dot = n0 + float(x @ x), n1 + float(y @ y), dot + float(x @ y)
    n0, n1 = math.sqrt(n0), math.sqrt(n1)
    if n0 < 1e-12 or n1 < 1e-12 or abs(dot / (n0 * n1)) > SLERP_DOT_THRESHOLD:
        return 1 - t, t, True
    # the angle from chord lengths |u0 - u1|, |u0 + u1| of the unit vectors (stable near 0 and pi)
    chord_minus = math.sqrt(max(0.0, 2 - 2 * dot / (n0 * n1)))
    chord_plus = math.sqrt(max(0.0, 2 + 2 * dot / (n0 * n1)))
    theta = 2 * math.atan2(chord_minus, chord_plus)
    return math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta), False


class ReferenceMerge:
    """The value `merge_tensor` must give for one tensor, in float32, chunk by chunk after the
    tensor-wide choices (TIES top-k, SLERP angle; DARE masks are redrawn per chunk from the chunk's
    seed), so that checking a large tensor needs little more than its inputs. `stats`: what was
    drawn or chosen."""

    def __init__(self, method: str, tensors: list["torch.Tensor"], base: "torch.Tensor | None",
                 weights: list[float], density: float | None, majority_sign_method: str, seed: int, name: str):
        import torch

        self.method, self.weights, self.density, self.msm = method, list(weights), density, majority_sign_method
        self.seed, self.name = seed, name
        self.flat = [t.reshape(-1) for t in tensors]
        self.base = base.reshape(-1) if base is not None else None
        self.keep = None
        self.stats: dict[str, Any] = {}
        # all inputs equal: every method gives that tensor (task vectors are zero; slerp of equal tensors)
        same = base if base is not None else tensors[0]
        self.unchanged = all(torch.equal(t, same) for t in tensors)
        if self.unchanged:
            return
        if method == "slerp":
            c0, c1, linear = _slerp_coefficients(weights[1] / sum(weights), tensors[0], tensors[1])
            self.coefficients = (c0, c1)
            self.stats["slerp_linear"] = linear
        elif method == "ties":
            self.keep = [_reference_keep_top(t.to(torch.float32, copy=True).sub_(base), density).reshape(-1)
                         for t in tensors]
        elif method.startswith("dare") and density < 1:
            self.stats = {"kept": 0, "entries": 0}

    def chunk(self, part: slice) -> "torch.Tensor":
        """Entries `part` (one of _chunks) of the flattened expected tensor, float32."""
        if self.unchanged:
            return (self.base if self.base is not None else self.flat[0])[part].float()
        xs = [t[part].float() for t in self.flat]
        if self.method == "linear":
            return sum(w * x for w, x in zip(self.weights, xs)) / sum(self.weights)
        if self.method == "slerp":
            return self.coefficients[0] * xs[0] + self.coefficients[1] * xs[1]
        b = self.base[part].float()
        masks = None
        if self.keep is not None:
            masks = [k[part] for k in self.keep]
        elif "kept" in self.stats:
            seed = chunk_seed(self.seed, self.name, part.start // CHUNK)
            masks = _reference_dare_masks(part.stop - part.start, len(xs), self.density, seed)
            self.stats["kept"] += sum(int(m.sum()) for m in masks)
            self.stats["entries"] += sum(m.numel() for m in masks)
        return b + _reference_combine(self.method, [x - b for x in xs], self.weights, self.density, self.msm, masks)


def reference_adapter_mix(sources: list[dict[str, LoraDelta]], weights: list[float], combination_type: str,
                          density: float | None, svd_rank: int | None, majority_sign_method: str,
                          masks: list["torch.Tensor"], module_order: list[str]) -> dict[str, DenseDelta]:
    """The weight update of each module after add_weighted_adapter(...) and merging, from the source
    adapters' factors (float64), following peft's definitions of the combination types:
      cat:  sum_i w_i s_i B_i A_i (exact);
      svd:  the best rank-k approximation of that sum (k = svd_rank or the largest input rank);
      linear / ties / dare_*: the A factors and the B factors are combined separately, with weights
            sign(c_i)·sqrt|c_i| on A and sqrt|c_i| on B (c_i = w_i s_i), and the update is B_mix @ A_mix.
    `masks`: the DARE draws in the order peft made them (modules in `module_order`, A then B, adapters
    in order). An adapter without a module is left out of that module's combination, as peft does."""
    import torch

    modules = [m for m in module_order if any(m in s for s in sources)]
    missing = sorted({m for s in sources for m in s} - set(modules))
    if missing:
        raise MergeVerificationError(f"adapter modules not in the model: {missing[:5]}")
    max_rank = max(d.rank for s in sources for d in s.values())
    draws = iter(masks)
    out = {}
    for module in modules:
        present = [(w, s[module]) for w, s in zip(weights, sources) if module in s]
        fifo = present[0][1].fan_in_fan_out
        if combination_type in ("cat", "svd"):
            total = sum(w * d.scale * (d.lora_b.double() @ d.lora_a.double()) for w, d in present)
            if combination_type == "svd":
                u, s, vh = torch.linalg.svd(total, full_matrices=False)
                k = svd_rank or max_rank
                total = (u[:, :k] * s[:k]) @ vh[:k]
        else:
            c = [w * d.scale for w, d in present]
            factors = {}
            for side, weights_side in (("A", [math.copysign(math.sqrt(abs(x)), x) if x else 0.0 for x in c]),
                                       ("B", [math.sqrt(abs(x)) for x in c])):
                tensors = [d.lora_a if side == "A" else d.lora_b for _, d in present]
                side_masks = None
                if combination_type == "ties":
                    side_masks = [_peft_keep_top(t.float(), density) for t in tensors]
                elif combination_type.startswith("dare") and density < 1:
                    side_masks = [next(draws).bool() for _ in tensors]
                    if any(tuple(m.shape) != tuple(t.shape) for m, t in zip(side_masks, tensors)):
                        raise MergeVerificationError(f"{module}: recorded DARE masks do not line up with lora_{side}")
                factors[side] = _reference_combine(combination_type, [t.double() for t in tensors], weights_side,
                                                   density, majority_sign_method, side_masks)
            total = factors["B"] @ factors["A"]
        out[module] = DenseDelta(module, total.T if fifo else total)
    if next(draws, None) is not None:
        raise MergeVerificationError(f"peft drew {len(masks)} DARE masks; the check used fewer")
    return out


@contextlib.contextmanager
def _recording_bernoulli() -> Iterator[list]:
    """Record every torch.bernoulli draw in the block (peft's DARE masks), for the check to reuse."""
    import torch

    draws: list = []
    original = torch.bernoulli

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        draws.append(out.detach().clone())
        return out

    torch.bernoulli = recording
    try:
        yield draws
    finally:
        torch.bernoulli = original


# ---------------------------------------------------------------- load, save, verify
def _load_lm(path: str, dtype):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.eval()
    return model


def _has_tokenizer(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "tokenizer_config.json").is_file()


def _save_tokenizer(tokenizer_dirs: list[str], out: Path, label: str) -> str:
    """Save the first usable tokenizer among `tokenizer_dirs` (a hub id counts as usable) into `out`."""
    from transformers import AutoTokenizer

    source = next((d for d in tokenizer_dirs if _has_tokenizer(d) or not Path(d).exists()), None)
    if source is None:
        raise MergeError(f"no tokenizer found for {label} in {tokenizer_dirs}")
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return str(source)


def _tolerances(atol: float, dtype) -> tuple[float, float]:
    """(weight rounding allowance per unit |W|, logit relative tolerance) for the merge dtype."""
    import torch

    if dtype == torch.float32:
        return 0.0, LOGIT_RTOL_FP32
    eps = torch.finfo(dtype).eps  # low precision: the merged weight is rounded once to this
    return eps, 8 * eps


def verify_merged(merged_dir: str | Path, source: str, adapter_dir: str | Path,
                  deltas: dict[str, LoraDelta | DenseDelta], atol: float, dtype, prompts=VERIFY_PROMPTS) -> dict:
    """Reload a merged model and check it equals source + the expected updates; raise MergeVerificationError if not.

    (a) every weight: targeted ones equal W + delta (`deltas`, computed by the caller from the
        adapter tensors), all others equal the source's; (b) the unmerged PeftModel(source,
        adapter_dir) and the merged model give the same logits on fixed prompts.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    weight_rel, logit_rtol = _tolerances(atol, dtype)
    merged = _load_lm(str(merged_dir), dtype)
    source_model = _load_lm(source, dtype)
    merged_sd, source_sd = merged.state_dict(), source_model.state_dict()
    if set(merged_sd) != set(source_sd):
        raise MergeVerificationError(f"{merged_dir}: parameter names differ from {source}: "
                                     f"{sorted(set(merged_sd) ^ set(source_sd))[:5]}")
    targeted = {f"{name}.weight": d for name, d in deltas.items()}
    missing = sorted(set(targeted) - set(source_sd))
    if missing:
        raise MergeVerificationError(f"{merged_dir}: targeted weights absent: {missing[:5]}")
    max_weight_diff = max_other_diff = max_delta = 0.0
    failures = []
    with torch.no_grad():
        for key, source_w in source_sd.items():
            got = merged_sd[key].float()
            if key in targeted:
                delta = targeted[key].delta()
                expected = source_w.to(delta.dtype) + delta
                diff = float((got.to(delta.dtype) - expected).abs().max())
                tol = atol + weight_rel * float(expected.abs().max())
                max_weight_diff = max(max_weight_diff, diff)
                max_delta = max(max_delta, float(delta.abs().max()))
            else:  # untouched by the adapter: must be bit-identical in the common case
                diff = 0.0 if torch.equal(merged_sd[key], source_w) else float((got - source_w.float()).abs().max())
                tol = atol
                max_other_diff = max(max_other_diff, diff)
            if not diff <= tol:
                failures.append(f"{key}: max abs diff {diff:.3g} > {tol:.3g}")
    if failures:
        raise MergeVerificationError(f"{merged_dir}: weights are not {source} + adapter "
                                     f"({len(failures)} tensors): " + "; ".join(failures[:5]))
    if max_delta == 0.0:
        log.warning("adapter %s is a no-op (all LoRA deltas are zero): merged == source", adapter_dir)
    del merged_sd, source_sd

    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    if tokenizer.pad_token is None:  # only to batch the prompts here; padded positions are not compared
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # causal attention: real tokens never see the right padding
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True)
    real = batch["attention_mask"].bool()
    peft_model = PeftModel.from_pretrained(source_model, str(adapter_dir), is_trainable=False)
    peft_model.eval()
    with torch.no_grad():
        merged_logits = merged(**batch).logits.float()[real]
        peft_logits = peft_model(**batch).logits.float()[real]
        with peft_model.disable_adapter():
            source_logits = peft_model(**batch).logits.float()[real]
    max_logit_diff = float((merged_logits - peft_logits).abs().max())
    max_effect = float((peft_logits - source_logits).abs().max())
    logit_scale = float(peft_logits.abs().max())
    logit_tol = atol + logit_rtol * max(1.0, logit_scale)
    result = {
        "max_abs_weight_diff": max_weight_diff,
        "max_abs_untargeted_weight_diff": max_other_diff,
        "max_abs_delta": max_delta,
        "max_abs_logit_diff": max_logit_diff,
        "max_abs_adapter_logit_effect": max_effect,  # how far the adapter moves logits: the check's scale
        "logit_tolerance": logit_tol,
        "verified_modules": len(targeted),
        "prompts": len(prompts),
    }
    log.info("verified %s: weight diff %.3g, logit diff %.3g (adapter moves logits by %.3g)",
             merged_dir, max_weight_diff, max_logit_diff, max_effect)
    if not max_logit_diff <= logit_tol:
        raise MergeVerificationError(f"{merged_dir}: merged logits differ from unmerged {source} + adapter by "
                                     f"{max_logit_diff:.3g} > tolerance {logit_tol:.3g} (adapter effect "
                                     f"{max_effect:.3g})")
    del peft_model, source_model, merged
    gc.collect()
    return result


def _write_variant(out_dir: Path, build: Callable[[Path], dict], verify: Callable[[Path], dict] | None,
                   info: dict) -> dict:
    """Build a model into a temporary folder, verify it there, then move it to `out_dir` in one
    rename: a merge that fails its check never appears. Returns the merge_info written beside it."""
    info = dict(info)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        with measure_peak_rss() as memory:
            info.update(build(tmp) or {})
        info["memory"] = {"merge_peak_rss_mb": memory["peak_rss_mb"], "merge_rss_start_mb": memory["rss_start_mb"],
                          "scope": memory["scope"]}
        if verify is not None:
            with measure_peak_rss() as memory:
                info["verification"] = verify(tmp)
            info["memory"].update(verify_peak_rss_mb=memory["peak_rss_mb"])
        _release_freed_memory()
        info["content_sha256"] = model_content_hash(tmp)
        write_json(tmp / MERGE_INFO, info)
        make_files_readable(tmp)
    return info


# ---------------------------------------------------------------- adapter into a model
Steps = tuple[Callable[[Path], dict], Callable[[Path], dict]]  # (build into a folder, verify a folder)


def adapter_merge_steps(source: str, adapter_dir: Path, deltas: dict[str, LoraDelta], tokenizer_dirs: list[str],
                        dtype, atol: float, label: str) -> Steps:
    """Merge an adapter into `source` with peft merge_and_unload; check with verify_merged."""

    def build(tmp: Path) -> dict:
        from peft import PeftModel

        model = _load_lm(source, dtype)
        check_targets(model, deltas, source)
        merged = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False).merge_and_unload()
        merged.save_pretrained(tmp)
        del merged, model
        return {"tokenizer_from": _save_tokenizer(tokenizer_dirs, tmp, label)}

    def check(path: Path) -> dict:
        return verify_merged(path, source, adapter_dir, deltas, atol, dtype)

    return build, check


def merge_adapter_into(source: str, adapter_dir: Path, out_dir: Path, deltas: dict[str, LoraDelta],
                       tokenizer_dirs: list[str], dtype, verify: bool, atol: float, info: dict) -> dict:
    """Merge the adapter into `source` and save a full model at `out_dir`, atomically, verified
    before the rename. Returns the merge_info written beside the weights."""
    build, check = adapter_merge_steps(source, adapter_dir, deltas, tokenizer_dirs, dtype, atol, out_dir.name)
    return _write_variant(out_dir, build, check if verify else None, info)


# ---------------------------------------------------------------- adapter mixes
def adapter_mix_steps(source: str, adapter_dirs: list[Path], mix: "AdapterMixConfig", tokenizer_dirs: list[str],
                      dtype, seed: int, atol: float) -> Steps:
    """Combine adapters with peft's add_weighted_adapter and merge the mix into `source` (the mix
    itself, unmerged, is kept in <variant>/mixed_adapter/); check against reference_adapter_mix."""
    sources = [read_adapter(d) for d in adapter_dirs]
    ranks = [sorted(adapter_ranks(cfg)) for cfg, _ in sources]
    if mix.combination_type in ("linear", "ties", "dare_linear", "dare_ties") and len({tuple(r) for r in ranks}) > 1:
        shown = ", ".join(f"{d} r={'/'.join(map(str, r))}" for d, r in zip(adapter_dirs, ranks))
        raise MergeError(f"adapter mix {mix.name!r}: combination_type {mix.combination_type} combines the LoRA "
                         f"factors entry by entry and needs adapters of equal rank; got {shown} "
                         "(cat and svd take any ranks)")
    drawn = mix.combination_type.startswith("dare") and mix.density < 1
    state: dict[str, Any] = {}

    def build(tmp: Path) -> dict:
        import torch
        from peft import PeftModel

        model = _load_lm(source, dtype)
        for d, (_, deltas) in zip(adapter_dirs, sources):
            check_targets(model, deltas, f"{source} (adapter {d})")
        state["module_order"] = [name for name, _ in model.named_modules()]
        names = [f"source{i}" for i in range(len(adapter_dirs))]
        peft_model = PeftModel.from_pretrained(model, str(adapter_dirs[0]), adapter_name=names[0], is_trainable=False)
        for name, d in zip(names[1:], adapter_dirs[1:]):
            peft_model.load_adapter(str(d), adapter_name=name, is_trainable=False)
        with _recording_bernoulli() as draws, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            peft_model.add_weighted_adapter(
                names, list(mix.weights), "default", combination_type=mix.combination_type,
                svd_rank=mix.svd_rank, density=mix.density, majority_sign_method=mix.majority_sign_method)
        state["masks"] = draws
        peft_model.set_adapter("default")
        peft_model.save_pretrained(str(tmp / MIXED_ADAPTER), selected_adapters=["default"])
        merged = peft_model.merge_and_unload(adapter_names=["default"])
        merged.save_pretrained(tmp)
        del merged, peft_model, model
        out = {"tokenizer_from": _save_tokenizer(tokenizer_dirs, tmp, mix.name)}
        if draws:
            out["dare_kept_share"] = round(sum(float(m.sum()) for m in draws) / sum(m.numel() for m in draws), 6)
        return out

    def check(path: Path) -> dict:
        if "module_order" not in state:  # an existing mix, made without verification
            if drawn:
                raise MergeError(f"{path}: a DARE mix can only be verified when it is made (its random masks "
                                 "are not kept); pass --force to make it again")
            state["module_order"] = [n for n, _ in _load_lm(source, dtype).named_modules()]
        expected = reference_adapter_mix([d for _, d in sources], list(mix.weights), mix.combination_type,
                                         mix.density, mix.svd_rank, mix.majority_sign_method,
                                         state.get("masks", []), state["module_order"])
        result = verify_merged(path, source, path / MIXED_ADAPTER, expected, atol, dtype)
        if state.get("masks"):
            result["dare_masks_checked"] = len(state["masks"])
        return result

    return build, check


# ---------------------------------------------------------------- full-model merges
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

    @property
    def uses_base(self) -> bool:
        return self.method not in ("linear", "slerp")


def _open_checkpoints(spec: ModelMergeSpec) -> tuple[list[SafetensorsCheckpoint], SafetensorsCheckpoint | None]:
    models = [SafetensorsCheckpoint(p) for p in spec.models]
    base = SafetensorsCheckpoint(spec.base) if spec.uses_base else None
    return models, base


def check_model_merge_inputs(spec: ModelMergeSpec) -> list[str]:
    """Refuse inputs that are not fine-tunes of one architecture with identical tensor names and
    shapes; return the tensor names (sorted)."""
    from transformers import AutoConfig

    labelled = list(zip(spec.labels, spec.models))
    if spec.uses_base:
        labelled.append((f"base {spec.base_label}", spec.base))
    ref_label, ref_path = labelled[0]
    ref_config = AutoConfig.from_pretrained(ref_path)
    for label, path in labelled[1:]:
        check_architecture(AutoConfig.from_pretrained(path), ref_config, f"{spec.name}: {label} ({path})", ref_label)
    checkpoints = [SafetensorsCheckpoint(p) for _, p in labelled]
    names = checkpoints[0].names()
    for (label, _), ckpt in zip(labelled[1:], checkpoints[1:]):
        if ckpt.names() != names:
            only_ref, only_here = sorted(set(names) - set(ckpt.names())), sorted(set(ckpt.names()) - set(names))
            raise MergeError(f"{spec.name}: {label} does not have the tensors of {ref_label}: missing "
                             f"{only_ref[:5]}, extra {only_here[:5]}")
        for n in names:
            a, b = checkpoints[0].entries[n], ckpt.entries[n]
            if a.shape != b.shape:
                raise MergeError(f"{spec.name}: tensor {n} is {b.shape} in {label}, {a.shape} in {ref_label}")
            if _st_dtype(a.dtype).is_floating_point != _st_dtype(b.dtype).is_floating_point:
                raise MergeError(f"{spec.name}: tensor {n} is {b.dtype} in {label}, {a.dtype} in {ref_label}")
    return names


def model_merge_steps(spec: ModelMergeSpec, tokenizer_dirs: list[str], dtype, seed: int, atol: float) -> Steps:
    """Merge full models tensor by tensor (see merge_tensor), streaming; check against ReferenceMerge."""
    import torch
    from peft.utils import merge_utils  # noqa: F401 - imported here, not inside the merge's memory measurement

    _return_large_blocks_to_the_os()

    names = check_model_merge_inputs(spec)

    def build(tmp: Path) -> dict:
        models, base = _open_checkpoints(spec)
        stats = {"tensors": len(names), "unchanged_tensors": 0, "slerp_linear_tensors": 0, "non_float_tensors": 0}
        specs = []
        for n in names:
            e = models[0].entries[n]
            src = _st_dtype(e.dtype)
            specs.append((n, dtype if src.is_floating_point else src, e.shape))

        def produce(name: str) -> "torch.Tensor":
            tensors = [m.read(name) for m in models]
            if not tensors[0].is_floating_point():  # ids, masks: must agree, are copied
                stats["non_float_tensors"] += 1
                if any(not torch.equal(tensors[0], t) for t in tensors[1:]):
                    raise MergeError(f"{spec.name}: non-float tensor {name} differs between the models")
                return tensors[0]
            base_t = base.read(name) if base is not None else None
            merged, info = merge_tensor(spec.method, tensors, base_t, spec.weights, spec.density,
                                        spec.majority_sign_method, seed, name, dtype)
            stats["slerp_linear_tensors"] += bool(info.get("slerp_linear"))
            stats["unchanged_tensors"] += bool(info.get("unchanged"))
            return merged.to(dtype)

        stats["files"] = write_safetensors(tmp, specs, produce)
        config = json.loads((Path(spec.models[0]) / "config.json").read_text())
        for key in ("dtype", "torch_dtype"):
            if key in config:
                config[key] = str(dtype).replace("torch.", "")
        write_json(tmp / "config.json", config)
        gen = Path(spec.models[0]) / "generation_config.json"
        if gen.is_file():
            shutil.copyfile(gen, tmp / "generation_config.json")
        stats["tokenizer_from"] = _save_tokenizer(tokenizer_dirs, tmp, spec.name)
        if spec.method != "slerp":
            stats.pop("slerp_linear_tensors")
        return stats

    def check(path: Path) -> dict:
        return verify_model_merge(path, spec, dtype, seed, atol)

    return build, check


def _check_tensor(name: str, merged: SafetensorsCheckpoint, models: list[SafetensorsCheckpoint],
                  base: SafetensorsCheckpoint | None, spec: ModelMergeSpec, dtype, seed: int, atol: float) -> dict:
    """One tensor of verify_model_merge: {"failure"} or its figures. A function of its own so that
    one tensor's buffers are gone before the next is read."""
    import torch

    got = merged.read(name)
    tensors = [m.read(name) for m in models]
    if not got.is_floating_point():
        same = torch.equal(got, tensors[0])
        return {} if same else {"failure": f"{name}: non-float tensor differs from {spec.labels[0]}"}
    if got.dtype != dtype:
        return {"failure": f"{name}: saved as {got.dtype}, not {dtype}"}
    reference = ReferenceMerge(spec.method, tensors, base.read(name) if base is not None else None,
                               spec.weights, spec.density, spec.majority_sign_method, seed, name)
    if reference.unchanged and torch.equal(got, reference.flat[0].reshape(got.shape).to(dtype)):
        return {"unchanged": 1}  # every input equal: the merge is that tensor, bit for bit
    flat_got = got.reshape(-1)
    if not bool(torch.isfinite(flat_got).all()):
        return {"failure": f"{name}: non-finite values"}
    rel = 4 * (torch.finfo(dtype).eps + torch.finfo(torch.float32).eps)  # rounding to dtype, float32 arithmetic
    diff = excess = 0.0
    for part in _chunks(flat_got.numel()):
        expected = reference.chunk(part)
        gap = (flat_got[part].float() - expected).abs_()
        if gap.numel():
            diff = max(diff, float(gap.max()))
            excess = max(excess, float(gap.sub_(expected.abs_().mul_(rel)).max()))
    out = {"diff": diff, "kept": reference.stats.get("kept", 0), "entries": reference.stats.get("entries", 0),
           "slerp_linear": int(bool(reference.stats.get("slerp_linear")))}
    # the check's scale, on a sample of entries: how far the merge is from the nearest input,
    # and how far apart the inputs are
    step = max(1, flat_got.numel() // SCALE_SAMPLE)
    sample = flat_got[::step].float()
    if sample.numel():
        inputs = [t[::step].float() for t in reference.flat]
        out["change"] = min(float((sample - t).abs().max()) for t in inputs)
        out["moved"] = float((inputs[0] - inputs[-1]).abs().max())
    if not excess <= atol:
        out["failure"] = f"{name}: max abs diff {diff:.3g} from the reference (tolerance {atol:.3g} + {rel:.2g}·|value|)"
    return out


def verify_model_merge(merged_dir: str | Path, spec: ModelMergeSpec, dtype, seed: int, atol: float) -> dict:
    """Every tensor of a full-model merge equals the reference computed on the inputs (within atol
    plus the rounding of the output dtype) and is finite, the tensor set is the inputs', and the
    model passes _smoke_test. Streams like the merge."""
    merged = SafetensorsCheckpoint(merged_dir)
    models, base = _open_checkpoints(spec)
    if merged.names() != models[0].names():
        raise MergeVerificationError(f"{merged_dir}: tensor names differ from {spec.labels[0]}: "
                                     f"{sorted(set(merged.names()) ^ set(models[0].names()))[:5]}")
    max_diff = max_change = max_moved = 0.0
    kept = entries = slerp_linear = unchanged = 0
    failures = []
    for name in merged.names():
        one = _check_tensor(name, merged, models, base, spec, dtype, seed, atol)
        if "failure" in one:
            failures.append(one["failure"])
        max_diff = max(max_diff, one.get("diff", 0.0))
        max_change = max(max_change, one.get("change", 0.0))
        max_moved = max(max_moved, one.get("moved", 0.0))
        kept, entries = kept + one.get("kept", 0), entries + one.get("entries", 0)
        slerp_linear += one.get("slerp_linear", 0)
        unchanged += one.get("unchanged", 0)
    if failures:
        raise MergeVerificationError(f"{merged_dir}: not the {spec.method} merge of {spec.labels} "
                                     f"({len(failures)} tensors): " + "; ".join(failures[:5]))
    result: dict[str, Any] = {
        "max_abs_weight_diff": max_diff,
        "max_abs_distance_to_nearest_input": max_change,  # 0: the merge equals one input (sampled)
        "max_abs_input_difference": max_moved,  # how different the inputs are: the check's scale (sampled)
        "verified_tensors": len(merged.names()),
        "unchanged_tensors": unchanged,  # every input equal (no task vector): the merge must copy them
    }
    if entries:
        result["dare_kept_share"] = round(kept / entries, 6)
        spread = 6 * math.sqrt(spec.density * (1 - spec.density) / entries) + 1e-3
        if abs(kept / entries - spec.density) > spread:
            raise MergeVerificationError(f"{merged_dir}: DARE kept {kept / entries:.4f} of the entries, "
                                         f"density is {spec.density}")
    if spec.method == "slerp":
        result["slerp_linear_tensors"] = slerp_linear
    result.update(_smoke_test(merged_dir, dtype))
    log.info("verified %s: max diff %.3g from the %s reference over %d tensors", merged_dir, max_diff,
             spec.method, result["verified_tensors"])
    return result


def _smoke_test(model_dir: str | Path, dtype) -> dict:
    """The saved files open with safetensors' own reader; a model of up to SMOKE_LOAD_MAX_BYTES also
    loads with transformers and gives finite logits on one prompt. A larger one is not loaded (that
    would hold the whole model, which the streamed merge and check avoid): its tensor names, shapes
    and dtypes equal those of an input checkpoint, and its values are finite (checked tensor by tensor)."""
    import torch
    from safetensors import safe_open
    from transformers import AutoTokenizer

    files = sorted(Path(model_dir).glob("*.safetensors"))
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            handle.keys()
    size = sum(f.stat().st_size for f in files)
    if size > SMOKE_LOAD_MAX_BYTES:
        return {"loads": None, "finite_logits": None, "safetensors_files_open": len(files)}
    model = _load_lm(str(model_dir), dtype)
    batch = AutoTokenizer.from_pretrained(str(model_dir))(VERIFY_PROMPTS[1], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    if not torch.isfinite(logits).all():
        raise MergeVerificationError(f"{model_dir}: the merged model gives non-finite logits")
    del model
    return {"loads": True, "finite_logits": True, "safetensors_files_open": len(files)}


# ---------------------------------------------------------------- the sweep
def _number(x: float) -> str:
    return f"{x:g}"


def sweep_variant_name(method: str, weights: list[float], density: float | None = None) -> str:
    """sweep-<method>-w<w1>_<w2>...[-d<density>], e.g. sweep-ties-w0.7_0.3-d0.5."""
    name = f"{SWEEP_PREFIX}{method}-w{'_'.join(_number(w) for w in weights)}"
    return name + (f"-d{_number(density)}" if density is not None else "")


def sweep_merges(sweep: "MergeSweepConfig | None") -> list["ModelMergeConfig"]:
    """The grid: every method x weights, and x density for the methods that take one (ties, dare_*)."""
    from .config import _DENSITY_METHODS, ModelMergeConfig

    if sweep is None:
        return []
    out = []
    for method in sweep.methods:
        for weights in sweep.weights:
            if len(weights) != len(sweep.models):
                raise MergeError(f"merge.sweep.weights: {weights} has {len(weights)} weights for "
                                 f"{len(sweep.models)} models")
            for density in (sweep.densities if method in _DENSITY_METHODS else [None]):
                try:
                    out.append(ModelMergeConfig(name=sweep_variant_name(method, weights, density), method=method,
                                                models=list(sweep.models), weights=list(weights), density=density,
                                                majority_sign_method=sweep.majority_sign_method, base=sweep.base))
                except ValueError as exc:  # pydantic: e.g. slerp of 3 models, weights summing to 0
                    raise MergeError(f"merge.sweep: {method} with weights {weights}: {exc}") from None
    return out


def sweep_variant_names(profile: "Profile") -> list[str]:
    """Names of the sweep's merged models, to list in evaluate.variants (05 evaluates what is listed)."""
    return [m.name for m in sweep_merges(profile.merge.sweep)]


def planned_variants(profile: "Profile") -> list[str]:
    """Every variant stage 04 makes for this profile, in the order it makes them."""
    cfg = profile.merge
    names = [MERGED_VARIANT] if cfg.merge_into_base else []
    for p in cfg.partners:
        names += ([p.name] if p.adapter else []) + [p.name + PARTNER_SUFFIX]
    names += [m.name for m in cfg.adapter_mixes] + [m.name for m in cfg.model_merges] + sweep_variant_names(profile)
    return names


# ---------------------------------------------------------------- existing outputs
def read_merge_info(out_dir: str | Path) -> dict | None:
    path = Path(out_dir) / MERGE_INFO
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


INPUTS_DIFFER = "its inputs differ: "


def _reusable(out_dir: Path, inputs: dict) -> tuple[bool, str]:
    """Whether an existing merged dir was made from exactly these inputs and is intact."""
    info = read_merge_info(out_dir)
    if info is None:
        return False, f"it has no readable {MERGE_INFO}"
    recorded = info.get("inputs", {})
    changed = sorted(k for k in set(inputs) | set(recorded) if inputs.get(k) != recorded.get(k))
    if changed:
        return False, INPUTS_DIFFER + ", ".join(f"{k} {recorded.get(k)!r} -> {inputs.get(k)!r}"
                                                       for k in changed)
    if info.get("content_sha256") != model_content_hash(out_dir):
        return False, "its files changed after the merge"
    return True, ""


# ---------------------------------------------------------------- the stage
def adapter_dir_for(profile: "Profile") -> Path:
    return profile.run_dir("03_finetune") / "adapter"


def resolve_adapter(profile: "Profile", ref: str, where: str) -> Path:
    """An adapter reference: a folder of this run's 03_finetune (adapter, partner_adapter) or a path."""
    path = (Path(ref).expanduser() if ref.startswith(("/", ".", "~"))
            else profile.run_dir("03_finetune") / ref)
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{where}: adapter {ref!r} -> {path} has no adapter_config.json "
                                "(a 03_finetune folder needs stage 03 to have made it)")
    return path


def _local_checkpoint(path: str) -> str:
    """A folder for a reference; a hub id is downloaded (safetensors, configs, tokenizer) or found in the hub cache."""
    if Path(path).is_dir():
        return path
    from huggingface_hub import snapshot_download

    return snapshot_download(path, allow_patterns=["*.safetensors", "*.json", "*.model", "*.txt", "*.jinja"])


def _source_inputs(ref: str, path: str, adapter_sha: str, base_ref: str, dtype, content_sha: str | None = None) -> dict:
    if content_sha is None and Path(path).is_dir():
        content_sha = model_content_hash(path)
    return {
        "method": METHOD,
        "model_ref": ref,
        "model_content_sha256": content_sha,
        "adapter_sha256": adapter_sha,
        "adapter_base_ref": base_ref,
        "dtype": str(dtype).replace("torch.", ""),
    }


@dataclass
class _Job:
    variant: str
    kind: str
    method: str
    inputs: Callable[[], dict]  # identity of what it is made from; called when the job runs
    steps: Callable[[], Steps]  # (build, check), prepared when the job runs (its inputs exist then)
    report: dict = field(default_factory=dict)  # fields for merge_report.json
    local_inputs: list[str] = field(default_factory=list)  # folders read, for the manifest


def _check_variant_names(profile: "Profile") -> list[str]:
    cfg = profile.merge
    names = planned_variants(profile)
    taken = names + [p.name for p in cfg.partners if not p.adapter]  # 05 resolves a partner's name too
    dupes = sorted({n for n in taken if taken.count(n) > 1})
    if dupes:
        raise MergeError(f"merge: duplicate variant names {dupes} (partners, partner-platypus merges, "
                         "adapter_mixes, model_merges and sweep points share one namespace)")
    reserved = sorted(set(taken) & set(RESERVED_VARIANTS))
    if reserved:
        raise MergeError(f"merge: {reserved} are names stage 05 reserves for the unmerged models")
    bad = [n for n in taken if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", n)]
    if bad:
        raise MergeError(f"merge: names {bad} must be letters, digits, '.', '_' or '-' (they name folders)")
    return names


def run_merge(profile: "Profile", force: bool = False) -> dict:
    """Stage 04: make every variant the profile asks for (see the module docstring), verify each,
    and write merge_report.json. An existing variant made from the same inputs is reused; one this
    stage made from other inputs is stale and made again (logged, and `replaced` in the report says
    what changed); a directory without this stage's record, or edited after, is refused unless `force`."""
    from transformers import AutoConfig

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = profile.merge
    run_dir = profile.run_dir(STAGE)
    variants = _check_variant_names(profile)
    cache = profile.cache_dir()
    base_ref = profile.models.base
    base_path = resolve_model(base_ref, cache)
    # Merging happens on CPU; "auto" is float32 there, so a small delta is not rounded away.
    dtype = pick_dtype(profile.models.torch_dtype, "cpu")
    dtype_name = str(dtype).replace("torch.", "")
    atol = cfg.verify_atol
    base_config = AutoConfig.from_pretrained(base_path)
    partner_models = {p.name: p.model for p in cfg.partners if not p.adapter}
    produced: dict[str, Path] = {}  # variant -> folder, in the order the jobs make them
    content: dict[str, str] = {}  # folder -> model_content_hash; this stage's variants: from their merge_info

    def content_id(path: str | Path) -> str | None:
        key = str(path)
        if key not in content and Path(key).is_dir():
            content[key] = model_content_hash(key)
        return content.get(key)

    def model_path(ref: str, where: str) -> str:
        """A variant made earlier in this stage, "base", a partner's name, or a model reference."""
        if ref in produced:
            return str(produced[ref])
        if ref in variants:
            raise MergeError(f"{where}: {ref!r} is made later in this stage than {where}; reorder the profile")
        if ref == "base":
            return base_path
        return _local_checkpoint(resolve_model(partner_models.get(ref, ref), cache))

    jobs: list[_Job] = []
    adapter_tok: list[str] = []
    adapter_dir = adapter_dir_for(profile)
    report: dict[str, Any] = {"adapter": None, "adapter_base": base_ref, "dtype": dtype_name, "seed": profile.seed,
                              "models": {}, "sweep": sweep_variant_names(profile)}

    def adapter_job(variant: str, ref: str, source: str, adapter: Path, tokenizer_dirs: list[str], partner) -> None:
        _, deltas = read_adapter(adapter)
        adapter_sha = sha256_path(adapter)
        jobs.append(_Job(
            variant, KIND_ADAPTER, METHOD,
            inputs=lambda: _source_inputs(ref, source, adapter_sha, base_ref, dtype, content_id(source)),
            steps=lambda: adapter_merge_steps(source, adapter, deltas, tokenizer_dirs, dtype, atol, variant),
            report={"base": ref, "base_path": source, "partner": partner, "adapter": str(adapter.resolve()),
                    "adapter_base": base_ref},
            local_inputs=[str(adapter)] + ([source] if Path(source).is_dir() and source not in map(str, produced.values()) else [])))
        produced[variant] = run_dir / variant

    if cfg.merge_into_base or cfg.partners:
        if not (adapter_dir / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{adapter_dir}: no LoRA adapter (adapter_config.json); run stage 03_finetune first")
        adapter_config, _ = read_adapter(adapter_dir)
        report["adapter"] = str(adapter_dir.resolve())
        adapter_tok = [str(adapter_dir)] if _has_tokenizer(adapter_dir) else []
        recorded_base = adapter_config.get("base_model_name_or_path")
        if recorded_base and recorded_base not in (base_ref, base_path):
            log.warning("adapter was trained on %r; merging it into models.base %r (%s)", recorded_base, base_ref, base_path)
    if cfg.merge_into_base:
        adapter_job(MERGED_VARIANT, base_ref, base_path, adapter_dir, adapter_tok + [base_path], None)
    for partner in cfg.partners:
        path = resolve_model(partner.model, cache)
        check_architecture(AutoConfig.from_pretrained(path), base_config,
                           f"partner {partner.name!r} ({partner.model})", f"models.base ({base_ref}, the adapter's base)")
        ref = partner.model
        if partner.adapter:  # build the partner fine-tune here: its own adapter merged into its model
            own = resolve_adapter(profile, partner.adapter, f"merge.partners[{partner.name}].adapter")
            adapter_job(partner.name, partner.model, path, own, [path, str(own), base_path], None)
            path, ref = str(produced[partner.name]), f"{STAGE}/{partner.name}"
        elif path == base_path:
            log.warning("partner %r is models.base itself: its merge equals 'merged'", partner.name)
        adapter_job(partner.name + PARTNER_SUFFIX, ref, path, adapter_dir, [path] + adapter_tok + [base_path],
                    partner.name)

    for mix in cfg.adapter_mixes:
        where = f"merge.adapter_mixes[{mix.name}]"
        dirs = [resolve_adapter(profile, a, where) for a in mix.adapters]
        into = model_path(mix.into or "base", where)
        if mix.into and mix.into not in produced:
            check_architecture(AutoConfig.from_pretrained(into), base_config, f"{where}.into ({mix.into})",
                               f"models.base ({base_ref})")
        shas = [sha256_path(d) for d in dirs]
        drawn = mix.combination_type.startswith("dare")

        def mix_inputs(mix=mix, into=into, shas=shas, drawn=drawn) -> dict:
            return {"method": MIX_METHOD, "combination_type": mix.combination_type, "weights": list(mix.weights),
                    "density": mix.density, "svd_rank": mix.svd_rank, "majority_sign_method": mix.majority_sign_method,
                    "adapters_sha256": shas, "into_ref": mix.into or base_ref, "into_content_sha256": content_id(into),
                    "dtype": dtype_name, "seed": profile.seed if drawn else None, "format": MERGE_FORMAT}

        tok = [into] + [str(d) for d in dirs if _has_tokenizer(d)] + [base_path]
        jobs.append(_Job(
            mix.name, KIND_MIX, f"{MIX_METHOD}:{mix.combination_type}", inputs=mix_inputs,
            steps=lambda mix=mix, into=into, dirs=dirs, tok=tok: adapter_mix_steps(
                into, dirs, mix, tok, dtype, profile.seed, atol),
            report={"base": mix.into or base_ref, "base_path": into, "adapters": [str(d.resolve()) for d in dirs],
                    "weights": list(mix.weights), "density": mix.density, "svd_rank": mix.svd_rank},
            local_inputs=[str(d) for d in dirs] + ([into] if mix.into not in produced else [])))
        produced[mix.name] = run_dir / mix.name

    sweep_names = set(report["sweep"])
    for mm in list(cfg.model_merges) + sweep_merges(cfg.sweep):
        where = f"merge.sweep ({mm.name})" if mm.name in sweep_names else f"merge.model_merges[{mm.name}]"
        paths = [model_path(r, where) for r in mm.models]
        uses_base = mm.method not in ("linear", "slerp")
        base_dir = model_path(mm.base or "base", where) if uses_base else None
        spec = ModelMergeSpec(mm.name, mm.method, paths, list(mm.models), list(mm.weights), mm.density,
                              mm.majority_sign_method, base_dir, (mm.base or base_ref) if uses_base else None)

        def merge_inputs(mm=mm, spec=spec) -> dict:
            return {"method": mm.method, "weights": list(mm.weights), "density": mm.density,
                    "majority_sign_method": mm.majority_sign_method if mm.method in ("ties", "dare_ties") else None,
                    "models": [[label, content_id(p)] for label, p in zip(spec.labels, spec.models)],
                    "base": [spec.base_label, content_id(spec.base)] if spec.uses_base else None,
                    "dtype": dtype_name, "seed": profile.seed if mm.method.startswith("dare") else None,
                    "format": MERGE_FORMAT}

        jobs.append(_Job(
            mm.name, KIND_MODELS, mm.method, inputs=merge_inputs,
            steps=lambda spec=spec: model_merge_steps(spec, spec.models + [base_path], dtype, profile.seed, atol),
            report={"models": list(mm.models), "model_paths": paths, "weights": list(mm.weights),
                    "density": mm.density, "base": spec.base_label, "base_path": base_dir,
                    "sweep": mm.name in sweep_names},
            local_inputs=[p for p in paths + [base_dir] if p and p not in map(str, produced.values())]))
        produced[mm.name] = run_dir / mm.name
    if not jobs:
        log.warning("nothing to merge: merge.merge_into_base is false and no partners, adapter_mixes, "
                    "model_merges or sweep are given")

    with StageRun(run_dir, STAGE, profile.fingerprint_params(STAGE)) as run:
        for job in jobs:
            for p in job.local_inputs:
                if Path(p).is_dir() and str(Path(p).resolve()) not in run.inputs:
                    run.add_input(p)
        for job in jobs:
            out_dir = run_dir / job.variant
            t0 = time.perf_counter()
            inputs = job.inputs()
            reused = False
            replaced = None  # why an earlier merge at this path was replaced (recorded in the report)
            if out_dir.exists() and not force:
                ok, why = _reusable(out_dir, inputs)
                if not ok and why.startswith(INPUTS_DIFFER):
                    # this stage made it from other inputs (an adapter trained again, new weights): it
                    # is stale, and made again; say so, and record what changed
                    log.warning("%s: replacing %s: %s", job.variant, out_dir, why)
                    replaced = why
                elif not ok:  # not made by this stage, or edited after: never overwritten unasked
                    raise MergeError(f"{out_dir} already exists and {why}; pass --force "
                                     f"(run_merge(profile, force=True)) to overwrite it")
            if out_dir.exists() and not force and replaced is None:
                info = read_merge_info(out_dir)
                if cfg.verify and "verification" not in info:
                    _, check = job.steps()
                    with measure_peak_rss() as memory:
                        info["verification"] = check(out_dir)
                    info.setdefault("memory", {})["verify_peak_rss_mb"] = memory["peak_rss_mb"]
                    write_json(out_dir / MERGE_INFO, info)
                reused = True
                log.info("%s: reusing %s (same inputs)", job.variant, out_dir)
            else:
                if out_dir.exists() and force:
                    log.warning("%s: --force: replacing %s", job.variant, out_dir)
                log.info("%s: %s (%s)", job.variant, job.method, job.kind)
                build, check = job.steps()
                with run.timed(job.variant):
                    info = _write_variant(out_dir, build, check if cfg.verify else None,
                                          {"inputs": inputs, "kind": job.kind, "method": job.method})
            content[str(out_dir)] = info["content_sha256"]
            verification = info.get("verification") if cfg.verify else None
            memory = info.get("memory", {})
            peaks = [memory.get(k) for k in ("merge_peak_rss_mb", "verify_peak_rss_mb") if memory.get(k)]
            entry = {
                "path": str(out_dir.resolve()),
                "kind": job.kind,
                "method": job.method,
                "partner": None,
                **job.report,
                "dtype": dtype_name,
                "verified": verification is not None,
                "max_abs_weight_diff": verification and verification["max_abs_weight_diff"],
                "max_abs_logit_diff": verification and verification.get("max_abs_logit_diff"),
                "verification": verification,
                "content_sha256": info["content_sha256"],
                "reused": reused,
                "replaced": replaced,
                "peak_rss_mb": max(peaks) if peaks else None,  # this merge's (and its check's) peak, when made
                "memory": memory,
                "seconds": round(time.perf_counter() - t0, 2),
            }
            report["models"][job.variant] = entry
            run.add_output(out_dir)
            run.metrics[f"{job.variant}.max_abs_weight_diff"] = entry["max_abs_weight_diff"]
            run.metrics[f"{job.variant}.max_abs_logit_diff"] = entry["max_abs_logit_diff"]
            run.metrics[f"{job.variant}.peak_rss_mb"] = entry["peak_rss_mb"]
        report_path = write_json(run_dir / REPORT, report)
        run.add_output(report_path)
        run.metrics["models"] = len(report["models"])
        run.metrics["peak_rss_mb"] = peak_rss_mb()
    return report
