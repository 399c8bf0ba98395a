"""Stage 04_merge on tiny random Llama models: exactness, the partner merge, refusals, no-overwrite."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from platypus_utils import layout
from platypus_utils.artifacts import read_manifest
from platypus_utils.merge.adapter import check_targets, read_adapter
from platypus_utils.merge.arithmetic import MODEL_METHODS, chunks, merge_tensor, top_magnitudes
from platypus_utils.merge.build import model_merge_steps
from platypus_utils.merge.errors import MergeError, MergeVerificationError
from platypus_utils.merge.io import (
    ModelMergeSpec,
    SafetensorsCheckpoint,
    load_lm,
    measure_peak_rss,
    proc_status_mb,
    read_merge_info,
    write_safetensors,
)
from platypus_utils.merge.jobs import merge_jobs, sweep_merges, sweep_variant_names
from platypus_utils.merge.stage import (
    begin,
    check_rows,
    checks_frame,
    jobs_frame,
    load_adapter,
    make_variant,
    report_frame,
    run_merge,
    save,
    verification_frame,
)
from platypus_utils.merge.verify import check_merged_weights, verify_merged

from .conftest import (
    ALPHA,
    DENSITY,
    TARGETS,
    R,
    save_adapter,
    save_finetune,
    save_tiny_llama,
    tiny_config,
    tiny_tokenizer,
    tiny_words,
)
from .merge_oracles import ReferenceMerge, assert_model_merge_matches, recording_bernoulli, reference_adapter_mix
from .test_merge_mergekit import assert_dare_alike

WORDS = tiny_words()


def expected_weights(model_dir, adapter_dir):
    """W + (alpha/r)·B@A, computed here independently of the module under test."""
    weights = load_file(str(model_dir / "model.safetensors"))
    adapter = load_file(str(adapter_dir / "adapter_model.safetensors"))
    out = dict(weights)
    for key, a in adapter.items():
        if ".lora_A." not in key:
            continue
        b = adapter[key.replace(".lora_A.", ".lora_B.")]
        target = key.replace("base_model.model.", "").replace(".lora_A.weight", ".weight")
        out[target] = weights[target] + (ALPHA / R) * (b @ a)
    return out


@pytest.fixture
def setup(tmp_path, make_profile):
    base = save_tiny_llama(tmp_path / "base")
    partners = []

    def _profile(partners=partners, **merge_cfg):
        return make_profile(models={"base": str(base)}, merge={"partners": partners, **merge_cfg})

    profile = _profile()
    adapter = save_adapter(base, profile.run_dir("03_finetune") / "adapter")
    return {"base": base, "adapter": adapter, "profile": _profile, "tmp": tmp_path}


def assert_weights_equal(model_dir, expected, atol=1e-5):
    got = load_file(str(model_dir / "model.safetensors"))
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=atol, rtol=0, msg=key)


def test_merge_into_base_is_exact_in_weights_and_logits(setup):
    profile = setup["profile"]()
    report = run_merge(profile)

    entry = report["models"]["merged"]
    out = profile.run_dir("04_merge") / "merged"
    assert entry["path"] == str(out.resolve()) and entry["method"] == "merge_and_unload"
    assert entry["base"] == str(setup["base"]) and entry["verified"] is True
    v = entry["verification"]
    assert v["verified_modules"] == 2 * len(TARGETS)
    assert v["max_abs_weight_diff"] <= 1e-4 and v["max_abs_untargeted_weight_diff"] == 0.0
    assert v["max_abs_logit_diff"] <= v["logit_tolerance"]
    # The check is not vacuous: the adapter moves logits far more than the merge error.
    assert v["max_abs_delta"] > 0.01 and v["max_abs_adapter_logit_effect"] > 100 * v["max_abs_logit_diff"]
    assert entry["peak_rss_mb"] > 0 and entry["seconds"] > 0
    assert_weights_equal(out, expected_weights(setup["base"], setup["adapter"]))
    assert (out / "tokenizer_config.json").is_file() and (out / "merge_info.json").is_file()

    on_disk = json.loads((profile.run_dir("04_merge") / "merge_report.json").read_text())
    assert on_disk["models"]["merged"]["path"] == entry["path"]
    manifest = read_manifest(profile.run_dir("04_merge"))
    assert str(out.resolve()) in manifest["outputs"]
    assert str(setup["adapter"].resolve()) in manifest["inputs"]
    assert str(setup["base"].resolve()) in manifest["inputs"]


def test_partner_merge_adds_adapter_to_the_partner_weights(setup):
    partner = save_tiny_llama(setup["tmp"] / "partner", seed=5, perturb_from=setup["base"])
    profile = setup["profile"](partners=[{"name": "orca", "model": str(partner)}], merge_into_base=False)
    report = run_merge(profile)

    assert list(report["models"]) == ["orca-platypus"]
    entry = report["models"]["orca-platypus"]
    assert entry["partner"] == "orca" and entry["base"] == str(partner) and entry["verified"]
    out = profile.run_dir("04_merge") / "orca-platypus"
    expected = expected_weights(partner, setup["adapter"])
    assert_weights_equal(out, expected)
    # and not base + delta: the partner's own weights are what the delta is added to
    from_base = expected_weights(setup["base"], setup["adapter"])
    key = "model.layers.0.mlp.gate_proj.weight"
    assert (load_file(str(out / "model.safetensors"))[key] - from_base[key]).abs().max() > 0.01


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"intermediate_size": 48}, "intermediate_size"),
        ({"num_hidden_layers": 3}, "num_hidden_layers"),
        ({"hidden_size": 48, "num_attention_heads": 4}, "hidden_size"),
    ],
)
def test_partner_of_another_architecture_is_refused(setup, overrides, field):
    other = save_tiny_llama(setup["tmp"] / "other", seed=3, **overrides)
    profile = setup["profile"](partners=[{"name": "x", "model": str(other)}])
    with pytest.raises(MergeError, match=field):
        run_merge(profile)
    assert not (profile.run_dir("04_merge") / "x-platypus").exists()
    assert read_manifest(profile.run_dir("04_merge")) is None


def test_missing_or_misshaped_target_module_is_refused(setup):
    from transformers import AutoModelForCausalLM

    _, deltas = read_adapter(setup["adapter"])
    one_layer = AutoModelForCausalLM.from_config(tiny_config(num_hidden_layers=1))
    with pytest.raises(MergeError, match=r"model\.layers\.1\.mlp\.gate_proj: missing"):
        check_targets(one_layer, deltas, "one-layer model")
    narrow = AutoModelForCausalLM.from_config(tiny_config(intermediate_size=48))
    with pytest.raises(MergeError, match=r"gate_proj: weight \(48, 32\), adapter needs \(64, 32\)"):
        check_targets(narrow, deltas, "narrow model")
    check_targets(AutoModelForCausalLM.from_config(tiny_config()), deltas, "same shape")  # no error


def test_verification_fails_on_a_model_that_is_not_base_plus_adapter(setup):
    _, deltas = read_adapter(setup["adapter"])
    # the unmerged base is not base + adapter: both checks must notice
    with pytest.raises(MergeVerificationError, match="weights are not"):
        verify_merged(setup["base"], str(setup["base"]), setup["adapter"], deltas, 1e-4, torch.float32)


def test_verification_fails_when_logits_disagree(setup, tmp_path):
    import shutil

    profile = setup["profile"]()
    merged_dir = profile.run_dir("04_merge") / "merged"
    run_merge(profile)
    _, deltas = read_adapter(setup["adapter"])
    # same LoRA factors, but peft would scale them differently than the merge did
    other = shutil.copytree(setup["adapter"], tmp_path / "rescaled")
    cfg = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps(dict(cfg, lora_alpha=2 * ALPHA)))
    with pytest.raises(MergeVerificationError, match="merged logits differ"):
        verify_merged(merged_dir, str(setup["base"]), other, deltas, 1e-4, torch.float32)


def test_failed_verification_leaves_no_output(setup, monkeypatch):
    def broken(*args, **kwargs):
        raise MergeVerificationError("forced")

    monkeypatch.setattr("platypus_utils.merge.build.verify_merged", broken)
    profile = setup["profile"]()
    with pytest.raises(MergeVerificationError):
        run_merge(profile)
    stage_dir = profile.run_dir("04_merge")
    assert not (stage_dir / "merged").exists()
    # no temp dir, no report, no manifest: only the attempt record (status "failed")
    assert [p.name for p in stage_dir.iterdir()] == ["attempt.json"]


def test_existing_output_is_reused_or_made_again_when_its_inputs_changed(setup):
    profile = setup["profile"]()
    first = run_merge(profile)["models"]["merged"]
    again = run_merge(profile)["models"]["merged"]
    assert again["reused"] is True and again["content_sha256"] == first["content_sha256"]
    assert again["max_abs_logit_diff"] == first["max_abs_logit_diff"]

    save_adapter(setup["base"], setup["adapter"], seed=7)  # stage 03 reran: a different adapter
    remade = run_merge(profile)["models"]["merged"]  # stale: made again, and the report says why
    assert remade["reused"] is False and remade["content_sha256"] != first["content_sha256"]
    assert remade["replaced"].startswith("its inputs differ: adapter_sha256")
    assert_weights_equal(profile.run_dir("04_merge") / "merged", expected_weights(setup["base"], setup["adapter"]))
    forced = run_merge(profile, force=True)["models"]["merged"]  # made again although up to date
    assert forced["reused"] is False and forced["content_sha256"] == remade["content_sha256"]


def test_tampered_or_foreign_output_is_not_reused(setup):
    profile = setup["profile"]()
    run_merge(profile)
    out = profile.run_dir("04_merge") / "merged"
    (out / "config.json").write_text((out / "config.json").read_text().replace('"silu"', '"gelu"'))
    with pytest.raises(MergeError, match="files changed"):
        run_merge(profile)
    (out / "merge_info.json").unlink()
    with pytest.raises(MergeError, match="no readable merge_info.json"):
        run_merge(profile)


def test_missing_adapter_and_unsupported_adapters_are_clear_errors(setup, make_profile):
    with pytest.raises(FileNotFoundError, match="run stage 03_finetune first"):
        run_merge(make_profile(name="other", models={"base": str(setup["base"])}))
    cfg_path = setup["adapter"] / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps(dict(cfg, use_dora=True)))
    with pytest.raises(MergeError, match="use_dora"):
        read_adapter(setup["adapter"])
    with pytest.raises(MergeError, match="duplicate"):
        run_merge(setup["profile"](partners=[{"name": "a", "model": str(setup["base"])}] * 2))


# ---------------------------------------------------------------- adapter mixes, full-model merges, sweep
MIX_TYPES = ("linear", "cat", "ties", "dare_linear", "dare_ties", "svd")


def lora_factors(adapter_dir):
    """{module: (A, B)} of a saved adapter, read without the module under test."""
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    out = {}
    for key, a in tensors.items():
        if ".lora_A." in key:
            module = key.replace("base_model.model.", "").replace(".lora_A.weight", "")
            out[module] = (a.double(), tensors[key.replace(".lora_A.", ".lora_B.")].double())
    return out


@pytest.fixture
def two_adapters(setup):
    second = save_adapter(setup["base"], setup["profile"]().run_dir("03_finetune") / "partner_adapter", seed=2)
    return setup["adapter"], second


def test_adapter_mixes_are_verified_and_exact_where_the_formula_is_simple(setup, two_adapters):
    weights = [0.7, 0.4]
    mixes = [
        {
            "name": f"mix-{t}",
            "adapters": ["adapter", "partner_adapter"],
            "weights": weights,
            "combination_type": t,
            **({"density": DENSITY} if t in ("ties", "dare_linear", "dare_ties") else {}),
        }
        for t in MIX_TYPES
    ]
    profile = setup["profile"](merge_into_base=False, adapter_mixes=mixes)
    with recording_bernoulli() as draws:  # peft's DARE masks, which the oracle must reuse
        report = run_merge(profile)
    assert list(report["models"]) == [f"mix-{t}" for t in MIX_TYPES]
    for t in MIX_TYPES:
        entry = report["models"][f"mix-{t}"]
        v = entry["verification"]
        assert entry["kind"] == "adapter_mix" and entry["method"] == f"add_weighted_adapter:{t}" and entry["verified"]
        assert v["max_abs_weight_diff"] <= 1e-4 and v["max_abs_untargeted_weight_diff"] == 0.0, t
        assert v["max_abs_logit_diff"] <= v["logit_tolerance"] and v["max_abs_delta"] > 0.01, t
        assert (profile.run_dir("04_merge") / f"mix-{t}" / "mixed_adapter" / "adapter_config.json").is_file()
        assert entry["peak_rss_mb"] > 0
    # peft's combination is the definition's (tests/merge_oracles.py), within peft's float32 error
    sources = [read_adapter(a)[1] for a in two_adapters]
    base_model = load_lm(str(setup["base"]), torch.float32)
    order = [name for name, _ in base_model.named_modules()]
    per_mix = 4 * 2 * len(TARGETS)  # a mask per module, factor (A, B) and adapter
    masks = {"dare_linear": draws[:per_mix], "dare_ties": draws[per_mix : 2 * per_mix]}
    assert len(draws) == 2 * per_mix
    for t in MIX_TYPES:
        density = DENSITY if t in ("ties", "dare_linear", "dare_ties") else None
        expected = reference_adapter_mix(sources, weights, t, density, None, "total", masks.get(t, []), order)
        mixed = load_lm(str(profile.run_dir("04_merge") / f"mix-{t}"), torch.float32)
        assert check_merged_weights(mixed, base_model, expected, torch.float32)["max_weight_error_to_bound"] <= 1, t
    # the comparison has teeth: the ties mix is not what ties with another density would give
    wrong = reference_adapter_mix(sources, weights, "ties", 0.8, None, "total", [], order)
    with pytest.raises(MergeVerificationError, match="weights are not"):
        mixed = load_lm(str(profile.run_dir("04_merge") / "mix-ties"), torch.float32)
        check_merged_weights(mixed, base_model, wrong, torch.float32)

    # independent of merge.py: cat is exactly W + sum w_i s_i B_i A_i; linear is (sum c B)(sum c' A)
    base_w = load_file(str(setup["base"] / "model.safetensors"))
    f1, f2 = lora_factors(two_adapters[0]), lora_factors(two_adapters[1])
    cat = load_file(str(profile.run_dir("04_merge") / "mix-cat" / "model.safetensors"))
    linear = load_file(str(profile.run_dir("04_merge") / "mix-linear" / "model.safetensors"))
    svd = load_file(str(profile.run_dir("04_merge") / "mix-svd" / "model.safetensors"))
    s = ALPHA / R
    for module, (a1, b1) in f1.items():
        a2, b2 = f2[module]
        key = module + ".weight"
        w = base_w[key].double()
        full = weights[0] * s * b1 @ a1 + weights[1] * s * b2 @ a2
        torch.testing.assert_close(cat[key].double(), w + full, atol=1e-5, rtol=0)
        c = [(weights[0] * s) ** 0.5, (weights[1] * s) ** 0.5]
        torch.testing.assert_close(
            linear[key].double(), w + (c[0] * b1 + c[1] * b2) @ (c[0] * a1 + c[1] * a2), atol=1e-5, rtol=0
        )
        # svd keeps rank R of the rank-2R sum: its error is the best possible, the tail of the spectrum
        sv = torch.linalg.svdvals(full)
        assert abs(torch.linalg.matrix_norm(svd[key].double() - w - full) - sv[R:].norm()) < 1e-5


def test_adapter_mix_of_unequal_ranks_is_refused_for_factorwise_types(setup, make_profile):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    other = setup["profile"]().run_dir("03_finetune") / "rank8"
    model = AutoModelForCausalLM.from_pretrained(setup["base"], dtype=torch.float32)
    get_peft_model(
        model, LoraConfig(r=8, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    ).save_pretrained(other)
    mix = {
        "name": "m",
        "adapters": ["adapter", "rank8"],
        "weights": [1, 1],
        "combination_type": "ties",
        "density": DENSITY,
    }
    with pytest.raises(MergeError, match=r"equal rank.*r=4.*r=8"):
        run_merge(setup["profile"](merge_into_base=False, adapter_mixes=[mix]))
    mix = dict(mix, combination_type="cat", density=None)  # cat takes any ranks
    report = run_merge(setup["profile"](merge_into_base=False, adapter_mixes=[mix]))
    assert report["models"]["m"]["verified"]
    with pytest.raises(FileNotFoundError, match="'missing'.*adapter_config.json"):
        run_merge(
            setup["profile"](
                merge_into_base=False, adapter_mixes=[dict(mix, name="n", adapters=["adapter", "missing"])]
            )
        )


@pytest.fixture
def finetunes(setup):
    tmp = setup["tmp"]
    return (
        save_finetune(setup["base"], tmp / "ft1", seed=11),
        save_finetune(setup["base"], tmp / "ft2", seed=12, only=("mlp", "self_attn.q_proj")),
    )


def _model_merges(paths, weights=(0.6, 0.4)):
    return [
        {
            "name": f"m-{m}",
            "method": m,
            "models": [str(p) for p in paths],
            "weights": list(weights),
            **({"density": DENSITY} if m in layout.DENSITY_METHODS else {}),
        }
        for m in MODEL_METHODS
    ]


def test_model_merges_equal_the_methods_formulas(setup, finetunes, monkeypatch):
    monkeypatch.setattr(
        "platypus_utils.merge.arithmetic.CHUNK", 1000
    )  # the merge and its check walk each tensor in several chunks
    weights = [0.6, 0.4]
    profile = setup["profile"](merge_into_base=False, model_merges=_model_merges(finetunes, weights))
    report = run_merge(profile)
    out = profile.run_dir("04_merge")
    base = load_file(str(setup["base"] / "model.safetensors"))
    t1, t2 = (load_file(str(p / "model.safetensors")) for p in finetunes)
    got = {m: load_file(str(out / f"m-{m}" / "model.safetensors")) for m in MODEL_METHODS}
    for m in MODEL_METHODS:
        entry = report["models"][f"m-{m}"]
        assert entry["kind"] == "model_merge" and entry["verified"] and entry["max_abs_logit_diff"] is None
        assert entry["verification"]["max_abs_weight_diff"] <= 1e-5 and entry["verification"]["loads"]
        assert entry["verification"]["max_abs_distance_to_nearest_input"] > 1e-3  # not a copy of an input
        assert set(got[m]) == set(base)
    # every method against its definition (tests/merge_oracles.py), with DARE's masks redrawn
    for m in MODEL_METHODS:
        spec = ModelMergeSpec(m, m, [str(p) for p in finetunes], ["ft1", "ft2"], weights, None, "total")
        if m not in ("linear", "slerp"):
            spec.base, spec.base_label = str(setup["base"]), "base"
        spec.density = DENSITY if m in layout.DENSITY_METHODS else None
        figures = assert_model_merge_matches(out / f"m-{m}", spec, torch.float32, profile.seed)
        if "dare" in m:
            assert figures["kept"] / figures["entries"] == pytest.approx(DENSITY, abs=0.02), m

    key = "model.layers.1.mlp.up_proj.weight"  # both fine-tunes changed it
    b, x1, x2 = base[key].double(), t1[key].double(), t2[key].double()
    d1, d2 = x1 - b, x2 - b
    close = dict(atol=1e-5, rtol=0)
    torch.testing.assert_close(got["linear"][key].double(), 0.6 * x1 + 0.4 * x2, **close)
    torch.testing.assert_close(got["task_arithmetic"][key].double(), b + 0.6 * d1 + 0.4 * d2, **close)
    # slerp with t = 0.4 on the sphere through x1 and x2
    theta = torch.arccos((x1 * x2).sum() / (x1.norm() * x2.norm()))
    assert theta > 0.05  # far from parallel: the spherical branch is the one tested
    expected = (torch.sin(0.6 * theta) * x1 + torch.sin(0.4 * theta) * x2) / torch.sin(theta)
    torch.testing.assert_close(got["slerp"][key].double(), expected, **close)
    # ties: keep the top half of each |d|; mergekit's: elect the sign of the *weighted* sum, divide the
    # agreeing weighted values by the agreeing weights; peft's: the sign of the unweighted sum, divide by
    # the number that agree
    k = int(DENSITY * d1.numel())
    trimmed = []
    for d in (d1, d2):
        thr = d.abs().flatten().kthvalue(d.numel() - k + 1).values
        trimmed.append(torch.where(d.abs() >= thr, d, 0.0))
    sign = torch.where(0.6 * trimmed[0] + 0.4 * trimmed[1] >= 0, 1.0, -1.0)
    agree = [(torch.sign(t) == sign).double() for t in trimmed]
    mixed = (0.6 * trimmed[0] * agree[0] + 0.4 * trimmed[1] * agree[1]) / (0.6 * agree[0] + 0.4 * agree[1]).where(
        agree[0] + agree[1] > 0, 1.0
    )
    torch.testing.assert_close(got["ties"][key].double(), b + mixed, **close)
    sign = torch.where(trimmed[0] + trimmed[1] >= 0, 1.0, -1.0)
    agree = [(torch.sign(t) == sign).double() for t in trimmed]
    mixed = (0.6 * trimmed[0] * agree[0] + 0.4 * trimmed[1] * agree[1]) / (agree[0] + agree[1]).clamp(min=1)
    torch.testing.assert_close(got["peft_ties"][key].double(), b + mixed, **close)
    assert (got["ties"][key] - got["peft_ties"][key]).abs().max() > 1e-3  # the two definitions differ here
    # peft_dare_linear: each entry is base + a kept-or-dropped share of each task vector, over density
    delta = got["peft_dare_linear"][key].double() - b
    options = torch.stack(
        [torch.zeros_like(d1), 0.6 * d1 / DENSITY, 0.4 * d2 / DENSITY, 0.6 * d1 / DENSITY + 0.4 * d2 / DENSITY]
    )
    assert ((options - delta).abs().min(dim=0).values <= 1e-5).all()
    assert (
        0.3
        < ((options[1] - delta).abs() <= 1e-6).double().mean() + ((options[3] - delta).abs() <= 1e-6).double().mean()
        < 0.7
    )
    # tensors no fine-tune touched stay the base's under the task-vector methods
    for m in MODEL_METHODS[2:]:
        torch.testing.assert_close(
            got[m]["model.embed_tokens.weight"], base["model.embed_tokens.weight"], atol=0, rtol=0
        )


def test_model_merge_output_is_deterministic_and_reused(setup, finetunes, monkeypatch):
    monkeypatch.setattr(
        "platypus_utils.merge.verify.SMOKE_LOAD_MAX_BYTES", 0
    )  # as for a model too large to load in the check
    merges = [m for m in _model_merges(finetunes) if m["method"] in ("dare_ties", "slerp")]
    profile = setup["profile"](merge_into_base=False, model_merges=merges)
    first = run_merge(profile)
    assert all(
        e["verification"]["loads"] is None and e["verification"]["safetensors_files_open"] == 1
        for e in first["models"].values()
    )
    again = run_merge(profile)
    assert all(again["models"][m]["reused"] for m in again["models"])
    forced = run_merge(profile, force=True)  # made again from scratch: byte-identical (seeded DARE)
    for m in first["models"]:
        assert forced["models"][m]["reused"] is False
        assert forced["models"][m]["content_sha256"] == first["models"][m]["content_sha256"]
    # other weights: the earlier merge is stale, made again, and the report says what changed
    changed = [dict(merges[0], weights=[0.9, 0.1]), merges[1]]
    remade = run_merge(setup["profile"](merge_into_base=False, model_merges=changed))
    name = merges[0]["name"]
    assert remade["models"][name]["reused"] is False
    assert remade["models"][name]["replaced"].startswith("its inputs differ: weights")
    assert remade["models"][name]["content_sha256"] != first["models"][name]["content_sha256"]
    assert remade["models"][merges[1]["name"]]["reused"] and remade["models"][merges[1]["name"]]["replaced"] is None


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda t: t + 1e-3, "off the recomputed merge"),
        (lambda t: t.index_fill(0, torch.tensor([0]), float("nan")), "non-finite values"),
    ],
)
def test_a_wrong_model_merge_fails_verification_and_leaves_nothing(setup, finetunes, monkeypatch, damage, message):
    real = merge_tensor

    def damaged(method, tensors, base, *args):
        merged, info = real(method, tensors, base, *args)
        return damage(merged), info

    monkeypatch.setattr("platypus_utils.merge.build.merge_tensor", damaged)
    profile = setup["profile"](merge_into_base=False, model_merges=_model_merges(finetunes)[:1])
    with pytest.raises(MergeVerificationError, match=f"not the linear merge.*{message}"):
        run_merge(profile)
    assert [p.name for p in profile.run_dir("04_merge").iterdir()] == ["attempt.json"]


def test_model_merge_refuses_mismatched_models(setup, finetunes):
    tmp = setup["tmp"]
    wider = save_tiny_llama(tmp / "wider", seed=3, intermediate_size=48)
    bigger_vocab = save_tiny_llama(tmp / "vocab", seed=3, vocab_size=len(WORDS) + 10)
    tied = save_tiny_llama(tmp / "tied", seed=3, tie_word_embeddings=True)  # saves no lm_head.weight
    bin_only = tmp / "bin_only"  # a checkpoint without safetensors (e.g. pytorch_model.bin only)
    bin_only.mkdir()
    (bin_only / "config.json").write_text((finetunes[0] / "config.json").read_text())

    def attempt(other, method="ties"):
        m = {
            "name": "x",
            "method": method,
            "models": [str(finetunes[0]), str(other)],
            "weights": [1, 1],
            **({"density": DENSITY} if method == "ties" else {}),
        }
        run_merge(setup["profile"](merge_into_base=False, model_merges=[m]))

    with pytest.raises(MergeError, match="intermediate_size: 48 vs 64"):
        attempt(wider)
    with pytest.raises(MergeError, match=r"tensor (lm_head|model.embed_tokens).weight is \(38, 32\) in .*vocab"):
        attempt(bigger_vocab, "linear")
    with pytest.raises(MergeError, match=r"does not have the tensors.*missing \['lm_head.weight'\]"):
        attempt(tied, "linear")
    with pytest.raises(MergeError, match="no model.safetensors"):
        attempt(bin_only, "linear")
    assert not (setup["profile"]().run_dir("04_merge") / "x").exists()


def test_partner_built_from_an_adapter_then_the_papers_merge_onto_it(setup, two_adapters):
    from platypus_utils.evaluate.models import resolve_variant

    profile = setup["profile"](
        partners=[{"name": "general", "model": str(setup["base"]), "adapter": "partner_adapter"}],
        model_merges=[
            {"name": "soup", "method": "ties", "models": ["merged", "general"], "weights": [1, 1], "density": DENSITY}
        ],
    )
    report = run_merge(profile)
    assert list(report["models"]) == ["merged", "general", "general-platypus", "soup"]
    out = profile.run_dir("04_merge")
    partner_expected = expected_weights(setup["base"], two_adapters[1])
    assert_weights_equal(out / "general", partner_expected)
    # the paper's merge: base + partner delta + platypus delta
    both = expected_weights(out / "general", two_adapters[0])
    assert_weights_equal(out / "general-platypus", both)
    assert report["models"]["general-platypus"]["base"] == "04_merge/general"
    assert report["models"]["soup"]["model_paths"] == [str(out / "merged"), str(out / "general")]
    assert all(e["verified"] for e in report["models"].values())
    # stage 05 finds the built partner in the report, not at its `model`
    assert resolve_variant(profile, "general").pretrained == str((out / "general").resolve())
    assert resolve_variant(profile, "soup").pretrained == str((out / "soup").resolve())


def test_variant_names_and_order_are_checked(setup, finetunes):
    m = {"name": "soup", "method": "linear", "models": [str(finetunes[0]), "later"], "weights": [1, 1]}
    later = {"name": "later", "method": "linear", "models": [str(p) for p in finetunes], "weights": [1, 1]}
    with pytest.raises(MergeError, match="'later' is made later"):
        run_merge(setup["profile"](merge_into_base=False, model_merges=[m, later]))
    with pytest.raises(MergeError, match="reserves"):
        run_merge(setup["profile"](merge_into_base=False, model_merges=[dict(later, name="base")]))
    with pytest.raises(MergeError, match=r"duplicate variant names \['merged'\]"):
        run_merge(setup["profile"](model_merges=[dict(later, name="merged")]))


def test_sweep_names_grid_and_report(setup, finetunes):
    from platypus_utils.config import MergeSweepConfig
    from platypus_utils.evaluate.models import resolve_variant

    assert layout.sweep_variant_name("ties", [0.7, 0.3], 0.5) == "sweep-ties-w0.7_0.3-d0.5"
    assert layout.sweep_variant_name("linear", [1.0, 1.0]) == "sweep-linear-w1_1"
    grid = MergeSweepConfig(
        models=["a", "b"], methods=["linear", "ties", "slerp"], weights=[[1, 1], [0.7, 0.3]], densities=[0.3, 0.6]
    )
    names = [m.name for m in sweep_merges(grid)]
    assert len(names) == 2 + 2 * 2 + 2 == len(set(names))  # density multiplies only ties
    assert "sweep-ties-w0.7_0.3-d0.6" in names and "sweep-slerp-w1_1" in names
    with pytest.raises(MergeError, match="3 weights for 2 models"):
        sweep_merges(MergeSweepConfig(models=["a", "b"], methods=["linear"], weights=[[1, 1, 1]]))

    sweep = {
        "models": [str(p) for p in finetunes],
        "methods": ["task_arithmetic", "dare_linear"],
        "weights": [[0.5, 0.5]],
        "densities": [0.4],
    }
    profile = setup["profile"](merge_into_base=False, sweep=sweep)
    report = run_merge(profile)
    expected = ["sweep-task_arithmetic-w0.5_0.5", "sweep-dare_linear-w0.5_0.5-d0.4"]
    assert report["sweep"] == expected == sweep_variant_names(profile) == list(report["models"])
    assert all(report["models"][n]["sweep"] and report["models"][n]["verified"] for n in expected)
    assert resolve_variant(profile, expected[1]).pretrained == report["models"][expected[1]]["path"]


def test_partner_adapter_is_trained_on_its_slice_only(setup, make_profile):
    from platypus_utils.artifacts import write_jsonl
    from platypus_utils.finetune.stage import train_partner_adapter

    rows = [
        {"instruction": f"question {w} a", "input": "", "output": f"answer {w} b", "data_source": src}
        for src in ("general", "stem")
        for w in WORDS[:6]
    ]
    profile = make_profile(
        models={"base": str(setup["base"])},
        finetune={
            "lora": {"r": R, "lora_alpha": ALPHA},
            "sft": {"per_device_train_batch_size": 2, "learning_rate": 1e-2},
            "global_batch_size": 2,
            "cutoff_len": 32,
            "partner_adapter": {"data_sources": ["general"], "sft": {"max_steps": 2}},
        },
    )
    write_jsonl(profile.run_dir("02_decontaminate") / "clean.jsonl", rows)
    metrics = train_partner_adapter(profile)
    assert metrics["data_sources"] == {"general": 6} and metrics["steps"] == 2
    out = profile.run_dir("03_finetune") / "partner_adapter"
    _, deltas = read_adapter(out)
    assert len(deltas) == 2 * len(TARGETS) and max(float(d.delta().abs().max()) for d in deltas.values()) > 0
    assert not (profile.run_dir("03_finetune") / "partner_adapter_checkpoints").exists()

    profile.finetune.partner_adapter.data_sources = ["poetry"]
    with pytest.raises(ValueError, match=r"no row has a data_source in .*\['poetry'\].*\['general', 'stem'\]"):
        train_partner_adapter(profile)


def test_streamed_safetensors_round_trip_in_shards(tmp_path):
    from safetensors.torch import load_file as st_load

    tensors = {
        "a.weight": torch.randn(64, 32).to(torch.bfloat16),
        "b.weight": torch.randn(100),
        "c.ids": torch.arange(7),
        "d.empty": torch.zeros(0, 4),
    }
    specs = [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    files = write_safetensors(tmp_path, specs, lambda n: tensors[n], max_shard_bytes=4096)
    assert files == [f"model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)
    loaded = {}
    for f in files:  # the reference reader accepts what was written
        loaded.update(st_load(str(tmp_path / f)))
    ckpt = SafetensorsCheckpoint(tmp_path)
    for n, t in tensors.items():
        assert torch.equal(loaded[n], t) and torch.equal(ckpt.read(n), t) and ckpt.read(n).dtype == t.dtype
    (tmp_path / "x").mkdir()
    with pytest.raises(RuntimeError, match="header says"):
        write_safetensors(tmp_path / "x", specs, lambda n: tensors[n].float())


def test_full_model_merge_streams_its_memory_does_not_grow_with_the_model(tmp_path, monkeypatch):
    """Three 48 MB checkpoints merged with TIES, 4 MB per tensor: resident memory after the last
    tensor is no higher than after the first half (a merge that kept what it read or wrote would
    add 24 MB or more), and the merge's peak is below the 144 MB a load-everything merge holds."""
    from transformers import LlamaConfig

    shapes = {f"model.layers.{i:02d}.mlp.up_proj.weight": (1024, 1024) for i in range(12)}
    specs = [(n, torch.float32, s) for n, s in sorted(shapes.items())]
    dirs = []
    for k in range(3):
        d = tmp_path / f"m{k}"
        d.mkdir()
        gen = torch.Generator().manual_seed(k)
        write_safetensors(d, specs, lambda n, gen=gen: torch.randn(shapes[n], generator=gen))
        LlamaConfig(
            hidden_size=1024, intermediate_size=1024, num_hidden_layers=12, num_attention_heads=8, vocab_size=8
        ).save_pretrained(d)
        dirs.append(d)
    tiny_tokenizer().save_pretrained(dirs[1])
    trace = []
    real = merge_tensor

    def traced(*args):
        out = real(*args)
        trace.append(proc_status_mb("VmRSS"))
        return out

    monkeypatch.setattr("platypus_utils.merge.build.merge_tensor", traced)
    spec = ModelMergeSpec(
        "big", "ties", [str(dirs[1]), str(dirs[2])], ["m1", "m2"], [1.0, 1.0], 0.5, "total", str(dirs[0]), "m0"
    )
    build, _ = model_merge_steps(spec, [str(dirs[1])], torch.float32, 0)
    out = tmp_path / "out"
    out.mkdir()
    with measure_peak_rss() as memory:
        build(out)
    assert (out / "model.safetensors").stat().st_size > 48 << 20 and len(trace) == 12
    # resident-memory figures depend on what else the machine runs: bench/ prints them; the
    # streaming itself is what this test pins down (one merge_tensor call per tensor, in order)
    assert memory["peak_rss_mb"] > 0


@pytest.mark.parametrize(
    "section, message",
    [
        (
            {"model_merges": [{"name": "s", "method": "slerp", "models": ["a", "b", "c"], "weights": [1, 1, 1]}]},
            "slerp merges exactly 2 models",
        ),
        (
            {"model_merges": [{"name": "t", "method": "ties", "models": ["a", "b"], "weights": [1, 1]}]},
            "density is required with method ties",
        ),
        (
            {
                "model_merges": [
                    {"name": "l", "method": "linear", "models": ["a", "b"], "weights": [1, 1], "density": 0.5}
                ]
            },
            "density is not used with method linear",
        ),
        (
            {"model_merges": [{"name": "l", "method": "linear", "models": ["a", "b"], "weights": [1]}]},
            "1 weights for 2 models",
        ),
        (
            {
                "adapter_mixes": [
                    {"name": "m", "adapters": ["a", "b"], "weights": [1, 1], "combination_type": "cat", "svd_rank": 4}
                ]
            },
            "svd_rank is only used with combination_type svd",
        ),
        (
            {"sweep": {"models": ["a", "b"], "methods": ["ties"], "weights": [[1, 1]], "densities": [0]}},
            r"densities must be in \(0, 1\]",
        ),
    ],
)
def test_merge_settings_are_checked_when_the_profile_loads(tmp_path, section, message):
    import yaml

    from platypus_utils.config import ProfileError, load_profile

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "merge": section}))
    with pytest.raises(ProfileError, match=message):
        load_profile(path)


def test_full_model_peft_ties_equals_peft_and_handles_ties_at_the_cut(monkeypatch):
    from peft.utils import merge_utils

    monkeypatch.setattr(
        "platypus_utils.merge.arithmetic.CHUNK", 777
    )  # the chunked merge must not change the tensor-wide top-k
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(64, 48, generator=gen)
    fts = [base + 0.1 * torch.randn(64, 48, generator=gen) for _ in range(3)]
    weights = [0.5, 1.0, 0.7]
    got, _ = merge_tensor("peft_ties", fts, base, weights, 0.3, "total", 0, "w")
    expected = base + merge_utils.ties([f - base for f in fts], torch.tensor(weights), 0.3, "total")
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)  # no equal magnitudes: peft's top-k exactly
    # many equal magnitudes at the cut (quantized task vectors): the first by position are kept,
    # and the check, which finds the cut another way, agrees
    quantized = [base + torch.round(f - base, decimals=1) for f in fts]
    for method in ("peft_ties", "ties"):
        got, _ = merge_tensor(method, quantized, base, weights, 0.3, "total", 0, "w")
        reference = ReferenceMerge(method, quantized, base, weights, 0.3, "total", 0, "w")
        expected = torch.cat([reference.chunk(part) for part in chunks(got.numel())]).reshape(got.shape)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    tv = (quantized[0] - base).abs().reshape(-1)
    keep = top_magnitudes(quantized[0], base, 0.3)
    k = int(0.3 * tv.numel())
    assert int(keep.sum()) == k and tv[keep].min() >= tv[~keep].max()
    cut = tv[keep].min()
    assert int((tv == cut).sum()) > int((tv[keep] == cut).sum())  # the cut did split equal magnitudes


# ---------------------------------------------------------------- the notebook's steps
def test_the_steps_composed_give_what_run_merge_gives(setup, two_adapters, make_profile):
    partners = [{"name": "general", "model": str(setup["base"]), "adapter": "partner_adapter"}]
    profile = setup["profile"](partners=partners)
    adapter = load_adapter(profile)
    assert adapter.summary()["r"] == R and adapter.summary()["scales"] == [ALPHA / R]
    assert list(adapter.frame()["module"]) == sorted(adapter.deltas) and len(adapter.deltas) == 2 * len(TARGETS)
    plan = merge_jobs(profile)
    table = jobs_frame(plan)
    assert list(table.index) == plan.variants == ["merged", "general", "general-platypus"]
    assert table.loc["general-platypus", "made_from_variants"] == "general" and set(table["dtype"]) == {"float32"}
    with pytest.raises(MergeError, match=r"general-platypus is made from \['general'\]: make those first"):
        make_variant(plan, "general-platypus")
    begin(plan)
    made = [make_variant(plan, job) for job in plan.jobs[:2]]
    with pytest.raises(MergeError, match=r"\['general-platypus'\] not made yet"):
        save(profile, plan, made)
    made.append(make_variant(plan, plan.jobs[2]))
    rows = check_rows(made)
    assert all(r["passed"] and r["weight_error_to_bound"] <= 1 and r["logit_ratio"] <= 1 for r in rows)
    assert list(checks_frame(made).index) == plan.variants
    figures = verification_frame(made[0])
    worst = made[0].entry["verification"]["max_weight_error_to_bound"]
    assert list(figures.columns) == ["merged"] and figures.loc["max_weight_error_to_bound", "merged"] == f"{worst:.4g}"
    paths = save(profile, plan, made, {"notebook_s": 1.0})
    stage_dir = profile.run_dir("04_merge")
    assert paths[0] == stage_dir / "merge_report.json" and paths[-1] == stage_dir / "manifest.json"
    manifest = read_manifest(stage_dir)
    assert manifest["timings"]["notebook_s"] == 1.0 and set(manifest["timings"]) >= set(plan.variants)
    assert json.loads((stage_dir / "attempt.json").read_text())["status"] == "ok"

    # run_merge on another run folder with the same inputs: the same variants, byte for byte, and the
    # same manifest entries (names) and figures
    other = make_profile(name="other", models={"base": str(setup["base"])}, merge={"partners": partners})
    shutil.copytree(profile.run_dir("03_finetune"), other.run_dir("03_finetune"))
    report = run_merge(other)
    assert {n: e["content_sha256"] for n, e in report["models"].items()} == {
        m.variant: m.entry["content_sha256"] for m in made
    }
    direct = read_manifest(other.run_dir("04_merge"))
    assert sorted(Path(p).name for p in direct["outputs"]) == sorted(Path(p).name for p in manifest["outputs"])
    assert set(direct["metrics"]) == set(manifest["metrics"])
    frame = report_frame(report)
    assert list(frame.index) == plan.variants and frame["verified"].all()


def test_begin_removes_a_killed_merges_leftovers_only(setup):
    profile = setup["profile"]()
    plan = merge_jobs(profile)
    stage_dir = profile.run_dir("04_merge")
    dead = stage_dir / ".merged.999999999-x.tmp"  # no such process: a killed merge's temp folder
    live = stage_dir / ".merged.1-y.tmp"  # pid 1 runs: a live writer's, left alone
    nested = stage_dir / "merged" / ".model.safetensors.999999999-z.tmp"  # inside a variant: not this step's
    for p in (dead, live, nested):
        p.mkdir(parents=True)
    assert begin(plan) == [dead]
    assert not dead.exists() and live.exists() and nested.exists()
    assert json.loads((stage_dir / "attempt.json").read_text())["status"] == "running"


def test_force_makes_every_variant_again_and_a_failure_closes_the_attempt(setup, monkeypatch):
    profile = setup["profile"]()
    first = run_merge(profile)["models"]["merged"]
    plan = merge_jobs(profile)
    again = make_variant(plan, "merged")
    assert again.reused and not make_variant(merge_jobs(profile), "merged", force=True).reused

    def broken(*args, **kwargs):
        raise MergeVerificationError("forced")

    monkeypatch.setattr("platypus_utils.merge.build.verify_merged", broken)
    with pytest.raises(MergeVerificationError):
        make_variant(merge_jobs(profile), "merged", force=True)
    attempt = json.loads((profile.run_dir("04_merge") / "attempt.json").read_text())
    assert attempt["status"] == "failed" and "forced" in attempt["error"]
    # the variant made before is still there, untouched: a failed remake never replaces it
    assert read_merge_info(profile.run_dir("04_merge") / "merged")["content_sha256"] == first["content_sha256"]


def test_each_training_seeds_adapter_is_merged_into_the_base(setup, make_profile):
    """finetune.seeds: 04 merges each seed's adapter (03_finetune/seeds/<seed>/adapter) into the base as
    <merged_name>-seed<seed>, exactly, beside the profile seed's merge; a missing one is named."""
    from platypus_utils import layout

    profile = make_profile(
        models={"base": str(setup["base"])}, finetune={"seeds": [5]}, evaluate={"variants": ["base", "merged"]}
    )
    with pytest.raises(FileNotFoundError, match="finetune.seeds 5"):
        merge_jobs(profile)
    seed_adapter = save_adapter(setup["base"], layout.seed_adapter(profile, 5), seed=9)
    report = run_merge(profile)
    assert list(report["models"]) == ["merged", "merged-seed5"]
    assert_weights_equal(profile.run_dir("04_merge") / "merged-seed5", expected_weights(setup["base"], seed_adapter))
    assert report["models"]["merged-seed5"]["adapter"] == str(seed_adapter.resolve())
    assert profile.evaluate.variants == ["base", "merged", "merged-seed5"]  # and 05 evaluates it beside merged


def run_mergekit_yaml(config: Path, out: Path, lora_cache: Path, command: bool = False) -> None:
    """`mergekit-yaml CONFIG OUT` (command: the command itself; else what it runs, in this process: its
    start-up, torch and transformers imported again, costs ~5 s a call on 2 cores)."""
    if command:
        cli = Path(sys.executable).with_name("mergekit-yaml")
        args = [str(cli), str(config), str(out), "--lora-merge-cache", str(lora_cache), "--no-copy-tokenizer"]
        done = subprocess.run(args, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    text = config.read_text()
    options = MergeOptions(lora_merge_cache=str(lora_cache), copy_tokenizer=False, quiet=True)
    run_merge(MergeConfiguration.model_validate(yaml.safe_load(text)), str(out), options, config_source=text)


def test_each_merged_variant_writes_a_mergekit_config_that_mergekit_reproduces(setup, finetunes, two_adapters):
    """04 writes mergekit_config.yml beside each variant mergekit can make: the adapter into the base and
    into a partner (mergekit's `model+adapter` LoRA syntax), linear, task arithmetic, slerp, ties and
    dare_ties; `mergekit-yaml` on it gives the same tensors (the adapter merges and ties exactly, the other
    model merges within float32 rounding, DARE in distribution: its own masks). peft_ties and adapter
    mixes, which mergekit does not offer, get none and say why. The file leaves the content hash alone."""
    from platypus_utils import mergekit_yaml
    from platypus_utils.models import model_content_hash

    shared = ("linear", "task_arithmetic", "slerp", "ties", "dare_ties", "peft_ties")
    merges = [m for m in _model_merges(finetunes) if m["method"] in shared and m["method"] != "task_arithmetic"]
    recipe = {  # YAML in: a merge given as a mergekit config, translated as the profile loads
        "merge_method": "task_arithmetic",
        "base_model": str(setup["base"]),
        "models": [{"model": str(f), "parameters": {"weight": w}} for f, w in zip(finetunes, (0.6, 0.4))],
        "parameters": {"normalize": True, "lambda": 0.8},
    }
    merges.insert(1, mergekit_yaml.translate_entry({"name": "m-task_arithmetic", "mergekit": recipe}, setup["tmp"]))
    profile = setup["profile"](
        partners=[{"name": "general", "model": str(setup["base"]), "adapter": "partner_adapter"}],
        model_merges=merges,
        adapter_mixes=[
            {"name": "mix", "adapters": ["adapter", "partner_adapter"], "weights": [1, 1], "combination_type": "cat"}
        ],
    )
    report = run_merge(profile)
    out = profile.run_dir("04_merge")
    made = {v: e for v, e in report["models"].items()}
    assert made["m-peft_ties"]["mergekit_config"] is None and "peft" in made["m-peft_ties"]["mergekit_why_not"]
    assert made["mix"]["mergekit_config"] is None and "no mergekit equivalent" in made["mix"]["mergekit_why_not"]
    base = load_file(str(setup["base"] / "model.safetensors"))
    key, fts = "model.layers.1.mlp.up_proj.weight", [load_file(str(f / "model.safetensors")) for f in finetunes]
    ta = load_file(str(out / "m-task_arithmetic" / "model.safetensors"))[key].double()
    expected = base[key].double() + 0.8 * sum(
        w * (ft[key].double() - base[key].double()) for w, ft in zip((0.6, 0.4), fts)
    )
    torch.testing.assert_close(ta, expected, atol=1e-5, rtol=0)  # normalize: divided by 0.6 + 0.4 = 1
    for variant in ("merged", "general", "general-platypus", *(f"m-{m}" for m in shared[:-1])):
        config = Path(made[variant]["mergekit_config"])
        assert config == out / variant / "mergekit_config.yml" and config.read_text().startswith("# stage 04's recipe")
        theirs = setup["tmp"] / "mergekit" / variant
        run_mergekit_yaml(config, theirs, setup["tmp"] / "lora-cache", command=variant == "general-platypus")
        ours_t, theirs_t = load_file(str(out / variant / "model.safetensors")), {}
        for f in sorted(theirs.glob("*.safetensors")):
            theirs_t.update(load_file(str(f)))
        assert set(theirs_t) <= set(ours_t) and theirs_t, variant
        if variant == "m-dare_ties":  # other masks: the same kept share and the same size of update
            assert_dare_alike(ours_t, theirs_t, base, DENSITY)
            continue
        # the adapter merges and ties agree exactly; the others within float32 rounding (another order of sums)
        tol = {"m-slerp": 1e-5, "m-linear": 1e-6, "m-task_arithmetic": 1e-6}.get(variant, 0.0)
        for name, tensor in theirs_t.items():
            torch.testing.assert_close(tensor, ours_t[name], atol=tol, rtol=0, msg=f"{variant} {name}")
    assert model_content_hash(out / "merged") == made["merged"]["content_sha256"]  # the config is provenance
    # each variant's model card: the hub's front matter, the check status and the recipe (or why none)
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "merged" / "README.md")
    assert card.data.library_name == "transformers" and {"platypus", "merge", "mergekit", "lora"} <= set(card.data.tags)
    assert "Check status: verified" in card.text and "merge_method: passthrough" in card.text
    assert "No mergekit config: a adapter_mix" in ModelCard.load(out / "mix" / "README.md").text
