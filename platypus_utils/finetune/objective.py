"""Stage 03's training objective: how a step's loss weighs its examples (finetune.loss_normalization).

- "tokens": TRL's own loss, the mean over every completion token of the optimizer step.
- "examples" (the authors': micro-batch 1, accumulation 16, mid-2023 HF Trainer): the mean over the
  step's examples (all micro-batches and processes) of each example's mean completion-token loss.

An example is a row of a padded batch, or a segment of a packed row (its position ids restart at 0);
one with no completion token left is not counted.
"""

from __future__ import annotations

from typing import Optional

import torch
from trl import SFTTrainer

from .data import IGNORE


def segment_ids(shape: tuple[int, int], position_ids: Optional[torch.Tensor], device=None) -> torch.Tensor:
    """An id per token, unique per example over the batch (shape (batch, seq)); position ids restart at 0."""
    rows, width = shape
    starts = torch.zeros(shape, dtype=torch.long, device=device)
    if position_ids is not None:
        starts = (position_ids.to(device) == 0).long()
    starts[:, 0] = 1
    within = torch.cumsum(starts, dim=1) - 1
    return within + torch.arange(rows, device=device).unsqueeze(1) * width


def example_means(
    token_loss: torch.Tensor, label_mask: torch.Tensor, position_ids: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Each example's mean loss over its completion tokens, one value per example that has any; `token_loss`
    and `label_mask` (batch, seq - 1) as TRL's fused LM head returns them, `position_ids` (batch, seq) or None."""
    rows, width = label_mask.shape
    seq = width + 1 if position_ids is None or position_ids.shape[1] == width + 1 else width
    ids = segment_ids((rows, seq), position_ids, token_loss.device)[:, seq - width :]
    mask, ids, zeros = label_mask.to(token_loss.dtype), ids.reshape(-1), token_loss.new_zeros(rows * seq)
    sums = zeros.index_add(0, ids, (token_loss * mask).reshape(-1))
    counts = zeros.index_add(0, ids, mask.reshape(-1))
    has_tokens = counts > 0
    return sums[has_tokens] / counts[has_tokens]


def count_examples(labels: torch.Tensor, position_ids: Optional[torch.Tensor] = None) -> int:
    """Examples of a collated micro-batch that have at least one completion token."""
    mask = labels[:, 1:] != IGNORE
    return int(example_means(torch.zeros(mask.shape), mask, position_ids).numel())


class PlatypusSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer with the loss weighted by `loss_normalization` ("examples" or "tokens")."""

    def __init__(self, *args, loss_normalization: str = "tokens", **kwargs):
        if loss_normalization not in ("examples", "tokens"):
            raise ValueError(f"finetune.loss_normalization: {loss_normalization!r}; expected examples or tokens")
        self.loss_normalization = loss_normalization
        self.examples_per_step: list[int] = []  # examples counted in each optimizer step ("examples")
        super().__init__(*args, **kwargs)

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        """Once per optimizer step: TRL's token count, or ("examples") the step's examples on every process."""
        tokens = super()._get_num_items_in_batch(batch_samples, device)
        local = sum(count_examples(b["labels"], b.get("position_ids")) for b in batch_samples if "labels" in b)
        count = torch.tensor([local], device=device)
        if self.args.world_size > 1:
            count = self.accelerator.gather(count)
        count = count.sum()
        self.examples_per_step.append(int(count))
        if self.loss_normalization == "tokens" or tokens is None:
            return tokens  # None: the trainer divides each micro-batch's mean by the accumulation itself
        return count

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.loss_normalization == "tokens":
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs["use_cache"] = False
        outputs = model(**inputs, fused_lm_head=True)
        means = example_means(-outputs.log_probs, outputs.label_mask, inputs.get("position_ids"))
        if num_items_in_batch is None:  # evaluation, or a model without loss kwargs: this micro-batch's mean
            loss = means.sum() / max(means.numel(), 1)
        else:  # the count is over every process, and DDP/FSDP average the gradients over them
            loss = means.sum() / torch.as_tensor(num_items_in_batch).clamp(min=1) * self.accelerator.num_processes
        self._record_token_metrics(outputs, inputs)
        if return_outputs:
            with torch.no_grad():
                outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        return (loss, outputs) if return_outputs else loss

    def _record_token_metrics(self, outputs, inputs) -> None:
        """TRL's per-step metrics (entropy, mean token accuracy, tokens seen), as its compute_loss records them."""
        mode = "train" if self.model.training else "eval"
        gather = self.accelerator.gather_for_metrics
        valid = gather(outputs.label_mask.sum()).sum()
        for name, value in (("entropy", outputs.entropy), ("mean_token_accuracy", outputs.is_top1)):
            total = gather(value.detach().sum()).sum()
            self._metrics[mode][name].append((total / valid).item() if valid > 0 else 0.0)
        if mode == "train":
            if "attention_mask" in inputs:
                tokens = inputs["attention_mask"].sum()
            else:
                tokens = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
            self._total_train_tokens += gather(tokens).sum().item() // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
