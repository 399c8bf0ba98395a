"""Stage 04_merge on tiny random Llama models: exactness, the partner merge, refusals, no-overwrite."""
import json

import pytest
import torch
from safetensors.torch import load_file

from platypus_utils import merge
from platypus_utils.artifacts import read_manifest
from platypus_utils.merge import MergeError, MergeVerificationError

TARGETS = ["gate_proj", "up_proj", "down_proj"]
R, ALPHA = 4, 8
WORDS = sorted({w.strip(".,?:").lower() for p in merge.VERIFY_PROMPTS for w in p.split()} | {"a", "b", "c"})


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", "</s>"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="</s>")


def tiny_config(**overrides):
    from transformers import LlamaConfig

    kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=len(WORDS) + 3, max_position_embeddings=128,
              pad_token_id=1, eos_token_id=2, bos_token_id=2)
    kw.update(overrides)
    return LlamaConfig(**kw)


def save_tiny_llama(path, seed=0, perturb_from=None, **overrides):
    """A tiny random Llama (+ tokenizer) at `path`; with perturb_from, a noisy copy of that model."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    torch.manual_seed(seed)
    if perturb_from is not None:
        model = AutoModelForCausalLM.from_pretrained(perturb_from, dtype=torch.float32)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    else:
        model = LlamaForCausalLM(tiny_config(**overrides))
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def save_adapter(base_dir, adapter_dir, seed=1, targets=TARGETS):
    """A LoRA adapter with random nonzero B (init_lora_weights=False), as stage 03 would save it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=R, lora_alpha=ALPHA, target_modules=targets,
                                                  lora_dropout=0.0, init_lora_weights=False))
    peft_model.save_pretrained(adapter_dir)
    tiny_tokenizer().save_pretrained(adapter_dir)
    return adapter_dir


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
    report = merge.run_merge(profile)

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
    report = merge.run_merge(profile)

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


@pytest.mark.parametrize("overrides, field", [({"intermediate_size": 48}, "intermediate_size"),
                                              ({"num_hidden_layers": 3}, "num_hidden_layers"),
                                              ({"hidden_size": 48, "num_attention_heads": 4}, "hidden_size")])
def test_partner_of_another_architecture_is_refused(setup, overrides, field):
    other = save_tiny_llama(setup["tmp"] / "other", seed=3, **overrides)
    profile = setup["profile"](partners=[{"name": "x", "model": str(other)}])
    with pytest.raises(MergeError, match=field):
        merge.run_merge(profile)
    assert not (profile.run_dir("04_merge") / "x-platypus").exists()
    assert read_manifest(profile.run_dir("04_merge")) is None


def test_missing_or_misshaped_target_module_is_refused(setup):
    from transformers import AutoModelForCausalLM

    _, deltas = merge.read_adapter(setup["adapter"])
    one_layer = AutoModelForCausalLM.from_config(tiny_config(num_hidden_layers=1))
    with pytest.raises(MergeError, match=r"model\.layers\.1\.mlp\.gate_proj: missing"):
        merge.check_targets(one_layer, deltas, "one-layer model")
    narrow = AutoModelForCausalLM.from_config(tiny_config(intermediate_size=48))
    with pytest.raises(MergeError, match=r"gate_proj: weight \(48, 32\), adapter needs \(64, 32\)"):
        merge.check_targets(narrow, deltas, "narrow model")
    merge.check_targets(AutoModelForCausalLM.from_config(tiny_config()), deltas, "same shape")  # no error


def test_verification_fails_on_a_model_that_is_not_base_plus_adapter(setup):
    _, deltas = merge.read_adapter(setup["adapter"])
    # the unmerged base is not base + adapter: both checks must notice
    with pytest.raises(MergeVerificationError, match="weights are not"):
        merge.verify_merged(setup["base"], str(setup["base"]), setup["adapter"], deltas, 1e-4, torch.float32)


def test_verification_fails_when_logits_disagree(setup, tmp_path):
    import shutil

    profile = setup["profile"]()
    merged_dir = profile.run_dir("04_merge") / "merged"
    merge.run_merge(profile)
    _, deltas = merge.read_adapter(setup["adapter"])
    # same LoRA factors, but peft would scale them differently than the merge did
    other = shutil.copytree(setup["adapter"], tmp_path / "rescaled")
    cfg = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps(dict(cfg, lora_alpha=2 * ALPHA)))
    with pytest.raises(MergeVerificationError, match="merged logits differ"):
        merge.verify_merged(merged_dir, str(setup["base"]), other, deltas, 1e-4, torch.float32)


def test_failed_verification_leaves_no_output(setup, monkeypatch):
    def broken(*args, **kwargs):
        raise MergeVerificationError("forced")

    monkeypatch.setattr(merge, "verify_merged", broken)
    profile = setup["profile"]()
    with pytest.raises(MergeVerificationError):
        merge.run_merge(profile)
    stage_dir = profile.run_dir("04_merge")
    assert not (stage_dir / "merged").exists()
    assert [p.name for p in stage_dir.iterdir()] == []  # no temp dir, no report, no manifest


def test_existing_output_is_reused_or_refused_without_force(setup):
    profile = setup["profile"]()
    first = merge.run_merge(profile)["models"]["merged"]
    again = merge.run_merge(profile)["models"]["merged"]
    assert again["reused"] is True and again["content_sha256"] == first["content_sha256"]
    assert again["max_abs_logit_diff"] == first["max_abs_logit_diff"]

    save_adapter(setup["base"], setup["adapter"], seed=7)  # stage 03 reran: a different adapter
    with pytest.raises(MergeError, match="--force") as err:
        merge.run_merge(profile)
    assert "adapter_sha256" in str(err.value)
    forced = merge.run_merge(profile, force=True)["models"]["merged"]
    assert forced["reused"] is False and forced["content_sha256"] != first["content_sha256"]
    assert_weights_equal(profile.run_dir("04_merge") / "merged", expected_weights(setup["base"], setup["adapter"]))


def test_tampered_or_foreign_output_is_not_reused(setup):
    profile = setup["profile"]()
    merge.run_merge(profile)
    out = profile.run_dir("04_merge") / "merged"
    (out / "config.json").write_text((out / "config.json").read_text().replace('"silu"', '"gelu"'))
    with pytest.raises(MergeError, match="files changed"):
        merge.run_merge(profile)
    (out / "merge_info.json").unlink()
    with pytest.raises(MergeError, match="no readable merge_info.json"):
        merge.run_merge(profile)


def test_missing_adapter_and_unsupported_adapters_are_clear_errors(setup, make_profile):
    with pytest.raises(FileNotFoundError, match="run stage 03_finetune first"):
        merge.run_merge(make_profile(name="other", models={"base": str(setup["base"])}))
    cfg_path = setup["adapter"] / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps(dict(cfg, use_dora=True)))
    with pytest.raises(MergeError, match="use_dora"):
        merge.read_adapter(setup["adapter"])
    with pytest.raises(MergeError, match="duplicate"):
        merge.run_merge(setup["profile"](partners=[{"name": "a", "model": str(setup["base"])}] * 2))
