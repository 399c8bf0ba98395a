"""Stage 06_analysis: the paper's tables and figures, scores on the clean subset, and a summary report.

Import each name from the module that defines it (no re-exports here):
  common     constants (benchmarks, labels, categories, roles) and small helpers
  frames     05's evaluations read into frames: summaries, runs with samples, leaderboard, comparisons
  paired     paired statistics per subject, category and benchmark (bootstrap, McNemar, BH)
  setups     each run's own settings in words (few-shot, limit, version) for captions and table headers
  references released models: variant vs release (paired), release vs its published numbers (unpaired)
  clean      scores on the full test set and on the items 02 did not flag (issue 14), with item counts
  seeds      the spread across training seeds (finetune.seeds)
  tables     display frames written as CSV, Markdown and LaTeX (pandas)
  figures    plot functions (optional ax, return the figure)
  captions   each figure's caption with every number it shows
  upstream   what 01-05 left: stage status, their report files, key numbers
  summary    reports/<profile>/summary.md and .html, rendered from templates/
  stage      the steps composed: `run_analysis(profile)`, `analyse(...)` (`platypus analyse`)
"""
