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
`checkpoints` (resume), `report` (log rows, losses, tables, the loss curve), `stage`. Import each name
from the module that defines it (`from platypus_utils.finetune.stage import run_finetune`).

Speed and scale: bfd packing (padding-free; `check_packing_isolation` shows on the model about to
train that attention stays inside each example), the optimizer step kept at the profile's batch
(`plan_batch`: batch_unit examples, the default, or tokens), flash-attention and Liger kernels
where installed, gradient checkpointing; several GPUs through `accelerate launch`
(`accelerate_command`, accelerate/*.yaml; `python -m platypus_utils.finetune PROFILE --set K=V`).

`force` (the runner's --force) permits nothing more here: 03 trains whenever it runs (an
interrupted run resumes from matching checkpoints unless finetune.resume: never); the runner uses
--force to relaunch a multi-GPU training that is up to date.
"""
