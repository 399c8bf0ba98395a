"""Stage 03: LoRA fine-tuning on the decontaminated set, with the Alpaca template (paper §4).

The recipe: prompt = Alpaca template, completion = output + EOS (appended here, exactly once:
the authors' code appended it while documenting that it did not); loss on the completion only;
LoRA r/alpha/dropout 16/16/0.05 on gate/up/down_proj; cosine schedule with warmup. finetune.sft is
passed to `trl.SFTConfig` and finetune.lora to `peft.LoraConfig` (checked at load by
platypus_utils.training_options); training runs through TRL's `SFTTrainer`. A held-out split drawn
with the profile seed gives the completion loss before and after training.

The stage as steps (`stage.py`; notebooks/03_finetune.ipynb tells them one by one):

    data = load_data(profile)                   # rows as read, skipped per reason, held-out split
    plan = expected_plan(data, ft, world_size)  # examples and tokens per optimizer step
    fitted = fit(profile, data)                 # load_model, build_trainer, train, run_metrics
    save(profile, fitted)                       # adapter, metrics, log, loss curve, manifest

`run_finetune(profile)` is that composition. Modules: `data` (template, rows, tokens, held-out
split), `batching` (what a step holds), `trainer` (SFT/LoRA settings, kernels, packing isolation,
held-out loss), `objective` (how a step's loss weighs its examples), `distributed` (accelerate
launch, FSDP/QLoRA loading, collective save), `checkpoints` (resume), `report` (log rows, tables,
the loss curve), `stage`.

Several GPUs: `accelerate launch` (`distributed.accelerate_command`, accelerate/*.yaml) runs
`python -m platypus_utils.finetune PROFILE --set K=V` once per GPU; the runner launches it before
the notebook, which reads the finished run back. `force` (the runner's --force) only relaunches a
multi-GPU training that is up to date: 03 trains whenever it runs (an interrupted run resumes from
matching checkpoints unless finetune.resume: never).
"""
