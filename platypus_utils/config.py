"""Run profiles: one YAML file per run, validated against a typed schema before any work.

A profile has a few global keys and one section per stage. Unknown or mistyped keys fail
with a `ProfileError` naming the key and the file, before anything runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

STAGES = ("01_curate", "02_decontaminate", "03_finetune", "04_merge", "05_evaluate", "06_analysis")
STAGE_SECTIONS = {s: s.split("_", 1)[1] for s in STAGES}  # "01_curate" -> "curate"
BENCHMARKS = ("arc_challenge", "hellaswag", "mmlu", "truthfulqa")


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, validate_default=True)


class PathsConfig(_Section):
    runs_dir: str = "runs"  # artifacts: runs/<profile>/<NN_stage>/
    reports_dir: str = "reports"  # executed notebooks, figures, tables: reports/<profile>/
    cache_dir: Optional[str] = None  # converted models, embeddings; default ~/.cache/platypus
    data_dir: Optional[str] = None  # root of real data (e.g. ../shared/data); "demo" data is written by the project


class ModelsConfig(_Section):
    base: str = "embedded:smollm2-135m-instruct"  # hub id, local path or embedded:<name>
    embedding: str = "embedded:all-minilm-l6-v2"
    torch_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on a capable GPU, else fp32


class SourceConfig(_Section):
    name: str  # demo | math | theoremqa | scibench | scienceqa | jsonl | hub
    path: Optional[str] = None  # local copy in the source's original release format
    hub_id: Optional[str] = None
    limit: Optional[int] = Field(default=None, ge=1)
    enabled: bool = True


class CurateConfig(_Section):
    sources: list[SourceConfig] = Field(default_factory=lambda: [SourceConfig(name="demo")])
    exact_dedup: bool = True
    similarity_threshold: float = Field(default=0.8, gt=0.0, le=1.0)  # paper: 0.8 (authors' code used 0.7)
    embed_batch_size: int = Field(default=64, ge=1)
    block_size: int = Field(default=2048, ge=1)  # rows per similarity block: bounds memory


class DecontaminateConfig(_Section):
    benchmarks: list[Literal["arc_challenge", "hellaswag", "mmlu", "truthfulqa"]] = Field(
        default_factory=lambda: list(BENCHMARKS))
    benchmarks_dir: str = "demo"  # "demo" (written by the project), "hub", or a directory in original formats
    compare: Literal["question", "question_choices", "question_answer"] = "question"
    similarity_threshold: float = Field(default=0.8, gt=0.0, le=1.0)
    duplicate_threshold: float = Field(default=0.95, gt=0.0, le=1.0)  # cosine at/above which a pair is near-verbatim
    ngram_n: int = Field(default=13, ge=1)  # GPT-3 / lm-eval decontamination used 13-grams
    ngram_min_tokens: int = Field(default=8, ge=1)  # shorter test texts are left to the embedding detector
    ngram_overlap_threshold: float = Field(default=0.5, gt=0.0, le=1.0)  # share of the test text's n-grams found
    verbatim_ngram_overlap: float = Field(default=0.8, gt=0.0, le=1.0)  # at/above: near-verbatim
    actions: dict[Literal["duplicate", "gray_area", "similar_but_different"], Literal["remove", "keep"]] = Field(
        default_factory=lambda: {"duplicate": "remove", "gray_area": "remove", "similar_but_different": "keep"})
    block_size: int = Field(default=2048, ge=1)
    limit_per_benchmark: Optional[int] = Field(default=None, ge=1)


class FinetuneConfig(_Section):
    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=16, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["gate_proj", "up_proj", "down_proj"])
    learning_rate: float = Field(default=4e-4, gt=0.0)
    num_train_epochs: float = Field(default=1.0, gt=0.0)
    max_steps: int = -1  # >0 overrides epochs
    per_device_train_batch_size: int = Field(default=1, ge=1)
    gradient_accumulation_steps: int = Field(default=16, ge=1)
    cutoff_len: int = Field(default=4096, ge=16)
    warmup_steps: int = Field(default=100, ge=0)
    lr_scheduler_type: str = "cosine"
    weight_decay: float = Field(default=0.0, ge=0.0)
    eval_size: int = Field(default=32, ge=1)  # held-out rows for the before/after loss
    max_train_samples: Optional[int] = Field(default=None, ge=1)
    packing: bool = False
    gradient_checkpointing: bool = False
    logging_steps: int = Field(default=5, ge=1)
    save_steps: int = Field(default=500, ge=1)
    num_gpus: int = Field(default=1, ge=1)
    load_in_4bit: bool = False
    load_in_8bit: bool = False


class MergePartnerConfig(_Section):
    name: str
    model: str  # a different fine-tune of the same base (hub id, path, embedded:)


class MergeConfig(_Section):
    merge_into_base: bool = True
    partners: list[MergePartnerConfig] = Field(default_factory=list)
    verify: bool = True
    verify_atol: float = Field(default=1e-4, gt=0.0)


class TaskConfig(_Section):
    num_fewshot: int = Field(ge=0)
    limit: Optional[float] = Field(default=None, gt=0)  # int: items; <1: fraction (lm-eval semantics)


def _leaderboard_tasks() -> dict[str, TaskConfig]:
    return {
        "arc_challenge": TaskConfig(num_fewshot=25),
        "hellaswag": TaskConfig(num_fewshot=10),
        "mmlu": TaskConfig(num_fewshot=5),
        "truthfulqa_mc2": TaskConfig(num_fewshot=0),
    }


class EvaluateConfig(_Section):
    tasks: dict[Literal["arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2"], TaskConfig] = Field(
        default_factory=_leaderboard_tasks)
    benchmarks_dir: str = "demo"  # "demo", "hub" (built-in lm-eval tasks) or a directory in original formats
    variants: list[str] = Field(default_factory=lambda: ["base", "merged"])
    batch_size: str = "auto"  # "auto" on GPU; an integer as a string on CPU
    device: str = "auto"  # auto | cpu | cuda | cuda:0
    mmlu_subjects: Optional[list[str]] = None  # None: all found
    log_samples: bool = True

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size_str(cls, v: Any) -> str:
        return str(v)


class AnalysisConfig(_Section):
    baseline: str = "base"
    formats: list[Literal["png", "pdf", "svg"]] = Field(default_factory=lambda: ["png", "pdf"])
    published_results: bool = False  # show the paper's numbers beside ours


class Profile(_Section):
    name: str
    description: str = ""
    seed: int = 42
    paths: PathsConfig = Field(default_factory=PathsConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    decontaminate: DecontaminateConfig = Field(default_factory=DecontaminateConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)

    # Where the profile was read from; set by load_profile, not by the YAML.
    source_file: Optional[str] = Field(default=None, exclude=True)

    def stage_params(self, stage: str) -> dict:
        return getattr(self, STAGE_SECTIONS[stage]).model_dump(mode="json")

    def fingerprint_params(self, stage: str) -> dict:
        """What a stage's result depends on besides its input files: recorded in its manifest,
        compared by the runner to decide whether the stage can be skipped."""
        from . import __version__

        return {
            "package_version": __version__,
            "seed": self.seed,
            "models": self.models.model_dump(mode="json"),
            "data_dir": self.paths.data_dir,
            STAGE_SECTIONS[stage]: self.stage_params(stage),
        }

    def needs_hub(self) -> bool:
        """Whether any model or data reference in this profile is a hub id."""
        from .models import is_hub_reference

        refs = [self.models.base, self.models.embedding, *(p.model for p in self.merge.partners)]
        hub_data = ("hub" in (self.decontaminate.benchmarks_dir, self.evaluate.benchmarks_dir)
                    or any(s.enabled and s.name == "hub" for s in self.curate.sources))
        return hub_data or any(is_hub_reference(r) for r in refs)

    def run_dir(self, stage: str | None = None) -> Path:
        base = Path(self.paths.runs_dir) / self.name
        return base / stage if stage else base

    def report_dir(self, kind: str | None = None) -> Path:
        base = Path(self.paths.reports_dir) / self.name
        return base / kind if kind else base

    def cache_dir(self) -> Path:
        from .models import default_cache_dir

        return Path(self.paths.cache_dir) if self.paths.cache_dir else default_cache_dir()


def _format_error(err: dict) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"unknown key '{loc}'"
    return f"key '{loc}': {err['msg']} (got {err.get('input')!r})"


def _resolve_paths(profile: Profile, root: Path) -> None:
    """Relative paths in a profile are relative to the project root (the folder holding params/)."""
    for key in ("runs_dir", "reports_dir", "cache_dir", "data_dir"):
        value = getattr(profile.paths, key)
        if value and not Path(value).is_absolute():
            setattr(profile.paths, key, str((root / value).resolve()))
    data_root = Path(profile.paths.data_dir) if profile.paths.data_dir else root
    for src in profile.curate.sources:
        if src.path and not Path(src.path).is_absolute():
            src.path = str((data_root / src.path).resolve())
    for section in (profile.decontaminate, profile.evaluate):
        if section.benchmarks_dir not in ("demo", "hub") and not Path(section.benchmarks_dir).is_absolute():
            section.benchmarks_dir = str((data_root / section.benchmarks_dir).resolve())


def project_root_for(profile_file: Path) -> Path:
    profile_file = profile_file.resolve()
    return profile_file.parent.parent if profile_file.parent.name == "params" else Path.cwd()


def load_profile(path: str | Path, overrides: dict | None = None) -> Profile:
    """Read and validate a profile. Raises ProfileError naming the file and every bad key."""
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"{path}: profile file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: a profile is a mapping of keys, got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        profile = Profile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_format_error(e) for e in exc.errors())
        raise ProfileError(f"{path}: {problems}") from None
    profile.source_file = str(path.resolve())
    _resolve_paths(profile, project_root_for(path))
    return profile
