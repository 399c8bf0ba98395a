"""Stage 02, the reviewer's step: a decisions file (decontaminate.decisions) overrules flagged pairs on the next run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from platypus_utils.artifacts import StageRun, read_manifest, write_jsonl
from platypus_utils.config import load_profile
from platypus_utils.decontaminate import stage
from platypus_utils.decontaminate.decisions import apply_decisions, read_decisions
from platypus_utils.decontaminate.stage import run_decontaminate
from platypus_utils.demo_data import demo_corpus_rows

DEMO = Path(__file__).resolve().parent.parent / "params" / "demo.yaml"


def _profile(tmp_path, **more):
    params = {
        "paths.runs_dir": str(tmp_path / "runs"),
        "paths.reports_dir": str(tmp_path / "rep"),
        "decontaminate.detectors": ["ngram"],  # no model: the planted verbatim leaks are flagged in a second
        **more,
    }
    return load_profile(DEMO, params)


def _curated_demo(profile):
    """01's artifact without running 01: the demo corpus as curated.jsonl, with a finished manifest."""
    with StageRun(profile.run_dir("01_curate"), "01_curate", profile.fingerprint_params("01_curate")) as run:
        run.add_output(write_jsonl(profile.run_dir("01_curate") / "curated.jsonl", demo_corpus_rows()))


def test_a_decisions_file_overrules_one_flagged_pair_in_the_demo(tmp_path):
    profile = _profile(tmp_path)
    _curated_demo(profile)
    first = run_decontaminate(profile)
    stage_dir = profile.run_dir("02_decontaminate")
    pairs = pd.read_csv(stage_dir / "flagged_pairs.csv", keep_default_na=False)
    removed_rows = pairs.loc[pairs["action"] == "remove", "train_index"]
    once = removed_rows[~removed_rows.duplicated(keep=False)]  # a row removed by one pair only
    assert len(once) >= 1, "the demo should flag a row by one removing pair"
    target = pairs.loc[once.index[0]]
    decisions = tmp_path / "decisions.csv"
    decisions.write_text(f"pair_id,decision,note\n{target.pair_id},keep,reviewed: not the test item\n")

    again = _profile(tmp_path, **{"decontaminate.decisions": str(decisions)})
    second = run_decontaminate(again)
    assert second["removed_rows"] == first["removed_rows"] - 1
    assert second["decisions_overruled"] == 1 and second["overruled_pairs"] == [target.pair_id]
    rerun = pd.read_csv(stage_dir / "flagged_pairs.csv", keep_default_na=False).set_index("pair_id")
    assert rerun.at[target.pair_id, "decision"] == "keep" and rerun.at[target.pair_id, "action"] == "keep"
    assert set(rerun.index) == set(pairs["pair_id"])  # the same pairs, the same ids on the rerun
    clean = [json.loads(x) for x in (stage_dir / "clean.jsonl").read_text().splitlines()]
    assert demo_corpus_rows()[int(target.train_index)] in clean  # the row kept is in clean.jsonl again
    manifest = read_manifest(stage_dir)
    assert manifest["metrics"]["decisions_overruled"] == 1
    assert manifest["metrics"]["overruled_pairs"] == [target.pair_id]
    assert any(Path(p).name == "decisions.csv" for p in manifest["inputs"])  # hashed like any input


def test_decisions_files_are_read_strictly(tmp_path):
    good = tmp_path / "d.yaml"
    good.write_text("abc:mmlu/x/test/1: keep\ndef:arc/2: REMOVE\n")
    assert read_decisions(good) == {"abc:mmlu/x/test/1": "keep", "def:arc/2": "remove"}
    bad = tmp_path / "d.csv"
    bad.write_text("pair_id,decision\nabc:x,keep\nabd:y,drop\n")
    with pytest.raises(ValueError, match=r"d.csv: line 3: decision must be keep or remove, got 'drop'"):
        read_decisions(bad)
    bad.write_text("id,decision\nabc:x,keep\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['pair_id'\]"):
        read_decisions(bad)
    bad.write_text("pair_id,decision\nabc:x,keep\nabc:x,remove\n")
    with pytest.raises(ValueError, match="decided both keep and remove"):
        read_decisions(bad)
    with pytest.raises(ValueError, match="not found"):
        read_decisions(tmp_path / "none.csv")
    pairs = pd.DataFrame({"pair_id": ["a", "b"], "action": ["remove", "keep"]})
    out, info = apply_decisions(pairs, {"a": "keep", "b": "keep", "z": "remove"})
    assert out["action"].tolist() == ["keep", "keep"] and out["decision"].tolist() == ["keep", "keep"]
    assert info["decisions_overruled"] == 1 and info["unmatched_decisions"] == ["z"]


def test_cli_passes_the_judge_model_and_the_decisions_file(tmp_path, monkeypatch, capsys):
    from platypus_utils import cli

    seen = {}

    def check_file(train, benchmarks, out, cfg, *args, **kw):  # a stand-in: the command's settings only
        seen["cfg"] = cfg
        return {"removed_rows": 0}

    monkeypatch.setattr(stage, "check_file", check_file)
    decisions = tmp_path / "d.csv"
    decisions.write_text("pair_id,decision\n")
    monkeypatch.chdir(tmp_path)
    argv = [
        "decontaminate",
        "mine.jsonl",
        "--benchmarks",
        "b",
        "--out",
        "o",
        "--judge",
        "llm:embedded:smollm2-135m-instruct",
    ]
    assert cli.main([*argv, "--decisions", "d.csv"]) == 0
    assert seen["cfg"].judge_model == "llm:embedded:smollm2-135m-instruct" and "judge" in seen["cfg"].detectors
    assert seen["cfg"].decisions == str(decisions.resolve())
    assert json.loads(capsys.readouterr().out) == {"removed_rows": 0}
