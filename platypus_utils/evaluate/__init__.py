"""Stage 05_evaluate: the Open LLM Leaderboard v1 benchmarks with lm-evaluation-harness, as steps.

    check_backend(profile)                           # models.py: evaluate.backend vllm needs vllm and CUDA
    suite = prepare_tasks(profile)                   # tasks.py: TaskSuite (local task YAMLs, or the hub's)
    task_table(profile, suite)                       #   tasks, shots, limits, metric, data source
    specs, unresolved = resolve_variants(profile)    # models.py: what model each variant and reference is
    variants_table(specs, unresolved)
    evaluations = evaluate_variants(profile, suite, specs, unresolved, force=force)   # stage.py, cached
    summaries = {v: e.summary for v, e in evaluations.items() if e.ok}
    scores_frame(summaries); mmlu_subjects_frame(summaries); plot_scores(...)        # summary.py
    save(profile, suite, evaluations, timings, force=force)   # variant files, report, manifest

References (`evaluate.references`) are released models evaluated as they are, after the variants, with
the same tasks, settings and logged samples; 06_analysis compares them with the variant they are the
release of (paired) and with their published numbers (harness drift). `evaluate.backend` picks lm-eval's
model: "hf" (HFLM) or "vllm" (VLLM, prefix caching on, batch size auto; models.py).

`run_evaluate(profile, force=False)` is that composition; the runner executes notebooks/05_evaluate.ipynb,
which calls the same steps.

Settings (the leaderboard's): ARC-Challenge 25-shot acc_norm, HellaSwag 10-shot acc_norm, MMLU 5-shot
acc (mean over subjects), TruthfulQA 0-shot mc2 - per task in `profile.evaluate.tasks` ({num_fewshot,
limit}). Data: `evaluate.benchmarks_dir` is "hub" (lm-eval's built-in tasks), "demo" (small files the
project writes, in the original formats) or a folder in the original release formats (tasks.py).

Outputs per variant in <run>/05_evaluate/: `<variant>.json` (normalised summary, read by 06_analysis),
`<variant>.raw.json` (lm-eval's output per benchmark) and `<variant>.samples.jsonl` (logged samples),
plus `evaluate_report.json` (a run where every variant failed writes `evaluate_report.failed.json`
instead and fails). Caching and healing: cache.py. Failures and `force`: stage.py.

Submodules: tasks (task suite), models (variants, HFLM), cache (eval cache), summary (summaries,
frames, figure), stage (evaluation, save, run_evaluate). Their public names are imported here once
(no list repeats them), so `from platypus_utils import evaluate as ev; ev.X` works for each. A test that
replaces a function replaces it where it is called (`ev.stage.make_lm`), as with any module.
"""

from __future__ import annotations

from . import cache, models, stage, summary, tasks
from .cache import CACHE_FORMAT, EvalCache, cache_key
from .models import (
    CPU_BATCH_SIZE,
    REFERENCE,
    VARIANT,
    BackendError,
    ModelSpec,
    check_backend,
    evaluation_names,
    get_safetensors_metadata,
    hub_snapshot_id,
    lm_settings,
    make_lm,
    model_hash,
    pick_device,
    pick_dtype,
    required_stages,
    resolve_reference,
    resolve_variant,
    resolve_variants,
    split_revision,
    variants_table,
    vllm_kwargs,
    wants_parallelize,
    weights_bytes,
)
from .stage import (
    FAILED_REPORT,
    REPORT,
    SEEDS,
    STAGE,
    EvaluationError,
    VariantEvaluation,
    evaluate_variant,
    evaluate_variants,
    run_evaluate,
    run_lm_eval,
    save,
    stage_report,
)
from .summary import mmlu_subjects_frame, plot_scores, scores_frame, summarise
from .tasks import (
    BENCHMARK_ORDER,
    LEADERBOARD_METRICS,
    MMLU_CATEGORIES,
    TASK_PREFIX,
    TEMPLATE_DIR,
    TaskSuite,
    benchmarks_in,
    builtin_mmlu_subjects,
    builtin_tasks_dir,
    hub_task_suite,
    lm_eval_version,
    make_task_manager,
    prepare_tasks,
    resolve_benchmarks_dir,
    task_table,
    write_task_configs,
)
