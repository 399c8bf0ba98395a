"""What stages 01-05 left, for the summary: each stage's status, 01-03's report files (checked against their
recorded hashes) and headline numbers with their source file. Never raises on a bad upstream artifact.
"""

from __future__ import annotations

import collections
from pathlib import Path

import pandas as pd

from .. import layout
from ..artifacts import MANIFEST, read_manifest, sha256_path
from .common import BENCHMARKS, FIGURE_EXTS, NOT_RUN, TABLE_EXTS, UPSTREAM, read_json, task_entry

# each stage's artifact, in its run folder
ARTIFACTS = dict(
    [
        (layout.CURATE, "curation_report.json"),
        (layout.DECONTAMINATE, "contamination_table.csv"),
        layout.FINETUNE_METRICS,
        layout.MERGE_REPORT,
        layout.EVALUATE_REPORT,
    ]
)
# key numbers: stage -> {key of its report: label}, each shown as "1,234" where the key holds a number
COUNTS = {
    layout.CURATE: {
        "loaded": "rows loaded",
        "malformed": "rows malformed",
        "filtered": "rows filtered",
        "exact_dup": "exact duplicates removed",
        "near_dup": "near duplicates removed",
        "kept": "rows kept",
    },
    layout.DECONTAMINATE: {
        "train_rows": "training rows checked",
        "benchmark_items": "benchmark items compared",
        "flagged_rows": "rows flagged",
        "removed_rows": "leaks removed (rows)",
        "clean_rows": "rows kept for training",
    },
}
FINETUNE_NUMBERS = (
    ("steps", "optimizer steps", "{:,}"),
    ("examples_train", "training examples", "{:,}"),
    ("tokens_per_s", "tokens per second", "{:.1f}"),
    ("train_wall_s", "training time (s)", "{:.0f}"),
)


def stage_seconds(timings: dict) -> float | None:
    """A stage's wall time from its manifest's timings: notebook steps (notebook_s) plus the save (wall_s)."""
    wall, steps = timings.get("wall_s"), timings.get("notebook_s")
    return wall if steps is None else round(float(steps) + float(wall or 0.0), 3)


def _artifact_details(stage: str, artifact: Path, read: list[Path]) -> tuple[str | None, dict, pd.DataFrame | None]:
    """(why it is unreadable or None, its headline numbers, contamination per benchmark or None)."""
    if artifact.suffix == ".json":
        data, err = read_json(artifact)
        if err or not isinstance(data, dict):
            return err, {}, None
        read.append(artifact)
        details = {k: v for k, v in data.items() if isinstance(v, (int, float, str, bool)) and len(str(v)) < 80}
        if stage == layout.MERGE and isinstance(data.get("models"), dict):
            details["models"] = ", ".join(sorted(data["models"]))
        if stage == layout.EVALUATE:
            details["failed"] = ", ".join(data.get("failed") or []) or "none"
        return None, details, None
    try:
        table = pd.read_csv(artifact)
        read.append(artifact)
        numeric = [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])]
        numeric = [c for c in numeric if c not in ("data_source", "benchmark")]
        if "benchmark" not in table.columns or not numeric:
            return None, {"rows": len(table)}, None
        contamination = table.groupby("benchmark", sort=True)[numeric].sum().reset_index()
        return None, {f"{c} (all benchmarks)": int(table[c].sum()) for c in numeric}, contamination
    except Exception as exc:  # noqa: BLE001 - a bad upstream file must not stop the analysis
        return f"unreadable: {type(exc).__name__}: {exc}", {}, None


def pipeline_status(profile) -> tuple[pd.DataFrame, pd.DataFrame | None, list[Path]]:
    """(one row per stage: status and headline numbers, contamination per benchmark or None, files read);
    `runner`: the stage's entry in run_summary.json as found now (inside the runner: the previous invocation's)."""
    read: list[Path] = []
    runner = _runner_record(profile)
    rows, contamination = [], None
    for stage, name in ARTIFACTS.items():
        run_dir = profile.run_dir(stage)
        artifact, manifest = run_dir / name, read_manifest(run_dir)
        read += [run_dir / MANIFEST] if manifest and (run_dir / MANIFEST).is_file() else []
        recorded = manifest or {}
        row = {"stage": stage, "artifact": str(artifact), "status": NOT_RUN, "details": ""}
        row.update(finished_at=recorded.get("finished_at", ""), wall_s=stage_seconds(recorded.get("timings") or {}))
        row["runner"] = runner.get(stage, "")
        if artifact.is_file():
            err, details, table = _artifact_details(stage, artifact, read)
            contamination = table if table is not None else contamination
            row["status"] = err or ("ok" if recorded.get("status") == "ok" else "ok (no manifest)")
            if not details and manifest:
                details = {k: v for k, v in (manifest.get("metrics") or {}).items() if isinstance(v, (int, float))}
            shown = (f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(details.items()))
            row["details"] = "; ".join(shown)
        elif manifest:
            row["status"] = f"artifact missing ({artifact.name})"
        elif row["runner"].startswith("failed"):
            row["status"] = "failed"
        rows.append(row)
    cols = ["stage", "status", "details", "artifact", "finished_at", "wall_s", "runner"]
    return pd.DataFrame(rows, columns=cols), contamination, read


def _runner_record(profile) -> dict[str, str]:
    """Stage -> "ran (12.3 s)" / "skipped: why" / "failed: error" from run_summary.json; {} without one.
    Not an input of this stage: the runner rewrites it every invocation."""
    data, _ = read_json(profile.report_dir() / "run_summary.json")
    stages = data.get("stages") if isinstance(data, dict) else None
    out = {}
    for stage, info in stages.items() if isinstance(stages, dict) else ():
        if isinstance(info, dict):
            seconds = f" ({info['seconds']} s)" if info.get("seconds") is not None else ""
            why = info.get("error") or info.get("reason")
            out[stage] = f"{info.get('status', '?')}{seconds}" + (f": {why}" if why else "")
    return out


def upstream_artifacts(profile) -> list[dict]:
    """The tables and figures 01-03 wrote into reports/<profile>/, each with its status: "ok", "not run",
    missing, or changed since its stage wrote it (hash against its manifest)."""
    out = []
    for stage, kind, name, title in UPSTREAM:
        folder = profile.report_dir("figures" if kind == "figure" else "tables")
        exts = FIGURE_EXTS if kind == "figure" else TABLE_EXTS
        files = [f for f in (folder / f"{name}.{ext}" for ext in exts) if f.is_file()]
        manifest = read_manifest(profile.run_dir(stage))
        if not files:
            status = NOT_RUN if manifest is None else f"missing: {stage} ran but {name} is not in {folder}"
        elif manifest is None:
            status = "ok (no manifest)"
        else:
            recorded = manifest.get("outputs") if isinstance(manifest.get("outputs"), dict) else {}
            changed = [f.name for f in files if recorded.get(str(f.resolve())) not in (None, sha256_path(f))]
            status = f"changed since {stage} wrote it: {', '.join(changed)}" if changed else "ok"
        entry = {"stage": stage, "kind": kind, "name": name, "title": title}
        out.append({**entry, "status": status, "files": [str(f) for f in files]})
    return out


class _Numbers:
    """Key-number rows (stage, quantity, value, source) and the files they were read from."""

    def __init__(self, profile) -> None:
        self.profile, self.rows, self.read = profile, [], []

    def add(self, stage: str, quantity: str, value: str, source) -> None:
        self.rows.append({"stage": stage, "quantity": quantity, "value": value, "source": str(source)})

    def load(self, stage: str, name: str) -> dict | None:
        """The stage's JSON artifact, or None with a row saying it is not run / unreadable."""
        path = self.profile.run_dir(stage) / name
        data, err = read_json(path) if path.is_file() else (None, NOT_RUN)
        if err or not isinstance(data, dict):
            self.add(stage, name, err or "unreadable: not a JSON object", path)
            return None
        self.read.append(path)
        return data

    def counts(self, stage: str, data: dict, path: Path) -> None:
        for key, label in COUNTS[stage].items():
            if isinstance(data.get(key), (int, float)):
                self.add(stage, label, f"{data[key]:,}", path)


def _curate_numbers(k: _Numbers) -> None:
    path = k.profile.run_dir(layout.CURATE) / ARTIFACTS[layout.CURATE]
    if (cur := k.load(layout.CURATE, path.name)) is None:
        return
    per_source = cur.get("per_source") if isinstance(cur.get("per_source"), dict) else {}
    totals = cur.get("totals")
    if not isinstance(totals, dict):  # summed over the sources
        totals = collections.Counter()
        for counts in (c for c in per_source.values() if isinstance(c, dict)):
            totals.update({key: v for key, v in counts.items() if isinstance(v, (int, float))})
    k.counts(layout.CURATE, totals, path)
    if isinstance(cur.get("per_source"), dict):
        k.add(layout.CURATE, "data sources", str(len(per_source)), path)


def _decontaminate_numbers(k: _Numbers) -> None:
    path = k.profile.run_dir(layout.DECONTAMINATE) / "decontamination_report.json"
    if (dec := k.load(layout.DECONTAMINATE, path.name)) is None:
        return
    k.counts(layout.DECONTAMINATE, dec, path)
    if isinstance(dec.get("pairs_by_category"), dict):
        by = ", ".join(f"{c} {v}" for c, v in sorted(dec["pairs_by_category"].items()))
        k.add(layout.DECONTAMINATE, "flagged pairs by category", by, path)


def _finetune_numbers(k: _Numbers) -> None:
    path = layout.artifact(k.profile, layout.FINETUNE_METRICS)
    if (ft := k.load(layout.FINETUNE, path.name)) is None:
        return
    before, after = ft.get("eval_loss_before"), ft.get("eval_loss_after")
    if isinstance(before, (int, float)) and isinstance(after, (int, float)):
        change = f"{before:.4f} → {after:.4f} ({after - before:+.4f})"
        k.add(layout.FINETUNE, "held-out loss before → after", change, path)
    history = [h.get("loss") for h in ft.get("train_loss_history") or [] if isinstance(h, dict)]
    history = [x for x in history if isinstance(x, (int, float))]
    if history:
        k.add(layout.FINETUNE, "train loss first → last logged", f"{history[0]:.4f} → {history[-1]:.4f}", path)
    for key, label, fmt in FINETUNE_NUMBERS:
        if isinstance(ft.get(key), (int, float)):
            k.add(layout.FINETUNE, label, fmt.format(ft[key]), path)


def _merge_numbers(k: _Numbers) -> None:
    path = layout.artifact(k.profile, layout.MERGE_REPORT)
    if (mr := k.load(layout.MERGE, path.name)) is None:
        return
    for name, info in sorted((mr.get("models") or {}).items()):
        if not isinstance(info, dict):
            continue
        into = f"into partner {info['partner']}" if info.get("partner") else "into its base"
        check = status = info.get("status") or ("verified" if info.get("verified") else "not verified")
        if status == "verified" and isinstance(info.get("max_abs_logit_diff"), (int, float)):
            check = f"verified, max |Δlogit| {info['max_abs_logit_diff']:.2g}"
        elif info.get("status_reason"):
            check = f"{status} ({info['status_reason']})"
        k.add(layout.MERGE, f"merged model {name}", f"{info.get('method', '?')} {into}; {check}", path)


def key_numbers(
    profile, summaries: dict[str, dict] | None = None, failed: dict | None = None
) -> tuple[list[dict], list[Path]]:
    """Headline numbers of every stage, each with the file it comes from: (rows, files read)."""
    k = _Numbers(profile)
    for stage_numbers in (_curate_numbers, _decontaminate_numbers, _finetune_numbers, _merge_numbers):
        stage_numbers(k)
    eval_report, eval_dir = layout.artifact(profile, layout.EVALUATE_REPORT), profile.run_dir(layout.EVALUATE)
    for variant, s in (summaries or {}).items():
        over = s.get("average_over") or [b for b in BENCHMARKS if task_entry(s, b)]
        partial = f" (over {len(over)} of 4)" if over and len(over) < 4 else ""
        value = NOT_RUN if s.get("average") is None else f"{100 * s['average']:.2f}{partial}"
        k.add(layout.EVALUATE, f"{variant}: leaderboard average", value, eval_dir / f"{variant}.json")
    if not summaries:
        k.add(layout.EVALUATE, "evaluated variants", NOT_RUN, eval_report)
    for variant, err in (failed or {}).items():
        k.add(layout.EVALUATE, f"{variant}: leaderboard average", f"failed: {err}", eval_report)
    return k.rows, k.read
