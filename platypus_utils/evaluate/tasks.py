"""The lm-eval task suite of stage 05: which tasks, from which data, defined by what.

`evaluate.benchmarks_dir: hub` names lm-eval's built-in tasks. Otherwise task YAMLs are written from the
templates in `lm_eval_tasks/`: each `include:`s the built-in task and swaps only the data source. Without
`hellaswag_train.jsonl`, HellaSwag's few-shot pool is the validation split minus the evaluated item.
`definition_hash` covers data files, templates, included built-in files, lm-eval's version, utils.py and
benchmarks.py: a change to any is a different eval-cache key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import string
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from .. import benchmarks
from ..artifacts import atomic_path, code_only, sha256_file, sha256_text
from ..demo_data import demo_benchmarks_dir
from ..lmeval_io import LEADERBOARD_METRICS, TASK_PREFIX, builtin_tasks_dir, mmlu_categories, mmlu_category_order

log = logging.getLogger("platypus")
TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "lm_eval_tasks"


def lm_eval_version() -> str:
    return metadata.version("lm_eval")


def benchmarks_in(profile) -> list[str]:
    """The profile's benchmarks (evaluate.tasks), in the leaderboard's order."""
    return [b for b in LEADERBOARD_METRICS if b in profile.evaluate.tasks]


@dataclass
class TaskSuite:
    """The lm-eval tasks for one stage run: names, data files and what defines them."""

    mode: str  # "hub" or "local"
    tasks_dir: Path | None  # include path (local mode)
    task_names: dict[str, str]  # benchmark -> lm-eval task or group name
    data_files: dict[str, list[Path]] = field(default_factory=dict)  # benchmark -> files read
    definition_hash: dict[str, str] = field(default_factory=dict)  # benchmark -> hash of data + task definition
    mmlu_subjects: dict[str, str] = field(default_factory=dict)  # subject -> category
    notes: dict[str, str] = field(default_factory=dict)  # benchmark -> departures from the built-in task
    root: Path | None = None  # the benchmarks folder (local mode)

    def all_files(self) -> list[Path]:
        return sorted({p for files in self.data_files.values() for p in files})


def hub_task_suite(benchmarks_: list[str], mmlu_subjects: list[str] | None = None) -> TaskSuite:
    subjects = dict(mmlu_categories())
    if mmlu_subjects:
        unknown = sorted(set(mmlu_subjects) - set(subjects))
        if unknown:
            raise ValueError(f"evaluate.mmlu_subjects: unknown MMLU subjects {unknown}")
        subjects = {s: subjects[s] for s in mmlu_subjects}
    names = {b: b for b in benchmarks_}
    if "mmlu" in names and mmlu_subjects:
        names["mmlu"] = ",".join(f"mmlu_{s}" for s in sorted(subjects))  # a subset: subject tasks, no group
    return TaskSuite(
        mode="hub",
        tasks_dir=None,
        task_names=names,
        definition_hash={b: sha256_text(f"hub:{b}:{lm_eval_version()}") for b in benchmarks_},
        mmlu_subjects=subjects if "mmlu" in benchmarks_ else {},
    )


@dataclass
class _Built:
    """What one benchmark adds to the task folder, and what defines it."""

    task: str  # the lm-eval task or group name
    files: dict[str, str]  # yaml file name -> text
    data_files: list[Path]
    templates: list[str]  # template names used
    builtins: list[Path]  # built-in lm-eval files included
    note: str | None = None
    mmlu_subjects: dict[str, str] = field(default_factory=dict)


def _path_text(value: Any) -> str:
    """json.dumps' fallback in _render: a path as its text; anything else JSON cannot hold is an error."""
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} in a task template: {value!r}")


def _render(template: str, **values: Any) -> str:
    text = (TEMPLATE_DIR / template).read_text(encoding="utf-8")  # values as JSON: valid YAML, paths exact
    return string.Template(text).substitute(
        {k: json.dumps(v, ensure_ascii=False, default=_path_text) for k, v in values.items()}
    )


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found (benchmark data folder {path.parent})")
    return path


def _single_task(
    bench: str, folder: Path, split_files: dict[str, Path], builtin: Path, extra_builtins: list[Path], **values: Any
) -> _Built:
    task = TASK_PREFIX + bench
    text = _render(f"{bench}.yaml", builtin=builtin, task=task, dataset_dir=folder, data_files=split_files, **values)
    return _Built(
        task, {f"{task}.yaml": text}, list(split_files.values()), [f"{bench}.yaml"], [builtin, *extra_builtins]
    )


def _arc_tasks(root: Path, builtin: Path, mmlu_subjects) -> _Built:
    d = root / "arc_challenge"
    split_files = {
        split: _need(d / f"ARC-Challenge-{name}.jsonl", f"ARC-Challenge {name} file")
        for split, name in (("train", "Train"), ("validation", "Dev"), ("test", "Test"))
    }
    return _single_task(
        "arc_challenge", d, split_files, builtin / "arc" / "arc_challenge.yaml", [builtin / "arc" / "arc_easy.yaml"]
    )


def _hellaswag_tasks(root: Path, builtin: Path, mmlu_subjects) -> _Built:
    d, folder = root / "hellaswag", builtin / "hellaswag"
    split_files = {"validation": _need(d / "hellaswag_val.jsonl", "HellaSwag validation file")}
    if (d / "hellaswag_train.jsonl").is_file():
        split_files["train"] = d / "hellaswag_train.jsonl"
        splits, note = ("train", "validation", None, None), None
    else:  # lm-eval drops the evaluated item from the few-shot draw only when fewshot split == test split
        splits = (None, None, "validation", "validation")
        note = (
            "few-shot pool: validation split minus the evaluated item "
            "(the built-in task draws from the train split, absent offline)"
        )
    names = ("training_split", "validation_split", "test_split", "fewshot_split")
    built = _single_task(
        "hellaswag", d, split_files, folder / "hellaswag.yaml", [folder / "utils.py"], **dict(zip(names, splits))
    )
    return replace(built, note=note)


def _truthfulqa_tasks(root: Path, builtin: Path, mmlu_subjects) -> _Built:
    d, folder = root / "truthfulqa", builtin / "truthfulqa"
    split_files = {"validation": _need(d / "mc_task.json", "TruthfulQA mc_task.json")}
    extra = [folder / "truthfulqa_mc1.yaml", folder / "utils.py"]
    return _single_task("truthfulqa_mc2", d, split_files, folder / "truthfulqa_mc2.yaml", extra)


def _mmlu_subjects_present(d: Path, selected: list[str] | None) -> dict[str, str]:
    if not (d / "test").is_dir():
        raise FileNotFoundError(f"{d / 'test'}: MMLU test folder not found")
    present = sorted(p.name[: -len("_test.csv")] for p in (d / "test").glob("*_test.csv"))
    if selected:
        missing = sorted(set(selected) - set(present))
        if missing:
            raise FileNotFoundError(f"{d / 'test'}: no test file for selected MMLU subjects {missing}")
        present = sorted(selected)
    if not present:
        raise FileNotFoundError(f"{d / 'test'}: no <subject>_test.csv files")
    unknown = sorted(set(present) - set(mmlu_categories()))
    if unknown:
        raise ValueError(f"{d / 'test'}: subjects {unknown} are not MMLU subjects known to lm-eval")
    return {s: mmlu_categories()[s] for s in present}


def _mmlu_tasks(root: Path, builtin: Path, mmlu_subjects) -> _Built:
    d, default = root / "mmlu", builtin / "mmlu" / "default"
    subjects = _mmlu_subjects_present(d, mmlu_subjects)
    templates = ["mmlu_subject.yaml", "mmlu_category.yaml", "mmlu.yaml"]
    built = _Built(
        f"{TASK_PREFIX}mmlu", {}, [], templates, [default / "_default_template_yaml"], mmlu_subjects=subjects
    )
    for subject, category in subjects.items():
        split_files = {
            "test": _need(d / "test" / f"{subject}_test.csv", f"MMLU {subject} test file"),
            "dev": _need(d / "dev" / f"{subject}_dev.csv", f"MMLU {subject} dev (few-shot) file"),
        }
        task, inc = f"{TASK_PREFIX}mmlu_{subject}", default / f"mmlu_{subject}.yaml"
        built.files[f"{task}.yaml"] = _render(
            "mmlu_subject.yaml",
            builtin=inc,
            task=task,
            subject=subject,
            dataset_dir=d,
            tag=f"{TASK_PREFIX}mmlu_{category}_tasks",
            data_files=split_files,
        )
        built.data_files += list(split_files.values())
        built.builtins.append(inc)
    categories = [c for c in mmlu_category_order() if c in subjects.values()]
    for category in categories:
        inc, group = default / f"_mmlu_{category}.yaml", f"{TASK_PREFIX}mmlu_{category}"
        built.builtins.append(inc)
        built.files[f"_{group}.yaml"] = _render("mmlu_category.yaml", builtin=inc, group=group, tag=f"{group}_tasks")
    built.builtins.append(default / "_mmlu.yaml")
    subgroups = [f"{TASK_PREFIX}mmlu_{c}" for c in categories]
    built.files[f"_{built.task}.yaml"] = _render(
        "mmlu.yaml", builtin=default / "_mmlu.yaml", group=built.task, subgroups=subgroups
    )
    return built


_BUILDERS = {
    "arc_challenge": _arc_tasks,
    "hellaswag": _hellaswag_tasks,
    "mmlu": _mmlu_tasks,
    "truthfulqa_mc2": _truthfulqa_tasks,
}


def _hash_files(files: list[Path], root: Path, extra: list[str]) -> str:
    h = hashlib.sha256()
    for p in sorted(files):
        h.update(str(p.relative_to(root)).encode() + sha256_file(p).encode())
    for text in extra:
        h.update(sha256_text(text).encode())
    return h.hexdigest()


def write_task_configs(
    benchmarks_dir: str | Path, out_dir: str | Path, benchmarks_: list[str], mmlu_subjects: list[str] | None = None
) -> TaskSuite:
    """Write lm-eval task YAMLs (+ utils.py) for local benchmark files into `out_dir`, replaced as a whole.
    A missing data file raises FileNotFoundError naming it."""
    root, out_dir, builtin = Path(benchmarks_dir).resolve(), Path(out_dir), builtin_tasks_dir()
    utils_text = (TEMPLATE_DIR / "utils.py").read_text(encoding="utf-8")
    common = [
        lm_eval_version(),
        code_only(utils_text),
        code_only(Path(benchmarks.__file__).read_text(encoding="utf-8")),
    ]
    suite = TaskSuite(mode="local", tasks_dir=out_dir, task_names={}, root=root)
    files: dict[str, str] = {}
    for bench in benchmarks_:
        if bench not in _BUILDERS:
            raise ValueError(f"unknown benchmark {bench!r}; known: {', '.join(LEADERBOARD_METRICS)}")
        built = _BUILDERS[bench](root, builtin, mmlu_subjects)
        files.update(built.files)
        suite.task_names[bench] = built.task
        suite.data_files[bench] = built.data_files
        extra = [(TEMPLATE_DIR / t).read_text(encoding="utf-8") for t in built.templates]
        extra += [b.read_text() for b in built.builtins]
        suite.definition_hash[bench] = _hash_files(built.data_files, root, common + extra)
        suite.mmlu_subjects.update(built.mmlu_subjects)
        if built.note:
            suite.notes[bench] = built.note
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        (tmp / "utils.py").write_text(utils_text, encoding="utf-8")
        for name, text in sorted(files.items()):
            (tmp / name).write_text(text, encoding="utf-8")
    log.info("wrote %d lm-eval task files for %s into %s", len(files), ", ".join(benchmarks_), out_dir)
    return suite


def prepare_tasks(profile) -> TaskSuite:
    """The task suite of the profile's benchmarks: the hub's, or YAMLs written into <run>/05_evaluate/tasks
    for a folder in the original formats ('demo': written here first)."""
    bdir, subjects = profile.evaluate.benchmarks_dir, profile.evaluate.mmlu_subjects
    if bdir == "hub":
        return hub_task_suite(benchmarks_in(profile), subjects)
    path = demo_benchmarks_dir(profile) if bdir == "demo" else Path(bdir)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: benchmark data folder not found (evaluate.benchmarks_dir)")
    return write_task_configs(path, profile.run_dir("05_evaluate") / "tasks", benchmarks_in(profile), subjects)


def _data_source(suite: TaskSuite, bench: str) -> str:
    if suite.mode == "hub":
        return "hub (lm-eval's built-in dataset)"
    files = [str(p.relative_to(suite.root)) for p in sorted(suite.data_files[bench])]
    if len(files) <= 3:
        return ", ".join(files)
    return f"{len(files)} files in {bench.split('_')[0]}/ ({len(suite.mmlu_subjects)} subjects: test + dev)"


def task_table(profile, suite: TaskSuite) -> pd.DataFrame:
    """One row per benchmark: lm-eval task, shots, limit, metric reported, data source, departures."""
    rows = [
        {
            "benchmark": bench,
            "lm_eval_task": suite.task_names[bench],
            "num_fewshot": profile.evaluate.tasks[bench].num_fewshot,
            "limit": profile.evaluate.tasks[bench].limit,
            "metric": LEADERBOARD_METRICS[bench][1],
            "data": _data_source(suite, bench),
            "note": suite.notes.get(bench, ""),
        }
        for bench in benchmarks_in(profile)
    ]
    return pd.DataFrame(rows).set_index("benchmark")


def _drop_custom_dataset_hint(record: logging.LogRecord) -> bool:
    """Drop lm-eval's per-task --metadata hint for custom_dataset loaders (57 times for MMLU)."""
    return "Custom kwargs can be passed" not in record.getMessage()


def make_task_manager(suite: TaskSuite):
    """Local tasks: only our folder is indexed (the built-in index takes ~14 s to build)."""
    from lm_eval.tasks import TaskManager  # ~4 s to import: only a cache miss needs it

    logging.getLogger("lm_eval.api.task").addFilter(_drop_custom_dataset_hint)  # a no-op once added
    if suite.mode == "local":
        return TaskManager(include_path=str(suite.tasks_dir), include_defaults=False)
    return TaskManager()
