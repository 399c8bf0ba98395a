"""Templates of the offline lm-eval task YAMLs (rendered by platypus_utils.evaluate.tasks.write_task_configs)
and `utils.py`, the loaders and process_docs functions copied next to the rendered YAMLs."""
