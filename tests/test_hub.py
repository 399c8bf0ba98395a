"""Hub access follows the profile; gated repos, missing partners and absent GPUs fail before any stage."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

from platypus_utils import cli, hub, preflight, runner
from platypus_utils.config import ProfileError, load_profile
from platypus_utils.refs import split_revision

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    return monkeypatch


def _error(cls, message: str):
    exc = cls.__new__(cls)  # the hub's errors want an HTTP response; the message is what matters here
    Exception.__init__(exc, message)
    return exc


@pytest.mark.parametrize("name", ["demo", "real-offline"])
def test_offline_profiles_switch_the_hub_off(clean_env, name):
    profile = load_profile(ROOT / "params" / f"{name}.yaml")
    assert not profile.needs_hub() and hub.hub_references(profile) == []
    assert hub.apply_hub_mode(profile).startswith("offline")
    assert os.environ["HF_HUB_OFFLINE"] == os.environ["HF_DATASETS_OFFLINE"] == "1"
    assert hf_constants.HF_HUB_OFFLINE is True  # the library already imported is told too


@pytest.mark.parametrize("name", ["platypus2-13b", "platypus2-70b", "colab-a100"])
def test_hub_profiles_stay_online(clean_env, name):
    profile = load_profile(ROOT / "params" / f"{name}.yaml")
    assert hub.apply_hub_mode(profile).startswith("online")
    assert "HF_HUB_OFFLINE" not in os.environ and hf_constants.HF_HUB_OFFLINE is False
    keys = {r.key: r.repo_id for r in hub.hub_references(profile)}
    assert keys["models.base"].startswith("meta-llama/Llama-2-")
    assert all(
        keys[f"merge.partners[{i}].model"] == split_revision(p.model)[0] for i, p in enumerate(profile.merge.partners)
    )
    assert keys["curate.sources[0].hub_id"] == "garage-bAInd/Open-Platypus"  # the repo id, its revision apart
    assert keys["evaluate.tasks.mmlu"] == "cais/mmlu"  # lm-eval's built-in tasks read the hub too


def test_a_users_offline_choice_is_kept_and_logged(clean_env, caplog):
    clean_env.setenv("HF_HUB_OFFLINE", "1")  # an air-gapped node with a filled cache
    profile = load_profile(ROOT / "params" / "platypus2-13b.yaml")
    assert "must be cached" in hub.apply_hub_mode(profile)
    assert os.environ["HF_HUB_OFFLINE"] == "1" and "HF_HUB_OFFLINE is set" in caplog.text
    clean_env.setattr(hub, "auth_check", lambda *a, **k: pytest.fail("no hub call when offline"))
    assert hub.check_hub_access(profile) == []


def test_nothing_switches_the_hub_off_behind_the_profile():
    """Only hub.py sets the offline variables; the Makefile does not export them."""
    for path in (ROOT / "platypus_utils").rglob("*.py"):
        if path.name != "hub.py":
            assert not re.search(r"environ(\.setdefault\(|\[)\s*[\"']HF_(HUB|DATASETS)_OFFLINE", path.read_text()), path
    assert "HF_HUB_OFFLINE" not in "".join(
        line for line in (ROOT / "Makefile").read_text().splitlines(True) if not line.lstrip().startswith("#")
    )


@pytest.mark.parametrize(
    "token, says", [(None, "no token was found: set HF_TOKEN"), ("hf_refused", "the hub refused this token")]
)
def test_gated_base_without_access_names_the_key_and_repo(clean_env, token, says):
    clean_env.setattr(hub, "get_token", lambda: token)
    seen = []

    def stand_in(repo_id, repo_type=None, token=None):
        seen.append((repo_id, repo_type, token))
        if repo_id.startswith("meta-llama/"):
            raise _error(GatedRepoError, "403 gated")

    clean_env.setattr(hub, "auth_check", stand_in)
    profile = load_profile(ROOT / "params" / "platypus2-13b.yaml")
    with pytest.raises(
        hub.HubAccessError,
        match=rf"key 'models.base': 'meta-llama/Llama-2-13b-hf' is a gated repo "
        rf"\(https://huggingface.co/meta-llama/Llama-2-13b-hf\); {says}",
    ):
        hub.check_hub_access(profile)
    assert seen == [("meta-llama/Llama-2-13b-hf", "model", token)]  # the token at hand is the one asked with


def test_missing_partner_repo_names_its_key(clean_env):
    clean_env.setattr(hub, "get_token", lambda: "hf_ok")

    def stand_in(repo_id, repo_type=None, token=None):
        if repo_id == "stabilityai/StableBeluga-13B":
            raise _error(RepositoryNotFoundError, "404")

    clean_env.setattr(hub, "auth_check", stand_in)
    profile = load_profile(ROOT / "params" / "platypus2-13b.yaml")
    with pytest.raises(
        hub.HubAccessError,
        match=r"key 'merge.partners\[1\].model': model repo "
        r"'stabilityai/StableBeluga-13B' was not found",
    ):
        hub.check_hub_access(profile)
    clean_env.setattr(hub, "auth_check", lambda *a, **k: None)
    ok = hub.check_hub_access(load_profile(ROOT / "params" / "colab-a100.yaml"))
    assert {r.repo_id for r in ok} >= {"meta-llama/Llama-2-13b-hf", "stabilityai/StableBeluga-13B"}


def _shape(**overrides):
    base = dict(
        model_type="llama",
        hidden_size=5120,
        intermediate_size=13824,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=40,
        vocab_size=32000,
    )
    return SimpleNamespace(**{**base, **overrides})


def test_partner_of_another_architecture_is_refused_from_its_config(caplog, monkeypatch):
    profile = load_profile(ROOT / "params" / "platypus2-13b.yaml")
    configs = {
        "meta-llama/Llama-2-13b-hf": _shape(),
        "Open-Orca/OpenOrcaxOpenChat-Preview2-13B": _shape(),
        "stabilityai/StableBeluga-13B": _shape(),
        "augtoma/qCammel-13": _shape(hidden_size=4096, num_hidden_layers=32),
    }
    # a pinned reference reads its own config
    monkeypatch.setattr(preflight, "_load_config", lambda ref, cache_dir: configs[split_revision(ref)[0]])
    with pytest.raises(
        ProfileError,
        match=r"key 'merge.partners\[2\].model': augtoma/qCammel-13 is not a fine-tune "
        r"of models.base .*hidden_size 4096 \(base 5120\)",
    ):
        preflight.check_partner_architectures(profile)
    configs["augtoma/qCammel-13"] = _shape()
    preflight.check_partner_architectures(profile)
    # a fine-tune that added tokens (OpenOrca's chat tokens, say) still takes the adapter: said, not refused,
    # by the same rule stage 04 applies (models.architecture_differences)
    configs["Open-Orca/OpenOrcaxOpenChat-Preview2-13B"] = _shape(vocab_size=32002)
    with caplog.at_level(logging.WARNING, logger="platypus"):
        preflight.check_partner_architectures(profile)
    assert "merge.partners[0].model" in caplog.text and "vocab_size 32002, models.base 32000" in caplog.text


def test_more_gpus_than_the_machine_has_is_refused(monkeypatch):
    profile = load_profile(ROOT / "params" / "platypus2-70b.yaml")

    def check(stages, gpus):
        monkeypatch.setattr(preflight.torch.cuda, "device_count", lambda: gpus)
        preflight.check_devices(profile, stages)

    with pytest.raises(ProfileError, match=r"key 'finetune.num_gpus': 8 GPUs asked for, 2 visible"):
        check(["03_finetune"], 2)
    check(["03_finetune"], 8)
    with pytest.raises(ProfileError, match=r"key 'evaluate.device'"):
        check(["05_evaluate"], 0)
    check(["01_curate"], 0)  # curating needs no GPU


def test_run_of_a_gated_profile_stops_before_any_stage(clean_env, tmp_path):
    clean_env.setattr(hub, "get_token", lambda: None)
    clean_env.setattr(hub, "auth_check", lambda repo_id, **kw: (_ for _ in ()).throw(_error(GatedRepoError, "403")))
    clean_env.setattr(preflight, "check_devices", lambda *a, **k: None)  # as on a GPU node
    overrides = {"paths.runs_dir": str(tmp_path / "runs"), "paths.reports_dir": str(tmp_path / "reports")}
    with pytest.raises(hub.HubAccessError, match="models.base"):
        runner.run(ROOT / "params" / "platypus2-13b.yaml", overrides=overrides)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "reports").exists()


# ---------------------------------------------------------------- pinned revisions
def test_hub_references_carry_their_pinned_revision():
    profile = load_profile(ROOT / "params" / "platypus2-13b.yaml")
    refs = {r.key: r for r in hub.hub_references(profile)}
    base = refs["models.base"]
    assert (base.repo_id, base.revision) == tuple(split_revision(profile.models.base)) and len(base.revision) == 40
    assert refs["curate.sources[0].hub_id"].revision is not None  # the dataset as released, at one commit
    unpinned = {r.key for r in hub.unpinned_references(profile)}
    assert "models.base" not in unpinned and not any(k.startswith("evaluate.tasks.") for k in unpinned)  # lm-eval's


def test_validate_warns_about_unpinned_hub_references_without_failing(tmp_path, capsys):
    profile = tmp_path / "params" / "hubby.yaml"
    profile.parent.mkdir()
    profile.write_text(
        "models: {base: meta-llama/Llama-2-13b-hf@0123456789abcdef0123456789abcdef01234567,"
        " embedding: sentence-transformers/all-MiniLM-L6-v2}\n"
        "curate: {sources: [{name: hub, hub_id: garage-bAInd/Open-Platypus}]}\n"
    )
    assert cli.main(["validate", str(profile), str(ROOT / "params" / "demo.yaml")]) == 0
    out, err = capsys.readouterr()
    assert f"{profile}: ok" in out and "demo.yaml: ok" in out
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert [w.split("key ")[1].split(":")[0] for w in warned] == ["'models.embedding'", "'curate.sources[0].hub_id'"]
    assert "garage-bAInd/Open-Platypus@<commit sha>" in err and "demo.yaml" not in err  # offline: nothing to pin
