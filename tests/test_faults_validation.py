"""Faults caught by validation, before any work (issue 21): each is injected for real through the
command line (`cli.main`, in process) or `load_profile`, and the test asserts on the message (the file
and the key or flag it names), the exit status (2), the absence of a traceback, and the files: nothing
written, nothing overwritten.

- a profile `name` (or a variant name) that is not a plain folder name; executed notebooks that would
  land on the committed stage notebooks;
- partial mappings (decontaminate.actions, evaluate.tasks) and `--set` paths through a value or a list;
- an empty profile, a key written twice, a profile that is not UTF-8, an unknown device or batch size;
- `platypus plan --mfu / --gpu-memory-gb` out of range; `platypus decontaminate --out` a file or the
  input's own folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from platypus_utils import runner
from platypus_utils.cli import main
from platypus_utils.config import ProfileError, load_profile

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "params" / "demo.yaml"


def _project(tmp_path: Path, text: str | bytes | None = None, name: str = "demo.yaml") -> Path:
    """A project of its own (params/ inside tmp_path/proj): a profile's relative paths resolve there."""
    params = tmp_path / "proj" / "params"
    params.mkdir(parents=True, exist_ok=True)
    path = params / name
    if text is None:
        shutil.copy(DEMO, path)
    elif isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _fails(capsys, argv: list[str], *needles: str) -> str:
    """Run the CLI; it must exit 2 with no traceback and print no "ok", its error holding every needle."""
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert "Traceback" not in captured.err and ": ok" not in captured.out
    for needle in needles:
        assert needle in captured.err, (needle, captured.err)
    return captured.err


# 1. One rule for names and paths


@pytest.mark.parametrize("bad", ["..", ".", "a/b", "/abs", "", "x\\y", "'..'", "'\"runs/x\"'"])
def test_name_outside_its_root_writes_nothing(tmp_path, capsys, bad):
    path = _project(tmp_path)
    committed = hashlib.sha256((ROOT / "notebooks" / "01_curate.ipynb").read_bytes()).hexdigest()
    before = _snapshot(tmp_path)
    _fails(capsys, ["run", str(path), "--set", f"name={bad}", "--only", "01"], "key 'name'", str(path))
    assert _snapshot(tmp_path) == before  # no run.lock, no 01_curate/, no figures/, no notebook
    assert hashlib.sha256((ROOT / "notebooks" / "01_curate.ipynb").read_bytes()).hexdigest() == committed


def test_variant_names_are_plain_folder_names(tmp_path):
    path = _project(tmp_path)
    for key in ("merge.merged_name", "merge.partners.0.name", "merge.adapter_mixes.0.name"):
        with pytest.raises(ProfileError, match=key.replace(".", r"\.")) as err:
            load_profile(path, {key: "../../escape"})
        assert str(path) in str(err.value)


def test_derived_paths_stay_inside_their_roots(tmp_path):
    """run_dir and report_dir check their parts when called: a name changed after validation fails there."""
    profile = load_profile(_project(tmp_path))
    assert profile.run_dir("01_curate").parent.parent == Path(profile.paths.runs_dir)
    profile.name = ".."
    for derive in (profile.run_dir, profile.report_dir):
        with pytest.raises(ValueError, match="not a plain folder name"):
            derive()
    profile.name = "demo"
    with pytest.raises(ValueError, match="not a plain folder name"):
        profile.report_dir("../../notebooks")


def test_executed_notebooks_never_land_on_the_stage_notebooks(tmp_path, capsys, monkeypatch):
    """A plain name that, with paths.reports_dir, makes reports/<name>/notebooks the notebooks/ folder."""
    sources = tmp_path / "proj" / "notebooks"
    sources.mkdir(parents=True)
    shutil.copy(ROOT / "notebooks" / "01_curate.ipynb", sources)
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", sources)
    raw = yaml.safe_load(DEMO.read_text())
    raw.update(name="proj", paths={"runs_dir": "runs", "reports_dir": ".."})
    path = _project(tmp_path, yaml.safe_dump(raw))
    before = _snapshot(tmp_path)
    _fails(capsys, ["run", str(path), "--only", "01"], "paths.reports_dir", str(sources))
    assert _snapshot(tmp_path) == before
    profile = load_profile(path)
    with pytest.raises(ProfileError):  # the guard where the notebook is written, for direct callers
        runner.execute_stage(profile, "01_curate", {})
    assert _snapshot(tmp_path) == before


# 2. Partial mappings


def test_partial_actions_keep_the_other_defaults(tmp_path):
    path = _project(tmp_path)
    profile = load_profile(path, {"decontaminate.actions.similar_but_different": "remove"})
    assert profile.decontaminate.actions == {
        "duplicate": "remove",
        "gray_area": "remove",
        "similar_but_different": "remove",
    }
    raw = yaml.safe_load(DEMO.read_text())
    raw["decontaminate"]["actions"] = {"gray_area": "keep"}
    profile = load_profile(_project(tmp_path, yaml.safe_dump(raw), "partial.yaml"))
    assert profile.decontaminate.actions == {
        "duplicate": "remove",
        "gray_area": "keep",
        "similar_but_different": "keep",
    }


def test_tasks_mapping_selects_tasks_and_set_keeps_the_others(tmp_path):
    """A tasks mapping in the file lists the tasks to run (a task's num_fewshot defaults to the
    leaderboard's); --set on one task of a profile without a tasks mapping keeps the four defaults."""
    selected = load_profile(_project(tmp_path, "name: sel\nevaluate:\n  tasks:\n    mmlu: {limit: 3}\n", "sel.yaml"))
    assert {k: (t.num_fewshot, t.limit) for k, t in selected.evaluate.tasks.items()} == {"mmlu": (5, 3)}
    path = _project(tmp_path, "name: one\n", "one.yaml")
    profile = load_profile(path, {"evaluate.tasks.mmlu.limit": 3})
    tasks = {k: (t.num_fewshot, t.limit) for k, t in profile.evaluate.tasks.items()}
    assert tasks == {"arc_challenge": (25, None), "hellaswag": (10, None), "mmlu": (5, 3), "truthfulqa_mc2": (0, None)}


# 3. --set into a value; list indexes


@pytest.mark.parametrize(
    "item, key",
    [
        ("finetune.cutoff_len.x=3", "finetune.cutoff_len"),
        ("finetune.sft.max_steps.x=3", "finetune.sft.max_steps"),
        ("seed.x=1", "seed"),
        ("curate.sources.5.limit=5", "curate.sources.5"),
        ("curate.sources.first.limit=5", "curate.sources.first"),
        ("curate.similarity_threshold.0=1", "curate.similarity_threshold"),
        ("finetune.seeds.0=3", "finetune.seeds.0"),
        ("paths.runs_dir=", "paths.runs_dir"),
    ],
)
def test_bad_set_items_are_profile_errors(tmp_path, capsys, item, key):
    path = _project(tmp_path)
    before = _snapshot(tmp_path)
    _fails(capsys, ["run", str(path), "--set", item, "--only", "01"], f"key '{key}'", str(path), item.split("=")[0])
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("item", ["finetune..cutoff_len=3", "=3", "seed=[1", "seed"])
def test_malformed_set_items_are_named(tmp_path, capsys, item):
    path = _project(tmp_path)
    before = _snapshot(tmp_path)
    _fails(capsys, ["run", str(path), "--set", item, "--only", "01"], f"--set {item!r}")
    assert _snapshot(tmp_path) == before


def test_set_into_a_list_item(tmp_path):
    path = _project(tmp_path)
    profile = load_profile(path, {"curate.sources.0.limit": 5, "merge.partners.0.adapter": None})
    assert profile.curate.sources[0].name == "demo" and profile.curate.sources[0].limit == 5
    assert profile.merge.partners[0].name == "general" and profile.merge.partners[0].adapter is None
    bare = load_profile(_project(tmp_path, "name: bare\n", "bare.yaml"), {"curate.sources.0.limit": 7})
    assert [(s.name, s.limit) for s in bare.curate.sources] == [("demo", 7)]  # the default list, item 0 set


# 4. Weak points of the profile file


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
def test_empty_profile_is_refused(tmp_path, capsys, text):
    path = _project(tmp_path, text, "empty.yaml")
    _fails(capsys, ["validate", str(path)], str(path), "empty profile", "key 'name' is missing")


def test_duplicate_key_is_refused_with_its_line(tmp_path, capsys):
    path = _project(tmp_path, "name: dup\nfinetune:\n  cutoff_len: 8\n  eval_size: 16\n  cutoff_len: 64\n", "dup.yaml")
    _fails(capsys, ["validate", str(path)], str(path), "line 5", "'cutoff_len'", "first on line 3")
    flow = _project(tmp_path, "name: dup\nseed: 1\nseed: 2\n", "dup2.yaml")
    _fails(capsys, ["validate", str(flow)], str(flow), "line 3", "'seed'")


def test_anchors_and_merge_keys_still_load(tmp_path):
    text = "name: anchors\nx: &lr 0.001\nfinetune:\n  sft:\n    learning_rate: *lr\n"
    with pytest.raises(ProfileError, match="unknown key 'x'"):  # an unknown key, not a duplicate
        load_profile(_project(tmp_path, text, "a.yaml"))
    merged = "name: m\nfinetune:\n  lora:\n    <<: {r: 8, lora_alpha: 8}\n    r: 16\n"  # a merge key, overridden
    lora = load_profile(_project(tmp_path, merged, "m.yaml")).finetune.lora
    assert (lora["r"], lora["lora_alpha"]) == (16, 8)


def test_non_utf8_profile_names_file_and_byte(tmp_path, capsys):
    data = b"name: latin\ndescription: caf\xe9\n"
    path = _project(tmp_path, data, "latin.yaml")
    at = data.index(0xE9)
    _fails(capsys, ["validate", str(path)], str(path), "not UTF-8", "0xe9", f"position {at}", "line 2")


@pytest.mark.parametrize(
    "key, value",
    [("evaluate.device", "gpu7"), ("evaluate.device", "cuda:x"), ("evaluate.batch_size", "banana")]
    + [("evaluate.batch_size", v) for v in ("0", "-4", "auto:0", "true")],
)
def test_device_and_batch_size_fail_at_validation(tmp_path, capsys, key, value):
    path = _project(tmp_path)
    before = _snapshot(tmp_path)
    _fails(capsys, ["run", str(path), "--set", f"{key}={value}", "--only", "05"], f"key '{key}'", str(path))
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "key, value",
    [("finetune.sft.lr_scheduler_type", "cosinus"), ("finetune.sft.max_steps", -5), ("finetune.lora.r", 0)],
)
def test_finetune_values_fail_at_validation(tmp_path, capsys, key, value):
    path = _project(tmp_path)
    before = _snapshot(tmp_path)
    _fails(capsys, ["run", str(path), "--set", f"{key}={value}", "--only", "03"], f"key '{key}'", str(path))
    assert _snapshot(tmp_path) == before
    scheduler = load_profile(path, {"finetune.sft.lr_scheduler_type": "inverse_sqrt"}).finetune.sft["lr_scheduler_type"]
    assert scheduler == "inverse_sqrt"


def test_good_devices_and_batch_sizes_validate(tmp_path):
    path = _project(tmp_path)
    for device, batch in (("cuda:1", "auto:4"), ("mps", 8), ("cuda", "auto"), ("auto", "16")):
        profile = load_profile(path, {"evaluate.device": device, "evaluate.batch_size": batch})
        assert (profile.evaluate.device, profile.evaluate.batch_size) == (device, str(batch))


# 4. plan's and decontaminate's flags


@pytest.mark.parametrize(
    "flag, value", [("--mfu", "0"), ("--mfu", "5"), ("--mfu", "-0.1"), ("--mfu", "x"), ("--gpu-memory-gb", "-1")]
)
def test_plan_flags_out_of_range(tmp_path, capsys, flag, value):
    out = tmp_path / "plan.json"
    with pytest.raises(SystemExit) as exit_:
        main(["plan", str(DEMO), flag, value, "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"argument {flag}" in err and value in err and "Traceback" not in err
    assert not out.exists()


def test_make_plan_refuses_out_of_range_values():
    from platypus_utils.plan import make_plan

    profile = load_profile(DEMO)
    for kwargs in ({"mfu": 0}, {"mfu": 5}, {"gpu_memory_gb": -1}, {"gpu_memory_gb": 0}):
        with pytest.raises(ValueError, match="out of range"):
            make_plan(profile, **kwargs)


@pytest.mark.parametrize("where", ["folder", "under_a_file", "the_profile"])
def test_plan_out_is_checked_before_work(tmp_path, capsys, where):
    path = _project(tmp_path)
    (tmp_path / "a_file").write_text("keep me\n")
    out = {"folder": tmp_path, "under_a_file": tmp_path / "a_file" / "plan.json", "the_profile": path}[where]
    before = _snapshot(tmp_path)
    _fails(capsys, ["plan", str(path), "--out", str(out)], "--out", str(out))
    assert _snapshot(tmp_path) == before


def _train_file(folder: Path, n: int = 5) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "clean.jsonl"
    rows = [{"instruction": f"question {i}", "output": f"answer {i}", "data_source": "t"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("under", [False, True])
def test_decontaminate_out_is_a_file(tmp_path, capsys, under):
    train = _train_file(tmp_path / "in")
    out = tmp_path / "out.txt"
    out.write_text("keep me\n")
    out = out / "sub" if under else out
    before = _snapshot(tmp_path)
    _fails(capsys, ["decontaminate", str(train), "--benchmarks", "demo", "--out", str(out)], "--out", str(out), "file")
    assert _snapshot(tmp_path) == before


def test_decontaminate_config_merges_partial_actions():
    from platypus_utils.config import DecontaminateConfig

    cfg = DecontaminateConfig(actions={"similar_but_different": "remove"})
    assert cfg.actions == {"duplicate": "remove", "gray_area": "remove", "similar_but_different": "remove"}


@pytest.mark.parametrize("spelling", ["same", "dotted", "relative"])
def test_decontaminate_never_writes_over_its_input(tmp_path, capsys, monkeypatch, spelling):
    train = _train_file(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    out = {"same": str(train.parent), "dotted": f"{tmp_path}/data/../data/.", "relative": "data"}[spelling]
    before = _snapshot(tmp_path)
    _fails(capsys, ["decontaminate", str(train), "--benchmarks", "demo", "--out", out], "--out", "clean.jsonl", "input")
    assert _snapshot(tmp_path) == before  # the input keeps its 5 lines; nothing written beside it


def test_decontaminate_threshold_names_the_flag(tmp_path, capsys):
    train = _train_file(tmp_path / "in")
    _fails(
        capsys,
        ["decontaminate", str(train), "--benchmarks", "demo", "--out", str(tmp_path / "o"), "--threshold", "5"],
        "--threshold",
    )
    assert not (tmp_path / "o").exists()
