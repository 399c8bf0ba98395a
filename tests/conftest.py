import functools
import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PLATYPUS_PROGRESS", "0")

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture
def make_profile(tmp_path):
    """A validated Profile whose runs/reports/cache live under tmp_path."""
    from platypus_utils.config import Profile

    def _make(**sections):
        raw = {
            "name": "t",
            "paths": {
                "runs_dir": str(tmp_path / "runs"),
                "reports_dir": str(tmp_path / "reports"),
                "cache_dir": str(tmp_path / "cache"),
            },
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(raw.get(key), dict):
                raw[key].update(value)
            else:
                raw[key] = value
        return Profile.model_validate(raw)

    return _make


# ---------------------------------------------------------------- tiny models shared by several test modules
# Heavy libraries (torch, transformers, tokenizers, peft) and the stage modules are imported inside the
# helpers: this file is loaded for every test, most of which need none of them.
TARGETS = ["gate_proj", "up_proj", "down_proj"]  # the LoRA targets of the tiny adapters
R, ALPHA = 4, 8  # their rank and alpha
DENSITY = 0.5  # the density of the ties / dare merges in the merge tests


@functools.cache
def tiny_words() -> list[str]:
    """The word-level vocabulary of `tiny_tokenizer`: every word of stage 04's verification prompts."""
    from platypus_utils.merge.verify import VERIFY_PROMPTS

    return sorted({w.strip(".,?:").lower() for p in VERIFY_PROMPTS for w in p.split()} | {"a", "b", "c"})


def tiny_tokenizer():
    """A word-level tokenizer over `tiny_words()` ([UNK], [PAD], </s> first)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", "</s>"] + tiny_words())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="</s>")


def tiny_config(**overrides):
    """A 2-layer Llama config sized for `tiny_tokenizer`."""
    from transformers import LlamaConfig

    kw = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tiny_words()) + 3,
        max_position_embeddings=128,
        pad_token_id=1,
        eos_token_id=2,
        bos_token_id=2,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


def save_tiny_llama(path, seed=0, perturb_from=None, **overrides):
    """A tiny random Llama (+ tokenizer) at `path`; with perturb_from, a noisy copy of that model."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    torch.manual_seed(seed)
    if perturb_from is not None:
        model = AutoModelForCausalLM.from_pretrained(perturb_from, dtype=torch.float32)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    else:
        model = LlamaForCausalLM(tiny_config(**overrides))
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def save_adapter(base_dir, adapter_dir, seed=1, targets=TARGETS):
    """A LoRA adapter with random nonzero B (init_lora_weights=False), as stage 03 would save it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    peft_model = get_peft_model(
        model, LoraConfig(r=R, lora_alpha=ALPHA, target_modules=targets, lora_dropout=0.0, init_lora_weights=False)
    )
    peft_model.save_pretrained(adapter_dir)
    tiny_tokenizer().save_pretrained(adapter_dir)
    return adapter_dir


def save_finetune(base_dir, path, seed, scale=0.05, only=("mlp",)):
    """A 'fine-tune' of the base: noise added to the tensors whose name contains one of `only`
    (the others stay equal to the base, as LoRA leaves them)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(o in name for o in only):
                p.add_(torch.randn(p.shape, generator=gen) * scale)
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


# ---------------------------------------------------------------- stage 03's tiny model, rows and profiles
FINETUNE_EOS = "<|endoftext|>"
FINETUNE_PAD = "<pad>"


def make_rows(n: int = 28) -> list[dict]:
    """Learnable rows: every answer reads "The answer is <n>." (so a few steps lower the loss)."""
    rows = []
    for i in range(n):
        row = {
            "instruction": f"What is {i} plus {i + 1}?",
            "input": "" if i % 3 else f"Use {i} and {i + 1}.",
            "output": f"The answer is {2 * i + 1}.",
            "data_source": "demo",
        }
        rows.append(row)
    return rows


def build_tiny_model(out: Path) -> Path:
    """A byte-level BPE tokenizer (EOS distinct from PAD) trained on `make_rows` in the Alpaca template,
    and a 2-layer random Llama, saved together in `out`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from platypus_utils.finetune.data import format_alpaca_prompt

    corpus = [format_alpaca_prompt(r["instruction"], r["input"]) + r["output"] for r in make_rows(40)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        corpus * 3,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=[FINETUNE_EOS, FINETUNE_PAD],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=FINETUNE_EOS, pad_token=FINETUNE_PAD)
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tok),
        max_position_embeddings=512,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    out.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """`build_tiny_model`, once per session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


def distributed_profile(tmp_path, config="ddp", num_gpus=4, **finetune) -> Path:
    """A profile file under tmp_path/params asking for several GPUs, with accelerate/<config>.yaml."""
    raw = {
        "name": "multi",
        "models": {"base": "embedded:smollm2-135m-instruct"},
        "paths": {
            "runs_dir": str(tmp_path / "runs"),
            "reports_dir": str(tmp_path / "reports"),
            "cache_dir": str(tmp_path / "cache"),
        },
        "finetune": {
            "num_gpus": num_gpus,
            "accelerate_config": str(ROOT / "accelerate" / f"{config}.yaml"),
            **finetune,
            "sft": {"max_steps": 3, **finetune.get("sft", {})},
        },
    }
    path = tmp_path / "params" / "multi.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path
