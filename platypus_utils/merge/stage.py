"""Stage 04_merge as the steps notebooks/04_merge.ipynb calls, and `run_merge`, their composition.
Unlike other stages' steps, `make_variant` writes (through a temporary folder, checked before the rename).
Outside the runner, `begin` records the attempt, closed "failed" by a failing `make_variant`, "ok" by `save`.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .. import layout
from ..artifacts import (
    MANIFEST,
    RUNNER_ATTEMPT_ENV,
    StageRun,
    begin_attempt,
    end_attempt,
    peak_rss_mb,
    remove_debris,
    timed,
    write_json,
)
from ..cards import merged_card, write_card
from ..config import Profile
from ..plotting import new_figure
from .adapter import LoraDelta, read_adapter
from .errors import MergeError
from .io import MERGE_INFO, dtype_name, measure_peak_rss, read_merge_info, write_variant
from .jobs import STAGE, Job, MergeJobs, existing_output, merge_jobs
from .mergekit import why_not, write_config
from .verify import UNRESOLVABLE, VERIFIED, VERIFY_FORMAT

log = logging.getLogger("platypus")

REPORT = layout.MERGE_REPORT[1]
NOT_CHECKED = "not checked"  # merge.verify: false
FIGURES = ("max_abs_weight_diff", "max_weight_error_to_bound", "max_abs_logit_diff", "logit_tolerance")
METRIC_KEYS = ("status", "max_abs_weight_diff", "max_weight_error_to_bound", "max_abs_logit_diff", "peak_rss_mb")


@dataclass
class Adapter:
    """Stage 03's adapter as this stage reads it (adapter.read_adapter)."""

    path: Path
    config: dict
    deltas: dict[str, LoraDelta]

    def summary(self) -> dict:
        """Rank, alpha, scale(s), target modules and counts of the adapter as read (JSON-ready)."""
        config, deltas = self.config, self.deltas.values()
        targets = config.get("target_modules")
        return {
            "path": str(self.path),
            "r": int(config["r"]),
            "lora_alpha": float(config["lora_alpha"]),
            "scales": sorted({round(d.scale, 12) for d in deltas}),
            "use_rslora": bool(config.get("use_rslora")),
            "target_modules": sorted(targets) if isinstance(targets, (list, set, tuple)) else targets,
            "modules": len(deltas),
            "lora_parameters": sum(d.lora_a.numel() + d.lora_b.numel() for d in deltas),
            "trained_on": config.get("base_model_name_or_path"),
        }

    def frame(self) -> pd.DataFrame:
        """One row per adapted module: weight shape, rank, scale and the size of its update scale·B@A."""
        rows = []
        for name, d in self.deltas.items():
            update = d.delta()
            rows.append((name, d.weight_shape, d.rank, d.scale, float(update.abs().max()), float(update.norm())))
        return pd.DataFrame(rows, columns=["module", "weight_shape", "rank", "scale", "max_abs_update", "update_norm"])


def load_adapter(profile: Profile) -> Adapter:
    """Stage 03's adapter (03_finetune/adapter); FileNotFoundError saying to run stage 03 when absent."""
    path = layout.artifact(profile, layout.ADAPTER)
    return Adapter(path, *read_adapter(path))


def jobs_frame(jobs: MergeJobs) -> pd.DataFrame:
    """One row per variant, in the order they are made: what merges into what, and the dtype."""
    rows = [
        (j.variant, j.kind, j.method, j.merges, j.into, dtype_name(j.dtype))
        + (j.report.get("weights"), j.report.get("density"), ", ".join(j.needs))
        for j in jobs
    ]
    columns = ["variant", "kind", "method", "merges", "into", "dtype", "weights", "density", "made_from_variants"]
    return pd.DataFrame(rows, columns=columns).set_index("variant")


def _own_attempt() -> bool:
    return not os.environ.get(RUNNER_ATTEMPT_ENV)  # the runner records its attempts itself


def begin(jobs: MergeJobs) -> list[Path]:
    """Remove an interrupted merge's leftovers and, outside the runner, record the attempt; returns the removed."""
    removed = remove_debris(jobs.run_dir, recursive=False)
    if _own_attempt():
        begin_attempt(jobs.run_dir, STAGE)
    return removed


@dataclass
class Made:
    """One variant made or reused: its merge_report.json entry and how it came about."""

    variant: str
    entry: dict
    reused: bool
    replaced: str | None
    seconds: float


def _make_or_reuse(job: Job, out_dir: Path, verify: bool, force: bool) -> tuple[dict, bool, str | None]:
    """(merge_info, reused, why an earlier one was replaced) of one variant."""
    inputs = job.inputs()
    replaced = existing_output(job, out_dir, inputs, force)
    if out_dir.exists() and not force and replaced is None:
        info = read_merge_info(out_dir)
        if verify and (info.get("verification") or {}).get("format") != VERIFY_FORMAT:  # missing or older: again
            _, check = job.steps()
            with measure_peak_rss() as memory:
                info["verification"] = check(out_dir)
            info.setdefault("memory", {})["verify_peak_rss_mb"] = memory["peak_rss_mb"]
            write_json(out_dir / MERGE_INFO, info)
        log.info("%s: reusing %s (same inputs)", job.variant, out_dir)
        return info, True, None
    if out_dir.exists() and force:
        log.warning("%s: force: making %s again", job.variant, out_dir)
    log.info("%s: %s (%s) in %s", job.variant, job.method, job.kind, dtype_name(job.dtype))
    build, check = job.steps()
    info = {"inputs": inputs, "kind": job.kind, "method": job.method, "dtype": dtype_name(job.dtype)}
    return write_variant(out_dir, build, check if verify else None, info), False, replaced


def check_status(verification: dict | None) -> str:
    """verify.VERIFIED, verify.UNRESOLVABLE (verify.resolution), or NOT_CHECKED (merge.verify off)."""
    return verification.get("status", VERIFIED) if verification else NOT_CHECKED


def make_variant(jobs: MergeJobs, job: Job | str, force: bool = False) -> Made:
    """Make (or reuse: same inputs, unless force) one variant, checked before it appears at its path."""
    job = jobs.job(job) if isinstance(job, str) else job
    missing = [v for v in job.needs if v not in jobs.made]
    if missing:
        raise MergeError(f"{job.variant} is made from {missing}: make those first (in the order of the jobs)")
    out_dir = jobs.run_dir / job.variant
    t0 = time.perf_counter()
    try:
        info, reused, replaced = _make_or_reuse(job, out_dir, jobs.cfg.verify, force)
    except BaseException as exc:  # a failed merge or check, or an interrupt: the attempt did not succeed
        if _own_attempt():
            end_attempt(jobs.run_dir, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    jobs.content[str(out_dir)] = info["content_sha256"]
    jobs.made = [v for v in jobs.made if v != job.variant] + [job.variant]
    seconds = time.perf_counter() - t0
    verification = info.get("verification") if jobs.cfg.verify else None
    status = check_status(verification)
    memory = info.get("memory", {})
    peaks = [memory.get(k) for k in ("merge_peak_rss_mb", "verify_peak_rss_mb") if memory.get(k)]
    entry = {"path": str(out_dir.resolve()), "kind": job.kind, "method": job.method, "partner": None, **job.report}
    # "verified" only when a check ran, passed and could have failed (verify.resolution)
    entry |= {"dtype": dtype_name(job.dtype), "verified": status == VERIFIED, "status": status}
    entry |= {k: (verification or {}).get(k) for k in ("status_reason", *FIGURES)}
    entry |= {"verification": verification, "content_sha256": info["content_sha256"], "reused": reused}
    entry |= {"replaced": replaced, "peak_rss_mb": max(peaks) if peaks else None, "memory": memory}
    entry["seconds"] = round(seconds, 2)
    # the recipe mergekit reads (a provenance file: the variant's content hash leaves it out), or why none
    if job.mergekit is not None:
        entry["mergekit_config"] = str(write_config(out_dir, job.mergekit, job.variant))
    else:
        entry["mergekit_config"], entry["mergekit_why_not"] = None, why_not(job.kind, job.method)
    card = merged_card(jobs.profile, job.variant, entry, job.mergekit, entry.get("mergekit_why_not"))
    entry["card"] = str(write_card(out_dir, card))
    return Made(job.variant, entry, reused, replaced, seconds)


def check_rows(made: list[Made]) -> list[dict]:
    """Per variant, JSON-ready: error / bound for weights and logits (<= 1 passes), passed, status and reason."""
    rows = []
    for m in made:
        v = m.entry.get("verification") or {}
        weight_ratio = v.get("max_weight_error_to_bound")
        diff, tolerance = v.get("max_abs_logit_diff"), v.get("logit_tolerance")
        logit_ratio = diff / tolerance if diff is not None and tolerance else None
        passed = weight_ratio is not None and weight_ratio <= 1 and (logit_ratio is None or logit_ratio <= 1)
        row = {"variant": m.variant, "kind": m.entry["kind"], "dtype": m.entry["dtype"]}
        row |= {"weight_error_to_bound": weight_ratio, "max_abs_weight_diff": v.get("max_abs_weight_diff")}
        row |= {"logit_diff": diff, "logit_tolerance": tolerance, "logit_ratio": logit_ratio}
        row |= {"logit_share_of_adapter_effect": v.get("logit_diff_to_effect")}
        row |= {"updates_above_bound_share": v.get("updates_above_bound_share"), "passed": bool(passed) if v else None}
        row |= {"status": m.entry.get("status", check_status(v)), "status_reason": m.entry.get("status_reason")}
        rows.append(row | {"reused": m.reused})
    return rows


def checks_frame(made: list[Made]) -> pd.DataFrame:
    """check_rows as a frame indexed by variant."""
    return pd.DataFrame(check_rows(made)).set_index("variant")


def verification_frame(made: Made) -> pd.DataFrame:
    """One variant's check figures in full, numbers to 4 significant digits (tiny errors stay visible)."""
    figures = made.entry.get("verification") or {}
    shown = {key: f"{value:.4g}" if isinstance(value, float) else value for key, value in figures.items()}
    return pd.DataFrame({made.variant: shown}, dtype=object)


def plot_checks(checks: pd.DataFrame, ax=None):
    """Each variant's error / bound (weights, and logits where checked), log scale. Returns the figure."""
    fig, ax = new_figure(ax, (6.5, 0.5 + 0.45 * max(1, len(checks))))
    labels = {"weight_error_to_bound": "weights: worst error / bound", "logit_ratio": "logits: max diff / tolerance"}
    ratios = checks[list(labels)].apply(pd.to_numeric, errors="coerce").rename(columns=labels)
    # a ratio of 0 (bit-identical) drawn at the axis' left end; first variant on top
    ratios.clip(lower=1e-6).fillna(0).plot.barh(ax=ax, width=0.8).invert_yaxis()
    ax.axvline(1.0, color="C3", lw=1.5, label="bound")
    ax.set(xscale="log", xlabel="observed / allowed (log)", ylabel="")
    ax.set_title("merge checks: every bar left of the line passes")
    ax.legend(frameon=False, fontsize="small", loc="lower right")
    return fig


def merge_report(jobs: MergeJobs, made: list[Made]) -> dict:
    """merge_report.json: the jobs' header, one entry per variant made, and `status_counts`."""
    return {**jobs.report, "models": {m.variant: m.entry for m in made}, "status_counts": status_counts(made)}


def status_counts(made: list[Made]) -> dict[str, int]:
    """Variants per check status: verified, unresolvable, not checked (each key always present)."""
    return dict.fromkeys((VERIFIED, UNRESOLVABLE, NOT_CHECKED), 0) | Counter(m.entry["status"] for m in made)


def report_frame(report: dict) -> pd.DataFrame:
    """The report's models as a frame (one row per variant; sortable)."""
    columns = "kind method partner base dtype status verified max_weight_error_to_bound max_abs_logit_diff".split()
    columns += ["reused", "replaced", "peak_rss_mb", "seconds", "path"]
    return pd.DataFrame.from_dict(report["models"], orient="index").reindex(columns=columns)


def save(profile: Profile, jobs: MergeJobs, made: list[Made], timings: dict | None = None) -> list[Path]:
    """Write merge_report.json and manifest.json as the runner does; returns their paths and the variants'."""
    missing = [v for v in jobs.variants if v not in {m.variant for m in made}]
    if missing:
        raise MergeError(f"{missing} not made yet: make every planned variant (make_variant) before saving")
    report = merge_report(jobs, made)
    with StageRun(jobs.run_dir, STAGE, profile.fingerprint_params(STAGE)) as run:
        run.timings.update(timings or {})
        run.timings.update({m.variant: round(m.seconds, 3) for m in made if not m.reused})
        with run.timed("save_s"):
            for p in dict.fromkeys(p for job in jobs for p in job.local_inputs):
                if Path(p).is_dir() and str(Path(p).resolve()) not in run.inputs:
                    run.add_input(p)
            for m in made:
                run.add_output(jobs.run_dir / m.variant)
                run.metrics.update({f"{m.variant}.{key}": m.entry[key] for key in METRIC_KEYS})
            report_path = write_json(jobs.run_dir / REPORT, report)
            run.add_output(report_path)
        run.metrics["models"] = len(report["models"])
        run.metrics.update({f"status.{k}": n for k, n in report["status_counts"].items()})
        run.metrics["peak_rss_mb"] = peak_rss_mb()
    return [report_path, *(jobs.run_dir / m.variant for m in made), jobs.run_dir / MANIFEST]


def run_merge(profile: Profile, force: bool = False) -> dict:
    """The whole stage; returns the merge report. `force`: make every variant again."""
    timings: dict = {}
    with timed(timings, "plan_s"):  # the manifest's name for it
        jobs = merge_jobs(profile)
    begin(jobs)
    made = [make_variant(jobs, job, force) for job in jobs]
    save(profile, jobs, made, timings)
    return merge_report(jobs, made)
