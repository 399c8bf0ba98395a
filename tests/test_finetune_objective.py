"""Stage 03's objective (finetune.loss_normalization): a step holding a 1-token and a 100-token completion,
weighed per example (the authors') and per token (TRL's), against a hand computation; padded and
padding-free batches."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from platypus_utils.config import Profile  # noqa: E402
from platypus_utils.finetune.data import records_dataset, to_prompt_completion  # noqa: E402
from platypus_utils.finetune.objective import count_examples, example_means  # noqa: E402
from platypus_utils.finetune.stage import run_finetune  # noqa: E402
from platypus_utils.finetune.trainer import build_sft_config, prepare_trainer  # noqa: E402

from .conftest import make_rows  # noqa: E402


def test_example_means_by_hand_padded_and_padding_free():
    """Example A: one completion token of loss 2; example B: 100 tokens of loss 1 (prompt tokens carry
    a loss that must be ignored). Per example: (2 + 1) / 2 = 1.5; per token: (2 + 100) / 101."""
    a_len, b_len = 5, 110  # A: 4 prompt tokens + 1 completion; B: 10 prompt + 100 completion
    # one example a row (padded to 110): loss and mask aligned with the shifted labels
    loss = torch.full((2, b_len - 1), 7.0)
    mask = torch.zeros((2, b_len - 1), dtype=torch.bool)
    mask[0, a_len - 2] = True  # A's last token is its completion
    loss[0, a_len - 2] = 2.0
    mask[1, 9:] = True
    loss[1, 9:] = 1.0
    means = example_means(loss, mask)
    assert sorted(means.tolist()) == pytest.approx([1.0, 2.0])
    assert float(means.mean()) == pytest.approx(1.5)
    assert float((loss * mask).sum() / mask.sum()) == pytest.approx(102 / 101)

    # the same two examples flattened into one padding-free row: positions restart at 0 for B
    row_loss = torch.full((1, a_len + b_len - 1), 7.0)
    row_mask = torch.zeros((1, a_len + b_len - 1), dtype=torch.bool)
    row_mask[0, a_len - 2] = True
    row_loss[0, a_len - 2] = 2.0
    row_mask[0, a_len + 9 :] = True
    row_loss[0, a_len + 9 :] = 1.0
    # the shift that predicts B's first token from A's last is a prompt label (-100) in a real batch
    positions = torch.cat([torch.arange(a_len), torch.arange(b_len)]).unsqueeze(0)
    means = example_means(row_loss, row_mask, positions)
    assert means.tolist() == pytest.approx([2.0, 1.0])
    # read as one example (no positions), the row would be a token mean: the thing "examples" avoids
    assert example_means(row_loss, row_mask).tolist() == pytest.approx([102 / 101])


def test_count_examples_skips_an_example_without_completion_tokens():
    labels = torch.tensor([[-100, -100, 5, 6, -100, -100, -100, -100, 9]])
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 0, 1, 2]])  # three examples; the second has no label
    assert count_examples(labels, positions) == 2
    assert count_examples(labels) == 1


def _trainer(tiny_model_dir, tmp_path, normalization, padding_free):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    profile = Profile.model_validate(
        {
            "name": "t",
            "models": {"base": str(tiny_model_dir)},
            "finetune": {
                "sft": {"per_device_train_batch_size": 2, "max_steps": 1},
                "global_batch_size": 2,
                "cutoff_len": 256,
                "packing": "bfd" if padding_free else False,
                "loss_normalization": normalization,
            },
        }
    )
    short, long = make_rows(2)
    short["output"] = "7"  # one completion token (plus EOS)
    long["output"] = " ".join(["The answer is 3."] * 25)
    rows = [short, long]
    args = build_sft_config(profile.finetune, tmp_path / "ckpt", 0, "cpu", torch.float32)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    dataset = records_dataset(to_prompt_completion(rows, tokenizer.eos_token))
    trainer, _, _ = prepare_trainer(model, tokenizer, dataset, profile.finetune, args, [50, 150])
    trainer.model.eval()
    return trainer


def _hand_losses(trainer, batch) -> list[tuple[float, int]]:
    """(sum of completion-token cross-entropies, completion tokens) of each example, from the logits."""
    with torch.no_grad():
        logits = trainer.model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
    out = []
    for row in range(batch["input_ids"].shape[0]):
        if "position_ids" in batch:
            starts = (batch["position_ids"][row] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
        else:
            starts = [0, int(batch["attention_mask"][row].sum())]
        for a, b in zip(starts, starts[1:]):
            lg, lb = logits[row, a : b - 1], batch["labels"][row, a + 1 : b]
            total = torch.nn.functional.cross_entropy(lg, lb, ignore_index=-100, reduction="sum")
            out.append((float(total), int((lb != -100).sum())))
    return out


@pytest.mark.parametrize("padding_free", [False, True])
@pytest.mark.parametrize("normalization", ["examples", "tokens"])
def test_step_loss_weighs_examples_as_the_profile_says(tiny_model_dir, tmp_path, normalization, padding_free):
    """The stage's trainer on one step of a 1-token and a ~100-token completion: the loss it
    backpropagates equals the hand computation of the chosen weighting, through the trainer's own
    per-step count (`_get_num_items_in_batch`, which also counts the step's examples)."""
    trainer = _trainer(tiny_model_dir, tmp_path, normalization, padding_free)
    batch = trainer.data_collator(list(trainer.train_dataset))
    assert batch["input_ids"].shape[0] == (1 if padding_free else 2)
    hand = _hand_losses(trainer, batch)
    (short_sum, short_n), (long_sum, long_n) = sorted(hand, key=lambda x: x[1])
    assert short_n == 2 and long_n >= 100  # "7" + EOS; 25 sentences + EOS
    per_example = (short_sum / short_n + long_sum / long_n) / 2
    per_token = (short_sum + long_sum) / (short_n + long_n)
    assert abs(per_example - per_token) > 0.01  # the two weightings really differ here
    count = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
    assert trainer.examples_per_step == [2]
    with torch.no_grad():
        loss = float(trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=count))
    expected = per_example if normalization == "examples" else per_token
    assert loss == pytest.approx(expected, rel=1e-5)


def test_other_seeds_train_their_own_adapters_on_the_same_split(tiny_model_dir, tmp_path):
    """finetune.seeds: one more training per seed, same rows and held-out split, its adapter in
    03_finetune/seeds/<seed>/adapter (in the manifest), its losses in metrics["seeds"]; no checkpoints left."""
    from safetensors.torch import load_file

    from platypus_utils import layout
    from platypus_utils.artifacts import read_manifest, write_jsonl

    profile = Profile.model_validate(
        {
            "name": "t",
            "seed": 7,
            "paths": {"runs_dir": str(tmp_path / "runs"), "reports_dir": str(tmp_path / "reports")},
            "models": {"base": str(tiny_model_dir)},
            "finetune": {
                "sft": {"max_steps": 2, "per_device_train_batch_size": 4, "warmup_steps": 0, "learning_rate": 1e-2},
                "global_batch_size": 4,
                "eval_size": 4,
                "cutoff_len": 128,
                "seeds": [8],
            },
        }
    )
    write_jsonl(profile.run_dir("02_decontaminate") / "clean.jsonl", make_rows(20))
    metrics = run_finetune(profile)
    seed = metrics["seeds"]["8"]
    assert seed["steps"] == 2 and seed["examples_per_step_counted"] == [4, 4]
    # same held-out rows and, LoRA's B starting at zero, the same model before training; another after
    assert seed["eval_loss_before"] == metrics["eval_loss_before"]
    assert seed["eval_loss_after"] != metrics["eval_loss_after"]
    main = load_file(layout.artifact(profile, layout.ADAPTER) / "adapter_model.safetensors")
    other = load_file(layout.seed_adapter(profile, 8) / "adapter_model.safetensors")
    assert main.keys() == other.keys() and any(not torch.equal(main[k], other[k]) for k in main)
    from huggingface_hub import ModelCard

    card = ModelCard.load(layout.artifact(profile, layout.ADAPTER) / "README.md")  # peft's card, filled in
    assert card.data.library_name == "peft" and "platypus" in card.data.tags
    assert "weighs examples by examples" in card.text and "peft.LoraConfig" in card.text and "lora_alpha" in card.text
    outputs = read_manifest(profile.run_dir("03_finetune"))["outputs"]
    assert str(layout.seed_adapter(profile, 8).resolve()) in outputs
    assert not list(profile.run_dir("03_finetune").rglob("checkpoint-*"))
    assert layout.seed_variants(profile) == {7: "merged", 8: "merged-seed8"}  # what 04 makes of them
    with pytest.raises(ValueError, match="own seed 7"):
        Profile.model_validate({"name": "t", "seed": 7, "finetune": {"seeds": [7, 8]}})
