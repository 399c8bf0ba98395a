"""Stage 03: LoRA fine-tuning on the decontaminated set, with the Alpaca template (paper §4).

prompt = Alpaca template, completion = output + EOS (appended exactly once); loss on the completion only;
finetune.sft goes to `trl.SFTConfig`, finetune.lora to `peft.LoraConfig`, training to TRL's `SFTTrainer`.
The steps (`stage.py`; notebooks/03_finetune.ipynb tells them one by one):

    data = load_data(profile)                   # rows as read, skipped per reason, held-out split
    plan = expected_plan(data, ft, world_size)  # examples and tokens per optimizer step
    fitted = fit(profile, data)                 # load_model, build_trainer, train, run_metrics
    save(profile, fitted)                       # adapter, metrics, log, loss curve, manifest

`run_finetune(profile)` is that composition. With finetune.num_gpus > 1 the runner runs
`python -m platypus_utils.finetune PROFILE` under `accelerate launch` before the notebook, which reads
the finished run back. `force` (the runner's --force) only relaunches a multi-GPU training that is up to date: 03
trains whenever it runs (an interrupted run resumes from matching checkpoints unless finetune.resume: never).
"""
