"""Stage 04's checks can fail: negative controls (an unmerged model, a model merged at the wrong
scale, a 16-bit merge done in the wrong dtype) are rejected in float32, float16 and bfloat16, a
correct float16 or bfloat16 merge passes, a merge whose update is below the dtype's resolution is
"unresolvable" (not "verified"), the check streams tensor by tensor when the host is short of
memory, the merge dtype follows the base, and the variants are named by layout."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from platypus_utils import layout
from platypus_utils.merge.adapter import ADAPTER_WEIGHTS, read_adapter
from platypus_utils.merge.arithmetic import merge_tensor
from platypus_utils.merge.build import adapter_merge_steps, model_merge_steps
from platypus_utils.merge.errors import MergeVerificationError
from platypus_utils.merge.io import ModelMergeSpec, load_lm, stored_dtype
from platypus_utils.merge.jobs import merge_dtype
from platypus_utils.merge.memory import HOST_MEMORY_SHARE, checkpoint_bytes, job_host_bytes, needs_streaming
from platypus_utils.merge.stage import NOT_CHECKED, REPORT, Made, check_rows, run_merge
from platypus_utils.merge.verify import (
    LOGIT_BOUND,
    SKIPPED,
    UNRESOLVABLE,
    VERIFIED,
    VERIFY_FORMAT,
    WEIGHT_BOUND,
    check_merged_logits,
    check_merged_weights,
    half_ulp,
    verify_merged,
)

from .conftest import ALPHA, DENSITY, TARGETS, R, save_adapter, save_finetune, save_tiny_llama

SHAPE = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]


def save_in_dtype(src, dst, dtype):
    """A copy of the model at `src` stored in `dtype` (its config then names that dtype)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(src, dtype=dtype).save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


def rescaled_adapter(adapter, dst, lora_alpha=None, factor=1.0):
    """A copy of `adapter` with another lora_alpha (peft then scales it differently) and/or its B
    factors multiplied by `factor`."""
    from safetensors.torch import save_file

    shutil.copytree(adapter, dst)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    if lora_alpha is not None:
        (dst / "adapter_config.json").write_text(json.dumps(dict(cfg, lora_alpha=lora_alpha)))
    tensors = load_file(str(dst / ADAPTER_WEIGHTS))
    save_file(
        {k: (v * factor if ".lora_B." in k else v).contiguous() for k, v in tensors.items()},
        str(dst / ADAPTER_WEIGHTS),
    )
    return dst


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("verify")
    base32 = save_tiny_llama(tmp / "base32", **SHAPE)
    base16 = save_in_dtype(base32, tmp / "base16", torch.float16)
    base_bf16 = save_in_dtype(base32, tmp / "base_bf16", torch.bfloat16)
    adapter = save_adapter(base32, tmp / "adapter")
    return {"tmp": tmp, torch.float32: base32, torch.float16: base16, torch.bfloat16: base_bf16, "adapter": adapter}


def merged_with(models, adapter, dtype, out):
    """`adapter` merged into the base of `dtype` by the stage's own merge step (the merger under test
    is not the check: the check gets the true adapter)."""
    _, deltas = read_adapter(adapter)
    build, _ = adapter_merge_steps(str(models[dtype]), adapter, deltas, [str(models[dtype])], dtype, 1e-4, "x")
    out.mkdir()
    build(out)
    return out


def both_checks_reject(models, candidate, dtype):
    """Run the weight check and the logit check on `candidate` against base + the true adapter,
    each on its own; both must raise."""
    _, deltas = read_adapter(models["adapter"])
    got = load_lm(str(candidate), dtype)
    source = load_lm(str(models[dtype]), dtype)
    with pytest.raises(
        MergeVerificationError, match="weights are not .* elements off by more than their rounding bound"
    ):
        check_merged_weights(got, source, deltas, dtype)
    with pytest.raises(MergeVerificationError, match="merged logits differ") as caught:
        check_merged_logits(got, source, models["adapter"], models[dtype], dtype, 1e-4)
    with pytest.raises(MergeVerificationError):  # and the whole check, as the stage runs it
        verify_merged(candidate, str(models[dtype]), models["adapter"], deltas, 1e-4, dtype)
    return str(caught.value)


# ---------------------------------------------------------------- the bound itself
def test_half_ulp_is_half_the_spacing_of_the_dtype():
    x = torch.tensor([1.0, 1.5, 0.02, 1000.0, 6e-5, 0.0])
    assert half_ulp(x, torch.float16).tolist() == [2.0**-11, 2.0**-11, 2.0**-17, 0.25, 2.0**-25, 2.0**-25]
    assert half_ulp(torch.tensor([1.0]), torch.bfloat16).item() == 2.0**-8
    # against torch's own spacing in float32, over many magnitudes
    v = torch.logspace(-30, 30, 500, dtype=torch.float32)
    spacing = (torch.nextafter(v, torch.tensor(float("inf"))) - v).double()
    assert torch.equal(half_ulp(v.double(), torch.float32), spacing / 2)
    # and in float16: every representable positive value up to 2**15, spacing from the next one
    h = torch.arange(1, 0x7800, dtype=torch.int16).view(torch.float16)
    nxt = torch.arange(2, 0x7801, dtype=torch.int16).view(torch.float16)
    assert torch.equal(half_ulp(h.double(), torch.float16), (nxt.double() - h.double()) / 2)


# ---------------------------------------------------------------- negative controls
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_an_unmerged_model_is_rejected(models, dtype, tmp_path):
    unmerged = shutil.copytree(models[dtype], tmp_path / "unmerged")  # the base's weights, called "merged"
    message = both_checks_reject(models, unmerged, dtype)
    assert "0.1 x the adapter's effect" in message


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("alpha", [2 * ALPHA, R], ids=["alpha-doubled", "scale-1"])
def test_a_model_merged_at_the_wrong_scale_is_rejected(models, dtype, alpha, tmp_path):
    wrong = rescaled_adapter(models["adapter"], tmp_path / "wrong", lora_alpha=alpha)
    candidate = merged_with(models, wrong, dtype, tmp_path / "merged")
    both_checks_reject(models, candidate, dtype)


def test_a_small_update_the_old_matrix_max_tolerance_accepted_is_rejected(models, tmp_path):
    """An adapter whose every update is below eps(fp16) x max|W| + 1e-4 (the old weight tolerance):
    an unmerged fp16 model passed that; each element's own rounding bound does not let it."""
    dtype = torch.float16
    base_w = load_file(str(models[dtype] / "model.safetensors"))

    def old_tolerance(name):
        return 1e-4 + torch.finfo(dtype).eps * float(base_w[name + ".weight"].float().abs().max())

    _, full = read_adapter(models["adapter"])
    factor = 0.5 * min(old_tolerance(n) / float(d.delta().abs().max()) for n, d in full.items())
    small = rescaled_adapter(models["adapter"], tmp_path / "small", factor=factor)
    _, deltas = read_adapter(small)
    source = load_lm(str(models[dtype]), dtype)
    for name, d in deltas.items():
        assert float(d.delta().abs().max()) < old_tolerance(name), name
    with pytest.raises(MergeVerificationError, match="weights are not"):
        check_merged_weights(load_lm(str(models[dtype]), dtype), source, deltas, dtype)
    good = merged_with(models, small, dtype, tmp_path / "merged")  # and the true merge of it passes
    figures = check_merged_weights(load_lm(str(good), dtype), source, deltas, dtype)
    assert figures["max_weight_error_to_bound"] <= 1 and figures["updates_above_bound_share"] > 0.3


def test_a_16_bit_merge_done_in_bfloat16_is_rejected_in_float16(models, tmp_path):
    """The issue's fault: an fp16 base merged in bf16 (then stored as fp16) rounds the weights to
    bf16's 8 bits; the fp16 check sees it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(models[torch.float16], dtype=torch.bfloat16)
    merged = PeftModel.from_pretrained(model, str(models["adapter"]), autocast_adapter_dtype=False).merge_and_unload()
    out = tmp_path / "bf16"
    merged.to(torch.float16).save_pretrained(out)
    _, deltas = read_adapter(models["adapter"])
    source = load_lm(str(models[torch.float16]), torch.float16)
    with pytest.raises(MergeVerificationError, match="weights are not"):
        check_merged_weights(load_lm(str(out), torch.float16), source, deltas, torch.float16)


@pytest.mark.parametrize("damage", [1e-5, -3e-6], ids=["+1e-5", "-3e-6"])
def test_a_model_merge_off_by_less_than_the_old_absolute_tolerance_is_rejected(models, tmp_path, damage, monkeypatch):
    fts = [save_finetune(models[torch.float32], tmp_path / f"ft{i}", seed=20 + i) for i in (1, 2)]
    spec = ModelMergeSpec(
        "m",
        "task_arithmetic",
        [str(p) for p in fts],
        ["ft1", "ft2"],
        [0.5, 0.5],
        None,
        "total",
        str(models[torch.float32]),
        "base",
    )
    build, check = model_merge_steps(spec, [str(fts[0])], torch.float32, 0)
    out = tmp_path / "m"
    out.mkdir()
    build(out)
    assert check(out)["max_weight_error_to_bound"] <= 1  # the true merge passes
    real = merge_tensor
    monkeypatch.setattr("platypus_utils.merge.build.merge_tensor", lambda *a: (lambda t, i: (t + damage, i))(*real(*a)))
    bad = tmp_path / "bad"
    bad.mkdir()
    build(bad)
    with pytest.raises(MergeVerificationError, match="off the recomputed merge by more than an ulp"):
        check(bad)


# ---------------------------------------------------------------- positives, dtypes, names
@pytest.fixture
def profile_for(models, make_profile):
    def _make(base_dtype=torch.float16, **merge_cfg):
        profile = make_profile(models={"base": str(models[base_dtype])}, merge=merge_cfg)
        adapter_dir = profile.run_dir(layout.FINETUNE) / "adapter"
        if not adapter_dir.exists():
            shutil.copytree(models["adapter"], adapter_dir)
        return profile

    return _make


def test_a_correct_fp16_merge_passes_and_is_stored_in_fp16(profile_for, models, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the stage sets no hub variable of its own
    profile = profile_for(torch.float16)
    report = run_merge(profile)
    assert "HF_HUB_OFFLINE" not in os.environ
    entry = report["models"]["merged"]
    v = entry["verification"]
    assert report["dtype"] == "auto" and entry["dtype"] == "float16" and v["dtype"] == "float16"
    assert v["max_weight_error_to_bound"] <= 1 and v["max_abs_untargeted_weight_diff"] == 0.0
    assert v["updates_above_bound_share"] > 0.9  # an unmerged model fails on nearly every element
    assert v["max_abs_logit_diff"] <= 0.1 * v["max_abs_adapter_logit_effect"] and v["logit_check_resolves"]
    assert v["weight_bound"] == WEIGHT_BOUND and v["logit_bound"] == LOGIT_BOUND
    stored = load_file(str(profile.run_dir(layout.MERGE) / "merged" / "model.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.float16}
    # independent of merge.py: W + (alpha/r) B @ A in float64, rounded once to float16
    base = load_file(str(models[torch.float16] / "model.safetensors"))
    adapter = load_file(str(models["adapter"] / "adapter_model.safetensors"))
    for target in TARGETS:
        key = f"model.layers.1.mlp.{target}"
        a, b = (adapter[f"base_model.model.{key}.lora_{x}.weight"].double() for x in "AB")
        exact = base[key + ".weight"].double() + (ALPHA / R) * (b @ a)
        assert (stored[key + ".weight"].double() - exact.half().double()).abs().max() <= half_ulp(
            exact, torch.float16
        ).max()


def test_merge_dtype_follows_the_base_unless_set(profile_for, models, tmp_path):
    assert stored_dtype(models[torch.float16]) == torch.float16
    legacy = json.loads((models[torch.float32] / "config.json").read_text())  # Llama-2's config.json names torch_dtype
    legacy.pop("dtype", None)
    (tmp_path / "config.json").write_text(json.dumps(dict(legacy, torch_dtype="float16")))
    assert stored_dtype(tmp_path) == torch.float16
    assert stored_dtype(models[torch.float32]) == torch.float32
    assert merge_dtype("auto", [torch.float16, torch.float16]) == torch.float16
    assert merge_dtype("auto", [torch.float16, torch.bfloat16]) == torch.float32  # neither holds the other
    assert merge_dtype("bfloat16", [torch.float16]) == torch.bfloat16
    report = run_merge(profile_for(torch.float32, dtype="float16"))  # asked for: fp16 from an fp32 base
    entry = report["models"]["merged"]
    assert entry["dtype"] == "float16" and entry["verification"]["max_weight_error_to_bound"] <= 1


def test_variants_are_named_by_layout(profile_for, models):
    partner = models[torch.float16]  # the base itself as a partner: only the names matter here
    profile = profile_for(
        torch.float16,
        merged_name="platypus-tiny",
        partners=[
            {"name": "tiny-beluga", "model": str(partner), "merged_name": "stable-platypus-tiny"},
            {"name": "tiny-orca", "model": str(partner)},
        ],
    )
    assert layout.planned_variants(profile) == ["platypus-tiny", "stable-platypus-tiny", "tiny-orca-platypus"]
    report = run_merge(profile)
    assert list(report["models"]) == layout.planned_variants(profile)
    assert report["models"]["stable-platypus-tiny"]["partner"] == "tiny-beluga"
    assert report["models"]["tiny-orca-platypus"]["partner"] == "tiny-orca"
    assert report["models"]["platypus-tiny"]["partner"] is None
    assert all((profile.run_dir(layout.MERGE) / n / "merge_info.json").is_file() for n in report["models"])


def test_a_reused_variant_with_an_older_check_is_checked_again(profile_for):
    profile = profile_for(torch.float16)
    run_merge(profile)
    info_path = profile.run_dir(layout.MERGE) / "merged" / "merge_info.json"
    info = json.loads(info_path.read_text())
    info["verification"] = {"max_abs_weight_diff": 0.0}  # as the earlier, matrix-max check left it
    info_path.write_text(json.dumps(info))
    entry = run_merge(profile)["models"]["merged"]
    assert entry["reused"] is True and entry["verification"]["format"] == VERIFY_FORMAT
    assert entry["verification"]["max_weight_error_to_bound"] <= 1


def test_mixes_and_model_merges_pass_their_per_element_bounds_in_fp16(profile_for, models):
    second = profile_for(torch.float16).run_dir(layout.FINETUNE) / "partner_adapter"
    save_adapter(models[torch.float32], second, seed=2)
    profile = profile_for(
        torch.float16,
        adapter_mixes=[
            {
                "name": f"mix-{t}",
                "adapters": ["adapter", "partner_adapter"],
                "weights": [0.7, 0.4],
                "combination_type": t,
                **({"density": DENSITY} if t == "ties" else {}),
            }
            for t in ("cat", "ties", "svd")
        ],
        model_merges=[
            {"name": "soup", "method": "ties", "models": ["merged", "mix-cat"], "weights": [1, 1], "density": DENSITY}
        ],
    )
    report = run_merge(profile)
    for name, entry in report["models"].items():
        assert entry["dtype"] == "float16" and entry["verification"]["max_weight_error_to_bound"] <= 1, name


def test_a_correct_bf16_merge_passes_and_is_verified(profile_for, models):
    report = run_merge(profile_for(torch.bfloat16))
    entry = report["models"]["merged"]
    v = entry["verification"]
    assert entry["dtype"] == v["dtype"] == "bfloat16" and v["max_weight_error_to_bound"] <= 1
    assert v["updates_above_bound_share"] > 0.5 and v["logit_check_resolves"]  # both checks could fail
    assert entry["status"] == VERIFIED and entry["verified"] is True and entry["status_reason"] is None
    assert report["status_counts"] == {VERIFIED: 1, UNRESOLVABLE: 0, NOT_CHECKED: 0}


# ---------------------------------------------------------------- checks that cannot tell
@pytest.fixture(scope="module")
def faint(models):
    """A base whose adapted weights are all at least 0.01 in magnitude, and an adapter whose update
    scale·B@A is ~1e-6 at most: below half an ulp of float16 (>= 3.8e-6 there) and of bfloat16 at
    every adapted element. (On a base with weights near zero, the elements near zero would resolve it.)"""
    from safetensors.torch import save_file

    tmp = models["tmp"] / "faint"
    base32 = shutil.copytree(models[torch.float32], tmp / "base32")
    weights = load_file(str(base32 / "model.safetensors"))
    for key, w in weights.items():
        if any(f"mlp.{t}." in key for t in TARGETS):
            weights[key] = (torch.sign(w) + (w == 0)) * (0.01 + w.abs())
    save_file(weights, str(base32 / "model.safetensors"), metadata={"format": "pt"})
    out = {torch.float32: base32}
    for dtype, name in ((torch.float16, "base16"), (torch.bfloat16, "base_bf16")):
        out[dtype] = save_in_dtype(base32, tmp / name, dtype)
    _, deltas = read_adapter(models["adapter"])
    largest = max(float(d.delta().abs().max()) for d in deltas.values())
    out["adapter"] = rescaled_adapter(models["adapter"], tmp / "adapter", factor=1e-6 / largest)
    return out


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_an_update_below_the_dtypes_resolution_is_unresolvable_not_verified(faint, dtype, tmp_path):
    _, deltas = read_adapter(faint["adapter"])
    assert 0.5e-6 < max(float(d.delta().abs().max()) for d in deltas.values()) <= 1.01e-6
    candidate = merged_with(faint, faint["adapter"], dtype, tmp_path / "merged")
    result = verify_merged(candidate, str(faint[dtype]), faint["adapter"], deltas, 1e-4, dtype)
    assert result["max_weight_error_to_bound"] <= 1  # it passed both checks...
    assert result["updates_above_bound_share"] == 0.0 and not result["logit_check_resolves"]  # ...which cannot fail
    assert result["status"] == UNRESOLVABLE
    assert "exceeds its rounding bound in " + str(dtype).split(".")[1] in result["status_reason"]
    assert "noise floor" in result["status_reason"]
    # an unmerged model passes the same checks: that is what "unresolvable" says
    unmerged = verify_merged(faint[dtype], str(faint[dtype]), faint["adapter"], deltas, 1e-4, dtype)
    assert unmerged["status"] == UNRESOLVABLE


def test_the_report_and_its_counts_say_unresolvable(faint, make_profile):
    profile = make_profile(models={"base": str(faint[torch.bfloat16])})
    shutil.copytree(faint["adapter"], profile.run_dir(layout.FINETUNE) / "adapter")
    report = run_merge(profile)
    entry = report["models"]["merged"]
    assert entry["status"] == UNRESOLVABLE and entry["verified"] is False
    assert "bfloat16" in entry["status_reason"]
    assert report["status_counts"] == {VERIFIED: 0, UNRESOLVABLE: 1, NOT_CHECKED: 0}
    saved = json.loads((profile.run_dir(layout.MERGE) / REPORT).read_text())
    assert saved["models"]["merged"]["status"] == UNRESOLVABLE
    manifest = json.loads((profile.run_dir(layout.MERGE) / "manifest.json").read_text())
    assert manifest["metrics"]["merged.status"] == UNRESOLVABLE
    assert manifest["metrics"]["status.unresolvable"] == 1
    row = check_rows([Made("merged", entry, False, None, 0.0)])[0]
    assert row["passed"] is True and row["status"] == UNRESOLVABLE  # passed, and says it cannot tell


# ---------------------------------------------------------------- streaming when the host is short
def test_the_check_streams_tensor_by_tensor_when_the_host_is_short(models, tmp_path, monkeypatch):
    dtype = torch.bfloat16
    _, deltas = read_adapter(models["adapter"])
    good = merged_with(models, models["adapter"], dtype, tmp_path / "merged")
    whole = verify_merged(good, str(models[dtype]), models["adapter"], deltas, 1e-4, dtype, stream=False)
    assert whole["host_memory"]["streamed"] is False and whole["logit_check"] == "ran"
    monkeypatch.setattr("platypus_utils.merge.verify.available_host_bytes", lambda: 10_000)  # far less than two models

    def no_whole_model(*args, **kwargs):
        raise AssertionError("the streamed check loaded a whole model")

    monkeypatch.setattr("platypus_utils.merge.verify.load_lm", no_whole_model)
    streamed = verify_merged(good, str(models[dtype]), models["adapter"], deltas, 1e-4, dtype)
    memory = streamed["host_memory"]
    assert memory["streamed"] is True and memory["decided_by"] == "available memory"
    assert memory["whole_check_bytes"] > memory["available_bytes"] * HOST_MEMORY_SHARE
    for key in ("max_weight_error_to_bound", "max_abs_weight_diff", "updates_above_bound_share", "verified_modules"):
        assert streamed[key] == whole[key], key  # the same weight check, one tensor at a time
    assert streamed["logit_check"] == SKIPPED and streamed["max_abs_logit_diff"] is None
    assert "GB available" in streamed["logit_check_skipped"]
    assert streamed["status"] == VERIFIED  # the weights alone resolve the adapter here
    with pytest.raises(MergeVerificationError, match="weights are not"):  # and it still rejects an unmerged model
        verify_merged(models[dtype], str(models[dtype]), models["adapter"], deltas, 1e-4, dtype)


def test_a_streamed_check_that_cannot_resolve_says_why(faint, tmp_path):
    dtype = torch.float16
    _, deltas = read_adapter(faint["adapter"])
    candidate = merged_with(faint, faint["adapter"], dtype, tmp_path / "merged")
    result = verify_merged(candidate, str(faint[dtype]), faint["adapter"], deltas, 1e-4, dtype, stream=True)
    assert result["status"] == UNRESOLVABLE and result["host_memory"]["decided_by"] == "caller"
    assert "the logit check was skipped (the check was asked to stream" in result["status_reason"]


def test_host_memory_figures_and_the_streaming_decision(models):
    params = 13_015_864_320
    whole = job_host_bytes("adapter", params, 2, 32000 * 5120, 36_372_480 * 4, 1)
    assert whole["check_whole"] == pytest.approx(2 * params * 2 + 36_372_480 * 4)  # ~52 GB: both models whole
    assert whole["check_streamed"] < 2e9 and whole["merge"] < whole["check_whole"]
    assert needs_streaming(52e9, available=60e9) and not needs_streaming(52e9, available=70e9)
    size, largest = checkpoint_bytes(models[torch.float32], torch.float16)
    stored, _ = checkpoint_bytes(models[torch.float32])
    assert size * 2 == stored and largest > 0  # float32 checkpoint, counted as loaded in float16
