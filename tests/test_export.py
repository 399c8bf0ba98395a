"""`platypus push` (export.py): the adapter and merged models, with their cards, to a local stand-in of the hub
API (no network): what is created and uploaded where, and every refusal."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from platypus_utils import cli, export
from platypus_utils.config import ProfileError, load_profile


class FakeHub:
    """huggingface_hub.HfApi's create_repo and upload_folder, recording each call; a repo id without a
    namespace gets the token's user, "me", as the hub does."""

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.uploads: list[dict] = []

    def create_repo(self, repo_id, repo_type=None, private=None, exist_ok=False, **kw):
        full = repo_id if "/" in repo_id else f"me/{repo_id}"
        if full in self.repos and not exist_ok:
            raise RuntimeError(f"{full} exists")
        self.repos.setdefault(full, {"private": private, "repo_type": repo_type})
        return SimpleNamespace(repo_id=full, url=f"https://huggingface.co/{full}")

    def upload_folder(self, repo_id, folder_path, repo_type=None, commit_message=None, ignore_patterns=(), **kw):
        if repo_id not in self.repos:
            raise RuntimeError(f"{repo_id}: no such repo")
        files = sorted(
            p.relative_to(folder_path).as_posix()
            for p in Path(folder_path).rglob("*")
            if p.is_file() and not any(p.match(pat) for pat in ignore_patterns)
        )
        self.uploads.append({"repo_id": repo_id, "files": files, "message": commit_message})
        oid = f"{len(self.uploads):040d}"
        return SimpleNamespace(oid=oid, commit_url=f"https://huggingface.co/{repo_id}/commit/{oid}")


def write_profile(tmp_path: Path, base: str = "org/tiny-llama", **export_cfg) -> Path:
    raw = {
        "name": "hubrun",
        "paths": {"runs_dir": str(tmp_path / "runs"), "reports_dir": str(tmp_path / "reports")},
        "models": {"base": base},
        "export": export_cfg,
    }
    path = tmp_path / "hubrun.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def write_outputs(tmp_path: Path, card: bool = True) -> None:
    """What 03 and 04 leave: the adapter and one merged model, each with its card, and 04's report."""
    runs = tmp_path / "runs" / "hubrun"
    adapter, merged = runs / "03_finetune" / "adapter", runs / "04_merge" / "merged"
    for folder, files in ((adapter, ["adapter_model.safetensors"]), (merged, ["model.safetensors", "config.json"])):
        folder.mkdir(parents=True)
        for name in files + ["manifest.json"] + (["README.md"] if card else []):
            (folder / name).write_text("x")
    report = {"models": {"merged": {"path": str(merged), "method": "linear"}}}
    (runs / "04_merge" / "merge_report.json").write_text(json.dumps(report))


def test_push_uploads_the_adapter_and_each_merged_model_with_its_card(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    write_outputs(tmp_path)
    profile = load_profile(write_profile(tmp_path, push_to_hub=True, repo_id="my-org/{profile}-{variant}"))
    hub = FakeHub()
    monkeypatch.setattr(export, "HfApi", lambda: hub)
    records = export.push_to_hub(profile)
    assert hub.repos == {
        "my-org/hubrun-adapter": {"private": True, "repo_type": "model"},
        "my-org/hubrun-merged": {"private": True, "repo_type": "model"},
    }
    assert hub.uploads == [
        {
            "repo_id": "my-org/hubrun-adapter",
            "files": ["README.md", "adapter_model.safetensors"],  # the run's manifest stays here
            "message": "platypus hubrun: adapter",
        },
        {
            "repo_id": "my-org/hubrun-merged",
            "files": ["README.md", "config.json", "model.safetensors"],
            "message": "platypus hubrun: merged",
        },
    ]
    assert [r["commit"] for r in records] == [f"{1:040d}", f"{2:040d}"]
    pushed = json.loads((tmp_path / "runs" / "hubrun" / "export" / "pushed.json").read_text())
    assert pushed == records and pushed[1]["url"].endswith(f"my-org/hubrun-merged/commit/{2:040d}")


def test_platypus_push_on_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    write_outputs(tmp_path)
    path = write_profile(tmp_path, push_to_hub=True, private=False, variants=["merged"])
    hub = FakeHub()
    monkeypatch.setattr(export, "HfApi", lambda: hub)
    assert cli.main(["push", str(path), "--dry-run"]) == 0
    assert "merged: " in capsys.readouterr().out and hub.uploads == []
    assert cli.main(["push", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"-> me/hubrun-merged: pushed, commit {1:040d}" in out  # no namespace: the token's user
    assert hub.repos == {"me/hubrun-merged": {"private": False, "repo_type": "model"}}


def test_push_is_off_by_default(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    write_outputs(tmp_path)
    path = write_profile(tmp_path)
    assert load_profile(path).export.push_to_hub is False
    assert cli.main(["push", str(path)]) == 2
    assert "key 'export.push_to_hub' is off: set it to true" in capsys.readouterr().err


def test_an_offline_profile_refuses_push_to_hub(tmp_path):
    path = write_profile(tmp_path, base="embedded:smollm2-135m-instruct", push_to_hub=True)
    with pytest.raises(ProfileError, match=r"key 'export.push_to_hub': this profile references nothing on the hub"):
        load_profile(path)
    assert load_profile(write_profile(tmp_path, base="embedded:smollm2-135m-instruct")).export.push_to_hub is False


def test_an_offline_environment_a_missing_token_or_card_is_refused(tmp_path, monkeypatch):
    write_outputs(tmp_path, card=False)
    profile = load_profile(write_profile(tmp_path, push_to_hub=True))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(export.ExportError, match="HF_HUB_OFFLINE is set"):
        export.push_to_hub(profile)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(export, "get_token", lambda: None)
    with pytest.raises(export.ExportError, match="no hub token"):
        export.push_to_hub(profile)
    monkeypatch.setattr(export, "get_token", lambda: "hf_test")
    hub = FakeHub()
    monkeypatch.setattr(export, "HfApi", lambda: hub)
    with pytest.raises(export.ExportError, match=r"adapter: no README.md \(model card\)"):
        export.push_to_hub(profile)
    assert hub.repos == {}  # nothing created before every folder was checked


@pytest.mark.parametrize(
    ("export_cfg", "message"),
    [
        ({"repo_id": "me/{profile}"}, "name {variant}"),
        ({"repo_id": "me/{variant}-{user}"}, "only {profile} and {variant}"),
        ({"repo_id": "a/b/{variant}"}, "expected [namespace/]name"),
        ({"variants": ["nope"]}, "key 'export.variants': ['nope'] not made by this run"),
        ({"push": True}, "unknown key 'export.push'"),
    ],
)
def test_bad_export_keys_are_named(tmp_path, export_cfg, message):
    with pytest.raises(ProfileError, match="hubrun.yaml") as info:
        load_profile(write_profile(tmp_path, **export_cfg))
    assert message in str(info.value)


def test_a_variant_not_made_yet_names_its_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    profile = load_profile(write_profile(tmp_path, push_to_hub=True, variants=["adapter"]))
    with pytest.raises(export.ExportError, match="'adapter' has no folder: run 03_finetune first"):
        export.push_to_hub(profile)
