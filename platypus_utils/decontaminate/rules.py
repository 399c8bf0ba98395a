"""The paper's categories, by explicit rules in order (see the package docstring), and the removals."""

from __future__ import annotations

import difflib
import re

import numpy as np
import pandas as pd

from .. import leak_judge
from ..config import DETECTORS, DecontaminateConfig
from ..leak_judge import own_numbers, uninformative_answer
from ..text import embedding_text, latex_plain, missing_numbers
from .common import PAIR_COLUMNS
from .decisions import pair_id
from .textmatch import answer_in_output, contains_phrase, word_share, words
from .views import asked_text, full_view_kind, item_text, question_only, stem_identifies, view_extra


def _whole(train_row: dict) -> str:
    return embedding_text(train_row) + "\n" + train_row["output"]


def _answer_given(train_row: dict, item: dict) -> bool:
    return answer_in_output(item.get("answer") or "", train_row["output"])


def _ending_given(train_row: dict, item: dict) -> bool:
    """False only for a HellaSwag item whose gold ending the training row does not give: a copied context
    with another continuation is the same start, not the test item (it is scored on its ending)."""
    if full_view_kind(item) != "gold_ending":
        return True
    return _answer_given(train_row, item) or contains_phrase(_whole(train_row), item.get("answer") or "")


def numbers_dropped(train_row: dict, item: dict, view: str) -> bool:
    """leak_judge.context_numbers_dropped for a pair: the row left the question's numbers out (named no others)
    and its output states the answer; with the judge's "same", rule 3 (numbers differ) then does not apply."""
    answer, options = item.get("answer") or "", list(item.get("choices") or [])
    prompt = embedding_text(train_row)
    return leak_judge.context_numbers_dropped(asked_text(item, view), prompt, train_row["output"], answer, options)


# the embedding judge's score (question cosine + ANSWER_WEIGHT x the answer's evidence) under which a pair it read,
# its answer in the output, asks another question (~0.35 question cosine): "Describe the rock cycle." against "Which
# type of rock forms from cooled magma?" -> igneous rock; the fallback of "same numbers and answer" does not remove it
# (split dev and heldout: rewordings it removed scored 1.19 and up, topical and other-answer rows 1.11-1.13)
JUDGE_FLOOR = 1.15


# a training prompt that lists at least this many lettered options is a multiple-choice question of its own; when
# fewer than OPTIONS_SHARED of the test item's choices are among them, it is another item (MMLU asks "Which of the
# following is a correct statement?" of many option sets; its val questions share stems and answers with test items)
MIN_LISTED_OPTIONS = 3
OPTIONS_SHARED = 0.5


_NOT_ALNUM = re.compile(r"[^a-z0-9]+")


def _same_option(choice: str, option: str) -> bool:
    """Whether a listed option is the test's choice, possibly reworded: half of the shorter one's content words
    (leak_judge.content_stems) in the other ("charging a premium" ~ "Premium pricing."), or the same characters
    once markup and spaces are gone ("$C_2H_6 + 3O_2$" ~ "C_{2}H_{6} + 3O_{2}")."""
    a, b = leak_judge.content_stems(choice), leak_judge.content_stems(option)
    if a and b and len(a & b) >= 0.5 * min(len(a), len(b)):
        return True
    x, y = (_NOT_ALNUM.sub("", latex_plain(t).lower()) for t in (choice, option))
    return bool(x) and bool(y) and difflib.SequenceMatcher(None, x, y, autojunk=False).ratio() >= 0.8


def listed_options(train_row: dict) -> list[str]:
    """The options a training prompt lists ("A. ...", "(b) ..."), when it lists MIN_LISTED_OPTIONS or more labelled
    a, b, c...: the row is a multiple-choice question of its own. Else []."""
    labelled = leak_judge.labelled_options(embedding_text(train_row))
    # a list, not "vitamin A. It"
    return list(labelled.values()) if len(labelled) >= MIN_LISTED_OPTIONS and {"a", "b", "c"} <= set(labelled) else []


def other_options(listed: list[str], item: dict) -> bool:
    """Whether the options a training prompt lists (listed_options) hold fewer than OPTIONS_SHARED of the test
    item's choices (same words, or nearly: a relabelled or lightly reworded choice still counts): the row asks
    another multiple-choice item."""
    choices = [c for c in item.get("choices") or [] if words(c)]
    if not listed or len(choices) < 2:
        return False
    shared = sum(any(_same_option(c, o) for o in listed) for c in choices)
    return shared < OPTIONS_SHARED * len(choices)


def _plain_choice(text: str) -> str:
    """A choice or a short output as compared by rule 2b: LaTeX as plain, case and spacing ignored, no final period
    ("$x^2$." ~ "x^2"); signs and every other character kept ("-1" is not "1")."""
    return " ".join(latex_plain(text).lower().split()).rstrip(".").strip()


def other_choice_given(train_row: dict, item: dict) -> str | None:
    """Rule 2b: the test choice, other than its answer, that the training output is (the whole output, compared
    by _plain_choice), when the output does not give the test answer: the row answers another question of the
    same shape ("Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field." -> 1, against the test's x^3 + x^2 + c,
    answer 2). None otherwise (an item without choices, a long output, the test answer given)."""
    answer, output = item.get("answer") or "", _plain_choice(train_row["output"])
    if not output or _answer_given(train_row, item):
        return None
    return next((c for c in item.get("choices") or [] if c != answer and _plain_choice(c) == output), None)


def _passage_only(train_row: dict, item: dict, judge_says_same: bool) -> str | None:
    """Why the pair shares only a passage (MMLU's history items ask several questions of one source): the item's
    question part is not in the training text, its answer is not in the output and the judge (when it read the
    pair) does not read the same question: the row asks another question of the same passage (an MMLU val item)."""
    asked = question_only(item["question"])
    if not asked or judge_says_same or contains_phrase(_whole(train_row), asked) or _answer_given(train_row, item):
        return None
    return "passage shared, not its question: the test's question is not in the train text nor its answer in the output"


def _verbatim_rule(train_row: dict, item: dict, cfg: DecontaminateConfig) -> str | None:
    """Rules 1-2 (see the package docstring): why the pair is a verbatim copy, or None."""
    whole = _whole(train_row)
    stem_in = contains_phrase(whole, item["question"])
    if stem_in and stem_identifies(item, cfg) and _ending_given(train_row, item):
        return "verbatim: the whole test question is in the train text"
    if stem_in and _answer_given(train_row, item):
        return "verbatim: the whole test question (a short one) is in the train text and its answer in the output"
    extra = view_extra(item)
    if stem_in and extra and all(contains_phrase(whole, x) for x in extra):
        what = {"choices": "all its choices", "gold_ending": "its gold ending", "answer": "its answer"}
        return f"verbatim: the question and {what[full_view_kind(item)]} are in the train text"
    return None


def categorise(
    train_row: dict,
    item: dict,
    cosine: float,
    ngram: float,
    cfg: DecontaminateConfig,
    identifying_cosine: float | None = None,
    part: str = "prompt",
    judge: tuple[bool | None, float] = (None, np.nan),
    view: str = "",
) -> tuple[str, str]:
    """(category, rule) for one flagged pair; see the package docstring for the rule order.

    cosine: the pair's best cosine; identifying_cosine: the best over views that identify the item (None:
    the same); part: where the evidence was ("output": the numbers rule reads prompt and output);
    judge: the judge's (verdict, score) when it read the pair; view: the test view the evidence was in
    ("question_only": the row holds the question without its passage, whose numbers are then not asked for)."""
    listed = listed_options(train_row)
    verbatim = _verbatim_rule(train_row, item, cfg)
    # rule 0 is for MMLU's generic stems; a question of at least one n-gram (ngram_n words) copied whole is the item
    # whatever options the row lists with it
    distinctive = verbatim and len(words(item["question"])) >= cfg.ngram_n
    if other_options(listed, item) and not distinctive:
        return "similar_but_different", f"other options: the train row lists {len(listed)} options, not the test's"
    if verbatim:
        return "duplicate", verbatim
    if (other := other_choice_given(train_row, item)) is not None:
        return (
            "similar_but_different",
            f"another answer: the train output is the test's choice {other!r}, not its answer",
        )
    prompt = embedding_text(train_row)
    missing = missing_numbers(asked_text(item, view), prompt + ("\n" + train_row["output"] if part == "output" else ""))
    if missing and not (judge[0] is True and numbers_dropped(train_row, item, view)):
        return "similar_but_different", f"numbers differ: test has {missing} not in train text"
    if shared := _passage_only(train_row, item, judge[0] is True):
        return "similar_but_different", shared
    ending = _ending_given(train_row, item)
    # the question part of a passage item alone ("Which of the following is the most likely diagnosis?") never
    # identifies its item: copied, it counts only with the test's answer in the output
    asked_only = view == "question_only" and not _answer_given(train_row, item)
    if ngram >= cfg.verbatim_ngram_overlap and ending and not asked_only:
        return "duplicate", f"near-verbatim: {cfg.ngram_n}-gram overlap {ngram:.2f}"
    if own := own_numbers(asked_text(item, view), prompt, list(item.get("choices") or []), item.get("answer") or ""):
        return "similar_but_different", f"another object: train asks about {sorted(own)}, not in the test item"
    cos = cosine if identifying_cosine is None else identifying_cosine
    if cos == cos and cos >= cfg.duplicate_threshold:  # cos == cos: not NaN
        whole = _whole(train_row)
        share = max(
            word_share(item["question"], whole) if stem_identifies(item, cfg) and ending else 0.0,
            word_share(item_text(item), whole),
        )
        if share >= cfg.verbatim_word_share:
            return "duplicate", f"near-verbatim: cosine {cos:.3f}, {share:.0%} of the test's words in train text"
        return "gray_area", f"same meaning in other words: cosine {cos:.3f}, {share:.0%} of the test's words"
    if judge[0] is True:
        return "gray_area", f"the judge reads the same question, reworded: score {judge[1]:.3f}"
    if not _answer_given(train_row, item):
        return "similar_but_different", f"answer differs: test answer {item.get('answer')!r} not in train output"
    if uninformative_answer(item.get("answer") or ""):
        return "similar_but_different", f"the answer {item.get('answer')!r} says nothing of the question, which differs"
    # a multiple-choice row of its own that the judge read (its options with it) and called another question: its
    # output names one of its options, and rule 0 let it through because it shares half of the test's, so the test
    # answer in it says little (same-subject MMLU questions share options: "Valid", "Consistent", "II and IV only")
    read = judge[0] is not None and not pd.isna(judge[0])
    embedding_judge = not (cfg.judge_model or "").startswith(leak_judge.LLM_PREFIX)
    if read and not judge[0] and embedding_judge and judge[1] < JUDGE_FLOOR:
        return "similar_but_different", f"another question: the judge read the pair, score {judge[1]:.3f}"
    if listed and read and not judge[0]:
        return (
            "similar_but_different",
            f"another multiple-choice item: the judge reads another question, score {judge[1]:.3f}",
        )
    return "gray_area", f"reworded, same numbers and answer: cosine {cosine:.3f}"


def categorise_flagged(f, row: dict, item: dict, cfg: DecontaminateConfig) -> tuple[str, str, str, str]:
    """(category, rule, part, view) of a flag_pairs row: the evidence is the n-gram detector's when it flagged the
    pair, else the embedding's."""
    by_gram = f.by_ngram and f.ngram_part
    part, view = (f.ngram_part, f.ngram_view) if by_gram else (f.embed_part or "prompt", f.test_view)
    judge = (f.judge_verdict, f.judge_score)
    cosine, identifying = f.embedding_cosine, f.identifying_cosine
    return (*categorise(row, item, cosine, f.ngram_overlap, cfg, identifying, part, judge, view), part, view)


def categorise_pairs(
    flagged: pd.DataFrame, rows: list[dict], items: list[dict], cfg: DecontaminateConfig
) -> pd.DataFrame:
    """Step: the report's pairs (PAIR_COLUMNS): both texts, the scores, category, rule and action."""
    records = []
    for f in flagged.itertuples(index=False):
        row, item = rows[f.train_index], items[f.item_index]
        category, rule, part, view = categorise_flagged(f, row, item, cfg)
        records.append(
            {
                "pair_id": pair_id(row, item),
                "train_index": f.train_index,
                "train_source": row["data_source"],
                "train_text": embedding_text(row),
                "train_output": row["output"],
                "benchmark": item["benchmark"],
                "subject": item.get("subject", ""),
                "test_id": item.get("item_id", ""),
                "lm_eval_task": item.get("lm_eval_task", ""),
                "doc_id": item.get("doc_id", -1),
                "test_text": item_text(item),
                "test_answer": item.get("answer", ""),
                "test_view": view,
                "train_part": part,
                "embedding_cosine": round(f.embedding_cosine, 6),
                "ngram_overlap": round(f.ngram_overlap, 6),
                # 4 decimals: the judge's texts are encoded in batches whose make-up varies between runs
                # (float32 differs in the 7th digit), and a rerun should write the same file
                "judge_score": float("nan") if pd.isna(f.judge_score) else round(float(f.judge_score), 4),
                "answer_match": f.answer_match,
                "judge_verdict": f.judge_verdict,
                **{f"by_{d}": getattr(f, f"by_{d}") for d in DETECTORS},
                "category": category,
                "rule": rule,
                "action": cfg.actions[category],
                "decision": "",
            }
        )
    return pd.DataFrame(records, columns=PAIR_COLUMNS)


def choose_removals(pairs: pd.DataFrame, rows: list[dict]) -> tuple[list[dict], set[int]]:
    """Step: (clean rows, removed row indices): a row goes when any of its pairs' action is "remove"."""
    removed = set(pairs.loc[pairs["action"] == "remove", "train_index"].tolist()) if len(pairs) else set()
    return [r for k, r in enumerate(rows) if k not in removed], removed
