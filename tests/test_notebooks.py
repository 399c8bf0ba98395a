"""The stage notebooks, executed by papermill through the runner's own `execute_stage`, checked
through the values they `record()` (as recommenders does with scrapbook), plus the notebook
infrastructure: the parameter channel, the kernel, prerequisites, the plotting backend.

To add a stage: write `_check_NN(profile, records, tmp_path)` and add it to NOTEBOOK_CASES with
the tiny overrides it runs under (docs/notebooks.md). Stages after 01 need their earlier stages'
artifacts: build them in the check's fixture, or run the earlier notebooks first.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from platypus_utils import curate, notebook, runner
from platypus_utils.artifacts import StageRun, read_jsonl, read_manifest, write_jsonl
from platypus_utils.config import STAGES, ProfileError, load_profile
from platypus_utils.demo_data import demo_corpus_labels

from .conftest import ALPHA, TARGETS, R, make_rows, save_adapter, save_tiny_llama

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "params" / "demo.yaml"


def _tmp_paths(tmp_path, name="nb"):
    return {"paths.runs_dir": str(tmp_path / name / "runs"), "paths.reports_dir": str(tmp_path / name / "reports")}


def execute(stage: str, overrides: dict, force: bool = False):
    """Run a stage notebook as `platypus run` does; returns (profile, records of the executed notebook)."""
    profile = load_profile(DEMO, overrides)
    runner.execute_stage(profile, stage, overrides, force=force)
    return profile, notebook.read_records(runner.executed_notebook(profile, stage))


# ---------------------------------------------------------------- 01_curate
def _check_01(profile, records, tmp_path):
    labels = demo_corpus_labels()
    assert records["rows_loaded"] == labels["n_rows"]
    assert records["exact_removed_rows"] == sorted(d["drop"] for d in labels["exact_duplicates"])
    assert records["near_removed_rows"] == sorted(d["drop"] for d in labels["near_duplicates"])
    effects = {e["threshold"]: e for e in records["threshold_effects"]}
    assert effects[0.8]["reference"] and effects[0.8]["rows_removed"] == len(records["near_removed_rows"])
    removed = [effects[t]["rows_removed"] for t in sorted(effects)]
    assert removed == sorted(removed, reverse=True) and removed[0] > removed[-1]  # a lower threshold removes more
    assert (
        records["totals"]["kept"]
        == records["kept_after_dedup"]
        == labels["n_rows"] - len(labels["exact_duplicates"]) - len(labels["near_duplicates"])
    )
    # the notebook's save step wrote what run_curate writes: same curated rows, same manifest entries
    out = profile.run_dir("01_curate")
    manifest = read_manifest(out)
    assert manifest["outputs"][str((out / "curated.jsonl").resolve())] == records["curated_sha256"]
    assert manifest["timings"]["notebook_s"] > 0  # the steps' time, passed by the save cell
    direct = load_profile(DEMO, _tmp_paths(tmp_path, "direct"))
    report = curate.run_curate(direct)
    assert report["totals"] == records["totals"]
    for name in ("curated.jsonl", "removed.jsonl", "curated.parquet"):
        assert (direct.run_dir("01_curate") / name).read_bytes() == (out / name).read_bytes(), name
    assert read_manifest(direct.run_dir("01_curate"))["params"] == manifest["params"]
    executed = nbformat.read(str(runner.executed_notebook(profile, "01_curate")), as_version=4)
    images = [o for c in executed.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the similarity histogram and the composition figure, inline, once each


# ---------------------------------------------------------------- 03_finetune
def _finetune_case(tmp_path, model_dir) -> dict:
    """Stage 02's output for the demo profile, written here (clean.jsonl + its manifest), and tiny
    overrides: conftest's tiny Llama, 2 steps of 8 whole examples (padding-free), 4 held-out rows, a 1-step partner adapter."""
    overrides = {
        **_tmp_paths(tmp_path),
        "models.base": str(model_dir),
        "finetune.sft.max_steps": 2,
        "finetune.batch_unit": "examples",
        "finetune.eval_size": 4,
        "finetune.cutoff_len": 128,
        "finetune.sft.learning_rate": 1e-2,
        "finetune.partner_adapter.sft.max_steps": 1,
    }
    profile = load_profile(DEMO, overrides)
    rows = make_rows(20) + [{"instruction": "q", "input": "", "output": "", "data_source": "demo"}]
    for row in rows[:4]:
        row["data_source"] = "guanaco"  # the partner adapter's slice
    stage_dir = profile.run_dir("02_decontaminate")
    with StageRun(stage_dir, "02_decontaminate", profile.fingerprint_params("02_decontaminate")) as run:
        run.add_output(write_jsonl(stage_dir / "clean.jsonl", rows))
    return overrides


def _check_03(profile, records, tmp_path, overrides):
    from transformers import AutoTokenizer

    from platypus_utils.finetune.data import format_alpaca_prompt
    from platypus_utils.finetune.stage import run_finetune

    out = profile.run_dir("03_finetune")
    metrics = json.loads((out / "metrics.json").read_text())
    assert records["rows_read"] == 21 and records["examples_skipped"] == {"missing_output": 1}
    assert (
        (records["examples_train"], records["examples_eval"])
        == (16, 4)
        == (metrics["examples_train"], metrics["examples_eval"])
    )
    # the example shown: its prompt tokens masked, one EOS at the end, from the held-out rows
    tokenizer = AutoTokenizer.from_pretrained(profile.models.base)
    row = read_jsonl(profile.run_dir("02_decontaminate") / "clean.jsonl")[records["example_row"] - 1]
    prompt = tokenizer(format_alpaca_prompt(row["instruction"], row["input"]))["input_ids"]
    assert records["example_masked_tokens"] == len(prompt) and records["example_problem"] is None
    assert records["example_row"] in metrics["heldout_rows"]
    # the plan shown before the trainer is the one it applied; packed rows keep their examples apart
    assert records["plan_applied"] is True and records["planned_steps"] == 2 == records["steps"] == metrics["steps"]
    assert records["examples_per_step"] == pytest.approx(metrics["batch_plan"]["examples_per_step"], abs=0.01)
    assert records["packing_isolation"]["checked"] and records["packing_isolation"]["max_rel_diff"] < 1e-4
    assert records["eval_loss_before"] == metrics["eval_loss_before"] and records["eval_loss_after"] < 1e3
    assert [h["step"] for h in records["train_loss_history"]] == [1, 2]
    # the recipe shown is TRL's and peft's own objects: the profile's LoRA, learning rate and objective
    recipe = records["recipe"]
    assert (recipe["r"], recipe["lora_alpha"], recipe["lora_dropout"]) == ("16", "16", "0.05")
    assert (
        recipe["learning_rate"] == str(profile.finetune.sft["learning_rate"])
        and recipe["completion_only_loss"] == "True"
    )
    assert recipe.get("loss_normalization") == "examples" and "output_dir" not in recipe, recipe
    # every optimizer step held the plan's examples, counted in the batches the trainer drew
    assert records["examples_per_step_counted"] == metrics["examples_per_step_counted"]
    assert records["examples_per_step_counted"] == [round(records["examples_per_step"])] * 2
    assert metrics["partner_adapter"]["steps"] == 1 and (out / "partner_adapter" / "adapter_config.json").is_file()
    # the save cell wrote what run_finetune writes, with the notebook's time in the manifest
    manifest = read_manifest(out)
    assert manifest["outputs"][str((out / "metrics.json").resolve())] == records["metrics_sha256"]
    assert manifest["timings"]["notebook_s"] > 0 and not (out / "checkpoints").exists()
    direct = load_profile(DEMO, {**overrides, **_tmp_paths(tmp_path, "direct")})
    (direct.run_dir("02_decontaminate")).mkdir(parents=True)
    shutil.copy(profile.run_dir("02_decontaminate") / "clean.jsonl", direct.run_dir("02_decontaminate"))
    again = run_finetune(direct)
    assert set(again) == set(metrics) and again["heldout_rows"] == metrics["heldout_rows"]
    assert again["eval_loss_before"] == pytest.approx(metrics["eval_loss_before"], rel=1e-5)
    assert again["batch_plan"] == metrics["batch_plan"] and again["steps"] == metrics["steps"]

    def names(p):
        return sorted(Path(k).name for k in read_manifest(p.run_dir("03_finetune"))["outputs"])

    assert names(direct) == names(profile)
    executed = nbformat.read(str(runner.executed_notebook(profile, "03_finetune")), as_version=4)
    images = [o for c in executed.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the live loss curve (redrawn in place) and the final one with the held-out points


def test_03_notebook_runs_and_records(tmp_path, tiny_model_dir):
    """Stage 03's notebook on tiny settings (its prerequisite, 02's clean.jsonl, is written first)."""
    overrides = _finetune_case(tmp_path, tiny_model_dir)
    profile, records = execute("03_finetune", overrides)
    _check_03(profile, records, tmp_path, overrides)


# ---------------------------------------------------------------- 05_evaluate
# the base model only (needs no earlier stage), every benchmark, tiny limits, two MMLU subjects
TINY_05 = {
    "evaluate.variants": ["base"],
    "evaluate.mmlu_subjects": ["college_physics", "philosophy"],
    "evaluate.tasks": {
        "arc_challenge": {"num_fewshot": 1, "limit": 1},
        "hellaswag": {"num_fewshot": 1, "limit": 1},
        "mmlu": {"num_fewshot": 1, "limit": 1},
        "truthfulqa_mc2": {"num_fewshot": 0, "limit": 1},
    },
}


def _check_05(profile, records, tmp_path):
    from platypus_utils.evaluate.stage import run_evaluate

    tasks = {t["benchmark"]: t for t in records["tasks"]}
    assert {b: (t["num_fewshot"], t["limit"]) for b, t in tasks.items()} == {
        b: (c["num_fewshot"], c["limit"]) for b, c in TINY_05["evaluate.tasks"].items()
    }
    assert (
        tasks["truthfulqa_mc2"]["metric"] == "mc2"
        and tasks["arc_challenge"]["lm_eval_task"] == "platypus_arc_challenge"
    )
    assert records["mmlu_subjects_selected"] == ["college_physics", "philosophy"]
    release = "smollm2-135m-instruct-release"  # the demo's reference: the base as released, same weights
    assert records["variants"] == [
        {"variant": "base", "status": "ok", "source": "models.base"},
        {"variant": release, "status": "ok", "source": "evaluate.references (released, as it is)"},
    ]
    assert records["failed"] == {}
    # the recipe cell: lm-eval's own arguments per variant and benchmark, the leaderboard's seeds among them
    from platypus_utils.evaluate.stage import SEEDS

    calls = {(c["variant"], c["benchmark"]): c for c in records["lm_eval_calls"]}
    assert set(calls) == {(v, b) for v in ("base", release) for b in TINY_05["evaluate.tasks"]}
    for (_, b), c in calls.items():
        expected = TINY_05["evaluate.tasks"][b]
        assert (c["num_fewshot"], c["limit"], c["model"], c["log_samples"]) == (expected["num_fewshot"], 1, "hf", True)
        assert {k: c[k] for k in SEEDS} == SEEDS and c["tasks"] == [tasks[b]["lm_eval_task"]]
    assert records["n"]["base"] == {"arc_challenge": 1, "hellaswag": 1, "mmlu": 2, "truthfulqa_mc2": 1}
    scores = records["scores"]["base"]
    assert records["scores"][release] == scores  # the base's results, from the eval cache
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert records["averages"]["base"] == sum(scores.values()) / 4
    assert set(records["mmlu_subjects"]["base"]) == {"college_physics", "philosophy"}
    assert sum(records["mmlu_subjects"]["base"].values()) / 2 == scores["mmlu"]
    # the notebook's save step wrote what run_evaluate writes
    out = profile.run_dir("05_evaluate")
    manifest = read_manifest(out)
    assert manifest["outputs"][str((out / "base.json").resolve())] == records["summary_sha256"]["base"]
    assert manifest["timings"]["notebook_s"] > 0 and manifest["metrics"]["variants_ok"] == 2
    direct = load_profile(DEMO, {**_tmp_paths(tmp_path, "direct"), **TINY_05})
    result = run_evaluate(direct)
    assert {b: t["value"] for b, t in result["summaries"]["base"]["tasks"].items()} == scores
    for name in ("base.json", "base.raw.json", "base.samples.jsonl"):
        assert (direct.run_dir("05_evaluate") / name).read_bytes() == (out / name).read_bytes(), name
    executed = nbformat.read(str(runner.executed_notebook(profile, "05_evaluate")), as_version=4)
    images = [o for c in executed.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 1  # the scores figure, inline, once


# ---------------------------------------------------------------- 04_merge
MERGE_VARIANTS = ["merged", "general", "general-platypus", "adapters-ties", "slerp", "task-arithmetic"]


def _merge_case(tmp_path) -> dict:
    """Stage 03's output for the demo profile, made here: conftest's tiny Llama as models.base and as the
    general partner's model, the adapter and the partner adapter on it, and 03's manifest."""
    base = save_tiny_llama(tmp_path / "tiny-base")
    overrides = {
        **_tmp_paths(tmp_path),
        "models.base": str(base),
        "merge.partners": [{"name": "general", "model": str(base), "adapter": "partner_adapter"}],
    }
    profile = load_profile(DEMO, overrides)
    stage_dir = profile.run_dir("03_finetune")
    save_adapter(base, stage_dir / "adapter", seed=1)
    save_adapter(base, stage_dir / "partner_adapter", seed=2)
    with StageRun(stage_dir, "03_finetune", profile.fingerprint_params("03_finetune")):
        pass
    return overrides


def _check_04(profile, records):
    from platypus_utils import layout
    from platypus_utils.merge.stage import run_merge  # here: importing merge (torch, peft) costs every test ~2 s CPU

    assert records["planned_variants"] == layout.planned_variants(profile) == MERGE_VARIANTS
    assert records["planned_dtypes"] == dict.fromkeys(MERGE_VARIANTS, "float32")  # the tiny base is float32
    adapter = records["adapter"]
    assert (adapter["r"], adapter["lora_alpha"], adapter["scales"]) == (R, ALPHA, [ALPHA / R])
    assert adapter["modules"] == 2 * len(TARGETS) and sorted(adapter["target_modules"]) == sorted(TARGETS)
    checks = {row["variant"]: row for row in records["checks"]}
    assert list(checks) == MERGE_VARIANTS and all(row["passed"] for row in checks.values())
    assert all(0 <= row["weight_error_to_bound"] <= 1 for row in checks.values())
    for name in ("merged", "general", "general-platypus"):  # an unmerged model would fail almost everywhere
        assert 0 <= checks[name]["logit_ratio"] <= 1 and checks[name]["updates_above_bound_share"] > 0.5
    assert checks["adapters-ties"]["logit_ratio"] <= 1
    assert checks["slerp"]["logit_ratio"] is None and checks["task-arithmetic"]["logit_ratio"] is None
    # the save cell wrote what run_merge writes: the report it hashes, every variant an output
    out = profile.run_dir("04_merge")
    manifest = read_manifest(out)
    assert manifest["outputs"][str((out / "merge_report.json").resolve())] == records["report_sha256"]
    assert {str((out / v).resolve()) for v in MERGE_VARIANTS} < set(manifest["outputs"])
    assert manifest["timings"]["notebook_s"] > 0
    # run_merge on the same profile finds every variant made from the same inputs: reused, same content
    report = run_merge(profile)
    assert all(entry["reused"] for entry in report["models"].values())
    assert {n: e["content_sha256"] for n, e in report["models"].items()} == {
        n: r["content_sha256"] for n, r in records["report_models"].items()
    }
    again = read_manifest(out)
    assert again["params"] == manifest["params"] and set(again["outputs"]) == set(manifest["outputs"])
    executed = nbformat.read(str(runner.executed_notebook(profile, "04_merge")), as_version=4)
    images = [o for c in executed.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 1  # the checks' figure, inline, once


def test_04_notebook_runs_and_records(tmp_path):
    """Stage 04's notebook on a tiny random Llama (its prerequisite, 03's adapters, is written first).
    run_merge makes the variants first, so the runner's `force` must reach make_variant: the notebook
    makes every variant again, byte for byte what run_merge made."""
    from platypus_utils.merge.stage import run_merge  # here: importing merge (torch, peft) costs every test ~2 s CPU

    overrides = _merge_case(tmp_path)
    direct = run_merge(load_profile(DEMO, overrides))
    profile, records = execute("04_merge", overrides, force=True)
    assert not any(m["reused"] for m in records["report_models"].values())
    assert {n: m["content_sha256"] for n, m in records["report_models"].items()} == {
        n: e["content_sha256"] for n, e in direct["models"].items()
    }
    _check_04(profile, records)


NOTEBOOK_CASES = {
    "01_curate": ({}, _check_01),
    "05_evaluate": (TINY_05, _check_05),
}


@pytest.mark.parametrize("stage", sorted(NOTEBOOK_CASES))
def test_notebook_runs_and_records(stage, tmp_path):
    extra, check = NOTEBOOK_CASES[stage]
    profile, records = execute(stage, {**_tmp_paths(tmp_path), **extra})
    check(profile, records, tmp_path)


def test_01_injected_threshold_and_force_reach_the_stage(tmp_path):
    """The runner's params and force reach the notebook's steps: a hand-edited output (which save
    refuses without force, tests/test_curate.py) is overwritten under force, at the injected threshold."""
    overrides = {**_tmp_paths(tmp_path), "curate.similarity_threshold": 0.9}
    curate.run_curate(load_profile(DEMO, overrides))
    curated = load_profile(DEMO, overrides).run_dir("01_curate") / "curated.jsonl"
    curated.write_text(curated.read_text() + '{"edited": "by hand"}\n')
    profile, records = execute("01_curate", overrides, force=True)
    assert [e for e in records["threshold_effects"] if e["reference"]][0]["threshold"] == 0.9
    assert "edited" not in curated.read_text()


# ---------------------------------------------------------------- the parameter channel
def test_execute_stage_injects_one_channel_kernel_and_backend(tmp_path, monkeypatch):
    """What papermill receives from the runner: --force (through the environment, as `platypus run
    --force` sets it), the stage's section plus outside --set keys, the kernel, a headless inline backend."""
    import papermill

    seen = {}

    def fake_execute(src, dst, parameters, kernel_name, **kw):
        seen.update(parameters=parameters, kernel=kernel_name, backend=os.environ.get("MPLBACKEND"))
        Path(dst).write_text("{}")

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    monkeypatch.setenv(runner.FORCE_ENV, "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)
    overrides = {**_tmp_paths(tmp_path), "curate.similarity_threshold": 0.75, "seed": 3}
    profile = load_profile(DEMO, overrides)
    runner.execute_stage(profile, "01_curate", overrides)
    params = seen["parameters"]
    assert params["force"] is True and params["profile_path"] == str(DEMO.resolve())
    assert params["params"]["curate.similarity_threshold"] == 0.75 and params["params"]["seed"] == 3
    assert set(params["params"]) == {f"curate.{k}" for k in profile.stage_params("01_curate")} | {
        "seed",
        "paths.runs_dir",
        "paths.reports_dir",
    }
    assert seen["backend"] == "module://matplotlib_inline.backend_inline" and "MPLBACKEND" not in os.environ
    assert seen["kernel"] == notebook.kernel_name() in ("platypus", "python3")
    runner.execute_stage(profile, "01_curate", overrides, force=False)
    assert seen["parameters"]["force"] is False


@pytest.mark.parametrize("profile_file", sorted((ROOT / "params").glob("*.yaml")), ids=lambda p: p.stem)
def test_injected_params_reload_to_the_same_profile(profile_file):
    """What the runner injects, applied by start_stage, gives back the profile the runner validated."""
    overrides = {"seed": 7, "paths.runs_dir": "/tmp/x"}
    profile = load_profile(profile_file, overrides)
    for stage in STAGES:
        injected = notebook.stage_parameters(profile, stage, overrides, force=True)
        assert set(injected) == {"profile_path", "params", "force"} and injected["force"] is True
        assert injected["params"]["seed"] == 7 and injected["params"]["paths.runs_dir"] == "/tmp/x"
        again = notebook.start_stage(injected["profile_path"], stage, injected["params"], injected["force"])
        assert again.fingerprint_params(stage) == profile.fingerprint_params(stage), stage
        assert again.run_dir(stage) == profile.run_dir(stage)


def test_invalid_param_fails_like_profile_validation():
    with pytest.raises(ProfileError) as from_profile:
        load_profile(DEMO, {"curate.similarity_threshold": 1.5})
    with pytest.raises(ProfileError) as from_notebook:
        notebook.start_stage(str(DEMO), "01_curate", {"curate.similarity_threshold": 1.5})
    assert str(from_notebook.value) == str(from_profile.value)
    assert "curate.similarity_threshold" in str(from_notebook.value) and "demo.yaml" in str(from_notebook.value)
    with pytest.raises(ProfileError, match="unknown key 'curate.treshold'"):
        notebook.start_stage(str(DEMO), "01_curate", {"curate.treshold": 0.7})
    with pytest.raises(ProfileError, match="params must be a dict"):
        notebook.start_stage(str(DEMO), "01_curate", 0.7)


def test_notebook_parameter_cells_declare_the_one_channel():
    for stage in STAGES:
        nb = nbformat.read(str(ROOT / "notebooks" / f"{stage}.ipynb"), as_version=4)
        cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(cells) == 1, stage
        names = {
            line.split("=")[0].strip()
            for line in cells[0].source.splitlines()
            if "=" in line and not line.lstrip().startswith("#")
        }
        assert names == {"profile_path", "params", "force"}, (stage, names)


# ---------------------------------------------------------------- prerequisites, kernel, records
def test_require_stage_says_what_to_run(tmp_path):
    profile = load_profile(DEMO, _tmp_paths(tmp_path))
    with pytest.raises(notebook.StageNotRun) as err:
        notebook.require_stage(profile, "01_curate")
    assert "`platypus run params/demo.yaml --only 01` first" in str(err.value)
    assert err.value._render_traceback_() == [f"StageNotRun: {err.value}"]
    with StageRun(profile.run_dir("01_curate"), "01_curate", profile.fingerprint_params("01_curate")):
        pass
    assert notebook.require_stage(profile, "01_curate") == profile.run_dir("01_curate")


def test_kernel_is_platypus_only_when_it_runs_this_python(monkeypatch):
    class Spec:
        argv = [sys.executable, "-m", "ipykernel_launcher"]

    monkeypatch.setattr(notebook.KernelSpecManager, "get_kernel_spec", lambda self, name: Spec())
    assert notebook.kernel_name() == "platypus"
    Spec.argv = ["/elsewhere/bin/python", "-m", "ipykernel_launcher"]
    assert notebook.kernel_name() == "python3"

    def missing(self, name):
        raise notebook.NoSuchKernel(name)

    monkeypatch.setattr(notebook.KernelSpecManager, "get_kernel_spec", missing)
    assert notebook.kernel_name() == "python3"


def test_records_round_trip(tmp_path):
    import numpy as np

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("")
    cell.outputs = [nbformat.v4.new_output("display_data", data={notebook.RECORD_MIME: {"name": "n", "value": 3}})]
    nb.cells = [cell]
    nbformat.write(nb, str(tmp_path / "x.ipynb"))
    assert notebook.read_records(tmp_path / "x.ipynb") == {"n": 3}
    captured = []
    monkey_display = lambda obj, raw, metadata: captured.append(obj)  # noqa: E731
    original = notebook.display
    notebook.display = monkey_display
    try:
        notebook.record("k", {"a": np.int64(2), "b": np.array([0.5])})
    finally:
        notebook.display = original
    assert captured == [{notebook.RECORD_MIME: {"name": "k", "value": {"a": 2, "b": [0.5]}}}]


def test_plotting_import_forces_no_backend():
    """Importing the package's plotting leaves matplotlib's backend to the environment."""
    code = "import matplotlib; import platypus_utils.plotting; print(matplotlib.rcParams._get('backend'))"
    env = {**os.environ, "MPLBACKEND": "svg"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "svg"
    text = (ROOT / "platypus_utils" / "plotting.py").read_text()
    assert "matplotlib.use(" not in text


def test_plot_functions_draw_on_a_given_ax_and_write_nothing(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    import pandas as pd

    monkeypatch.chdir(tmp_path)
    pairs = pd.DataFrame({"score": [0.72, 0.81, 0.95]})
    fig, (a, b) = plt.subplots(1, 2)
    assert curate.plot_similarity(pairs, 0.8, [0.75], ax=a) is fig
    table = curate.composition_table({"per_source": {"s": {k: 1 for k in curate.STEPS}}})
    assert curate.plot_composition(table, ax=b) is fig
    assert len(a.patches) > 0 and len(b.patches) > 0
    own = curate.plot_composition(table)
    assert own is not fig and not plt.fignum_exists(own.number)  # not left in pyplot
    plt.close(fig)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- 06_analysis
# 05's per-question scores of base and merged (the demo profile's variants, merged = the adapter folded
# into its base: one comparison, "merged vs base"). anatomy: 30 of 40 questions flip 0 -> 1 (planted);
# abstract_algebra: unchanged; philosophy: 2 up, 1 down (+2.5 points, McNemar p = 1). ARC: unchanged.
SCORES_06 = {
    "base": {
        "anatomy": [0] * 30 + [1] * 4 + [0] * 6,
        "abstract_algebra": [1] * 10 + [0] * 30,
        "philosophy": [0, 0, 1] + [1] * 17 + [0] * 20,
        "arc_challenge": [1, 1, 0, 0, 1, 0, 1, 0, 0, 0],
    },
    "merged": {
        "anatomy": [1] * 34 + [0] * 6,
        "abstract_algebra": [1] * 10 + [0] * 30,
        "philosophy": [1, 1, 0] + [1] * 17 + [0] * 20,
        "arc_challenge": [1, 1, 0, 0, 1, 0, 1, 0, 0, 0],
    },
}
CATEGORY_06 = {"anatomy": "stem", "abstract_algebra": "stem", "philosophy": "humanities"}
# 02's flagged pairs (lm_eval_task, doc_id, category): ARC docs 0 and 1, anatomy doc 2; ARC doc 99 was
# not evaluated; gsm8k is no leaderboard task (a note, nothing left out)
FLAGGED_06 = [
    ("arc_challenge", 0, "duplicate"),
    ("arc_challenge", 1, "gray_area"),
    ("arc_challenge", 99, "duplicate"),
    ("mmlu_anatomy", 2, "similar_but_different"),
    ("gsm8k", 5, "duplicate"),
]


def _mean(values) -> float:
    return sum(values) / len(values)


def _analysis_case(tmp_path) -> dict:
    """05's outputs (summaries, samples, report) and 02's flagged_pairs.csv, written as the stages write them."""
    overrides = {**_tmp_paths(tmp_path), "evaluate.variants": ["base", "merged"]}
    profile = load_profile(DEMO, overrides)
    out = profile.run_dir("05_evaluate")
    out.mkdir(parents=True)
    for variant, scores in SCORES_06.items():
        subjects = {s: v for s, v in scores.items() if s in CATEGORY_06}
        mmlu = _mean([_mean(v) for v in subjects.values()])
        summary = {
            "variant": variant,
            "model": f"/models/{variant}",
            "settings": {},
            "tasks": {
                "arc_challenge": {
                    "metric": "acc_norm",
                    "value": _mean(scores["arc_challenge"]),
                    "stderr": 0.1,
                    "n": 10,
                },
                "mmlu": {"metric": "acc", "value": mmlu, "stderr": 0.04, "n": 120},
            },
            "average": (mmlu + _mean(scores["arc_challenge"])) / 2,
            "mmlu_subjects": {
                s: {"acc": _mean(v), "stderr": 0.07, "n": len(v), "category": CATEGORY_06[s]}
                for s, v in subjects.items()
            },
        }
        (out / f"{variant}.json").write_text(json.dumps(summary))
        (out / f"{variant}.raw.json").write_text(json.dumps({"results": {}}))
        rows = [
            {"variant": variant, "task": f"platypus_{u}" if u == "arc_challenge" else f"platypus_mmlu_{u}", "doc_id": k}
            | {("acc_norm" if u == "arc_challenge" else "acc"): float(x)}
            for u, values in scores.items()
            for k, x in enumerate(values)
        ]
        (out / f"{variant}.samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = {"variants": {v: {"status": "ok"} for v in SCORES_06}, "failed": []}
    (out / "evaluate_report.json").write_text(json.dumps(report))
    flagged = profile.run_dir("02_decontaminate") / "flagged_pairs.csv"
    flagged.parent.mkdir(parents=True)
    lines = ["train_index,train_source,benchmark,lm_eval_task,doc_id,test_text,category,action"]
    lines += [f"{k},MATH,{t.split('_')[0]},{t},{d},q,{c},remove" for k, (t, d, c) in enumerate(FLAGGED_06)]
    flagged.write_text("\n".join(lines) + "\n")
    return overrides


def test_06_notebook_runs_and_records(tmp_path):
    """Stage 06's notebook on fabricated 05 and 02 outputs: the planted change is the one significant
    subject, the category changes and the clean-subset counts are the hand-computed ones, and the
    figures are saved and shown inline."""
    from platypus_utils.analysis.common import ALL_SUBJECTS

    profile, records = execute("06_analysis", _analysis_case(tmp_path))
    label = "merged vs base"
    assert (
        records["comparisons"] == records["comparisons_saved"] == [{"comparison": label, "kind": "fine-tuned vs base"}]
    )
    assert records["questions_with_samples"] == {"base": 130, "merged": 130}
    assert records["subjects_compared"] == {label: 3}
    assert records["seed_spread"] == []  # one training seed: no spread to show
    assert records["significant_subjects"] == {label: ["anatomy"]}
    subjects = {r["unit"]: r for r in records["subject_deltas"]}
    assert subjects["anatomy"]["delta"] == pytest.approx(75.0) and subjects["anatomy"]["p_value"] == 2 / 2**30
    assert subjects["philosophy"]["delta"] == pytest.approx(2.5) and subjects["philosophy"]["p_value"] == 1.0
    assert subjects["abstract_algebra"]["delta"] == 0 and not subjects["philosophy"]["significant"]
    assert all(r["n"] == 40 for r in subjects.values())
    assert records["category_deltas"][label] == pytest.approx(
        {"stem": (75.0 + 0.0) / 2, "humanities": 2.5, ALL_SUBJECTS: (75.0 + 0.0 + 2.5) / 3}
    )
    # clean subset: ARC loses docs 0 and 1 (doc 99 was not evaluated), MMLU anatomy's doc 2
    assert records["clean_why"] == ""
    clean = {(r["variant"], r["benchmark"]): r for r in records["clean_rows"]}
    assert {k: (r["n_full"], r["n_clean"]) for k, r in clean.items()} == {
        (v, b): n for v in ("base", "merged") for b, n in (("arc_challenge", (10, 8)), ("mmlu", (120, 119)))
    }
    assert clean["base", "arc_challenge"]["clean_score"] == pytest.approx(100 * 2 / 8)
    assert clean["base", "arc_challenge"]["full_score"] == pytest.approx(100 * 4 / 10)
    assert clean["merged", "mmlu"]["clean_score"] == pytest.approx(100 * _mean([33 / 39, 10 / 40, 19 / 40]))
    assert clean["base", "mmlu"]["clean_score"] == pytest.approx(100 * _mean([4 / 39, 10 / 40, 18 / 40]))
    counts = {r["benchmark"]: r for r in records["flagged_counts"]}
    assert (counts["arc_challenge"]["flagged"], counts["arc_challenge"]["flagged_evaluated"]) == (3, 2)
    assert (counts["mmlu"]["flagged"], counts["mmlu"]["flagged_evaluated"]) == (1, 1)
    # the figures: saved under reports/<profile>/figures in each format, shown inline once each
    figures = records["figures_saved"]
    assert {"clean_subset", "mmlu_delta_categories", "mmlu_delta_heatmap", "mmlu_delta_merged"} <= set(figures)
    figure_dir = tmp_path / "nb" / "reports" / "demo" / "figures"
    assert profile.report_dir("figures") == figure_dir
    for name in ("clean_subset", "mmlu_delta_categories", "mmlu_delta_heatmap", "mmlu_delta_merged"):
        assert {Path(p).name for p in figures[name]} >= {f"{name}.png", f"{name}.pdf", f"{name}.txt"}, name
    for paths in figures.values():
        assert all(Path(p).parent == figure_dir and Path(p).stat().st_size > 0 for p in paths)
    assert read_manifest(profile.run_dir("06_analysis"))["metrics"]["comparisons"] == 1
    executed = nbformat.read(str(runner.executed_notebook(profile, "06_analysis")), as_version=4)
    images = [o for c in executed.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    # every figure saved is one the notebook showed (the same objects: the save step draws nothing), once each
    shown = ["clean_subset", "leaderboard", "merge_tradeoff", "mmlu_delta_categories", "mmlu_delta_heatmap"]
    assert records["figures_shown"] == sorted(figures) == sorted([*shown, "mmlu_delta_merged"])
    assert len(images) == len(records["figures_shown"])
