"""Stage 04_merge: fold LoRA adapters into full models, combine adapters and models, check every result.

Each variant is a full model in runs/<profile>/04_merge/<variant>/ (listed in merge_report.json), computed
in float32, rounded once to its stored dtype and checked before it is renamed into place. Modules: stage
(the notebook's steps), jobs, build, verify, arithmetic, adapter, io, memory, mergekit, errors.
"""
