"""Stage 04_merge: fold LoRA adapters into full models, combine adapters and models, check every result.

Variants (each a full model in runs/<profile>/04_merge/<variant>/, listed in merge_report.json for
stage 05; names and order from `layout`): the 03 adapter folded into its base (peft `merge_and_unload`)
and into each partner fine-tune of that base (the paper's merge); adapter mixes (peft
`add_weighted_adapter`); full-model merges and the sweep grid (mergekit 0.1.5's methods, peft's as
peft_*; README, "Merging"). Every variant is computed in float32, rounded once to its stored dtype and
checked on its temporary copy before the rename: a merge that fails never appears at its path.

Modules: stage (the notebook's steps, run_merge), jobs (one Job per variant), build (build and check
steps per kind), verify (the checks), arithmetic (merge_tensor), adapter (read_adapter), io (streamed
safetensors, write_variant), memory (host memory), mergekit (recipes), errors.
"""
