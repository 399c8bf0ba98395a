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
        assert ft.learning_rate == lr
        assert (ft.lora_r, ft.lora_alpha, ft.lora_dropout) == (16, 16, 0.05)
        assert ft.target_modules == ["gate_proj", "up_proj", "down_proj"]
        assert ft.examples_step_plan(ft.num_gpus)[1] == 16 and ft.global_batch_size == 16  # global batch
        assert (ft.cutoff_len, ft.warmup_steps, ft.lr_scheduler_type, ft.weight_decay) == (4096, 100, "cosine", 0.0)
        assert ft.num_train_epochs == 1
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
    path = _write(tmp_path, "name: x\nfinetune:\n  lora_r: sixteen\n")
    with pytest.raises(ProfileError, match="finetune.lora_r"):
        load_profile(path)


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
    assert load_profile(path, {"finetune.max_steps": 7}).finetune.max_steps == 7
    with pytest.raises(ProfileError, match="finetune.max_stepz"):
        load_profile(path, {"finetune.max_stepz": 7})
