"""Stage 02: the question view of passage items, and the similar-but-different rules for another object."""

from __future__ import annotations

import numpy as np
import pandas as pd

from platypus_utils.config import DecontaminateConfig
from platypus_utils.decontaminate import detectors
from platypus_utils.decontaminate.stage import detect
from platypus_utils.decontaminate.views import asked_text, item_views, question_only
from platypus_utils.embeddings import normalise

PASSAGE = (
    "This question refers to the following information.\n"
    '"We conclude that, in the field of public education, the doctrine of separate but equal has no place. '
    "Separate educational facilities are inherently unequal. Therefore, we hold that the plaintiffs are deprived "
    'of the equal protection of the laws guaranteed by the Fourteenth Amendment."\n'
    "Brown v. Board of Education, 1954\n"
    "Desegregation of schools was, in part, a response to unfulfilled promises from which of the following initiatives?"
)
ASKED = (
    "Desegregation of schools was, in part, a response to unfulfilled promises from which of the following initiatives?"
)


def row(instr, out, src="s"):
    return {"instruction": instr, "input": "", "output": out, "data_source": src}


def passage_item():
    choices = ["The Great Society", "The Square Deal", "The New Deal", "Reconstruction"]
    return {"benchmark": "mmlu", "subject": "us", "item_id": "t0", "question": PASSAGE, "choices": choices}


class TableEmbedder:
    """Known texts to fixed vectors; any other text to the zero vector (it never adds a cosine)."""

    def __init__(self, table):
        self.table, self.dim = table, len(next(iter(table.values())))

    def encode(self, texts, desc=""):
        return normalise(np.array([self.table.get(t, [0.0] * self.dim) for t in texts], dtype=np.float32))


def test_question_only_is_the_question_of_a_long_stem():
    assert question_only(PASSAGE) == ASKED
    assert question_only("What is 2 + 2?") == ""  # short: nothing to drop
    arc = (
        "Farmers in Wyoming were concerned because some of their chickens were being preyed upon by hawks that "
        "lived in areas around their ranches. The farmers grouped together and hunted the hawks until they were "
        "no longer in their area. Which would most likely happen next?"
    )
    # a short last sentence asks nothing alone: the sentence before it comes with it
    assert question_only(arc).startswith("The farmers grouped together") and question_only(arc).endswith("next?")
    statements = "Statement 1 | " + "word " * 30 + "\nStatement 2 | " + "other " * 10
    assert question_only(statements) == ""  # a list's entry is not a question
    it = passage_item()
    views = item_views([{**it, "answer": "Reconstruction"}], DecontaminateConfig())
    only = views[views["view"] == "question_only"]
    assert only["text"].tolist() == [ASKED] and not only["identifying"].any()
    no_view = item_views([{**it, "answer": "x"}], DecontaminateConfig(views=["question", "full"]))
    assert "question_only" not in set(no_view["view"])
    assert asked_text(it, "question_only") == ASKED and asked_text(it, "full") == PASSAGE


def test_a_question_without_its_passage_is_judged_against_the_question_alone(monkeypatch):
    """A row holding the question reworded, its passage (and the passage's year) dropped: found through the
    question_only view, judged against the question alone, and removed when the judge says same; a row as close
    to the question whose judge says different is not flagged by the cosine alone."""
    seen = []

    def judge(frame, model, embedder=None, cache_dir=None):  # a stand-in for leak_judge.judge_pairs
        seen.append(frame.copy())
        return frame.assign(score=[1.5, 0.2], verdict=[True, False])

    monkeypatch.setattr(detectors.leak_judge, "judge_pairs", judge)
    it = {**passage_item(), "answer": "Reconstruction"}
    rows = [
        row("School desegregation partly answered the broken promises of which initiative?", "Reconstruction."),
        row("School desegregation partly answered the broken promises of which program?", "The New Deal."),
    ]
    table = {
        ASKED: [1, 0, 0, 0],
        rows[0]["instruction"]: [0.9, 0.436, 0, 0],
        rows[1]["instruction"]: [0.9, 0, 0.436, 0],
    }
    result = detect(rows, [it], DecontaminateConfig(candidates="exhaustive"), TableEmbedder(table))
    (frame,) = seen
    assert frame["test_question"].tolist() == [ASKED, ASKED]  # the question alone: 1954 is not asked for
    pairs = result.pairs.set_index("train_index")
    assert list(pairs.index) == [0]  # row 1: cosine 0.9 to the question alone, but only the judge may flag it
    assert pairs.at[0, "category"] == "gray_area" and pairs.at[0, "test_view"] == "question_only"
    assert not pairs.at[0, "by_embedding"] and pairs.at[0, "by_judge"]
    assert [r["instruction"] for r in result.clean] == [rows[1]["instruction"]]
    assert isinstance(result.pairs, pd.DataFrame)


# ---------------------------------------------------------------- similar but different: another object
def test_own_numbers_find_the_same_question_about_another_object():
    from platypus_utils.leak_judge import own_numbers

    seven = "If the finite group G contains a subgroup of order seven but no element is its own inverse, |G| could be"
    assert own_numbers(seven, seven.replace("seven", "five")) == {"5"}
    assert own_numbers("Compute the product (20)(-8) in Z_26.", "Compute the product (20)(-8) in Z_24.") == {"24"}
    assert own_numbers(seven, seven) == set()
    # a hexagon implies six sides; spelled compounds are their own value, not their parts; list labels are no
    # numbers of the question; a prompt much longer than the question holds other matter
    assert (
        own_numbers("What is the sum of the interior angles of a hexagon?", "Sum the angles of a six-sided polygon.")
        == set()
    )
    gdp = "If real GDP per capita was $20000 in 1980 and $21000 in 1990, how much did it grow?"
    assert (
        own_numbers(gdp, "GDP per head was twenty thousand in 1980 and twenty-one thousand in 1990: growth?") == set()
    )
    assert own_numbers(seven, "1. What is 2+2?\n2. " + seven) == {"2"}  # the 2 of 2+2, not the labels
    assert own_numbers(seven, "Passage. " + "word " * 60 + seven.replace("seven", "five")) == set()


def test_uninformative_answers_do_not_count_as_agreement():
    from platypus_utils.decontaminate.rules import categorise
    from platypus_utils.leak_judge import uninformative_answer

    assert all(map(uninformative_answer, ["True, False", "False, False", "II only", "I and III", "All of the above"]))
    assert not any(map(uninformative_answer, ["Reconstruction", "35", "True statements are rare", "Both parents"]))
    it = {
        "benchmark": "mmlu",
        "question": "Statement 1 | Every permutation is a cycle. Statement 2 | Every cycle is a permutation.",
        "choices": ["True, True", "False, False", "True, False", "False, True"],
        "answer": "False, True",
    }
    other = row(
        "Statement 1 | Every symmetric group is cyclic. Statement 2 | Every group is isomorphic to a permutation group.",
        "The answer is: False, True",
    )
    category, rule = categorise(other, it, 0.61, 0.0, DecontaminateConfig())
    assert category == "similar_but_different" and "says nothing" in rule, rule


def test_a_row_sharing_only_the_passage_is_similar_but_different():
    """MMLU asks several questions of one passage: a row with the passage and another question (and answer) is
    not this item, whatever its n-gram overlap; with this item's question in it, it is."""
    from platypus_utils.decontaminate.rules import categorise

    it = {**passage_item(), "answer": "Reconstruction"}
    passage = PASSAGE.rsplit("\n", 1)[0]
    other = row(passage + "\nThe decision above overturned which earlier ruling?", "The answer is: Plessy v. Ferguson")
    category, rule = categorise(other, it, 0.97, 0.95, DecontaminateConfig())
    assert category == "similar_but_different" and rule.startswith("passage shared"), rule
    same = row(PASSAGE, "The answer is: Reconstruction")
    assert categorise(same, it, 0.99, 1.0, DecontaminateConfig())[0] == "duplicate"
    judged = categorise(other, it, 0.97, 0.95, DecontaminateConfig(), judge=(True, 1.5))
    assert judged[0] == "duplicate"  # the judge read the same question: the passage rule does not apply


def test_a_rewording_that_leaves_the_years_out_is_judged_and_not_another_object():
    """Rule 3 (numbers differ) gives way to the judge's "same" when the row left the question's numbers out,
    named none of its own and states the answer; a row with other years stays similar but different."""
    from platypus_utils.decontaminate.detectors import judge_reads
    from platypus_utils.decontaminate.rules import categorise

    it = {
        "benchmark": "mmlu",
        "question": "Which development helped Western Europe reach global hegemony between 1450 and 1750 C.E.?",
        "choices": ["The conquest of the Aztec Empire", "The Black Death", "The Crusades", "The printing of Bibles"],
        "answer": "The conquest of the Aztec Empire",
    }
    left_out = row(
        "Which development helped Western Europe reach global dominance?", "The conquest of the Aztec Empire."
    )
    other_years = row("Which development helped Western Europe reach dominance after 1800?", "The Aztec conquest.")
    assert judge_reads(left_out, it, "") and not judge_reads(other_years, it, "")
    cfg = DecontaminateConfig()
    assert categorise(left_out, it, 0.85, 0.0, cfg, judge=(True, 1.6))[0] == "gray_area"
    assert categorise(left_out, it, 0.85, 0.0, cfg)[0] == "similar_but_different"  # without the judge: rule 3
    assert categorise(other_years, it, 0.85, 0.0, cfg, judge=(True, 1.6))[0] == "similar_but_different"
