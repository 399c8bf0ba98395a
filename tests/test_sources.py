"""Source loaders: each original format, from small fixtures written here (bad rows included)."""

from __future__ import annotations

import json
import sys
import types
from collections import Counter
from pathlib import Path

import pytest

from platypus_utils.config import PathsConfig, Profile, SourceConfig
from platypus_utils.sources import SOURCE_LOADERS, STEM_KEYWORDS, UnknownSourceError, has_stem_keyword, load_source

REAL_SOURCES = Path(__file__).resolve().parents[2] / "shared" / "data" / "sources"


@pytest.fixture
def profile(tmp_path) -> Profile:
    return Profile(name="t", paths=PathsConfig(runs_dir=str(tmp_path / "runs")))


def _lines(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def _schema_ok(rows: list[dict]) -> None:
    for r in rows:
        assert list(r) == ["instruction", "input", "output", "data_source"]
        assert all(isinstance(v, str) for v in r.values())
        assert r["instruction"].strip() and r["output"].strip() and r["data_source"]


# ---------------------------------------------------------------- STEM keywords
def test_stem_keywords_are_clean_and_fix_the_authors_bugs():
    assert all(k == k.lower() and k == k.strip() and k for k in STEM_KEYWORDS)
    assert len(STEM_KEYWORDS) == len(set(STEM_KEYWORDS))
    assert "calculationscience" not in STEM_KEYWORDS
    assert {"calculation", "science", "ai"} <= set(STEM_KEYWORDS)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Explain how AI systems are trained.", True),  # upper-case input still matches "ai"
        ("Show the calculation step by step.", True),
        ("What does computer science study?", True),
        ("Find the sum of the series.", True),
        ("Write a summary of the novel.", False),  # "sum" must match as a whole word only
        ("Write a poem about the sea at dawn.", False),
        ("Which item is cellular?", False),  # "cell" is not a word here
    ],
)
def test_has_stem_keyword_matches_whole_words(text, expected):
    assert has_stem_keyword(text) is expected


# ---------------------------------------------------------------- registry and errors
def test_registry_lists_every_source_and_unknown_names_fail(profile):
    assert set(SOURCE_LOADERS) == {
        "demo",
        "jsonl",
        "math",
        "theoremqa",
        "scibench",
        "scienceqa",
        "prm800k",
        "arb",
        "hub",
    }
    with pytest.raises(UnknownSourceError, match="known: demo, jsonl") as err:
        load_source(SourceConfig(name="reclor_local"), profile)
    assert isinstance(err.value, ValueError)


def test_missing_path_names_it(profile, tmp_path):
    missing = tmp_path / "nowhere" / "test.jsonl"
    for name in ("jsonl", "math", "theoremqa", "scibench", "scienceqa", "prm800k", "arb"):
        with pytest.raises(FileNotFoundError, match="nowhere"):
            load_source(SourceConfig(name=name, path=str(missing)), profile)


def test_a_local_source_without_path_is_a_config_error(profile):
    with pytest.raises(ValueError, match="set `path`"):
        load_source(SourceConfig(name="math"), profile)


def test_empty_folder_names_what_it_expected(profile, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \*\.jsonl files"):
        load_source(SourceConfig(name="math", path=str(tmp_path / "empty")), profile)


# ---------------------------------------------------------------- jsonl (Open-Platypus schema)
def test_jsonl_validates_each_row_and_counts_the_bad_ones(profile, tmp_path):
    good = {"instruction": "Q1", "input": "", "output": "A1", "data_source": "airoboros", "extra": 1}
    path = _lines(
        tmp_path / "mine.jsonl",
        [
            good,
            "{not json",
            {"instruction": "Q2", "input": ""},  # no output
            {"instruction": "   ", "input": "", "output": "A"},  # blank instruction
            {"instruction": "Q3", "input": 5, "output": "A"},  # non-string input
            ["a", "list"],
            {"instruction": "Q4", "input": "ctx", "output": "A4"},  # no data_source: the file name
            {"instruction": "Q5", "input": "", "output": "A5", "data_source": 7},
            "",
        ],
    )
    rows, skipped = load_source(SourceConfig(name="jsonl", path=str(path)), profile)
    _schema_ok(rows)
    assert rows == [
        {"instruction": "Q1", "input": "", "output": "A1", "data_source": "airoboros"},
        {"instruction": "Q4", "input": "ctx", "output": "A4", "data_source": "mine"},
    ]
    assert skipped == Counter(
        {
            "malformed_json": 1,
            "missing_field:output": 1,
            "empty_field:instruction": 1,
            "non_string_field:input": 1,
            "not_an_object": 1,
            "non_string_field:data_source": 1,
        }
    )


def test_jsonl_accepts_a_json_list_and_rejects_other_json(profile, tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"instruction": "Q", "input": "", "output": "A"}]))
    rows, _ = load_source(SourceConfig(name="jsonl", path=str(path)), profile)
    assert rows == [{"instruction": "Q", "input": "", "output": "A", "data_source": "rows"}]
    path.write_text(json.dumps({"instruction": "Q"}))
    with pytest.raises(ValueError, match="rows.json: expected a JSON list"):
        load_source(SourceConfig(name="jsonl", path=str(path)), profile)


def test_limit_keeps_the_first_rows_and_counts_the_rest(profile, tmp_path):
    path = _lines(tmp_path / "r.jsonl", [{"instruction": f"Q{i}", "input": "", "output": "A"} for i in range(5)])
    rows, skipped = load_source(SourceConfig(name="jsonl", path=str(path), limit=2), profile)
    assert [r["instruction"] for r in rows] == ["Q0", "Q1"]
    assert skipped == Counter({"filtered:over_limit": 3})


# ---------------------------------------------------------------- MATH
def test_math_rows(profile, tmp_path):
    folder = tmp_path / "math"
    folder.mkdir()
    _lines(
        folder / "test.jsonl",
        [
            {
                "problem": "What is $1+1$?",
                "level": "Level 1",
                "type": "Algebra",
                "solution": "It is $\\boxed{2}$.",
                "idx": 0,
            },
            {"problem": "No solution here", "level": "Level 2", "type": "Algebra", "idx": 1},
            {"problem": "", "solution": "x", "idx": 2},
            '{"problem": "truncated',
        ],
    )
    rows, skipped = load_source(SourceConfig(name="math", path=str(folder)), profile)
    assert rows == [
        {"instruction": "What is $1+1$?", "input": "", "output": "It is $\\boxed{2}$.", "data_source": "MATH"}
    ]
    assert skipped == Counter({"missing_field:solution": 1, "empty_field:problem": 1, "malformed_json": 1})


# ---------------------------------------------------------------- TheoremQA
def test_theoremqa_rows(profile, tmp_path):
    folder = tmp_path / "theoremqa"
    folder.mkdir()
    items = [
        {
            "Question": "How many labeled trees on 4 vertices?",
            "Answer": 16,
            "Answer_type": "integer",
            "Picture": None,
            "theorem": "cayley's formula",
            "subfield": "Combinatorics",
            "field": "Math",
            "id": "a",
        },
        {"Question": "Read the figure.", "Answer": 3, "Picture": "images/x.png", "theorem": "t", "id": "b"},
        {"Question": "Is 7 prime?", "Answer": True, "Picture": None, "theorem": "", "id": "c"},
        {"Question": "List the roots.", "Answer": [1, 2], "Picture": None, "theorem": "vieta", "id": "d"},
        {"Question": "Unanswered?", "Answer": None, "Picture": None, "theorem": "t", "id": "e"},
        {"Answer": 1, "Picture": None, "id": "f"},
    ]
    (folder / "theoremqa_test.json").write_text(json.dumps(items))
    rows, skipped = load_source(SourceConfig(name="theoremqa", path=str(folder)), profile)
    _schema_ok(rows)
    assert [r["instruction"] for r in rows] == [
        "How many labeled trees on 4 vertices?\nRelevant Theorem: cayley's formula",
        "Is 7 prime?",
        "List the roots.\nRelevant Theorem: vieta",
    ]
    assert [r["output"] for r in rows] == ["16", "True", "[1, 2]"]
    assert skipped == Counter({"filtered:image": 1, "filtered:no_answer": 1, "missing_field:Question": 1})


def test_theoremqa_file_that_is_not_json_names_the_file(profile, tmp_path):
    path = tmp_path / "theoremqa_test.json"
    path.write_text('[{"Question": "x",')
    with pytest.raises(ValueError, match="theoremqa_test.json, line 1: malformed JSON"):
        load_source(SourceConfig(name="theoremqa", path=str(path)), profile)


# ---------------------------------------------------------------- SciBench
def test_scibench_rows(profile, tmp_path):
    folder = tmp_path / "scibench"
    folder.mkdir()
    book = [
        {
            "problem_text": "Find the pressure.",
            "answer_latex": " 50.7",
            "answer_number": "50.7",
            "unit": "$\\mathrm{atm}$ ",
            "source": "atkins",
            "problemid": " 1.1",
            "comment": " ",
        },
        {
            "problem_text": "Count the ways.",
            "answer_latex": "12",
            "answer_number": "12",
            "unit": " ",
            "source": "stat",
            "problemid": "2",
            "comment": "",
        },
        {"problem_text": "No answer at all.", "answer_latex": "", "answer_number": "", "unit": "", "problemid": "3"},
        {"answer_number": "1", "unit": "m"},
    ]
    sol = [
        {
            "problem_text": "Compute the work.",
            "answer_latex": "5",
            "answer_number": "5",
            "unit": "J",
            "solution": "W = F d\r\n= 5 J",
            "problemid": "4",
        }
    ]
    (folder / "atkins.json").write_text(json.dumps(book))
    (folder / "atkins_sol.json").write_text(json.dumps(sol))
    rows, skipped = load_source(SourceConfig(name="scibench", path=str(folder)), profile)
    _schema_ok(rows)
    assert rows[0]["instruction"] == "Find the pressure. The unit of the answer is $\\mathrm{atm}$."
    assert rows[0]["output"] == "50.7 $\\mathrm{atm}$"
    assert rows[1] == {"instruction": "Count the ways.", "input": "", "output": "12", "data_source": "scibench"}
    assert rows[2]["instruction"] == "Compute the work. The unit of the answer is J."
    assert rows[2]["output"] == "W = F d\n= 5 J\nThe answer is 5 J."
    assert len(rows) == 3
    assert skipped == Counter({"filtered:no_answer": 1, "missing_field:problem_text": 1})


def test_scibench_needs_a_folder_with_books(profile, tmp_path):
    (tmp_path / "only_sol").mkdir()
    (tmp_path / "only_sol" / "atkins_sol.json").write_text("[]")
    with pytest.raises(FileNotFoundError, match="no <book>.json"):
        load_source(SourceConfig(name="scibench", path=str(tmp_path / "only_sol")), profile)


# ---------------------------------------------------------------- ScienceQA (LLaVA release)
def _sqa(i, prompt, answer, image=False):
    rec = {"id": str(i), "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]}
    if image:
        rec["image"] = f"{i}/image.png"
    return rec


def test_scienceqa_rows(profile, tmp_path):
    folder = tmp_path / "scienceqa"
    folder.mkdir()
    items = [
        _sqa(1, "Which is a mammal?\nA. bat\nB. salmon", "A"),
        _sqa(2, "<image>\nWhat is shown?\nA. a map\nB. a cell", "B", image=True),
        _sqa(3, "Which closing is correct for a letter?\nA. thanks,\nAnne\nB. Thanks,\nAnne", "B"),
        _sqa(
            4,
            "Context: Read the text.\nWhich word would you find on a dictionary page with the guide words?\nA. x\nB. y",
            "A",
        ),
        _sqa(5, "Is this a run-on sentence?\nThe dog ran it was fast.\nA. yes\nB. no", "A"),
        _sqa(6, "Context: Select the best estimate.\nHow long is a pool?\nA. 25 yards\nB. 25 miles", "A"),
        _sqa(7, "Context: Select the best estimate.\nHow long is a pool?\nA. 25 meters\nB. 25 kilometers", "A"),
        _sqa(8, "Which is true?\nA. one\nB. two", "C"),
        _sqa(9, "A question with no options", "A"),
        {"id": "10", "conversations": "broken"},
        _sqa(11, "Which type of sentence is this?\nWe ran.\nA. simple\nB. compound-complex", "A"),
        _sqa(12, "Context: " + "word " * 401 + "\nWhich is right?\nA. yes\nB. no", "A"),
    ]
    (folder / "llava_test_CQM-A.json").write_text(json.dumps(items))
    (folder / "pid_splits.json").write_text(json.dumps({"test": ["1"]}))  # not a question file: ignored
    rows, skipped = load_source(SourceConfig(name="scienceqa", path=str(folder)), profile)
    _schema_ok(rows)
    assert rows[0] == {
        "instruction": "Which is a mammal?\nA: bat\nB: salmon",
        "input": "",
        "output": "The answer is A: bat",
        "data_source": "scienceqa",
    }
    assert rows[1]["output"] == "The answer is B: Thanks,\nAnne"  # option text spanning two lines
    assert (
        rows[2]["instruction"]
        == "Context: Select the best estimate.\nHow long is a pool?\nA: 25 meters\nB: 25 kilometers"
    )
    assert len(rows) == 3
    assert skipped == Counter(
        {
            "filtered:image": 1,
            "filtered:skill:guide_words": 1,
            "filtered:skill:run_on_sentences": 1,
            "filtered:skill:customary_units": 1,
            "malformed:answer_not_in_options": 1,
            "malformed:no_options": 1,
            "malformed:conversations": 1,
            "filtered:skill:sentence_structure": 1,
            "filtered:over_400_words": 1,
        }
    )


# ---------------------------------------------------------------- demo
def test_demo_source_writes_the_corpus_into_the_run(profile):
    rows, skipped = load_source(SourceConfig(name="demo"), profile)
    path = profile.run_dir("00_demo_data") / "demo_corpus.jsonl"
    assert path.is_file() and (path.parent / "demo_corpus_labels.json").is_file()
    assert len(rows) == len(path.read_text().splitlines()) and not skipped
    _schema_ok(rows)
    before = path.stat().st_mtime_ns
    rows_again, _ = load_source(SourceConfig(name="demo", limit=10), profile)
    assert path.stat().st_mtime_ns == before  # present and current: not rewritten
    assert rows_again == rows[:10]


def test_demo_source_repairs_a_damaged_corpus(profile):
    load_source(SourceConfig(name="demo"), profile)
    path = profile.run_dir("00_demo_data") / "demo_corpus.jsonl"
    good = path.read_bytes()
    path.write_text('{"instruction": "tampered"}\n')
    rows, skipped = load_source(SourceConfig(name="demo"), profile)
    assert path.read_bytes() == good and not skipped


# ---------------------------------------------------------------- hub (with a stand-in for datasets.load_dataset)
@pytest.fixture
def fake_hub(monkeypatch):
    tables = {
        "garage-bAInd/Open-Platypus": [
            {"instruction": "Q", "input": "", "output": "A", "data_source": "scienceqa"},
            {"instruction": "", "input": "", "output": "A", "data_source": "x"},
        ],
        "metaeval/reclor": [
            {
                "context": "A study of physics students.",
                "question": "Which follows?",
                "answers": ["w", "x", "y", "z"],
                "label": 2,
            },
            {
                "context": "A poem about love.",
                "question": "Which follows?",
                "answers": ["w", "x", "y", "z"],
                "label": 0,
            },
        ],
        "timdettmers/openassistant-guanaco": [
            {
                "text": "### Human: Explain gravity.### Assistant: Mass attracts mass.### Human: More?### Assistant: Sure."
            },
            {"text": "### Human: Tell a joke.### Assistant: Knock knock."},
        ],
        "jondurbin/airoboros-gpt4-1.4.1": [
            {"instruction": "What is a vector?", "response": "A magnitude and direction."},
            {"instruction": "Explain the physics of rainbows."},
            {"instruction": "Write a limerick.", "response": "There once was..."},
        ],
        "metaeval/ScienceQA_text_only": [  # columns of the hub release
            {
                "question": "Based on the text, which animal is a mammal?",
                "choices": ["bat", "salmon"],
                "answer": 0,
                "hint": "",
                "task": "closed choice",
                "grade": "grade3",
                "subject": "natural science",
                "topic": "biology",
                "category": "Classification",
                "skill": "Identify mammals",
                "lecture": "Mammals have fur and feed milk.",
                "solution": "A bat is a mammal: it has fur and feeds its young milk.",
            },
            {
                "question": "Which word would you find on a dictionary page?",
                "choices": ["cat", "dog"],
                "answer": 1,
                "skill": "Use guide words",
                "lecture": "",
                "solution": "Put the words in order.",
            },
            {
                "question": "Which is a solid?",
                "choices": ["ice", "steam"],
                "answer": 0,
                "skill": "Identify solids",
                "lecture": "",
                "solution": "",
            },
            {
                "question": "Which is smoother?",
                "choices": ["glass", "sand"],
                "answer": 0,
                "skill": "Compare properties",
                "lecture": "Materials differ.",
                "solution": "Glass is smoother than sand.",
            },
        ],
        "wenhu/TheoremQA": [
            {
                "Question": "How many labeled trees are there on 5 vertices?",
                "Answer": "125",
                "Answer_type": "integer",
                "Picture": None,
                "id": "a",
                "theorem": "cayley's formula",
                "theorem_def": "Cayley's formula: there are n^(n-2) labeled trees on n vertices.",
            },
            {
                "Question": "What does the figure show?",
                "Answer": "3",
                "Picture": "fig.png",
                "id": "b",
                "theorem_def": "x",
            },
        ],
        "TigerResearch/tigerbot-kaggle-leetcodesolutions-en-2k": [
            {
                "instruction": "Write a solution in python.",
                "input": "Given an array nums, return its sum.",
                "output": "def f(nums):\n    return sum(nums)",
            },
            {"instruction": "Write a solution in c++.", "input": "Reverse a string.", "output": "..."},
        ],
        "nuprl/leetcode-solutions-python-testgen-gpt4": [
            {
                "task_id": "two-sum",
                "prompt": "Given an array of integers, return indices of two that add to target.",
                "full_code": "def two_sum(nums, target):\n    ...",
                "difficulty": "Easy",
            },
            {"task_id": "broken", "full_code": "pass"},
        ],
    }
    calls = []

    def load_dataset(hub_id, split=None, **kwargs):
        calls.append((hub_id, split, kwargs))
        return tables[hub_id] if split != "test" else tables[hub_id][:1]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_hub_sources_are_shaped_like_the_authors_did(profile, fake_hub):
    rows, skipped = load_source(SourceConfig(name="hub"), profile)  # default hub id: Open-Platypus
    assert rows == [{"instruction": "Q", "input": "", "output": "A", "data_source": "scienceqa"}]
    assert skipped == Counter({"empty_field:instruction": 1})

    rows, skipped = load_source(SourceConfig(name="hub", hub_id="metaeval/reclor"), profile)
    assert rows == [
        {
            "instruction": "A study of physics students. Which follows?\nA: w\nB: x\nC: y\nD: z",
            "input": "Choose A, B, C or D as your solution.",
            "output": "C",
            "data_source": "reclor",
        }
    ]
    assert skipped == Counter({"filtered:no_stem_keyword": 1})

    rows, skipped = load_source(SourceConfig(name="hub", hub_id="timdettmers/openassistant-guanaco"), profile)
    # train and test splits are both read; only the first exchange is kept
    assert [r["output"] for r in rows] == ["Mass attracts mass.", "Mass attracts mass."]
    assert skipped == Counter({"filtered:no_stem_keyword": 1})

    rows, skipped = load_source(SourceConfig(name="hub", hub_id="jondurbin/airoboros-gpt4-1.4.1"), profile)
    assert [r["instruction"] for r in rows] == ["What is a vector?"]
    assert skipped == Counter({"malformed:KeyError": 1, "filtered:no_stem_keyword": 1})
    assert ("jondurbin/airoboros-gpt4-1.4.1", "train", {"data_files": "instructions.jsonl"}) in fake_hub


def test_a_pinned_hub_source_is_read_at_its_revision(profile, fake_hub, caplog):
    sha = "0123456789abcdef0123456789abcdef01234567"
    rows, _ = load_source(SourceConfig(name="hub", hub_id=f"jondurbin/airoboros-gpt4-1.4.1@{sha}"), profile)
    assert [r["instruction"] for r in rows] == ["What is a vector?"]  # the formatter found by the bare id
    assert fake_hub == [
        ("jondurbin/airoboros-gpt4-1.4.1", "train", {"data_files": "instructions.jsonl", "revision": sha})
    ]
    fake_hub.clear()
    with caplog.at_level("WARNING", logger="platypus"):
        load_source(SourceConfig(name="hub", hub_id="metaeval/reclor"), profile)
    assert fake_hub == [("metaeval/reclor", "train", {})] and "metaeval/reclor is not pinned" in caplog.text
    from platypus_utils.refs import resolved_snapshots

    assert resolved_snapshots(clear=True) == {
        f"jondurbin/airoboros-gpt4-1.4.1@{sha}": {
            "repo_id": "jondurbin/airoboros-gpt4-1.4.1",
            "revision": sha,
            "commit": sha,
        }
    }


def test_unknown_hub_id_lists_the_known_ones(profile, fake_hub):
    with pytest.raises(UnknownSourceError, match="garage-bAInd/Open-Platypus"):
        load_source(SourceConfig(name="hub", hub_id="someone/else"), profile)


# ---------------------------------------------------------------- the real offline sources (optional)
@pytest.mark.skipif(not REAL_SOURCES.is_dir(), reason="../shared/data is not available")
def test_real_sources_load_with_expected_counts(profile):
    expected = {  # name: (rows, rows + skipped = the release's size)
        "math": (5000, 5000),
        "theoremqa": (747, 800),  # 53 picture questions skipped
        "scibench": (692, 692),  # 580 book problems + 112 worked-solution problems
        "scienceqa": (None, 4241),
    }
    for name, (n_rows, total) in expected.items():
        rows, skipped = load_source(SourceConfig(name=name, path=str(REAL_SOURCES / name)), profile)
        _schema_ok(rows)
        if n_rows is not None:
            assert len(rows) == n_rows, name
        assert len(rows) + sum(skipped.values()) == total, name
    rows, skipped = load_source(SourceConfig(name="scienceqa", path=str(REAL_SOURCES / "scienceqa")), profile)
    assert skipped["filtered:image"] == 2017
    books = [p for p in (REAL_SOURCES / "scibench").glob("*.json") if not p.stem.endswith("_sol")]
    assert sum(len(json.loads(p.read_text())) for p in books) == 580


def test_hub_formatters_for_the_remaining_sources(profile, fake_hub):
    rows, skipped = load_source(SourceConfig(name="hub", hub_id="metaeval/ScienceQA_text_only"), profile)
    assert rows == [
        {
            "instruction": "Based on the text, which animal is a mammal?\nA: bat\nB: salmon",
            "input": "Mammals have fur and feed milk.",  # the lecture, for a "Based on ..." question
            "output": "A bat is a mammal: it has fur and feeds its young milk.",
            "data_source": "scienceqa",
        },
        {
            "instruction": "Which is smoother?\nA: glass\nB: sand",
            "input": "",  # no lecture for other questions
            "output": "Glass is smoother than sand.",
            "data_source": "scienceqa",
        },
    ]
    assert skipped == Counter({"filtered:skill": 1, "filtered:no_solution": 1})

    rows, skipped = load_source(SourceConfig(name="hub", hub_id="wenhu/TheoremQA"), profile)
    assert rows == [
        {
            "instruction": "How many labeled trees are there on 5 vertices?\nRelevant Theorem: Cayley's formula: "
            "there are n^(n-2) labeled trees on n vertices.",
            "input": "",
            "output": "125",
            "data_source": "theoremqa",
        }
    ]
    assert skipped == Counter({"filtered:image": 1})
    assert ("wenhu/TheoremQA", "train", {"data_files": "test.csv"}) in fake_hub

    rows, skipped = load_source(
        SourceConfig(name="hub", hub_id="TigerResearch/tigerbot-kaggle-leetcodesolutions-en-2k"), profile
    )
    assert rows == [
        {
            "instruction": "Given an array nums, return its sum.",
            "input": "",  # the problem was in `input`
            "output": "def f(nums):\n    return sum(nums)",
            "data_source": "tigerbot-kaggle",
        }
    ]
    assert skipped == Counter({"filtered:not_python": 1})

    rows, skipped = load_source(
        SourceConfig(name="hub", hub_id="nuprl/leetcode-solutions-python-testgen-gpt4"), profile
    )
    assert [r["data_source"] for r in rows] == ["leetcode_ne"] and rows[0]["output"].startswith("def two_sum")
    assert skipped == Counter({"malformed:KeyError": 1})


def test_theoremqa_and_scienceqa_use_the_hub_when_given_a_hub_id(profile, fake_hub):
    rows, _ = load_source(SourceConfig(name="theoremqa", hub_id="wenhu/TheoremQA"), profile)
    assert rows[0]["data_source"] == "theoremqa" and "Relevant Theorem: Cayley" in rows[0]["instruction"]


# ---------------------------------------------------------------- PRM800K (GitHub release format)
def _prm(problem, truth, steps, finish="solution"):
    return {
        "labeler": "x",
        "timestamp": "t",
        "is_quality_control_question": False,
        "is_initial_screening_question": False,
        "question": {
            "problem": problem,
            "ground_truth_answer": truth,
            "ground_truth_solution": "...",
            "pre_generated_answer": truth,
        },
        "label": {"steps": steps, "total_time": 1, "finish_reason": finish},
    }


def _step(*completions, chosen=None, human=None):
    return {
        "completions": [{"text": t, "rating": r, "flagged": None} for t, r in completions],
        "human_completion": human,
        "chosen_completion": chosen,
    }


def test_prm800k_rows(profile, tmp_path):
    folder = tmp_path / "prm800k"
    folder.mkdir()
    _lines(
        folder / "phase2_train.jsonl",
        [
            _prm(
                "What is $2+3$?",
                "5",
                [
                    _step(("We add the numbers.", 1), ("We multiply.", -1), chosen=0),
                    _step(("That is wrong.", -1), ("So $2+3=5$.", 1), ("Also 2+3 = 5.", 1), chosen=None),
                    _step(("# Answer\n\n5", 1), chosen=0),
                ],
            ),
            _prm("What is $2+2$?", "4", [_step(("2+2 is 5.\n\n# Answer\n\n5", 1), chosen=0)]),  # answer mismatch
            _prm("Hard problem", "7", [_step(("I give up.", 0), chosen=0)], finish="give_up"),
            _prm("No answer line", "1", [_step(("It is 1.", 1), chosen=0)]),
            _prm(
                "A human step",
                "6",
                [
                    _step(("Let us think.", 1), chosen=0),
                    _step(("Bad.", -1), human={"text": "It is 6.\n\n# Answer\n\n6", "rating": 1}),
                ],
            ),
            {"question": "not a dict", "label": {}},
            "{broken",
        ],
    )
    _lines(folder / "phase1_test.jsonl", [_prm("What is $1+1$?", "2", [_step(("# Answer\n\n2", 1), chosen=0)])])
    rows, skipped = load_source(SourceConfig(name="prm800k", path=str(folder)), profile)
    _schema_ok(rows)
    assert rows[0] == {
        "instruction": "What is $1+1$?",
        "input": "",
        "output": "The answer is 2.",  # phase1 file first
        "data_source": "MATH/PRM-800K",
    }
    # the chosen +1 completion, then the first +1 one of an unchosen step; "# Answer" becomes a sentence
    assert rows[1]["output"] == "We add the numbers.\nSo $2+3=5$.\nThe answer is 5."
    assert rows[2]["output"] == "Let us think.\nIt is 6.\nThe answer is 6."
    assert len(rows) == 3
    assert skipped == Counter(
        {
            "filtered:answer_mismatch": 1,
            "filtered:unfinished": 1,
            "filtered:no_final_answer": 1,
            "malformed:prm800k_record": 1,
            "malformed_json": 1,
        }
    )


# ---------------------------------------------------------------- ARB (arb.duckai.org API JSON)
def test_arb_rows(profile, tmp_path):
    folder = tmp_path / "arb"
    folder.mkdir()
    (folder / "math.json").write_text(
        json.dumps(
            [
                {
                    "_id": "1",
                    "Problem_Statement": "Evaluate $\\int_0^1 x\\,dx$.",
                    "Solution": "It is $1/2$.",
                    "Final_Answer": "1/2",
                },
                {"_id": "2", "Problem_Statement": "No solution"},
            ]
        )
    )
    (folder / "law.json").write_text(
        json.dumps(
            [
                {
                    "_id": "3",
                    "Problem Statement": "A contract was signed...",
                    "Answer Candidates": ["Valid", "Void", "Voidable", "Unenforceable"],
                    "Final Answer": "C",
                    "Solution": "...",
                }
            ]
        )
    )
    (folder / "mcatReading.json").write_text(
        json.dumps(
            [
                {
                    "_id": "4",
                    "Problem Statement": "The author implies that",
                    "Answer Candidates": ["x", "y", "z", "w"],
                    "Solution": "B. The passage says y in paragraph 2.",
                },
                {"_id": "5", "Problem Statement": "Q", "Answer Candidates": "not a list", "Solution": "A. x"},
            ]
        )
    )
    rows, skipped = load_source(SourceConfig(name="arb", path=str(folder)), profile)
    _schema_ok(rows)
    assert rows == [
        {
            "instruction": "A contract was signed...\nA. Valid\nB. Void\nC. Voidable\nD. Unenforceable",
            "input": "Choose A, B, C or D as your solution.",
            "output": "C",
            "data_source": "ARB",
        },
        {"instruction": "Evaluate $\\int_0^1 x\\,dx$.", "input": "", "output": "It is $1/2$.", "data_source": "ARB"},
        {
            "instruction": "The author implies that\nA. x\nB. y\nC. z\nD. w",
            "input": "Choose A, B, C or D as your solution.",
            "output": "The passage says y in paragraph 2.",
            "data_source": "ARB",
        },
    ]
    assert skipped == Counter({"malformed:arb_solution": 1, "malformed:arb_options": 1})
    (folder / "chemistry.json").write_text(json.dumps([{"Problem Statement": "Q", "Answer Candidates": ["a"]}]))
    with pytest.raises(UnknownSourceError, match="ARB subset 'chemistry'"):
        load_source(SourceConfig(name="arb", path=str(folder)), profile)


def test_undecodable_bytes_skip_one_row_naming_file_and_line(profile, tmp_path, caplog):
    from platypus_utils.sources import load_source

    lines = tmp_path / "math.jsonl"
    lines.write_bytes(
        b'{"problem": "1+1?", "solution": "2"}\n{"problem": "caf\xe9?", "solution": "3"}\n'
        b'{"problem": "2+2?", "solution": "4"}\n'
    )
    with caplog.at_level("WARNING", logger="platypus"):
        rows, skipped = load_source(SourceConfig(name="math", path=str(lines)), profile)
    assert [r["output"] for r in rows] == ["2", "4"] and skipped == Counter({"undecodable": 1})
    assert f"{lines}, line 2: undecodable" in caplog.text

    listed = tmp_path / "theoremqa.json"  # a JSON list: the item holding the bad byte is skipped
    listed.write_bytes(b'[{"Question": "Q1 caf\xe9", "Answer": 1}, {"Question": "Q2", "Answer": 2}]')
    rows, skipped = load_source(SourceConfig(name="theoremqa", path=str(listed)), profile)
    assert [r["output"] for r in rows] == ["2"] and skipped == Counter({"undecodable": 1})
    assert skipped.where == [(f"{listed}, item 1", "undecodable")]


def test_lone_surrogates_skip_one_row_naming_file_and_line(profile, tmp_path):
    from platypus_utils.sources import load_source

    lines = _lines(
        tmp_path / "math.jsonl", ['{"problem": "1+1?", "solution": "2 \\ud800"}', {"problem": "2+2?", "solution": "4"}]
    )
    rows, skipped = load_source(SourceConfig(name="math", path=str(lines)), profile)
    assert [r["output"] for r in rows] == ["4"] and skipped.where == [(f"{lines}, line 1", "lone_surrogate")]

    listed = tmp_path / "theoremqa.json"  # a JSON list: the item holding it is skipped
    listed.write_text('[{"Question": "Q1", "Answer": 1}, {"Question": "Q2 \\udfff", "Answer": 2}]')
    rows, skipped = load_source(SourceConfig(name="theoremqa", path=str(listed)), profile)
    assert [r["output"] for r in rows] == ["1"] and skipped.where == [(f"{listed}, item 2", "lone_surrogate")]


def test_over_long_rows_are_named_with_their_line(tmp_path, caplog):
    from platypus_utils.sources import load_source

    path = _lines(
        tmp_path / "train.jsonl",
        [{"instruction": "a", "input": "", "output": "x" * 5000}, {"instruction": "b", "input": "", "output": "y"}],
    )
    prof = Profile.model_validate(
        {
            "name": "t",
            "paths": {"runs_dir": str(tmp_path / "runs")},
            "curate": {"max_row_chars": 100, "over_long_rows": "truncate"},
        }
    )
    with caplog.at_level("WARNING", logger="platypus"):
        rows, skipped = load_source(SourceConfig(name="jsonl", path=str(path)), prof)
    assert [len(r["output"]) for r in rows] == [100, 1] and skipped == Counter()
    assert skipped.notes == Counter({"over_long:truncated": 1})
    assert f"{path}, line 1: over_long:truncated: output has 5,000 characters" in caplog.text
    assert all(type(r) is dict for r in rows)  # plain rows out: no location left on them
