import json

import pytest

from platypus_utils.artifacts import (
    RUNNER_ATTEMPT_ENV,
    SkippedRows,
    StageRun,
    atomic_path,
    attempt_problem,
    begin_attempt,
    debris,
    read_attempt,
    read_jsonl,
    read_manifest,
    remove_debris,
    sha256_path,
    write_jsonl,
)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_directories(tmp_path):
    target = tmp_path / "model"
    for content in ("old", "new"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "w.txt").write_text(content)
    assert (target / "w.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_jsonl_roundtrip_and_bytes(tmp_path):
    rows = [{"b": "é", "a": 1}, {"x": [1, 2]}]
    write_jsonl(tmp_path / "a.jsonl", rows)
    write_jsonl(tmp_path / "b.jsonl", rows)
    assert read_jsonl(tmp_path / "a.jsonl") == rows
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_read_jsonl_skips_bad_lines_naming_file_and_line(tmp_path, caplog):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"a": 1}\n{oops\n{"b": "caf\xe9"}\n[1, 2]\n\n{"c": 3}\n')
    skipped = SkippedRows()
    with caplog.at_level("WARNING", logger="platypus"):
        rows = read_jsonl(path, skipped)
    assert rows == [{"a": 1}, {"c": 3}]  # the rest of the file is read
    assert skipped == {"malformed_json": 1, "undecodable": 1, "not_an_object": 1}
    assert [w for w, _ in skipped.where] == [f"{path}, line {n}" for n in (2, 3, 4)]
    assert f"{path}, line 3: undecodable: byte 0xe9 at column 11" in caplog.text


@pytest.mark.parametrize(
    "policy, expected_output, counted",
    [
        ("keep", 200_000, ("notes", "over_long:kept")),
        ("truncate", 1_000, ("notes", "over_long:truncated")),
        ("drop", None, ("skipped", "filtered:over_long")),
    ],
)
def test_over_long_rows_follow_the_policy(tmp_path, caplog, policy, expected_output, counted):
    path = tmp_path / "long.jsonl"
    write_jsonl(path, [{"output": "short"}, {"output": "x" * 200_000}, {"output": "also short"}])
    skipped = SkippedRows()
    with caplog.at_level("WARNING", logger="platypus"):
        rows = read_jsonl(path, skipped, max_chars=1_000, over_long=policy)
    lengths = [len(r["output"]) for r in rows]
    assert lengths == [5] + ([expected_output] if expected_output else []) + [10]
    where, key = counted
    assert (skipped.notes if where == "notes" else skipped)[key] == 1
    assert f"{path}, line 2: {key}: output has 200,000 characters (> 1,000)" in caplog.text


def test_debris_is_removed_unless_its_writer_lives(tmp_path):
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    (tmp_path / "sub").mkdir()
    left = [
        tmp_path / f".model.{dead_pid}-abc.tmp",
        tmp_path / "sub" / f".x.json.{dead_pid}-q1.tmp",
        tmp_path / f".model.old-{dead_pid}",
        tmp_path / ".general-platypus.k2j_x.tmp",
    ]  # the last: old naming
    live = tmp_path / f".other.{os.getppid()}-zz.tmp"  # a live process (our parent) is still writing it
    for d in [*left, live]:
        d.mkdir()
        (d / "w").write_text("half")
    keep = [tmp_path / "model", tmp_path / ".hidden"]
    for k in keep:
        k.mkdir()
    assert debris(tmp_path) == sorted(left)
    assert remove_debris(tmp_path) == sorted(left)
    assert not any(d.exists() for d in left) and live.exists() and all(k.exists() for k in keep)


def test_atomic_path_names_its_temp_folder_with_the_writer_pid(tmp_path):
    import os

    with atomic_path(tmp_path / "model") as tmp:
        assert tmp.parent.name.startswith(f".model.{os.getpid()}-") and tmp.parent.name.endswith(".tmp")
        assert debris(tmp_path) == []  # our own, live write is not debris
        tmp.mkdir()


def test_stage_run_records_its_attempt(tmp_path, monkeypatch):
    monkeypatch.delenv(RUNNER_ATTEMPT_ENV, raising=False)
    out = tmp_path / "stage"
    with StageRun(out, "01_curate", {"k": 1}):
        assert read_attempt(out)["status"] == "running"
        assert "never finished" in attempt_problem(out)
    assert read_attempt(out)["status"] == "ok" and attempt_problem(out) is None
    with pytest.raises(ValueError):
        with StageRun(out, "01_curate", {"k": 1}):
            raise ValueError("bad row 3")
    assert read_manifest(out)["status"] == "ok"  # the older manifest stays, but the attempt says failed
    assert "ValueError: bad row 3" in attempt_problem(out)
    monkeypatch.setenv(RUNNER_ATTEMPT_ENV, "1")  # under the runner, the runner records attempts
    begin_attempt(out, "01_curate")
    with StageRun(out, "01_curate", {"k": 1}):
        pass
    assert read_attempt(out)["status"] == "running"


def test_sha256_path_dir_changes_with_content(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("1")
    h1 = sha256_path(tmp_path / "d")
    (tmp_path / "d" / "f").write_text("2")
    assert sha256_path(tmp_path / "d") != h1


def test_stage_run_writes_manifest_only_on_success(tmp_path):
    out = tmp_path / "stage"
    with pytest.raises(ValueError):
        with StageRun(out, "01_curate", {"k": 1}):
            raise ValueError("boom")
    assert read_manifest(out) is None
    with StageRun(out, "01_curate", {"k": 1}) as run:
        f = out / "x.txt"
        f.write_text("hi")
        run.add_output(f)
        run.metrics["rows"] = 3
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "ok" and m["params"] == {"k": 1} and m["metrics"]["rows"] == 3
    assert m["outputs"][str(f.resolve())] == sha256_path(f)
    assert "torch" in m["libraries"] and m["timings"]["wall_s"] >= 0
