import json

import nbformat
import pytest

from platypus_utils import runner
from platypus_utils.artifacts import StageRun
from platypus_utils.config import ProfileError


def test_parse_and_select_stages():
    assert runner.parse_stage("3") == runner.parse_stage("03") == runner.parse_stage("finetune") == "03_finetune"
    assert runner.select_stages(only=["05", "1"]) == ["01_curate", "05_evaluate"]
    assert runner.select_stages(start="04") == ["04_merge", "05_evaluate", "06_analysis"]
    assert len(runner.select_stages()) == 6
    with pytest.raises(ProfileError, match="unknown stage 'train'"):
        runner.parse_stage("train")


def _fake_stage_run(profile, stage, payload="x"):
    out = profile.run_dir(stage)
    src = out.parent / "input.txt"
    src.parent.mkdir(parents=True, exist_ok=True)
    if not src.exists():
        src.write_text("input")
    with StageRun(out, stage, profile.fingerprint_params(stage)) as run:
        run.add_input(src)
        (out / "result.txt").write_text(payload)
        run.add_output(out / "result.txt")
    nb = runner.executed_notebook(profile, stage)
    nb.parent.mkdir(parents=True, exist_ok=True)
    nb.write_text("{}")
    return src, out / "result.txt"


def test_up_to_date_tracks_params_inputs_outputs(make_profile):
    profile = make_profile()
    stage = "01_curate"
    assert runner.up_to_date(profile, stage) == (False, "no successful run recorded")
    src, result = _fake_stage_run(profile, stage)
    assert runner.up_to_date(profile, stage)[0]
    changed = make_profile(curate={"similarity_threshold": 0.7})
    assert runner.up_to_date(changed, stage) == (False, "parameters changed")
    other_stage_change = make_profile(finetune={"lora_r": 8})
    assert runner.up_to_date(other_stage_change, stage)[0]  # only this stage's section counts
    src.write_text("new input")
    assert runner.up_to_date(profile, stage)[1].startswith("input changed")
    src.write_text("input")
    result.write_text("tampered")
    assert runner.up_to_date(profile, stage)[1].startswith("output changed")
    result.unlink()
    assert runner.up_to_date(profile, stage)[1].startswith("output missing")


def _notebook(path, code):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("profile_path = ''\noverrides = {}\nstage_params = {}\nforce = False")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_failing_cell_names_notebook_cell_and_error(tmp_path, make_profile, monkeypatch):
    (tmp_path / "nbs").mkdir()
    _notebook(tmp_path / "nbs" / "01_curate.ipynb", "raise ValueError('bad row 7')")
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", tmp_path / "nbs")
    profile = make_profile()
    profile.source_file = str(tmp_path / "p.yaml")
    with pytest.raises(runner.StageFailed) as err:
        runner.execute_stage(profile, "01_curate", {})
    msg = str(err.value)
    assert "01_curate" in msg and "ValueError: bad row 7" in msg and "cell" in msg
    kept = runner.executed_notebook(profile, "01_curate")
    assert kept.is_file() and "bad row 7" in kept.read_text()  # the partly executed notebook is kept


def test_parameters_are_injected(tmp_path, make_profile, monkeypatch):
    (tmp_path / "nbs").mkdir()
    _notebook(tmp_path / "nbs" / "06_analysis.ipynb",
              "import json, pathlib\npathlib.Path(stage_params['baseline'] + '.json').write_text(json.dumps(overrides))")
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", tmp_path / "nbs")
    profile = make_profile(analysis={"baseline": "mybase"})
    profile.source_file = str(tmp_path / "p.yaml")
    runner.execute_stage(profile, "06_analysis", {"seed": 3})
    assert json.loads((tmp_path / "nbs" / "mybase.json").read_text()) == {"seed": 3}
