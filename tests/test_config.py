from pathlib import Path

import pytest
import yaml

from platypus_utils.config import STAGES, ProfileError, load_profile

from .conftest import ROOT

PROFILES = sorted((ROOT / "params").glob("*.yaml"))


def test_all_profiles_present():
    names = {p.stem for p in PROFILES}
    assert {"demo", "real-offline", "platypus2-13b", "platypus2-70b"} <= names


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_profiles_validate(path):
    profile = load_profile(path)
    assert profile.name == path.stem
    for stage in STAGES:
        assert isinstance(profile.stage_params(stage), dict)
    assert Path(profile.paths.runs_dir).is_absolute()


def test_paper_recipes_match_the_paper():
    p13, p70 = load_profile(ROOT / "params/platypus2-13b.yaml"), load_profile(ROOT / "params/platypus2-70b.yaml")
    for p, lr, base in ((p13, 4e-4, "meta-llama/Llama-2-13b-hf"), (p70, 3e-4, "meta-llama/Llama-2-70b-hf")):
        ft = p.finetune
        assert p.models.base.split("@")[0] == base  # pinned to a commit: org/name@<sha>
        sft, lora = ft.sft, ft.lora
        assert sft["learning_rate"] == lr
        assert (lora["r"], lora["lora_alpha"], lora["lora_dropout"]) == (16, 16, 0.05)
        assert lora["target_modules"] == ["gate_proj", "up_proj", "down_proj"]
        assert ft.examples_step_plan(ft.num_gpus)[1] == 16 and ft.global_batch_size == 16  # global batch
        assert (ft.cutoff_len, sft["warmup_steps"], sft["lr_scheduler_type"], sft["weight_decay"]) == (
            4096,
            100,
            "cosine",
            0.0,
        )
        assert sft["num_train_epochs"] == 1 and sft["max_steps"] == -1  # one epoch, not a step count
        assert p.curate.similarity_threshold == 0.8 and p.decontaminate.similarity_threshold == 0.8


def _write(tmp_path, text):
    path = tmp_path / "params" / "bad.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_unknown_key_names_key_and_file(tmp_path):
    raw = yaml.safe_load((ROOT / "params/demo.yaml").read_text())
    raw["curate"]["similarity_treshold"] = 0.8
    path = _write(tmp_path, yaml.safe_dump(raw))
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert "curate.similarity_treshold" in str(err.value) and str(path) in str(err.value)


def test_mistyped_value_names_key(tmp_path):
    path = _write(tmp_path, "name: x\nfinetune:\n  lora:\n    r: sixteen\n")
    with pytest.raises(ProfileError, match="key 'finetune.lora.r': Input should be a valid integer"):
        load_profile(path)


@pytest.mark.parametrize(
    "text, key, says",
    [
        ("sft:\n    learnig_rate: 1.0e-4", "finetune.sft.learnig_rate", "did you mean learning_rate"),
        ("sft:\n    lr_scheduler_type: cosinus", "finetune.sft.lr_scheduler_type", "cosine_with_restarts"),
        ("sft:\n    max_steps: -5", "finetune.sft.max_steps", ">= -1"),
        ("sft:\n    output_dir: elsewhere", "finetune.sft.output_dir", "set by the project"),
        ("sft:\n    max_length: 512", "finetune.sft.max_length", "finetune.cutoff_len"),
        ("sft:\n    gradient_accumulation_steps: 4", "finetune.sft.gradient_accumulation_steps", "global_batch_size"),
        ("lora:\n    r: -1", "finetune.lora.r", ">= 1"),
        ("lora:\n    lora_rank: 8", "finetune.lora.lora_rank", "LoraConfig has no option"),
        ("lora:\n    task_type: SEQ_CLS", "finetune.lora.task_type", "set by the project"),
        ("lora:\n    layers_pattern: layers", "finetune.lora.layers_pattern", "peft's LoraConfig refuses"),
        ("learning_rate: 1.0e-4", "finetune.learning_rate", "finetune.sft.learning_rate"),
        ("lora_r: 8", "finetune.lora_r", "finetune.lora.r"),
        ("partner_adapter: {data_sources: [a], max_steps: 2}", "finetune.partner_adapter.max_steps", "sft.max_steps"),
    ],
)
def test_sft_and_lora_options_fail_naming_the_key_and_file(tmp_path, text, key, says):
    """finetune.sft / finetune.lora are checked against TRL's SFTConfig and peft's LoraConfig when the
    profile loads; the error names the key inside the mapping and the file (a moved flat key: where to)."""
    path = _write(tmp_path, f"name: x\nfinetune:\n  {text}\n")
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    message = str(err.value)
    assert f"key '{key}'" in message and says in message and str(path) in message


def test_sft_and_lora_take_any_option_of_the_classes_over_the_paper_defaults(tmp_path):
    """A partial mapping keeps the paper's other values; an option the project never names passes
    through, read as its declared type (a quoted number in YAML becomes the float SFTConfig declares)."""
    path = _write(
        tmp_path,
        "name: x\nfinetune:\n  sft: {weight_decay: 0.1, learning_rate: '2e-4', neftune_noise_alpha: 5}\n"
        "  lora: {r: 8, use_rslora: true}\n  global_batch_size: null\n"
        "  partner_adapter: {data_sources: [a], sft: {gradient_accumulation_steps: 2}}\n",
    )
    ft = load_profile(path).finetune
    assert (ft.sft["weight_decay"], ft.sft["learning_rate"], ft.sft["neftune_noise_alpha"]) == (0.1, 2e-4, 5)
    assert (ft.sft["warmup_steps"], ft.sft["lr_scheduler_type"]) == (100, "cosine")  # the paper's, kept
    assert (ft.lora["r"], ft.lora["lora_alpha"], ft.lora["use_rslora"]) == (8, 16, True)
    assert ft.partner_adapter.sft == {"max_steps": 4, "gradient_accumulation_steps": 2}
    assert ft.examples_step_plan(1) == (1, 1)  # global_batch_size null: sft's accumulation (TRL's default 1)


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(ProfileError, match="unknown key 'finetuning'"):
        load_profile(_write(tmp_path, "name: x\nfinetuning: {}\n"))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ProfileError, match="not found"):
        load_profile(tmp_path / "nope.yaml")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(_write(tmp_path, "name: [x\n"))


def test_paths_resolve_against_project_root_and_data_dir(tmp_path):
    path = _write(
        tmp_path,
        "name: x\npaths: {data_dir: data}\ncurate:\n  sources: [{name: math, path: sources/math}]\n"
        "decontaminate: {benchmarks_dir: benchmarks}\n",
    )
    p = load_profile(path)
    assert p.paths.runs_dir == str(tmp_path / "runs")
    assert p.curate.sources[0].path == str(tmp_path / "data" / "sources" / "math")
    assert p.decontaminate.benchmarks_dir == str(tmp_path / "data" / "benchmarks")
    assert p.evaluate.benchmarks_dir == "demo"


def test_overrides_are_validated(tmp_path):
    path = _write(tmp_path, "name: x\n")
    assert load_profile(path, {"finetune.sft.max_steps": 7}).finetune.sft["max_steps"] == 7
    assert load_profile(path, {"finetune.lora.r": 4}).finetune.lora["lora_alpha"] == 16  # the others kept
    with pytest.raises(ProfileError, match="key 'finetune.max_steps': moved: write it as finetune.sft.max_steps"):
        load_profile(path, {"finetune.max_steps": 7})
    with pytest.raises(ProfileError, match="finetune.max_stepz"):
        load_profile(path, {"finetune.max_stepz": 7})
