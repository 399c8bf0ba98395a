"""`platypus plan`: counts checked against arithmetic, the paper's step, memory formulas against
autograd's saved tensors, and the exit when a plan does not fit (platypus_utils/plan.py)."""

import json
import math
import re
import socket

import huggingface_hub.constants
import pytest
import torch
import yaml

from platypus_utils import plan as planmod
from platypus_utils.cli import main
from platypus_utils.config import ProfileError, load_profile
from platypus_utils.layout import planned_variants

from .conftest import ROOT

LLAMA = {  # Llama-2 shapes: hidden, intermediate, layers, heads, KV heads, vocab
    "13b": (5120, 13824, 40, 40, 40, 32000),
    "70b": (8192, 28672, 80, 64, 8, 32000),
}


@pytest.fixture
def offline(monkeypatch):
    """No hub and no network: HF offline mode on, and any socket connection fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access during plan: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def _profile(size: str, tmp_path, **overrides):
    return load_profile(
        ROOT / f"params/platypus2-{size}.yaml", overrides={"paths.runs_dir": str(tmp_path / "runs"), **overrides}
    )


def _llama_params(h, i, layers, heads, kv_heads, vocab):
    kv = kv_heads * (h // heads)
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h  # q, o; k, v; gate, up, down; two RMSNorms
    return 2 * vocab * h + layers * per_layer + h  # embeddings, lm_head (untied), final norm


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    """Both paper profiles planned once, offline, from the local configs found by their hub ids."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    try:
        tmp = tmp_path_factory.mktemp("plans")
        return {size: planmod.make_plan(_profile(size, tmp)) for size in LLAMA}
    finally:
        mp.undo()


@pytest.mark.parametrize("size,expected", [("13b", 36_372_480), ("70b", 141_557_760)])
def test_lora_trainable_parameters_match_the_arithmetic(plans, size, expected):
    h, i, layers, *_ = LLAMA[size]
    p = plans[size]
    assert p["parameters"]["lora_trainable"] == expected == 3 * 16 * (h + i) * layers  # r (in + out), 3 MLP projections
    assert p["parameters"]["total"] == _llama_params(*LLAMA[size])
    assert p["config_source"].endswith(f"model_configs/llama-2-{size}")
    assert (p["model"]["hidden"], p["model"]["layers"]) == (h, layers)


@pytest.mark.parametrize("size", list(LLAMA))
def test_paper_step_and_warmup_share(plans, size):
    s, d = plans[size]["steps"], plans[size]["data"]
    assert s["examples_per_step"] == 16 and s["batch_unit"] == "examples"
    profile = load_profile(ROOT / f"params/platypus2-{size}.yaml")
    ft = profile.finetune
    assert s["gradient_accumulation_steps"] * ft.sft["per_device_train_batch_size"] * ft.num_gpus == 16
    removed = 0 if profile.training_data == "as_released" else planmod.DECONTAMINATION_REMOVED  # what 03 trains on
    assert d["train_examples"] == planmod.OPEN_PLATYPUS_ROWS - removed - ft.eval_size
    assert s["optimizer_steps"] == math.ceil(d["train_examples"] / 16)
    assert s["warmup_share"] == pytest.approx(ft.sft["warmup_steps"] / s["optimizer_steps"], abs=1e-4)
    assert s["tokens_per_step"] == round(16 * d["mean_example_tokens"])


def test_plan_reads_clean_jsonl_when_present(tmp_path, offline):
    profile = _profile("13b", tmp_path, **{"finetune.sft.per_device_train_batch_size": 2})
    clean = tmp_path / "runs" / "platypus2-13b" / "02_decontaminate" / "clean.jsonl"
    clean.parent.mkdir(parents=True)
    rows = [{"instruction": "x" * (35 * (k + 1)), "input": "", "output": "y"} for k in range(100)]
    clean.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = planmod.data_assumptions(profile)
    assert data["train_examples"] == 100 - profile.finetune.eval_size
    template = planmod._template_bytes()
    lengths = [(35 * (k + 1) + template + 1) / planmod.BYTES_PER_TOKEN for k in range(100)]
    assert data["mean_example_tokens"] == pytest.approx(sum(lengths) / 100, abs=0.05)
    assert data["max_micro_batch_tokens"] == round(lengths[-1] + lengths[-2])  # the two longest together
    steps = planmod.step_plan(profile, data)
    assert steps["optimizer_steps"] == math.ceil(data["train_examples"] / 16)


def _saved_bytes_per_token(layers, *, ckpt=False, dropout=0.05, tokens=64):
    """Bytes autograd keeps for a forward of a small bf16 Llama with the paper's LoRA (parameters excluded)."""
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from platypus_utils.config import FinetuneConfig
    from platypus_utils.finetune.trainer import build_lora_config

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=128,
        intermediate_size=352,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=layers,
        vocab_size=300,
        attn_implementation="sdpa",
    )
    lora = build_lora_config(FinetuneConfig(lora={"lora_dropout": dropout}))
    model = get_peft_model(LlamaForCausalLM(cfg).to(torch.bfloat16), lora)
    model.train()
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            kept[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=torch.randint(0, 300, (1, tokens)))
    return sum(kept.values()) / tokens, cfg


@pytest.mark.parametrize("dropout", [0.05, 0.0])
def test_activation_formula_matches_autograd(dropout):
    """One more decoder layer adds what the formula says (CPU: dropout masks are fp32, 4 bytes)."""
    two, _ = _saved_bytes_per_token(2, dropout=dropout)
    three, cfg = _saved_bytes_per_token(3, dropout=dropout)
    shape = {"hidden": 128, "kv_dim": 2 * 32, "heads": 4, "intermediate": 352, "lora_in_features": [128, 128, 352]}
    predicted = planmod.activation_bytes_per_token_layer(shape, 16, dropout > 0, mask_bytes=4)
    assert three - two == pytest.approx(predicted, rel=0.03)
    two_ckpt, _ = _saved_bytes_per_token(2, ckpt=True)
    three_ckpt, _ = _saved_bytes_per_token(3, ckpt=True)
    assert three_ckpt - two_ckpt == pytest.approx(2 * cfg.hidden_size, rel=0.03)  # the layer's bf16 input


def test_memory_components(plans):
    m13, m70 = plans["13b"]["memory"], plans["70b"]["memory"]
    assert m13["sharding"] == "single GPU" and m70["sharding"].startswith("fsdp")
    gib = 2**30
    assert m13["planned"]["weights"] == pytest.approx(_llama_params(*LLAMA["13b"]) * 2 / gib, abs=0.01)
    assert m13["planned"]["lora_state"] == pytest.approx(36_372_480 * 16 / gib, abs=0.01)
    # FSDP over 8: an eighth of the weights plus two gathered layers
    layer = _llama_params(*LLAMA["70b"][:5], 0) / 80 * 2 / gib
    assert m70["planned"]["weights"] == pytest.approx(_llama_params(*LLAMA["70b"]) * 2 / gib / 8 + 2 * layer, rel=0.01)
    for m in (m13, m70):
        assert m["with_checkpointing"]["activations"] < m["without_checkpointing"]["activations"]
        assert m["planned"]["total"] == pytest.approx(sum(v for k, v in m["planned"].items() if k != "total"), abs=0.05)


def test_disk_and_evaluation(plans):
    profile = load_profile(ROOT / "params/platypus2-70b.yaml")
    disk = plans["70b"]["disk"]
    assert disk["variants"] == planned_variants(profile)
    assert disk["model_gb"] == pytest.approx(_llama_params(*LLAMA["70b"]) * 2 / 1e9, abs=0.1)
    assert disk["merged_gb"] == pytest.approx(disk["model_gb"] * len(disk["variants"]), abs=0.2)
    ev = plans["70b"]["evaluation"]
    assert ev["tasks"]["mmlu"]["questions"] == 14042 and ev["tasks"]["arc_challenge"]["num_fewshot"] == 25
    assert ev["gpus_to_hold_model"] == 2  # 128 GiB of bf16 weights on 80 GiB GPUs
    assert plans["13b"]["evaluation"]["gpus_to_hold_model"] == 1


def test_plan_that_does_not_fit_exits_2_naming_the_keys(tmp_path, offline, capsys):
    out = tmp_path / "plan.json"
    rc = main(
        [
            "plan",
            str(ROOT / "params/platypus2-70b.yaml"),
            "--out",
            str(out),
            "--set",
            "finetune.sft.activation_checkpointing=false",
            "--set",
            f"paths.runs_dir={tmp_path / 'runs'}",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "plan.gpu_memory_gb" in err and "finetune.sft.activation_checkpointing: true" in err
    assert json.loads(out.read_text())["memory"]["fits"] is False
    rc = main(
        [
            "plan",
            str(ROOT / "params/platypus2-70b.yaml"),
            "--out",
            str(out),
            "--gpu-memory-gb",
            "200",
            "--set",
            "finetune.sft.activation_checkpointing=false",
            "--set",
            f"paths.runs_dir={tmp_path / 'runs'}",
        ]
    )
    assert rc == 2 and "the planned peak memory per GPU" in capsys.readouterr().err  # 330 GiB > 200


def test_plan_that_fits_exits_0_and_prints_the_table(tmp_path, offline, capsys):
    out = tmp_path / "plan.json"
    rc = main(
        [
            "plan",
            str(ROOT / "params/platypus2-70b.yaml"),
            "--out",
            str(out),
            "--gpu",
            "h100",
            "--config",
            str(ROOT / "params/model_configs/llama-2-70b"),
            "--set",
            f"paths.runs_dir={tmp_path / 'runs'}",
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "141,557,760" in printed and "H100" in printed and "warm-up share" in printed
    saved = json.loads(out.read_text())
    assert saved["config_source"] == str(ROOT / "params/model_configs/llama-2-70b")
    assert saved["time"]["peak_tflops"] == 989.0 and saved["memory"]["fits"] is True


def test_hub_profile_without_a_local_config_fails_offline_naming_the_key(tmp_path, offline):
    raw = yaml.safe_load((ROOT / "params/platypus2-13b.yaml").read_text())
    raw["models"]["base"] = "example-org/no-such-model"
    (tmp_path / "params").mkdir()
    path = tmp_path / "params" / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    profile = load_profile(path)
    assert planmod.config_source(profile) == "example-org/no-such-model"
    with pytest.raises(ProfileError, match="plan.base_config"):
        planmod.make_plan(profile)
    with pytest.raises(ProfileError, match="--config"):
        planmod.config_source(profile, config_dir=str(tmp_path))  # no config.json there


def test_sharding_follows_the_accelerate_config(tmp_path):
    ddp = _profile("70b", tmp_path, **{"finetune.accelerate_config": str(ROOT / "accelerate/ddp.yaml")})
    assert planmod.sharding(ddp) == {"kind": "multi_gpu (replicated)", "model_shards": 1, "state_shards": 1}
    zero3 = _profile("70b", tmp_path, **{"finetune.accelerate_config": str(ROOT / "accelerate/zero3.yaml")})
    assert planmod.sharding(zero3)["model_shards"] == 8


# ---------------------------------------------------------------- evaluation hours and host memory
@pytest.mark.parametrize("size", list(LLAMA))
def test_plan_prints_eval_hours_per_backend_and_host_memory(plans, size):
    printed = planmod.format_plan(plans[size])
    ev, host = plans[size]["evaluation"], plans[size]["host_memory"]
    for backend in planmod.EVAL_BACKENDS:
        row = next(line for line in printed.splitlines() if line.startswith(f"  {planmod.EVAL_BACKENDS[backend]}  "))
        hours = re.findall(r"\d+\.\d h", row)
        assert len(hours) == len(planmod.GPU_PEAK_TFLOPS) + 1, row  # each GPU kind, and spread over the GPUs
        assert f"{ev['hours'][backend]['h100']:.1f} h" in row
    assert "evaluation (estimates)" in printed and "assumptions" in printed and "skip_reading_prefix_cache" in printed
    assert "target                    every model <= 4 h on one H100" in printed
    assert "host memory, stage 04 (estimate" in printed and "peak host RAM" in printed and "checks stream" in printed
    whole = {"13b": 52.2, "70b": 276.5}[size]  # merged + source model, float16, + the adapter
    assert host["whole_check_gb"] == pytest.approx(whole, abs=0.1) and f"check ~{whole:.1f} GB whole" in printed
    assert host["dtype"] == "float16" and [j["variant"] for j in host["jobs"]] == plans[size]["disk"]["variants"]
    assert host["peak_gb"] == host["whole_check_gb"] and host["peak_streamed_gb"] < host["whole_check_gb"] / 1.9
    assert host["streams_below_available_gb"] == pytest.approx(whole / 0.8, abs=0.1)


def test_eval_tokens_per_backend_follow_each_tasks_fewshot_structure(plans):
    tasks = plans["13b"]["evaluation"]["tasks"]
    arc, mmlu = planmod.EVAL_TASKS["arc_challenge"], planmod.EVAL_TASKS["mmlu"]
    # ARC: 25 examples sampled per question, so only a question's own options share a prefix
    request = (25 * arc.shot_chars + arc.question_chars + arc.answer_chars) / planmod.BYTES_PER_TOKEN
    arc_tokens = tasks["arc_challenge"]["forward_tokens"]
    assert arc_tokens["hf"] == arc_tokens["vllm"] == round(1172 * 4 * request)
    context = (25 * arc.shot_chars + arc.question_chars) / planmod.BYTES_PER_TOKEN
    answer = arc.answer_chars / planmod.BYTES_PER_TOKEN
    assert arc_tokens["vllm_prefix_cached"] == round(1172 * (context + answer + 3 * (answer + 8)))
    # MMLU: one pass per question in HFLM (one-token options), four in lm-eval's vLLM path, and the
    # subject's 5 fixed dev examples computed once per subject when the prefix cache is read
    shared = (mmlu.fixed_chars + 5 * mmlu.shot_chars) / planmod.BYTES_PER_TOKEN
    mmlu_tokens = tasks["mmlu"]["forward_tokens"]
    assert mmlu_tokens["hf"] == round(14042 * (shared + mmlu.question_chars / planmod.BYTES_PER_TOKEN + 1))
    assert mmlu_tokens["vllm"] == pytest.approx(4 * mmlu_tokens["hf"], abs=2)
    assert mmlu_tokens["vllm_prefix_cached"] < mmlu_tokens["hf"] / 4
    for t in tasks.values():
        assert t["forward_tokens"]["vllm_prefix_cached"] < t["forward_tokens"]["hf"] <= t["forward_tokens"]["vllm"]


def test_eval_hours_count_references_spread_over_gpus_and_check_the_target(tmp_path):
    base = planmod.make_plan(_profile("13b", tmp_path, **{"evaluate.references": []}))["evaluation"]
    profile = _profile("13b", tmp_path, **{"plan.eval_gpus": 4, "plan.gpu": "h100"})
    ev = planmod.make_plan(profile)["evaluation"]
    assert ev["references"] == len(profile.evaluate.references) > 0
    assert ev["models"] == base["models"] + ev["references"] == len(profile.evaluate.variants) + ev["references"]
    for backend in planmod.EVAL_BACKENDS:  # hours scale with the models; 13B fits one GPU: 4 replicas
        assert ev["hours"][backend]["a100"] == pytest.approx(
            base["hours"][backend]["a100"] * ev["models"] / base["models"], rel=0.01
        )
        per_model = ev["hours"][backend]["h100"] / ev["models"]
        assert ev["spread"]["hours"][backend] == pytest.approx(math.ceil(ev["models"] / 4) * per_model, abs=0.01)
    assert ev["spread"]["replicas"] == 4 and ev["gpus_to_hold_model"] == 1
    h = ev["hours"]
    assert h["hf"]["a100"] == pytest.approx(h["hf"]["h100"] * 989 / 312, rel=0.01)  # the peak FLOP/s ratio
    met = ev["target"]["met"]
    assert met["vllm"] is False and h["vllm"]["h100"] > 4  # lm-eval 0.4.13's vLLM path: no prefix reuse
    assert met["vllm_prefix_cached"] is (h["vllm_prefix_cached"]["h100"] <= 4)
    slower = planmod.make_plan(_profile("13b", tmp_path, **{"plan.eval_mfu_vllm": 0.25}))["evaluation"]
    assert slower["hours"]["vllm"]["h100"] == pytest.approx(2 * h["vllm"]["h100"], rel=0.01)


def test_70b_evaluation_needs_two_gpus_per_replica(plans):
    ev = plans["70b"]["evaluation"]
    assert ev["gpus_to_hold_model_by_gpu"]["h100"] == 2 and ev["target"]["one_gpu_holds_model"] is False
    assert not any(ev["target"]["met"].values())
    assert ev["spread"]["replicas"] == 4  # 8 GPUs (finetune.num_gpus), 2 per replica
    # hf spreads the layers (one GPU busy at a time); vllm's tensor parallel uses both
    ratio = ev["hours"]["hf"]["h100"] / ev["hours"]["vllm"]["h100"]
    tokens = ev["forward_tokens_per_model"]
    assert ratio == pytest.approx(2 * tokens["hf"] / tokens["vllm"] * ev["mfu"]["vllm"] / ev["mfu"]["hf"], rel=0.01)


def test_seeds_add_their_merges_to_the_evaluation_and_to_the_host_memory_jobs(plans, tmp_path):
    profile = _profile("13b", tmp_path, **{"finetune.seeds": [7, 8]})
    plan = planmod.make_plan(profile)
    ev, jobs = plan["evaluation"], {j["variant"]: j for j in plan["host_memory"]["jobs"]}
    assert ev["models"] == plans["13b"]["evaluation"]["models"] + 2 and ev["seeds"] == 3
    assert [v for v in jobs if "seed" in v] == ["platypus2-13b-seed7", "platypus2-13b-seed8"]
    assert jobs["platypus2-13b-seed7"]["kind"] == "adapter" and list(jobs) == plan["disk"]["variants"]
    assert "(8 variants + 4 references, 3 seeds)".replace("8", str(ev["variants"])) in planmod.format_plan(plan)


def test_host_memory_of_mixes_and_model_merges(make_profile):
    from platypus_utils.merge.memory import host_memory_plan

    profile = make_profile(
        merge={
            "adapter_mixes": [{"name": "mix", "adapters": ["adapter", "partner_adapter"], "weights": [1, 1]}],
            "model_merges": [
                {"name": "soup", "method": "ties", "models": ["merged", "mix"], "weights": [1, 1], "density": 0.5}
            ],
        }
    )
    params, largest = 1_000_000_000, 50_000_000
    host = host_memory_plan(profile, params, largest, 10_000_000, 2)
    kinds = {j["variant"]: (j["kind"], j["merge"], j["check_whole"]) for j in host["jobs"]}
    assert kinds["merged"] == ("adapter", 2.0, 4.0)  # one fp16 model (+ 0.04 GB adapter, rounded); check: two
    assert kinds["mix"][:2] == ("mix", 4.0)  # a float32 copy
    assert kinds["soup"][0] == "models" and kinds["soup"][2] is None and kinds["soup"][1] < 1.0  # streamed
    assert host["peak_gb"] == 4.0 and host["streams_below_available_gb"] == 5.0
