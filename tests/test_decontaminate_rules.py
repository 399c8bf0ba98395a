"""The fallback of the category rules: a pair the embedding judge read, its answer in the output, no other rule."""

import pytest

from platypus_utils.config import DecontaminateConfig
from platypus_utils.decontaminate.rules import JUDGE_FLOOR, categorise

CFG = DecontaminateConfig()
TOPICAL = {
    "instruction": "Describe the rock cycle.",
    "input": "",
    "output": "Magma cools into igneous rock, weathering makes sediment that becomes sedimentary rock.",
    "data_source": "s",
}
ITEM = {
    "benchmark": "arc_challenge",
    "subject": "",
    "item_id": "t0",
    "question": "Which type of rock forms from cooled magma?",
    "choices": ["igneous rock", "limestone"],
    "answer": "igneous rock",
}


@pytest.mark.parametrize(
    ("cfg", "score", "expected", "rule_has"),
    [
        (CFG, JUDGE_FLOOR - 0.04, "similar_but_different", "another question: the judge read the pair"),
        (CFG, JUDGE_FLOOR + 0.04, "gray_area", "reworded, same numbers and answer"),
        # an LLM judge's score is log-odds, another scale: the floor is the embedding judge's only
        (DecontaminateConfig(judge_model="llm:embedded:smollm2-135m-instruct"), -3.0, "gray_area", "same numbers"),
    ],
)
def test_judge_floor(cfg, score, expected, rule_has):
    category, rule = categorise(TOPICAL, ITEM, 0.71, 0.0, cfg, judge=(False, score))
    assert category == expected
    assert rule_has in rule


def test_unread_pair_keeps_the_fallback():
    """Without the judge's reading (it ran on no candidate) the fallback stays: same numbers and the answer."""
    category, rule = categorise(TOPICAL, ITEM, 0.71, 0.0, CFG)
    assert (category, rule.split(":")[0]) == ("gray_area", "reworded, same numbers and answer")
