"""Stage 04's jobs: what it makes for a profile, from what, in which dtype (`merge_jobs`, writes nothing),
and whether an existing folder is reused (`existing_output`): same inputs, unchanged: reused; this stage's
from other inputs: made again; not this stage's, or edited after it: refused unless force.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig

from .. import layout
from ..artifacts import sha256_path
from ..config import MergeSweepConfig, ModelMergeConfig, Profile
from ..models import model_content_hash, resolve_model
from .adapter import check_architecture, read_adapter
from .build import Steps, adapter_merge_steps, adapter_mix_steps, model_merge_steps
from .errors import MergeError
from .io import (
    MERGE_INFO,
    ModelMergeSpec,
    dtype_name,
    has_tokenizer,
    local_checkpoint,
    read_merge_info,
    stored_dtype,
)
from .mergekit import adapter_config, model_merge_config
from .verify import LOGIT_BOUND, VERIFY_FORMAT, WEIGHT_BOUND

log = logging.getLogger("platypus")

STAGE = layout.MERGE
METHOD, MIX_METHOD = "merge_and_unload", "add_weighted_adapter"
KIND_ADAPTER, KIND_MIX, KIND_MODELS = "adapter_into_model", "adapter_mix", "model_merge"
MERGE_FORMAT = 2  # bump when a method's arithmetic changes: old outputs then no longer count as reusable


def sweep_merges(sweep: MergeSweepConfig | None) -> list[ModelMergeConfig]:
    """The grid of layout.sweep_points as merges named by layout.sweep_variant_name."""
    out = []
    for method, weights, density in layout.sweep_points(sweep):
        if len(weights) != len(sweep.models):
            raise MergeError(
                f"merge.sweep.weights: {weights} has {len(weights)} weights for {len(sweep.models)} models"
            )
        name = layout.sweep_variant_name(method, weights, density)
        kw = dict(name=name, method=method, models=list(sweep.models), weights=list(weights), density=density)
        try:
            out.append(ModelMergeConfig(**kw, majority_sign_method=sweep.majority_sign_method, base=sweep.base))
        except ValueError as exc:  # pydantic: e.g. slerp of 3 models, weights summing to 0
            raise MergeError(f"merge.sweep: {method} with weights {weights}: {exc}") from None
    return out


def sweep_variant_names(profile: Profile) -> list[str]:
    """Names of the sweep's merged models, to list in evaluate.variants (05 evaluates what is listed)."""
    return [m.name for m in sweep_merges(profile.merge.sweep)]


def check_variant_names(profile: Profile) -> list[str]:
    """layout.planned_variants, refused when names repeat, are reserved by stage 05 or are no folder names."""
    names = layout.planned_variants(profile)
    taken = names + [p.name for p in profile.merge.partners if not p.adapter]  # 05 resolves a partner's name too
    dupes = sorted({n for n in taken if taken.count(n) > 1})
    if dupes:
        raise MergeError(
            f"merge: duplicate variant names {dupes} (merge.merged_name, partners, their merged_name, adapter_mixes, model_merges and sweep points share one namespace)"
        )
    reserved = sorted(set(taken) & set(layout.RESERVED_VARIANTS))
    if reserved:
        raise MergeError(f"merge: {reserved} are names stage 05 reserves for the unmerged models")
    bad = [n for n in taken if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", n)]
    if bad:
        raise MergeError(f"merge: names {bad} must be letters, digits, '.', '_' or '-' (they name folders)")
    return names


def needs_finetune(profile: Profile) -> bool:
    """Whether this profile's merges read stage 03's adapters."""
    cfg = profile.merge
    return bool(cfg.merge_into_base or cfg.partners or cfg.adapter_mixes)


def resolve_adapter(profile: Profile, ref: str, where: str) -> Path:
    """An adapter reference: a folder of this run's 03_finetune (adapter, partner_adapter) or a path."""
    path = Path(ref).expanduser() if ref.startswith(("/", ".", "~")) else profile.run_dir(layout.FINETUNE) / ref
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"{where}: adapter {ref!r} -> {path} has no adapter_config.json (a 03_finetune folder needs stage 03 to have made it)"
        )
    return path


def merge_dtype(setting: str, own: list[torch.dtype]) -> torch.dtype:
    """The stored dtype: merge.dtype when set; auto: the inputs' own when they share one, else float32."""
    if setting != "auto":  # one of io.MERGE_DTYPES (config checks it)
        return getattr(torch, setting)
    return own[0] if own and all(d == own[0] for d in own) else torch.float32


@dataclass
class Job:
    """One variant to make: what it is made from, in which dtype, and how to build and check it."""

    variant: str
    kind: str
    method: str
    inputs: Callable[[], dict]  # identity of what it is made from; called when the job runs
    steps: Callable[[], Steps]  # (build, check), prepared when the job runs (its inputs exist then)
    dtype: Any = None  # the torch dtype the variant is stored in
    report: dict = field(default_factory=dict)  # fields for merge_report.json
    merges: str = ""  # what goes in, for the jobs' table
    into: str = ""  # what it goes into (a model reference, a variant, or the base of a task-vector merge)
    needs: list[str] = field(default_factory=list)  # variants of this stage it reads (made earlier)
    local_inputs: list[str] = field(default_factory=list)  # folders read from outside this stage, for the manifest
    mergekit: dict | None = None  # the same merge as a mergekit config (mergekit.py); None: mergekit has none


class MergeJobs:
    """Stage 04's jobs in the profile's order (iterable), with the report's header."""

    def __init__(self, profile: Profile):
        self.profile, self.cfg = profile, profile.merge
        self.run_dir = profile.run_dir(STAGE)
        self.variants = check_variant_names(profile)
        self.cache = profile.cache_dir()
        self.base_ref = profile.models.base
        self.base_path = resolve_model(self.base_ref, self.cache)
        self.base_config = AutoConfig.from_pretrained(self.base_path)
        self.partner_models = {p.name: p.model for p in self.cfg.partners if not p.adapter}
        self.produced: dict[str, Path] = {}  # variant -> folder, in the order the jobs make them
        self.content: dict[str, str] = {}  # folder -> model_content_hash; this stage's variants: from merge_info
        self.jobs: list[Job] = []
        self.made: list[str] = []  # variants made (or reused) so far, in order (stage.make_variant)
        self.sweep = sweep_variant_names(profile)
        self.report = dict(adapter=None, adapter_base=self.base_ref, dtype=self.cfg.dtype, seed=profile.seed)
        self.report |= dict(verify_format=VERIFY_FORMAT, weight_bound=WEIGHT_BOUND, logit_bound=LOGIT_BOUND)
        self.report |= dict(models={}, sweep=self.sweep)
        self.adapter_dir = layout.artifact(profile, layout.ADAPTER)
        self.adapter_tok: list[str] = []

    def __iter__(self):
        return iter(self.jobs)

    def job(self, variant: str) -> Job:
        if job := next((j for j in self.jobs if j.variant == variant), None):
            return job
        raise KeyError(f"{variant!r} is not a variant of these merge jobs: {self.variants}")

    def content_id(self, path: str | Path) -> str | None:
        key = str(path)
        if key not in self.content and Path(key).is_dir():
            self.content[key] = model_content_hash(key)
        return self.content.get(key)

    def model_path(self, ref: str, where: str) -> str:
        """A variant made earlier in this stage, "base", a partner's name, or a model reference."""
        if ref in self.produced:
            return str(self.produced[ref])
        if ref in self.variants:
            raise MergeError(f"{where}: {ref!r} is made later in this stage than {where}; reorder the profile")
        if ref == layout.BASE_VARIANT:
            return self.base_path
        return local_checkpoint(resolve_model(self.partner_models.get(ref, ref), self.cache))

    def own_dtype(self, path: str) -> torch.dtype:
        """The stored dtype of a model folder (a variant of this stage: the one it is made in)."""
        made = self.made_as(path)
        return self.job(made).dtype if made else stored_dtype(path)

    def made_as(self, path: str | None) -> str | None:
        """The variant of this stage stored at `path`, if any."""
        return next((v for v, p in self.produced.items() if str(p) == str(path)), None)

    def _add(self, job: Job, reads: list[str]) -> None:
        job.needs = [v for v in map(self.made_as, reads) if v]
        job.local_inputs = [str(p) for p in reads if p and not self.made_as(p)]
        self.jobs.append(job)
        self.produced[job.variant] = self.run_dir / job.variant

    def adapter_job(self, variant: str, ref: str, source: str, adapter: Path, tok: list[str], partner) -> None:
        _, deltas = read_adapter(adapter)
        dtype = merge_dtype(self.cfg.dtype, [self.own_dtype(source)])
        made_from = {"method": METHOD, "model_ref": ref, "adapter_sha256": sha256_path(adapter)}
        made_from |= {"adapter_base_ref": self.base_ref, "dtype": dtype_name(dtype)}
        report = dict(base=ref, base_path=source, partner=partner, adapter=str(adapter.resolve()))
        report["adapter_base"] = self.base_ref

        def inputs() -> dict:
            return made_from | {"model_content_sha256": self.content_id(source)}

        steps = partial(adapter_merge_steps, source, adapter, deltas, tok, dtype, self.cfg.verify_atol, variant)
        job = Job(variant, KIND_ADAPTER, METHOD, inputs, steps, dtype, report, f"{adapter.parent.name}/{adapter.name}")
        job.into, job.mergekit = ref, adapter_config(source, adapter, dtype)
        self._add(job, [str(adapter), source])

    def add_adapter_merges(self) -> None:
        """The adapter into models.base (merge.merged_name) and into each partner (its merged_name)."""
        cfg, base_path = self.cfg, self.base_path
        if not (cfg.merge_into_base or cfg.partners):
            return
        adapter_config, _ = read_adapter(self.adapter_dir)
        self.report["adapter"] = str(self.adapter_dir.resolve())
        self.adapter_tok = [str(self.adapter_dir)] if has_tokenizer(self.adapter_dir) else []
        recorded_base = adapter_config.get("base_model_name_or_path")
        if recorded_base and recorded_base not in (self.base_ref, base_path):
            log.warning(
                f"adapter was trained on {recorded_base!r}; merging it into models.base {self.base_ref!r} ({base_path})"
            )
        tok = self.adapter_tok + [base_path]
        if cfg.merge_into_base:
            self.adapter_job(layout.merged_variant(self.profile), self.base_ref, base_path, self.adapter_dir, tok, None)
        for seed, variant in layout.seed_variants(self.profile).items():  # finetune.seeds' adapters
            if seed != self.profile.seed:
                adapter = layout.seed_adapter(self.profile, seed)
                if not (adapter / "adapter_config.json").is_file():
                    raise FileNotFoundError(f"{adapter}: no adapter for finetune.seeds {seed}; run stage 03_finetune")
                self.adapter_job(variant, self.base_ref, base_path, adapter, tok, None)
        for partner in cfg.partners:
            self.add_partner(partner)

    def add_partner(self, partner) -> None:
        """A partner (built first from its own adapter when it has one) and the adapter merged into it."""
        path = resolve_model(partner.model, self.cache)
        label = f"partner {partner.name!r} ({partner.model})"
        base_label = f"models.base ({self.base_ref}, the adapter's base)"
        check_architecture(AutoConfig.from_pretrained(path), self.base_config, label, base_label)
        ref = partner.model
        if partner.adapter:  # build the partner fine-tune here: its own adapter merged into its model
            own = resolve_adapter(self.profile, partner.adapter, f"merge.partners[{partner.name}].adapter")
            self.adapter_job(partner.name, partner.model, path, own, [path, str(own), self.base_path], None)
            path, ref = str(self.produced[partner.name]), f"{STAGE}/{partner.name}"
        elif path == self.base_path:
            log.warning(
                f"partner {partner.name!r} is models.base itself: its merge equals {layout.merged_variant(self.profile)!r}"
            )
        tok = [path] + self.adapter_tok + [self.base_path]
        self.adapter_job(layout.partner_merged_variant(partner), ref, path, self.adapter_dir, tok, partner.name)

    def add_adapter_mix(self, mix) -> None:
        where = f"merge.adapter_mixes[{mix.name}]"
        dirs = [resolve_adapter(self.profile, a, where) for a in mix.adapters]
        into = self.model_path(mix.into or layout.BASE_VARIANT, where)
        if mix.into and mix.into not in self.produced:
            label, base_label = f"{where}.into ({mix.into})", f"models.base ({self.base_ref})"
            check_architecture(AutoConfig.from_pretrained(into), self.base_config, label, base_label)
        dtype = merge_dtype(self.cfg.dtype, [self.own_dtype(into)])
        keys = {"combination_type", "weights", "density", "svd_rank", "majority_sign_method"}
        made_from = {"method": MIX_METHOD, **mix.model_dump(include=keys)}
        made_from |= {"adapters_sha256": [sha256_path(d) for d in dirs], "into_ref": mix.into or self.base_ref}
        made_from |= {"dtype": dtype_name(dtype), "format": MERGE_FORMAT}
        made_from["seed"] = self.profile.seed if mix.combination_type.startswith("dare") else None
        report = dict(base=mix.into or self.base_ref, base_path=into, adapters=[str(d.resolve()) for d in dirs])
        report |= dict(weights=list(mix.weights), density=mix.density, svd_rank=mix.svd_rank)
        tok = [into] + [str(d) for d in dirs if has_tokenizer(d)] + [self.base_path]

        def inputs() -> dict:
            return made_from | {"into_content_sha256": self.content_id(into)}

        steps = partial(adapter_mix_steps, into, dirs, mix, tok, dtype, self.profile.seed, self.cfg.verify_atol)
        job = Job(mix.name, KIND_MIX, f"{MIX_METHOD}:{mix.combination_type}", inputs, steps, dtype, report)
        job.merges, job.into = " + ".join(d.name for d in dirs), mix.into or self.base_ref
        self._add(job, [str(d) for d in dirs] + [into])

    def add_model_merge(self, mm: ModelMergeConfig, sweep: bool) -> None:
        where = f"merge.sweep ({mm.name})" if sweep else f"merge.model_merges[{mm.name}]"
        paths = [self.model_path(r, where) for r in mm.models]
        uses_base = mm.method not in ("linear", "slerp")
        base_dir = self.model_path(mm.base or layout.BASE_VARIANT, where) if uses_base else None
        keys = set("name method weights density majority_sign_method normalize rescale int8_mask".split())
        kw = mm.model_dump(include=keys) | dict(models=paths, labels=list(mm.models), base=base_dir)
        spec = ModelMergeSpec(**kw, base_label=(mm.base or self.base_ref) if uses_base else None, lam=mm.lambda_)
        dtype = merge_dtype(mm.dtype or self.cfg.dtype, [self.own_dtype(p) for p in [*paths, base_dir] if p])
        options = spec.options
        opts = {"normalize": options.normalize, "rescale": options.rescale, "lambda": options.lam}
        sign = mm.majority_sign_method if mm.method in ("peft_ties", "peft_dare_ties") else None
        made_from = dict(method=mm.method, weights=list(mm.weights), density=mm.density, majority_sign_method=sign)
        made_from |= opts | {"dtype": dtype_name(dtype), "format": MERGE_FORMAT}
        made_from["seed"] = self.profile.seed if "dare" in mm.method else None

        report = dict(models=list(mm.models), model_paths=paths, weights=list(mm.weights), density=mm.density)
        report |= dict(options=opts, base=spec.base_label, base_path=base_dir, sweep=sweep)

        def inputs() -> dict:
            models = [[label, self.content_id(p)] for label, p in zip(spec.labels, spec.models)]
            base = [spec.base_label, self.content_id(spec.base)] if spec.uses_base else None
            return made_from | {"models": models, "base": base}

        steps = partial(model_merge_steps, spec, spec.models + [self.base_path], dtype, self.profile.seed)
        job = Job(mm.name, KIND_MODELS, mm.method, inputs, steps, dtype, report, " + ".join(mm.models))
        job.into, job.mergekit = spec.base_label or "", model_merge_config(spec, dtype)
        self._add(job, paths + [base_dir])


def merge_jobs(profile: Profile) -> MergeJobs:
    """Every job of stage 04 for this profile. Writes nothing."""
    jobs = MergeJobs(profile)
    jobs.add_adapter_merges()
    for mix in jobs.cfg.adapter_mixes:
        jobs.add_adapter_mix(mix)
    for mm in list(jobs.cfg.model_merges) + sweep_merges(jobs.cfg.sweep):
        jobs.add_model_merge(mm, sweep=mm.name in jobs.sweep)
    if [j.variant for j in jobs.jobs] != jobs.variants:  # the layout and the jobs must not drift apart
        raise RuntimeError(f"merge jobs {[j.variant for j in jobs.jobs]} != layout.planned_variants {jobs.variants}")
    if not jobs.jobs:
        log.warning(
            "nothing to merge: merge.merge_into_base is false and no partners, adapter_mixes, model_merges or sweep are given"
        )
    return jobs


def existing_output(job: Job, out_dir: Path, inputs: dict, force: bool) -> str | None:
    """None: reuse (same inputs, files unchanged), absent or forced; the reason when made from other inputs
    (it is made again). MergeError: no readable MERGE_INFO (not this stage's), or its files edited after."""
    if not out_dir.exists() or force:
        return None
    info = read_merge_info(out_dir)
    recorded = (info or {}).get("inputs", {})
    changed = sorted(k for k in set(inputs) | set(recorded) if inputs.get(k) != recorded.get(k))
    if info is None:
        why = f"it has no readable {MERGE_INFO}"
    elif changed:
        why = "its inputs differ: " + ", ".join(f"{k} {recorded.get(k)!r} -> {inputs.get(k)!r}" for k in changed)
        log.warning("%s: replacing %s: %s", job.variant, out_dir, why)  # an adapter trained again: made again
        return why
    elif info.get("content_sha256") != model_content_hash(out_dir):
        why = "its files changed after the merge"
    else:
        return None
    raise MergeError(
        f"{out_dir} already exists and {why}; pass --force (force=True in the notebook, run_merge(profile, force=True)) to overwrite it"
    )
