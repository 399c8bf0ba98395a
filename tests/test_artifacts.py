import json

import pytest

from platypus_utils.artifacts import (StageRun, atomic_path, read_jsonl, read_manifest, sha256_path, write_jsonl)


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


def test_read_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2"):
        read_jsonl(path)


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
