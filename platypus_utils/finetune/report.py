"""What stage 03 reports: the log rows, the whole-run training loss, the recipe, speed tables and the
loss curve (nothing here writes files)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import pandas as pd
import torch
from IPython import get_ipython
from IPython.display import display
from matplotlib.ticker import MaxNLocator
from peft import LoraConfig
from transformers import TrainerCallback
from trl import SFTConfig

from ..artifacts import peak_rss_mb
from ..plotting import new_figure

SPEED_KEYS = tuple(
    """device dtype attn_implementation packing gradient_checkpointing steps tokens_seen tokens_per_s peak_rss_mb
    peak_gpu_mem_mb resumed_from_checkpoint""".split()
)
LOG_COLUMNS = tuple(
    "step epoch split loss learning_rate grad_norm mean_token_accuracy entropy num_input_tokens_seen".split()
)


# SFTConfig fields shown whatever their value: the precision, the step and the loss's recipe
RECIPE_ALWAYS = tuple(
    """bf16 fp16 use_cpu per_device_train_batch_size gradient_accumulation_steps learning_rate completion_only_loss
    packing padding_free max_length""".split()
)
# paths, placeholders, and fields TRL resolves after init (their declared default is a stand-in)
RECIPE_HIDDEN = tuple(
    """output_dir logging_dir hub_token eos_token pad_token accelerator_config debug disable_tqdm report_to
    pad_to_multiple_of""".split()
)


def recipe_frame(sft_config, lora_config, loss_normalization: str) -> pd.DataFrame:
    """The recipe as the libraries hold it (library, setting, value, default, as text): SFTConfig fields
    that differ from TRL's defaults or are in RECIPE_ALWAYS, LoraConfig's adapter fields, loss_normalization."""
    ours = sft_config.to_dict()
    # TRL's defaults as declared (making an SFTConfig here would reset accelerate's state mid-run)
    theirs = {
        f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
        for f in dataclasses.fields(SFTConfig)
        if f.init and not (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    }
    theirs = {k: getattr(v, "value", v) for k, v in theirs.items()}  # enums as to_dict writes them
    rows = [
        ("trl.SFTConfig", key, ours[key], theirs.get(key))
        for key in sorted(ours)
        if key not in RECIPE_HIDDEN and (ours[key] != theirs.get(key) or key in RECIPE_ALWAYS)
    ]
    default = LoraConfig()
    for key in ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "task_type", "use_rslora", "use_dora"):
        value = getattr(lora_config, key)
        value = sorted(value) if isinstance(value, (set, list)) else value
        rows.append(("peft.LoraConfig", key, value, getattr(default, key)))
    rows.append(("PlatypusSFTTrainer", "loss_normalization", loss_normalization, "tokens (TRL's loss)"))
    return pd.DataFrame(
        [(lib, key, str(value), str(default)) for lib, key, value, default in rows],
        columns=["library", "setting", "value", "default"],
    )


def speed_tables(metrics: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(speed and memory, batch plan) of a finished run's metrics, as one-column DataFrames."""
    speed = {k: metrics[k] for k in SPEED_KEYS if k in metrics}
    return pd.Series(speed, name="run").to_frame(), pd.Series(metrics["batch_plan"], name="batch plan").to_frame()


def heldout_table(metrics: dict) -> pd.DataFrame:
    """The held-out completion loss before and after training, and the change."""
    loss = [metrics[f"eval_loss_{k}"] for k in ("before", "after", "delta")]
    tokens = [metrics["eval_tokens"], metrics["eval_tokens"], None]
    return pd.DataFrame({"held-out completion loss": loss, "tokens": tokens}, index=["before", "after", "change"])


def whole_run_train_loss(
    log_history: Sequence[dict], session_loss: float, final_step: int, resumed_from_step: int = 0
) -> float:
    """Mean training loss per optimizer step over the whole run, across a resume: the steps before it
    from the logged losses, each weighted by its span (unlogged steps just before the checkpoint left out)."""
    session_steps = final_step - resumed_from_step
    if resumed_from_step <= 0 or session_steps < 0:
        return session_loss
    total, steps, last = session_loss * session_steps, session_steps, 0
    for entry in log_history:
        step = int(entry.get("step", 0))
        if "loss" in entry and last < step <= resumed_from_step:
            total += float(entry["loss"]) * (step - last)
            steps += step - last
            last = step
    return total / steps if steps else session_loss


def log_rows(
    log_history: Sequence[dict], eval_before: Optional[float], eval_after: Optional[float], final_step: int
) -> list[dict]:
    """One row per logged training step plus the held-out points (step 0 and the last, when known)."""
    rows = [] if eval_before is None else [{"step": 0, "epoch": 0.0, "split": "eval", "loss": eval_before}]
    for entry in log_history:
        if "loss" in entry:
            rows.append({"split": "train", **{k: entry.get(k) for k in LOG_COLUMNS if k != "split"}})
    if eval_after is not None:
        rows.append({"step": final_step, "epoch": None, "split": "eval", "loss": eval_after})
    return rows


def csv_text(rows: Sequence[dict]) -> str:
    """log rows as log_history.csv holds them (LOG_COLUMNS, empty cells for missing values)."""
    return pd.DataFrame(list(rows), columns=list(LOG_COLUMNS), dtype=object).to_csv(index=False, lineterminator="\n")


def read_log_rows(path: str | Path) -> list[dict]:
    """log_history.csv back as log rows (numbers as numbers, None for empty cells)."""
    frame = pd.read_csv(path)
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def _by_split(rows: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    return [r for r in rows if r["split"] == "train"], [r for r in rows if r["split"] == "eval"]


def plot_loss_curve(rows: Sequence[dict], title: str, ax=None):
    """Training loss per logged step and the held-out completion loss before / after; returns the figure."""
    fig, ax = new_figure(ax, (6.4, 3.8))
    train, evals = _by_split(rows)
    steps, losses = [r["step"] for r in train], [r["loss"] for r in train]
    ax.plot(steps, losses, marker="o", markersize=3, label="train loss (mean over the logging interval)")
    if evals:
        steps, losses = [r["step"] for r in evals], [r["loss"] for r in evals]
        ax.plot(
            steps, losses, linestyle="none", marker="D", markersize=7, label="held-out completion loss (before / after)"
        )
    for r, where in zip(evals, ("before", "after")):
        label, point = f"{where}: {r['loss']:.3f}", (r["step"], r["loss"])
        ax.annotate(label, point, textcoords="offset points", xytext=(0, 9), ha="center", fontsize="small")
    ax.margins(x=0.06, y=0.15)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="optimizer step", ylabel="token cross-entropy (completion tokens)", title=title)
    ax.legend(loc="best", frameon=True, fontsize="small")
    return fig


def loss_curve_caption(rows: Sequence[dict], title: str) -> str:
    """The caption saved beside the loss-curve figure, with the numbers it shows."""
    train, evals = _by_split(rows)
    return (
        f"{title}. Training loss per logged step ({len(train)} points) and the held-out completion "
        f"loss before training ({evals[0]['loss']:.4f}) and after ({evals[-1]['loss']:.4f})."
    )


class LiveLossCurve(TrainerCallback):
    """Draws the training loss in place at every logging step, in a Jupyter kernel on the main process."""

    def __init__(self, title: str):
        self.title, self.handle, self.figure = title, None, None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or get_ipython() is None:
            return
        self.figure = plot_loss_curve(log_rows(state.log_history, None, None, state.global_step), self.title)
        if self.handle is None:
            self.handle = display(self.figure, display_id=True)
        else:
            self.handle.update(self.figure)


def peak_memory() -> dict[str, float]:
    """Peak resident memory of this process (MB) and, on a GPU, peak allocated GPU memory (MB)."""
    out = {"peak_rss_mb": peak_rss_mb()}
    if torch.cuda.is_available():
        out["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out
