"""Stage 04_merge: fold LoRA adapters into full models, combine adapters and models, verify every result.

What it makes (each a variant: a full model in runs/<profile>/04_merge/<variant>/, listed in
`merge_report.json["models"]` with its path, for stage 05 to evaluate when named in evaluate.variants).
Variants are named by `layout` (layout.planned_variants gives them in the order they are made):

  - merge.merged_name (default "merged"; the paper's "platypus2-13b"): the 03 adapter folded into
    the base it was trained on (peft `merge_and_unload`);
  - each partner's merged_name (default "<partner>-platypus"; e.g. Stable-Platypus2-13B =
    StableBeluga-13B + the adapter): the paper's merge, the same adapter added into a *different*
    fine-tune of the same base, after checking that architecture and every target module's shape
    match; its report entry names the partner ("partner": <name>). A partner given with `adapter:`
    is built here first (variant "<partner>": that adapter merged into `model`), which is how the
    demo gets a partner fine-tune: 03's second, small adapter trained on the general rows;
  - adapter mixes (`merge.adapter_mixes`): several adapters combined by peft's `add_weighted_adapter`
    (linear, cat, ties, dare_linear, dare_ties, svd), then merged into the base;
  - full-model merges (`merge.model_merges`, and the grid `merge.sweep`, variants
    "sweep-<method>-w<w1>_<w2>[-d<density>]", layout.sweep_variant_name): linear, slerp,
    task_arithmetic, ties, dare_linear, dare_ties over two or more fine-tunes of one base. Stage 05
    evaluates a sweep point when its name is listed in evaluate.variants; `sweep_variant_names(profile)`
    gives the names.

Dtype (merge.dtype, default auto): a variant is stored in the dtype of the model it is made from (its
config's torch_dtype/dtype: float16 for Llama-2, float32 for the demo's converted base; a full-model
merge of inputs in different dtypes: float32), or in the dtype merge.dtype names. The arithmetic is
float32 and rounded once to that dtype: the adapter's factors stay float32 in peft, so scale·B@A
and W + it are float32 (an in-place add into a 16-bit weight computes in float32); adapter mixes
are computed on a float32 copy of the model; full-model merges compute each chunk in float32. A sum
done in bfloat16 for a float16 base (the fault this replaces) rounds small LoRA updates away.
Hub access is not this stage's business: it sets no HF_* variable (the runner does, per profile).

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
same way. The adapter merges (merge_and_unload) hold one model in memory, as peft does; an adapter mix a
float32 copy of one (see Dtype).
On CPU, ties and dare_* cost several times linear/slerp/task_arithmetic (top-k, random draws).

Verification (merge.verify): every variant is checked on its temporary copy before the rename, so
a merge that fails never appears at its path. The checks can fail: an unmerged model, one merged at
another scale, or a 16-bit merge summed in the wrong dtype is rejected (tests/test_merge_verify.py).
No tolerance is a fraction of a matrix's max.
  - adapter folded into a model (merged, partners): (a) weights, element by element in float64:
    |merged - (W + (alpha/r)·B·A)| <= half an ulp of the stored dtype at the element's magnitude
    + COMPUTE_SLACK·(U32·|W + update| + (r+2)·U32·|scale|·(|B|@|A|)), the update computed here from
    the adapter's tensors and W as loaded in the merge dtype (so any input rounding is in W, not in
    the bound); untouched weights bit-identical (check_updated_weight, check_merged_weights);
    (b) logits on fixed prompts: max |merged - (W + adapter, unmerged, peft)| <= 0.1 x max
    |(W + adapter) - W|, the maxima over every real position and vocabulary entry: a tenth of the
    adapter's own effect, never below the dtype's noise floor (check_merged_logits). Recorded:
    max_weight_error_to_bound (<= 1), updates_above_bound_share (where an unmerged copy would fail),
    max_abs_logit_diff, max_abs_adapter_logit_effect, logit_tolerance, logit_check_resolves;
  - adapter mixes: the same two checks, the update being the mix computed here from the source
    adapters' factors by the method's own formula (DARE with the masks peft drew, recorded), its
    float32 allowance from the same products over magnitudes (svd: also the float32 SVD's error,
    from the spectrum: whole-matrix, as a truncation is), and the unmerged model + the mixed adapter
    (saved in <variant>/mixed_adapter/) for the logits;
  - full-model merges: every element equals a reference computed on the task vectors by code that
    does not call peft (DARE masks redrawn from the same seeds, TIES keeping the same top-k;
    tensors all inputs share must be copied bit for bit) within half an ulp of the output dtype +
    MODEL_MERGE_ULPS·U32·the size of the terms the method sums; all values are finite, the files
    open with safetensors' own reader, and a model of up to SMOKE_LOAD_MAX_BYTES loads with
    transformers and gives finite logits. No unmerged model exists to compare logits with, so
    none are compared.
A reused variant whose recorded check is older than VERIFY_FORMAT is checked again.
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
import re
import resource
import shutil
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from . import layout
from .artifacts import StageRun, atomic_path, sha256_path, write_json
from .models import make_files_readable, model_content_hash, resolve_model

if TYPE_CHECKING:
    import torch

    from .config import AdapterMixConfig, ModelMergeConfig, MergeSweepConfig, Profile

log = logging.getLogger("platypus")

STAGE = layout.MERGE
REPORT = layout.MERGE_REPORT[1]
MERGE_INFO = "merge_info.json"  # inside each merged dir: what it was made from, and its checks
# Variant names live in layout (merge.merged_name, partners[].merged_name, the sweep's). These aliases
# stay only while analysis.py still imports them; new code reads layout.
MERGED_VARIANT = layout.DEFAULT_MERGED_VARIANT
PARTNER_SUFFIX = layout.PARTNER_SUFFIX
METHOD = "merge_and_unload"
MIX_METHOD = "add_weighted_adapter"
MIXED_ADAPTER = "mixed_adapter"  # inside an adapter-mix variant: the combined adapter, unmerged
MERGE_FORMAT = 1  # bump when a method's arithmetic changes: old outputs then no longer count as reusable
KIND_ADAPTER, KIND_MIX, KIND_MODELS = "adapter_into_model", "adapter_mix", "model_merge"
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
# The checks' bounds (see verify_merged, check_updated_weight, _check_tensor).
U32 = 2.0 ** -24  # float32's unit roundoff: the merges compute in float32 and round once to the storage dtype
COMPUTE_SLACK = 2  # times the float32 arithmetic allowance: merge and check sum in different orders
LOGIT_EFFECT_SHARE = 0.1  # |logits(merged) - logits(source+adapter)| <= this x the adapter's own effect
LOGIT_NOISE_EPS = 8  # the logit check's floor: verify_atol + this x eps(dtype) x max(1, max |logits|)
MODEL_MERGE_ULPS = 16  # full-model merges: float32 allowance, in units of U32 x the terms' magnitude
VERIFY_FORMAT = 2  # bump when a check changes: a reused variant whose verification is older is checked again
WEIGHT_BOUND = ("per element: |merged - (W + update)| <= half an ulp of the stored dtype at the element's "
                f"magnitude + {COMPUTE_SLACK} x (U32 x |W + update| + the float32 error bound of the update)")
LOGIT_BOUND = (f"max |merged - (source + adapter)| <= {LOGIT_EFFECT_SHARE} x max |(source + adapter) - source| "
               "over every real position of the fixed prompts and every vocabulary entry (or the noise floor)")
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

    def _rows(self, rows: slice, absolute: bool) -> "torch.Tensor":
        a, b = self.lora_a.double(), self.lora_b.double()
        if absolute:
            a, b = a.abs(), b.abs()
        return (b @ a[:, rows]).T if self.fan_in_fan_out else b[rows] @ a

    def delta_block(self, rows: slice) -> "torch.Tensor":
        """Rows `rows` of the weight update scale * B @ A, in float64 (exact for these sizes)."""
        return self._rows(rows, False) * self.scale

    def allowance_block(self, rows: slice) -> "torch.Tensor":
        """Bound on the float32 error of computing those rows of scale * B @ A (a sum of r products,
        then the scaling): (r + 2) * U32 * |scale| * (|B| @ |A|)."""
        return self._rows(rows, True) * ((self.rank + 2) * U32 * abs(self.scale))

    def max_abs(self) -> float:
        return float(self.delta().abs().max())


@dataclass
class DenseDelta:
    """A weight update given in full (the expected update of an adapter mix)."""

    module: str
    value: "torch.Tensor"  # float64
    allowance: "torch.Tensor | float" = 0.0  # bound on the float32 error of the merge's computation of it

    @property
    def weight_shape(self) -> tuple[int, int]:
        return tuple(self.value.shape)

    def delta(self) -> "torch.Tensor":
        return self.value

    def delta_block(self, rows: slice) -> "torch.Tensor":
        return self.value[rows].double()

    def allowance_block(self, rows: slice) -> "torch.Tensor | float":
        return self.allowance[rows] if hasattr(self.allowance, "shape") else self.allowance

    def max_abs(self) -> float:
        return float(self.value.abs().max())


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

    def magnitude(self, part: slice) -> "torch.Tensor":
        """Entries `part` of the size of the terms the merge sums (float32): its float32 arithmetic
        errs by a few U32 of this. linear: sum |w_i x_i| / |sum w|; slerp: |c0 x0| + |c1 x1|; the
        task-vector methods: |b| + sum |w_i| (|x_i| + |b|), over density for DARE's rescaling."""
        xs = [t[part].float().abs() for t in self.flat]
        if self.unchanged:
            return xs[0]
        if self.method == "linear":
            return sum(abs(w) * x for w, x in zip(self.weights, xs)) / abs(sum(self.weights))
        if self.method == "slerp":
            return abs(self.coefficients[0]) * xs[0] + abs(self.coefficients[1]) * xs[1]
        b = self.base[part].float().abs()
        rescale = 1 / self.density if self.method.startswith("dare") else 1.0
        return b + sum(abs(w) * rescale * (x + b) for w, x in zip(self.weights, xs))


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
    in order). An adapter without a module is left out of that module's combination, as peft does.
    Each update carries `allowance`, a per-element bound on the float32 error of peft's computation
    of it: (k + 4) * U32 * the same products taken over magnitudes (k the rank summed over); for svd
    also the float32 SVD's, 8 * max(m, n) * U32 * s1^2 / (s_k - s_k+1): whole-matrix, as the
    truncation of a spectrum is."""
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
            summed_rank = sum(d.rank for _, d in present)
            allowance = (summed_rank + 4) * U32 * sum(abs(w * d.scale) * (d.lora_b.double().abs() @ d.lora_a.double().abs())
                                                      for w, d in present)
            if combination_type == "svd":
                u, s, vh = torch.linalg.svd(total, full_matrices=False)
                k = svd_rank or max_rank
                total = (u[:, :k] * s[:k]) @ vh[:k]
                gap = float(s[k - 1] - s[k]) if k < len(s) else float(s[0])
                allowance = allowance + 8 * max(total.shape) * U32 * float(s[0]) ** 2 / max(gap, U32 * float(s[0]), 1e-300)
        else:
            c = [w * d.scale for w, d in present]
            factors, magnitudes = {}, {}
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
                rescale = 1 / density if combination_type.startswith("dare") else 1.0
                magnitudes[side] = sum(abs(w) * rescale * t.double().abs() for w, t in zip(weights_side, tensors))
            total = factors["B"] @ factors["A"]
            allowance = (present[0][1].rank + 4) * U32 * (magnitudes["B"] @ magnitudes["A"])
        out[module] = DenseDelta(module, total.T if fifo else total,
                                 allowance.T if fifo and hasattr(allowance, "T") else allowance)
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


def half_ulp(magnitude: "torch.Tensor", dtype) -> "torch.Tensor":
    """Half the spacing of `dtype` at each |magnitude| (float64): the largest error of rounding a value
    of that size to `dtype` once (round to nearest). Below the smallest normal number: the subnormal
    spacing. E.g. float16 at 1.0: 2**-11; float32 at 1.0: 2**-24."""
    import torch

    info = torch.finfo(dtype)
    digits = round(-math.log2(info.eps))  # stored mantissa bits: float32 23, float16 10, bfloat16 7
    min_exp = round(math.log2(info.tiny))  # exponent of the smallest normal number
    _, e = torch.frexp(magnitude.double().abs())  # |x| in [2**(e-1), 2**e)
    binade = torch.where(magnitude == 0, min_exp, (e - 1).clamp(min=min_exp))
    return torch.exp2((binade - digits - 1).double())


def check_updated_weight(got: "torch.Tensor", source: "torch.Tensor", d: "LoraDelta | DenseDelta", dtype) -> dict:
    """One adapted weight, element by element, in float64: expected = W + update (W as loaded, the
    update from the adapter's own tensors), and each element must satisfy
        |got - expected| <= half_ulp(dtype, max(|expected|, |got|))      (the one rounding to storage)
                            + COMPUTE_SLACK * (U32 * |expected| + d.allowance)   (the merge's float32 arithmetic)
    where d.allowance bounds the float32 error of computing the update itself (for B @ A:
    (r + 2) * U32 * |s| * (|B| @ |A|)). No fraction of the matrix's max enters. Returns the worst
    error/bound ratio, the max error, the elements over their bound, and how many elements have an
    update larger than their bound (where a model without the update fails the check)."""
    import torch

    rows_per_block = max(1, CHUNK // max(1, got.shape[-1]))
    out = {"diff": 0.0, "ratio": 0.0, "over": 0, "resolvable": 0, "elements": got.numel()}
    for start in range(0, got.shape[0], rows_per_block):
        rows = slice(start, start + rows_per_block)
        g = got[rows].double()
        update = d.delta_block(rows)
        expected = source[rows].double() + update
        bound = half_ulp(torch.maximum(expected.abs(), g.abs()), dtype)
        bound += COMPUTE_SLACK * (U32 * expected.abs() + d.allowance_block(rows))
        err = (g - expected).abs()
        if err.numel():
            out["diff"] = max(out["diff"], float(err.max()))
            out["ratio"] = max(out["ratio"], float((err / bound).max()))
        out["over"] += int((err > bound).sum())
        out["resolvable"] += int((update.abs() > bound).sum())
    return out


def check_merged_weights(merged, source_model, deltas: dict[str, "LoraDelta | DenseDelta"], dtype,
                         label: str = "merged model", source_label: str = "source") -> dict:
    """Weights of `merged` against source + the expected updates: every adapted weight element by
    element (check_updated_weight), every other weight bit-identical to the source's. Raises
    MergeVerificationError with the numbers; returns the figures for merge_info."""
    import torch

    merged_sd, source_sd = merged.state_dict(), source_model.state_dict()
    if set(merged_sd) != set(source_sd):
        raise MergeVerificationError(f"{label}: parameter names differ from {source_label}: "
                                     f"{sorted(set(merged_sd) ^ set(source_sd))[:5]}")
    targeted = {f"{name}.weight": d for name, d in deltas.items()}
    missing = sorted(set(targeted) - set(source_sd))
    if missing:
        raise MergeVerificationError(f"{label}: targeted weights absent: {missing[:5]}")
    diff = ratio = other_diff = max_delta = 0.0
    over = resolvable = elements = 0
    failures = []
    with torch.no_grad():
        for key, source_w in source_sd.items():
            if key in targeted:
                one = check_updated_weight(merged_sd[key], source_w, targeted[key], dtype)
                diff, ratio = max(diff, one["diff"]), max(ratio, one["ratio"])
                over, resolvable, elements = over + one["over"], resolvable + one["resolvable"], elements + one["elements"]
                max_delta = max(max_delta, targeted[key].max_abs())
                if one["over"]:
                    failures.append(f"{key}: {one['over']} of {one['elements']} elements off by more than their "
                                    f"rounding bound (worst {one['ratio']:.3g}x the bound, max abs diff {one['diff']:.3g})")
            elif not torch.equal(merged_sd[key], source_w):  # untouched by the adapter: bit-identical
                gap = float((merged_sd[key].double() - source_w.double()).abs().max())
                other_diff = max(other_diff, gap)
                failures.append(f"{key}: not adapted, yet differs from {source_label} by up to {gap:.3g}")
    if failures:
        raise MergeVerificationError(f"{label}: weights are not {source_label} + adapter "
                                     f"({len(failures)} tensors): " + "; ".join(failures[:5]))
    if max_delta == 0.0:
        log.warning("%s: the adapter is a no-op (all updates are zero): merged == source", label)
    return {
        "max_abs_weight_diff": diff,
        "max_weight_error_to_bound": ratio,  # <= 1: every element within its own rounding bound
        "weight_bound": WEIGHT_BOUND,
        "updates_above_bound_share": resolvable / elements if elements else 0.0,  # where an unmerged model fails
        "max_abs_untargeted_weight_diff": other_diff,
        "max_abs_delta": max_delta,
        "verified_modules": len(targeted),
    }


def check_merged_logits(merged, source_model, adapter_dir: str | Path, tokenizer_dir: str | Path, dtype,
                        atol: float, prompts=VERIFY_PROMPTS, label: str = "merged model") -> dict:
    """Logits of `merged` against the unmerged source + adapter (peft) on fixed prompts:
        max |logits(merged) - logits(source+adapter)| <= LOGIT_EFFECT_SHARE * max |logits(source+adapter) - logits(source)|
    each max over every real (non-padding) position of the prompts and every vocabulary entry, so
    the tolerance is a tenth of the adapter's own effect: an unmerged model (diff = the whole
    effect) or one merged at another scale fails. The tolerance never drops below the compute
    dtype's noise floor, atol + LOGIT_NOISE_EPS * eps(dtype) * max(1, max |logits|);
    `logit_check_resolves` says whether the effect rises above it. Wraps `source_model` in peft."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if tokenizer.pad_token is None:  # only to batch the prompts here; padded positions are not compared
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # causal attention: real tokens never see the right padding
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True)
    real = batch["attention_mask"].bool()
    peft_model = PeftModel.from_pretrained(source_model, str(adapter_dir), is_trainable=False)
    peft_model.eval()
    with torch.no_grad():
        merged_logits = merged(**batch).logits.double()[real]
        peft_logits = peft_model(**batch).logits.double()[real]
        with peft_model.disable_adapter():
            source_logits = peft_model(**batch).logits.double()[real]
    diff = float((merged_logits - peft_logits).abs().max())
    effect = float((peft_logits - source_logits).abs().max())
    floor = atol + LOGIT_NOISE_EPS * torch.finfo(dtype).eps * max(1.0, float(peft_logits.abs().max()))
    tolerance = max(LOGIT_EFFECT_SHARE * effect, floor)
    result = {
        "max_abs_logit_diff": diff,
        "max_abs_adapter_logit_effect": effect,  # how far the adapter moves logits: the check's scale
        "logit_diff_to_effect": diff / effect if effect else None,
        "logit_tolerance": tolerance,
        "logit_noise_floor": floor,
        "logit_check_resolves": LOGIT_EFFECT_SHARE * effect > floor,
        "logit_bound": LOGIT_BOUND,
        "prompts": len(prompts),
    }
    peft_model.unload()  # gives `source_model` back without the adapter layers
    if not diff <= tolerance:
        raise MergeVerificationError(f"{label}: merged logits differ from the unmerged model + adapter by "
                                     f"{diff:.3g} > tolerance {tolerance:.3g} ({LOGIT_EFFECT_SHARE} x the "
                                     f"adapter's effect {effect:.3g}, noise floor {floor:.3g})")
    return result


def verify_merged(merged_dir: str | Path, source: str, adapter_dir: str | Path,
                  deltas: dict[str, LoraDelta | DenseDelta], atol: float, dtype, prompts=VERIFY_PROMPTS) -> dict:
    """Reload a merged model and check it is source + the expected updates; raise MergeVerificationError if not.

    (a) weights (check_merged_weights): each adapted element within its own rounding bound of
        W + update (`deltas`, computed by the caller from the adapter's tensors), all others
        bit-identical; (b) logits (check_merged_logits): within a tenth of the adapter's own effect
        of the unmerged PeftModel(source, adapter_dir) on fixed prompts. Both models load in `dtype`.
    """
    merged = _load_lm(str(merged_dir), dtype)
    source_model = _load_lm(source, dtype)
    result = check_merged_weights(merged, source_model, deltas, dtype, str(merged_dir), source)
    result.update(check_merged_logits(merged, source_model, adapter_dir, merged_dir, dtype, atol, prompts,
                                      str(merged_dir)))
    result.update(format=VERIFY_FORMAT, dtype=str(dtype).replace("torch.", ""))
    log.info("verified %s: weights within %.3g of their rounding bound (max diff %.3g); logit diff %.3g, "
             "%.3g of the adapter's effect %.3g", merged_dir, result["max_weight_error_to_bound"],
             result["max_abs_weight_diff"], result["max_abs_logit_diff"], result["logit_diff_to_effect"] or 0.0,
             result["max_abs_adapter_logit_effect"])
    del source_model, merged
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
    """Merge an adapter into `source` with peft merge_and_unload; check with verify_merged.

    The model is loaded in `dtype` (its storage dtype); the adapter's factors are held in float32
    (autocast_adapter_dtype), so peft computes scale * B @ A in float32 and adds it to each weight
    in float32 before the one rounding to `dtype` (an in-place add of a float32 tensor into a
    16-bit one computes in float32): the sum is never done in a 16-bit dtype."""

    def build(tmp: Path) -> dict:
        from peft import PeftModel

        model = _load_lm(source, dtype)
        check_targets(model, deltas, source)
        merged = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False,
                                           autocast_adapter_dtype=True).merge_and_unload()
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
    itself, unmerged, is kept in <variant>/mixed_adapter/); check against reference_adapter_mix.

    The work is done on a float32 copy of the model, cast once to `dtype` when saved: peft creates
    the mixed factors in the model's dtype, so in a 16-bit model the combination itself would be
    rounded (measured: up to 244x the fp16 merge's rounding bound). It costs a float32 model in memory."""
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

        model = _load_lm(source, dtype).to(torch.float32)  # W as stored in dtype (as the check loads it), exactly
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
        merged = peft_model.merge_and_unload(adapter_names=["default"]).to(dtype)  # the one rounding
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


def model_merge_steps(spec: ModelMergeSpec, tokenizer_dirs: list[str], dtype, seed: int) -> Steps:
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
        return verify_model_merge(path, spec, dtype, seed)

    return build, check


def _check_tensor(name: str, merged: SafetensorsCheckpoint, models: list[SafetensorsCheckpoint],
                  base: SafetensorsCheckpoint | None, spec: ModelMergeSpec, dtype, seed: int) -> dict:
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
    # per element: one rounding to the output dtype + the float32 arithmetic on terms of that size
    diff = ratio = 0.0
    over = 0
    for part in _chunks(flat_got.numel()):
        expected = reference.chunk(part).double()
        value = flat_got[part].double()
        bound = half_ulp(torch.maximum(expected.abs(), value.abs()), dtype)
        bound += MODEL_MERGE_ULPS * U32 * reference.magnitude(part).double()
        gap = (value - expected).abs_()
        if gap.numel():
            diff, ratio = max(diff, float(gap.max())), max(ratio, float((gap / bound).max()))
            over += int((gap > bound).sum())
    out = {"diff": diff, "ratio": ratio, "kept": reference.stats.get("kept", 0),
           "entries": reference.stats.get("entries", 0), "slerp_linear": int(bool(reference.stats.get("slerp_linear")))}
    # the check's scale, on a sample of entries: how far the merge is from the nearest input,
    # and how far apart the inputs are
    step = max(1, flat_got.numel() // SCALE_SAMPLE)
    sample = flat_got[::step].float()
    if sample.numel():
        inputs = [t[::step].float() for t in reference.flat]
        out["change"] = min(float((sample - t).abs().max()) for t in inputs)
        out["moved"] = float((inputs[0] - inputs[-1]).abs().max())
    if over:
        out["failure"] = (f"{name}: {over} elements off the reference by more than their rounding bound "
                          f"(worst {ratio:.3g}x the bound, max abs diff {diff:.3g})")
    return out


def verify_model_merge(merged_dir: str | Path, spec: ModelMergeSpec, dtype, seed: int) -> dict:
    """Every tensor of a full-model merge equals the reference computed on the inputs, each element
    within half an ulp of the output dtype at its magnitude + MODEL_MERGE_ULPS * U32 * the size of
    the terms summed for it (ReferenceMerge.magnitude), and is finite; the tensor set is the
    inputs', and the model passes _smoke_test. Streams like the merge."""
    merged = SafetensorsCheckpoint(merged_dir)
    models, base = _open_checkpoints(spec)
    if merged.names() != models[0].names():
        raise MergeVerificationError(f"{merged_dir}: tensor names differ from {spec.labels[0]}: "
                                     f"{sorted(set(merged.names()) ^ set(models[0].names()))[:5]}")
    max_diff = max_ratio = max_change = max_moved = 0.0
    kept = entries = slerp_linear = unchanged = 0
    failures = []
    for name in merged.names():
        one = _check_tensor(name, merged, models, base, spec, dtype, seed)
        if "failure" in one:
            failures.append(one["failure"])
        max_diff, max_ratio = max(max_diff, one.get("diff", 0.0)), max(max_ratio, one.get("ratio", 0.0))
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
        "max_weight_error_to_bound": max_ratio,  # <= 1: every element within its own bound
        "weight_bound": (f"per element: half an ulp of the stored dtype at its magnitude + {MODEL_MERGE_ULPS} x U32 x "
                         "the magnitude of the terms the method sums"),
        "format": VERIFY_FORMAT,
        "dtype": str(dtype).replace("torch.", ""),
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
def sweep_merges(sweep: "MergeSweepConfig | None") -> list["ModelMergeConfig"]:
    """The grid (layout.sweep_points): every method x weights, and x density for the methods that
    take one (ties, dare_*), named by layout.sweep_variant_name."""
    from .config import ModelMergeConfig

    out = []
    for method, weights, density in layout.sweep_points(sweep):
        if len(weights) != len(sweep.models):
            raise MergeError(f"merge.sweep.weights: {weights} has {len(weights)} weights for "
                             f"{len(sweep.models)} models")
        try:
            out.append(ModelMergeConfig(name=layout.sweep_variant_name(method, weights, density), method=method,
                                        models=list(sweep.models), weights=list(weights), density=density,
                                        majority_sign_method=sweep.majority_sign_method, base=sweep.base))
        except ValueError as exc:  # pydantic: e.g. slerp of 3 models, weights summing to 0
            raise MergeError(f"merge.sweep: {method} with weights {weights}: {exc}") from None
    return out


def sweep_variant_names(profile: "Profile") -> list[str]:
    """Names of the sweep's merged models, to list in evaluate.variants (05 evaluates what is listed)."""
    return [m.name for m in sweep_merges(profile.merge.sweep)]


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


# ---------------------------------------------------------------- dtypes
_MERGE_DTYPES = ("float32", "float16", "bfloat16")


def stored_dtype(model_dir: str | Path) -> "torch.dtype":
    """A checkpoint's own dtype: its config's `dtype` (transformers 5) or `torch_dtype`; float32 when
    it names none, or one a merge does not store (logged)."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir))
    named = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = str(named).replace("torch.", "") if named is not None else None
    if name in _MERGE_DTYPES:
        return getattr(torch, name)
    if name not in (None, "auto"):
        log.warning("%s: config dtype %r; merging in float32", model_dir, name)
    return torch.float32


def merge_dtype(setting: str, own: list["torch.dtype"]) -> "torch.dtype":
    """The dtype a merge stores: merge.dtype when set; auto: the inputs' own dtype when they share
    one, else float32 (no input loses precision). The arithmetic is float32 in every case."""
    import torch

    if setting != "auto":
        if setting not in _MERGE_DTYPES:
            raise MergeError(f"merge.dtype {setting!r}: use auto, {', '.join(_MERGE_DTYPES)}")
        return getattr(torch, setting)
    return own[0] if own and all(d == own[0] for d in own) else torch.float32


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


# ---------------------------------------------------------------- the stage
def adapter_dir_for(profile: "Profile") -> Path:
    return layout.artifact(profile, layout.ADAPTER)


def resolve_adapter(profile: "Profile", ref: str, where: str) -> Path:
    """An adapter reference: a folder of this run's 03_finetune (adapter, partner_adapter) or a path."""
    path = (Path(ref).expanduser() if ref.startswith(("/", ".", "~"))
            else profile.run_dir(layout.FINETUNE) / ref)
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
        "dtype": _dtype_name(dtype),
    }


@dataclass
class _Job:
    variant: str
    kind: str
    method: str
    inputs: Callable[[], dict]  # identity of what it is made from; called when the job runs
    steps: Callable[[], Steps]  # (build, check), prepared when the job runs (its inputs exist then)
    dtype: Any = None  # the torch dtype the variant is stored in
    report: dict = field(default_factory=dict)  # fields for merge_report.json
    local_inputs: list[str] = field(default_factory=list)  # folders read, for the manifest


def _check_variant_names(profile: "Profile") -> list[str]:
    cfg = profile.merge
    names = layout.planned_variants(profile)
    taken = names + [p.name for p in cfg.partners if not p.adapter]  # 05 resolves a partner's name too
    dupes = sorted({n for n in taken if taken.count(n) > 1})
    if dupes:
        raise MergeError(f"merge: duplicate variant names {dupes} (merge.merged_name, partners, their merged_name, "
                         "adapter_mixes, model_merges and sweep points share one namespace)")
    reserved = sorted(set(taken) & set(layout.RESERVED_VARIANTS))
    if reserved:
        raise MergeError(f"merge: {reserved} are names stage 05 reserves for the unmerged models")
    bad = [n for n in taken if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", n)]
    if bad:
        raise MergeError(f"merge: names {bad} must be letters, digits, '.', '_' or '-' (they name folders)")
    return names


class _Plan:
    """What run_merge makes, in the profile's order: one _Job per variant (layout.planned_variants),
    each knowing its inputs, its dtype and how to build and check it. Nothing is written here."""

    def __init__(self, profile: "Profile"):
        from transformers import AutoConfig

        self.profile, self.cfg = profile, profile.merge
        self.run_dir = profile.run_dir(STAGE)
        self.variants = _check_variant_names(profile)
        self.cache = profile.cache_dir()
        self.base_ref = profile.models.base
        self.base_path = resolve_model(self.base_ref, self.cache)
        self.base_config = AutoConfig.from_pretrained(self.base_path)
        self.partner_models = {p.name: p.model for p in self.cfg.partners if not p.adapter}
        self.produced: dict[str, Path] = {}  # variant -> folder, in the order the jobs make them
        self.produced_dtype: dict[str, Any] = {}
        self.content: dict[str, str] = {}  # folder -> model_content_hash; this stage's variants: from merge_info
        self.jobs: list[_Job] = []
        self.sweep = sweep_variant_names(profile)
        self.report: dict[str, Any] = {
            "adapter": None, "adapter_base": self.base_ref, "dtype": self.cfg.dtype, "seed": profile.seed,
            "verify_format": VERIFY_FORMAT, "weight_bound": WEIGHT_BOUND, "logit_bound": LOGIT_BOUND,
            "models": {}, "sweep": self.sweep}
        self.adapter_dir = adapter_dir_for(profile)
        self.adapter_tok: list[str] = []

    def content_id(self, path: str | Path) -> str | None:
        key = str(path)
        if key not in self.content and Path(key).is_dir():
            self.content[key] = model_content_hash(key)
        return self.content.get(key)

    def model_path(self, ref: str, where: str) -> str:
        """A variant made earlier in this stage, "base", a partner's name, or a model reference."""
        if ref in self.produced:
            return str(self.produced[ref])
        if ref in self.variants:
            raise MergeError(f"{where}: {ref!r} is made later in this stage than {where}; reorder the profile")
        if ref == layout.BASE_VARIANT:
            return self.base_path
        return _local_checkpoint(resolve_model(self.partner_models.get(ref, ref), self.cache))

    def own_dtype(self, path: str) -> "torch.dtype":
        """The stored dtype of a model folder or reference (a variant of this stage: the one it is made in)."""
        made = next((v for v, p in self.produced.items() if str(p) == str(path)), None)
        return self.produced_dtype[made] if made else stored_dtype(path)

    def _add(self, job: _Job) -> None:
        self.jobs.append(job)
        self.produced[job.variant] = self.run_dir / job.variant
        self.produced_dtype[job.variant] = job.dtype

    def is_produced(self, path: str | None) -> bool:
        return path in map(str, self.produced.values())

    def adapter_job(self, variant: str, ref: str, source: str, adapter: Path, tokenizer_dirs: list[str],
                    partner: str | None) -> None:
        _, deltas = read_adapter(adapter)
        adapter_sha = sha256_path(adapter)
        dtype = merge_dtype(self.cfg.dtype, [self.own_dtype(source)])
        base_ref = self.base_ref
        self._add(_Job(
            variant, KIND_ADAPTER, METHOD, dtype=dtype,
            inputs=lambda: _source_inputs(ref, source, adapter_sha, base_ref, dtype, self.content_id(source)),
            steps=lambda: adapter_merge_steps(source, adapter, deltas, tokenizer_dirs, dtype, self.cfg.verify_atol,
                                              variant),
            report={"base": ref, "base_path": source, "partner": partner, "adapter": str(adapter.resolve()),
                    "adapter_base": base_ref},
            local_inputs=[str(adapter)] + ([source] if Path(source).is_dir() and not self.is_produced(source) else [])))

    def add_adapter_merges(self) -> None:
        """The adapter into models.base (merge.merged_name) and into each partner (its merged_name)."""
        from transformers import AutoConfig

        cfg, base_path = self.cfg, self.base_path
        if not (cfg.merge_into_base or cfg.partners):
            return
        if not (self.adapter_dir / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{self.adapter_dir}: no LoRA adapter (adapter_config.json); "
                                    "run stage 03_finetune first")
        adapter_config, _ = read_adapter(self.adapter_dir)
        self.report["adapter"] = str(self.adapter_dir.resolve())
        self.adapter_tok = [str(self.adapter_dir)] if _has_tokenizer(self.adapter_dir) else []
        recorded_base = adapter_config.get("base_model_name_or_path")
        if recorded_base and recorded_base not in (self.base_ref, base_path):
            log.warning("adapter was trained on %r; merging it into models.base %r (%s)", recorded_base,
                        self.base_ref, base_path)
        if cfg.merge_into_base:
            self.adapter_job(layout.merged_variant(self.profile), self.base_ref, base_path, self.adapter_dir,
                             self.adapter_tok + [base_path], None)
        for partner in cfg.partners:
            path = resolve_model(partner.model, self.cache)
            check_architecture(AutoConfig.from_pretrained(path), self.base_config,
                               f"partner {partner.name!r} ({partner.model})",
                               f"models.base ({self.base_ref}, the adapter's base)")
            ref = partner.model
            if partner.adapter:  # build the partner fine-tune here: its own adapter merged into its model
                own = resolve_adapter(self.profile, partner.adapter, f"merge.partners[{partner.name}].adapter")
                self.adapter_job(partner.name, partner.model, path, own, [path, str(own), base_path], None)
                path, ref = str(self.produced[partner.name]), f"{STAGE}/{partner.name}"
            elif path == base_path:
                log.warning("partner %r is models.base itself: its merge equals %r", partner.name,
                            layout.merged_variant(self.profile))
            self.adapter_job(layout.partner_merged_variant(partner), ref, path, self.adapter_dir,
                             [path] + self.adapter_tok + [base_path], partner.name)

    def add_adapter_mixes(self) -> None:
        from transformers import AutoConfig

        for mix in self.cfg.adapter_mixes:
            where = f"merge.adapter_mixes[{mix.name}]"
            dirs = [resolve_adapter(self.profile, a, where) for a in mix.adapters]
            into = self.model_path(mix.into or layout.BASE_VARIANT, where)
            if mix.into and mix.into not in self.produced:
                check_architecture(AutoConfig.from_pretrained(into), self.base_config, f"{where}.into ({mix.into})",
                                   f"models.base ({self.base_ref})")
            shas = [sha256_path(d) for d in dirs]
            dtype = merge_dtype(self.cfg.dtype, [self.own_dtype(into)])
            drawn = mix.combination_type.startswith("dare")

            def mix_inputs(mix=mix, into=into, shas=shas, drawn=drawn, dtype=dtype) -> dict:
                return {"method": MIX_METHOD, "combination_type": mix.combination_type, "weights": list(mix.weights),
                        "density": mix.density, "svd_rank": mix.svd_rank,
                        "majority_sign_method": mix.majority_sign_method, "adapters_sha256": shas,
                        "into_ref": mix.into or self.base_ref, "into_content_sha256": self.content_id(into),
                        "dtype": _dtype_name(dtype), "seed": self.profile.seed if drawn else None,
                        "format": MERGE_FORMAT}

            tok = [into] + [str(d) for d in dirs if _has_tokenizer(d)] + [self.base_path]
            self._add(_Job(
                mix.name, KIND_MIX, f"{MIX_METHOD}:{mix.combination_type}", inputs=mix_inputs, dtype=dtype,
                steps=lambda mix=mix, into=into, dirs=dirs, tok=tok, dtype=dtype: adapter_mix_steps(
                    into, dirs, mix, tok, dtype, self.profile.seed, self.cfg.verify_atol),
                report={"base": mix.into or self.base_ref, "base_path": into,
                        "adapters": [str(d.resolve()) for d in dirs], "weights": list(mix.weights),
                        "density": mix.density, "svd_rank": mix.svd_rank},
                local_inputs=[str(d) for d in dirs] + ([into] if mix.into not in self.produced else [])))

    def add_model_merges(self) -> None:
        sweep_names = set(self.sweep)
        for mm in list(self.cfg.model_merges) + sweep_merges(self.cfg.sweep):
            where = f"merge.sweep ({mm.name})" if mm.name in sweep_names else f"merge.model_merges[{mm.name}]"
            paths = [self.model_path(r, where) for r in mm.models]
            uses_base = mm.method not in ("linear", "slerp")
            base_dir = self.model_path(mm.base or layout.BASE_VARIANT, where) if uses_base else None
            spec = ModelMergeSpec(mm.name, mm.method, paths, list(mm.models), list(mm.weights), mm.density,
                                  mm.majority_sign_method, base_dir, (mm.base or self.base_ref) if uses_base else None)
            dtype = merge_dtype(self.cfg.dtype, [self.own_dtype(p) for p in paths + ([base_dir] if base_dir else [])])

            def merge_inputs(mm=mm, spec=spec, dtype=dtype) -> dict:
                return {"method": mm.method, "weights": list(mm.weights), "density": mm.density,
                        "majority_sign_method": mm.majority_sign_method if mm.method in ("ties", "dare_ties") else None,
                        "models": [[label, self.content_id(p)] for label, p in zip(spec.labels, spec.models)],
                        "base": [spec.base_label, self.content_id(spec.base)] if spec.uses_base else None,
                        "dtype": _dtype_name(dtype), "seed": self.profile.seed if mm.method.startswith("dare") else None,
                        "format": MERGE_FORMAT}

            self._add(_Job(
                mm.name, KIND_MODELS, mm.method, inputs=merge_inputs, dtype=dtype,
                steps=lambda spec=spec, dtype=dtype: model_merge_steps(spec, spec.models + [self.base_path], dtype,
                                                                       self.profile.seed),
                report={"models": list(mm.models), "model_paths": paths, "weights": list(mm.weights),
                        "density": mm.density, "base": spec.base_label, "base_path": base_dir,
                        "sweep": mm.name in sweep_names},
                local_inputs=[p for p in paths + [base_dir] if p and not self.is_produced(p)]))


def plan_merges(profile: "Profile") -> _Plan:
    """Every job of stage 04 for this profile, in order (layout.planned_variants), with the report's
    header; checks names, architectures and that each input exists or is made earlier."""
    plan = _Plan(profile)
    plan.add_adapter_merges()
    plan.add_adapter_mixes()
    plan.add_model_merges()
    if [j.variant for j in plan.jobs] != plan.variants:  # the layout and the jobs must not drift apart
        raise RuntimeError(f"merge jobs {[j.variant for j in plan.jobs]} != layout.planned_variants {plan.variants}")
    if not plan.jobs:
        log.warning("nothing to merge: merge.merge_into_base is false and no partners, adapter_mixes, "
                    "model_merges or sweep are given")
    return plan


def _existing_output(job: _Job, out_dir: Path, inputs: dict, force: bool) -> str | None:
    """None when `out_dir` can be reused or does not exist; the reason when it is stale (this stage
    made it from other inputs: made again). Raises when it is not this stage's or was edited."""
    if not out_dir.exists() or force:
        return None
    ok, why = _reusable(out_dir, inputs)
    if ok:
        return None
    if why.startswith(INPUTS_DIFFER):  # an adapter trained again, new weights: stale, made again
        log.warning("%s: replacing %s: %s", job.variant, out_dir, why)
        return why
    raise MergeError(f"{out_dir} already exists and {why}; pass --force "
                     f"(run_merge(profile, force=True)) to overwrite it")


def _run_job(job: _Job, run: StageRun, out_dir: Path, verify: bool, force: bool) -> tuple[dict, bool, str | None]:
    """Make (or reuse) one variant; returns (its merge_info, reused, why an earlier one was replaced).
    A reused variant whose check is missing or older than VERIFY_FORMAT is checked again."""
    inputs = job.inputs()
    replaced = _existing_output(job, out_dir, inputs, force)
    if out_dir.exists() and not force and replaced is None:
        info = read_merge_info(out_dir)
        if verify and (info.get("verification") or {}).get("format") != VERIFY_FORMAT:
            _, check = job.steps()
            with measure_peak_rss() as memory:
                info["verification"] = check(out_dir)
            info.setdefault("memory", {})["verify_peak_rss_mb"] = memory["peak_rss_mb"]
            write_json(out_dir / MERGE_INFO, info)
        log.info("%s: reusing %s (same inputs)", job.variant, out_dir)
        return info, True, None
    if out_dir.exists() and force:
        log.warning("%s: --force: replacing %s", job.variant, out_dir)
    log.info("%s: %s (%s) in %s", job.variant, job.method, job.kind, _dtype_name(job.dtype))
    build, check = job.steps()
    with run.timed(job.variant):
        info = _write_variant(out_dir, build, check if verify else None,
                              {"inputs": inputs, "kind": job.kind, "method": job.method, "dtype": _dtype_name(job.dtype)})
    return info, False, replaced


def _report_entry(job: _Job, out_dir: Path, info: dict, verify: bool, reused: bool, replaced: str | None,
                  seconds: float) -> dict:
    """One variant's entry in merge_report.json: where it is, what it was made from, its checks."""
    verification = info.get("verification") if verify else None
    memory = info.get("memory", {})
    peaks = [memory.get(k) for k in ("merge_peak_rss_mb", "verify_peak_rss_mb") if memory.get(k)]
    return {
        "path": str(out_dir.resolve()),
        "kind": job.kind,
        "method": job.method,
        "partner": None,
        **job.report,
        "dtype": _dtype_name(job.dtype),
        "verified": verification is not None,
        "max_abs_weight_diff": verification and verification["max_abs_weight_diff"],
        "max_weight_error_to_bound": verification and verification.get("max_weight_error_to_bound"),
        "max_abs_logit_diff": verification and verification.get("max_abs_logit_diff"),
        "logit_tolerance": verification and verification.get("logit_tolerance"),
        "verification": verification,
        "content_sha256": info["content_sha256"],
        "reused": reused,
        "replaced": replaced,
        "peak_rss_mb": max(peaks) if peaks else None,  # this merge's (and its check's) peak, when made
        "memory": memory,
        "seconds": round(seconds, 2),
    }


def run_merge(profile: "Profile", force: bool = False) -> dict:
    """Stage 04: make every variant the profile asks for (see the module docstring), verify each,
    and write merge_report.json. An existing variant made from the same inputs is reused; one this
    stage made from other inputs is stale and made again (logged, and `replaced` in the report says
    what changed); a directory without this stage's record, or edited after, is refused unless `force`.
    Hub access is the caller's (the runner sets it from the profile); this stage sets nothing."""
    plan = plan_merges(profile)
    verify = profile.merge.verify
    report = plan.report
    with StageRun(plan.run_dir, STAGE, profile.fingerprint_params(STAGE)) as run:
        for job in plan.jobs:
            for p in job.local_inputs:
                if Path(p).is_dir() and str(Path(p).resolve()) not in run.inputs:
                    run.add_input(p)
        for job in plan.jobs:
            out_dir = plan.run_dir / job.variant
            t0 = time.perf_counter()
            info, reused, replaced = _run_job(job, run, out_dir, verify, force)
            plan.content[str(out_dir)] = info["content_sha256"]
            entry = _report_entry(job, out_dir, info, verify, reused, replaced, time.perf_counter() - t0)
            report["models"][job.variant] = entry
            run.add_output(out_dir)
            for key in ("max_abs_weight_diff", "max_weight_error_to_bound", "max_abs_logit_diff", "peak_rss_mb"):
                run.metrics[f"{job.variant}.{key}"] = entry[key]
        report_path = write_json(plan.run_dir / REPORT, report)
        run.add_output(report_path)
        run.metrics["models"] = len(report["models"])
        run.metrics["peak_rss_mb"] = peak_rss_mb()
    return report
