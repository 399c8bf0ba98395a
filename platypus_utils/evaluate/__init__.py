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

`run_evaluate(profile, force=False)` (stage.py) is that composition; the runner executes
notebooks/05_evaluate.ipynb. The eval cache: cache.py; several GPUs: spread.py; vLLM: vllm_prefix.py.
"""
