"""Stage 04_merge: fold LoRA adapters into full models, combine adapters and models, verify every result.

What it makes (each a variant: a full model in runs/<profile>/04_merge/<variant>/, listed in
`merge_report.json["models"]` with its path, for stage 05 to evaluate when named in evaluate.variants).
Variants are named by `layout` (layout.planned_variants gives them in the order they are made):

  - merge.merged_name (default "merged"; the paper's "platypus2-13b"): the 03 adapter folded into
    the base it was trained on (peft `merge_and_unload`);
  - each partner's merged_name (default "<partner>-platypus"; e.g. Stable-Platypus2-13B =
    StableBeluga-13B + the adapter): the paper's merge, the same adapter added into a *different*
    fine-tune of the same base, after checking that architecture and every target module's shape
    match. A partner given with `adapter:` is built here first (variant "<partner>": that adapter
    merged into `model`), which is how the demo gets a partner fine-tune;
  - adapter mixes (`merge.adapter_mixes`): several adapters combined by peft's `add_weighted_adapter`
    (linear, cat, ties, dare_linear, dare_ties, svd), then merged into the base;
  - full-model merges (`merge.model_merges`, and the grid `merge.sweep`, variants
    "sweep-<method>-w<w1>_<w2>[-d<density>]") over two or more fine-tunes of one base: linear, slerp,
    task_arithmetic, ties, dare_linear, dare_ties as mergekit 0.1.5 defines them (weights, normalize,
    rescale, lambda, int8_mask, its defaults), and peft_ties, peft_dare_linear, peft_dare_ties as peft
    defines them. A merge may be given as a mergekit config (platypus_utils.mergekit_yaml).

Dtype: a variant is stored in the dtype of the model it is made from, or in merge.dtype; the
arithmetic is float32 and rounded once to that dtype (a sum done in bfloat16 for a float16 base
rounds small LoRA updates away). Every variant is checked on its temporary copy before the
rename, against bounds stated per element (verify.py); a merge that fails never appears at its path.

The package, by concern (each module's docstring states its contract):
  errors      MergeError, MergeVerificationError
  arithmetic  merge_tensor (full-model methods, chunked float32), slerp, TIES top-k, DARE seeds, Options
  io          safetensors streamed one tensor at a time, write_variant (atomic, verified), memory
  adapter     read_adapter (LoRA factors by hand), LoraDelta, architecture and target checks
  reference   the methods written again without peft or mergekit, for the checks
  mergekit    each variant's recipe as a mergekit config (mergekit_config.yml)
  verify      the weight and logit checks and their bounds; a check's status (verified, unresolvable)
  memory      host memory of each merge and check, and when a check streams tensor by tensor
  build       (build, check) steps per kind of variant
  plan        plan_merges: jobs, variant names (layout), dtypes, sweep, reuse decisions
  stage       the notebook's steps and run_merge

mergekit and this stage (mergekit 0.1.5 installs beside transformers 5 / torch 2.13 and runs): the
six shared methods compute what mergekit computes, in its order of operations (bit-identical in
float32 in tests/test_merge.py, DARE with the same masks too), and every variant mergekit can make
gets a `mergekit_config.yml` that remakes it (mergekit.py). The merge is computed here rather than
by mergekit for verification: mergekit seeds the global RNG once, so a DARE mask depends on the order
its task graph runs and no independent computation can reproduce it; here each DARE draw is seeded
from (profile seed, tensor name, chunk), so the check redraws it exactly. mergekit's other methods
(della, model_stock, breadcrumbs, ...) are not offered.

Memory: full-model merges and their checks stream tensor by tensor, CHUNK entries at a time: the
peak is the largest tensor's inputs and output plus one chunk of float32 work, not a model
(measured 0.9-1.2 GB above the process's start for three 0.76 GB bf16 checkpoints). Adapter merges
hold one model, as peft does; an adapter mix a float32 copy of one. The check of an adapter merge
loads the merged and the source model whole (13B in float16: ~52 GB; 70B: ~276 GB) unless the host
has less available than that (memory.needs_streaming): then it checks the weights tensor by tensor
and skips the logit check, saying so. Peak resident memory per merge and per check is recorded in
merge_report.json; `platypus plan` estimates both before anything runs.

Status: a variant whose checks passed is "verified" only when they could have failed; when the
adapter's update is below the stored dtype's resolution (no element's update exceeds its rounding
bound, and a tenth of its effect on the logits is below the noise floor) it is "unresolvable", with
the reason (merge_report.json: `status`, `status_reason`, `status_counts`).
"""

from __future__ import annotations

from ..models import model_content_hash  # noqa: F401  (tests/test_faults.py slows it down here; io.py looks it up)
from .adapter import (
    ADAPTER_WEIGHTS,
    DenseDelta,
    LoraDelta,
    adapter_frame,
    adapter_ranks,
    adapter_summary,
    check_architecture,
    check_targets,
    read_adapter,
)
from .arithmetic import (
    CHUNK,
    MERGEKIT_METHODS,
    MODEL_METHODS,
    PEFT_METHODS,
    U32,
    Options,
    chunk_seed,
    chunks,
    merge_tensor,
    slerp_coefficients,
    top_magnitudes,
)
from .build import (
    KIND_ADAPTER,
    KIND_MIX,
    KIND_MODELS,
    METHOD,
    MIX_METHOD,
    MIXED_ADAPTER,
    adapter_merge_steps,
    adapter_mix_steps,
    check_model_merge_inputs,
    merge_adapter_into,
    model_merge_steps,
)
from .errors import MergeError, MergeVerificationError
from .io import (
    MERGE_INFO,
    ModelMergeSpec,
    SafetensorsCheckpoint,
    load_lm,
    measure_peak_rss,
    peak_rss_mb,
    proc_status_mb,
    read_merge_info,
    stored_dtype,
    write_safetensors,
    write_variant,
)
from .memory import (
    HOST_MEMORY_SHARE,
    available_host_bytes,
    checkpoint_bytes,
    host_memory_plan,
    job_host_bytes,
    needs_streaming,
)
from .plan import (
    MERGE_FORMAT,
    STAGE,
    Job,
    Plan,
    adapter_dir_for,
    existing_output,
    merge_dtype,
    needs_finetune,
    plan_merges,
    resolve_adapter,
    reusable,
    sweep_merges,
    sweep_variant_names,
)
from .reference import ReferenceMerge, reference_adapter_mix
from .stage import (
    NOT_CHECKED,
    REPORT,
    Adapter,
    Made,
    begin,
    check_rows,
    check_status,
    checks_frame,
    load_adapter,
    make_variant,
    merge_report,
    plan_frame,
    plot_checks,
    report_entry,
    report_frame,
    run_merge,
    save,
    status_counts,
    verification_frame,
)
from .verify import (
    COMPUTE_SLACK,
    LOGIT_BOUND,
    LOGIT_EFFECT_SHARE,
    MODEL_MERGE_ULPS,
    SKIPPED,
    UNRESOLVABLE,
    VERIFIED,
    VERIFY_FORMAT,
    VERIFY_PROMPTS,
    WEIGHT_BOUND,
    check_merged_logits,
    check_merged_weights,
    check_merged_weights_streamed,
    check_updated_weight,
    half_ulp,
    resolution,
    verify_merged,
    verify_model_merge,
)

__all__ = [
    "ADAPTER_WEIGHTS",
    "CHUNK",
    "COMPUTE_SLACK",
    "HOST_MEMORY_SHARE",
    "KIND_ADAPTER",
    "KIND_MIX",
    "KIND_MODELS",
    "LOGIT_BOUND",
    "LOGIT_EFFECT_SHARE",
    "MERGE_FORMAT",
    "MERGEKIT_METHODS",
    "MERGE_INFO",
    "METHOD",
    "MIXED_ADAPTER",
    "MIX_METHOD",
    "MODEL_MERGE_ULPS",
    "MODEL_METHODS",
    "NOT_CHECKED",
    "PEFT_METHODS",
    "REPORT",
    "SKIPPED",
    "STAGE",
    "U32",
    "UNRESOLVABLE",
    "VERIFIED",
    "VERIFY_FORMAT",
    "VERIFY_PROMPTS",
    "WEIGHT_BOUND",
    "Adapter",
    "DenseDelta",
    "Job",
    "LoraDelta",
    "Made",
    "MergeError",
    "MergeVerificationError",
    "ModelMergeSpec",
    "Options",
    "Plan",
    "ReferenceMerge",
    "SafetensorsCheckpoint",
    "adapter_dir_for",
    "adapter_frame",
    "adapter_merge_steps",
    "adapter_mix_steps",
    "adapter_ranks",
    "adapter_summary",
    "available_host_bytes",
    "begin",
    "check_architecture",
    "check_merged_logits",
    "check_merged_weights",
    "check_merged_weights_streamed",
    "check_model_merge_inputs",
    "check_rows",
    "check_status",
    "check_targets",
    "check_updated_weight",
    "checkpoint_bytes",
    "checks_frame",
    "chunk_seed",
    "chunks",
    "existing_output",
    "half_ulp",
    "host_memory_plan",
    "job_host_bytes",
    "load_adapter",
    "load_lm",
    "make_variant",
    "measure_peak_rss",
    "merge_adapter_into",
    "merge_dtype",
    "merge_report",
    "merge_tensor",
    "model_content_hash",
    "model_merge_steps",
    "needs_finetune",
    "needs_streaming",
    "peak_rss_mb",
    "plan_frame",
    "plan_merges",
    "plot_checks",
    "proc_status_mb",
    "read_adapter",
    "read_merge_info",
    "reference_adapter_mix",
    "report_entry",
    "report_frame",
    "resolution",
    "resolve_adapter",
    "reusable",
    "run_merge",
    "save",
    "slerp_coefficients",
    "status_counts",
    "stored_dtype",
    "sweep_merges",
    "sweep_variant_names",
    "top_magnitudes",
    "verification_frame",
    "verify_merged",
    "verify_model_merge",
    "write_safetensors",
    "write_variant",
]
