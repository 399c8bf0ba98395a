import subprocess
import sys

import yaml

from .conftest import ROOT


def test_mistyped_key_fails_before_any_stage(tmp_path):
    raw = yaml.safe_load((ROOT / "params/demo.yaml").read_text())
    raw["finetune"]["sft"]["learning_rat"] = 1e-3
    raw["paths"] = {"runs_dir": str(tmp_path / "runs"), "reports_dir": str(tmp_path / "reports")}
    bad = tmp_path / "demo-typo.yaml"
    bad.write_text(yaml.safe_dump(raw))
    proc = subprocess.run(
        [sys.executable, "-m", "platypus_utils", "run", str(bad)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 2
    assert "key 'finetune.sft.learning_rat'" in proc.stderr and str(bad) in proc.stderr
    assert "did you mean learning_rate" in proc.stderr  # TRL's SFTConfig field it was meant to be
    assert not (tmp_path / "runs").exists() and not (tmp_path / "reports").exists()


def test_bad_set_override_fails(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "platypus_utils", "run", "params/demo.yaml", "--set", "merge.verfy=false"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2 and "merge.verfy" in proc.stderr


def test_validate_command():
    profiles = sorted(map(str, (ROOT / "params").glob("*.yaml")))
    proc = subprocess.run(
        [sys.executable, "-m", "platypus_utils", "validate", *profiles],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.count(": ok") == len(profiles) >= 4


def test_run_passes_allow_edited_notebooks_to_the_runner(monkeypatch):
    from platypus_utils import cli, runner

    calls = []
    monkeypatch.setattr(runner, "run", lambda *a, **kw: calls.append(kw["allow_edited_notebooks"]))
    assert cli.main(["run", "params/demo.yaml"]) == 0
    assert cli.main(["run", "params/demo.yaml", "--allow-edited-notebooks"]) == 0
    assert calls == [False, True]
