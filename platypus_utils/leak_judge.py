"""The rewording judge: does a training row ask a benchmark test question again, possibly reworded?

Stage 02 finds candidate (training row, test item) pairs by embedding cosine; verbatim rules catch the
copies, but a rewording whose answer is reworded too slips past string tests. `judge_pairs(pairs, model)`
reads the candidates for meaning and says "same question" (verdict True) or "different question" (False).

`pairs` has one row per candidate with columns train_text (the prompt: instruction + input), train_output,
test_question (HellaSwag: its context) and test_answer (the correct choice's text; HellaSwag: the gold
ending); optionally test_choices (read with the question), test_options (the item's answer options, default
test_choices) and test_view ("question_only": test_question is a passage item's question part, read alone).
Other columns are kept; added: question_cosine (max over word windows of the prompt, and of prompt + output:
a question restated in the output counts), answer_cosine (max over the output's sentences and sentence pairs;
1.0 when the output's stated answer has all the answer's numbers), answer_words, answer_contradicted,
answer_numbers_missing, numbers_differ (text_features and the checks it calls), question_only, score, verdict
and judge (the model that decided).
Judges, by the `model` reference:
  * a sentence-embedding model (default, embedded all-MiniLM-L6-v2; offline, CPU): score =
    question_cosine + ANSWER_WEIGHT * max(answer_cosine, answer_words), verdict = score >= threshold (or
    question_cosine >= SAME_QUESTION_COSINE), the numbers agree and the answer is neither contradicted nor
    missing a number. Threshold and weights chosen on splits "dev" and "real" of
    tests/fixtures/contamination_labelled.jsonl (the numbers-left-out rule and the question_only floor on dev3
    and dev4); the frozen splits, never tuned on, measure it (bench/bench_detectors.py reports every split).
  * "llm:<causal LM ref>" (e.g. llm:embedded:smollm2-135m-instruct offline, llm:Qwen/Qwen2.5-7B-Instruct on
    a hub profile): the model is asked the LLM-Decontaminator question (the test question with its answer and
    the training row in braces: the same question? True / False), in left-padded batches of LLM_BATCH prompts
    (transformers); score = log P(True) - log P(False) at the first reply token, verdict = score >= threshold
    (default 0), and a pair whose numbers differ is never "same" (nor asked). The embedded SmolLM2-135M tests
    the plumbing on a CPU only; a judge worth its figures is a 7B+ instruction model on a GPU.
A training row longer than the judge's window is cut into overlapping windows (embedding judge: about twice
the test question's words, 32 to `window_words`, half as stride; LLM judge: `window_tokens` tokens) and its
score is the max over windows: nothing past the model's limit is cut off unread.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .benchmarks import REGISTRY
from .text import FUNCTION_WORDS, final_answer, fraction_words, missing_numbers, numbers

REQUIRED = ("train_text", "train_output", "test_question", "test_answer")
DEFAULT_MODEL = "embedded:all-minilm-l6-v2"
LLM_PREFIX = "llm:"
# chosen on split "dev" of the labelled set (bench/bench_detectors.py --sweep)
ANSWER_WEIGHT = 0.8
EMBEDDING_THRESHOLD = 1.35
SAME_QUESTION_COSINE = 0.97
MIN_QUESTION_COSINE = 0.7  # below it no answer evidence makes a pair the same question
# the floor for a question_only pair whose output states every distinctive word of the answer (split dev3)
MIN_QUESTION_ONLY_COSINE = 0.65
WINDOW_WORDS = 120  # all-MiniLM-L6-v2 reads 256 word pieces: 120 words stay well inside it
WINDOW_TOKENS = 384
LLM_BATCH = 8  # prompts per forward pass of the LLM judge
# the LLM-Decontaminator question (lm-sys/llm-decontaminator's "knowledge" instruction, in our words)
LLM_INSTRUCTION = (
    "You will be shown two questions, each enclosed in curly braces {}. Decide whether they are the same "
    "question. Ignore names and small changes in wording or word order. If the two prompts are very similar and "
    "would have the same answer (not counting how it is worked out), they are the same question. "
    "Reply 'True' if they are the same, otherwise 'False', and nothing else."
)
LLM_USER = "part1: {{\n{question}\nAnswer: {answer}\n}}\npart2: {{\n{train}\n}}"
LLM_REPLIES = ("True", "False")

_WORD = re.compile(r"\S+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def token_windows(ids: Sequence, size: int, stride: int | None = None) -> list[list]:
    """Overlapping windows of `size` tokens (words, token ids; stride size // 2 by default) covering all of `ids`."""
    if size < 1:
        raise ValueError(f"window size must be >= 1, got {size}")
    stride, ids = stride or max(1, size // 2), list(ids)
    if len(ids) <= size:
        return [ids]
    starts = list(range(0, len(ids) - size + 1, stride))
    if starts[-1] + size < len(ids):  # the tail is always covered
        starts.append(len(ids) - size)
    return [ids[s : s + size] for s in starts]


def word_windows(text: str, size: int = WINDOW_WORDS, stride: int | None = None) -> list[str]:
    """Overlapping windows of `size` words covering all of `text` (the text itself when it is no longer)."""
    words = _WORD.findall(text)
    windows = token_windows(words, size, stride)  # raises for a size < 1, whatever the text
    return [text] if len(words) <= size else [" ".join(w) for w in windows]


def sentence_spans(text: str) -> list[str]:
    """The output's sentences, adjacent pairs of them, and (if short) the whole text: where an answer is stated."""
    sents = [s.strip() for s in _SENTENCE.split(text) if s.strip()]
    spans = sents + [f"{a} {b}" for a, b in zip(sents, sents[1:])]
    return spans + word_windows(text) if text.strip() else [""]


_LETTER_ANSWER = re.compile(
    r"^\W*(?:(?:the\s+)?(?:correct\s+)?answer\s*(?:is|:)\s*\(?([a-e])\)?(?![a-z])|\(([a-e])\)|([a-e])(?:[.:)]|$))", re.I
)
_OPTION = re.compile(r"(?:^|(?<=\s))\(?([A-Ea-e])[).:]\s+(.+?)(?=\s+\(?[A-Ea-e][).:]\s|\n|$)")


def labelled_options(prompt: str) -> dict[str, str]:
    """The options a prompt lists with letter labels ("(a) ... (b) ...", "A. ...", "B: ...") by lower-case letter."""
    return {m.group(1).lower(): m.group(2).strip() for m in _OPTION.finditer(prompt)}


def answer_statements(output: str, prompt: str = "") -> str:
    """Where an output states its answer: its first sentence and text.final_answer; an answer given as a letter
    ("(d).", "The answer is B") also as the option the prompt lists under that letter."""
    sentences = [x for x in _SENTENCE.split(output.strip()) if x.strip()]
    parts = [sentences[0] if sentences else "", final_answer(output)[0]]
    options = labelled_options(prompt) if prompt else {}
    for part in list(parts):
        m = _LETTER_ANSWER.match(part)
        letter = next((g.lower() for g in m.groups() if g), "") if m else ""
        if letter in options:
            parts.append(options[letter])
    return " ".join(dict.fromkeys(p for p in parts if p)).strip()


def answer_numbers_stated(answer: str, output: str) -> bool:
    """Whether the test answer has numbers, all of them in the output's stated answer (text.final_answer)."""
    need, (stated, boxed) = set(numbers(answer)), final_answer(output)
    got = set(numbers(stated, number_words=True))
    return bool(need) and (need == got if boxed else need <= got)  # a \\boxed{36/121} does not state 36


def numbers_differ(test_question: str, train_text: str) -> bool:
    """Whether a number of the test question is missing from the train text (values compared, not counts)."""
    return bool(missing_numbers(test_question, train_text, counted=False))


def numbers_substituted(test_question: str, prompt: str, choices: Sequence[str] = ()) -> bool:
    """Whether the training prompt (alone) swaps numbers: one of the test question's is missing and the prompt has
    numbers of its own (not in the question or its choices)."""
    need = set(numbers(test_question) + fraction_words(test_question))
    have = set(numbers(prompt, number_words=True))
    own = have - need - set(numbers(" ".join(choices)))
    return bool(need - have) and bool(own)


# a prompt up to this many times the question's words (at least OWN_NUMBERS_MIN_WORDS) is read as one question
OWN_NUMBERS_PROMPT_RATIO = 2.0
OWN_NUMBERS_MIN_WORDS = 40
_SMALL_NUMBER_WORDS = "two three four five six seven eight nine ten eleven twelve".split()
_LONE_NUMBER_WORD = re.compile(
    rf"(?<![\w-])({'|'.join(_SMALL_NUMBER_WORDS)})(?![\w-])(?!\s+(?:hundred|thousand|million|billion))", re.I
)
_LIST_LABEL = re.compile(r"(?m)^\s*\(?\d{1,2}[.)]\s")  # "1. ", "(2) ": a list's labels, not its content


def own_numbers(test_question: str, prompt: str, choices: Sequence[str] = (), answer: str = "") -> set[str]:
    """Numbers a short training prompt asks about that the test item has nowhere ("order five" against "order
    seven", "Z_24" against "Z_26"); only for a question with numbers other than 1; list labels and 1 left out."""
    limit = max(OWN_NUMBERS_MIN_WORDS, OWN_NUMBERS_PROMPT_RATIO * len(_WORD.findall(test_question)))
    # a question without numbers implies some ("a hexagon": "six-sided" is no other object)
    if len(_WORD.findall(prompt)) > limit or not set(numbers(test_question, number_words=True)) - {"1"}:
        return set()
    item = " ".join([test_question, *choices, answer])
    have = set(numbers(item, number_words=True)) | set(fraction_words(item))
    text = _LIST_LABEL.sub(" ", prompt)
    # digits, and number words standing alone ("order five"), not a compound's parts ("twenty-one thousand")
    asked = set(numbers(text)) | {
        str(_SMALL_NUMBER_WORDS.index(m.lower()) + 2) for m in _LONE_NUMBER_WORD.findall(text)
    }
    return asked - have - {"1"}


_UNINFORMATIVE = re.compile(
    r"^\W*(?:(?:true|false|yes|no|wrong|not wrong)(?:\W+(?:true|false|yes|no|wrong|not wrong))*"
    r"|(?:[ivx]+|[a-d])(?:\s*(?:,|and|&)\s*(?:[ivx]+|[a-d]))*(?:\s+only)?"
    r"|(?:all|none|both|neither)(?: of)?(?: the)?(?: above| options| these| choices| options given are correct)?"
    r"|all of the options given are correct|both of the options given are correct)\W*$",
    re.I,
)


def uninformative_answer(answer: str) -> bool:
    """Whether the answer says nothing of its question: "True, False", "II only", "All of the above", "Both"."""
    return bool(_UNINFORMATIVE.match(answer.strip()))


# the share of the answer's distinctive words a row that left the question's numbers out must state (dev3, dev4)
DROPPED_ANSWER_WORDS = 0.75


def context_numbers_dropped(question: str, prompt: str, output: str, answer: str, options: Sequence[str]) -> bool:
    """Whether a rewording left numbers of the test question out instead of changing them: some are missing from
    the row, the row names no number the item lacks, the answer holds no number and names its item, and the output
    states at least DROPPED_ANSWER_WORDS of its distinctive words (answer_support)."""
    row = f"{prompt} {output}"
    if not numbers_differ(question, row) or numbers(answer) or uninformative_answer(answer):
        return False
    item = " ".join([question, *options, answer])
    have = set(numbers(item, number_words=True)) | set(fraction_words(item))
    if set(numbers(row, number_words=True)) - have - {"1"}:
        return False
    words, _, distinctive = answer_support(answer, options, answer_statements(output, prompt))
    return distinctive and words >= DROPPED_ANSWER_WORDS


def answer_numbers_missing(answer: str, question: str, output: str) -> bool:
    """Whether the test answer states a number (not in the question) that the output never states."""
    need = set(numbers(answer)) - set(numbers(question))
    return bool(need - set(numbers(output, number_words=True)))


# content words, read by their first STEM_CHARS letters ("submit" ~ "submission", "intersexual" != "intrasexual")
STEM_CHARS = 5
_STOPWORDS = FUNCTION_WORDS | frozenset(
    """being which what who whom whose when where why how onto over under about after before between through during
    has have had could should shall may might must him i me my also only very more most less least such each any all
    both either neither one some other another same following best""".split()
)
_CONTENT = re.compile(r"[a-z0-9]+")


def _stem(word: str) -> str:
    """A word's first STEM_CHARS letters after a plural "s" ("debts" ~ "debt", "class" stays)."""
    return (word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word)[:STEM_CHARS]


def content_stems(text: str) -> set[str]:
    """The text's content words (no stopwords or bare numbers), each _stem'd."""
    return {_stem(w) for w in _CONTENT.findall(text.lower()) if w not in _STOPWORDS and not w.isdigit()}


def answer_support(answer: str, choices: Sequence[str], output: str) -> tuple[float, bool, bool]:
    """(answer_words, answer_contradicted, distinctive) of a training output against the test answer and choices:
    answer_words, the share of the answer's distinctive words (in no other choice; all its words when none is) in
    the output, 0 unless the words found point at the answer alone; contradicted when none of its distinctive
    words is there and at least half of another choice's own words are; (0, False, False) without choices."""
    others = [content_stems(c) for c in choices if c.strip().lower() != answer.strip().lower()]
    if not others:
        return 0.0, False, False
    out, gold = content_stems(output), content_stems(answer)
    found, distinct = gold & out, gold - set().union(*others)
    words = distinct or gold
    share = len(words & out) / len(words) if found and not any(found <= o for o in others) else 0.0
    rivals = max((len((o - gold) & out) / len(o - gold) for o in others if o - gold), default=0.0)
    return share, bool(distinct) and not (distinct & out) and rivals >= 0.5, bool(distinct)


def check_pairs(pairs: pd.DataFrame) -> None:
    """A clear error for a frame the judge cannot read: which column, which row."""
    if not isinstance(pairs, pd.DataFrame):
        raise TypeError(f"judge_pairs needs a pandas DataFrame, got {type(pairs).__name__}")
    missing = [c for c in REQUIRED if c not in pairs.columns]
    if missing:
        raise ValueError(f"judge_pairs: pairs lack column(s) {missing}; expected {list(REQUIRED)}")
    for col in REQUIRED:
        if bad := [i for i, v in pairs[col].items() if not isinstance(v, str)]:
            raise ValueError(f"judge_pairs: column {col!r}, row {bad[0]!r}: expected text, got {pairs[col][bad[0]]!r}")


def _choices(row, column: str = "test_choices") -> list[str]:
    got = row.get(column) if hasattr(row, "get") else None
    return [str(c) for c in got] if isinstance(got, (list, tuple, np.ndarray)) else []


def text_features(prompt: str, output: str, question: str, answer: str, options: Sequence[str]) -> dict:
    """The judge's string features of one pair (meaning_features adds the cosines)."""
    words, contradicted, distinctive = answer_support(answer, options, answer_statements(output, prompt))
    # the answer's numbers settle it unless its distinctive words are all missing ("July 2, 1776" for "August 2")
    numeric = answer_numbers_stated(answer, output) and not (distinctive and not words)
    vague = uninformative_answer(answer)  # its words and numbers say nothing: the question must agree alone
    dropped = context_numbers_dropped(question, prompt, output, answer, options)
    return {
        "answer_numbers_stated": numeric and not vague,
        "answer_words": 0.0 if vague else words,
        "answer_uninformative": vague,
        "answer_contradicted": contradicted,
        "answer_numbers_missing": answer_numbers_missing(answer, question, output),
        "numbers_dropped": dropped,
        "numbers_differ": (numbers_differ(question, f"{prompt} {output}".strip()) and not dropped)
        or numbers_substituted(question, prompt, options)
        or bool(own_numbers(question, prompt, options, answer)),
    }


def meaning_features(
    pairs: pd.DataFrame, encode: Callable[[list[str]], np.ndarray], window_words: int = WINDOW_WORDS
) -> pd.DataFrame:
    """question_cosine, answer_cosine and text_features per pair, from one batched `encode` call."""
    texts: list[str] = []
    plan = []
    for _, row in pairs.iterrows():
        prompt, output, question = row["train_text"], row["train_output"], row["test_question"]
        q_views = [question] + ([question + " " + " ".join(_choices(row))] if _choices(row) else [])
        # windows about twice the question's length: a question inside a long row is not drowned by the rest
        size = min(window_words, max(32, 2 * len(_WORD.findall(question))))
        full = f"{prompt} {output}".strip()
        train_q = word_windows(prompt, size) + (word_windows(full, size) if output.strip() else [])
        answer_spans = sentence_spans(output)
        plan.append((len(texts), len(q_views), len(train_q), len(answer_spans)))
        texts += q_views + train_q + [row["test_answer"]] + answer_spans
    vecs = encode(texts) if texts else np.zeros((0, 1), dtype=np.float32)
    out = []
    for (start, nq, nt, na), (_, row) in zip(plan, pairs.iterrows()):
        q, t, a, spans = np.split(vecs[start : start + nq + nt + 1 + na], np.cumsum([nq, nt, 1]))
        options = _choices(row, "test_options") or _choices(row)
        feats = text_features(row["train_text"], row["train_output"], row["test_question"], row["test_answer"], options)
        answer_cosine = 1.0 if feats["answer_numbers_stated"] else float((spans @ a[0]).max())
        answer_cosine = 0.0 if feats["answer_uninformative"] else answer_cosine
        cosines = {"question_cosine": float((q @ t.T).max()), "answer_cosine": answer_cosine}
        out.append(cosines | {"question_only": row.get("test_view") == "question_only"} | feats)
    return pd.DataFrame(out, index=pairs.index)


def embedding_verdicts(
    features: pd.DataFrame,
    threshold: float = EMBEDDING_THRESHOLD,
    answer_weight: float = ANSWER_WEIGHT,
    same_question_cosine: float = SAME_QUESTION_COSINE,
    min_question_cosine: float = MIN_QUESTION_COSINE,
) -> pd.DataFrame:
    """score and verdict of the embedding judge from meaning_features' columns (module docstring); never "same"
    below min_question_cosine, or MIN_QUESTION_ONLY_COSINE for a question_only pair stating all the answer's
    distinctive words."""
    answer = features["answer_cosine"]
    if "answer_words" in features:
        answer = np.maximum(answer, features["answer_words"].astype(float))
    score = features["question_cosine"] + answer_weight * answer
    agree = ~features["numbers_differ"].astype(bool)
    for col in ("answer_contradicted", "answer_numbers_missing"):
        if col in features:
            agree &= ~features[col].astype(bool)
    floor = pd.Series(min_question_cosine, index=features.index)
    if "question_only" in features and "answer_words" in features:
        named = features["question_only"].astype(bool) & (features["answer_words"].astype(float) >= 1.0)
        floor = floor.where(~named, min(min_question_cosine, MIN_QUESTION_ONLY_COSINE))
    verdict = (
        agree
        & ((score >= threshold) | (features["question_cosine"] >= same_question_cosine))
        & (features["question_cosine"] >= floor)
    )
    return pd.DataFrame({"score": score, "verdict": verdict}, index=features.index)


class LlmJudge:
    """The LLM-Decontaminator question to a causal LM, scored over the training text's windows."""

    def __init__(
        self,
        model_ref: str,
        cache_dir: str | Path | None = None,
        window_tokens: int = WINDOW_TOKENS,
        device: str = "auto",
        batch_size: int = LLM_BATCH,
    ):
        from .models import load_causal_lm, load_tokenizer  # torch/transformers load only when an LLM judges

        self.model_ref, self.window_tokens, self.batch_size = model_ref, window_tokens, max(1, batch_size)
        cache = Path(cache_dir) if cache_dir else None
        self.tokenizer = load_tokenizer(model_ref, cache)
        self.tokenizer.padding_side = "left"  # the last position is every prompt's next token
        self.model = load_causal_lm(model_ref, cache, dtype="auto", device=device).eval()
        yes, no = ({self.tokenizer.encode(w, add_special_tokens=False)[0] for w in (r, " " + r)} for r in LLM_REPLIES)
        self.yes, self.no = sorted(yes), sorted(no)

    def windows(self, train: str) -> list[str]:
        ids = self.tokenizer.encode(train, add_special_tokens=False)
        return [self.tokenizer.decode(w) for w in token_windows(ids, self.window_tokens)]

    def prompt(self, train: str, question: str, answer: str) -> str:
        msg = LLM_USER.format(question=question, answer=answer, train=train)
        chat = [{"role": "system", "content": LLM_INSTRUCTION}, {"role": "user", "content": msg}]
        return self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)

    def score_prompts(self, prompts: list[str]) -> list[float]:
        """log P(True) - log P(False) after each prompt, `batch_size` prompts per forward pass."""
        import torch

        out: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = self.tokenizer(
                prompts[start : start + self.batch_size], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.model.device)
            with torch.no_grad():
                logits = self.model(**batch).logits[:, -1].float()
            diff = torch.logsumexp(logits[:, self.yes], 1) - torch.logsumexp(logits[:, self.no], 1)
            out += diff.tolist()
        return out

    def score_many(self, triples: Sequence[tuple[str, str, str]]) -> list[float]:
        """Each (train, question, answer)'s score: the max over the training text's windows."""
        owner, prompts = [], []
        for k, (train, question, answer) in enumerate(triples):
            for window in self.windows(train):
                owner.append(k)
                prompts.append(self.prompt(window, question, answer))
        return pd.Series(self.score_prompts(prompts), dtype=float).groupby(owner).max().tolist()


def judge_pairs(
    pairs: pd.DataFrame,
    model: str = DEFAULT_MODEL,
    threshold: float | None = None,
    cache_dir: str | Path | None = None,
    embedder=None,
    llm: LlmJudge | None = None,
) -> pd.DataFrame:
    """A copy of `pairs` with the judge's features, score, verdict (True: same question) and judge."""
    check_pairs(pairs)
    out = pairs.copy()
    if not len(out):
        empty = dict.fromkeys(("question_cosine", "answer_cosine", "score"), float) | {"numbers_differ": bool}
        return out.assign(**{c: pd.Series(dtype=t) for c, t in (empty | {"verdict": bool, "judge": str}).items()})
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"judge model must be a model reference, got {model!r}")
    if model.startswith(LLM_PREFIX):
        return _judge_llm(out, model[len(LLM_PREFIX) :], threshold, cache_dir, llm)
    if embedder is None:
        from .embeddings import Embedder
        from .models import default_cache_dir

        embedder = Embedder(model, cache_dir or default_cache_dir())
    feats = meaning_features(out, lambda texts: embedder.encode(texts, desc="judge"))
    verdicts = embedding_verdicts(feats, EMBEDDING_THRESHOLD if threshold is None else threshold)
    return out.assign(**feats, **verdicts, judge=model)


def _judge_llm(out: pd.DataFrame, ref: str, threshold: float | None, cache_dir, llm: LlmJudge | None) -> pd.DataFrame:
    llm = llm or LlmJudge(ref, cache_dir)
    texts = zip(out["test_question"], out["train_text"], out["train_output"])
    differ = np.array([numbers_differ(q, f"{t} {o}") for q, t, o in texts], dtype=bool)
    asked = out[~differ]  # a pair whose numbers differ is never "same": not asked
    trains = asked["train_text"] + "\nAnswer: " + asked["train_output"]
    scores = np.full(len(out), -np.inf)
    scores[~differ] = llm.score_many(list(zip(trains, asked["test_question"], asked["test_answer"])))
    cut = 0.0 if threshold is None else threshold
    return out.assign(numbers_differ=differ, score=scores, verdict=scores >= cut, judge=LLM_PREFIX + ref)


def pairs_frame(records: list[dict]) -> pd.DataFrame:
    """The judge's input from labelled-set records ({"train": {instruction, input, output}, "question", "answer",
    "choices"?}); ValueError naming a record that lacks a field."""
    rows = []
    for k, r in enumerate(records):
        try:
            t, bench, choices = r["train"], r.get("benchmark"), list(r.get("choices") or [])
            reads_choices = bench not in REGISTRY or REGISTRY[bench].full_view == "choices"  # as stage 02 does
            prompt = (t["instruction"] + " " + t.get("input", "")).strip()
            shown = list(choices) if reads_choices else []
            rows.append((prompt, t["output"], r["question"], r["answer"], shown, choices))
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"labelled record {k} ({r.get('id', '?') if isinstance(r, dict) else r!r}): missing field {exc}"
            ) from None
    return pd.DataFrame(rows, columns=[*REQUIRED, "test_choices", "test_options"])
