"""`platypus analyse` on output directories written by the lm_eval CLI itself (embedded SmolLM2, offline
demo MMLU tasks, --limit 2), and lmeval_io's reading of them."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from platypus_utils import cli, lmeval_io, stats
from platypus_utils.demo_data import write_demo_benchmarks
from platypus_utils.evaluate.tasks import write_task_configs
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
    # each run labelled with its own few-shot count, as lm-eval recorded it (not the leaderboard's 5-shot)
    board = (tmp_path / "forced" / "tables" / "leaderboard.md").read_text()
    assert "MMLU acc (mean over subjects) (base 0-shot, limit 2; oneshot 1-shot, limit 2)" in board
    mmlu = {row[0]: row[4] for row in md_table_rows(board)}
    assert mmlu["model"] == "MMLU" and mmlu["base"].endswith(" (0-shot, limit 2)")
    assert mmlu["oneshot"].endswith(" (1-shot, limit 2)")
    caption = (tmp_path / "forced" / "figures" / "mmlu_delta_oneshot.txt").read_text()
    assert "oneshot vs base (oneshot 1-shot, limit 2; base 0-shot, limit 2)" in caption and "5-shot" not in caption


def test_bad_inputs_name_the_file(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["analyse", str(tmp_path / "empty"), "--baseline", "x", "--out", str(tmp_path / "o")]) == 2
    assert "no results_*.json" in capsys.readouterr().err
    bad = tmp_path / "bad" / "model"
    bad.mkdir(parents=True)
    (bad / "results_2024-01-01T00-00-00.json").write_text(json.dumps({"no": "results"}))
    assert cli.main(["analyse", str(tmp_path / "bad"), "--baseline", "x", "--out", str(tmp_path / "o")]) == 2
    assert "no 'results' object" in capsys.readouterr().err


# ---------------------------------------------------------------- lm-eval folders written by others (fixtures)
FIXTURES = Path(__file__).parent / "fixtures" / "lmeval"  # make_fixtures.py writes them


def analyse(tmp_path, *inputs: str, extra: tuple = (), baseline: str = "zero") -> tuple[int, Path]:
    out = tmp_path / "out"
    args = ["analyse", *(f"{FIXTURES / spec}" for spec in inputs), "--baseline", baseline, "--out", str(out)]
    return cli.main(args + ["--n-bootstrap", "200", "--formats", "png", *extra]), out


def test_different_few_shot_counts_are_each_labelled_with_their_own(tmp_path, capsys):
    rc, _ = analyse(tmp_path, "zero_shot=zero", "five_shot=five")
    assert rc == 2 and "num_fewshot 5 in five but 0 in zero" in capsys.readouterr().err
    rc, out = analyse(tmp_path, "zero_shot=zero", "five_shot=five", extra=("--force",))
    assert rc == 0
    board = (out / "tables" / "leaderboard.md").read_text()
    assert has_cells(board, "zero", "this run", "50.00 ± 16.67 (0-shot, limit 10)", "not run", "40.00 ± 11.30 (0-shot…")
    assert has_cells(board, "five", "this run", "80.00 ± 13.33 (5-shot, limit 10)", "not run", "75.00 ± 10.14 (5-shot…")
    assert "MMLU acc (mean over subjects) (zero 0-shot, limit 10; five 5-shot, limit 10)" in board
    cats = (out / "tables" / "mmlu_delta_categories.md").read_text()
    assert has_cells(cats, "five vs zero", "five 5-shot, limit 10; zero 0-shot, limit 10")
    caption = (out / "figures" / "mmlu_delta_five.txt").read_text()
    assert caption.startswith("MMLU accuracy change per subject, five vs zero (five 5-shot, limit 10; zero 0-shot")
    heat = (out / "figures" / "mmlu_delta_heatmap.txt").read_text()
    assert "Settings: five vs zero: five 5-shot, limit 10; zero 0-shot, limit 10" in heat
    summary = (out / "summary.md").read_text()
    assert (
        "- zero: `" in summary
        and "ARC (0-shot, limit 10, version 1), MMLU 2 subjects (0-shot, limit 10, version 1)" in summary
    )
    assert "ARC (5-shot, limit 10, version 1), MMLU 2 subjects (5-shot, limit 10, version 1)" in summary
    written = [p.read_text() for p in (out / "tables").glob("*.md")] + [p.read_text() for p in out.rglob("*.txt")]
    for fixed in ("5-shot acc", "10-shot", "25-shot", "MMLU 5-shot"):  # the leaderboard's settings, never assumed
        assert not any(fixed in text for text in written + [summary]), fixed
    deltas = pd.read_csv(out / "tables" / "mmlu_delta.csv")
    assert set(deltas["variant_setup"]) == {"5-shot, limit 10"} and set(deltas["reference_setup"]) == {
        "0-shot, limit 10"
    }


def test_one_setup_for_every_row_goes_in_the_header(tmp_path):
    rc, out = analyse(tmp_path, "zero_shot=zero", "zero_shot=again")
    assert rc == 0
    rows = md_table_rows((out / "tables" / "leaderboard.md").read_text())
    assert rows[0] == ["model", "source", "ARC (0-shot, limit 10)", "HellaSwag", "MMLU (0-shot, limit 10)"] + [
        "TruthfulQA",
        "average",
    ]
    assert rows[1][2] == "50.00 ± 16.67"  # no suffix: the header says it
    assert "again vs zero (MMLU both 0-shot, limit 10)" in (out / "summary.md").read_text()


def test_lfs_pointer_samples_fall_back_to_the_results_file(tmp_path, capsys):
    pointer = next((FIXTURES / "lfs_samples").rglob("samples_mmlu_philosophy_*.jsonl"))
    assert lmeval_io.lfs_pointer(pointer) == {"oid": pointer.read_text().split()[3], "size": "6260"}
    assert lmeval_io.lfs_pointer(next((FIXTURES / "five_shot").rglob("samples_*.jsonl"))) is None
    rc, out = analyse(tmp_path, "five_shot=five", "lfs_samples=lfs", baseline="five")
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"lfs: {pointer} is a git-LFS pointer (oid sha256:" in printed
    assert "mmlu_philosophy falls back to the results file (unpaired comparison" in printed
    summary = (out / "summary.md").read_text()
    assert "samples are git-LFS pointers: unpaired errors from the results file" in summary
    deltas = pd.read_csv(out / "tables" / "mmlu_delta.csv")
    assert set(deltas["interval"]) == {"unpaired normal"} and (deltas["delta"] == 0).all()


def test_an_lfs_pointer_results_file_is_named(tmp_path, capsys):
    folder = tmp_path / "runs" / "model"
    folder.mkdir(parents=True)
    (folder / "results_2024-01-01T00-00-00.json").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n"
    )
    args = ["analyse", str(tmp_path / "runs"), "--baseline", "x", "--out", str(tmp_path / "o")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "results_2024-01-01T00-00-00.json is a git-LFS pointer (oid sha256:abc, 123 bytes)" in err
    assert "git lfs pull" in err


def test_several_results_files_are_listed_and_the_choice_is_an_option(tmp_path, capsys):
    rc, _ = analyse(tmp_path, "zero_shot=zero", "two_results=two", extra=("--force",))
    err = capsys.readouterr().err
    assert rc == 2 and "2 results files hold the same tasks" in err
    assert "results_2024-05-02T10-00-00.000000.json: 3 task(s), num_fewshot 5, limit 10, gen_kwargs none" in err
    assert "gen_kwargs do_sample=True,temperature=0.7" in err and "--results-file" in err
    scores = {}
    for choice in ("results_2024-05-02T10-00-00.000000.json", "latest", "all"):
        rc, out = analyse(
            tmp_path / choice, "zero_shot=zero", "two_results=two", extra=("--force", "--results-file", choice)
        )
        assert rc == 0, capsys.readouterr().err
        scores[choice] = (
            pd.read_csv(out / "tables" / "leaderboard.csv").set_index("variant").loc["two", "arc_challenge"]
        )
        assert "two_results: of 2 results files read" in (printed := capsys.readouterr().out) or (
            "two_results: read all 2 results files (a later file" in printed
        )
    assert scores == {"results_2024-05-02T10-00-00.000000.json": 80.0, "latest": 50.0, "all": 50.0}
    rc, _ = analyse(tmp_path, "zero_shot=zero", "five_shot=five", extra=("--force", "--results-file", "nope.json"))
    assert rc == 2 and "--results-file nope.json: no input folder holds such a results file" in capsys.readouterr().err


def test_results_files_of_different_tasks_are_read_together_and_listed(tmp_path):
    folder = tmp_path / "split" / "model"
    folder.mkdir(parents=True)
    source = next((FIXTURES / "zero_shot").rglob("results_*.json"))
    full = json.loads(source.read_text())
    for date, tasks in (("2024-06-01T00-00-00", ["arc_challenge"]), ("2024-06-02T00-00-00", ["mmlu_philosophy"])):
        part = {**full, "results": {t: full["results"][t] for t in tasks}}
        (folder / f"results_{date}.json").write_text(json.dumps(part))
    run = lmeval_io.read_lm_eval_dir(tmp_path / "split", "split")
    assert set(run.settings) == {"arc_challenge", "mmlu_philosophy"}
    assert any("read all 2 results files (their tasks do not overlap)" in n for n in run.notes)


def test_runs_with_no_task_in_common_are_explained(tmp_path, capsys):
    rc, out = analyse(tmp_path, "zero_shot=zero", "hellaswag_only=hs")
    assert rc == 0
    printed = capsys.readouterr().out
    assert (
        "hs vs zero: no task in common (hs ran HellaSwag (10-shot, limit 10, version 1); zero ran ARC (0-shot, limit 10, "
        "version 1), MMLU 2 subjects (0-shot, limit 10, version 1)): nothing to compare" in printed
    )
    summary = (out / "summary.md").read_text()
    assert "## Comparisons\n\nNo comparison: no two compared runs scored a task in common" in summary
    assert "What the sample size can show" not in summary  # nothing was tested
    cats = (out / "tables" / "mmlu_delta_categories.md").read_text()
    assert "no two compared runs scored a task in common" in cats and "05_evaluate did not run" not in cats
    assert not (out / "figures" / "mmlu_delta_heatmap.png").exists()


def md_table_rows(text: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|") and not set(line) <= set("|:- ")
    ]


def has_cells(text: str, *cells: str) -> bool:
    """Some table row holds `cells` side by side (a cell ending in "…" matches by prefix)."""

    def same(got: str, want: str) -> bool:
        return got.startswith(want[:-1]) if want.endswith("…") else got == want

    rows = md_table_rows(text)
    return any(
        all(same(row[k + i], c) for i, c in enumerate(cells)) for row in rows for k in range(len(row) - len(cells) + 1)
    )


def test_monte_carlo_p_values_print_their_resampling_error(tmp_path, monkeypatch):
    monkeypatch.setattr(stats, "EXACT_STATES", 0)  # the fixtures' groups are small enough to count exactly
    rc, out = analyse(tmp_path, "zero_shot=zero", "five_shot=five", extra=("--force",))
    assert rc == 0
    cats = pd.read_csv(out / "tables" / "mmlu_delta_categories.csv").set_index("unit")
    p, mc, n = cats.loc["all", ["p_value", "p_mc_error", "p_resamples"]]
    assert n >= 200 and mc == pytest.approx(math.sqrt(p * (1 - p) / n)) and abs(p - 0.05) > 4 * mc or n == 1_000_000
    caption = (out / "figures" / "mmlu_delta_categories.txt").read_text()
    assert f"p {p:.3g} ± {mc:.1g}, q" in caption
    subjects = pd.read_csv(out / "tables" / "mmlu_delta.csv")
    assert (subjects["p_mc_error"] == 0).all() and (subjects["p_resamples"] == 0).all()  # McNemar: exact


def test_task_versions_are_named_where_they_differ(tmp_path, capsys):
    source = next((FIXTURES / "zero_shot").rglob("results_*.json"))
    folder = tmp_path / "newer" / source.parent.name
    folder.mkdir(parents=True)
    for f in source.parent.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    results = json.loads(source.read_text())
    results["versions"]["mmlu_philosophy"] = 2.0
    (folder / source.name).write_text(json.dumps(results))
    args = [f"{FIXTURES / 'zero_shot'}=zero", f"{tmp_path / 'newer'}=newer", "--baseline", "zero"]
    assert cli.main(["analyse", *args, "--out", str(tmp_path / "refused")]) == 2
    assert "mmlu_philosophy: version 2.0 in newer but 1.0 in zero" in capsys.readouterr().err
    assert cli.main(["analyse", *args, "--out", str(tmp_path / "o"), "--force", "--formats", "png"]) == 0
    deltas = pd.read_csv(tmp_path / "o" / "tables" / "mmlu_delta.csv").set_index("unit")
    assert deltas.loc["philosophy", "variant_setup"] == "0-shot, limit 10, version 2"
    assert deltas.loc["philosophy", "reference_setup"] == "0-shot, limit 10, version 1"
    assert deltas.loc["college_physics", "variant_setup"] == "0-shot, limit 10"  # the same version: not repeated
    caption = (tmp_path / "o" / "figures" / "mmlu_delta_newer.txt").read_text()
    assert "newer 0-shot, limit 10, version 1/2; zero 0-shot, limit 10, version 1" in caption
