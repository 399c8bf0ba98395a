"""Checks a run must pass before any stage downloads weights or trains (runner layer): the hub mode and
access, the merge partners' architecture, the GPUs asked for, and the LoRA target modules. Each failure is
a ProfileError naming the profile key (exit status 2).
"""

from __future__ import annotations

import logging

import torch
from transformers import AutoConfig

from .config import Profile, ProfileError
from .hub import apply_hub_mode, check_hub_access
from .models import CONFIG_FILES, architecture_differences, resolve_model, target_module_problem

log = logging.getLogger("platypus")


def _load_config(ref: str, cache_dir):
    """A model's config (of a pinned hub reference, only its config.json is fetched)."""
    return AutoConfig.from_pretrained(resolve_model(ref, cache_dir, allow_patterns=CONFIG_FILES))


def check_partner_architectures(profile: Profile) -> None:
    """Each merge partner must have models.base's architecture (read from config.json)."""
    partners = [(i, p) for i, p in enumerate(profile.merge.partners) if p.model != profile.models.base]
    if not partners:
        return
    base = _load_config(profile.models.base, profile.cache_dir())
    for i, partner in partners:
        differ, vocab = architecture_differences(_load_config(partner.model, profile.cache_dir()), base)
        if vocab:
            log.warning(
                "merge.partners[%d].model %s: vocab_size %s, models.base %s (a fine-tune that added tokens: the "
                "adapter still merges, the partner's tokenizer is kept)",
                i,
                partner.model,
                *vocab["vocab_size"],
            )
        if differ:
            detail = ", ".join(f"{k} {a} (base {b})" for k, (a, b) in differ.items())
            raise ProfileError(
                f"{profile.source_file}: key 'merge.partners[{i}].model': {partner.model} is not a "
                f"fine-tune of models.base {profile.models.base}: {detail}. The adapter was trained "
                "on the base, so it only merges into models of the same architecture"
            )


def check_target_modules(profile: Profile) -> None:
    """A list of finetune.lora.target_modules must name modules of models.base (from its config.json);
    a hub model not in the local cache is left to the stage, which checks the loaded model."""
    targets = profile.finetune.lora.get("target_modules")
    if not isinstance(targets, list):
        return  # a string is a regular expression: peft's to match
    if problem := target_module_problem(profile.models.base, targets, profile.cache_dir()):
        raise ProfileError(f"{profile.source_file or profile.name}: key 'finetune.lora.target_modules': {problem}")


def check_devices(profile: Profile, stages: list[str]) -> None:
    where = profile.source_file or profile.name
    gpus = torch.cuda.device_count()
    ft = profile.finetune
    if "03_finetune" in stages:
        if ft.num_gpus > 1 and ft.num_gpus > gpus:
            raise ProfileError(
                f"{where}: key 'finetune.num_gpus': {ft.num_gpus} GPUs asked for, {gpus} visible "
                f"here; set finetune.num_gpus to at most {max(gpus, 1)} (global_batch_size keeps "
                "the step at the same number of examples)"
            )
        for flag in ("load_in_4bit", "load_in_8bit"):
            if getattr(ft, flag) and gpus == 0:
                raise ProfileError(
                    f"{where}: key 'finetune.{flag}': bitsandbytes quantization needs a CUDA GPU; none is visible here"
                )
    if "05_evaluate" in stages and profile.evaluate.device.startswith("cuda") and gpus == 0:
        raise ProfileError(
            f"{where}: key 'evaluate.device': {profile.evaluate.device!r} but no CUDA GPU is "
            "visible here; use auto or cpu"
        )


def preflight(profile: Profile, stages: list[str]) -> None:
    check_target_modules(profile)
    log.info("hub: %s", apply_hub_mode(profile))
    check_devices(profile, stages)
    if any(s[:2] <= "05" for s in stages):
        check_hub_access(profile)
    if "04_merge" in stages:
        check_partner_architectures(profile)
