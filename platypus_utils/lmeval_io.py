"""Reading lm-evaluation-harness output (component layer): results, settings and per-question scores.

Two inputs give an `EvalRun`: an lm-eval output directory (results_<date>.json and
samples_<task>_<date>.jsonl, searched recursively; several runs are read only as `choose_results`
decides, never silently the latest; a git-LFS pointer falls back to the results file), or this
pipeline's 05_evaluate folder (<variant>.json, .raw.json, .samples.jsonl). Tasks map to the leaderboard
benchmarks with or without the `platypus_` prefix; others are listed in `notes` and left out.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import util
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from .artifacts import iter_jsonl, read_record

TASK_PREFIX = "platypus_"  # this project's local task names (stage 05 writes them)
# benchmark -> (lm-eval metric key, the name it is reported under), in the leaderboard's order
LEADERBOARD_METRICS = {
    "arc_challenge": ("acc_norm", "acc_norm"),
    "hellaswag": ("acc_norm", "acc_norm"),
    "mmlu": ("acc", "acc"),
    "truthfulqa_mc2": ("acc", "mc2"),  # lm-eval's process_results_mc2 returns mc2 under "acc"
}


def builtin_tasks_dir() -> Path:
    """The installed lm-eval's task folder (without importing lm_eval.tasks: ~4 s)."""
    return Path(util.find_spec("lm_eval.tasks").submodule_search_locations[0]).resolve()


def _read_yaml(path: Path) -> dict:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@functools.cache
def mmlu_categories() -> dict[str, str]:
    """subject -> category, as lm-eval's MMLU task files tag them (read on first use, not at import)."""
    files = sorted((builtin_tasks_dir() / "mmlu" / "default").glob("mmlu_*.yaml"))
    return {
        cfg["dataset_name"]: cfg["tag"].removeprefix("mmlu_").removesuffix("_tasks") for cfg in map(_read_yaml, files)
    }


@functools.cache
def mmlu_category_order() -> tuple[str, ...]:
    """The MMLU categories in the order of lm-eval's group file."""
    group = _read_yaml(builtin_tasks_dir() / "mmlu" / "default" / "_mmlu.yaml")
    return tuple(t.removeprefix("mmlu_") for t in group["task"])


SAMPLE_COLUMNS = ["benchmark", "subject", "doc_id", "score"]


@dataclass
class EvalRun:
    """One evaluated model: a summary in 05_evaluate's shape, per-task settings (benchmark, subject,
    num_fewshot, version, limit, n) and per-question scores (benchmark, subject, doc_id, score)."""

    name: str
    source: str
    summary: dict
    settings: dict[str, dict] = field(default_factory=dict)
    samples: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SAMPLE_COLUMNS))
    notes: list[str] = field(default_factory=list)


def task_unit(task: str) -> tuple[str, str] | None:
    """lm-eval task -> (benchmark, subject) with subject "" outside MMLU; None: not a leaderboard task."""
    name = task.removeprefix(TASK_PREFIX)
    if name.startswith("mmlu_") and name[5:] in mmlu_categories():
        return "mmlu", name[5:]
    return (name, "") if name in LEADERBOARD_METRICS and name != "mmlu" else None


def as_float(value: Any) -> float | None:
    """A metric as a finite float, else None."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None  # lm-eval writes "N/A" for a standard error it cannot compute
    return out if math.isfinite(out) else None


def _n(results: dict, task: str) -> int | None:
    n = (results.get("n-samples") or {}).get(task) or {}
    return n.get("effective", n.get("original"))


def _read_json(path: Path) -> dict:
    data, problem = read_record(path)
    if data is None:
        raise ValueError(problem or f"{path}: no such file")
    return data


def task_settings(results: dict, source: str = "") -> dict[str, dict]:
    """Per leaderboard task of one lm-eval output: num_fewshot, version, limit, n."""
    if not isinstance(results.get("results"), dict):
        raise ValueError(f"{source}: no 'results' object: not an lm-eval results file")
    limit = (results.get("config") or {}).get("limit")
    out = {}
    for task in results["results"]:
        unit = task_unit(task)
        if unit is None:
            continue
        shots = ((results.get("configs") or {}).get(task) or {}).get("num_fewshot")
        out[task] = {
            "benchmark": unit[0],
            "subject": unit[1],
            "num_fewshot": (results.get("n-shot") or {}).get(task, shots),
            "version": (results.get("versions") or {}).get(task),
            "limit": limit,
            "n": _n(results, task),
        }
    return out


def summary_from_results(name: str, results: Iterable[dict], model: str = "") -> dict:
    """A summary in 05_evaluate's shape (tasks, mmlu_subjects) from lm-eval outputs; MMLU is the mean
    over subjects with se sqrt(sum se_i^2) / k (None when a subject has none)."""
    tasks: dict[str, dict] = {}
    subjects: dict[str, dict] = {}
    for res in results:
        for task, r in (res.get("results") or {}).items():
            unit = task_unit(task)
            if unit is None or not isinstance(r, dict):
                continue
            bench, subject = unit
            metric, label = LEADERBOARD_METRICS[bench]
            value, stderr = as_float(r.get(f"{metric},none")), as_float(r.get(f"{metric}_stderr,none"))
            n = _n(res, task)
            if subject:
                subjects[subject] = {"acc": value, "stderr": stderr, "n": n, "category": mmlu_categories()[subject]}
            else:
                tasks[bench] = {"metric": label, "value": value, "stderr": stderr, "n": n}
    if subjects:
        accs = [s["acc"] for s in subjects.values() if s["acc"] is not None]
        ses = [s["stderr"] for s in subjects.values()]
        tasks["mmlu"] = {
            "metric": "acc",
            "value": sum(accs) / len(accs) if accs else None,
            "stderr": None if None in ses else math.sqrt(sum(se * se for se in ses)) / len(ses),
            "n": sum(s["n"] or 0 for s in subjects.values()),
            "n_subjects": len(subjects),
            "aggregation": "mean over subjects (Open LLM Leaderboard)",
        }
    values = [t["value"] for t in tasks.values() if t["value"] is not None]
    return {
        "variant": name,
        "model": model,
        "tasks": tasks,
        "mmlu_subjects": dict(sorted(subjects.items())),
        "average": sum(values) / len(values) if values else None,
        "average_over": [b for b in LEADERBOARD_METRICS if b in tasks and tasks[b]["value"] is not None],
    }


def samples_frame(rows: Iterable[dict], task: str | None = None, source: str = "") -> pd.DataFrame:
    """Logged lm-eval samples -> one row per question; a row's task is `task`, else its own "task" field."""
    out = []
    for k, row in enumerate(rows):
        name = task or row.get("task")
        unit = task_unit(str(name)) if name else None
        if unit is None:
            continue
        metric = LEADERBOARD_METRICS[unit[0]][0]
        score = as_float(row.get(metric))
        if score is None or "doc_id" not in row:
            raise ValueError(f"{source} row {k + 1}: task {name} has no numeric '{metric}' or no 'doc_id'")
        out.append((unit[0], unit[1], int(row["doc_id"]), score))
    frame = pd.DataFrame(out, columns=SAMPLE_COLUMNS)
    return frame.drop_duplicates(["benchmark", "subject", "doc_id"], keep="last").reset_index(drop=True)


LFS_POINTER = "version https://git-lfs.github.com/spec/v1"  # the first line of a git-LFS pointer file
RESULTS_RULES = ("latest", "all")  # --results-file rules besides a file name


def lfs_pointer(path: Path) -> dict | None:
    """{"oid", "size"} when `path` is a git-LFS pointer (content git has not fetched), else None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1024)
    except OSError:
        return None
    if not head.startswith(LFS_POINTER.encode()):
        return None
    fields = dict(line.split(" ", 1) for line in head.decode("utf-8", "replace").splitlines() if " " in line)
    return {"oid": fields.get("oid", "?"), "size": fields.get("size", "?")}


def lfs_text(path: Path, pointer: dict) -> str:
    return (
        f"{path} is a git-LFS pointer (oid {pointer['oid']}, {pointer['size']} bytes), not the file itself: "
        f"`git lfs pull --include '{path.name}'` in its repository fetches it"
    )


def _samples(path: Path) -> list[Any]:
    # strict: a skipped line would silently drop a question from the paired comparison
    return [obj for _, obj in iter_jsonl(path, strict=True)]


def _date(f: Path) -> str:
    return f.stem.split("_", 1)[1]  # results_<date>


def _results(f: Path) -> dict:
    pointer = lfs_pointer(f)
    if pointer:
        raise ValueError(lfs_text(f, pointer) + "; nothing to fall back to without the results file")
    return _read_json(f)


def _first(items: list[str], n: int) -> str:
    return ", ".join(items[:n]) + (" ..." if len(items) > n else "")


def describe_results(f: Path, res: dict) -> str:
    """One results file in words: tasks, few-shot counts, limit and gen_kwargs."""
    settings = task_settings(res, str(f))
    shots = sorted({str(s["num_fewshot"]) for s in settings.values()})
    cfg = res.get("config") or {}
    limit = f"{cfg['limit']:g}" if isinstance(cfg.get("limit"), float) else str(cfg.get("limit"))
    return (
        f"{f.name}: {len(res['results'])} task(s), num_fewshot {'/'.join(shots) or '?'}, limit {limit}, "
        f"gen_kwargs {cfg.get('gen_kwargs') or 'none'}"
    )


def choose_results(path: Path, files: list[Path], choice: Iterable[str] = ()) -> tuple[list[Path], list[str]]:
    """The results files of one model folder to read (chronological) and a note on the choice: the files
    named in `choice`, else its rule ("latest"; "all": a later file's tasks override), else all when
    their tasks do not overlap; overlapping files with no choice are a ValueError listing them."""
    files = sorted(files, key=_date)
    if len(files) == 1:
        return files, []
    results = {f: _results(f) for f in files}
    listed = "; ".join(describe_results(f, results[f]) for f in files)
    named = [f for f in files if f.name in set(choice) or str(f) in set(choice)]
    rule = next((c for c in choice if c in RESULTS_RULES), None)
    if named:
        return named, [
            f"{path}: of {len(files)} results files read {', '.join(f.name for f in named)} (--results-file)"
        ]
    if rule == "latest":
        return files[-1:], [f"{path}: of {len(files)} results files read the latest, {files[-1].name} ({listed})"]
    tasks = [set(results[f].get("results") or {}) for f in files]
    overlap = sorted(set.union(*[a & b for k, a in enumerate(tasks) for b in tasks[k + 1 :]]))
    if overlap and rule != "all":
        raise ValueError(
            f"{path}: {len(files)} results files hold the same tasks ({_first(overlap, 4)}), so which run to analyse is a choice: {listed}. Choose with --results-file NAME "
            "(repeatable, one per input), --results-file latest, or --results-file all (a later file's tasks "
            "replace an earlier one's), or pass the results file itself as the input"
        )
    how = "a later file's tasks replacing an earlier one's" if overlap else "their tasks do not overlap"
    return files, [f"{path}: read all {len(files)} results files ({how}): {listed}"]


def _read_samples(f: Path, res: dict, name: str, notes: list[str]) -> dict[str, pd.DataFrame]:
    """Per leaderboard task, the samples logged beside one results file; a git-LFS pointer goes to `notes`."""
    date, out = _date(f), {}
    for sf in sorted(f.parent.glob(f"samples_*_{date}.jsonl")):
        task = sf.stem[len("samples_") : -len(date) - 1]
        if task_unit(task) is None or task not in (res.get("results") or {}):
            continue
        pointer = lfs_pointer(sf)
        if pointer:
            notes.append(
                f"{name}: {lfs_text(sf, pointer)}; {task} falls back to the results file "
                "(unpaired comparison, normal error from lm-eval's standard errors)"
            )
            continue
        out[task] = samples_frame(_samples(sf), task, str(sf))
    return out


def read_lm_eval_dir(path: str | Path, name: str | None = None, results_file: Iterable[str] = ()) -> EvalRun:
    """An lm-eval --output_path directory (or one results_*.json) -> EvalRun; `name` defaults to the
    folder holding the results; `results_file` chooses among several (choose_results)."""
    path = Path(path)
    found = [path] if path.is_file() else sorted(path.rglob("results_*.json"))
    if not found:
        raise ValueError(f"{path}: no results_*.json (write one with lm_eval --output_path {path} --log_samples)")
    folders = {f.parent for f in found}
    if len(folders) > 1:
        raise ValueError(
            f"{path}: results of several models ({', '.join(sorted(str(f) for f in folders))}); "
            "pass each model's folder as its own DIR=NAME"
        )
    files, notes = choose_results(path, found, results_file)
    name = name or files[0].parent.name
    results = [_results(f) for f in files]
    settings: dict[str, dict] = {}
    samples: dict[str, pd.DataFrame] = {}
    for f, res in zip(files, results):
        settings.update(task_settings(res, str(f)))
        for task in res.get("results") or {}:
            samples.pop(task, None)  # a later file's task replaces an earlier one's, samples too
        samples.update(_read_samples(f, res, name, notes))
    other = sorted({t for res in results for t in res.get("results", {}) if task_unit(t) is None})
    if other:
        notes.append(f"{name}: tasks outside the leaderboard set left out: {_first(other, 8)}")
    pointers = {t for t in settings if any(f"; {t} falls back" in n for n in notes)}  # said already
    missing = sorted(t for t in settings if t not in samples and t not in pointers)
    if missing:
        notes.append(
            f"{name}: no logged samples for {len(missing)} task(s) ({_first(missing, 5)}): unpaired errors there"
        )
    model = str((results[-1].get("config") or {}).get("model_args") or (results[-1].get("model_name") or ""))
    frame = pd.concat(list(samples.values()), ignore_index=True) if samples else pd.DataFrame(columns=SAMPLE_COLUMNS)
    return EvalRun(name, str(path), summary_from_results(name, results, model), settings, frame, notes)


def read_pipeline_variant(eval_dir: str | Path, variant: str, summary: dict | None = None) -> EvalRun:
    """One variant of this pipeline's 05_evaluate folder -> EvalRun."""
    eval_dir = Path(eval_dir)
    summary = summary or _read_json(eval_dir / f"{variant}.json")
    settings: dict[str, dict] = {}
    raw_path = eval_dir / f"{variant}.raw.json"
    if raw_path.is_file():
        for bench, res in _read_json(raw_path).items():
            if isinstance(res, dict) and isinstance(res.get("results"), dict):
                settings.update(task_settings(res, f"{raw_path} [{bench}]"))
    sample_path = eval_dir / f"{variant}.samples.jsonl"
    notes, samples = [], pd.DataFrame(columns=SAMPLE_COLUMNS)
    pointer = lfs_pointer(sample_path) if sample_path.is_file() else None
    if pointer:
        notes.append(f"{variant}: {lfs_text(sample_path, pointer)}; falls back to the summary (unpaired errors)")
    elif sample_path.is_file():
        samples = samples_frame(_samples(sample_path), source=str(sample_path))
    else:
        notes.append(f"{variant}: no {sample_path.name} (evaluate.log_samples off?): unpaired errors")
    return EvalRun(variant, str(eval_dir), summary, settings, samples, notes)


def is_pipeline_dir(path: str | Path) -> bool:
    """True for a 05_evaluate folder (summaries beside .raw.json files), not an lm-eval output folder."""
    path = Path(path)
    return path.is_dir() and (any(path.glob("*.raw.json")) or (path / "evaluate_report.json").is_file())


def settings_mismatches(a: EvalRun, b: EvalRun) -> list[str]:
    """Differences in few-shot count, task version and limit on the tasks both ran, one line each."""
    out = []
    by_unit_b = {(s["benchmark"], s["subject"]): s for s in b.settings.values()}
    for task, sa in sorted(a.settings.items()):
        sb = by_unit_b.get((sa["benchmark"], sa["subject"]))
        if sb is None:
            continue
        for key in ("num_fewshot", "version", "limit"):
            if sa.get(key) != sb.get(key):
                out.append(f"{task}: {key} {sa.get(key)!r} in {a.name} but {sb.get(key)!r} in {b.name}")
    return out
