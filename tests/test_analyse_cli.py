"""`platypus analyse` on output directories written by the lm_eval CLI itself (embedded SmolLM2, offline
demo MMLU tasks, --limit 2), and lmeval_io's reading of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from platypus_utils import cli, lmeval_io
from platypus_utils.demo_data import write_demo_benchmarks
from platypus_utils.evaluate import write_task_configs
from platypus_utils.models import ensure_converted_smollm2

SUBJECTS = ["college_physics", "philosophy"]


def run_lm_eval(tasks_dir: Path, model: Path, out: Path, shots: int) -> None:
    lm_eval = Path(sys.executable).with_name("lm_eval")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [
        str(lm_eval),
        "--model",
        "hf",
        "--model_args",
        f"pretrained={model},dtype=float32",
        "--tasks",
        ",".join(f"platypus_mmlu_{s}" for s in SUBJECTS),
        "--include_path",
        str(tasks_dir),
        "--num_fewshot",
        str(shots),
        "--limit",
        "2",
        "--batch_size",
        "4",
        "--device",
        "cpu",
        "--output_path",
        str(out),
        "--log_samples",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def lm_eval_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmeval")
    suite = write_task_configs(write_demo_benchmarks(root / "bench"), root / "tasks", ["mmlu"], SUBJECTS)
    model = ensure_converted_smollm2()
    run_lm_eval(suite.tasks_dir, model, root / "zero", 0)
    run_lm_eval(suite.tasks_dir, model, root / "one", 1)
    return root


def test_lm_eval_output_is_read_with_samples_and_settings(lm_eval_dirs):
    run = lmeval_io.read_lm_eval_dir(lm_eval_dirs / "zero", "zero")
    assert sorted(run.summary["mmlu_subjects"]) == SUBJECTS
    assert run.summary["mmlu_subjects"]["philosophy"]["category"] == "humanities"
    assert len(run.samples) == 2 * len(SUBJECTS) and set(run.samples["score"]) <= {0.0, 1.0}
    for subject, s in run.summary["mmlu_subjects"].items():  # the summary's accuracy is the samples' mean
        assert s["acc"] == pytest.approx(run.samples[run.samples["subject"] == subject]["score"].mean())
    assert {v["num_fewshot"] for v in run.settings.values()} == {0} and {v["limit"] for v in run.settings.values()} == {
        2
    }
    other = lmeval_io.read_lm_eval_dir(lm_eval_dirs / "one", "one")
    assert any("num_fewshot 0 in zero but 1 in one" in m for m in lmeval_io.settings_mismatches(run, other))


def test_platypus_analyse_makes_the_tables_and_figures(lm_eval_dirs, tmp_path, capsys):
    out = tmp_path / "report"
    zero = lm_eval_dirs / "zero"
    rc = cli.main(
        [
            "analyse",
            f"{zero}=base",
            f"{zero}=again",
            "--baseline",
            "base",
            "--out",
            str(out),
            "--n-bootstrap",
            "200",
            "--formats",
            "pdf",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "again vs base: no subject changes beyond chance at n = 4 questions over 2 subjects" in printed
    board = pd.read_csv(out / "tables" / "leaderboard.csv").set_index("variant")
    assert board.loc["again", "mmlu"] == board.loc["base", "mmlu"]
    deltas = pd.read_csv(out / "tables" / "mmlu_delta.csv")
    assert sorted(deltas["unit"]) == SUBJECTS and (deltas["delta"] == 0).all() and (deltas["p_value"] == 1).all()
    assert set(deltas["interval"]) == {"paired bootstrap"}
    for name in ("leaderboard", "mmlu_delta_again", "mmlu_delta_categories", "mmlu_delta_heatmap"):
        assert (out / "figures" / f"{name}.pdf").stat().st_size > 1000
        assert (out / "figures" / f"{name}.txt").read_text().strip()
    assert "assumed discordance 0.20" in (out / "summary.md").read_text()


def test_mismatched_settings_are_refused_unless_forced(lm_eval_dirs, tmp_path, capsys):
    args = [
        "analyse",
        f"{lm_eval_dirs / 'zero'}=base",
        f"{lm_eval_dirs / 'one'}=oneshot",
        "--baseline",
        "base",
        "--n-bootstrap",
        "200",
        "--formats",
        "pdf",
    ]
    assert cli.main(args + ["--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "mismatched evaluation settings" in err and "num_fewshot 1 in oneshot but 0 in base" in err
    assert not (tmp_path / "refused" / "tables").exists()
    assert cli.main(args + ["--out", str(tmp_path / "forced"), "--force"]) == 0
    assert "compared anyway (--force)" in (tmp_path / "forced" / "summary.md").read_text()


def test_bad_inputs_name_the_file(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["analyse", str(tmp_path / "empty"), "--baseline", "x", "--out", str(tmp_path / "o")]) == 2
    assert "no results_*.json" in capsys.readouterr().err
    bad = tmp_path / "bad" / "model"
    bad.mkdir(parents=True)
    (bad / "results_2024-01-01T00-00-00.json").write_text(json.dumps({"no": "results"}))
    assert cli.main(["analyse", str(tmp_path / "bad"), "--baseline", "x", "--out", str(tmp_path / "o")]) == 2
    assert "no 'results' object" in capsys.readouterr().err
