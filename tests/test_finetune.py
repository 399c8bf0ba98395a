"""Stage 03 (LoRA fine-tuning): the template, the prompt/label masking and EOS, the stage end to end,
its errors, and resuming from a checkpoint. A tiny random Llama and a small byte-level BPE
tokenizer trained here keep it fast and offline."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from platypus_utils.artifacts import read_manifest, write_jsonl  # noqa: E402
from platypus_utils.config import Profile  # noqa: E402
from platypus_utils.finetune.batching import plan_batch, plan_table  # noqa: E402
from platypus_utils.finetune.checkpoints import RUN_KEY, prepare_checkpoint_dir  # noqa: E402
from platypus_utils.finetune.data import (  # noqa: E402
    check_prepared_example,
    example_frame,
    format_alpaca_prompt,
    records_dataset,
    select_rows,
    split_heldout,
    to_prompt_completion,
    tokenize_example,
)
from platypus_utils.finetune.distributed import quantization_config  # noqa: E402
from platypus_utils.finetune.report import (  # noqa: E402
    LiveLossCurve,
    csv_text,
    log_rows,
    loss_curve_caption,
    plot_loss_curve,
    read_log_rows,
    speed_tables,
    whole_run_train_loss,
)
from platypus_utils.finetune.stage import build_trainer, expected_plan, load_data, load_model, run_finetune  # noqa: E402
from platypus_utils.finetune.trainer import (  # noqa: E402
    build_lora_config,
    build_sft_config,
    check_packing_isolation,
    prepare_trainer,
    project_sft_options,
    resolve_attn_implementation,
    resolve_liger,
    segment_losses,
)

from .conftest import FINETUNE_EOS, FINETUNE_PAD, make_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

EOS, PAD = FINETUNE_EOS, FINETUNE_PAD  # the tiny model's special tokens (conftest.build_tiny_model)

WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n"
)
NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nName a prime.\n\n### Response:\n"
)


@pytest.fixture
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def finetune_profile(tmp_path, model_dir, rows=None, sft=None, lora=None, **finetune) -> Profile:
    """A profile on the tiny model: 6 steps of 4 examples at lr 1e-2; `sft` and `lora` over these
    (finetune.sft / finetune.lora), the other keyword arguments the project's finetune keys."""
    options = dict(learning_rate=1e-2, max_steps=6, per_device_train_batch_size=4, warmup_steps=0, logging_steps=1)
    settings = dict(sft={**options, "save_steps": 100, **(sft or {})}, eval_size=4, cutoff_len=128, global_batch_size=4)
    settings.update(finetune)
    if lora is not None:
        settings["lora"] = lora
    profile = Profile.model_validate(
        {
            "name": "t",
            "seed": 7,
            "paths": {
                "runs_dir": str(tmp_path / "runs"),
                "reports_dir": str(tmp_path / "reports"),
                "cache_dir": str(tmp_path / "cache"),
            },
            "models": {"base": str(model_dir)},
            "finetune": settings,
        }
    )
    if rows is not None:
        write_jsonl(profile.run_dir("02_decontaminate") / "clean.jsonl", rows)
    return profile


# ---------------------------------------------------------------- template and data
def test_alpaca_template_exact_strings():
    assert format_alpaca_prompt("Add the numbers.", "2 and 3") == WITH_INPUT
    assert format_alpaca_prompt("Name a prime.", "") == NO_INPUT
    assert format_alpaca_prompt("Name a prime.") == NO_INPUT
    latex = "Find $x$ if $\\frac{x}{2} = {3}$."  # braces in the data are text, not template fields
    assert format_alpaca_prompt(latex, "{input}").count(latex + "\n\n### Input:\n{input}\n\n") == 1


def test_prompt_completion_appends_eos_once():
    rows = [{"instruction": "Name a prime.", "input": "", "output": "7"}]
    ds = records_dataset(to_prompt_completion(rows, EOS))
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
    kept, lines, skipped = select_rows(rows, "clean.jsonl", EOS)
    assert len(kept) == 5 and lines == [1, 2, 3, 4, 5]
    assert skipped == {
        "missing_output": 2,
        "missing_instruction": 1,
        "input_not_a_string": 1,
        "output_contains_eos_text": 1,
    }


def test_heldout_split_is_seeded_and_disjoint():
    train, held = split_heldout(50, 8, seed=3)
    assert (train, held) == split_heldout(50, 8, seed=3)
    assert held != split_heldout(50, 8, seed=4)[1]
    assert len(held) == 8 and not set(train) & set(held) and len(train) + len(held) == 50
    assert len(split_heldout(50, 8, seed=3, max_train=10)[0]) == 10


def test_check_prepared_example_catches_double_eos_and_unmasked_prompt():
    eos = 9
    assert check_prepared_example([1, 2, 5, eos], [-100, -100, 5, eos], eos, truncated=False) is None
    assert "more than once" in check_prepared_example(
        [1, 2, 5, eos, eos], [-100, -100, 5, eos, eos], eos, truncated=False
    )
    assert "end with EOS" in check_prepared_example([1, 2, 5], [-100, -100, 5], eos, truncated=False)
    assert check_prepared_example([1, 2, 5], [-100, -100, 5], eos, truncated=True) is None
    assert "differs" in check_prepared_example([1, 2, 5, eos], [-100, 2, 6, eos], eos, truncated=False)


def test_sft_config_overrides_trl_defaults_on_cpu(tiny_model_dir, tmp_path):
    """SFTConfig defaults to bf16 and activation checkpointing; the profile decides both."""
    profile = finetune_profile(tmp_path, tiny_model_dir, sft={"activation_checkpointing": False})
    args = build_sft_config(profile.finetune, tmp_path / "ckpt", 5, "cpu", torch.float32)
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
    args = build_sft_config(profile.finetune, tmp_path / "ckpt", 0, "cpu", torch.float32)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=args,
        train_dataset=records_dataset(to_prompt_completion(rows, tokenizer.eos_token)),
        processing_class=tokenizer,
        peft_config=build_lora_config(profile.finetune),
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    eos = tokenizer.eos_token_id
    assert batch["labels"].shape == batch["input_ids"].shape == (len(rows), batch["input_ids"].shape[1])
    for i, row in enumerate(rows):
        prompt = tokenizer(format_alpaca_prompt(row["instruction"], row["input"]))["input_ids"]
        completion = tokenizer(row["output"])["input_ids"] + [eos]
        expected = prompt + completion
        n, ids, labels = len(expected), batch["input_ids"][i].tolist(), batch["labels"][i].tolist()
        assert ids[:n] == expected  # the tokens: template, output, one EOS
        assert labels[: len(prompt)] == [-100] * len(prompt)  # prompt masked
        assert labels[len(prompt) : n] == completion  # completion kept, token by token
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
    metrics = run_finetune(profile)

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
        manifest["outputs"]
    )
    assert not (stage / "checkpoints").exists()  # a finished run keeps its adapter, not its checkpoints


def test_run_finetune_with_packing(tiny_model_dir, tmp_path):
    """bfd packing (padding-free; transformers masks across the packed examples from position ids):
    the isolation check runs, and the step keeps the profile's 6 examples' worth of tokens."""
    from transformers import TrainerCallback

    seen = {}

    class RecordAccumulation(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            seen["gradient_accumulation_steps"] = args.gradient_accumulation_steps

    profile = finetune_profile(
        tmp_path,
        tiny_model_dir,
        make_rows(28),
        packing=True,
        sft={"max_steps": 4, "per_device_train_batch_size": 1},
        global_batch_size=6,
        batch_unit="tokens",
    )
    metrics = run_finetune(profile, callbacks=[RecordAccumulation()])
    assert metrics["packing"] == "bfd" and metrics["steps"] == 4
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]
    assert metrics["packing_isolation"]["checked"] and metrics["packing_isolation"]["max_rel_diff"] < 1e-4
    plan = metrics["batch_plan"]
    assert plan["unit"] == "packed row" and plan["tokens_per_step_target"] == pytest.approx(
        6 * plan["mean_example_tokens"], rel=1e-3
    )
    # rows hold several examples, so fewer rows per step; the trainer used the planned accumulation
    assert seen["gradient_accumulation_steps"] == plan["gradient_accumulation_steps"] < 6
    assert metrics["gradient_accumulation_steps"] == plan["gradient_accumulation_steps"]


def test_padding_free_steps_hold_exactly_the_profile_examples(tiny_model_dir, tmp_path):
    """batch_unit examples with packing: each micro-batch of 2 examples is one padding-free row
    (position ids restart at each example), and a step is 2 x 3 = 6 examples, exactly."""
    from transformers import TrainerCallback

    seen = {"rows": [], "examples": []}

    class RecordBatches(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            seen["gradient_accumulation_steps"] = args.gradient_accumulation_steps

    profile = finetune_profile(
        tmp_path,
        tiny_model_dir,
        make_rows(28),
        packing=True,
        sft={"max_steps": 2, "per_device_train_batch_size": 2},
        global_batch_size=6,
    )
    metrics = run_finetune(profile, callbacks=[RecordBatches()])
    plan = metrics["batch_plan"]
    assert plan["unit"] == "example" and plan["examples_per_step"] == 6 and metrics["examples_per_step"] == 6
    assert seen["gradient_accumulation_steps"] == plan["gradient_accumulation_steps"] == 3
    assert metrics["packing_isolation"]["checked"] and metrics["packing_isolation"]["max_rel_diff"] < 1e-4
    assert metrics["warmup_share"] == pytest.approx(min(profile.finetune.sft["warmup_steps"], 2) / 2)
    # what the trainer's collator makes of one micro-batch: one row, two examples, no padding
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    batch = collator([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [-100, 9]}])
    assert batch["input_ids"].shape == (1, 5) and batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]


def test_missing_target_modules_are_named(tiny_model_dir, tmp_path):
    profile = finetune_profile(
        tmp_path, tiny_model_dir, make_rows(12), lora={"target_modules": ["gate_proj", "c_fc", "w3_proj"]}
    )
    with pytest.raises(ValueError, match=r"\['c_fc', 'w3_proj'\] not found") as err:
        run_finetune(profile)
    assert "gate_proj" in str(err.value)  # the message lists the linear layers that do exist
    assert read_manifest(profile.run_dir("03_finetune")) is None


def test_empty_dataset_error_names_the_file(tiny_model_dir, tmp_path):
    profile = finetune_profile(tmp_path, tiny_model_dir, [])
    with pytest.raises(ValueError, match="clean.jsonl: no rows"):
        run_finetune(profile)


def test_too_few_rows_for_the_heldout_split(tiny_model_dir, tmp_path):
    profile = finetune_profile(tmp_path, tiny_model_dir, make_rows(4), eval_size=4)
    with pytest.raises(ValueError, match="eval_size=4"):
        run_finetune(profile)


def test_quantized_loading_needs_cuda(tiny_model_dir, tmp_path):
    profile = finetune_profile(tmp_path, tiny_model_dir, load_in_4bit=True)
    with pytest.raises(RuntimeError, match="load_in_4bit.*CUDA"):
        quantization_config(profile.finetune, "cpu")
    both = finetune_profile(tmp_path, tiny_model_dir, load_in_4bit=True, load_in_8bit=True)
    with pytest.raises(ValueError, match="exclusive"):
        quantization_config(both.finetune, "cpu")
    assert quantization_config(finetune_profile(tmp_path, tiny_model_dir).finetune, "cpu") is None


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

    settings = dict(sft={"max_steps": 4, "save_steps": 2, "per_device_train_batch_size": 2}, global_batch_size=2)
    profile = finetune_profile(tmp_path / "a", tiny_model_dir, make_rows(24), **settings)
    with pytest.raises(Interrupted):
        run_finetune(profile, callbacks=[StopAfter(3).callback])
    stage = profile.run_dir("03_finetune")
    assert (stage / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    assert read_manifest(stage) is None and not (stage / "adapter").exists()

    resumed = run_finetune(profile)
    assert resumed["resumed_from_checkpoint"] == "checkpoint-2"
    assert resumed["steps"] == 4
    assert [h["step"] for h in resumed["train_loss_history"]] == [1, 2, 3, 4]  # steps 1-2 from the checkpoint
    assert resumed["tokens_seen_this_session"] < resumed["tokens_seen"]

    # the same run without the interruption ends with the same adapter
    straight_profile = finetune_profile(tmp_path / "b", tiny_model_dir, make_rows(24), **settings)
    straight = run_finetune(straight_profile)
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
    (ckpt / RUN_KEY).write_text(json.dumps({"params": 1}))
    assert prepare_checkpoint_dir(ckpt, {"params": 1}) == ckpt / "checkpoint-2"
    assert not (ckpt / "checkpoint-4").exists()
    assert prepare_checkpoint_dir(ckpt, {"params": 2}) is None
    assert not (ckpt / "checkpoint-2").exists()


def test_resume_never_starts_again_from_step_zero(tmp_path):
    ckpt = tmp_path / "checkpoints"
    (ckpt / "checkpoint-2").mkdir(parents=True)
    (ckpt / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (ckpt / RUN_KEY).write_text(json.dumps({"params": 1}))
    assert prepare_checkpoint_dir(ckpt, {"params": 1}, "never") is None
    assert not (ckpt / "checkpoint-2").exists()


# ---------------------------------------------------------------- packing keeps examples apart
def _stage_trainer(model_dir, tokenizer, rows, tmp_path, attn, **finetune):
    """The stage's trainer (prepare_trainer: SFTTrainer + LoRA + batch plan) on `rows`, in eval mode."""
    from transformers import AutoModelForCausalLM

    profile = finetune_profile(tmp_path, model_dir, **finetune)
    args = build_sft_config(profile.finetune, tmp_path / "ckpt", 0, "cpu", torch.float32)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.set_attn_implementation(attn)
    dataset = records_dataset(to_prompt_completion(rows, tokenizer.eos_token))
    trainer, plan, isolation = prepare_trainer(model, tokenizer, dataset, profile.finetune, args, [50] * len(rows))
    trainer.model.eval()  # no LoRA dropout: both layouts must see the same function
    return trainer, isolation


def _loss_by_example(trainer, batch) -> tuple[float, dict]:
    """The trainer's own loss on a collated batch, and each example's completion loss keyed by its
    tokens (from the model called as compute_loss calls it: the batch's keys, no KV cache)."""
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
        all_logits = trainer.model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
    out = {}
    for row in range(batch["input_ids"].shape[0]):
        ids, labels, logits = batch["input_ids"][row], batch["labels"][row], all_logits[row]
        if "position_ids" in batch:  # padding-free: examples start where the positions restart
            starts = (batch["position_ids"][row] == 0).nonzero().flatten().tolist() + [len(ids)]
            lengths = [b - a for a, b in zip(starts, starts[1:])]
        else:
            lengths = [int(batch["attention_mask"][row].sum())]
        losses = segment_losses(logits, labels, lengths)
        start = 0
        for n, value in zip(lengths, losses):
            out[tuple(ids[start : start + n].tolist())] = value
            start += n
    return float(loss), out


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("unit", ["tokens", "examples"])
def test_packed_and_unpacked_training_give_the_same_per_example_loss(tiny_model_dir, tokenizer, tmp_path, attn, unit):
    """The same 10 examples through the stage's packed path (bfd rows of cutoff_len for batch_unit
    tokens; one padding-free row of the micro-batch's examples for batch_unit examples) and its
    unpacked path (padded batch): each example's loss and the trainer's batch loss agree."""
    rows = make_rows(10)
    packed_trainer, isolation = _stage_trainer(
        tiny_model_dir,
        tokenizer,
        rows,
        tmp_path / "p",
        attn,
        packing="bfd",
        cutoff_len=160,
        batch_unit=unit,
        sft={"per_device_train_batch_size": 10 if unit == "examples" else 1},
        global_batch_size=10 if unit == "examples" else 5,
    )
    unpacked_trainer, _ = _stage_trainer(tiny_model_dir, tokenizer, rows, tmp_path / "u", attn)
    packed_rows = list(packed_trainer.train_dataset)
    if unit == "tokens":
        assert max(len(r["seq_lengths"]) for r in packed_rows) >= 3  # really several examples per row
    else:
        assert packed_trainer.data_collator(packed_rows)["input_ids"].shape[0] == 1  # all 10 in one row
    packed_loss, packed = _loss_by_example(packed_trainer, packed_trainer.data_collator(packed_rows))
    unpacked_loss, alone = _loss_by_example(
        unpacked_trainer, unpacked_trainer.data_collator(list(unpacked_trainer.train_dataset))
    )
    assert packed.keys() == alone.keys() and len(packed) == 10
    for key in packed:
        assert packed[key] == pytest.approx(alone[key], rel=1e-5)
    assert packed_loss == pytest.approx(unpacked_loss, rel=1e-5)  # token mean over the same completion tokens
    assert isolation["checked"] and isolation["attn_implementation"] == attn
    assert isolation["max_rel_diff"] < 1e-5


def test_isolation_check_refuses_rows_whose_attention_crosses_examples(tiny_model_dir, tokenizer, tmp_path):
    """A collator that gives packed rows a plain attention mask (no restarting positions) lets each
    example attend to the ones before it: the check must catch it."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    trainer, _ = _stage_trainer(
        tiny_model_dir,
        tokenizer,
        make_rows(10),
        tmp_path,
        "sdpa",
        packing="bfd",
        cutoff_len=160,
        batch_unit="tokens",
        sft={"per_device_train_batch_size": 1},
        global_batch_size=5,
    )
    trainer.data_collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=False)
    with pytest.raises(RuntimeError, match="cross example boundaries.*attn_implementation='sdpa'"):
        check_packing_isolation(trainer)


def test_segment_losses_shift_inside_each_segment():
    logits = torch.zeros(5, 3)
    logits[0, 1] = logits[1, 2] = logits[3, 2] = 10.0  # predicts 1 after position 0, 2 after 1 and 3
    labels = torch.tensor([-100, 1, 0, -100, 2])
    first, second = segment_losses(logits, labels, [2, 3])
    assert first == pytest.approx(0.0, abs=1e-3) and second == pytest.approx(0.0, abs=1e-3)
    # as one segment, position 1 would predict position 2's label (0) across the boundary: wrong
    (whole,) = segment_losses(logits, labels, [5])
    assert whole == pytest.approx(10.0 / 3, rel=1e-3)


# ---------------------------------------------------------------- speed options
def test_packing_schema():
    from pydantic import ValidationError

    from platypus_utils.config import FinetuneConfig

    assert FinetuneConfig(packing=True).packing == "bfd"
    assert FinetuneConfig(packing=False).packing is False
    assert FinetuneConfig(packing="bfd_split", batch_unit="tokens").packing == "bfd_split"
    with pytest.raises(ValidationError, match="attention cross example boundaries"):
        FinetuneConfig(packing="wrapped")
    with pytest.raises(ValidationError, match="group_by_length"):
        FinetuneConfig(packing="bfd", group_by_length=True)
    with pytest.raises(ValidationError, match="needs accelerate_config"):
        FinetuneConfig(num_gpus=2)


def test_a_trl_option_the_project_never_names_reaches_the_trainer(tiny_model_dir, tokenizer, tmp_path):
    """finetune.sft goes to SFTConfig whole: weight_decay (no project key of its own) and max_grad_norm
    reach the arguments of the stage's trainer and its optimizer; the project's own options stand beside them."""
    trainer, _ = _stage_trainer(
        tiny_model_dir, tokenizer, make_rows(8), tmp_path, "sdpa", sft={"weight_decay": 0.1, "max_grad_norm": 0.5}
    )
    assert (trainer.args.weight_decay, trainer.args.max_grad_norm) == (0.1, 0.5)
    assert (trainer.args.output_dir, trainer.args.max_length) == (str(tmp_path / "ckpt"), 128)
    decays = {group["weight_decay"] for group in trainer.create_optimizer().param_groups if group["params"]}
    assert 0.1 in decays  # the LoRA weights decay as the profile says (biases and norms: 0)
    lora = build_lora_config(finetune_profile(tmp_path, tiny_model_dir, lora={"r": 4, "use_rslora": True}).finetune)
    assert (lora.r, lora.lora_alpha, lora.use_rslora, lora.task_type) == (4, 16, True, "CAUSAL_LM")


def test_the_sft_options_the_stage_sets_are_the_ones_a_profile_may_not(tiny_model_dir, tmp_path):
    """training_options.SFT_PROJECT_KEYS (refused under finetune.sft) names every SFTConfig option the
    stage sets, and only those (gradient_checkpointing: refused for its transformers 5 name)."""
    from platypus_utils.training_options import SFT_PROJECT_KEYS

    ft = finetune_profile(tmp_path, tiny_model_dir, global_batch_size=None).finetune
    set_here = project_sft_options(ft, tmp_path, 0, "cpu", torch.float32, False, 1)
    assert set(set_here) == set(SFT_PROJECT_KEYS) - {"gradient_checkpointing"}


def test_speed_options_reach_the_trainer_arguments(tiny_model_dir, tmp_path):
    import importlib.util

    def ft_for(**finetune):
        return finetune_profile(tmp_path, tiny_model_dir, **finetune).finetune

    def args_for(**finetune):
        ft = ft_for(**finetune)
        return ft, build_sft_config(ft, tmp_path / "ckpt", 0, "cpu", torch.float32)

    _, packed = args_for(
        packing="bfd_split",
        batch_unit="tokens",
        sft={"activation_checkpointing": True, "per_device_train_batch_size": 1},
    )
    assert (packed.packing, packed.packing_strategy, packed.activation_checkpointing) == (True, "bfd_split", True)
    assert packed.eval_packing is False  # held-out loss is measured per example
    _, free = args_for(packing="bfd", sft={"per_device_train_batch_size": 4}, global_batch_size=8)
    assert (free.padding_free, free.packing, free.gradient_accumulation_steps) == (True, False, 2)
    with pytest.raises(ValueError, match="bfd_split"):
        ft_for(packing="bfd_split")  # splitting examples has no place in steps counted in examples
    _, grouped = args_for(group_by_length=True, sft={"per_device_train_batch_size": 4})
    assert grouped.train_sampling_strategy == "group_by_length" and grouped.packing is False
    ft, plain = args_for()
    assert plain.train_sampling_strategy == "random" and plain.use_liger_kernel is False  # auto, on CPU
    assert resolve_attn_implementation(ft, "cpu", torch.float32) == "sdpa"
    liger_installed = importlib.util.find_spec("liger_kernel") is not None
    with pytest.raises(RuntimeError, match="needs a CUDA GPU" if liger_installed else "needs liger-kernel"):
        build_sft_config(ft_for(use_liger_kernel=True), tmp_path / "ckpt", 0, "cpu", torch.float32)
    assert resolve_liger(ft_for(use_liger_kernel=False), "cpu") is False
    with pytest.raises(RuntimeError, match="flash_attention_2 needs a CUDA GPU"):
        resolve_attn_implementation(ft_for(attn_implementation="flash_attention_2"), "cpu", torch.bfloat16)
    assert resolve_attn_implementation(ft_for(attn_implementation="eager"), "cpu", torch.float32) == "eager"


def test_plan_batch_in_tokens_is_an_explicit_opt_in():
    from platypus_utils.config import FinetuneConfig

    paper = FinetuneConfig(sft={"per_device_train_batch_size": 1}, global_batch_size=16)
    examples = [100] * 32
    unpacked = plan_batch(examples, paper)
    assert (unpacked.gradient_accumulation_steps, unpacked.tokens_per_step, unpacked.steps_per_epoch) == (16, 1600, 2)
    assert unpacked.tokens_per_step_target is None and unpacked.examples_per_step == 16

    # batch_unit tokens: 32 examples of 100 tokens packed into 8 rows of 400: 4 rows a step keep 16 examples' tokens
    in_tokens = FinetuneConfig(sft={"per_device_train_batch_size": 1}, packing="bfd", batch_unit="tokens")
    packed = plan_batch(examples, in_tokens, row_tokens=[400] * 8)
    assert packed.tokens_per_step_target == 1600
    assert (packed.gradient_accumulation_steps, packed.tokens_per_step, packed.examples_per_step) == (4, 1600, 16)
    assert packed.steps_per_epoch == unpacked.steps_per_epoch == 2  # the schedule keeps its length

    # 8 GPUs with rows of 400 tokens: one row per GPU is 3200 tokens, twice the 1600 target: refused, saying why
    seventy = FinetuneConfig(
        sft={"per_device_train_batch_size": 1},
        global_batch_size=16,
        num_gpus=8,
        accelerate_config="a.yaml",
        packing="bfd",
        batch_unit="tokens",
    )
    with pytest.raises(ValueError, match="cannot be met.*100% off"):
        plan_batch(examples, seventy, world_size=8, row_tokens=[400] * 9)

    # an explicit step size in tokens
    explicit = FinetuneConfig(
        sft={"per_device_train_batch_size": 2}, tokens_per_step=3200, packing="bfd", batch_unit="tokens"
    )
    assert plan_batch(examples, explicit, row_tokens=[400] * 8).gradient_accumulation_steps == 4
    with pytest.raises(ValueError, match="no training examples"):
        plan_batch([], paper)
    with pytest.raises(ValueError, match="batch_unit: tokens"):
        FinetuneConfig(tokens_per_step=3200)  # tokens_per_step without batch_unit tokens


@pytest.mark.parametrize("name", ["platypus2-13b", "platypus2-70b", "colab-a100"])
@pytest.mark.parametrize("processes", [1, 2, 8])
def test_paper_profiles_take_exactly_16_examples_per_step(name, processes):
    """The paper's global batch of 16 examples, whatever the number of processes (1, 2 or 8)."""
    from platypus_utils.config import load_profile

    profile = load_profile(
        ROOT / "params" / f"{name}.yaml",
        {"finetune.num_gpus": processes, "finetune.accelerate_config": "accelerate/ddp.yaml"},
    )
    ft = profile.finetune
    assert ft.batch_unit == "examples" and ft.global_batch_size == 16
    gas, per_step = ft.examples_step_plan(processes)
    assert per_step == 16 == ft.sft["per_device_train_batch_size"] * gas * processes
    lengths = list(range(50, 50 + 24926))  # Open-Platypus' row count
    plan = plan_batch(lengths, ft, world_size=processes)
    assert plan.examples_per_step == 16 and plan.gradient_accumulation_steps == gas
    assert plan.steps_per_epoch == -(-24926 // 16)  # the paper's ~1558 steps: 100 warm-up steps are 6.4%
    args = build_sft_config(ft, "/tmp/unused", 0, "cpu", torch.float32, use_liger_kernel=False, world_size=processes)
    assert args.gradient_accumulation_steps == gas  # set before the trainer (and a DeepSpeed config) reads it
    assert args.padding_free and not args.packing and args.max_length is None  # one padding-free row per micro-batch


def test_a_step_far_from_global_batch_fails_at_load():
    from platypus_utils.config import FinetuneConfig

    with pytest.raises(ValueError, match="global_batch_size=16 cannot be met.*per_device_train_batch_size=3"):
        FinetuneConfig(
            global_batch_size=16, sft={"per_device_train_batch_size": 3}, num_gpus=4, accelerate_config="a.yaml"
        )
    two = FinetuneConfig(global_batch_size=16, sft={"per_device_train_batch_size": 2})
    assert two.examples_step_plan(8) == (1, 16)
    with pytest.raises(ValueError, match="closest step is 32"):
        two.examples_step_plan(16)


def test_speed_tables_show_the_run_and_its_batch_plan():
    metrics = {
        "device": "cpu",
        "tokens_per_s": 107.5,
        "peak_rss_mb": 2785.4,
        "eval_loss_after": 1.5,
        "batch_plan": {"unit": "packed row", "gradient_accumulation_steps": 5},
    }
    speed, plan = speed_tables(metrics)
    assert speed["run"].to_dict() == {"device": "cpu", "tokens_per_s": 107.5, "peak_rss_mb": 2785.4}
    assert plan["batch plan"].to_dict() == metrics["batch_plan"]


# ---------------------------------------------------------------- the steps the notebook tells
def test_steps_show_the_example_and_plan_the_trainer_applies(tiny_model_dir, tmp_path):
    """The notebook's first steps, before any model: the tokenized example (prompt masked) is what
    TRL prepares, and the batch plan previewed from the lengths is the one the trainer applies
    (batch_unit tokens: TRL's own packing of the same lengths)."""
    rows = make_rows(28)
    rows[0]["output"] = "The answer is 1. " + " ".join(str(i) for i in range(60))  # truncated at 128
    profile = finetune_profile(
        tmp_path,
        tiny_model_dir,
        rows,
        packing=True,
        sft={"per_device_train_batch_size": 1, "max_steps": 1},
        global_batch_size=6,
        batch_unit="tokens",
    )
    data = load_data(profile)
    assert data.skipped_frame().loc["train", "rows"] == len(data.train_idx) == 24
    assert list(data.frame().query("split == 'held out'").index) == [data.row_lines[i] for i in data.eval_idx]
    plan = expected_plan(data, profile.finetune)
    setup = load_model(profile, data)
    session = build_trainer(profile, data, setup)
    assert session.plan == plan and plan.unit == "packed row" and plan.units < len(data.train_idx)
    for e, i in zip(session.prepared_eval, data.eval_idx):
        assert tokenize_example(data.tokenizer, data.records[i], profile.finetune.cutoff_len) == e
    frame = example_frame(data.tokenizer, session.prepared_eval[0])
    i = data.eval_idx[0]
    assert (~frame["in_loss"]).sum() == data.prompt_len[i] and frame["in_loss"].iloc[-1]
    assert frame["token_id"].iloc[-1] == data.tokenizer.eos_token_id
    assert "".join(frame["token"]) == data.records[i]["prompt"] + data.records[i]["completion"]
    table = plan_table(plan, profile.finetune)["batch plan"]
    assert table["optimizer steps"] == 1 and table["warm-up share"] == 0


def test_loss_curve_draws_on_a_given_ax_and_reads_back(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    history = [{"step": 1, "loss": 2.0, "learning_rate": 1e-3}, {"step": 2, "loss": 1.5, "learning_rate": 5e-4}]
    rows = log_rows(history, 2.2, 1.4, 2)
    fig, ax = plt.subplots()
    assert plot_loss_curve(rows, "t", ax=ax) is fig and len(ax.lines) == 2
    plt.close(fig)
    assert list(tmp_path.iterdir()) == []
    path = tmp_path / "log.csv"
    path.write_text(csv_text(rows))
    back = read_log_rows(path)
    assert [(r["step"], r["split"], r["loss"]) for r in back] == [(r["step"], r["split"], r["loss"]) for r in rows]
    assert "before training (2.2000) and after (1.4000)" in loss_curve_caption(rows, "t")
    live = LiveLossCurve("t")  # outside a Jupyter kernel it draws nothing

    class State:
        is_world_process_zero, log_history, global_step = True, history, 2

    live.on_log(None, State(), None)
    assert live.figure is None and live.handle is None


def test_whole_run_train_loss_weights_the_resumed_steps():
    history = [{"step": 2, "loss": 3.0}, {"step": 4, "loss": 1.0}, {"step": 6, "loss": 9.0}]
    # resumed at step 4: steps 1-4 from the log (mean 2.0 over 4 steps), 2 steps this session at 0.5
    assert whole_run_train_loss(history, 0.5, 6, 4) == pytest.approx((2.0 * 4 + 0.5 * 2) / 6)
    assert whole_run_train_loss(history, 0.5, 6, 0) == 0.5
