"""Stage 03_finetune as steps that return data (listed in the package docstring), and `run_finetune`,
those steps composed. With finetune.num_gpus > 1 in one process, `fit` and `run_finetune` read the run
`accelerate launch` finished instead of training."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import transformers

from ..artifacts import StageRun, atomic_path, read_jsonl, sha256_path, timed, write_json, write_text
from ..cards import adapter_card, write_card
from ..layout import ADAPTER, CLEAN, FINETUNE, FINETUNE_METRICS, SEED_RUNS, artifact, seed_adapter
from ..models import load_tokenizer, pick_device, pick_dtype, resolve_model
from ..plotting import save_figure
from .batching import BatchPlan, is_padding_free, plan_batch, planned_steps, preview_row_tokens, warmup_share
from .checkpoints import CHECKPOINTS, resume_point
from .data import TrainingData, check_prepared_example, prepare_rows, records_dataset, select_rows, to_prompt_completion
from .distributed import distributed_result, engine_name, fsdp_settings, load_base_model, process_info
from .objective import PlatypusSFTTrainer
from .report import (
    csv_text,
    log_rows,
    loss_curve_caption,
    peak_memory,
    plot_loss_curve,
    read_log_rows,
    recipe_frame,
    whole_run_train_loss,
)
from .trainer import (
    HeldOutLossAtStart,
    build_lora_config,
    build_sft_config,
    check_target_modules,
    completion_loss,
    prepare_trainer,
    resolve_attn_implementation,
)

log = logging.getLogger("platypus")
STAGE = FINETUNE
LOG_HISTORY = "log_history.csv"
LOSS_FIGURE = "03_loss_curve"
PARTNER_ADAPTER = "partner_adapter"


def _base_tokenizer(profile) -> tuple[str, Any]:
    """(the resolved models.base, its tokenizer)."""
    resolved = resolve_model(profile.models.base, cache_dir=profile.cache_dir())
    return resolved, load_tokenizer(resolved, cache_dir=profile.cache_dir())


def load_data(profile) -> TrainingData:
    """clean.jsonl as the stage trains on it, with the base model's tokenizer."""
    ft, clean_path = profile.finetune, artifact(profile, CLEAN)
    raw, (resolved, tokenizer) = read_jsonl(clean_path), _base_tokenizer(profile)
    data = prepare_rows(raw, clean_path, tokenizer, ft.cutoff_len, ft.eval_size, profile.seed, ft.max_train_samples)
    data.base_model, data.source_sha256 = resolved, sha256_path(clean_path)
    return data


def expected_plan(data: TrainingData, ft, world_size: int = 1) -> BatchPlan:
    """The batch plan the trainer will apply, from the examples' lengths alone."""
    rows = None
    if ft.packing and not is_padding_free(ft):
        rows = preview_row_tokens(data.full_len[data.train_idx], ft.cutoff_len, ft.packing)
    return plan_batch(data.example_tokens(), ft, world_size, rows)


@dataclass
class ModelSetup:
    """The base model loaded for this process, and how it trains."""

    model: Any
    device: str
    dtype: torch.dtype
    args: Any  # trl.SFTConfig
    attn_implementation: str
    rank: int = 0
    world_size: int = 1
    timings: dict = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def load_model(profile, data: TrainingData, seed: Optional[int] = None) -> ModelSetup:
    """Seed, device, dtype, the SFT arguments (first: they set up the process group), the attention kernel
    and the base model as this process needs it. `seed`: one of finetune.seeds; None: the profile's."""
    ft, (rank, local_rank, world_size) = profile.finetune, process_info()
    seed = profile.seed if seed is None else seed
    transformers.set_seed(seed)
    device = pick_device("auto")
    if world_size > 1 and device == "cuda":
        device = f"cuda:{local_rank}"
    dtype = pick_dtype(profile.models.torch_dtype, device)
    work = profile.run_dir(STAGE) if seed == profile.seed else artifact(profile, SEED_RUNS) / str(seed)
    args = build_sft_config(ft, work / CHECKPOINTS, seed, device, dtype, world_size=world_size)
    attn_implementation = resolve_attn_implementation(ft, device, dtype)
    t0 = time.perf_counter()
    model = load_base_model(profile, data.base_model, device, dtype, ft, rank, world_size)
    model.set_attn_implementation(attn_implementation)
    check_target_modules(model, ft.lora["target_modules"])
    timings = {"load_model_s": round(time.perf_counter() - t0, 3)}
    return ModelSetup(model, device, dtype, args, attn_implementation, rank, world_size, timings)


@dataclass
class Session:
    """The trainer about to train, with what was checked and planned before any step."""

    trainer: PlatypusSFTTrainer
    plan: BatchPlan
    isolation: dict  # check_packing_isolation's report
    resume_from: Optional[Path]
    prepared_eval: list[dict]  # the held-out examples as TRL tokenized them
    planned_steps: int
    data: TrainingData
    setup: ModelSetup


def check_recipe(trainer, data: TrainingData, packing) -> list[dict]:
    """Check the recipe held in TRL's tokenized held-out (and unpacked training) examples; returns the held-out."""
    eos_id = data.tokenizer.eos_token_id
    prepared_eval = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in trainer.eval_dataset]
    checks = [(prepared_eval, data.eval_idx)] + ([] if packing else [(trainer.train_dataset, data.train_idx)])
    for prepared, idx in checks:
        if len(prepared) != len(idx):
            raise RuntimeError(
                f"{data.source}: TRL dropped {len(idx) - len(prepared)} example(s) "
                "while tokenizing; every row must be trained on or skipped and counted"
            )
        for e, i in zip(prepared, idx):
            if problem := check_prepared_example(e["input_ids"], e["labels"], eos_id, bool(data.truncated[i])):
                raise RuntimeError(f"{data.source}, row {data.row_lines[i]}, after tokenization: {problem}")
    return prepared_eval


def build_trainer(profile, data: TrainingData, setup: ModelSetup, callbacks: Optional[Sequence[Any]] = None) -> Session:
    """The stage's SFTTrainer on the model, the checkpoint to resume from, the data checked against the recipe."""
    ft = profile.finetune
    run_key = {
        "params": profile.fingerprint_params(STAGE),
        "clean_sha256": data.source_sha256,
        "base_model": data.base_model,
        "train_seed": setup.args.seed,
    }
    resume_from = resume_point(Path(setup.args.output_dir), run_key, ft.resume, setup.is_main)
    train_ds, eval_ds = data.datasets()
    trainer, plan, isolation = prepare_trainer(
        setup.model,
        data.tokenizer,
        train_ds,
        ft,
        setup.args,
        data.example_tokens(),
        setup.world_size,
        eval_ds,
        callbacks,
    )
    prepared_eval = check_recipe(trainer, data, ft.packing)
    steps = planned_steps(plan, ft)
    log.info(
        f"finetune: {len(data.train_idx)} train / {len(data.eval_idx)} held-out examples ({sum(data.skipped.values())} "
        f"skipped, {int(data.truncated[data.train_idx].sum())} truncated to {ft.cutoff_len} tokens); {steps} optimizer "
        f"steps, {plan.rule}; {setup.device}, {str(setup.dtype).replace('torch.', '')}, {setup.attn_implementation} "
        f"attention{', Liger kernels' if setup.args.use_liger_kernel else ''}"
        f"{', gradient checkpointing' if ft.sft['activation_checkpointing'] else ''}"
        f"{f'; resuming from {resume_from.name}' if resume_from else ''}"
    )
    return Session(trainer, plan, isolation, resume_from, prepared_eval, steps, data, setup)


@dataclass
class Training:
    """A finished training: the held-out loss before and after, the trainer's result and its time."""

    session: Session
    before: dict  # completion_loss: {loss, tokens}
    after: dict
    result: Any  # transformers TrainOutput
    train_wall_s: float
    timings: dict = field(default_factory=dict)


def train(profile, session: Session) -> Training:
    """Held-out completion loss, training (resuming from session.resume_from), held-out loss again (FSDP
    with rank-0 loading: the "before" loss as training starts, once the model is sharded)."""
    ft, setup, trainer = profile.finetune, session.setup, session.trainer
    pad_id, batch = session.data.tokenizer.pad_token_id, ft.sft["per_device_train_batch_size"]
    at_start = HeldOutLossAtStart(session.prepared_eval, pad_id, batch)
    timings = {}
    if (fsdp_settings(ft, setup.world_size) or {}).get("cpu_ram_efficient_loading", False):
        trainer.add_callback(at_start)  # rank 0 holds the model on CPU, the others on meta, until FSDP shards it
    else:
        with timed(timings, "eval_before_s"):
            at_start.measure(trainer.model)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(session.resume_from) if session.resume_from else None)
    train_wall = time.perf_counter() - t0
    timings["train_s"] = round(train_wall, 3)
    # a sharded engine runs only through model_wrapped, every process in step
    eval_model = trainer.model_wrapped if setup.world_size > 1 else trainer.model
    with timed(timings, "eval_after_s"):
        after = completion_loss(eval_model, session.prepared_eval, pad_id, batch)
    log.info("finetune: held-out completion loss after training %.4f", after["loss"])
    return Training(session, at_start.result, after, result, train_wall, timings)


def run_metrics(profile, training: Training) -> dict:
    """metrics.json of the run: the data, the plan, the speed and memory, the losses."""
    ft, session, data = profile.finetune, training.session, training.session.data
    setup, plan, trainer, state = session.setup, session.plan, session.trainer, session.trainer.state
    steps, wall, train, held = session.planned_steps, training.train_wall_s, data.train_idx, data.eval_idx
    session_tokens = state.num_input_tokens_seen - getattr(trainer, "_initial_num_input_tokens_seen", 0)
    session_loss = float(training.result.training_loss)
    resumed_at = int(session.resume_from.name.rsplit("-", 1)[-1]) if session.resume_from else 0
    whole_run_loss = whole_run_train_loss(state.log_history, session_loss, int(state.global_step), resumed_at)
    params = list(trainer.model.parameters())
    return {
        "base_model": profile.models.base,
        "base_model_resolved": data.base_model,
        "rows_read": data.rows_read,
        "examples_skipped": data.skipped,
        "examples_skipped_total": int(sum(data.skipped.values())),
        "examples_train": int(len(train)),
        "examples_eval": int(len(held)),
        "examples_truncated": {"train": int(data.truncated[train].sum()), "eval": int(data.truncated[held].sum())},
        "prompt_boundary_merges": int(data.boundary_merges),
        "cutoff_len": ft.cutoff_len,
        "heldout_rows": [data.row_lines[i] for i in held],  # 1-based row numbers in clean.jsonl
        "train_tokens_per_epoch": int(data.example_tokens().sum()),
        "train_completion_tokens_per_epoch": int((data.example_tokens() - data.prompt_len[train]).sum()),
        "device": setup.device,
        "dtype": str(setup.dtype).replace("torch.", ""),
        "tokens_seen": int(state.num_input_tokens_seen),
        "tokens_seen_this_session": int(session_tokens),
        "tokens_per_s": round(session_tokens / wall, 2) if wall > 0 else None,
        "train_wall_s": round(wall, 3),
        "steps": int(state.global_step),
        "steps_planned": int(steps),
        "batch_unit": ft.batch_unit,
        "examples_per_step": round(plan.examples_per_step, 2),
        "examples_per_step_counted": list(trainer.examples_per_step),
        "loss_normalization": ft.loss_normalization,
        "tokens_per_step": round(plan.tokens_per_step, 1),
        "warmup_share": warmup_share(steps, ft),
        "epochs": round(float(state.epoch or 0.0), 4),
        "resumed_from_checkpoint": session.resume_from.name if session.resume_from else None,
        "train_loss_mean": round(whole_run_loss, 6),
        "train_loss_mean_this_session": round(session_loss, 6),
        "train_loss_history": [
            {k: r[k] for k in ("step", "loss", "learning_rate")} for r in loss_rows(training) if r["split"] == "train"
        ],
        "eval_loss_before": round(training.before["loss"], 6),
        "eval_loss_after": round(training.after["loss"], 6),
        "eval_loss_delta": round(training.after["loss"] - training.before["loss"], 6),
        "eval_tokens": training.before["tokens"],
        "lora_trainable_params": int(sum(p.numel() for p in params if p.requires_grad)),
        "model_params": int(sum(p.numel() for p in params)),
        "packing": ft.packing,
        "packing_isolation": session.isolation,
        "batch_plan": plan.as_metrics(),
        "gradient_accumulation_steps": plan.gradient_accumulation_steps,
        "attn_implementation": setup.attn_implementation,
        "use_liger_kernel": bool(setup.args.use_liger_kernel),
        "gradient_checkpointing": bool(ft.sft["activation_checkpointing"]),
        "world_size": setup.world_size,
        "engine": engine_name(ft) if setup.world_size > 1 else "single",
        **peak_memory(),
    }


def loss_rows(training: Training) -> list[dict]:
    """The run's log rows (log_history.csv): logged training steps and the held-out points."""
    state = training.session.trainer.state
    return log_rows(state.log_history, training.before["loss"], training.after["loss"], state.global_step)


def loss_title(profile) -> str:
    return f"LoRA fine-tuning of {Path(profile.models.base).name}"


def _save_pretrained(out_dir: Path, *objects) -> None:
    with atomic_path(out_dir) as tmp:
        for obj in objects:
            obj.save_pretrained(tmp)


def save_adapter(profile, training: Training, adapter_dir: Optional[Path] = None) -> Path:
    """The LoRA adapter and tokenizer into 03_finetune/adapter (or `adapter_dir`). Every process of a distributed
    run joins the save (FSDP/ZeRO-3 gather the adapter) into a partial folder the main one moves into place."""
    session, adapter_dir = training.session, adapter_dir or artifact(profile, ADAPTER)
    trainer, is_main = session.trainer, session.setup.is_main
    if session.setup.world_size == 1:
        _save_pretrained(adapter_dir, trainer.model, session.data.tokenizer)
        return adapter_dir
    partial = adapter_dir.with_name(f".{adapter_dir.name}.partial")
    if is_main and partial.exists():
        shutil.rmtree(partial)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(partial))  # collective; only the main process writes
    trainer.accelerator.wait_for_everyone()
    if is_main:
        (partial / "training_args.bin").unlink(missing_ok=True)  # not part of the adapter
        with atomic_path(adapter_dir) as tmp:
            os.replace(partial, tmp)
    return adapter_dir


def save(profile, fitted: Fitted, timings: Optional[dict] = None) -> list[Path]:
    """Write adapter/, metrics.json, log_history.csv, the loss-curve figure and manifest.json, then remove
    the checkpoints; other processes only join the adapter save, and a run trained under accelerate
    launch saved its own. Returns the paths hashed into the manifest."""
    training, metrics, stage_dir = fitted.training, fitted.metrics, profile.run_dir(STAGE)
    if training is None:
        return []
    session = training.session
    timings = {**(timings or {}), **session.setup.timings, **training.timings}
    t0 = time.perf_counter()
    adapter_dir = save_adapter(profile, training)
    if not session.setup.is_main:
        return []
    recipe = recipe_frame(fitted.sft_config, fitted.lora_config, profile.finetune.loss_normalization)
    write_card(adapter_dir, adapter_card(profile, metrics, recipe))  # peft's card, filled in
    with StageRun(stage_dir, STAGE, profile.fingerprint_params(STAGE)) as run:
        run.timings.update(timings)
        run.add_input(session.data.source)
        if Path(session.data.base_model).exists():
            run.add_input(session.data.base_model)
        rows, title = fitted.rows, loss_title(profile)
        paths = [
            adapter_dir,
            write_json(artifact(profile, FINETUNE_METRICS), metrics),
            write_text(stage_dir / LOG_HISTORY, csv_text(rows)),
        ]
        paths += save_figure(
            plot_loss_curve(rows, title), profile.report_dir("figures") / LOSS_FIGURE, loss_curve_caption(rows, title)
        )
        if "skipped" not in metrics.get("partner_adapter", {"skipped": "none"}):
            paths.append(stage_dir / PARTNER_ADAPTER)
        paths += [seed_adapter(profile, int(seed)) for seed in metrics.get("seeds", {})]
        for p in paths:
            run.add_output(p)
        run.metrics.update({k: v for k, v in metrics.items() if k not in ("train_loss_history", "heldout_rows")})
        run.timings["save_s"] = round(time.perf_counter() - t0, 3)
    # a finished run's checkpoints would turn a forced re-run into a no-op
    shutil.rmtree(stage_dir / CHECKPOINTS, ignore_errors=True)
    return paths


@dataclass
class Fitted:
    """A finished training, here or under `accelerate launch`: what the notebook shows and `save` writes."""

    metrics: dict
    rows: list[dict]  # log_history.csv's rows
    sft_config: Any  # the trl.SFTConfig it trained with
    lora_config: Any  # the peft.LoraConfig of its adapter
    training: Optional[Training] = None  # None: trained under accelerate launch, which saved its artifacts


def _launched(profile) -> bool:
    """finetune.num_gpus > 1 in a single process: the training runs under `accelerate launch`."""
    return profile.finetune.num_gpus > 1 and process_info()[2] == 1


def fit(profile, data: TrainingData, callbacks: Sequence[Any] | None = None, timings: Optional[dict] = None) -> Fitted:
    """Load the model, build the trainer, train, and the partner adapter and other seeds when the profile
    asks; with finetune.num_gpus > 1 in one process, the launched run read back (RuntimeError with the
    command when none matches). `timings` collects the steps' seconds."""
    ft, timings = profile.finetune, {} if timings is None else timings
    if _launched(profile):
        metrics = distributed_result(profile)
        rows = read_log_rows(profile.run_dir(STAGE) / LOG_HISTORY)
        dtype = getattr(torch, metrics["dtype"])
        args = build_sft_config(ft, CHECKPOINTS, profile.seed, metrics["device"], dtype, world_size=ft.num_gpus)
        return Fitted(metrics, rows, args, build_lora_config(ft))
    setup = load_model(profile, data)
    with timed(timings, "build_trainer_s"):
        session = build_trainer(profile, data, setup, callbacks)
    training = train(profile, session)
    metrics = run_metrics(profile, training)
    if setup.is_main and ft.partner_adapter is not None:  # 04_merge's partner, in miniature
        with timed(timings, "partner_adapter_s"):
            metrics["partner_adapter"] = train_partner_adapter(profile, setup.world_size)
    if ft.seeds:
        with timed(timings, "seeds_s"):
            metrics["seeds"] = train_seeds(profile, data)
    lora_config = session.trainer.model.peft_config["default"]
    return Fitted(metrics, loss_rows(training), setup.args, lora_config, training)


def run_finetune(profile, callbacks: Sequence[Any] | None = None) -> dict:
    """Train a LoRA adapter on 02_decontaminate/clean.jsonl, write the stage's artifacts; return the metrics."""
    if _launched(profile):
        return distributed_result(profile)
    timings: dict = {}
    with timed(timings, "load_data_s"):
        data = load_data(profile)
    fitted = fit(profile, data, callbacks, timings)
    save(profile, fitted, timings)
    return fitted.metrics


def train_seeds(profile, data: TrainingData) -> dict[str, dict]:
    """The same training for each of finetune.seeds, adapters in 03_finetune/seeds/<seed>/; each seed's losses."""
    out = {}
    for seed in profile.finetune.seeds:
        log.info("finetune: training seed %d of finetune.seeds %s", seed, profile.finetune.seeds)
        setup = load_model(profile, data, seed=seed)
        training = train(profile, build_trainer(profile, data, setup))
        save_adapter(profile, training, seed_adapter(profile, seed))
        state = training.session.trainer.state
        out[str(seed)] = {
            "steps": int(state.global_step),
            "train_loss_mean": round(float(training.result.training_loss), 6),
            "eval_loss_before": round(training.before["loss"], 6),
            "eval_loss_after": round(training.after["loss"], 6),
            "examples_per_step_counted": list(training.session.trainer.examples_per_step),
        }
        if setup.is_main:
            shutil.rmtree(Path(setup.args.output_dir), ignore_errors=True)
    return out


def train_partner_adapter(profile, world_size: int = 1) -> dict:
    """Train finetune.partner_adapter (single-process runs only): a small LoRA on the rows whose data_source
    is in partner_adapter.data_sources, saved to 03_finetune/partner_adapter for 04's merge; its metrics."""
    if world_size > 1:
        log.warning("finetune.partner_adapter is trained in single-process runs only; skipped")
        return {"skipped": "distributed run"}
    stage_dir, (resolved, tokenizer) = profile.run_dir(STAGE), _base_tokenizer(profile)
    ft, pa, clean_path = profile.finetune, profile.finetune.partner_adapter, artifact(profile, CLEAN)
    raw, wanted = read_jsonl(clean_path), set(pa.data_sources)
    sliced = [r for r in raw if r.get("data_source") in wanted]
    if not sliced:
        found = sorted({str(r.get("data_source")) for r in raw})
        raise ValueError(
            f"{clean_path}: no row has a data_source in finetune.partner_adapter.data_sources "
            f"{sorted(wanted)}; the file has {found}"
        )
    rows, _, skipped = select_rows(sliced, f"{clean_path} (partner slice)", tokenizer.eos_token)
    # finetune.sft for a few steps (logging each, no checkpoint, warm-up at most half), then partner_adapter.sft
    steps = pa.sft.get("max_steps", ft.sft["max_steps"])
    short = {"warmup_steps": min(ft.sft["warmup_steps"], steps // 2), "save_steps": steps + 1, "logging_steps": 1}
    partner_ft = ft.model_copy(update={"sft": {**ft.sft, **short, **pa.sft}})
    transformers.set_seed(profile.seed)
    device = pick_device("auto")
    dtype, work_dir = pick_dtype(profile.models.torch_dtype, device), stage_dir / f"{PARTNER_ADAPTER}_{CHECKPOINTS}"
    t0 = time.perf_counter()
    model = load_base_model(profile, resolved, device, dtype, partner_ft)
    trainer = PlatypusSFTTrainer(
        loss_normalization=partner_ft.loss_normalization,
        model=model,
        args=build_sft_config(partner_ft, work_dir, profile.seed, device, dtype),
        train_dataset=records_dataset(to_prompt_completion(rows, tokenizer.eos_token)),
        processing_class=tokenizer,
        peft_config=build_lora_config(partner_ft),
    )
    result = trainer.train()
    out_dir = stage_dir / PARTNER_ADAPTER
    _save_pretrained(out_dir, trainer.model, tokenizer)
    shutil.rmtree(work_dir, ignore_errors=True)
    metrics = {
        "data_sources": dict(Counter(r["data_source"] for r in rows)),
        "examples": len(rows),
        "examples_skipped": skipped,
        "steps": int(trainer.state.global_step),
        "train_loss_mean": round(float(result.training_loss), 6),
        "tokens_seen": int(trainer.state.num_input_tokens_seen),
        "wall_s": round(time.perf_counter() - t0, 3),
    }
    log.info("finetune: partner adapter -> %s: %s", out_dir, metrics)
    return metrics
