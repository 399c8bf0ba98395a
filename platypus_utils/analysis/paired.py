"""Paired statistics: each comparison's change per MMLU subject, category and benchmark. With both models'
samples a seeded paired bootstrap (subjects resampled separately, one-question subjects pooled), exact McNemar
(sign-flip for a group or mc2) and BH q-values per comparison and level; else normal from sqrt(se_a^2 + se_b^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import stats
from ..lmeval_io import EvalRun, mmlu_categories
from .common import (
    ALL_SUBJECTS,
    BENCHMARKS,
    CATEGORY_LABELS,
    UNCATEGORISED,
    category_order,
    mean_se,
    missing,
    n_text,
    pct,
    subjects_text,
    task_entry,
)
from .frames import Comparison
from .setups import setup_text, version_text


@dataclass(frozen=True)
class StatsSettings:
    """How intervals and tests are made (analysis.confidence, n_bootstrap, fdr_alpha; the profile's seed)."""

    confidence: float = stats.DEFAULT_CONFIDENCE
    n_boot: int = stats.DEFAULT_N_BOOT
    alpha: float = 0.05
    seed: int = 0

    @classmethod
    def from_profile(cls, profile) -> StatsSettings:
        cfg = profile.analysis
        return cls(cfg.confidence, cfg.n_bootstrap, cfg.fdr_alpha, profile.seed)


PAIRED, UNPAIRED, NO_ERROR = "paired bootstrap", "unpaired normal", "no error"
DELTA_COLUMNS = (
    "comparison kind variant reference level unit category n reference_score variant_score delta se "
    "ci_low ci_high p_value p_mc_error p_resamples q_value significant test interval discordant_b "
    "discordant_c note variant_setup reference_setup"
).split()


NO_ERROR_FIELDS = {"se": None, "ci_low": None, "ci_high": None, "p_value": None, "test": "", "interval": NO_ERROR}


def normal_fields(delta: float, se, st: StatsSettings, test: str) -> dict:
    """se, normal interval and p of a change in points (UNPAIRED); NO_ERROR without a standard error."""
    if missing(se):
        return NO_ERROR_FIELDS
    lo, hi, p = stats.unpaired_interval(delta, se, 0.0, st.confidence)
    return {"se": se, "ci_low": lo, "ci_high": hi, "p_value": p, "test": test, "interval": UNPAIRED}


def _scores(run: EvalRun, bench: str, subject: str) -> pd.Series | None:
    s = run.samples
    if s.empty:
        return None
    hit = s[(s["benchmark"] == bench) & (s["subject"] == subject)]
    return None if hit.empty else hit.set_index("doc_id")["score"]


def _unit(
    x: pd.Series | None, y: pd.Series | None, v: tuple, r: tuple, st: StatsSettings, rng: np.random.Generator
) -> tuple[dict, np.ndarray | None, np.ndarray | None]:
    """One subject or benchmark: (row fields, bootstrap draws, per-question differences); v and r: (score,
    stderr, n) from the summaries, used (unpaired) without per-question scores."""
    if x is not None and y is not None:
        common = x.index.intersection(y.index)
        if len(common):
            xs, ys = x.loc[common].to_numpy(float), y.loc[common].to_numpy(float)
            d = xs - ys
            draws = stats.bootstrap_means(d, st.n_boot, rng)
            lo, hi = stats.percentile_interval(draws, st.confidence)
            binary = stats.is_binary(xs, ys)
            b, c = stats.discordant(xs, ys) if binary else (None, None)
            exact = stats.FlipP(stats.mcnemar_exact(b, c)) if binary else None
            flip = exact or stats.sign_flip_groups([d], st.n_boot, st.seed, st.alpha)
            dropped = max(len(x), len(y)) - len(common)
            single = len(common) == 1  # one question resamples to itself: no interval to show
            notes = [f"paired on {len(common)} common questions ({dropped} in one model only)"] if dropped else []
            fields = {"n": len(common), "reference_score": 100 * ys.mean(), "variant_score": 100 * xs.mean()}
            fields.update(delta=100 * d.mean(), se=None, ci_low=None, ci_high=None, interval=PAIRED)
            if not single:
                fields.update(se=100 * float(draws.std(ddof=1)), ci_low=100 * lo, ci_high=100 * hi)
            fields.update(p_value=flip.p, p_mc_error=flip.mc_error, p_resamples=flip.n, discordant_b=b, discordant_c=c)
            fields["test"] = "McNemar exact" if binary else "sign-flip"
            fields["note"] = "; ".join(notes + (["one question: no interval"] if single else []))
            return fields, draws, d
    row = {"n": v[2], "reference_score": pct(r[0]), "variant_score": pct(v[0])}
    row.update(delta=100 * (v[0] - r[0]), discordant_b=None, discordant_c=None)
    row["note"] = "no per-question scores: unpaired error"
    if v[1] is None or r[1] is None:
        return {**row, **NO_ERROR_FIELDS}, None, None
    lo, hi, p = stats.unpaired_interval(v[0] - r[0], v[1], r[1], st.confidence)
    row.update(se=100 * math.hypot(v[1], r[1]), ci_low=100 * lo, ci_high=100 * hi, p_value=p)
    return {**row, "test": "z (unpaired)", "interval": UNPAIRED}, None, None


def _group(
    rows: list[dict], draws: list, diffs: list, st: StatsSettings, rng: np.random.Generator, pool: bool = True
) -> dict:
    """The mean over members (a category, all of MMLU, the average): stratified paired bootstrap (one-question
    subjects pooled, `pool`) and sign-flip test when every member is paired, else normal from sqrt(sum se_i^2)/k."""
    out = {"n": sum(int(r["n"]) for r in rows) if all(r["n"] for r in rows) else None}
    out.update({k: float(np.mean([r[k] for r in rows])) for k in ("reference_score", "variant_score", "delta")})
    out.update(discordant_b=None, discordant_c=None)
    if all(d is not None for d in draws):
        mean_draws = np.mean(stats.pool_singletons(draws, diffs, rng) if pool else draws, axis=0)
        paired = all(d is not None for d in diffs)
        flip = stats.sign_flip_groups(diffs, st.n_boot, st.seed, st.alpha) if paired else stats.FlipP(math.nan)
        lo, hi = stats.percentile_interval(mean_draws, st.confidence)
        b, c = [r["discordant_b"] for r in rows], [r["discordant_c"] for r in rows]
        if all(x is not None for x in b + c):
            out.update(discordant_b=sum(b), discordant_c=sum(c))
        out.update(se=100 * float(mean_draws.std(ddof=1)), ci_low=100 * lo, ci_high=100 * hi, p_value=flip.p)
        out.update(p_mc_error=flip.mc_error, p_resamples=flip.n, test="sign-flip (stratified)", interval=PAIRED)
        return {**out, "note": ""}
    se = mean_se(r["se"] for r in rows)
    partly = any(r["interval"] == PAIRED for r in rows)
    note = "some members without per-question scores: normal interval" if partly else ""
    return {**out, **normal_fields(out["delta"], se, st, "z"), "note": "a member has no error" if se is None else note}


def _summary_pair(run: EvalRun, bench: str, subject: str = "") -> tuple:
    s = run.summary
    if subject:
        t = (s.get("mmlu_subjects") or {}).get(subject) or {}
        return t.get("acc"), t.get("stderr"), t.get("n")
    t = task_entry(s, bench) or {}
    return t.get("value"), t.get("stderr"), t.get("n")


def _setups(v: EvalRun, r: EvalRun, bench: str, subject: str = "") -> dict:
    """The two runs' own settings for a unit (setups.setup_text), with task versions where they differ."""
    versions = version_text(v, bench, subject) != version_text(r, bench, subject)
    return {
        "variant_setup": setup_text(v, bench, subject, versions),
        "reference_setup": setup_text(r, bench, subject, versions),
    }


def compare(runs: dict[str, EvalRun], c: Comparison, st: StatsSettings, index: int = 0) -> tuple[list[dict], list[str]]:
    """Every row of one comparison (subjects, categories, all, benchmarks, average) and its notes."""
    rng = np.random.default_rng([st.seed, index])
    v, r = runs[c.variant], runs[c.reference]
    head = {"comparison": c.label, "kind": c.kind, "variant": c.variant, "reference": c.reference}
    notes = []
    vs, rs = v.summary.get("mmlu_subjects") or {}, r.summary.get("mmlu_subjects") or {}
    common = sorted(s for s in set(vs) & set(rs) if vs[s].get("acc") is not None and rs[s].get("acc") is not None)
    for who, mine, other in ((c.variant, vs, rs), (c.reference, rs, vs)):
        only = sorted(set(mine) - set(other))
        if only and common:
            shown = ", ".join(only[:5]) + (" ..." if len(only) > 5 else "")
            note = f"{c.label}: {len(only)} MMLU subject(s) only in {who} ({shown}): "
            notes.append(note + f"compared on the {len(common)} common subjects")
    rows, members = [], {}
    for s in common:
        cat = vs[s].get("category") or rs[s].get("category") or mmlu_categories().get(s, UNCATEGORISED)
        summary = _summary_pair(v, "mmlu", s), _summary_pair(r, "mmlu", s)
        fields, draws, d = _unit(_scores(v, "mmlu", s), _scores(r, "mmlu", s), *summary, st, rng)
        rows.append({**head, "level": "subject", "unit": s, "category": cat, **fields, **_setups(v, r, "mmlu", s)})
        members.setdefault(cat, []).append((rows[-1], draws, d))
    every = [m for cat in category_order(members) for m in members[cat]]
    for cat in category_order(members) + ([ALL_SUBJECTS] if every else []):
        group_rows, group_draws, group_diffs = zip(*(every if cat == ALL_SUBJECTS else members[cat]))
        fields = _group(group_rows, group_draws, group_diffs, st, rng)
        rows.append({**head, "level": "category", "unit": cat, "category": cat, **fields, **_setups(v, r, "mmlu")})
    bench_rows, bench_draws, bench_weighted = [], [], []
    for bench in BENCHMARKS:
        if bench == "mmlu":
            if every:
                bench_rows.append({**rows[-1], "level": "benchmark", "unit": "mmlu", "category": ""})
                paired = all(m[1] is not None for m in every)
                pooled = stats.pool_singletons([m[1] for m in every], [m[2] for m in every], rng) if paired else []
                bench_draws.append(np.mean(pooled, axis=0) if paired else None)
                bench_weighted.append([(m[2], 1.0 / (len(every) * len(m[2]))) for m in every] if paired else None)
            continue
        vp, rp = _summary_pair(v, bench), _summary_pair(r, bench)
        if vp[0] is None or rp[0] is None:
            continue
        fields, draws, d = _unit(_scores(v, bench, ""), _scores(r, bench, ""), vp, rp, st, rng)
        unit = {**head, "level": "benchmark", "unit": bench, "category": ""}
        bench_rows.append({**unit, **fields, **_setups(v, r, bench)})
        bench_draws.append(draws)
        bench_weighted.append([(d, 1.0 / len(d))] if d is not None else None)
    rows += bench_rows
    if len(bench_rows) == len(BENCHMARKS):
        avg = _group(bench_rows, bench_draws, [None] * len(bench_rows), st, rng, pool=False)
        if avg["interval"] == PAIRED and all(w is not None for w in bench_weighted):
            # the average's test: every question's difference sign-flipped, weighted as it counts in the
            # average (a benchmark 1/4; within MMLU a subject 1/57 of that)
            parts = [(d, w / len(bench_weighted)) for members in bench_weighted for d, w in members]
            weights = np.concatenate([np.full(len(d), w) for d, w in parts])
            flip = stats.sign_flip_test(np.concatenate([d for d, _ in parts]), weights, st.n_boot, st.seed, st.alpha)
            avg.update(p_value=flip.p, p_mc_error=flip.mc_error, p_resamples=flip.n, test="sign-flip (weighted)")
        rows.append({**head, "level": "benchmark", "unit": "average", "category": "", **avg})
    return rows, notes


def paired_delta_frame(
    runs: dict[str, EvalRun], pairs: list[Comparison], st: StatsSettings | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """One row per comparison and unit (level: subject, category, benchmark) in points, with interval, p and BH
    q-value (family: one comparison's units of one level); `significant`: q <= alpha. Subjects sorted by change."""
    st = st or StatsSettings()
    compared = [compare(runs, c, st, k) for k, c in enumerate(pairs)]
    rows, notes = [r for got, _ in compared for r in got], [n for _, ns in compared for n in ns]
    frame = pd.DataFrame(rows, columns=DELTA_COLUMNS)
    for col in "q_value p_value p_mc_error p_resamples ci_low ci_high se discordant_b discordant_c n".split():
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    for _, idx in frame.groupby(["comparison", "level"], sort=False).groups.items():
        frame.loc[idx, "q_value"] = stats.bh_adjust(frame.loc[idx, "p_value"].to_numpy(float))
    frame["significant"] = frame["q_value"].le(st.alpha)
    subject = frame["level"] == "subject"  # subjects sorted by change; categories, benchmarks as made
    keys = pd.DataFrame(
        {
            "rank": frame["comparison"].map({c.label: k for k, c in enumerate(pairs)}),
            "level": frame["level"].map({"subject": 0, "category": 1, "benchmark": 2}),
            "delta": np.where(subject, frame["delta"], 0.0),
            "tie": np.where(subject, frame["unit"], [f"{k:08d}" for k in range(len(frame))]),
        }
    )
    order = keys.sort_values(["rank", "level", "delta", "tie"], kind="mergesort").index
    return frame.loc[order].reset_index(drop=True), notes


def level(frame: pd.DataFrame, name: str, comparison: str | None = None) -> pd.DataFrame:
    out = frame[frame["level"] == name]
    return out if comparison is None else out[out["comparison"] == comparison]


def power_lines(frame: pd.DataFrame, st: StatsSettings, change: float = 5.0, power: float = 0.8) -> list[str]:
    """Per comparison and category: questions a `change`-point change needs (two-sided McNemar, alpha 0.05,
    `power`) at the discordance observed there, or an assumed 0.20."""
    out = []
    for comp, g in level(frame, "category").groupby("comparison", sort=False):
        parts = []
        for _, r in g[g["unit"] != ALL_SUBJECTS].iterrows():
            discordant = r["discordant_b"] + r["discordant_c"]
            observed = discordant / r["n"] if pd.notna(r["discordant_b"]) and r["n"] else None
            psi = observed if observed is not None and observed >= change / 100 else 0.20
            need = stats.questions_for_change(change / 100, psi, 0.05, power)
            how = f"observed discordance {psi:.2f}" if psi is observed else "assumed discordance 0.20"
            parts.append(f"{CATEGORY_LABELS.get(r['unit'], r['unit'])} {need:,} ({how}; has {n_text(r['n'])})")
        if parts:
            out.append(f"{comp}: " + "; ".join(parts))
    return out


def verdict(frame: pd.DataFrame, comparison: str, st: StatsSettings) -> str:
    """One sentence: how many subjects change beyond chance after the FDR correction."""
    d = level(frame, "subject", comparison)
    sig = d[d["significant"]]
    n = n_text(d["n"].sum()) if d["n"].notna().all() and len(d) else "n/a"
    tested = int(d["p_value"].notna().sum())
    if not tested:
        return f"{comparison}: no subject can be tested (no per-question scores or standard errors)."
    if sig.empty:
        return (
            f"{comparison}: no subject changes beyond chance at n = {n} questions over {subjects_text(len(d))} "
            f"(Benjamini-Hochberg, FDR {st.alpha:g})."
        )
    up, down = int((sig["delta"] > 0).sum()), int((sig["delta"] < 0).sum())
    return (
        f"{comparison}: {len(sig)} of {subjects_text(tested)} change beyond chance (Benjamini-Hochberg, FDR "
        f"{st.alpha:g}; {up} up, {down} down) at n = {n} questions: "
        + ", ".join(f"{r['unit']} {r['delta']:+.1f}" for _, r in sig.sort_values("delta").iterrows())
        + "."
    )


METHOD_TEXTS = {
    PAIRED: "paired bootstrap over questions (subjects resampled separately; one-question subjects pooled)",
    UNPAIRED: "UNPAIRED normal sqrt(se_a² + se_b²) where a model has no logged samples",
    NO_ERROR: "none where a standard error is missing",
}


def method_text(rows: pd.DataFrame) -> str:
    methods = set(rows["interval"]) if not rows.empty else set()
    return "; ".join(text for method, text in METHOD_TEXTS.items() if method in methods) or "none"
