"""Stage 05_evaluate: the Open LLM Leaderboard v1 benchmarks with lm-evaluation-harness, as steps.

tasks.py (TaskSuite), models.py (what each variant is; HFLM or vLLM), stage.py (evaluate, save,
`run_evaluate`), summary.py (summaries, frames, figure), cache.py (eval cache), spread.py (several GPUs).
notebooks/05_evaluate.ipynb calls these steps.
"""
