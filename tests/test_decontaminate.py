import numpy as np
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
