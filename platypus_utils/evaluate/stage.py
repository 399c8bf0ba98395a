"""Stage 05's evaluation and save steps, and `run_evaluate`, their composition.

Each (variant, benchmark) result is cached under its key (model content hash, task, shots, limit, task
definition hash, lm-eval version, seeds, model settings) as soon as lm-eval returns it, so a killed run redoes
only the benchmarks that had not finished, and a reference with a variant's weights takes that variant's results.
`force` runs lm-eval again and replaces the entry, once per stage run. A variant that
fails is recorded and the others kept; when all fail, `save` writes evaluate_report.failed.json, keeps
the last good report and raises EvaluationError.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lm_eval
import pandas as pd

from .. import layout
from ..artifacts import StageRun, timed, write_json, write_jsonl
from .cache import EvalCache, cache_key
from .models import (
    REFERENCE,
    VARIANT,
    ModelSpec,
    check_backend,
    evaluation_names,
    hub_snapshot_id,
    lm_settings,
    make_lm,
    model_args,
    model_hash,
    resolve_variant,
    resolve_variants,
)
from .spread import gpu_slots, spread_variants
from .summary import summarise
from .tasks import TaskSuite, benchmarks_in, lm_eval_version, make_task_manager, prepare_tasks

log = logging.getLogger("platypus")
STAGE = layout.EVALUATE
REPORT = layout.EVALUATE_REPORT[1]
FAILED_REPORT = "evaluate_report.failed.json"
VARIANT_FILES = (".json", ".raw.json", ".samples.jsonl")
# lm-eval's default seeds (the leaderboard's): recorded in each summary and the eval-cache key
SEEDS = {k: p.default for k, p in inspect.signature(lm_eval.simple_evaluate).parameters.items() if k.endswith("_seed")}


class EvaluationError(RuntimeError):
    """Stage-level failure (bad data folder, or every variant failed)."""


@dataclass
class VariantEvaluation:
    """One variant's outcome: its summary, lm-eval's raw output per benchmark and the samples, or the error."""

    variant: str
    spec: ModelSpec | None
    summary: dict | None = None
    raws: dict[str, dict] = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)
    cached: dict[str, bool] = field(default_factory=dict)  # benchmark -> taken from the cache
    seconds: dict[str, float] = field(default_factory=dict)  # benchmark -> wall time
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _limit(limit: float | None) -> int | float | None:
    if limit is None:
        return None
    return int(limit) if float(limit).is_integer() and limit >= 1 else float(limit)


def _jsonable(obj: Any) -> Any:
    from lm_eval.utils import handle_non_serializable  # ~1 s to import

    return json.loads(json.dumps(obj, default=handle_non_serializable))


def simple_evaluate_args(task_name: str, num_fewshot: int, limit) -> dict:
    """lm_eval.simple_evaluate's arguments for one benchmark, the model and task manager aside."""
    return {"tasks": task_name.split(","), "num_fewshot": num_fewshot, "limit": limit, "log_samples": True, **SEEDS}


def run_lm_eval(lm, task_manager, task_name: str, num_fewshot: int, limit) -> dict:
    """One lm-eval call; returns its output (samples included)."""
    out = lm_eval.simple_evaluate(
        model=lm, task_manager=task_manager, **simple_evaluate_args(task_name, num_fewshot, limit)
    )
    if out is None:
        raise RuntimeError(f"lm-eval returned no results for {task_name}")
    return out


def lm_eval_calls(profile, suite: TaskSuite, specs: dict[str, ModelSpec]) -> pd.DataFrame:
    """Step: one row per variant and benchmark: lm-eval's model, its `--model_args`, and simple_evaluate's
    arguments, as `evaluate_variant` passes them."""
    rows = []
    for variant, spec in specs.items():
        kind, kwargs = model_args(spec, lm_settings(profile, spec))
        args = ",".join(f"{k}={v}" for k, v in kwargs.items())
        for bench in benchmarks_in(profile):
            tcfg = profile.evaluate.tasks[bench]
            call = simple_evaluate_args(suite.task_names[bench], tcfg.num_fewshot, _limit(tcfg.limit))
            rows.append({"variant": variant, "benchmark": bench, "model": kind, "model_args": args, **call})
    return pd.DataFrame(rows)


class _LazyLM:
    """The model and task manager, built on the first cache miss only (the hub index alone takes ~14 s)."""

    def __init__(self, spec: ModelSpec, settings: dict, suite: TaskSuite, task_manager=None):
        self.spec, self.settings, self.suite, self._tm, self._lm = spec, settings, suite, task_manager, None

    def evaluate(self, bench: str, num_fewshot: int, limit) -> tuple[dict, list[dict]]:
        if self._lm is None:
            self._tm = self._tm() if callable(self._tm) else self._tm or make_task_manager(self.suite)
            self._lm = make_lm(self.spec, self.settings)
        task = self.suite.task_names[bench]
        log.info("%s / %s: lm-eval %s, %d-shot, limit %s", self.spec.variant, bench, task, num_fewshot, limit)
        out = run_lm_eval(self._lm, self._tm, task, num_fewshot, limit)
        by_task = out.pop("samples", {}) or {}
        samples = [_jsonable({"task": t, **s}) for t in sorted(by_task) for s in by_task[t]]
        return _jsonable(out), samples


def _kind_fields(ref) -> dict:
    return {"kind": REFERENCE, "compare_to": ref.compare_to, "published": ref.published} if ref else {"kind": VARIANT}


def evaluate_variant(
    profile,
    variant: str,
    suite: TaskSuite,
    task_manager=None,
    spec: ModelSpec | None = None,
    force: bool = False,
    computed: set[str] | None = None,
) -> VariantEvaluation:
    """Evaluate one variant (or reference) on every configured benchmark, each from the cache when it holds it.

    `task_manager`: a TaskManager, a callable returning one, or None. `force`: rerun lm-eval except for
    the keys in `computed` (run earlier in this stage run; this call adds its own). Raises on failure.
    """
    spec = spec or resolve_variant(profile, variant)
    settings, mhash = lm_settings(profile, spec), model_hash(spec)
    cache, lm = EvalCache(profile.cache_dir() / "eval"), _LazyLM(spec, settings, suite, task_manager)
    result, task_settings = VariantEvaluation(variant, spec), {}
    for bench in benchmarks_in(profile):
        tcfg = profile.evaluate.tasks[bench]
        limit = _limit(tcfg.limit)
        shown = {
            "task": suite.task_names[bench],
            "num_fewshot": tcfg.num_fewshot,
            "limit": limit,
            "data_hash": suite.definition_hash[bench],
        }
        fields = {"model_hash": mhash, "benchmark": bench, **shown, "lm_eval": lm_eval_version(), "seeds": SEEDS}
        fields.update(settings)
        key = cache_key(fields)
        note = {"note": suite.notes[bench]} if bench in suite.notes else {}
        task_settings[bench] = {**shown, **note, "cache_key": key}
        t0 = time.perf_counter()
        entry = None if force and key not in (computed or set()) else cache.get(key)
        if entry is None:
            raw, samples = lm.evaluate(bench, tcfg.num_fewshot, limit)
            cache.put(key, fields, raw, samples)
            if computed is not None:
                computed.add(key)
        else:
            log.info("%s / %s: reusing cached lm-eval result %s", variant, bench, key)
            raw, samples = entry["raw"], entry["samples"]
        result.cached[bench], result.seconds[bench] = entry is not None, round(time.perf_counter() - t0, 3)
        result.raws[bench] = raw
        result.samples += [{"variant": variant, "benchmark": bench, **s} for s in samples]
    settings_out = {
        **settings,
        "lm_eval": lm_eval_version(),
        "seeds": SEEDS,
        "tasks": task_settings,
        "benchmarks_dir": "hub" if suite.mode == "hub" else str(profile.evaluate.benchmarks_dir),
    }
    summary = summarise(variant, spec.model, mhash, settings_out, result.raws, suite)
    result.summary = summary | _kind_fields(spec if spec.kind == REFERENCE else None)
    return result


def evaluate_variants(
    profile,
    suite: TaskSuite,
    specs: dict[str, ModelSpec],
    unresolved: dict[str, str] | None = None,
    force: bool = False,
) -> dict[str, VariantEvaluation]:
    """evaluate_variant for each variant, then each reference; a failure is kept, not raised."""
    shared_task_manager = functools.cache(lambda: make_task_manager(suite))  # made on the first cache miss
    computed: set[str] = set()  # force reruns each key once
    out = {}
    for variant in evaluation_names(profile):
        if variant not in specs:
            out[variant] = VariantEvaluation(variant, None, error=(unresolved or {}).get(variant, "not resolved"))
            continue
        try:
            out[variant] = evaluate_variant(
                profile, variant, suite, shared_task_manager, specs[variant], force, computed
            )
        except Exception as exc:  # noqa: BLE001 - one variant's failure must not lose the others
            log.exception("variant %s failed: %s", variant, exc)
            out[variant] = VariantEvaluation(variant, specs[variant], error=f"{type(exc).__name__}: {exc}")
            continue
        summary = out[variant].summary
        scores = ", ".join(f"{b} {t['value']}" for b, t in summary["tasks"].items())
        log.info("%s: %s | average %s", variant, scores, summary["average"])
    return out


def stage_report(profile, suite: TaskSuite, evaluations: dict[str, VariantEvaluation]) -> dict:
    """evaluate_report.json: the task suite, the backend, and per variant and reference its status, kind,
    model and summary file (or error)."""
    references = {r.name: r for r in profile.evaluate.references}
    variants = {
        v: (
            {"status": "ok", "model": e.summary["model"], "model_hash": e.summary["model_hash"], "summary": f"{v}.json"}
            if e.ok
            else {"status": "failed", "error": e.error}
        )
        | _kind_fields(references.get(v))
        for v, e in evaluations.items()
    }
    return {
        "backend": profile.evaluate.backend,
        "references": list(references),
        "benchmarks_dir": "hub" if suite.mode == "hub" else str(profile.evaluate.benchmarks_dir),
        "tasks_dir": str(suite.tasks_dir) if suite.tasks_dir else None,
        "task_names": suite.task_names,
        "notes": suite.notes,
        "variants": variants,
        "failed": sorted(v for v, e in evaluations.items() if not e.ok),
    }


def _save_variant(profile, run: StageRun, e: VariantEvaluation) -> list[Path]:
    out = profile.run_dir(STAGE)
    summary = write_json(layout.variant_summary(profile, e.variant), e.summary)
    paths = [summary, write_json(out / f"{e.variant}.raw.json", e.raws)]
    if profile.evaluate.log_samples:
        paths.append(write_jsonl(out / f"{e.variant}.samples.jsonl", e.samples))
    else:
        (out / f"{e.variant}.samples.jsonl").unlink(missing_ok=True)
    local = Path(e.spec.pretrained).is_dir() and not hub_snapshot_id(e.spec.pretrained)  # a hub commit: by name
    for path in e.spec.inputs + ([Path(e.spec.pretrained)] if local else []):
        run.add_input(path)
    run.timings[f"{e.variant}_s"] = round(sum(e.seconds.values()), 3)
    run.timings.update({f"{e.variant}/{bench}_s": seconds for bench, seconds in e.seconds.items()})
    run.metrics[f"{e.variant}_cached"] = e.cached
    run.metrics.update({f"{e.variant}/{bench}": t["value"] for bench, t in e.summary["tasks"].items()})
    run.metrics[f"{e.variant}/average"] = e.summary["average"]
    return paths


def save(
    profile,
    suite: TaskSuite,
    evaluations: dict[str, VariantEvaluation],
    timings: dict | None = None,
    force: bool = False,
) -> list[Path]:
    """Write the variants' files, evaluate_report.json and manifest.json; EvaluationError when every
    variant failed, leaving the last good report. `force` is unused here (it acts in evaluate_variants)."""
    out = profile.run_dir(STAGE)
    report = stage_report(profile, suite, evaluations)
    with StageRun(out, STAGE, profile.fingerprint_params(STAGE)) as run:
        run.timings.update(timings or {})
        for path in suite.all_files():
            run.add_input(path)
        if suite.tasks_dir is not None:
            run.add_output(suite.tasks_dir)
        run.metrics["variants_ok"] = sum(e.ok for e in evaluations.values())
        run.metrics["variants_failed"] = report["failed"]
        if not run.metrics["variants_ok"]:
            failed = write_json(out / FAILED_REPORT, report)
            kept = "the last good evaluate_report.json is kept" if (out / REPORT).is_file() else "no earlier report"
            raise EvaluationError(
                f"every variant failed ({', '.join(report['failed'])}); this run's report: "
                f"{failed} ({kept}); see the log for the errors"
            )
        with run.timed("save_s"):
            paths = [p for e in evaluations.values() if e.ok for p in _save_variant(profile, run, e)]
            for e in evaluations.values():
                if not e.ok:  # no stale numbers from an earlier run
                    for suffix in VARIANT_FILES:
                        (out / f"{e.variant}{suffix}").unlink(missing_ok=True)
            paths.append(write_json(out / REPORT, report))
            (out / FAILED_REPORT).unlink(missing_ok=True)
        for path in paths:
            run.add_output(path)
    return paths


def run_evaluate(profile, force: bool = False) -> dict:
    """The whole stage: prepare tasks, resolve variants, evaluate each (cached), save.
    Returns {"summaries": {variant: summary}, "failed": {variant: error}, "report": path}."""
    check_backend(profile)
    timings: dict[str, float] = {}
    with timed(timings, "prepare_s"):
        suite = prepare_tasks(profile)
    with timed(timings, "evaluate_s"):
        specs, unresolved = resolve_variants(profile)
        slots = gpu_slots(profile, specs)
        spread_variants(profile, suite, specs, slots, evaluate_variant, force=force)
        evaluations = evaluate_variants(profile, suite, specs, unresolved, force=force and not slots)
    save(profile, suite, evaluations, timings, force=force)
    return {
        "summaries": {v: e.summary for v, e in evaluations.items() if e.ok},
        "failed": {v: e.error for v, e in evaluations.items() if not e.ok},
        "report": str(profile.run_dir(STAGE) / REPORT),
    }
