"""Stage 04_merge: fold LoRA adapters into full models, combine adapters and models, check every result.

Variants (each a full model in runs/<profile>/04_merge/<variant>/, listed in merge_report.json for
stage 05; names and order from `layout`): the 03 adapter folded into its base (peft `merge_and_unload`)
and into each partner fine-tune of that base (the paper's merge); adapter mixes (peft
`add_weighted_adapter`); full-model merges and the sweep grid (mergekit 0.1.5's methods, peft's as
peft_*; README, "Merging"). Every variant is computed in float32, rounded once to its stored dtype and
checked on its temporary copy before the rename: a merge that fails never appears at its path.

Modules (import each name from the module that defines it):
  stage       the notebook's steps and run_merge
  jobs        merge_jobs: one Job per variant, names, dtypes, sweep, reuse
  build       (build, check) steps per kind of variant
  verify      the checks, their bounds and statuses (verified, unresolvable)
  arithmetic  merge_tensor: full-model methods, chunked float32
  adapter     read_adapter: LoRA factors by hand, architecture and target checks
  io          safetensors streamed one tensor at a time, write_variant (atomic), memory figures
  memory      host memory of each merge and check; when a check streams
  mergekit    each variant's recipe as a mergekit config
  errors      MergeError, MergeVerificationError
The methods' arithmetic is checked in the tests against independent implementations
(tests/merge_oracles.py) and against mergekit's own kernels (tests/test_merge_mergekit.py).
"""
