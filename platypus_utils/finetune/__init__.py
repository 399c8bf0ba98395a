"""Stage 03: LoRA fine-tuning on the decontaminated set, with the Alpaca template (paper §4).

The recipe: prompt = Alpaca template, completion = output + EOS (appended here, exactly once:
the authors' code appended it while documenting that it did not); loss on the completion only;
LoRA r/alpha/dropout 16/16/0.05 on gate/up/down_proj; cosine schedule with warmup. TRL and peft own
those settings: finetune.sft is passed to `trl.SFTConfig` and finetune.lora to `peft.LoraConfig`
(`build_sft_config`, `build_lora_config`; checked at load by platypus_utils.training_options). Training runs
through TRL's `SFTTrainer` (prompt-completion data); a held-out split drawn with the profile seed
gives the completion loss before and after training, the evidence that training did something.

The stage as steps (`stage.py`; notebooks/03_finetune.ipynb tells them one by one):

    data = load_data(profile)                   # rows as read, skipped per reason, held-out split
    plan = expected_plan(data, ft, world_size)  # examples and tokens per optimizer step
    setup = load_model(profile, data)           # device, dtype, SFT arguments, base model
    session = build_trainer(profile, data, setup)   # LoRA, packing isolation, resume point, recipe check
    training = train(profile, session)          # held-out loss before / after
    metrics = run_metrics(profile, training)
    save(profile, training, metrics)            # adapter, metrics, log, loss curve, manifest

`run_finetune(profile)` is that composition. Modules, by concern: `data` (template, rows, tokens,
held-out split), `batching` (what a step holds), `trainer` (SFT/LoRA settings, kernels, packing
isolation, held-out loss), `objective` (how a step's loss weighs its examples:
finetune.loss_normalization, the authors' per-example mean by default), `distributed` (accelerate launch, FSDP/QLoRA loading, collective save),
`checkpoints` (resume), `report` (log rows, losses, tables, the loss curve), `stage`.

Speed and scale: bfd packing (padding-free; `check_packing_isolation` shows on the model about to
train that attention stays inside each example), the optimizer step kept at the profile's batch
(`plan_batch`: batch_unit examples, the default, or tokens), flash-attention and Liger kernels
where installed, gradient checkpointing; several GPUs through `accelerate launch`
(`accelerate_command`, accelerate/*.yaml; `python -m platypus_utils.finetune PROFILE --set K=V`).

`force` (the runner's --force) permits nothing more here: 03 trains whenever it runs (an
interrupted run resumes from matching checkpoints unless finetune.resume: never); the runner uses
--force to relaunch a multi-GPU training that is up to date.
"""

from .batching import (
    BatchPlan,
    is_padding_free,
    packed_row_tokens,
    plan_batch,
    plan_table,
    planned_steps,
    preview_row_tokens,
    truncate_tokenized,
)
from .checkpoints import (
    CHECKPOINTS,
    RUN_KEY,
    checkpoint_step,
    complete_checkpoints,
    prepare_checkpoint_dir,
    resume_point,
)
from .data import (
    IGNORE,
    PROMPT_NO_INPUT,
    PROMPT_WITH_INPUT,
    TrainingData,
    build_prompt_completion_dataset,
    check_prepared_example,
    example_frame,
    format_alpaca_prompt,
    prepare_rows,
    records_dataset,
    select_rows,
    split_heldout,
    to_prompt_completion,
    token_lengths,
    tokenize_example,
)
from .distributed import (
    ENGINES,
    accelerate_command,
    check_accelerate_config,
    distributed_result,
    engine_name,
    fsdp_settings,
    load_base_model,
    process_info,
    quantization_config,
    save_adapter_distributed,
)
from .objective import PlatypusSFTTrainer, count_examples, example_means
from .report import (
    LOG_COLUMNS,
    SPEED_KEYS,
    LiveLossCurve,
    csv_text,
    heldout_table,
    log_rows,
    loss_curve_caption,
    peak_memory,
    plot_loss_curve,
    read_log_rows,
    recipe_frame,
    speed_tables,
    whole_run_train_loss,
)
from .stage import (
    LOG_HISTORY,
    LOSS_FIGURE,
    PARTNER_ADAPTER,
    STAGE,
    UPSTREAM,
    ModelSetup,
    Session,
    Training,
    build_trainer,
    check_recipe,
    expected_plan,
    launched_run,
    load_data,
    load_model,
    loss_rows,
    loss_title,
    run_finetune,
    run_metrics,
    save,
    save_adapter,
    train,
    train_partner_adapter,
    train_seeds,
)
from .trainer import (
    HeldOutLossAtStart,
    build_lora_config,
    build_sft_config,
    check_packing_isolation,
    check_target_modules,
    completion_loss,
    fp32_twin,
    prepare_trainer,
    resolve_attn_implementation,
    resolve_liger,
    segment_losses,
)

__all__ = [
    "BatchPlan",
    "CHECKPOINTS",
    "ENGINES",
    "HeldOutLossAtStart",
    "IGNORE",
    "LOG_COLUMNS",
    "LOG_HISTORY",
    "LOSS_FIGURE",
    "LiveLossCurve",
    "ModelSetup",
    "PARTNER_ADAPTER",
    "PROMPT_NO_INPUT",
    "PROMPT_WITH_INPUT",
    "RUN_KEY",
    "SPEED_KEYS",
    "STAGE",
    "Session",
    "Training",
    "TrainingData",
    "UPSTREAM",
    "accelerate_command",
    "build_lora_config",
    "build_prompt_completion_dataset",
    "build_sft_config",
    "build_trainer",
    "check_accelerate_config",
    "check_packing_isolation",
    "check_prepared_example",
    "check_recipe",
    "check_target_modules",
    "checkpoint_step",
    "complete_checkpoints",
    "completion_loss",
    "csv_text",
    "distributed_result",
    "engine_name",
    "example_frame",
    "expected_plan",
    "format_alpaca_prompt",
    "fp32_twin",
    "fsdp_settings",
    "heldout_table",
    "is_padding_free",
    "launched_run",
    "load_base_model",
    "load_data",
    "load_model",
    "log_rows",
    "loss_curve_caption",
    "loss_rows",
    "loss_title",
    "packed_row_tokens",
    "peak_memory",
    "plan_batch",
    "plan_table",
    "planned_steps",
    "plot_loss_curve",
    "prepare_checkpoint_dir",
    "prepare_rows",
    "prepare_trainer",
    "preview_row_tokens",
    "process_info",
    "quantization_config",
    "read_log_rows",
    "records_dataset",
    "resolve_attn_implementation",
    "resolve_liger",
    "resume_point",
    "run_finetune",
    "run_metrics",
    "save",
    "save_adapter",
    "save_adapter_distributed",
    "segment_losses",
    "PlatypusSFTTrainer",
    "count_examples",
    "example_means",
    "select_rows",
    "recipe_frame",
    "speed_tables",
    "split_heldout",
    "to_prompt_completion",
    "token_lengths",
    "tokenize_example",
    "train",
    "train_partner_adapter",
    "train_seeds",
    "truncate_tokenized",
    "whole_run_train_loss",
]
