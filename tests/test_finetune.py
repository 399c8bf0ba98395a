"""Stage 03 (LoRA fine-tuning): the template, the prompt/label masking and EOS, the stage end to end,
its errors, and resuming from a checkpoint. A tiny random Llama and a small byte-level BPE
tokenizer trained here keep it fast and offline."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from platypus_utils import finetune as ft_mod  # noqa: E402
from platypus_utils.artifacts import read_manifest, write_jsonl  # noqa: E402
from platypus_utils.config import Profile  # noqa: E402

EOS = "<|endoftext|>"
PAD = "<pad>"

WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n"
)
NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nName a prime.\n\n### Response:\n"
)


def make_rows(n: int = 28) -> list[dict]:
    """Learnable rows: every answer reads "The answer is <n>." (so a few steps lower the loss)."""
    rows = []
    for i in range(n):
        row = {"instruction": f"What is {i} plus {i + 1}?", "input": "" if i % 3 else f"Use {i} and {i + 1}.",
               "output": f"The answer is {2 * i + 1}.", "data_source": "demo"}
        rows.append(row)
    return rows


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A byte-level BPE tokenizer (EOS distinct from PAD) and a 2-layer random Llama, saved together."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [ft_mod.format_alpaca_prompt(r["instruction"], r["input"]) + r["output"] for r in make_rows(40)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus * 3, trainers.BpeTrainer(
        vocab_size=400, special_tokens=[EOS, PAD], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, pad_token=PAD)
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=512,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def finetune_profile(tmp_path, model_dir, rows=None, **finetune) -> Profile:
    settings = dict(learning_rate=1e-2, max_steps=6, per_device_train_batch_size=4, gradient_accumulation_steps=1,
                    warmup_steps=0, eval_size=4, logging_steps=1, save_steps=100, cutoff_len=128)
    settings.update(finetune)
    profile = Profile.model_validate({
        "name": "t", "seed": 7,
        "paths": {"runs_dir": str(tmp_path / "runs"), "reports_dir": str(tmp_path / "reports"),
                  "cache_dir": str(tmp_path / "cache")},
        "models": {"base": str(model_dir)},
        "finetune": settings,
    })
    if rows is not None:
        write_jsonl(profile.run_dir("02_decontaminate") / "clean.jsonl", rows)
    return profile


# ---------------------------------------------------------------- template and data
def test_alpaca_template_exact_strings():
    assert ft_mod.format_alpaca_prompt("Add the numbers.", "2 and 3") == WITH_INPUT
    assert ft_mod.format_alpaca_prompt("Name a prime.", "") == NO_INPUT
    assert ft_mod.format_alpaca_prompt("Name a prime.") == NO_INPUT
    latex = "Find $x$ if $\\frac{x}{2} = {3}$."  # braces in the data are text, not template fields
    assert ft_mod.format_alpaca_prompt(latex, "{input}").count(latex + "\n\n### Input:\n{input}\n\n") == 1


def test_prompt_completion_appends_eos_once():
    rows = [{"instruction": "Name a prime.", "input": "", "output": "7"}]
    ds = ft_mod.build_prompt_completion_dataset(rows, EOS)
    assert ds.column_names == ["prompt", "completion"]
    assert ds[0] == {"prompt": NO_INPUT, "completion": "7" + EOS}


def test_select_rows_skips_and_counts_bad_rows():
    rows = make_rows(5) + [
        {"instruction": "q", "input": "", "output": ""},
        {"instruction": "q", "input": ""},
        {"instruction": "", "input": "", "output": "a"},
        {"instruction": "q", "input": 3, "output": "a"},
        {"instruction": "q", "input": "", "output": "stop" + EOS},
    ]
    kept, lines, skipped = ft_mod.select_rows(rows, "clean.jsonl", EOS)
    assert len(kept) == 5 and lines == [1, 2, 3, 4, 5]
    assert skipped == {"missing_output": 2, "missing_instruction": 1, "input_not_a_string": 1,
                       "output_contains_eos_text": 1}


def test_heldout_split_is_seeded_and_disjoint():
    train, held = ft_mod.split_heldout(50, 8, seed=3)
    assert (train, held) == ft_mod.split_heldout(50, 8, seed=3)
    assert held != ft_mod.split_heldout(50, 8, seed=4)[1]
    assert len(held) == 8 and not set(train) & set(held) and len(train) + len(held) == 50
    assert len(ft_mod.split_heldout(50, 8, seed=3, max_train=10)[0]) == 10


def test_check_prepared_example_catches_double_eos_and_unmasked_prompt():
    eos = 9
    assert ft_mod.check_prepared_example([1, 2, 5, eos], [-100, -100, 5, eos], eos, truncated=False) is None
    assert "more than once" in ft_mod.check_prepared_example([1, 2, 5, eos, eos], [-100, -100, 5, eos, eos],
                                                             eos, truncated=False)
    assert "end with EOS" in ft_mod.check_prepared_example([1, 2, 5], [-100, -100, 5], eos, truncated=False)
    assert ft_mod.check_prepared_example([1, 2, 5], [-100, -100, 5], eos, truncated=True) is None
    assert "differs" in ft_mod.check_prepared_example([1, 2, 5, eos], [-100, 2, 6, eos], eos, truncated=False)


def test_sft_config_overrides_trl_defaults_on_cpu(tiny_model_dir, tmp_path):
    """SFTConfig defaults to bf16 and activation checkpointing; the profile decides both."""
    profile = finetune_profile(tmp_path, tiny_model_dir, gradient_checkpointing=False)
    args = ft_mod.build_sft_config(profile.finetune, tmp_path / "ckpt", 5, "cpu", torch.float32)
    assert (args.bf16, args.fp16, args.activation_checkpointing, args.use_cpu) == (False, False, False, True)
    assert (args.completion_only_loss, args.max_length, args.seed, args.data_seed) == (True, 128, 5, 5)
    assert args.report_to in ([], "none", ["none"])


# ---------------------------------------------------------------- masking and EOS through TRL
def test_collated_batch_masks_prompt_and_padding_and_ends_with_one_eos(tiny_model_dir, tokenizer, tmp_path):
    """The real path: our dataset -> TRL's preparation -> TRL's collator, checked token by token."""
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    rows = make_rows(6)
    rows[1]["output"] = "A much longer answer, so that the other rows of the batch need padding: 1 2 3 4 5."
    profile = finetune_profile(tmp_path, tiny_model_dir)
    args = ft_mod.build_sft_config(profile.finetune, tmp_path / "ckpt", 0, "cpu", torch.float32)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), args=args,
                         train_dataset=ft_mod.build_prompt_completion_dataset(rows, tokenizer.eos_token),
                         processing_class=tokenizer, peft_config=ft_mod.build_lora_config(profile.finetune))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    eos = tokenizer.eos_token_id
    assert batch["labels"].shape == batch["input_ids"].shape == (len(rows), batch["input_ids"].shape[1])
    for i, row in enumerate(rows):
        prompt = tokenizer(ft_mod.format_alpaca_prompt(row["instruction"], row["input"]))["input_ids"]
        completion = tokenizer(row["output"])["input_ids"] + [eos]
        expected = prompt + completion
        n, ids, labels = len(expected), batch["input_ids"][i].tolist(), batch["labels"][i].tolist()
        assert ids[:n] == expected  # the tokens: template, output, one EOS
        assert labels[:len(prompt)] == [-100] * len(prompt)  # prompt masked
        assert labels[len(prompt):n] == completion  # completion kept, token by token
        assert labels[n:] == [-100] * (len(labels) - n)  # padding masked
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (len(ids) - n)
        kept = [t for t in labels if t != -100]
        assert kept[-1] == eos and kept.count(eos) == 1
    assert (batch["labels"] == -100).any(dim=1).all() and (batch["attention_mask"] == 0).any()


# ---------------------------------------------------------------- the stage
def test_run_finetune_end_to_end(tiny_model_dir, tmp_path):
    rows = make_rows(28) + [{"instruction": "q", "input": "", "output": ""}]
    rows[0]["output"] = "The answer is 1. " + " ".join(str(i) for i in range(60))  # past cutoff_len
    profile = finetune_profile(tmp_path, tiny_model_dir, rows)
    metrics = ft_mod.run_finetune(profile)

    stage = profile.run_dir("03_finetune")
    adapter = stage / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "tokenizer.json").is_file()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"gate_proj", "up_proj", "down_proj"}
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (16, 16, 0.05)

    saved = json.loads((stage / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert math.isfinite(saved["eval_loss_before"]) and math.isfinite(saved["eval_loss_after"])
    assert saved["eval_loss_after"] < saved["eval_loss_before"]  # 6 steps at lr 1e-2 learn "The answer is"
    assert saved["examples_skipped"] == {"missing_output": 1}
    assert saved["examples_train"] + saved["examples_eval"] == 28 and saved["examples_eval"] == 4
    assert sum(saved["examples_truncated"].values()) == 1
    assert saved["steps"] == 6 and len(saved["train_loss_history"]) == 6
    assert len(saved["heldout_rows"]) == 4 and 29 not in saved["heldout_rows"]  # row 29 has no output
    assert saved["tokens_seen"] > 0 and saved["tokens_per_s"] > 0 and saved["peak_rss_mb"] > 0

    lines = (stage / "log_history.csv").read_text().splitlines()
    assert lines[0].startswith("step,epoch,split,loss")
    assert sum(",train," in line for line in lines) == 6 and sum(",eval," in line for line in lines) == 2
    for fmt in ("png", "pdf"):
        assert (profile.report_dir("figures") / f"03_loss_curve.{fmt}").stat().st_size > 0

    manifest = read_manifest(stage)
    assert manifest["status"] == "ok" and manifest["metrics"]["eval_loss_after"] == saved["eval_loss_after"]
    inputs = set(manifest["inputs"])
    assert str((profile.run_dir("02_decontaminate") / "clean.jsonl").resolve()) in inputs
    assert str(tiny_model_dir.resolve()) in inputs
    assert {str(p.resolve()) for p in (adapter, stage / "metrics.json", stage / "log_history.csv")} <= set(
        manifest["outputs"])
    assert not (stage / "checkpoints").exists()  # a finished run keeps its adapter, not its checkpoints


def test_run_finetune_with_packing(tiny_model_dir, tmp_path):
    """bfd packing (padding-free; transformers masks across the packed examples from position ids)."""
    profile = finetune_profile(tmp_path, tiny_model_dir, make_rows(28), packing=True, max_steps=4)
    metrics = ft_mod.run_finetune(profile)
    assert metrics["packing"] and metrics["steps"] == 4
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]


def test_missing_target_modules_are_named(tiny_model_dir, tmp_path):
    profile = finetune_profile(tmp_path, tiny_model_dir, make_rows(12),
                           target_modules=["gate_proj", "c_fc", "w3_proj"])
    with pytest.raises(ValueError, match=r"\['c_fc', 'w3_proj'\] not found") as err:
        ft_mod.run_finetune(profile)
    assert "gate_proj" in str(err.value)  # the message lists the linear layers that do exist
    assert read_manifest(profile.run_dir("03_finetune")) is None


def test_empty_dataset_error_names_the_file(tiny_model_dir, tmp_path):
    profile = finetune_profile(tmp_path, tiny_model_dir, [])
    with pytest.raises(ValueError, match="clean.jsonl: no rows"):
        ft_mod.run_finetune(profile)


def test_too_few_rows_for_the_heldout_split(tiny_model_dir, tmp_path):
    profile = finetune_profile(tmp_path, tiny_model_dir, make_rows(4), eval_size=4)
    with pytest.raises(ValueError, match="eval_size=4"):
        ft_mod.run_finetune(profile)


def test_quantized_loading_needs_cuda(tiny_model_dir, tmp_path):
    profile = finetune_profile(tmp_path, tiny_model_dir, load_in_4bit=True)
    with pytest.raises(RuntimeError, match="load_in_4bit.*CUDA"):
        ft_mod.quantization_config(profile.finetune, "cpu")
    both = finetune_profile(tmp_path, tiny_model_dir, load_in_4bit=True, load_in_8bit=True)
    with pytest.raises(ValueError, match="exclusive"):
        ft_mod.quantization_config(both.finetune, "cpu")
    assert ft_mod.quantization_config(finetune_profile(tmp_path, tiny_model_dir).finetune, "cpu") is None


# ---------------------------------------------------------------- resume
class Interrupted(Exception):
    pass


class StopAfter:
    """A TrainerCallback that crashes the run after `step` optimizer steps (a stand-in for a kill)."""

    def __init__(self, step: int):
        from transformers import TrainerCallback

        outer = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == outer.step:
                    raise Interrupted(f"stopped after step {outer.step}")

        self.step = step
        self.callback = _Callback()


def test_interrupted_run_resumes_from_its_checkpoint(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    settings = dict(max_steps=4, save_steps=2, per_device_train_batch_size=2)
    profile = finetune_profile(tmp_path / "a", tiny_model_dir, make_rows(24), **settings)
    with pytest.raises(Interrupted):
        ft_mod.run_finetune(profile, callbacks=[StopAfter(3).callback])
    stage = profile.run_dir("03_finetune")
    assert (stage / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    assert read_manifest(stage) is None and not (stage / "adapter").exists()

    resumed = ft_mod.run_finetune(profile)
    assert resumed["resumed_from_checkpoint"] == "checkpoint-2"
    assert resumed["steps"] == 4
    assert [h["step"] for h in resumed["train_loss_history"]] == [1, 2, 3, 4]  # steps 1-2 from the checkpoint
    assert resumed["tokens_seen_this_session"] < resumed["tokens_seen"]

    # the same run without the interruption ends with the same adapter
    straight_profile = finetune_profile(tmp_path / "b", tiny_model_dir, make_rows(24), **settings)
    straight = ft_mod.run_finetune(straight_profile)
    assert straight["resumed_from_checkpoint"] is None
    a = load_file(stage / "adapter" / "adapter_model.safetensors")
    b = load_file(straight_profile.run_dir("03_finetune") / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    assert resumed["eval_loss_after"] == pytest.approx(straight["eval_loss_after"], rel=1e-4)


def test_stale_checkpoints_are_not_resumed(tmp_path):
    ckpt = tmp_path / "checkpoints"
    (ckpt / "checkpoint-2").mkdir(parents=True)
    (ckpt / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (ckpt / "checkpoint-4").mkdir()  # interrupted while saving: no trainer_state.json
    (ckpt / ft_mod.RUN_KEY).write_text(json.dumps({"params": 1}))
    assert ft_mod._prepare_checkpoint_dir(ckpt, {"params": 1}) == ckpt / "checkpoint-2"
    assert not (ckpt / "checkpoint-4").exists()
    assert ft_mod._prepare_checkpoint_dir(ckpt, {"params": 2}) is None
    assert not (ckpt / "checkpoint-2").exists()
