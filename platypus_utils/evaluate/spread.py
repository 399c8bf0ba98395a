"""Variants spread over the GPUs: one worker process per group of GPUs, each evaluating whole variants.

The workers only fill the eval cache under the keys a sequential run uses; the stage's own pass then
finds every result there, and evaluates again, in-process, a variant whose worker failed.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
from collections.abc import Callable

import torch

from ..config import Profile
from .models import ModelSpec, lm_settings, weights_bytes
from .tasks import TaskSuite

log = logging.getLogger("platypus")
_SLOT = {}  # this worker's CUDA_VISIBLE_DEVICES


def gpu_slots(profile: Profile, specs: dict[str, ModelSpec]) -> list[str]:
    """CUDA_VISIBLE_DEVICES values, one per group of GPUs evaluating one model at a time; [] when there
    are not two groups (a CPU, one GPU, a size unknown). A group is as many GPUs as the largest model
    needs (weights within 90% of each GPU's memory): 8 GPUs and 70B bf16 models give 4 groups of two."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    settings = lm_settings(profile)
    if count < 2 or not settings["device"].startswith("cuda") or profile.evaluate.parallelize is True:
        return []  # parallelize: true asks for every model over every GPU
    memory = 0.9 * torch.cuda.get_device_properties(0).total_memory
    need = 1
    for spec in specs.values():
        size = weights_bytes(spec, settings["dtype"])
        if size is None:
            return []  # not known: one model at a time, as evaluate.parallelize decides per model
        need = max(need, math.ceil(size / memory))
    if profile.evaluate.parallelize is False and need > 1:
        return []  # models larger than a GPU, kept on one device by the profile: nothing to group
    groups = count // need
    return [",".join(map(str, range(g * need, (g + 1) * need))) for g in range(groups)] if groups > 1 else []


def _take_slot(slots) -> None:
    _SLOT["devices"] = slots.get()
    os.environ["CUDA_VISIBLE_DEVICES"] = _SLOT["devices"]  # before this process touches CUDA


def _evaluate_one(job: tuple) -> tuple[str, str | None]:
    evaluate_variant, profile, suite, name, spec, force = job
    try:
        evaluate_variant(profile, name, suite, None, spec, force)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which evaluates it again alone
        return name, f"{type(exc).__name__}: {exc}"
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    log.info("%s: evaluated on GPU %s", name, _SLOT.get("devices"))
    return name, None


def spread_variants(
    profile: Profile,
    suite: TaskSuite,
    specs: dict[str, ModelSpec],
    slots: list[str],
    evaluate_variant: Callable,
    force: bool = False,
) -> dict[str, str]:
    """Run `evaluate_variant` (stage.evaluate_variant) for each spec in len(slots) worker processes, each
    with its own CUDA_VISIBLE_DEVICES, filling the eval cache; returns {name: error} of failed workers."""
    if not slots or not specs:
        return {}
    ctx = mp.get_context("spawn")  # a fresh interpreter per worker: CUDA is not forked
    queue = ctx.Queue()
    for slot in slots:
        queue.put(slot)
    jobs = [(evaluate_variant, profile, suite, name, spec, force) for name, spec in specs.items()]
    log.info("evaluating %d models on %d GPUs at once (one worker per GPU)", len(jobs), len(slots))
    with ctx.Pool(len(slots), initializer=_take_slot, initargs=(queue,)) as pool:
        results = dict(pool.imap_unordered(_evaluate_one, jobs))
    failed = {name: error for name, error in results.items() if error}
    for name, error in failed.items():
        log.warning("%s failed in its worker (%s); evaluating it again in this process", name, error)
    return failed
