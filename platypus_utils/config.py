"""Run profiles: one YAML file per run, validated against a typed schema before any work.
Unknown or mistyped keys fail with a `ProfileError` naming the key and the file."""

from __future__ import annotations

import contextlib
import copy
import re
import string
from functools import cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Optional

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from . import mergekit_yaml
from .drive import DRIVE_PREFIX, resolve_drive_path
from .layout import (
    BASE_VARIANT,
    DEFAULT_MERGED_VARIANT,
    DENSITY_METHODS,
    MERGEKIT_METHODS,
    PEFT_MERGE_METHODS,
    STAGES,
    evaluable_variants,
    merged_variant,
    planned_variants,
    seed_variants,
)
from .published import BENCHMARKS, PUBLISHED, SETTINGS, TEST_SETS
from .refs import RANDOM_PREFIX, default_cache_dir, is_hub_reference
from .training_options import LORA_DEFAULTS, MOVED_FINETUNE_KEYS, SFT_DEFAULTS, OptionError, check_lora, check_sft

STAGE_SECTIONS = {s: s.split("_", 1)[1] for s in STAGES}  # "01_curate" -> "curate"


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the file and the key."""


def _plain_name(value: str) -> str:
    """A name that becomes a folder (profile, variant): plain, so paths made from it stay inside their root."""
    bad = not value or value.strip() != value or value in (".", "..")
    if bad or any(c in value for c in "/\\") or any(ord(c) < 32 for c in value):
        raise ValueError(
            f"{value!r} is not a plain folder name (not empty, not '.' or '..', no '/' or '\\', "
            "no leading or trailing spaces): it names a folder"
        )
    return value


PlainName = Annotated[str, AfterValidator(_plain_name)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, validate_default=True)


class PathsConfig(_Section):
    # each may be "drive:REL" (Google Drive on Colab; drive.resolve_drive_path)
    runs_dir: str = Field(default="runs", min_length=1)  # artifacts: runs/<profile>/<NN_stage>/
    reports_dir: str = Field(default="reports", min_length=1)  # executed notebooks, figures, tables: reports/<profile>/
    cache_dir: Optional[str] = None  # converted models, embeddings; default ~/.cache/platypus
    data_dir: Optional[str] = None  # root of real data (e.g. ../shared/data); "demo" data is written by the project


class ModelsConfig(_Section):
    base: str = "embedded:smollm2-135m-instruct"  # hub id, local path or embedded:<name>
    embedding: str = "embedded:all-minilm-l6-v2"
    torch_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on a capable GPU, else fp32
    embedding_backend: Literal["auto", "torch", "openvino"] = "auto"  # auto: OpenVINO on the CPU, else torch


class SourceConfig(_Section):
    name: str  # demo | math | theoremqa | scibench | scienceqa | prm800k | arb | jsonl | hub
    path: Optional[str] = None  # local copy in the source's original release format
    hub_id: Optional[str] = None
    limit: Optional[int] = Field(default=None, ge=1)
    # after dedup: <1 keeps a seeded sample, >1 repeats rows (1.5: all once, a seeded half twice)
    weight: float = Field(default=1.0, gt=0.0)
    enabled: bool = True


class CurateConfig(_Section):
    sources: list[SourceConfig] = Field(default_factory=lambda: [SourceConfig(name="demo")])
    exact_dedup: bool = True
    similarity_threshold: float = Field(default=0.8, gt=0.0, le=1.0)  # paper: 0.8 (authors' code used 0.7)
    embed_batch_size: int = Field(default=64, ge=1)
    block_size: int = Field(default=2048, ge=1)  # rows per similarity block: bounds memory
    # faiss (extra "faiss"): the same pairs; faiss_ivf: approximate from 50k rows on, exact below
    backend: Literal["numpy", "faiss", "faiss_ivf"] = "numpy"
    push_to_hub: bool = False  # upload curated rows as a hub dataset; token from $HF_TOKEN
    push_to_hub_repo: Optional[str] = None  # e.g. "me/open-platypus-rebuild"; required with push_to_hub
    push_to_hub_private: bool = True
    # a row with a field over this many characters is logged, counted, and kept, cut or dropped; null: no limit
    max_row_chars: Optional[int] = Field(default=100_000, ge=1)
    over_long_rows: Literal["keep", "truncate", "drop"] = "keep"


def _over_defaults(defaults: dict[str, Any], *checks, kind: Any = dict[str, Any]) -> Any:
    """A mapping whose partial value overrides `defaults` key by key, then passes `checks`."""

    def over(v: Any) -> Any:
        return {**copy.deepcopy(defaults), **v} if isinstance(v, dict) else v

    return Annotated[(kind, BeforeValidator(over), *(AfterValidator(c) for c in checks))]


DETECTORS = ("embedding", "ngram", "answer", "judge")  # decontaminate/detectors.py: what each reads, when it flags
DEFAULT_ACTIONS = {"duplicate": "remove", "gray_area": "remove", "similar_but_different": "keep"}
Actions = dict[Literal[tuple(DEFAULT_ACTIONS)], Literal["remove", "keep"]]  # per category of flagged pair


class DecontaminateConfig(_Section):
    benchmarks: list[Literal[TEST_SETS]] = Field(default_factory=lambda: list(TEST_SETS))
    benchmarks_dir: str = "demo"  # "demo" (written by the project), "hub", or a directory in original formats
    # embedding (cosine), ngram (overlap), answer (cosine and answer agree), judge (leak_judge over candidates)
    detectors: list[Literal[DETECTORS]] = Field(default_factory=lambda: list(DETECTORS), min_length=1)
    # how a test item is read (a pair scores its best view); "question_only" is read by the judge only
    views: list[Literal["question", "full", "question_only"]] = Field(
        default_factory=lambda: ["question", "full", "question_only"], min_length=1
    )
    search_outputs: bool = True  # training outputs are embedded and n-gram-indexed too, not only instruction+input
    # long training texts are embedded in windows sharing this fraction; cosine = max over windows
    window_overlap: float = Field(default=0.5, ge=0.0, lt=1.0)
    judge_threshold: float = Field(default=0.6, gt=0.0, le=1.0)  # candidates the judge reads (detector "judge")
    judge_model: Optional[str] = None  # None: leak_judge's default for the machine
    similarity_threshold: float = Field(default=0.8, gt=0.0, le=1.0)
    duplicate_threshold: float = Field(default=0.95, gt=0.0, le=1.0)  # cosine at/above which a pair is near-verbatim
    ngram_n: int = Field(default=13, ge=1)  # GPT-3 / lm-eval decontamination used 13-grams
    ngram_min_tokens: int = Field(default=8, ge=1)  # shorter test texts are left to the embedding detector
    ngram_overlap_threshold: float = Field(default=0.5, gt=0.0, le=1.0)  # share of the test text's n-grams found
    verbatim_ngram_overlap: float = Field(default=0.8, gt=0.0, le=1.0)  # at/above: near-verbatim
    # at duplicate_threshold, this share of the test's words in the train text: near-verbatim, else gray-area
    verbatim_word_share: float = Field(default=0.8, gt=0.0, le=1.0)
    answer_detector_threshold: Optional[float] = Field(default=0.6, gt=0.0, le=1.0)  # null: the answer detector off
    actions: _over_defaults(DEFAULT_ACTIONS, kind=Actions) = Field(default_factory=dict)  # partial: others' defaults
    block_size: int = Field(default=2048, ge=1)
    limit_per_benchmark: Optional[int] = Field(default=None, ge=1)
    # reviewer's decisions per pair_id: CSV (pair_id,decision) or YAML (pair_id: keep | remove) (decisions.py)
    decisions: Optional[str] = None
    # test items the exact pass reads: "first_pass" those a cheap pass finds (decontaminate/candidates.py)
    candidates: Literal["first_pass", "exhaustive"] = "first_pass"
    first_pass_top_k: int = Field(default=10, ge=1)
    engine: Literal["local", "ray"] = "local"  # "ray": Ray Data over blocks of ray_block_rows (docs/ray.md)
    ray_address: Optional[str] = None  # a running cluster ("auto", "ray://head:10001"); None: start a local one
    ray_num_cpus: Optional[int] = Field(default=None, ge=1)  # the local cluster's CPUs (None: all of this machine's)
    ray_block_rows: int = Field(default=1000, ge=1)  # training rows per block (one map_batches call)
    ray_actors: Optional[int] = Field(default=None, ge=1)  # per pool, each holding the embedder; None: what fits
    ray_cpus_per_actor: float = Field(default=1.0, gt=0.0)  # also the torch threads of each actor
    ray_gpus_per_actor: float = Field(default=0.0, ge=0.0)  # > 0: the embedder runs on the actor's GPU


class _OptionsSection(_Section):
    """A section whose flat keys that moved into an option mapping fail saying where they live now (MOVED)."""

    MOVED: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    def _moved(cls, data: Any) -> Any:
        for key in data if isinstance(data, dict) else ():
            if key in cls.MOVED:
                raise OptionError(key, f"moved: write it as {cls.MOVED[key]}")
        return data


PARTNER_SFT_DEFAULTS = {"max_steps": 4}  # partner_adapter.sft's own default, over finetune.sft
PARTNER_MOVED_KEYS = ("max_steps", "learning_rate", "gradient_accumulation_steps")  # now under partner_adapter.sft


class PartnerAdapterConfig(_OptionsSection):
    """A second, small LoRA trained by 03 on another slice of the data (03_finetune/partner_adapter)."""

    MOVED: ClassVar[dict[str, str]] = {k: f"finetune.partner_adapter.sft.{k}" for k in PARTNER_MOVED_KEYS}

    data_sources: list[str] = Field(min_length=1)  # rows of clean.jsonl whose data_source is one of these
    # SFTConfig options over finetune.sft (max_steps 4 unless set); the stage sets logging_steps=1, no checkpoint and
    # at most half the steps of warm-up itself, whatever is given here
    sft: _over_defaults(PARTNER_SFT_DEFAULTS, check_sft) = Field(default_factory=dict)


class FinetuneConfig(_OptionsSection):
    # `sft` goes to trl.SFTConfig(**sft), `lora` to peft.LoraConfig (keys checked at load: training_options)
    MOVED: ClassVar[dict[str, str]] = MOVED_FINETUNE_KEYS

    sft: _over_defaults(SFT_DEFAULTS, check_sft) = Field(default_factory=dict)
    lora: _over_defaults(LORA_DEFAULTS, check_lora) = Field(default_factory=dict)
    cutoff_len: int = Field(default=4096, ge=16)  # tokens per example (SFTConfig.max_length; rows cut keep_start)
    eval_size: int = Field(default=32, ge=1)  # held-out rows for the before/after loss
    max_train_samples: Optional[int] = Field(default=None, ge=1)
    # "bfd" (or true): TRL best-fit-decreasing packing; "bfd_split" splits examples over cutoff_len
    packing: Literal[False, "bfd", "bfd_split"] = False
    # an optimizer step holds global_batch_size "examples" (the paper's) or tokens_per_step "tokens"
    batch_unit: Literal["examples", "tokens"] = "examples"
    # examples per optimizer step over all GPUs (the paper's 16); null: from sft's batch and accumulation
    global_batch_size: Optional[int] = Field(default=16, ge=1)
    tokens_per_step: Optional[int] = Field(default=None, ge=1)  # batch_unit: tokens only
    group_by_length: bool = False  # unpacked batches of similar lengths (less padding); not with packing
    attn_implementation: Literal[
        "auto", "eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3"
    ] = "auto"  # auto: flash_attention_2 if installed on GPU, else sdpa
    use_liger_kernel: Literal["auto", True, False] = "auto"  # auto: on when liger-kernel is installed, on GPU
    resume: Literal["auto", "never"] = "auto"  # auto: resume from the last checkpoint of the same params and data
    num_gpus: int = Field(default=1, ge=1)
    accelerate_config: Optional[str] = None  # with num_gpus > 1: accelerate/{ddp,fsdp,fsdp_qlora,zero3}.yaml
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    # "examples" (the authors'): mean of each example's mean token loss; "tokens" (TRL's): mean over tokens
    loss_normalization: Literal["examples", "tokens"] = "examples"
    seeds: list[int] = Field(default_factory=list)  # beside `seed`: variants <merge.merged_name>-seed<seed>
    partner_adapter: Optional[PartnerAdapterConfig] = None  # a second LoRA: see PartnerAdapterConfig

    @field_validator("packing", mode="before")
    def _packing_strategy(cls, v: Any) -> Any:
        if v is True:
            return "bfd"
        if v in (None, "none", "no"):
            return False
        if v == "wrapped":
            raise ValueError(
                "'wrapped' packing lets attention cross example boundaries and separates "
                "responses from their prompts; use 'bfd' (or 'bfd_split')"
            )
        return v

    @model_validator(mode="after")
    def _speed_options_consistent(self):
        if self.group_by_length and self.packing:
            raise ValueError("group_by_length groups unpacked examples; it has no use with packing")
        if self.num_gpus > 1 and not self.accelerate_config:
            raise ValueError(
                f"num_gpus={self.num_gpus} needs accelerate_config: accelerate/ddp.yaml, "
                "accelerate/fsdp.yaml, accelerate/fsdp_qlora.yaml or accelerate/zero3.yaml"
            )
        if self.accelerate_config and not self.accelerate_config.endswith((".yaml", ".yml")):
            raise ValueError(f"accelerate_config {self.accelerate_config!r}: expected an accelerate YAML file")
        if self.tokens_per_step is not None and self.batch_unit != "tokens":
            raise ValueError(
                "tokens_per_step sizes steps in tokens: set batch_unit: tokens (the default, "
                "examples, takes global_batch_size examples per step)"
            )
        if self.packing == "bfd_split" and self.batch_unit != "tokens":
            raise ValueError(
                "packing bfd_split splits long examples across packed rows: use it with "
                "batch_unit: tokens (batch_unit examples keeps whole examples, truncated at cutoff_len)"
            )
        if self.batch_unit == "tokens" and not self.packing:
            raise ValueError("batch_unit: tokens sizes steps of packed rows: set packing: bfd")
        self._accumulation_set_once()
        self.examples_step_plan(self.num_gpus)  # a step that misses its target fails here, at load
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds {self.seeds}: each seed once")
        return self

    def _accumulation_set_once(self) -> None:
        """gradient_accumulation_steps comes from global_batch_size, or from sft where that is null."""
        partner = self.partner_adapter.sft if self.partner_adapter else {}
        for where, options in (("sft", self.sft), ("partner_adapter.sft", partner)):
            if self.global_batch_size is not None and "gradient_accumulation_steps" in options:
                raise OptionError(
                    f"{where}.gradient_accumulation_steps",
                    f"finetune.global_batch_size ({self.global_batch_size} examples per step) sets the "
                    "accumulation for any number of GPUs; change it, or set global_batch_size: null to set "
                    "the accumulation here",
                )

    def examples_step_plan(self, world_size: int) -> tuple[int, int]:
        """(accumulation steps, examples per step) on `world_size` processes; ValueError when over 10% off target."""
        per_device = self.sft["per_device_train_batch_size"]
        if self.global_batch_size is None:
            gas = self.sft.get("gradient_accumulation_steps", 1)
            return gas, per_device * gas * world_size
        target = self.global_batch_size
        gas = max(1, round(target / (per_device * world_size)))
        got = gas * per_device * world_size
        if abs(got - target) > 0.1 * target:
            raise ValueError(
                f"global_batch_size={target} cannot be met with sft.per_device_train_batch_size={per_device} on "
                f"{world_size} process(es): the closest step is {got} examples ({gas} accumulated), "
                f"{abs(got - target) / target:.0%} off; choose sft.per_device_train_batch_size x num_gpus that "
                f"divides {target}"
            )
        return gas, got


MergeMethod = Literal[MERGEKIT_METHODS + PEFT_MERGE_METHODS]
MERGEKIT_NORMALIZE = {"linear": True, "task_arithmetic": False, "ties": True, "dare_linear": False, "dare_ties": False}
MERGEKIT_RESCALE = {"ties": False, "dare_linear": True, "dare_ties": True}  # DARE: L1 norm kept (mergekit's rescale)
MERGEKIT_CONSENSUS = ("ties", "dare_ties")  # sign election from the weighted task vectors; int8_mask applies
MERGEKIT_LAMBDA = ("task_arithmetic", "ties", "dare_linear", "dare_ties")  # mergekit's `lambda` scales the mixed vector
AdapterCombination = Literal["linear", "cat", "ties", "dare_linear", "dare_ties", "svd"]


def _check_weights_and_density(weights: list, inputs: list, kind: str, method: str, density, how: str) -> None:
    """One weight per input, and a density exactly where the method takes one (an adapter mix, a merge)."""
    if len(weights) != len(inputs):
        raise ValueError(f"{len(weights)} weights for {len(inputs)} {kind}")
    needs_density = method in DENSITY_METHODS
    if needs_density != (density is not None):
        raise ValueError(f"density is {'required' if needs_density else 'not used'} with {how} {method}")


class MergePartnerConfig(_Section):
    name: PlainName  # the partner's own variant name (evaluated as it is: e.g. stablebeluga-13b)
    model: str  # a different fine-tune of the same base (hub id, path, embedded:)
    merged_name: Optional[PlainName] = None  # the adapter merged into this partner; None: "<name>-platypus"
    adapter: Optional[str] = None  # a LoRA merged into `model` first: a folder of 03_finetune or a path


class AdapterMixConfig(_Section):
    """Several LoRA adapters combined by peft's add_weighted_adapter, then merged into `into`."""

    name: PlainName  # variant name in merge_report.json
    adapters: list[str] = Field(min_length=2)  # folders of this run's 03_finetune (adapter, partner_adapter) or paths
    weights: list[float]
    combination_type: AdapterCombination = "cat"
    density: Optional[float] = Field(default=None, gt=0.0, le=1.0)  # ties, dare_*: share of values kept
    svd_rank: Optional[int] = Field(default=None, ge=1)  # svd: None = the largest input rank
    majority_sign_method: Literal["total", "frequency"] = "total"
    into: Optional[str] = None  # what the mix is merged into: a variant of this stage or a reference; None: models.base

    @model_validator(mode="after")
    def _consistent(self):
        _check_weights_and_density(
            self.weights, self.adapters, "adapters", self.combination_type, self.density, "combination_type"
        )
        if self.svd_rank is not None and self.combination_type != "svd":
            raise ValueError("svd_rank is only used with combination_type svd")
        return self


class ModelMergeConfig(_Section):
    """Full models (fine-tunes of one base) merged tensor by tensor; normalize, rescale, lambda and int8_mask are
    mergekit's (None: the method's default). `{name, mergekit: <mapping or path.yml>}` is translated at load."""

    model_config = ConfigDict(populate_by_name=True)  # over _Section's: `lambda` is also read as lambda_

    name: PlainName
    method: MergeMethod
    models: list[str] = Field(min_length=2)  # variants of this stage (merged, a partner...) or model references
    weights: list[float]
    density: Optional[float] = Field(default=None, gt=0.0, le=1.0)  # ties, dare_*, peft_*
    majority_sign_method: Literal["total", "frequency"] = "total"  # peft_ties, peft_dare_ties
    base: Optional[str] = None  # the common base of the task vectors; None: models.base
    normalize: Optional[bool] = None  # mergekit's: divide by the (agreeing) weights' sum (linear, ta, ties, dare_*)
    rescale: Optional[bool] = None  # mergekit's: keep each trimmed task vector's L1 norm (ties, dare_*)
    lambda_: float = Field(default=1.0, alias="lambda")  # mergekit's: scales the mixed task vector
    int8_mask: bool = False  # mergekit's (ties, dare_ties): the mask's dtype there; no effect on the values
    dtype: Optional[Literal["float32", "float16", "bfloat16"]] = None  # stored dtype; None: merge.dtype

    @model_validator(mode="after")
    def _consistent(self):
        _check_weights_and_density(self.weights, self.models, "models", self.method, self.density, "method")
        if self.method == "slerp" and len(self.models) != 2:
            raise ValueError(f"slerp merges exactly 2 models, got {len(self.models)}")
        if self.method == "slerp" and sum(self.weights) == 0:
            raise ValueError(f"{self.method}: the weights sum to 0")
        if self.method == "linear" and self.normalize is not False and sum(self.weights) == 0:
            raise ValueError("linear: the weights sum to 0 (normalize: false sums them unnormalised)")
        self._check_mergekit_parameters()
        return self

    def _check_mergekit_parameters(self) -> None:
        given = {  # parameter: (set, the methods that take it)
            "normalize": (self.normalize is not None, MERGEKIT_NORMALIZE),
            "rescale": (self.rescale is not None, MERGEKIT_RESCALE),
            "int8_mask": (self.int8_mask, MERGEKIT_CONSENSUS),
            "lambda": (self.lambda_ != 1.0, MERGEKIT_LAMBDA),
        }
        unused = [key for key, (on, methods) in given.items() if on and self.method not in methods]
        if unused:
            raise ValueError(f"{', '.join(unused)} not used with method {self.method}")
        if self.majority_sign_method != "total" and self.method not in ("peft_ties", "peft_dare_ties"):
            raise ValueError(
                f"majority_sign_method {self.majority_sign_method!r} is peft's: use peft_ties or peft_dare_ties "
                f"({self.method} elects the sign of the weighted sum, as mergekit does)"
            )


class MergeSweepConfig(_Section):
    """A grid of full-model merges, variants sweep-<method>-w<w1>_<w2>[-d<density>] (merge.sweep_variant_names)."""

    models: list[str] = Field(min_length=2)
    methods: list[MergeMethod] = Field(min_length=1)
    weights: list[list[float]] = Field(min_length=1)
    densities: list[float] = Field(default_factory=lambda: [0.5])
    majority_sign_method: Literal["total", "frequency"] = "total"
    base: Optional[str] = None

    @field_validator("densities")
    def _densities_in_range(cls, v: list[float]) -> list[float]:
        if not v or any(not 0.0 < d <= 1.0 for d in v):
            raise ValueError(f"densities must be in (0, 1], got {v}")
        return v


class MergeConfig(_Section):
    merge_into_base: bool = True
    merged_name: PlainName = DEFAULT_MERGED_VARIANT  # the adapter merged into models.base (e.g. platypus2-13b)
    partners: list[MergePartnerConfig] = Field(default_factory=list)
    adapter_mixes: list[AdapterMixConfig] = Field(default_factory=list)
    model_merges: list[ModelMergeConfig] = Field(default_factory=list)
    sweep: Optional[MergeSweepConfig] = None
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # stored; auto: each model's own
    verify: bool = True
    verify_atol: float = Field(default=1e-4, gt=0.0)  # absolute floor of the logit check's tolerance


class TaskConfig(_Section):
    num_fewshot: int = Field(ge=0)
    limit: Optional[float] = Field(default=None, gt=0)  # int: items; <1: fraction (lm-eval semantics)


LEADERBOARD_SHOTS = {b: SETTINGS[b]["num_fewshot"] for b in BENCHMARKS}


DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")  # what evaluate.device accepts
BATCH_SIZE_RE = re.compile(r"auto(:[1-9]\d*)?|[1-9]\d*")  # lm-eval's --batch_size: auto, auto:N or N >= 1


class ReferenceConfig(_Section):
    """A released model evaluated as it is beside the variants (reproduction error vs harness drift)."""

    name: PlainName  # its variant name in 05's results (must not clash with another variant)
    model: str  # hub id (pin it: "org/name@<commit>"), local path, embedded: or random:
    compare_to: Optional[str] = None  # the variant it is the released counterpart of (compared paired)
    published: Optional[Literal[tuple(PUBLISHED)]] = None  # its row in published.PUBLISHED (compared unpaired)


class EvaluateConfig(_Section):
    # the tasks to run (not merged with the defaults); num_fewshot defaults to LEADERBOARD_SHOTS
    tasks: dict[Literal[BENCHMARKS], TaskConfig] = Field(default_factory=lambda: dict.fromkeys(BENCHMARKS))
    benchmarks_dir: str = "demo"  # "demo", "hub" (built-in lm-eval tasks) or a directory in original formats
    variants: list[str] = Field(default_factory=lambda: [BASE_VARIANT, DEFAULT_MERGED_VARIANT])
    batch_size: str = "auto"  # auto | auto:N | N (lm-eval's): "auto" on GPU; an integer on CPU
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    mmlu_subjects: Optional[list[str]] = None  # None: all found
    log_samples: bool = True
    parallelize: Literal["auto", True, False] = "auto"  # lm-eval's; auto: when the model does not fit one GPU
    model_args: dict[str, Any] = Field(default_factory=dict)  # extra HFLM arguments (lm-eval --model_args)
    backend: Literal["hf", "vllm"] = "hf"  # lm-eval's model: "hf" (HFLM) or "vllm" (needs vllm and a CUDA GPU)
    references: list[ReferenceConfig] = Field(default_factory=list)

    @field_validator("tasks", mode="before")
    def _tasks_default_shots(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        out = {}
        for task, settings in v.items():
            settings = {} if settings is None else settings
            if isinstance(settings, dict) and task in LEADERBOARD_SHOTS:
                settings = {"num_fewshot": LEADERBOARD_SHOTS[task], **settings}
            out[task] = settings
        return out

    @field_validator("batch_size", mode="before")
    def _batch_size_str(cls, v: Any) -> str:
        text = str(v).strip()
        if isinstance(v, bool) or not BATCH_SIZE_RE.fullmatch(text):
            raise ValueError("expected auto, auto:N or a positive integer (lm-eval's --batch_size)")
        return text

    @field_validator("device")
    def _known_device(cls, v: str) -> str:
        if not DEVICE_RE.fullmatch(v):
            raise ValueError("expected auto, cpu, cuda, cuda:N (N a GPU index) or mps")
        return v


class AnalysisConfig(_Section):
    baseline: str = BASE_VARIANT
    formats: list[Literal["png", "pdf", "svg"]] = Field(default_factory=lambda: ["png", "pdf"])
    published_results: bool = False  # show the paper's numbers beside ours
    confidence: float = Field(default=0.95, gt=0, lt=1)  # interval coverage
    n_bootstrap: int = Field(default=2000, ge=100)  # paired bootstrap resamples (and sign-flip permutations)
    fdr_alpha: float = Field(default=0.05, gt=0, lt=1)  # Benjamini-Hochberg false discovery rate per family


HUB_PLACEHOLDERS = ("profile", "variant")  # what export.repo_id may name


class ExportConfig(_Section):
    """`platypus push PROFILE` (export.py): the adapter and merged models uploaded to the hub."""

    push_to_hub: bool = False
    repo_id: str = "{profile}-{variant}"  # {profile} and {variant} filled in; without "namespace/", the token's user
    private: bool = True
    variants: list[str] = Field(default_factory=list)  # empty: the adapter and every variant 04 made

    @field_validator("repo_id")
    def _repo_pattern(cls, v: str) -> str:
        names = {f[1] for f in string.Formatter().parse(v) if f[1] is not None}
        if names - set(HUB_PLACEHOLDERS) or "variant" not in names:
            raise ValueError("name {variant} (one repo per variant) and only {profile} and {variant}")
        filled = v.format(profile="p", variant="v")
        if not re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*", filled):
            raise ValueError("expected [namespace/]name: letters, digits, '.', '_' and '-'")
        return v


class PlanConfig(_Section):
    """`platypus plan` (plan.py): the GPU a run is planned for and the data assumptions; no stage reads it."""

    base_config: Optional[str] = None  # folder with the base's config.json; None: models.base's own
    gpu: Literal["a100", "h100", "h200"] = "a100"  # dense bf16 peak: A100 312, H100/H200 989 TFLOP/s
    gpu_memory_gb: float = Field(default=80.0, gt=0)  # GiB per GPU the plan must fit
    mfu: float = Field(default=0.4, gt=0, le=1)  # model-FLOP utilisation assumed for wall time (6 N per token)
    train_examples: Optional[int] = Field(default=None, ge=1)  # None: 02's clean.jsonl, else Open-Platypus's
    mean_example_tokens: Optional[float] = Field(default=None, gt=0)  # None: measured / plan.py's default
    eval_gpus: Optional[int] = Field(default=None, ge=1)
    eval_mfu_hf: Optional[float] = Field(default=None, gt=0, le=1)  # None: plan.mfu
    eval_mfu_vllm: float = Field(default=0.5, gt=0, le=1)
    eval_target_hours: float = Field(default=4.0, gt=0)  # every model in this many hours on one eval_target_gpu
    eval_target_gpu: Literal["a100", "h100", "h200"] = "h100"


class Profile(_Section):
    name: PlainName  # runs/<name>/, reports/<name>/: a plain folder name
    description: str = ""
    seed: int = 42
    # "rebuild" from the sources, or "as_released" (the authors' rows, passed through by 01 and 02)
    training_data: Literal["rebuild", "as_released"] = "rebuild"
    paths: PathsConfig = Field(default_factory=PathsConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    decontaminate: DecontaminateConfig = Field(default_factory=DecontaminateConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    plan: PlanConfig = Field(default_factory=PlanConfig)  # `platypus plan` only
    export: ExportConfig = Field(default_factory=ExportConfig)  # `platypus push` only
    source_file: Optional[str] = Field(default=None, exclude=True)  # set by load_profile

    @model_validator(mode="after")
    def _seeds_differ_from_seed(self):
        """finetune.seeds exclude `seed`; each seed's merge is evaluated after the merge into the base."""
        if self.seed in self.finetune.seeds:
            raise ValueError(
                f"finetune.seeds {self.finetune.seeds} holds the profile's own seed {self.seed}: list the others"
            )
        variants = self.evaluate.variants
        merged = merged_variant(self)
        if merged in variants:
            missing = [v for v in seed_variants(self).values() if v not in variants]
            at = variants.index(merged) + 1
            self.evaluate.variants = variants[:at] + missing + variants[at:]
        return self

    def stage_params(self, stage: str) -> dict:
        return getattr(self, STAGE_SECTIONS[stage]).model_dump(mode="json")

    def fingerprint_params(self, stage: str) -> dict:
        """What a stage's result depends on besides its input files (the runner's skip check)."""
        from . import __version__

        return {
            "package_version": __version__,
            "seed": self.seed,
            "training_data": self.training_data,
            "models": self.models.model_dump(mode="json"),
            "data_dir": self.paths.data_dir,
            STAGE_SECTIONS[stage]: self.stage_params(stage),
        }

    def model_refs(self) -> list[tuple[str, Any, str]]:
        """(profile key, section, attribute) of every model reference: the one list of them (hub.hub_references)."""
        return [
            ("models.base", self.models, "base"),
            ("models.embedding", self.models, "embedding"),
            *((f"merge.partners[{i}].model", p, "model") for i, p in enumerate(self.merge.partners)),
            *((f"evaluate.references[{i}].model", r, "model") for i, r in enumerate(self.evaluate.references)),
        ]

    def needs_hub(self) -> bool:
        """Whether any model or data reference in this profile is a hub id."""
        hub_data = (
            "hub" in (self.decontaminate.benchmarks_dir, self.evaluate.benchmarks_dir)
            or any(s.enabled and s.name == "hub" for s in self.curate.sources)
            or self.curate.push_to_hub
        )
        return hub_data or any(is_hub_reference(getattr(section, a)) for _, section, a in self.model_refs())

    def run_dir(self, stage: str | None = None) -> Path:
        """runs_dir/<name>[/<stage>]: each part a plain folder name, so the path stays inside runs_dir."""
        return Path(self.paths.runs_dir, _plain_name(self.name), *([_plain_name(stage)] if stage else []))

    def report_dir(self, kind: str | None = None) -> Path:
        """reports_dir/<name>[/<kind>], inside reports_dir as run_dir is inside runs_dir."""
        return Path(self.paths.reports_dir, _plain_name(self.name), *([_plain_name(kind)] if kind else []))

    def cache_dir(self) -> Path:
        return Path(self.paths.cache_dir) if self.paths.cache_dir else default_cache_dir()


def parse_set(items: list[str] | None) -> dict:
    """`--set KEY=VALUE` items -> {dotted key: value}, each value read as YAML."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ProfileError(f"--set {item!r}: expected KEY=VALUE, e.g. finetune.sft.max_steps=10")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key or "" in key.split("."):
            raise ProfileError(f"--set {item!r}: the key {key!r} has an empty part; write KEY=VALUE, e.g. seed=1")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ProfileError(f"--set {item!r}: the value is not valid YAML ({exc.problem or exc})") from None
    return out


def _format_error(err: dict) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    option = err.get("ctx", {}).get("error")
    if isinstance(option, OptionError):  # finetune.sft / finetune.lora: the key inside the mapping
        return f"key '{'.'.join(p for p in (loc, option.key) if p)}': {option}"
    if err["type"] == "extra_forbidden":
        return f"unknown key '{loc}'"
    msg = err["msg"].removeprefix("Value error, ")
    return f"key '{loc}': {msg} (got {err.get('input')!r})"


def _resolve_paths(profile: Profile, root: Path) -> None:
    """Relative paths from the project root; source and benchmark paths from paths.data_dir when set."""

    def under(base: Path, value: str) -> str:
        return value if Path(value).is_absolute() else str((base / value).resolve())

    for key in ("runs_dir", "reports_dir", "cache_dir", "data_dir"):
        value = getattr(profile.paths, key)
        if value and value.startswith(DRIVE_PREFIX):
            try:
                value = resolve_drive_path(value, root)
            except ValueError as exc:
                raise ProfileError(f"{profile.source_file}: key 'paths.{key}': {exc}") from None
        setattr(profile.paths, key, value and under(root, value))
    data_root = Path(profile.paths.data_dir or root)
    for src in profile.curate.sources:
        src.path = src.path and under(data_root, src.path)
    for section in (profile.decontaminate, profile.evaluate):
        if section.benchmarks_dir not in ("demo", "hub"):
            section.benchmarks_dir = under(data_root, section.benchmarks_dir)
    for section, key in ((profile.decontaminate, "decisions"), (profile.finetune, "accelerate_config")):
        setattr(section, key, getattr(section, key) and under(root, getattr(section, key)))
    for _, holder, attr in profile.model_refs():
        ref = getattr(holder, attr)
        if ref.startswith(("./", "../")):
            setattr(holder, attr, str((root / ref).resolve()))
        elif ref.startswith(RANDOM_PREFIX):  # random:<config folder>
            setattr(holder, attr, RANDOM_PREFIX + under(root, ref.removeprefix(RANDOM_PREFIX)))


def project_root_for(profile_file: Path) -> Path:
    """Where relative paths start: the nearest folder above the profile with pyproject.toml or params/, else its own."""
    profile_file = Path(profile_file).resolve()
    for folder in profile_file.parents:
        if (folder / "pyproject.toml").is_file() or (folder / "params").is_dir():
            return folder
    return profile_file.parent


def _check_export(profile: Profile, path: Path) -> None:
    cfg = profile.export
    if cfg.push_to_hub and not profile.needs_hub():
        raise ProfileError(
            f"{path}: key 'export.push_to_hub': this profile references nothing on the hub, so it runs offline "
            "(its stages set HF_HUB_OFFLINE); an offline profile cannot push: turn export.push_to_hub off, or "
            "use a profile with hub models"
        )
    known = ["adapter", *planned_variants(profile)]
    unknown = [v for v in cfg.variants if v not in known]
    if unknown:
        raise ProfileError(f"{path}: key 'export.variants': {unknown} not made by this run (choose from {known})")


def _check_variants(profile: Profile, path: Path) -> None:
    known = evaluable_variants(profile)
    unknown = [v for v in profile.evaluate.variants if v not in known]
    if unknown:
        raise ProfileError(
            f"{path}: key 'evaluate.variants': unknown variant(s) {', '.join(map(repr, unknown))}; "
            f"this profile can evaluate: {', '.join(known)}"
        )
    seen: set[str] = set()
    for i, ref in enumerate(profile.evaluate.references):
        if ref.name in known or ref.name in seen:
            raise ProfileError(
                f"{path}: key 'evaluate.references.{i}.name': {ref.name!r} is already a variant or reference name"
            )
        seen.add(ref.name)
        if ref.compare_to is not None and ref.compare_to not in profile.evaluate.variants:
            raise ProfileError(
                f"{path}: key 'evaluate.references.{i}.compare_to': {ref.compare_to!r} is not in "
                f"evaluate.variants ({', '.join(profile.evaluate.variants)})"
            )


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's SafeLoader, refusing a key written twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        lines: dict = {}  # key -> the line it is first written on
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *anchor" merges are allowed
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            with contextlib.suppress(TypeError):  # an unhashable key: construct_mapping says so itself
                if key in lines:
                    raise DuplicateKey(
                        f"line {line}: key {str(key)!r} is written twice (first on line {lines[key]}); write it once"
                    )
                lines[key] = line
        return super().construct_mapping(node, deep)


class DuplicateKey(yaml.YAMLError):
    """A key written twice in one mapping of a profile."""


def read_profile_yaml(path: Path) -> dict:
    """The profile file as a mapping: UTF-8, valid YAML, no key twice, not empty (ProfileError naming the file)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read the profile: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ProfileError(
            f"{path}: not UTF-8 text: byte 0x{data[exc.start]:02x} at byte position {exc.start} (line {line}); "
            "save the profile as UTF-8"
        ) from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except DuplicateKey as exc:
        raise ProfileError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from None
    if raw is None or raw == {}:
        raise ProfileError(f"{path}: empty profile: key 'name' is missing (a profile sets at least `name:`)")
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: a profile is a mapping of keys, got {type(raw).__name__}")
    return raw


@cache
def _default_tree() -> dict:
    """Every key's default, as the YAML would write it."""
    return Profile(name="defaults").model_dump(mode="json")


def _list_index(key: str, items: list, where: str, path: Path, dotted: str) -> int:
    if not key.isdigit() or int(key) >= len(items):
        indexes = f"indexes 0..{len(items) - 1}" if items else "the list is empty"
        raise ProfileError(
            f"{path}: --set {dotted}: key '{where}': {key!r} is not an index of the list "
            f"'{where.rsplit('.', 1)[0]}' ({indexes}); to add items, set the whole list"
        )
    return int(key)


def apply_override(raw: dict, dotted: str, value: Any, path: Path) -> None:
    """Set `dotted` (list items by index: curate.sources.0.limit) in the raw profile; a missing mapping or
    list on the way starts from its default; a path through a value is a ProfileError."""
    keys = dotted.split(".")
    node: Any = raw
    default: Any = _default_tree()
    for depth, key in enumerate(keys):
        where = ".".join(keys[: depth + 1])
        if isinstance(node, list):
            key = _list_index(key, node, where, path, dotted)
            child_default = default[key] if isinstance(default, list) and key < len(default) else None
        else:
            child_default = default.get(key) if isinstance(default, dict) else None
        if depth == len(keys) - 1:
            node[key] = value
            return
        if isinstance(node, dict) and node.get(key) is None:  # a mapping or list on the way starts from its default
            node[key] = copy.deepcopy({} if depth == 0 or child_default is None else child_default)
        node, default = node[key], child_default
        if not isinstance(node, (dict, list)):
            raise ProfileError(
                f"{path}: --set {dotted}: key '{where}' holds a value ({node!r}), not a mapping or a list: "
                f"set '{where}' itself"
            )


def _translate_mergekit_merges(raw: dict, path: Path) -> None:
    """merge.model_merges entries given as mergekit configs ({name, mergekit}), translated in place."""
    section = raw.get("merge")
    merges = section.get("model_merges") if isinstance(section, dict) else None
    for i, entry in enumerate(merges if isinstance(merges, list) else []):
        if isinstance(entry, dict) and "mergekit" in entry:
            source = entry["mergekit"] if isinstance(entry["mergekit"], str) else "inline"
            try:
                merges[i] = mergekit_yaml.translate_entry(entry, project_root_for(path))
            except mergekit_yaml.MergekitConfigError as exc:
                raise ProfileError(f"{path}: key 'merge.model_merges.{i}.mergekit' ({source}): {exc}") from None


def load_profile(path: str | Path, overrides: dict | None = None) -> Profile:
    """Read and validate a profile. Raises ProfileError naming the file and every bad key."""
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"{path}: profile file not found")
    raw = read_profile_yaml(path)
    raw.setdefault("name", path.stem)
    for dotted, value in (overrides or {}).items():
        apply_override(raw, dotted, value, path)
    _translate_mergekit_merges(raw, path)
    try:
        profile = Profile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_format_error(e) for e in exc.errors())
        raise ProfileError(f"{path}: {problems}") from None
    profile.source_file = str(path.resolve())
    _resolve_paths(profile, project_root_for(path))
    if profile.finetune.accelerate_config and not Path(profile.finetune.accelerate_config).is_file():
        raise ProfileError(f"{path}: key 'finetune.accelerate_config': {profile.finetune.accelerate_config} not found")
    _check_variants(profile, path)
    _check_export(profile, path)
    return profile
