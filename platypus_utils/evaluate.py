"""Stage 05_evaluate: the Open LLM Leaderboard v1 benchmarks with lm-evaluation-harness.

Settings (the leaderboard's): ARC-Challenge 25-shot acc_norm, HellaSwag 10-shot acc_norm,
MMLU 5-shot acc (mean over subjects), TruthfulQA 0-shot mc2 - per task in
`profile.evaluate.tasks` ({num_fewshot, limit}).

Data: `benchmarks_dir` is "hub" (lm-eval's built-in tasks, hub access needed), "demo" (small
files the project writes, in the original formats) or a folder with the benchmarks in their
original release formats (see shared/data/README.md). For a folder, task YAMLs are written at
run time into <run>/05_evaluate/tasks/ from the templates in `lm_eval_tasks/`: each includes
the installed built-in task and only swaps the data source (see lm_eval_tasks/utils.py), so
prompts, few-shot pools and metrics are the built-in ones. Known departure: HellaSwag's
few-shot pool is its train split, which the offline copy lacks; without a
`hellaswag_train.jsonl` the pool is the validation split minus the evaluated item.

Variants (`profile.evaluate.variants`): "base" - the base model; "adapter" - base + the
03_finetune LoRA adapter, unmerged (lm-eval's `peft=`); a name of a `merge.partners` entry -
that partner model (unless it has an `adapter`: then 04_merge builds it); any other name -
`models[name].path` of 04_merge's merge_report.json.

Outputs per variant in <run>/05_evaluate/: `<variant>.json` (normalised summary, read by
06_analysis), `<variant>.raw.json` (lm-eval's output per benchmark call) and
`<variant>.samples.jsonl` (logged samples), plus `evaluate_report.json`.

Caching: one lm-eval result per (model content hash, benchmark, settings, data and task
definition hash) in <cache>/eval/; a repeat run with the same key does not call lm-eval.

Failures: a variant that cannot be resolved, loaded or evaluated is logged with its error and
recorded as failed in evaluate_report.json; the other variants' results are kept. The stage
raises (non-zero) only when every variant failed, so one broken merge does not throw away
hours of evaluation of the others; the failed names are in the manifest's metrics.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import string
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import get_safetensors_metadata

from .artifacts import StageRun, atomic_path, sha256_file, sha256_path, write_json, write_jsonl
from .models import pick_device, pick_dtype

log = logging.getLogger("platypus")
STAGE = "05_evaluate"
TEMPLATE_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
TASK_PREFIX = "platypus_"

# benchmark -> (lm-eval metric key, the name we report it under)
LEADERBOARD_METRICS = {
    "arc_challenge": ("acc_norm", "acc_norm"),
    "hellaswag": ("acc_norm", "acc_norm"),
    "mmlu": ("acc", "acc"),
    "truthfulqa_mc2": ("acc", "mc2"),  # lm-eval's process_results_mc2 returns mc2 under "acc"
}
BENCHMARK_ORDER = tuple(LEADERBOARD_METRICS)
MMLU_CATEGORIES = ("stem", "other", "social_sciences", "humanities")  # the built-in group's order
# lm-eval's defaults (also the leaderboard's): python, numpy, torch and few-shot sampler seeds
SEEDS = {"random_seed": 0, "numpy_random_seed": 1234, "torch_random_seed": 1234, "fewshot_random_seed": 1234}
# "auto" batch size on CPU (lm-eval's probe is meant for GPUs). SmolLM2-135M, ARC 25-shot, 5 questions:
# 208 / 145 / 138 CPU-s at batch 1 / 4 / 8; 8 gains 5% for twice the logits memory.
CPU_BATCH_SIZE = 4
CACHE_FORMAT = 1


class EvaluationError(RuntimeError):
    """Stage-level failure (bad data folder, or every variant failed)."""


def lm_eval_version() -> str:
    return metadata.version("lm_eval")


def builtin_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent


# ---------------------------------------------------------------- task configs
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

    def subject_task(self, subject: str) -> str:
        return f"{TASK_PREFIX}mmlu_{subject}" if self.mode == "local" else f"mmlu_{subject}"

    def all_files(self) -> list[Path]:
        return sorted({p for files in self.data_files.values() for p in files})


def builtin_mmlu_subjects() -> dict[str, str]:
    """subject -> category, from the installed built-in MMLU task files."""
    import yaml

    out = {}
    for path in sorted((builtin_tasks_dir() / "mmlu" / "default").glob("mmlu_*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        out[cfg["dataset_name"]] = cfg["tag"].removeprefix("mmlu_").removesuffix("_tasks")
    return out


def _yaml_str(value: Any) -> str:
    """A value as a YAML flow scalar/collection (JSON is valid YAML; paths stay exact)."""
    return json.dumps(value, ensure_ascii=False)


def _render(template: str, **values: Any) -> str:
    text = (TEMPLATE_DIR / template).read_text(encoding="utf-8")
    return string.Template(text).substitute({k: _yaml_str(v) for k, v in values.items()})


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found (benchmark data folder {path.parent})")
    return path


def _hash_files(files: list[Path], root: Path, extra: list[str]) -> str:
    h = hashlib.sha256()
    for p in sorted(files):
        h.update(str(p.relative_to(root)).encode())
        h.update(sha256_file(p).encode())
    for text in extra:
        h.update(hashlib.sha256(text.encode()).hexdigest().encode())
    return h.hexdigest()


def resolve_benchmarks_dir(profile) -> str:
    """'hub', or the absolute path of a folder in the original formats ('demo' is written here)."""
    bdir = profile.evaluate.benchmarks_dir
    if bdir == "hub":
        return "hub"
    if bdir == "demo":
        from .demo_data import demo_benchmarks_dir

        bdir = str(demo_benchmarks_dir(profile))
    path = Path(bdir)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: benchmark data folder not found (evaluate.benchmarks_dir)")
    return str(path.resolve())


def hub_task_suite(benchmarks: list[str], mmlu_subjects: list[str] | None = None) -> TaskSuite:
    subjects = builtin_mmlu_subjects()
    if mmlu_subjects:
        unknown = sorted(set(mmlu_subjects) - set(subjects))
        if unknown:
            raise ValueError(f"evaluate.mmlu_subjects: unknown MMLU subjects {unknown}")
        subjects = {s: subjects[s] for s in mmlu_subjects}
    names = {b: b for b in benchmarks}
    if "mmlu" in names and mmlu_subjects:
        names["mmlu"] = ",".join(f"mmlu_{s}" for s in sorted(subjects))  # a subset: subject tasks, no group
    version = lm_eval_version()
    return TaskSuite(mode="hub", tasks_dir=None, task_names=names,
                     definition_hash={b: hashlib.sha256(f"hub:{b}:{version}".encode()).hexdigest() for b in benchmarks},
                     mmlu_subjects=subjects if "mmlu" in benchmarks else {})


def write_task_configs(benchmarks_dir: str | Path, out_dir: str | Path, benchmarks: list[str],
                       mmlu_subjects: list[str] | None = None) -> TaskSuite:
    """Write lm-eval task YAMLs (+ utils.py) for local benchmark files into `out_dir`.

    The folder is replaced as a whole, so no task from an earlier run (e.g. an MMLU subject no
    longer selected) lingers. A missing data file raises FileNotFoundError naming it.
    """
    root = Path(benchmarks_dir).resolve()
    out_dir = Path(out_dir)
    builtin = builtin_tasks_dir()
    version = lm_eval_version()
    utils_text = (TEMPLATE_DIR / "utils.py").read_text(encoding="utf-8")
    files: dict[str, dict[str, str]] = {}  # yaml file name -> text
    suite = TaskSuite(mode="local", tasks_dir=out_dir, task_names={})

    def definition(bench: str, templates: list[str], builtins: list[Path]) -> str:
        extra = [version, utils_text] + [(TEMPLATE_DIR / t).read_text() for t in templates]
        extra += [b.read_text() for b in builtins]
        return _hash_files(suite.data_files[bench], root, extra)

    for bench in benchmarks:
        if bench == "arc_challenge":
            d = root / "arc_challenge"
            split_files = {split: _need(d / f"ARC-Challenge-{name}.jsonl", f"ARC-Challenge {name} file")
                           for split, name in (("train", "Train"), ("validation", "Dev"), ("test", "Test"))}
            task = TASK_PREFIX + "arc_challenge"
            inc = builtin / "arc" / "arc_challenge.yaml"
            files[f"{task}.yaml"] = _render("arc_challenge.yaml", builtin=str(inc), task=task, dataset_dir=str(d),
                                            data_files={k: str(v) for k, v in split_files.items()})
            suite.data_files[bench] = list(split_files.values())
            suite.definition_hash[bench] = definition(bench, ["arc_challenge.yaml"],
                                                      [inc, builtin / "arc" / "arc_easy.yaml"])
        elif bench == "hellaswag":
            d = root / "hellaswag"
            split_files = {"validation": _need(d / "hellaswag_val.jsonl", "HellaSwag validation file")}
            if (d / "hellaswag_train.jsonl").is_file():
                split_files["train"] = d / "hellaswag_train.jsonl"
                splits = {"training_split": "train", "validation_split": "validation", "test_split": None,
                          "fewshot_split": None}
            else:
                # Evaluating "validation" as the test split makes lm-eval drop the evaluated item
                # from its own few-shot draw (it only does so when fewshot split == test split).
                splits = {"training_split": None, "validation_split": None, "test_split": "validation",
                          "fewshot_split": "validation"}
                suite.notes[bench] = ("few-shot pool: validation split minus the evaluated item "
                                      "(the built-in task draws from the train split, absent offline)")
            task = TASK_PREFIX + "hellaswag"
            inc = builtin / "hellaswag" / "hellaswag.yaml"
            files[f"{task}.yaml"] = _render("hellaswag.yaml", builtin=str(inc), task=task, dataset_dir=str(d),
                                            data_files={k: str(v) for k, v in split_files.items()}, **splits)
            suite.data_files[bench] = list(split_files.values())
            suite.definition_hash[bench] = definition(bench, ["hellaswag.yaml"],
                                                      [inc, builtin / "hellaswag" / "utils.py"])
        elif bench == "mmlu":
            d = root / "mmlu"
            if not (d / "test").is_dir():
                raise FileNotFoundError(f"{d / 'test'}: MMLU test folder not found")
            known = builtin_mmlu_subjects()
            present = sorted(p.name[: -len("_test.csv")] for p in (d / "test").glob("*_test.csv"))
            if mmlu_subjects:
                missing = sorted(set(mmlu_subjects) - set(present))
                if missing:
                    raise FileNotFoundError(f"{d / 'test'}: no test file for selected MMLU subjects {missing}")
                present = sorted(mmlu_subjects)
            if not present:
                raise FileNotFoundError(f"{d / 'test'}: no <subject>_test.csv files")
            unknown = sorted(set(present) - set(known))
            if unknown:
                raise ValueError(f"{d / 'test'}: subjects {unknown} are not MMLU subjects known to lm-eval")
            suite.data_files[bench] = []
            builtins = [builtin / "mmlu" / "default" / "_default_template_yaml"]
            for subject in present:
                split_files = {"test": _need(d / "test" / f"{subject}_test.csv", f"MMLU {subject} test file"),
                               "dev": _need(d / "dev" / f"{subject}_dev.csv", f"MMLU {subject} dev (few-shot) file")}
                category = known[subject]
                task = f"{TASK_PREFIX}mmlu_{subject}"
                inc = builtin / "mmlu" / "default" / f"mmlu_{subject}.yaml"
                builtins.append(inc)
                files[f"{task}.yaml"] = _render(
                    "mmlu_subject.yaml", builtin=str(inc), task=task, subject=subject, dataset_dir=str(d),
                    tag=f"{TASK_PREFIX}mmlu_{category}_tasks", data_files={k: str(v) for k, v in split_files.items()})
                suite.data_files[bench] += list(split_files.values())
                suite.mmlu_subjects[subject] = category
            categories = [c for c in MMLU_CATEGORIES if c in suite.mmlu_subjects.values()]
            for category in categories:
                inc = builtin / "mmlu" / "default" / f"_mmlu_{category}.yaml"
                builtins.append(inc)
                files[f"_{TASK_PREFIX}mmlu_{category}.yaml"] = _render(
                    "mmlu_category.yaml", builtin=str(inc), group=f"{TASK_PREFIX}mmlu_{category}",
                    tag=f"{TASK_PREFIX}mmlu_{category}_tasks")
            inc = builtin / "mmlu" / "default" / "_mmlu.yaml"
            builtins.append(inc)
            files[f"_{TASK_PREFIX}mmlu.yaml"] = _render(
                "mmlu.yaml", builtin=str(inc), group=f"{TASK_PREFIX}mmlu",
                subgroups=[f"{TASK_PREFIX}mmlu_{c}" for c in categories])
            task = f"{TASK_PREFIX}mmlu"
            suite.definition_hash[bench] = definition(
                bench, ["mmlu_subject.yaml", "mmlu_category.yaml", "mmlu.yaml"], builtins)
        elif bench == "truthfulqa_mc2":
            d = root / "truthfulqa"
            split_files = {"validation": _need(d / "mc_task.json", "TruthfulQA mc_task.json")}
            task = TASK_PREFIX + "truthfulqa_mc2"
            inc = builtin / "truthfulqa" / "truthfulqa_mc2.yaml"
            files[f"{task}.yaml"] = _render("truthfulqa_mc2.yaml", builtin=str(inc), task=task, dataset_dir=str(d),
                                            data_files={k: str(v) for k, v in split_files.items()})
            suite.data_files[bench] = list(split_files.values())
            suite.definition_hash[bench] = definition(
                bench, ["truthfulqa_mc2.yaml"],
                [inc, builtin / "truthfulqa" / "truthfulqa_mc1.yaml", builtin / "truthfulqa" / "utils.py"])
        else:
            raise ValueError(f"unknown benchmark {bench!r}; known: {', '.join(BENCHMARK_ORDER)}")
        suite.task_names[bench] = task

    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        (tmp / "utils.py").write_text(utils_text, encoding="utf-8")
        for name, text in sorted(files.items()):
            (tmp / name).write_text(text, encoding="utf-8")
    log.info("wrote %d lm-eval task files for %s into %s", len(files), ", ".join(benchmarks), out_dir)
    return suite


class _DropCustomDatasetHint(logging.Filter):
    """lm-eval warns, for every task with a custom_dataset loader, how to pass --metadata; our
    loaders need none, and MMLU would print it 57 times per call."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed" not in record.getMessage()


def make_task_manager(suite: TaskSuite):
    """Local tasks: only our folder is indexed (the built-in index takes ~14 s to build)."""
    from lm_eval.tasks import TaskManager

    task_log = logging.getLogger("lm_eval.api.task")
    if not any(isinstance(f, _DropCustomDatasetHint) for f in task_log.filters):
        task_log.addFilter(_DropCustomDatasetHint())

    if suite.mode == "local":
        return TaskManager(include_path=str(suite.tasks_dir), include_defaults=False)
    return TaskManager()


def prepare_tasks(profile) -> TaskSuite:
    benchmarks = [b for b in BENCHMARK_ORDER if b in profile.evaluate.tasks]
    bdir = resolve_benchmarks_dir(profile)
    if bdir == "hub":
        return hub_task_suite(benchmarks, profile.evaluate.mmlu_subjects)
    return write_task_configs(bdir, profile.run_dir(STAGE) / "tasks", benchmarks, profile.evaluate.mmlu_subjects)


# ---------------------------------------------------------------- variants
@dataclass
class ModelSpec:
    variant: str
    model: str  # what the profile or upstream stage named
    pretrained: str  # resolved: local dir or hub id
    peft: str | None = None  # adapter dir, for the unmerged "adapter" variant
    inputs: list[Path] = field(default_factory=list)  # local files/dirs read


def resolve_variant(profile, variant: str) -> ModelSpec:
    from .models import resolve_model

    cache = profile.cache_dir()
    if variant == "base":
        ref = profile.models.base
        return ModelSpec(variant, ref, resolve_model(ref, cache_dir=cache))
    if variant == "adapter":
        ref = profile.models.base
        adapter = profile.run_dir("03_finetune") / "adapter"
        if not (adapter / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{adapter}: no LoRA adapter (adapter_config.json) - has 03_finetune run?")
        return ModelSpec(variant, f"{ref} + {adapter}", resolve_model(ref, cache_dir=cache),
                         peft=str(adapter.resolve()), inputs=[adapter])
    for partner in profile.merge.partners:
        if partner.name == variant and not partner.adapter:  # one built from an adapter is made by 04_merge
            return ModelSpec(variant, partner.model, resolve_model(partner.model, cache_dir=cache))
    report = profile.run_dir("04_merge") / "merge_report.json"
    if not report.is_file():
        raise FileNotFoundError(f"{report}: merge report not found - variant {variant!r} comes from 04_merge")
    try:
        models = json.loads(report.read_text())["models"]
        path = models[variant]["path"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise KeyError(f"{report}: no models[{variant!r}].path ({type(exc).__name__}: {exc})") from None
    path = Path(path)
    if not path.is_absolute():
        path = (report.parent / path).resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: merged model {variant!r} listed in {report} does not exist")
    return ModelSpec(variant, str(path), str(path), inputs=[report])


def model_hash(spec: ModelSpec) -> str:
    """Content hash of what is evaluated: checkpoint files (+ adapter files); a hub id by name."""
    from .models import model_content_hash

    path = Path(spec.pretrained)
    base = model_content_hash(path) if path.is_dir() else "hub:" + spec.pretrained
    if spec.peft:
        return hashlib.sha256(f"{base}+peft:{sha256_path(spec.peft)}".encode()).hexdigest()
    return base


def lm_settings(profile, spec: ModelSpec | None = None) -> dict:
    """Device, dtype and batch size the models are run with; `parallelize` (spread over the GPUs)
    and the profile's extra `model_args` when set."""
    device = pick_device(profile.evaluate.device)
    dtype = str(pick_dtype(profile.models.torch_dtype, device)).removeprefix("torch.")
    batch = profile.evaluate.batch_size
    if batch == "auto" and not device.startswith("cuda"):
        batch = str(CPU_BATCH_SIZE)
    settings = {"device": device, "dtype": dtype, "batch_size": batch}
    if spec is not None and wants_parallelize(profile.evaluate.parallelize, spec, device, dtype):
        settings["parallelize"] = True
    if profile.evaluate.model_args:
        settings["model_args"] = dict(sorted(profile.evaluate.model_args.items()))
    return settings


def weights_bytes(spec: ModelSpec, dtype: str) -> int | None:
    """Bytes of the model's weights in `dtype`: from a local checkpoint's files, or the hub's
    safetensors metadata (parameter count; no download). None when neither says."""
    path = Path(spec.pretrained)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.glob("*.safetensors")) or None
    try:
        meta = get_safetensors_metadata(spec.pretrained)
    except Exception as exc:  # noqa: BLE001 - no metadata: the caller falls back to one device
        log.warning("could not read the size of %s from the hub (%s): %s", spec.pretrained, type(exc).__name__, exc)
        return None
    per = 4 if dtype == "float32" else 2
    return sum(meta.parameter_count.values()) * per


def wants_parallelize(choice, spec: ModelSpec, device: str, dtype: str) -> bool:
    """evaluate.parallelize: true/false as set; auto: on CUDA with several GPUs, when the weights
    exceed 90% of one GPU's memory (lm-eval then spreads the model with accelerate's device map)."""
    if choice != "auto":
        return bool(choice)
    if not device.startswith("cuda") or torch.cuda.device_count() < 2:
        return False
    size = weights_bytes(spec, dtype)
    return size is not None and size > 0.9 * torch.cuda.get_device_properties(0).total_memory


def make_lm(spec: ModelSpec, settings: dict):
    """lm-eval's HFLM for a variant (what `--model hf --model_args pretrained=...` builds); with
    `parallelize` the model is spread over every visible GPU (no single device)."""
    batch = settings["batch_size"]
    kwargs = {"pretrained": spec.pretrained, "dtype": settings["dtype"], "device": settings["device"],
              "batch_size": int(batch) if str(batch).isdigit() else batch}
    if settings.get("parallelize"):
        kwargs.pop("device")
        kwargs["parallelize"] = True
    if spec.peft:
        kwargs["peft"] = spec.peft
    kwargs.update(settings.get("model_args", {}))  # the profile's evaluate.model_args, last
    log.info("loading %s for lm-eval: %s", spec.variant, kwargs)
    # imported here: lm-eval's model module takes ~8 s to import (measured), and only a cache miss needs it
    from lm_eval.models.huggingface import HFLM

    return HFLM(**kwargs)


# ---------------------------------------------------------------- running and caching
def _limit(limit: float | None) -> int | float | None:
    if limit is None:
        return None
    return int(limit) if float(limit).is_integer() and limit >= 1 else float(limit)


def _jsonable(obj: Any) -> Any:
    from lm_eval.utils import handle_non_serializable

    return json.loads(json.dumps(obj, default=handle_non_serializable))


def cache_key(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


class EvalCache:
    """lm-eval results on disk: <dir>/<key>.json (results) + <key>.samples.jsonl (logged samples)."""

    def __init__(self, root: str | Path):
        self.dir = Path(root)

    def get(self, key: str) -> dict | None:
        path = self.dir / f"{key}.json"
        samples = self.dir / f"{key}.samples.jsonl"
        if not path.is_file() or not samples.is_file():
            return None
        try:
            entry = json.loads(path.read_text())
            entry["samples"] = [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines()]
        except (json.JSONDecodeError, OSError) as exc:
            log.warning("ignoring unreadable eval cache entry %s (%s)", path, exc)
            return None
        return entry if entry.get("format") == CACHE_FORMAT else None

    def put(self, key: str, fields: dict, raw: dict, samples: list[dict]) -> None:
        # samples first: an entry is complete only once its .json exists
        write_jsonl(self.dir / f"{key}.samples.jsonl", samples)
        write_json(self.dir / f"{key}.json", {"format": CACHE_FORMAT, "key": fields, "raw": raw})


def run_lm_eval(lm, task_manager, task_name: str, num_fewshot: int, limit) -> dict:
    """One lm-eval call; returns its output (samples included)."""
    import lm_eval

    tasks = task_name.split(",")
    out = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                                  task_manager=task_manager, log_samples=True, **SEEDS)
    if out is None:
        raise RuntimeError(f"lm-eval returned no results for {task_name}")
    return out


def evaluate_variant(profile, variant: str, suite: TaskSuite, task_manager=None,
                     spec: ModelSpec | None = None) -> tuple[dict, dict, list[dict], dict]:
    """Evaluate one variant on every configured benchmark (cached per benchmark).

    `task_manager`: an lm-eval TaskManager, a callable returning one, or None (made on demand).

    Returns (summary, raw per benchmark, samples, info{cached, seconds per benchmark}).
    """
    spec = spec or resolve_variant(profile, variant)
    settings = lm_settings(profile, spec)
    mhash = model_hash(spec)
    cache = EvalCache(profile.cache_dir() / "eval")
    lm = None
    raws: dict[str, dict] = {}
    samples: list[dict] = []
    info: dict[str, dict] = {"cached": {}, "seconds": {}}
    task_settings = {}
    for bench in [b for b in BENCHMARK_ORDER if b in profile.evaluate.tasks]:
        tcfg = profile.evaluate.tasks[bench]
        limit = _limit(tcfg.limit)
        fields = {"model_hash": mhash, "benchmark": bench, "task": suite.task_names[bench],
                  "num_fewshot": tcfg.num_fewshot, "limit": limit, "data_hash": suite.definition_hash[bench],
                  "lm_eval": lm_eval_version(), "seeds": SEEDS, **settings}
        key = cache_key(fields)
        task_settings[bench] = {"task": suite.task_names[bench], "num_fewshot": tcfg.num_fewshot, "limit": limit,
                                "data_hash": suite.definition_hash[bench], "cache_key": key}
        if bench in suite.notes:
            task_settings[bench]["note"] = suite.notes[bench]
        t0 = time.perf_counter()
        entry = cache.get(key)
        if entry is not None:
            log.info("%s / %s: reusing cached lm-eval result %s", variant, bench, key)
            raw, bench_samples = entry["raw"], entry["samples"]
        else:
            if lm is None:
                # built only when something is not cached (the hub index alone takes ~14 s)
                task_manager = task_manager() if callable(task_manager) else task_manager or make_task_manager(suite)
                lm = make_lm(spec, settings)
            log.info("%s / %s: lm-eval %s, %d-shot, limit %s", variant, bench, suite.task_names[bench],
                     tcfg.num_fewshot, limit)
            out = run_lm_eval(lm, task_manager, suite.task_names[bench], tcfg.num_fewshot, limit)
            by_task = out.pop("samples", {}) or {}
            raw = _jsonable(out)
            bench_samples = [_jsonable({"task": task, **s}) for task in sorted(by_task) for s in by_task[task]]
            cache.put(key, fields, raw, bench_samples)
        info["cached"][bench] = entry is not None
        info["seconds"][bench] = round(time.perf_counter() - t0, 3)
        raws[bench] = raw
        samples += [{"variant": variant, "benchmark": bench, **s} for s in bench_samples]
    settings_out = {**settings, "lm_eval": lm_eval_version(), "seeds": SEEDS,
                    "benchmarks_dir": "hub" if suite.mode == "hub" else str(profile.evaluate.benchmarks_dir),
                    "tasks": task_settings}
    summary = summarise(variant, spec.model, mhash, settings_out, raws, suite)
    return summary, raws, samples, info


# ---------------------------------------------------------------- normalised summary
def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None  # lm-eval writes "N/A" for a stderr it cannot compute
    return out if math.isfinite(out) else None


def _n(raw: dict, task: str) -> int:
    n = raw.get("n-samples", {}).get(task, {})
    return int(n.get("effective", n.get("original", 0)))


def _pooled_question_stderr(mean_acc: float, subject_sizes: list[int]) -> tuple[float | None, str | None]:
    """The MMLU standard error when some subject has none (one question: lm-eval reports N/A).
    With every subject the same size (a per-subject `limit`), the mean over subjects is the mean
    over all N questions, so lm-eval's own formula applies to it: the sample standard deviation of
    the 0/1 scores over sqrt(N), sqrt(p (1 - p) / (N - 1)). Subjects of different sizes: none."""
    n_total = sum(subject_sizes)
    if len(set(subject_sizes)) != 1 or n_total < 2:
        return None, None
    return math.sqrt(mean_acc * (1 - mean_acc) / (n_total - 1)), "pooled over questions (equal subject sizes)"


def summarise(variant: str, model: str, mhash: str, settings: dict, raws: dict[str, dict], suite: TaskSuite) -> dict:
    """lm-eval outputs -> the normalised summary 06_analysis reads (see module docstring)."""
    tasks: dict[str, dict] = {}
    subjects: dict[str, dict] = {}
    for bench, raw in raws.items():
        metric, label = LEADERBOARD_METRICS[bench]
        results = raw["results"]
        if bench == "mmlu":
            for subject, category in sorted(suite.mmlu_subjects.items()):
                task = suite.subject_task(subject)
                if task not in results:
                    continue
                r = results[task]
                subjects[subject] = {"acc": _float(r[f"{metric},none"]), "stderr": _float(r.get(f"{metric}_stderr,none")),
                                     "n": _n(raw, task), "category": category}
            if not subjects:
                raise RuntimeError(f"lm-eval output for MMLU has no subject results ({sorted(results)[:5]}...)")
            accs = [s["acc"] for s in subjects.values()]
            ses = [s["stderr"] for s in subjects.values()]
            n_total = sum(s["n"] for s in subjects.values())
            group = suite.task_names["mmlu"]
            if group in results:
                weighted = _float(results[group][f"{metric},none"])
                weighted_se = _float(results[group].get(f"{metric}_stderr,none"))
            else:  # a subject subset on the hub: lm-eval's size weighting, done here
                weighted = sum(s["acc"] * s["n"] for s in subjects.values()) / n_total
                weighted_se = None
            value = sum(accs) / len(accs)
            if all(se is not None for se in ses):
                # subjects are independent samples: se(mean) = sqrt(sum se_i^2) / k
                stderr, stderr_method = math.sqrt(sum(se * se for se in ses)) / len(ses), "per-subject"
            else:
                stderr, stderr_method = _pooled_question_stderr(value, [s["n"] for s in subjects.values()])
                if weighted_se is None:
                    weighted_se = stderr
            tasks[bench] = {
                "metric": label,
                "value": value,  # the leaderboard's: mean over subjects
                "stderr": stderr,
                "stderr_method": stderr_method,
                "n": n_total,
                "n_subjects": len(subjects),
                "weighted_value": weighted,  # lm-eval's group value: mean over questions
                "weighted_stderr": weighted_se,
                "aggregation": "mean over subjects (Open LLM Leaderboard)",
                "weighted_aggregation": "mean over questions, subjects weighted by size (lm-eval's mmlu group)",
            }
        else:
            task = suite.task_names[bench]
            r = results[task]
            tasks[bench] = {"metric": label, "value": _float(r[f"{metric},none"]),
                            "stderr": _float(r.get(f"{metric}_stderr,none")), "n": _n(raw, task)}
    values = [t["value"] for t in tasks.values() if t["value"] is not None]
    return {
        "variant": variant,
        "model": model,
        "model_hash": mhash,
        "settings": settings,
        "tasks": tasks,
        "mmlu_subjects": subjects,
        "average": sum(values) / len(values) if values else None,
        "average_over": [b for b, t in tasks.items() if t["value"] is not None],
    }


# ---------------------------------------------------------------- the stage
def run_evaluate(profile) -> dict:
    """Evaluate every variant; write summaries, raw outputs, samples and the stage report."""
    out = profile.run_dir(STAGE)
    with StageRun(out, STAGE, profile.fingerprint_params(STAGE)) as run:
        with run.timed("prepare_s"):
            suite = prepare_tasks(profile)
        for path in suite.all_files():
            run.add_input(path)
        if suite.tasks_dir is not None:
            run.add_output(suite.tasks_dir)
        task_manager = functools.lru_cache(maxsize=1)(lambda: make_task_manager(suite))
        report: dict[str, Any] = {
            "benchmarks_dir": "hub" if suite.mode == "hub" else str(profile.evaluate.benchmarks_dir),
            "tasks_dir": str(suite.tasks_dir) if suite.tasks_dir else None,
            "task_names": suite.task_names,
            "notes": suite.notes,
            "variants": {},
        }
        results: dict[str, dict] = {}
        for variant in profile.evaluate.variants:
            t0 = time.perf_counter()
            try:
                spec = resolve_variant(profile, variant)
                for path in spec.inputs:
                    run.add_input(path)
                if Path(spec.pretrained).is_dir():
                    run.add_input(spec.pretrained)
                summary, raws, samples, info = evaluate_variant(profile, variant, suite, task_manager, spec)
            except Exception as exc:  # noqa: BLE001 - one variant's failure must not lose the others
                log.exception("variant %s failed: %s", variant, exc)
                report["variants"][variant] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
                for suffix in (".json", ".raw.json", ".samples.jsonl"):  # no stale numbers from an earlier run
                    (out / f"{variant}{suffix}").unlink(missing_ok=True)
                continue
            paths = [write_json(out / f"{variant}.json", summary), write_json(out / f"{variant}.raw.json", raws)]
            if profile.evaluate.log_samples:
                paths.append(write_jsonl(out / f"{variant}.samples.jsonl", samples))
            else:
                (out / f"{variant}.samples.jsonl").unlink(missing_ok=True)
            for path in paths:
                run.add_output(path)
            run.timings[f"{variant}_s"] = round(time.perf_counter() - t0, 3)
            for bench, seconds in info["seconds"].items():
                run.timings[f"{variant}/{bench}_s"] = seconds
            run.metrics[f"{variant}_cached"] = info["cached"]
            for bench, t in summary["tasks"].items():
                run.metrics[f"{variant}/{bench}"] = t["value"]
            run.metrics[f"{variant}/average"] = summary["average"]
            report["variants"][variant] = {"status": "ok", "model": summary["model"],
                                           "model_hash": summary["model_hash"], "summary": f"{variant}.json"}
            results[variant] = summary
            log.info("%s: %s | average %s", variant,
                     ", ".join(f"{b} {t['value']}" for b, t in summary["tasks"].items()), summary["average"])
        failed = sorted(v for v, r in report["variants"].items() if r["status"] == "failed")
        report["failed"] = failed
        report_path = write_json(out / "evaluate_report.json", report)
        run.add_output(report_path)
        run.metrics["variants_ok"] = len(results)
        run.metrics["variants_failed"] = failed
        if not results:
            raise EvaluationError(f"every variant failed ({', '.join(failed)}); see {report_path} and the log")
    return {"summaries": results, "failed": {v: report["variants"][v]["error"] for v in failed},
            "report": str(report_path)}


__all__ = ["run_evaluate", "write_task_configs", "prepare_tasks", "resolve_variant", "evaluate_variant",
           "summarise", "make_task_manager", "TaskSuite", "ModelSpec", "EvalCache", "EvaluationError"]
