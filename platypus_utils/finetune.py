"""Stage 03: LoRA fine-tuning on the decontaminated set, with the Alpaca template (paper §4).

The recipe: prompt = Alpaca template, completion = output + EOS (appended here, exactly once:
the authors' code appended it while documenting that it did not); loss on the completion
only; LoRA r/alpha/dropout 16/16/0.05 on gate/up/down_proj; cosine schedule with warmup.
Training runs through TRL's `SFTTrainer` (prompt-completion data); a held-out split drawn
with the profile seed gives the completion loss before and after training, the evidence
that training did something.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import logging
import math
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .artifacts import StageRun, atomic_path, read_jsonl, write_json, write_text

log = logging.getLogger("platypus")

STAGE = "03_finetune"
UPSTREAM = "02_decontaminate"
CHECKPOINTS = "checkpoints"
RUN_KEY = "run_key.json"  # beside the checkpoints: what they were trained on

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def format_alpaca_prompt(instruction: str, input: str = "") -> str:  # noqa: A002 - the dataset's field name
    """The Alpaca prompt the Platypus models were trained with, ending at "### Response:\\n"."""
    if input:
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


# ---------------------------------------------------------------- data
def select_rows(rows: Sequence[dict], source: str | Path = "<rows>",
                eos_token: str | None = None) -> tuple[list[dict], list[int], dict[str, int]]:
    """Keep the rows usable for training: (kept rows, their 1-based row numbers, count skipped per reason).

    A row needs a non-empty string `instruction` and `output`; `input` may be absent or empty.
    An output that contains the EOS text is skipped: the tokenizer would read it as a stop token.
    """
    kept: list[dict] = []
    kept_lines: list[int] = []
    skipped: dict[str, int] = {}
    first_bad: dict[str, int] = {}

    def skip(reason: str, lineno: int) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1
        first_bad.setdefault(reason, lineno)

    for lineno, row in enumerate(rows, 1):
        instruction, output, inp = row.get("instruction"), row.get("output"), row.get("input", "")
        if not isinstance(instruction, str) or not instruction.strip():
            skip("missing_instruction", lineno)
        elif not isinstance(output, str) or not output.strip():
            skip("missing_output", lineno)
        elif inp is not None and not isinstance(inp, str):
            skip("input_not_a_string", lineno)
        elif eos_token and eos_token in output:
            skip("output_contains_eos_text", lineno)
        else:
            kept.append(row)
            kept_lines.append(lineno)
    for reason, n in skipped.items():
        log.warning("%s: skipped %d row(s) with %s (first at row %d)", source, n, reason, first_bad[reason])
    return kept, kept_lines, skipped


def to_prompt_completion(rows: Iterable[dict], eos_token: str) -> list[dict]:
    """prompt = Alpaca template; completion = output + EOS, appended here exactly once."""
    if not eos_token:
        raise ValueError("the tokenizer has no EOS token: the completions need one to teach the model to stop")
    return [{"prompt": format_alpaca_prompt(r["instruction"], r.get("input") or ""),
             "completion": r["output"] + eos_token} for r in rows]


def build_prompt_completion_dataset(rows: Iterable[dict], eos_token: str):
    """A `datasets.Dataset` with string columns `prompt` and `completion` (see `to_prompt_completion`)."""
    from datasets import Dataset

    records = to_prompt_completion(rows, eos_token)
    return Dataset.from_dict({"prompt": [r["prompt"] for r in records],
                              "completion": [r["completion"] for r in records]})


def token_lengths(tokenizer, records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, int]:
    """(prompt tokens, prompt+completion tokens) per record, tokenized as TRL does, and the number
    of records whose prompt is not a token prefix of prompt+completion (tokens merged across the
    boundary; TRL then starts the completion where the two diverge)."""
    if not records:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), 0
    prompts = tokenizer([r["prompt"] for r in records])["input_ids"]
    full = tokenizer([r["prompt"] + r["completion"] for r in records])["input_ids"]
    prompt_len, boundary_merges = [], 0
    for p, f in zip(prompts, full):
        n = 0
        for a, b in zip(p, f):
            if a != b:
                break
            n += 1
        boundary_merges += n < len(p)
        prompt_len.append(n)
    return np.array(prompt_len, dtype=np.int64), np.array([len(f) for f in full], dtype=np.int64), boundary_merges


def split_heldout(n: int, eval_size: int, seed: int, max_train: int | None = None) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices), drawn with `seed`; both sorted (the trainer shuffles, seeded)."""
    perm = np.random.default_rng(seed).permutation(n)
    heldout = sorted(int(i) for i in perm[:eval_size])
    train = perm[eval_size:]
    if max_train is not None:
        train = train[:max_train]
    return sorted(int(i) for i in train), heldout


def check_prepared_example(input_ids: Sequence[int], labels: Sequence[int], eos_id: int, truncated: bool) -> str | None:
    """Why a tokenized example breaks the recipe, or None: labels are -100 on a prompt prefix, then
    equal the ids; an untruncated example ends with EOS, and EOS appears once in its completion."""
    if len(input_ids) != len(labels):
        return "labels and input_ids differ in length"
    start = next((i for i, lab in enumerate(labels) if lab != -100), None)
    if start is None:
        return "no completion token"
    if any(lab != tok for lab, tok in zip(labels[start:], input_ids[start:])):
        return "a completion label differs from its token (masked inside the completion?)"
    if not truncated:
        if input_ids[-1] != eos_id:
            return "does not end with EOS"
        if list(input_ids[start:]).count(eos_id) != 1:
            return "EOS appears more than once in the completion (added twice?)"
    return None


def _pad_batch(examples: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@torch.no_grad()
def completion_loss(model, examples: Sequence[dict], pad_id: int, batch_size: int = 4) -> dict[str, float]:
    """Mean token cross-entropy over the completion tokens (labels != -100) of tokenized examples
    ({input_ids, labels}); a token mean, not a mean of per-batch means."""
    was_training = model.training
    model.eval()
    device = next(p for p in model.parameters()).device
    total, count = 0.0, 0
    try:
        for start in range(0, len(examples), batch_size):
            batch = _pad_batch(examples[start:start + batch_size], pad_id)
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits
            labels = batch["labels"][:, 1:].to(device)
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.size(-1)), labels.reshape(-1),
                ignore_index=-100, reduction="sum")
            total += float(loss)
            count += int((labels != -100).sum())
    finally:
        model.train(was_training)
    return {"loss": total / count if count else float("nan"), "tokens": count}


# ---------------------------------------------------------------- model
def check_target_modules(model, target_modules: Sequence[str]) -> None:
    """Every LoRA target must name modules of the model: peft only fails when none match."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in target_modules if m not in names]
    if missing:
        linear = sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
                         if isinstance(mod, torch.nn.Linear)})
        raise ValueError(f"finetune.target_modules: {missing} not found in the base model "
                         f"({type(model).__name__}); its linear layers are {linear}")


def quantization_config(ft, device: str):
    """BitsAndBytesConfig for QLoRA, or None; a clear error where it cannot run."""
    if not (ft.load_in_4bit or ft.load_in_8bit):
        return None
    if ft.load_in_4bit and ft.load_in_8bit:
        raise ValueError("finetune.load_in_4bit and finetune.load_in_8bit are exclusive: set one")
    flag = "load_in_4bit" if ft.load_in_4bit else "load_in_8bit"
    if not (device.startswith("cuda") and torch.cuda.is_available()):
        raise RuntimeError(f"finetune.{flag} (QLoRA) needs a CUDA GPU; this run's device is {device!r}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError(f"finetune.{flag} (QLoRA) needs bitsandbytes: pip install 'platypus-utils[gpu]'")
    from transformers import BitsAndBytesConfig

    if ft.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def _load_base(profile, resolved: str, device: str, dtype: torch.dtype, ft):
    """The base model: plain, or quantized for QLoRA (loaded here: models.load_causal_lm takes no
    quantization config)."""
    qconfig = quantization_config(ft, device)
    if qconfig is None:
        from .models import load_causal_lm

        return load_causal_lm(resolved, cache_dir=profile.cache_dir(), dtype=dtype, device=device)
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolved, quantization_config=qconfig, dtype=torch.bfloat16,
                                                 device_map={"": torch.device(device).index or 0})
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=ft.gradient_checkpointing)


def build_lora_config(ft):
    """peft LoraConfig from the profile's finetune section (paper: r 16, alpha 16, dropout 0.05, MLP projections)."""
    from peft import LoraConfig

    return LoraConfig(r=ft.lora_r, lora_alpha=ft.lora_alpha, lora_dropout=ft.lora_dropout,
                      target_modules=list(ft.target_modules), bias="none", task_type="CAUSAL_LM")


def build_sft_config(ft, output_dir: str | Path, seed: int, device: str, dtype: torch.dtype):
    """TRL SFTConfig from the profile's finetune section: prompt-completion data, loss on the
    completion only, truncation at cutoff_len, checkpoints every save_steps in `output_dir`."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(output_dir),
        seed=seed, data_seed=seed,
        learning_rate=ft.learning_rate, num_train_epochs=ft.num_train_epochs, max_steps=ft.max_steps,
        per_device_train_batch_size=ft.per_device_train_batch_size,
        per_device_eval_batch_size=ft.per_device_train_batch_size,
        gradient_accumulation_steps=ft.gradient_accumulation_steps,
        warmup_steps=ft.warmup_steps, lr_scheduler_type=ft.lr_scheduler_type, weight_decay=ft.weight_decay,
        optim="adamw_torch",
        logging_steps=ft.logging_steps, logging_first_step=True,
        save_strategy="steps", save_steps=ft.save_steps, save_total_limit=2,
        eval_strategy="no", report_to="none",
        # SFTConfig defaults bf16=True and gradient checkpointing on: both are set from the profile
        # (transformers 5 renamed gradient_checkpointing to activation_checkpointing)
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, use_cpu=device == "cpu",
        activation_checkpointing=ft.gradient_checkpointing,
        max_length=ft.cutoff_len, truncation_mode="keep_start",
        # bfd packing is padding-free: transformers builds a block-diagonal mask from the position ids
        packing=ft.packing, packing_strategy="bfd", eval_packing=False,
        completion_only_loss=True,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
    )


# ---------------------------------------------------------------- checkpoints
def _complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoints that finished saving (the trainer writes trainer_state.json last), oldest first."""
    found = []
    for p in ckpt_dir.glob("checkpoint-*"):
        suffix = p.name.rsplit("-", 1)[-1]
        if p.is_dir() and suffix.isdigit() and (p / "trainer_state.json").is_file():
            found.append((int(suffix), p))
    return [p for _, p in sorted(found)]


def _prepare_checkpoint_dir(ckpt_dir: Path, run_key: dict) -> Path | None:
    """Return the checkpoint to resume from, if one was trained with the same run key; checkpoints
    from other params or data are removed (resuming them would mix two runs)."""
    key_file = ckpt_dir / RUN_KEY
    run_key = json.loads(json.dumps(run_key, sort_keys=True, default=str))  # compare as it reads back
    if ckpt_dir.is_dir():
        old_key = None
        if key_file.is_file():
            try:
                old_key = json.loads(key_file.read_text())
            except json.JSONDecodeError:
                pass
        if old_key != run_key:
            log.warning("finetune: removing checkpoints in %s (trained with other params or data)", ckpt_dir)
            shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    write_json(key_file, run_key)
    for p in ckpt_dir.glob("checkpoint-*"):
        if p.is_dir() and not (p / "trainer_state.json").is_file():
            log.warning("finetune: removing incomplete checkpoint %s", p)
            shutil.rmtree(p)
    complete = _complete_checkpoints(ckpt_dir)
    return complete[-1] if complete else None


# ---------------------------------------------------------------- reporting
LOG_COLUMNS = ("step", "epoch", "split", "loss", "learning_rate", "grad_norm", "mean_token_accuracy",
               "entropy", "num_input_tokens_seen")


def log_rows(log_history: Sequence[dict], eval_before: float, eval_after: float, final_step: int) -> list[dict]:
    """One row per logged training step plus the two held-out points; no timing fields, so the
    file is the same for the same run."""
    rows = [{"step": 0, "epoch": 0.0, "split": "eval", "loss": eval_before}]
    for entry in log_history:
        if "loss" in entry:
            rows.append({"split": "train", **{k: entry.get(k) for k in LOG_COLUMNS if k != "split"}})
    rows.append({"step": final_step, "epoch": None, "split": "eval", "loss": eval_after})
    return rows


def _csv_text(rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in LOG_COLUMNS})
    return buf.getvalue()


def plot_loss_curve(rows: Sequence[dict], stem: Path, title: str) -> list[Path]:
    from .plotting import save_figure, style

    plt, _ = style()
    train = [r for r in rows if r["split"] == "train"]
    evals = [r for r in rows if r["split"] == "eval"]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], marker="o", markersize=3,
            label="train loss (mean over the logging interval)")
    # two measurements, not a trajectory: markers only
    ax.plot([r["step"] for r in evals], [r["loss"] for r in evals], linestyle="none", marker="D", markersize=7,
            label="held-out completion loss (before / after)")
    for r, where in zip(evals, ("before", "after")):
        ax.annotate(f"{where}: {r['loss']:.3f}", (r["step"], r["loss"]), textcoords="offset points",
                    xytext=(0, 9), ha="center", fontsize="small")
    ax.margins(x=0.06, y=0.15)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("token cross-entropy (completion tokens)")
    ax.set_title(title)
    ax.legend(loc="best", frameon=True, fontsize="small")
    caption = (f"{title}. Training loss per logged step ({len(train)} points) and the held-out completion "
               f"loss before training ({evals[0]['loss']:.4f}) and after ({evals[-1]['loss']:.4f}).")
    return save_figure(fig, stem, caption)


def _peak_memory() -> dict[str, float]:
    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # KiB on Linux
    if torch.cuda.is_available():
        out["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


# ---------------------------------------------------------------- stage
def run_finetune(profile, callbacks: Sequence[Any] | None = None) -> dict:
    """Train a LoRA adapter on runs/<name>/02_decontaminate/clean.jsonl; return the metrics.

    Writes runs/<name>/03_finetune/{adapter/, metrics.json, log_history.csv, manifest.json} and
    reports/<name>/figures/03_loss_curve.{png,pdf}. An interrupted run resumes from its last
    checkpoint in 03_finetune/checkpoints/ (kept only while it matches the params and data).
    `callbacks` are extra `transformers.TrainerCallback`s (progress hooks, tests).
    """
    import transformers
    from trl import SFTTrainer

    from .models import load_tokenizer, pick_device, pick_dtype, resolve_model

    ft = profile.finetune
    stage_dir = profile.run_dir(STAGE)
    clean_path = profile.run_dir(UPSTREAM) / "clean.jsonl"
    params = profile.fingerprint_params(STAGE)

    with StageRun(stage_dir, STAGE, params) as run:
        # ---- data
        raw = read_jsonl(clean_path)
        if not raw:
            raise ValueError(f"{clean_path}: no rows to fine-tune on (is the 02_decontaminate output empty?)")
        run.add_input(clean_path)

        cache_dir = profile.cache_dir()
        resolved = resolve_model(profile.models.base, cache_dir=cache_dir)
        if Path(resolved).exists():
            run.add_input(resolved)
        tokenizer = load_tokenizer(resolved, cache_dir=cache_dir)  # pad = EOS if it has no pad: labels pad with -100

        rows, row_lines, skipped = select_rows(raw, clean_path, tokenizer.eos_token)
        records = to_prompt_completion(rows, tokenizer.eos_token)
        prompt_len, full_len, boundary_merges = token_lengths(tokenizer, records)
        # a prompt that fills cutoff_len leaves no completion token to learn from
        too_long = prompt_len >= ft.cutoff_len
        if too_long.any():
            skipped["prompt_longer_than_cutoff"] = int(too_long.sum())
            log.warning("%s: skipped %d row(s) whose prompt alone has >= cutoff_len=%d tokens",
                        clean_path, int(too_long.sum()), ft.cutoff_len)
        usable = np.flatnonzero(~too_long)
        if len(usable) <= ft.eval_size:
            raise ValueError(f"{clean_path}: {len(usable)} usable rows (of {len(raw)}); need more than "
                             f"finetune.eval_size={ft.eval_size} to hold some out and still train")
        train_pos, eval_pos = split_heldout(len(usable), ft.eval_size, profile.seed, ft.max_train_samples)
        train_idx, eval_idx = usable[train_pos], usable[eval_pos]
        truncated = full_len > ft.cutoff_len

        from datasets import Dataset

        def subset(idx: np.ndarray):
            return Dataset.from_dict({"prompt": [records[i]["prompt"] for i in idx],
                                      "completion": [records[i]["completion"] for i in idx]})

        train_ds, eval_ds = subset(train_idx), subset(eval_idx)

        # ---- model
        transformers.set_seed(profile.seed)
        device = pick_device("auto")
        dtype = pick_dtype(profile.models.torch_dtype, device)
        if ft.num_gpus > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            log.warning("finetune.num_gpus=%d but this process is not distributed: training on one device "
                        "(launch with accelerate/torchrun to use several)", ft.num_gpus)
        with run.timed("load_model"):
            model = _load_base(profile, resolved, device, dtype, ft)
        check_target_modules(model, ft.target_modules)
        lora = build_lora_config(ft)

        ckpt_dir = stage_dir / CHECKPOINTS
        run_key = {"params": params, "clean_sha256": run.inputs[str(clean_path.resolve())],
                   "base_model": resolved}
        resume_from = _prepare_checkpoint_dir(ckpt_dir, run_key)

        args = build_sft_config(ft, ckpt_dir, profile.seed, device, dtype)
        trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                             processing_class=tokenizer, peft_config=lora, callbacks=list(callbacks or []))

        # TRL tokenized the data; check the recipe held (EOS once, prompt masked) before spending compute
        eos_id = tokenizer.eos_token_id
        prepared_eval = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in trainer.eval_dataset]
        checks = [(prepared_eval, eval_idx)]
        if not ft.packing:
            checks.append((trainer.train_dataset, train_idx))
        for prepared, idx in checks:
            if len(prepared) != len(idx):
                raise RuntimeError(f"{clean_path}: TRL dropped {len(idx) - len(prepared)} example(s) "
                                   "while tokenizing; every row must be trained on or skipped and counted")
            for e, i in zip(prepared, idx):
                problem = check_prepared_example(e["input_ids"], e["labels"], eos_id, bool(truncated[i]))
                if problem:
                    raise RuntimeError(f"{clean_path}, row {row_lines[i]}, after tokenization: {problem}")

        steps_per_epoch = math.ceil(math.ceil(len(trainer.train_dataset) / ft.per_device_train_batch_size)
                                    / ft.gradient_accumulation_steps)
        planned_steps = ft.max_steps if ft.max_steps > 0 else math.ceil(steps_per_epoch * ft.num_train_epochs)
        train_tokens = int(full_len[train_idx].clip(max=ft.cutoff_len).sum())
        log.info("finetune: %d train / %d held-out examples (%d skipped, %d truncated to %d tokens), "
                 "%d tokens per epoch; %d optimizer steps of %d x %d examples; %s, %s%s",
                 len(train_idx), len(eval_idx), sum(skipped.values()), int(truncated[train_idx].sum()),
                 ft.cutoff_len, train_tokens, planned_steps, ft.per_device_train_batch_size,
                 ft.gradient_accumulation_steps, device, str(dtype).replace("torch.", ""),
                 f"; resuming from {resume_from.name}" if resume_from else "")

        # ---- train
        peft_model = trainer.model
        with run.timed("eval_before"):
            before = completion_loss(peft_model, prepared_eval, tokenizer.pad_token_id,
                                     ft.per_device_train_batch_size)
        log.info("finetune: held-out completion loss before training %.4f (%d tokens)",
                 before["loss"], before["tokens"])
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        train_wall = time.perf_counter() - t0
        run.timings["train"] = round(train_wall, 3)
        with run.timed("eval_after"):
            after = completion_loss(peft_model, prepared_eval, tokenizer.pad_token_id,
                                    ft.per_device_train_batch_size)
        log.info("finetune: held-out completion loss after training %.4f", after["loss"])

        # ---- save
        adapter_dir = stage_dir / "adapter"
        with run.timed("save"), atomic_path(adapter_dir) as tmp:
            peft_model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)

        state = trainer.state
        session_tokens = state.num_input_tokens_seen - getattr(trainer, "_initial_num_input_tokens_seen", 0)
        rows_csv = log_rows(state.log_history, before["loss"], after["loss"], state.global_step)
        n_trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        n_total = sum(p.numel() for p in peft_model.parameters())
        metrics = {
            "base_model": profile.models.base,
            "base_model_resolved": resolved,
            "device": device,
            "dtype": str(dtype).replace("torch.", ""),
            "rows_read": len(raw),
            "examples_skipped": skipped,
            "examples_skipped_total": int(sum(skipped.values())),
            "examples_train": int(len(train_idx)),
            "examples_eval": int(len(eval_idx)),
            "examples_truncated": {"train": int(truncated[train_idx].sum()), "eval": int(truncated[eval_idx].sum())},
            "prompt_boundary_merges": int(boundary_merges),
            "cutoff_len": ft.cutoff_len,
            "heldout_rows": [row_lines[i] for i in eval_idx],  # 1-based row numbers in clean.jsonl
            "train_tokens_per_epoch": train_tokens,
            "train_completion_tokens_per_epoch": int(
                (full_len[train_idx].clip(max=ft.cutoff_len) - prompt_len[train_idx]).sum()),
            "tokens_seen": int(state.num_input_tokens_seen),
            "tokens_seen_this_session": int(session_tokens),
            "tokens_per_s": round(session_tokens / train_wall, 2) if train_wall > 0 else None,
            "train_wall_s": round(train_wall, 3),
            "steps": int(state.global_step),
            "steps_planned": int(planned_steps),
            "epochs": round(float(state.epoch or 0.0), 4),
            "resumed_from_checkpoint": resume_from.name if resume_from else None,
            "train_loss_mean": round(float(result.training_loss), 6),
            "train_loss_history": [{"step": r["step"], "loss": r["loss"], "learning_rate": r["learning_rate"]}
                                   for r in rows_csv if r["split"] == "train"],
            "eval_loss_before": round(before["loss"], 6),
            "eval_loss_after": round(after["loss"], 6),
            "eval_loss_delta": round(after["loss"] - before["loss"], 6),
            "eval_tokens": before["tokens"],
            "lora_trainable_params": int(n_trainable),
            "model_params": int(n_total),
            "packing": ft.packing,
            **_peak_memory(),
        }
        metrics_path = write_json(stage_dir / "metrics.json", metrics)
        log_path = write_text(stage_dir / "log_history.csv", _csv_text(rows_csv))
        figures = plot_loss_curve(rows_csv, profile.report_dir("figures") / "03_loss_curve",
                                  f"LoRA fine-tuning of {Path(profile.models.base).name}")
        for p in (adapter_dir, metrics_path, log_path, *figures):
            run.add_output(p)
        run.metrics.update({k: v for k, v in metrics.items() if k not in ("train_loss_history", "heldout_rows")})
        # the adapter is the product; checkpoints only serve to resume an interrupted run, and a
        # finished one left behind would turn a forced re-run into a no-op
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return metrics
