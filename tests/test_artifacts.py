import json

import pytest

from platypus_utils.artifacts import (
    RUNNER_ATTEMPT_ENV,
    BadJsonLine,
    SkippedRows,
    StageRun,
    atomic_path,
    attempt_problem,
    begin_attempt,
    debris,
    iter_jsonl,
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


BAD_LINES = (
    b'{"a": 1}\n'  # 1: good
    b'{"b": "caf\xe9"}\n'  # 2: not UTF-8
    b"{oops\n"  # 3: not JSON
    b'{"c": "x\\ud800y"}\n'  # 4: a lone surrogate in a value (valid JSON)
    b'{"d": [{"e\\udc00": 1}]}\n'  # 5: ... in a nested key
    b"[1, 2]\n"  # 6: JSON, not an object
    b"\n"  # 7: blank: passed over, not counted
    b'{"f": "\\ud83d\\ude00 \\u00e9"}\n'  # 8: a surrogate *pair* is one character: good
)


def test_one_reader_skips_and_counts_every_kind_of_bad_line(tmp_path, caplog):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(BAD_LINES)
    skipped = SkippedRows()
    with caplog.at_level("WARNING", logger="platypus"):
        rows = read_jsonl(path, skipped)
    assert rows == [{"a": 1}, {"f": "\U0001f600 é"}]
    assert skipped == {"undecodable": 1, "malformed_json": 1, "lone_surrogate": 2, "not_an_object": 1}
    assert skipped.where == [
        (f"{path}, line 2", "undecodable"),
        (f"{path}, line 3", "malformed_json"),
        (f"{path}, line 4", "lone_surrogate"),
        (f"{path}, line 5", "lone_surrogate"),
        (f"{path}, line 6", "not_an_object"),
    ]
    assert f"{path}, line 4: lone_surrogate: U+D800 in a string" in caplog.text
    assert f"{path}, line 5: lone_surrogate: U+DC00" in caplog.text
    # the iterator form yields every usable JSON value, the array included, with its line
    assert [n for n, _ in iter_jsonl(path, SkippedRows())] == [1, 6, 8]


@pytest.mark.parametrize(
    "line, message",
    [
        (b'{"b": "caf\xe9"}', r"line 2: not UTF-8 \(byte 0xe9 at column 11"),
        (b"{oops", r"line 2: malformed JSON \(Expecting property name"),
        (b'{"x": {"y": ["\\udfff"]}}', r"line 2: lone surrogate \(U\+DFFF"),
        (b"[" * 100_000, r"line 2: malformed JSON"),  # nested too deeply: counted, not a crash
    ],
)
def test_strict_reading_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bench.jsonl"
    path.write_bytes(b'{"a": 1}\n' + line + b"\n")
    with pytest.raises(BadJsonLine, match=f"bench.jsonl, {message}"):
        list(iter_jsonl(path, strict=True))
    skipped = SkippedRows()
    assert list(iter_jsonl(path, skipped)) == [(1, {"a": 1})] and sum(skipped.values()) == 1


def test_write_jsonl_escapes_a_lone_surrogate_instead_of_failing(tmp_path):
    path = write_jsonl(tmp_path / "out.jsonl", [{"a": "é"}, {"b": "x\ud800"}])
    assert path.read_bytes() == '{"a": "é"}\n{"b": "x\\ud800"}\n'.encode()
    assert [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()] == [{"a": "é"}, {"b": "x\ud800"}]


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
    assert read_manifest(out)["outputs"][str(f.resolve())] == sha256_path(f)  # read back absolute
    assert not any(k.startswith("/") for k in m["outputs"])  # written relative to the project
    assert "torch" in m["libraries"] and m["timings"]["wall_s"] >= 0


def test_json_lists_have_the_json_lines_rules(tmp_path):
    """artifacts.iter_json_list, the one JSON-list reader (sources, stage 02's training file, benchmark files): an
    item holding bytes that are not UTF-8 or a lone surrogate is skipped and counted, or with strict=True an error
    naming file and item; a file that is not JSON or not a list is an error naming it."""
    from platypus_utils.artifacts import BadJsonLine, SkippedRows, iter_json_list

    path = tmp_path / "rows.json"
    path.write_bytes(b'[{"a": "ok"}, {"a": "caf\xe9"}, {"a": "\\ud800"}, {"a": "fine"}]')
    skipped = SkippedRows()
    assert list(iter_json_list(path, skipped)) == [(1, {"a": "ok"}), (4, {"a": "fine"})]
    assert skipped.where == [(f"{path}, item 2", "undecodable"), (f"{path}, item 3", "lone_surrogate")]
    with pytest.raises(BadJsonLine, match=r"rows.json, item 1: bytes that are not UTF-8"):
        list(iter_json_list(path, strict=True, start=0))
    path.write_text('{"a": 1}')
    with pytest.raises(ValueError, match="rows.json: expected a JSON list of questions, got dict"):
        list(iter_json_list(path, what="questions"))
    path.write_text('[{"a": 1},')
    with pytest.raises(ValueError, match=r"rows.json, line 1: malformed JSON"):
        list(iter_json_list(path))


def test_an_unknown_over_long_policy_is_an_error():
    from platypus_utils.artifacts import SkippedRows, limit_long_fields

    with pytest.raises(ValueError, match="policy 'trunc', expected one of truncate, drop, keep"):
        limit_long_fields({"a": "x" * 10}, 5, "trunc", "f, line 1", SkippedRows())


def test_code_only_is_the_code_text_without_docstrings_comments_or_blank_lines():
    """The eval cache's keys and the package hash read this: text cut by position, so it is the same on every Python
    (an `ast.dump` differs between versions: 3.12 adds type_params, 3.13 leaves empty fields out)."""
    from platypus_utils.artifacts import code_only

    src = (
        '"""Module doc."""\n\nimport os  # why\n\n\ndef f(x):\n    """Double it.\n\n    More."""\n'
        '    s = "# not a comment"  # a comment\n    return 2 * x\n\n\ndef g():\n    """A lone docstring is the body."""\n'
    )
    assert code_only(src) == (
        'import os\ndef f(x):\n    s = "# not a comment"\n    return 2 * x\ndef g():\n    """A lone docstring is the body."""'
    )
    assert code_only(src.replace("Double it.", "Twice x.").replace("# why", "# because")) == code_only(src)
    assert code_only(src.replace("2 * x", "3 * x")) != code_only(src)
