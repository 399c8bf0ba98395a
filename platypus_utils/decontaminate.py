"""Stage 02_decontaminate: find training rows that leak benchmark test questions.

Contract. Input: training rows in the Open-Platypus schema (instruction, input, output, data_source;
`input` may be absent) and the benchmark test items (benchmarks.py). Output: `clean.jsonl` (the rows
kept), `flagged_pairs.csv` (one line per flagged (train row, test item) pair: both texts, each
detector's score and verdict, the paper's category, the rule that decided and the action, and the
test item as lm-eval's sample logs name it: `lm_eval_task`, `doc_id`), `contamination_table.csv`
(source x benchmark, the paper's Table 1 form), `decontamination_report.json` and the figure.

Steps, each a public function returning data (notebook 02 runs them one by one; `detect` composes
steps 2-5, `run_decontaminate` all of them; `check_file` is the standalone command):
  1. load_inputs (read_training_rows, load_benchmark_items)
  2. embed_texts: test views and training windows, embedded when a detector reads cosines
  3. candidate_pairs: per detector; flag_pairs: each detector's verdict (and the judge's score)
  4. categorise_pairs: the paper's category and the rule that decided, beside both texts
  5. choose_removals, contamination_table, summarise (what-ifs: removals_under another policy)
  6. save: artifacts, figure, tables, manifest. `force` (the runner's --force) lets it overwrite
     outputs edited by hand since the last run (a reviewed flagged_pairs.csv); without it, it refuses.

How a pair is read.
  * Test item views: "question" (the stem; HellaSwag's context) and "full" (the question with its
    choices for MMLU and ARC, with its gold ending for HellaSwag, with its answer for TruthfulQA). A
    pair scores its best view. An MMLU/ARC stem under `ngram_min_tokens` words ("Which of the
    following is true?") does not identify its item: it finds candidates, but the category rules
    read only the full view's cosine for it, and its stem counts as verbatim only with its answer.
  * Training side: instruction + input ("prompt") and, with `search_outputs`, the output. A text
    longer than the embedding model reads (all-MiniLM-L6-v2: 256 word pieces) is embedded in
    overlapping windows (`window_overlap`); its cosine is the max over windows.
Detectors (`detectors`), each reported on its own and combined:
  embedding  cosine >= similarity_threshold (the paper's), flagging *every* training row above it,
             not only the most similar one (the authors' code kept near-copies of the row it removed);
  ngram      share of the test view's 13-grams found in the training text >= ngram_overlap_threshold
             (GPT-3 / lm-eval), which catches long verbatim passages; LaTeX read as plain and choice
             labels left out on both sides, so "A: coal" matches "coal";
  answer     cosine >= answer_detector_threshold, every number of the test question in the training
             prompt and the test answer in the training output (rewordings below 0.8);
  judge      (on by default) platypus_utils.leak_judge reads candidates at cosine >= judge_threshold whose
             numbers agree and says whether they are the same question, possibly reworded (rewordings whose
             answer is reworded too, which the string tests keep). Measured with score_pairs on the 339
             pairs of tests/fixtures/contamination_labelled.jsonl (bench/bench_detectors.py): without the
             judge the stage removes 75.0% of the leaks (rewordings 66/113) with 3.3% false alarms; with it
             94.1% (verbatim 45/45, reformatted 30/30, rewordings 102/113), similar-but-different 4/91 and
             clean 1/60 removed.
Categories (the paper's) by explicit rules, in this order; the rule that decided is written beside
each pair. Numbers are compared after LaTeX-to-plain, signs apart and comma lists split, so
`x^3-2x+1` and `x^3 - 2x + 1` agree.
  1. duplicate - the whole test question is in the training text (prompt or output; words in order,
     case, punctuation, spacing and LaTeX markup ignored); a stem that does not identify its item
     counts only when the test answer is in the training output too, a HellaSwag context only with
     its gold ending (rules 1, 4 and 5: a copied context with another continuation is not the item);
  2. duplicate - the question and all its choices (gold ending, answer) are in the training text, in
     any order and with any labels;
  3. similar_but_different - a number of the test question is not in the training text (a long
     passage shared with one number changed is the same shape with other numbers, not a copy);
  4. duplicate - n-gram overlap >= verbatim_ngram_overlap (any view; near-verbatim);
  5. duplicate - cosine >= duplicate_threshold and >= verbatim_word_share of the test's words present;
  6. gray_area - cosine >= duplicate_threshold (same meaning in other words);
  7. gray_area - the judge says same question (when it read the pair);
  8. similar_but_different - the test answer is not in the training output;
  9. gray_area - reworded, same numbers and the test answer in the training output.
The action per category comes from `actions` (default: remove duplicate and gray-area); a row is
removed when any of its pairs says so.

With `training_data: as_released` (Open-Platypus as the authors released it, decontaminated by them)
no leak detection runs: `passed_through` keeps every row of 01 and the stage still writes every
artifact later stages read (clean.jsonl = 01's rows, flagged_pairs.csv with its header and no pair,
the empty table, the report saying why and the manifest); no benchmark is loaded.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns

from .artifacts import (
    StageRun,
    atomic_path,
    edited_outputs,
    sha256_text,
    write_json,
    write_jsonl,
    write_text,
)
from .benchmarks import REGISTRY, load_benchmark
from .config import DecontaminateConfig, Profile
from .demo_data import demo_benchmarks_dir
from .embeddings import Embedder, pairs_above
from .layout import CLEAN, CURATED, DECONTAMINATE, FLAGGED_PAIRS, artifact
from .models import default_cache_dir
from .plotting import PALETTE, new_figure, save_figure
from .sources import validate_rows
from .text import (
    embedding_text,
    final_answer,
    fraction_words,
    latex_plain,
    normalise_text,
    numbers,
)

try:  # the rewording judge (detector "judge") is optional: it lands in its own module
    from . import leak_judge
except ImportError:  # pragma: no cover - depends on the tree
    leak_judge = None

log = logging.getLogger("platypus")
STAGE = DECONTAMINATE
CATEGORIES = ("duplicate", "gray_area", "similar_but_different")
SEVERITY = {c: k for k, c in enumerate(CATEGORIES)}  # lower is more severe
DETECTORS = ("embedding", "ngram", "answer", "judge")
PAIR_COLUMNS = [
    "train_index",
    "train_source",
    "train_text",
    "train_output",
    "benchmark",
    "subject",
    "test_id",
    "lm_eval_task",
    "doc_id",
    "test_text",
    "test_answer",
    "test_view",
    "train_part",
    "embedding_cosine",
    "ngram_overlap",
    "answer_match",
    "judge_score",
    "judge_verdict",
    "by_embedding",
    "by_ngram",
    "by_answer",
    "by_judge",
    "category",
    "rule",
    "action",
]
_WORD = re.compile(r"\w+")
_SIGNED_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*")  # answers: there the sign is part of the value
# Function words left out when a long answer is compared word by word with a train output.
_STOPWORDS = frozenset(
    "a an the of to in on at by for with and or but if is are was were be been it its this that these "
    "those you your he she they them his her their we our as from into than then so do does did not no "
    "yes can will would there".split()
)


# ---------------------------------------------------------------- text comparisons
def words(text: str) -> list[str]:
    return _WORD.findall(normalise_text(text))


_CHOICE_LABEL = re.compile(r"^[ \t]*\(?[A-Ea-e][.):][ \t]|\([A-Ea-e]\)", re.M)  # "A: coal", "(b) iron"


def gram_words(text: str) -> list[str]:
    """The words the n-gram detector compares: words() of the text read as plain (latex_plain: $x$, \\frac{1}{2}
    and x, 1/2 alike) without choice labels ("A:", "B.", "(c)" at a line start, "(d)" anywhere), so a
    question copied with labelled options or other LaTeX markup still matches."""
    return words(_CHOICE_LABEL.sub(" ", latex_plain(text)))


def missing_numbers(question: str, train_text: str) -> list[str]:
    """Numbers of the test question (with multiplicity) that the train text lacks."""
    return sorted((numbers(question) + fraction_words(question) - numbers(train_text, number_words=True)).elements())


def _longest_common_run(a: list[str], b: list[str]) -> int:
    best, prev = 0, [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            if x == y:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


def answer_in_output(answer: str, output: str) -> bool:
    """Whether a test item's correct answer is given by a training row's output.

    The output's final answer (final_answer: its last \\boxed{}, the sentence after "answer is", or
    its last sentence) is what is compared, since worked solutions mention many other numbers and words:
      * an answer with numbers ("81", "3/8", "9 J", "\\frac{1}{12}"): its numbers must be the final
        answer's numbers - all of them for a \\boxed{} answer, the last ones (after the last "=") otherwise;
      * an answer of three or more content words: >= 75% of them anywhere in the output and a run of
        >= 3 of its words in order (rewordings change a word or two: "waits" for "wait", a leading "Yes,");
      * any other answer (a name, a letter, a short phrase): its words, in order, in the final answer.
    Case, punctuation and LaTeX markup never matter. Measured on tests/fixtures/contamination_labelled.jsonl
    and read against the real MATH x MMLU candidates (bench/bench_detectors.py, bench_decontaminate.py).
    """
    plain = latex_plain(answer or "")
    answer_words = words(plain)
    if not answer_words:
        return False
    final, boxed = final_answer(output)
    answer_numbers = [n.replace(",", "") for n in _SIGNED_NUMBER.findall(plain)]
    if answer_numbers:
        segment = final if boxed else final.rsplit("=", 1)[-1]
        got = [n.replace(",", "") for n in _SIGNED_NUMBER.findall(segment)]
        return got == answer_numbers if boxed else got[-len(answer_numbers) :] == answer_numbers
    content = [w for w in answer_words if w not in _STOPWORDS and len(w) > 1]  # not the "s" of "camel's"
    if len(content) >= 3 and all(w.isalpha() for w in content):
        output_words = words(output)
        present = set(output_words)
        return (
            sum(w in present for w in content) / len(content) >= 0.75
            and _longest_common_run(answer_words, output_words) >= 3
        )
    return contains_phrase(final, plain)


def _holds(hay: list[str], needle: list[str]) -> bool:
    k = len(needle)
    return any(hay[i : i + k] == needle for i in range(len(hay) - k + 1))


def contains_phrase(text: str, phrase: str) -> bool:
    """Whether the words of `phrase` occur in `text` in order and adjacent (case, punctuation and LaTeX
    markup ignored)."""
    needle = words(latex_plain(phrase))
    return bool(needle) and _holds(words(latex_plain(text)), needle)


def word_share(text: str, other: str) -> float:
    """Share of the distinct words of `text` that occur in `other`."""
    mine = set(words(text))
    return len(mine & set(words(other))) / len(mine) if mine else 0.0


# ---------------------------------------------------------------- views of a test item, windows of a row
def _full_view(item: dict) -> str:
    """What the item's benchmark adds in its full view (benchmarks.REGISTRY); "choices" for others."""
    return REGISTRY[item["benchmark"]].full_view if item.get("benchmark") in REGISTRY else "choices"


def view_extra(item: dict) -> list[str]:
    """What the full view adds to the question: the choices (MMLU, ARC), the gold ending (HellaSwag) or the
    answer (TruthfulQA); [] when the item lacks them."""
    if _full_view(item) == "choices":
        return [c for c in item.get("choices") or [] if str(c).strip()]
    return [item["answer"]] if (item.get("answer") or "").strip() else []


def stem_identifies(item: dict, cfg: DecontaminateConfig) -> bool:
    """Whether the question alone names its item: always for HellaSwag and TruthfulQA; for MMLU and ARC,
    whose choices carry the identity of a short stem, from ngram_min_tokens words on."""
    return _full_view(item) != "choices" or len(words(item["question"])) >= cfg.ngram_min_tokens


def item_views(items: list[dict], cfg: DecontaminateConfig) -> pd.DataFrame:
    """One row per (item, view): item (index), view ("question" | "full"), text, identifying (whether the
    category rules may read its cosine). A full view that adds nothing is left out."""
    out = []
    for k, it in enumerate(items):
        extra = view_extra(it)
        if "question" in cfg.views or not extra:
            out.append((k, "question", it["question"], stem_identifies(it, cfg)))
        if "full" in cfg.views and extra:
            out.append((k, "full", "\n".join([it["question"], *extra]), True))
    return pd.DataFrame(out, columns=["item", "view", "text", "identifying"])


def item_text(item: dict) -> str:
    """The test item as a reviewer reads it: the question with its choices / gold ending / answer."""
    return "\n".join([item["question"], *view_extra(item)])


def window_texts(text: str, max_pieces: int, overlap: float, count: Callable[[str], int]) -> list[str]:
    """`text` cut into windows of at most `max_pieces` word pieces (count(word) pieces per whitespace word),
    each sharing `overlap` of its pieces with the next; a text that fits is returned whole."""
    if len(re.sub(r"\s", "", text)) <= max_pieces:  # every word piece holds at least one character
        return [text]
    toks = text.split()
    sizes = [count(w) for w in toks]
    if sum(sizes) <= max_pieces:
        return [text]
    windows, start = [], 0
    while True:
        end, total = start, 0
        while end < len(toks) and total + sizes[end] <= max_pieces:
            total, end = total + sizes[end], end + 1
        end = max(end, start + 1)  # a single word longer than a window still makes one
        windows.append(" ".join(toks[start:end]))
        if end >= len(toks):
            return windows
        back, kept = end, 0
        while back > start + 1 and kept + sizes[back - 1] <= overlap * total:
            kept, back = kept + sizes[back - 1], back - 1
        start = back


def piece_counter(embedder) -> tuple[int, Callable[[str], int]] | None:
    """(word pieces per window, pieces of a word) for the embedder's model; None when the embedder does not
    expose a tokenizer (stand-ins in tests and benchmarks: texts are then embedded whole)."""
    model = getattr(embedder, "model", None)  # the project's Embedder loads its SentenceTransformer here
    tokenizer, length = getattr(model, "tokenizer", None), getattr(model, "max_seq_length", None)
    if tokenizer is None or not length:
        return None
    cache: dict[str, int] = {}

    def count(word: str) -> int:
        if word not in cache:
            cache[word] = max(1, len(tokenizer.tokenize(word)))
        return cache[word]

    return int(length) - 2, count  # [CLS] and [SEP]


def train_windows(rows: list[dict], cfg: DecontaminateConfig, embedder=None) -> pd.DataFrame:
    """One row per (training row, part, window): row (index), part ("prompt" | "output"), text."""
    parts = [("prompt", embedding_text)] + ([("output", lambda r: r["output"])] if cfg.search_outputs else [])
    texts = [(i, part, get(r)) for part, get in parts for i, r in enumerate(rows)]
    budget = None
    if any(len(t) > 254 for _, _, t in texts):  # only then is the tokenizer needed (it loads the model)
        budget = piece_counter(embedder)
    out = []
    for i, part, text in texts:
        if not text.strip():
            continue
        pieces = window_texts(text, budget[0], cfg.window_overlap, budget[1]) if budget else [text]
        out += [(i, part, w) for w in pieces]
    return pd.DataFrame(out, columns=["row", "part", "text"]).sort_values(
        ["row", "part"], kind="stable", ignore_index=True
    )


# ---------------------------------------------------------------- embeddings
def embed_benchmark_texts(texts: list[str], embedder) -> np.ndarray:
    """Embeddings of a benchmark set's view texts, cached once per model and set (a single .npy under the
    embedder's cache folder, which is absolute: the same file whichever folder the command runs from)."""
    cache_dir = getattr(getattr(embedder, "cache", None), "dir", None)
    if cache_dir is None:
        return embedder.encode(texts, desc="benchmark items")
    path = Path(cache_dir) / "benchmark_sets" / f"{sha256_text(chr(30).join(texts))[:24]}.npy"
    if path.is_file():
        try:
            vecs = np.load(path, allow_pickle=False)
            if vecs.shape[0] == len(texts):
                log.info("benchmark embeddings: %d texts from %s", len(texts), path)
                return vecs
        except (OSError, ValueError) as exc:  # a damaged file only costs a re-encode
            log.warning("benchmark embeddings: ignoring unreadable %s (%s)", path, exc)
    vecs = embedder.encode(texts, desc="benchmark items")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, vecs)
    return vecs


@dataclass
class Embedded:
    """Training windows and test views with their vectors (None when no detector reads embeddings)."""

    windows: pd.DataFrame
    views: pd.DataFrame
    window_vecs: np.ndarray | None = None
    view_vecs: np.ndarray | None = None
    windows_of: dict[int, np.ndarray] = field(default_factory=dict)  # row -> window indices
    views_of: dict[int, np.ndarray] = field(default_factory=dict)  # item -> view indices


def uses_embeddings(cfg: DecontaminateConfig) -> bool:
    return bool(set(cfg.detectors) & {"embedding", "answer", "judge"})


def embed_texts(rows: list[dict], items: list[dict], cfg: DecontaminateConfig, embedder=None) -> Embedded:
    """Step: the training windows and test views, embedded when a detector reads cosines."""
    views = item_views(items, cfg)
    windows = train_windows(rows, cfg, embedder if uses_embeddings(cfg) else None)
    out = Embedded(
        windows,
        views,
        windows_of={r: g.to_numpy() for r, g in windows.groupby("row").groups.items()},
        views_of={k: g.to_numpy() for k, g in views.groupby("item").groups.items()},
    )
    if uses_embeddings(cfg):
        if embedder is None:
            raise ValueError(f"detectors {cfg.detectors} read embeddings: an embedder is needed")
        out.view_vecs = embed_benchmark_texts(views["text"].tolist(), embedder)
        out.window_vecs = embedder.encode(windows["text"].tolist(), desc="training windows")
        log.info(
            "embedded %d training windows of %d rows, %d views of %d test items",
            len(windows),
            len(rows),
            len(views),
            len(items),
        )
    return out


# ---------------------------------------------------------------- n-gram detector
_GRAM_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the polynomial gram hash


def _gram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """64-bit hash of each window of n consecutive word ids (len(ids) - n + 1 of them); wraps mod 2**64."""
    count = len(ids) - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for t in range(n):
            h = h * _GRAM_BASE + ids[t : t + count].astype(np.uint64) + np.uint64(1)
    return h


class NgramIndex:
    """Training texts indexed by hashed word n-grams, for one or more n.

    Words (`tokenize`, default gram_words) become integer ids, each n-gram a 64-bit polynomial hash, and
    the index for one n is two sorted arrays (gram hash, text): built with numpy over all texts at once,
    looked up with searchsorted. Deterministic (no per-process string hashing) and a few bytes per gram.
    """

    def __init__(self, train_texts: list[str], tokenize: Callable[[str], list[str]] = gram_words):
        self.tokenize = tokenize
        self.tokens = [tokenize(t) for t in train_texts]
        self._vocab: dict[str, int] = {}
        lengths = np.array([len(t) for t in self.tokens], dtype=np.int64)
        self._flat = np.fromiter(
            (self._vocab.setdefault(w, len(self._vocab)) for toks in self.tokens for w in toks),
            dtype=np.int64,
            count=int(lengths.sum()),
        )
        self._row_of = np.repeat(np.arange(len(self.tokens), dtype=np.int64), lengths)
        self._room = np.concatenate([np.arange(n, 0, -1) for n in lengths]) if len(lengths) else np.zeros(0, np.int64)
        self._index: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _ids(self, toks: list[str]) -> np.ndarray:
        # a word unknown to the training texts gets an id no training gram has
        unknown = len(self._vocab)
        return np.array([self._vocab.get(w, unknown) for w in toks], dtype=np.int64)

    def index(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(gram hashes, texts), sorted by hash then text, one entry per distinct (gram, text)."""
        if n not in self._index:
            h = _gram_hashes(self._flat, n)
            ok = self._room[: len(h)] >= n  # windows that stay inside their text
            h, rows = h[ok], self._row_of[: len(ok)][ok]
            order = np.lexsort((rows, h))
            h, rows = h[order], rows[order]
            keep = np.ones(len(h), dtype=bool)
            keep[1:] = (h[1:] != h[:-1]) | (rows[1:] != rows[:-1])
            self._index[n] = (h[keep], rows[keep])
        return self._index[n]

    def _rows_with(self, grams: np.ndarray, n: int) -> np.ndarray:
        """Texts holding each gram, concatenated (a text once per gram it holds)."""
        h, rows = self.index(n)
        lo, hi = np.searchsorted(h, grams, "left"), np.searchsorted(h, grams, "right")
        counts = hi - lo
        if not counts.sum():
            return np.zeros(0, dtype=np.int64)
        starts = np.repeat(lo - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
        return rows[starts + np.arange(counts.sum())]

    def overlaps(self, text: str, n: int, min_tokens: int) -> dict[int, float]:
        """Share of `text`'s distinct n-grams found in each training text (texts with any hit only).
        Texts shorter than n count as one gram: their whole word sequence (share 1.0 where a text holds it)."""
        toks = self.tokenize(text)
        if len(toks) < min_tokens:
            return {}
        ids = self._ids(toks)
        if len(toks) < n:
            # One index of min_tokens-grams finds the candidates for every short length (not one index per
            # length); a candidate counts when it holds the whole sequence.
            k = min(min_tokens, len(toks))
            candidates = np.unique(self._rows_with(_gram_hashes(ids[:k], k), k))
            return {int(r): 1.0 for r in candidates if _holds(self.tokens[r], toks)}
        grams = np.unique(_gram_hashes(ids, n))
        hit_rows, counts = np.unique(self._rows_with(grams, n), return_counts=True)
        return {int(r): c / len(grams) for r, c in zip(hit_rows.tolist(), counts.tolist())}


# ---------------------------------------------------------------- candidate pairs per detector
CANDIDATE_COLUMNS = [
    "train_index",
    "item_index",
    "embedding_cosine",
    "identifying_cosine",
    "embed_part",
    "test_view",
    "ngram_overlap",
    "ngram_part",
    "ngram_view",
]
NGRAM_COLUMNS = ["train_index", "item_index", "ngram_overlap", "ngram_part", "ngram_view"]


def embedding_candidates(emb: Embedded, threshold: float, block_size: int) -> set[tuple[int, int]]:
    """(row, item) pairs with a window x view cosine >= threshold (blockwise: memory bounded by the blocks)."""
    win_row, view_item = emb.windows["row"].to_numpy(), emb.views["item"].to_numpy()
    found: set[tuple[int, int]] = set()
    for ii, jj, _ in pairs_above(emb.window_vecs, emb.view_vecs, threshold, block_size, desc="train x benchmark"):
        found.update(zip(win_row[ii].tolist(), view_item[jj].tolist()))
    return found


def ngram_candidates(rows: list[dict], emb: Embedded, cfg: DecontaminateConfig) -> pd.DataFrame:
    """Per (row, item): the best n-gram overlap over views and training parts, and the part it was in."""
    texts = [embedding_text(r) for r in rows] + ([r["output"] for r in rows] if cfg.search_outputs else [])
    index = NgramIndex(texts)
    best: dict[tuple[int, int], tuple[float, str, str]] = {}
    for item, view, text in zip(emb.views["item"].tolist(), emb.views["view"].tolist(), emb.views["text"].tolist()):
        for doc, share in index.overlaps(text, cfg.ngram_n, cfg.ngram_min_tokens).items():
            key = (doc % len(rows), item)
            if share > best.get(key, (0.0,))[0]:
                best[key] = (share, "prompt" if doc < len(rows) else "output", view)
    return pd.DataFrame([(i, j, *v) for (i, j), v in best.items()], columns=NGRAM_COLUMNS)


def pair_cosines(emb: Embedded, pairs: list[tuple[int, int]]) -> pd.DataFrame:
    """For given (row, item) pairs: the max cosine over windows x views, the max over identifying views
    only, and where the max was (training part, test view). NaN cosines without embeddings."""
    out = []
    parts, view_names = emb.windows["part"].to_numpy(), emb.views["view"].to_numpy()
    identifying = emb.views["identifying"].to_numpy()
    for i, j in pairs:
        w, v = emb.windows_of.get(i), emb.views_of.get(j)
        if emb.window_vecs is None or w is None or v is None:
            out.append((i, j, np.nan, np.nan, "", ""))
            continue
        sims = emb.window_vecs[w] @ emb.view_vecs[v].T
        a, b = np.unravel_index(int(np.argmax(sims)), sims.shape)
        ident = sims[:, identifying[v]]
        out.append(
            (i, j, float(sims[a, b]), float(ident.max()) if ident.size else np.nan, parts[w[a]], view_names[v[b]])
        )
    return pd.DataFrame(
        out, columns=["train_index", "item_index", "embedding_cosine", "identifying_cosine", "embed_part", "test_view"]
    )


def candidate_threshold(cfg: DecontaminateConfig) -> float | None:
    """The lowest cosine any selected embedding-reading detector looks at (None: no such detector)."""
    lows = [cfg.similarity_threshold] if "embedding" in cfg.detectors else []
    if "answer" in cfg.detectors and cfg.answer_detector_threshold is not None:
        lows.append(cfg.answer_detector_threshold)
    if "judge" in cfg.detectors:
        lows.append(cfg.judge_threshold)
    return min(lows) if lows else None


def candidate_pairs(rows: list[dict], emb: Embedded, cfg: DecontaminateConfig) -> pd.DataFrame:
    """Step: every (row, item) pair some selected detector might flag, with its cosines and n-gram overlap
    (CANDIDATE_COLUMNS): embedding candidates at the lowest cosine read, n-gram ones above their threshold."""
    keys: set[tuple[int, int]] = set()
    low = candidate_threshold(cfg)
    if low is not None:
        keys |= embedding_candidates(emb, low, cfg.block_size)
    grams = ngram_candidates(rows, emb, cfg) if "ngram" in cfg.detectors else pd.DataFrame(columns=NGRAM_COLUMNS)
    keys |= set(
        zip(
            *[
                grams.loc[grams["ngram_overlap"] >= cfg.ngram_overlap_threshold, c].tolist()
                for c in ("train_index", "item_index")
            ]
        )
    )
    cos = pair_cosines(emb, sorted(keys))
    out = cos.merge(grams, on=["train_index", "item_index"], how="left")
    out["ngram_overlap"] = out["ngram_overlap"].astype(float).fillna(0.0)
    out[["ngram_part", "ngram_view"]] = out[["ngram_part", "ngram_view"]].fillna("")
    log.info(
        "%d candidate pairs (cosine >= %s, or %d-gram overlap >= %.2f)",
        len(out),
        low,
        cfg.ngram_n,
        cfg.ngram_overlap_threshold,
    )
    return out[CANDIDATE_COLUMNS]


# ---------------------------------------------------------------- detectors' verdicts
def answer_verified(train_row: dict, item: dict) -> bool:
    """Detector "answer"'s check: the test's numbers are all in the train prompt and its answer in the output."""
    return not missing_numbers(item["question"], embedding_text(train_row)) and answer_in_output(
        item.get("answer") or "", train_row["output"]
    )


def judge_candidates(
    cands: pd.DataFrame, rows: list[dict], items: list[dict], cfg: DecontaminateConfig, embedder=None
) -> pd.DataFrame:
    """Step (detector "judge"): leak_judge's score and verdict (True: the same question, possibly reworded)
    for the candidates at cosine >= judge_threshold whose numbers agree; NaN / None for the others, and all
    of them when the judge is not selected. The judge reuses the stage's embedder when it judges with the same model."""
    out = pd.DataFrame({"judge_score": np.nan, "judge_verdict": None}, index=cands.index)
    if "judge" not in cfg.detectors or cands.empty:
        return out
    if leak_judge is None:
        raise ValueError(
            "decontaminate.detectors includes 'judge', but platypus_utils.leak_judge is not in this "
            "tree; choose from embedding, ngram, answer"
        )
    high = cands.index[cands["embedding_cosine"].fillna(0.0) >= cfg.judge_threshold]
    # a pair with a number of the test question missing from the whole row is similar_but_different (rule 3)
    # whatever the judge says, and the judge would say "different" too: it is not read, which keeps the judge's
    # cost to the pairs it can decide (most MATH x MMLU candidates share a topic but not their numbers)
    read = [
        k
        for k in high
        if not missing_numbers(
            items[cands.at[k, "item_index"]]["question"],
            f"{embedding_text(rows[cands.at[k, 'train_index']])}\n{rows[cands.at[k, 'train_index']]['output']}",
        )
    ]
    if not read:
        return out
    pairs = [(rows[i], items[j]) for i, j in zip(cands.loc[read, "train_index"], cands.loc[read, "item_index"])]
    frame = pd.DataFrame(
        {
            "train_text": [embedding_text(r) for r, _ in pairs],
            "train_output": [r["output"] for r, _ in pairs],
            "test_question": [it["question"] for _, it in pairs],
            "test_answer": [it.get("answer") or "" for _, it in pairs],
            "test_choices": [list(it.get("choices") or []) if _full_view(it) == "choices" else [] for _, it in pairs],
            "test_options": [list(it.get("choices") or []) for _, it in pairs],
        }
    )
    model = cfg.judge_model or leak_judge.DEFAULT_MODEL
    same = embedder if getattr(embedder, "model_ref", None) == model else None
    cache = getattr(getattr(embedder, "cache", None), "dir", None)  # <root>/embeddings/<model>: the root
    judged = leak_judge.judge_pairs(
        frame, model=model, embedder=same, cache_dir=Path(cache).parents[1] if cache else None
    )
    out.loc[read, "judge_score"] = judged["score"].to_numpy(dtype=float)
    out.loc[read, "judge_verdict"] = judged["verdict"].astype(bool).to_numpy()
    return out


def detector_verdicts(
    cosine: float, ngram: float, answer_match: bool, cfg: DecontaminateConfig, judge_verdict: bool | None = None
) -> dict[str, bool]:
    """Which selected detectors flag a (train row, test item) pair, from its scores (NaN cosine: none)."""
    on = set(cfg.detectors)
    cos = -1.0 if cosine != cosine else cosine  # NaN: no embeddings were read
    return {
        "by_embedding": "embedding" in on and cos >= cfg.similarity_threshold,
        "by_ngram": "ngram" in on and ngram >= cfg.ngram_overlap_threshold,
        "by_answer": (
            "answer" in on
            and cfg.answer_detector_threshold is not None
            and cos >= cfg.answer_detector_threshold
            and bool(answer_match)
        ),
        "by_judge": "judge" in on and judge_verdict is True,
    }


def flag_pairs(
    cands: pd.DataFrame,
    rows: list[dict],
    items: list[dict],
    cfg: DecontaminateConfig,
    keep_unflagged: bool = False,
    embedder=None,
) -> pd.DataFrame:
    """Step: each candidate's answer check, the judge's score and verdict, and each detector's verdict; only
    the flagged pairs (all of them with keep_unflagged, for measuring on a labelled set)."""
    out = cands.copy()
    out["answer_match"] = [answer_verified(rows[i], items[j]) for i, j in zip(out["train_index"], out["item_index"])]
    out[["judge_score", "judge_verdict"]] = judge_candidates(out, rows, items, cfg, embedder)
    verdicts = [
        detector_verdicts(c, g, a, cfg, v)
        for c, g, a, v in zip(out["embedding_cosine"], out["ngram_overlap"], out["answer_match"], out["judge_verdict"])
    ]
    for name in ("by_embedding", "by_ngram", "by_answer", "by_judge"):
        out[name] = [v[name] for v in verdicts]
    flagged = out[["by_embedding", "by_ngram", "by_answer", "by_judge"]].any(axis=1)
    log.info("flagged pairs: %s", {k: int(out[k].sum()) for k in ("by_embedding", "by_ngram", "by_answer", "by_judge")})
    return out if keep_unflagged else out[flagged].reset_index(drop=True)


# ---------------------------------------------------------------- categories
def _ending_given(train_row: dict, item: dict) -> bool:
    """False only for a HellaSwag item whose gold ending the training row does not give: a copied context
    with another continuation is the same start, not the test item (it is scored on its ending)."""
    if _full_view(item) != "gold_ending":
        return True
    answer = item.get("answer") or ""
    return answer_in_output(answer, train_row["output"]) or contains_phrase(
        embedding_text(train_row) + "\n" + train_row["output"], answer
    )


def _verbatim_rule(train_row: dict, item: dict, cfg: DecontaminateConfig) -> str | None:
    """Rules 1-2 (see the module docstring): why the pair is a verbatim copy, or None."""
    whole = embedding_text(train_row) + "\n" + train_row["output"]
    stem_in = contains_phrase(whole, item["question"])
    if stem_in and stem_identifies(item, cfg) and _ending_given(train_row, item):
        return "verbatim: the whole test question is in the train text"
    if stem_in and answer_in_output(item.get("answer") or "", train_row["output"]):
        return "verbatim: the whole test question (a short one) is in the train text and its answer in the output"
    extra = view_extra(item)
    if stem_in and extra and all(contains_phrase(whole, x) for x in extra):
        what = {"choices": "all its choices", "gold_ending": "its gold ending", "answer": "its answer"}
        return f"verbatim: the question and {what[_full_view(item)]} are in the train text"
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
) -> tuple[str, str]:
    """(category, rule) for one flagged pair; see the module docstring for the rule order.

    cosine: the pair's best cosine; identifying_cosine: the best over views that identify the item (None:
    the same); part: where the evidence was ("output": the numbers rule reads prompt and output);
    judge: the judge's (verdict, score) when it read the pair."""
    verbatim = _verbatim_rule(train_row, item, cfg)
    if verbatim:
        return "duplicate", verbatim
    prompt = embedding_text(train_row)
    missing = missing_numbers(item["question"], prompt + ("\n" + train_row["output"] if part == "output" else ""))
    if missing:
        return "similar_but_different", f"numbers differ: test has {missing} not in train text"
    ending = _ending_given(train_row, item)
    if ngram >= cfg.verbatim_ngram_overlap and ending:
        return "duplicate", f"near-verbatim: {cfg.ngram_n}-gram overlap {ngram:.2f}"
    cos = cosine if identifying_cosine is None else identifying_cosine
    if cos == cos and cos >= cfg.duplicate_threshold:  # cos == cos: not NaN
        whole = prompt + "\n" + train_row["output"]
        share = max(
            word_share(item["question"], whole) if stem_identifies(item, cfg) and ending else 0.0,
            word_share(item_text(item), whole),
        )
        if share >= cfg.verbatim_word_share:
            return "duplicate", f"near-verbatim: cosine {cos:.3f}, {share:.0%} of the test's words in train text"
        return "gray_area", f"same meaning in other words: cosine {cos:.3f}, {share:.0%} of the test's words"
    if judge[0] is True:
        return "gray_area", f"the judge reads the same question, reworded: score {judge[1]:.3f}"
    if not answer_in_output(item.get("answer") or "", train_row["output"]):
        return "similar_but_different", f"answer differs: test answer {item.get('answer')!r} not in train output"
    return "gray_area", f"reworded, same numbers and answer: cosine {cosine:.3f}"


def categorise_pairs(
    flagged: pd.DataFrame, rows: list[dict], items: list[dict], cfg: DecontaminateConfig
) -> pd.DataFrame:
    """Step: the report's pairs (PAIR_COLUMNS): both texts, the scores, category, rule and action."""
    records = []
    for f in flagged.itertuples(index=False):
        row, item = rows[f.train_index], items[f.item_index]
        by_gram = f.by_ngram and f.ngram_part
        part, view = (f.ngram_part, f.ngram_view) if by_gram else (f.embed_part or "prompt", f.test_view)
        category, rule = categorise(
            row,
            item,
            f.embedding_cosine,
            f.ngram_overlap,
            cfg,
            f.identifying_cosine,
            part,
            (f.judge_verdict, f.judge_score),
        )
        records.append(
            {
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
                "answer_match": f.answer_match,
                # 4 decimals: the judge's texts are encoded in batches whose make-up varies between runs
                # (float32 differs in the 7th digit), and a rerun should write the same file
                "judge_score": float("nan") if pd.isna(f.judge_score) else round(float(f.judge_score), 4),
                "judge_verdict": f.judge_verdict,
                "by_embedding": f.by_embedding,
                "by_ngram": f.by_ngram,
                "by_answer": f.by_answer,
                "by_judge": f.by_judge,
                "category": category,
                "rule": rule,
                "action": cfg.actions[category],
            }
        )
    return pd.DataFrame(records, columns=PAIR_COLUMNS)


def choose_removals(pairs: pd.DataFrame, rows: list[dict]) -> tuple[list[dict], set[int]]:
    """Step: (clean rows, removed row indices): a row goes when any of its pairs' action is "remove"."""
    removed = set(pairs.loc[pairs["action"] == "remove", "train_index"].tolist()) if len(pairs) else set()
    return [r for k, r in enumerate(rows) if k not in removed], removed


# ---------------------------------------------------------------- tables, summary, figure
def contamination_table(pairs: pd.DataFrame, removed: set[int]) -> pd.DataFrame:
    """Training source x benchmark: distinct rows per category (most severe per row and benchmark)
    and rows removed - the paper's Table 1 form."""
    cols = ["data_source", "benchmark", *CATEGORIES, "removed"]
    if pairs.empty:
        return pd.DataFrame(columns=cols)
    out = []
    for (src, bench), grp in worst_per_row(pairs).groupby(["train_source", "benchmark"], sort=True):
        row = {"data_source": src, "benchmark": bench}
        for c in CATEGORIES:
            row[c] = int((grp["category"] == c).sum())
        row["removed"] = int(grp["train_index"].isin(removed).sum())
        out.append(row)
    return pd.DataFrame(out, columns=cols)


def worst_per_row(pairs: pd.DataFrame) -> pd.DataFrame:
    """One pair per (training row, benchmark): its most severe category."""
    return (
        pairs.assign(sev=pairs["category"].map(SEVERITY))
        .sort_values(["sev", "train_index"], kind="stable")
        .drop_duplicates(["train_index", "benchmark"])
        .drop(columns="sev")
    )


def summarise(
    pairs: pd.DataFrame,
    rows: list[dict],
    items: list[dict],
    removed: set[int],
    cfg: DecontaminateConfig,
    cands: pd.DataFrame | None = None,
) -> dict:
    """Step: the stage's counts (decontamination_report.json; the command line prints it)."""
    by = {d: pairs[f"by_{d}"].astype(bool) for d in DETECTORS}
    below = (
        0
        if cands is None or cfg.answer_detector_threshold is None
        else int(
            cands["embedding_cosine"].between(cfg.answer_detector_threshold, cfg.similarity_threshold, "left").sum()
        )
    )
    return {
        "train_rows": len(rows),
        "benchmark_items": len(items),
        "flagged_pairs": len(pairs),
        "flagged_rows": int(pairs["train_index"].nunique()),
        "removed_rows": len(removed),
        "clean_rows": len(rows) - len(removed),
        "detectors": list(cfg.detectors),
        "views": list(cfg.views),
        "search_outputs": cfg.search_outputs,
        "pairs_by_detector": {
            **{d: int(v.sum()) for d, v in by.items()},
            "embedding_and_ngram": int((by["embedding"] & by["ngram"]).sum()),
            "answer_only": int((by["answer"] & ~by["embedding"] & ~by["ngram"]).sum()),
            "judge_only": int((by["judge"] & ~by["embedding"] & ~by["ngram"] & ~by["answer"]).sum()),
        },
        "pairs_by_category": {c: int((pairs["category"] == c).sum()) for c in CATEGORIES},
        "flagged_rows_by_source": {
            k: int(v)
            for k, v in pairs.drop_duplicates("train_index")["train_source"].value_counts().sort_index().items()
        },
        "removed_rows_by_source": dict(sorted(collections.Counter(rows[i]["data_source"] for i in removed).items())),
        "flagged_items_by_benchmark": {
            k: int(v)
            for k, v in pairs.drop_duplicates(["benchmark", "test_id"])["benchmark"].value_counts().sort_index().items()
        },
        "candidate_pairs": 0 if cands is None else len(cands),
        "answer_detector_candidates": below,  # candidates below the embedding threshold that "answer" checked
        "actions": dict(cfg.actions),
    }


def detector_counts(flagged: pd.DataFrame) -> pd.DataFrame:
    """Pairs flagged per detector, alone and with others (a frame of flag_pairs' verdicts)."""
    names = [c for c in ("by_embedding", "by_ngram", "by_answer", "by_judge") if c in flagged]
    rows = []
    for c in names:
        others = flagged[[o for o in names if o != c]].any(axis=1) if len(names) > 1 else False
        rows.append(
            {
                "detector": c.removeprefix("by_"),
                "pairs": int(flagged[c].sum()),
                "only_this_one": int((flagged[c] & ~others).sum()),
                "training_rows": int(flagged.loc[flagged[c], "train_index"].nunique()),
            }
        )
    return pd.DataFrame(rows, columns=["detector", "pairs", "only_this_one", "training_rows"])


def review_frame(pairs: pd.DataFrame) -> pd.DataFrame:
    """The flagged pairs as a reviewer reads them: both texts side by side, the category and its rule."""
    cols = [
        "category",
        "train_source",
        "train_text",
        "test_text",
        "benchmark",
        "lm_eval_task",
        "doc_id",
        "embedding_cosine",
        "ngram_overlap",
        "rule",
    ]
    order = pairs.assign(sev=pairs["category"].map(SEVERITY)).sort_values(
        ["sev", "benchmark", "train_index"], kind="stable"
    )
    return order[cols].reset_index(drop=True)


def removals_under(pairs: pd.DataFrame, actions: dict[str, str]) -> dict:
    """What another policy would remove, from the categorised pairs alone: rows and test items touched."""
    hit = pairs[pairs["category"].map(actions) == "remove"] if len(pairs) else pairs
    return {
        "removed_rows": int(hit["train_index"].nunique()) if len(hit) else 0,
        "test_items": int(hit[["benchmark", "test_id"]].drop_duplicates().shape[0]) if len(hit) else 0,
    }


def category_counts(pairs: pd.DataFrame) -> pd.DataFrame:
    """Flagged training rows per source (rows) and category (columns), most severe category per benchmark."""
    if pairs.empty:
        return pd.DataFrame(columns=list(CATEGORIES))
    return (
        worst_per_row(pairs)
        .groupby(["train_source", "category"])
        .size()
        .unstack(fill_value=0)
        .reindex(columns=list(CATEGORIES), fill_value=0)
    )


def contamination_figure(pairs: pd.DataFrame, ax=None):
    """Flagged training rows per source and category, stacked bars; returns the figure (never saves)."""
    fig, ax = new_figure(ax, (7, 3.8))
    if pairs.empty:
        ax.text(0.5, 0.5, "no flagged pairs", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        category_counts(pairs).plot.barh(stacked=True, ax=ax, color=sns.color_palette(PALETTE, 3))
        ax.legend(title="category", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("flagged training rows (most severe category per benchmark)")
        ax.set_ylabel("")
    ax.set_title("Benchmark contamination of the training data")
    return fig


def figure_caption(pairs: pd.DataFrame) -> str:
    if pairs.empty:
        return "No training row was flagged against any benchmark."
    return "Flagged training rows per source and category.\n" + category_counts(pairs).to_string()


@dataclass
class Result:
    clean: list[dict]
    pairs: pd.DataFrame
    table: pd.DataFrame
    summary: dict
    candidates: pd.DataFrame | None = None


def save_outputs(result: Result, out: Path, fig_dir: Path, table_dir: Path | None = None) -> list[Path]:
    """Step (last): clean.jsonl, flagged_pairs.csv, contamination_table.csv, the report and the figure."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        write_jsonl(out / CLEAN[1], result.clean),
        write_text(out / FLAGGED_PAIRS[1], result.pairs.to_csv(index=False)),
        write_text(out / "contamination_table.csv", result.table.to_csv(index=False)),
        write_json(out / "decontamination_report.json", result.summary),
    ]
    if table_dir is not None:
        table_dir.mkdir(parents=True, exist_ok=True)
        paths.append(write_text(table_dir / "contamination_table.csv", result.table.to_csv(index=False)))
        md = result.table.to_markdown(index=False) if len(result.table) else "_no flagged rows_"
        paths.append(write_text(table_dir / "contamination_table.md", md + "\n"))
    fig = contamination_figure(result.pairs)
    paths += save_figure(fig, fig_dir / "02_contamination", figure_caption(result.pairs))
    return paths


# ---------------------------------------------------------------- measuring on labelled pairs
def score_pairs(
    pairs: list[dict], cfg: DecontaminateConfig, embedder=None, cosines: list[float] | None = None
) -> pd.DataFrame:
    """Score given (train row, test item) pairs one by one, as find_leaks would score them.

    Each pair is {"train": {instruction, input, output, data_source}, "question", "answer", "benchmark",
    ["choices"], ...}, as in tests/fixtures/contamination_labelled.jsonl. Cosines come from `embedder`
    (views and windows as in the stage), or are given (`cosines`, one per pair, read as the best cosine).
    Returns one row per pair: the candidate columns, answer_match, judge_score, each detector's verdict,
    category and rule (category "" when no detector flags it). Used to measure the detectors on a
    labelled set (bench/bench_detectors.py).
    """
    rows = [{"input": "", **p["train"]} for p in pairs]
    items = [{"subject": "", "choices": [], **{k: v for k, v in p.items() if k != "train"}} for p in pairs]
    emb = embed_texts(
        rows, items, cfg if cosines is None else cfg.model_copy(update={"detectors": ["ngram"]}), embedder
    )
    cands = pair_cosines(emb, [(k, k) for k in range(len(pairs))])
    if cosines is not None:
        cands["embedding_cosine"] = cands["identifying_cosine"] = [float(c) for c in cosines]
        cands["embed_part"], cands["test_view"] = "prompt", "question"
    grams = []
    for k, (row, _item) in enumerate(zip(rows, items)):
        index = NgramIndex([embedding_text(row)] + ([row["output"]] if cfg.search_outputs else []))
        views = emb.views[emb.views["item"] == k]
        hits = [
            (s, "prompt" if d == 0 else "output", v)
            for v, t in zip(views["view"], views["text"])
            for d, s in index.overlaps(t, cfg.ngram_n, cfg.ngram_min_tokens).items()
        ]
        grams.append(max(hits, default=(0.0, "", "")))
    for c, name in enumerate(("ngram_overlap", "ngram_part", "ngram_view")):
        cands[name] = [g[c] for g in grams]
    scored = flag_pairs(cands, rows, items, cfg, keep_unflagged=True, embedder=embedder)
    cats = [
        categorise(
            rows[k],
            items[k],
            s.embedding_cosine,
            s.ngram_overlap,
            cfg,
            s.identifying_cosine,
            s.ngram_part if s.by_ngram and s.ngram_part else (s.embed_part or "prompt"),
            (s.judge_verdict, s.judge_score),
        )
        if any((s.by_embedding, s.by_ngram, s.by_answer, s.by_judge))
        else ("", "")
        for k, s in enumerate(scored.itertuples(index=False))
    ]
    scored["category"], scored["rule"] = [c for c, _ in cats], [r for _, r in cats]
    return scored.drop(columns=["train_index", "item_index"])


# ---------------------------------------------------------------- inputs
def load_benchmark_items(cfg: DecontaminateConfig, profile: Profile | None = None) -> tuple[list[dict], Path | None]:
    """Step: the test items of cfg.benchmarks from cfg.benchmarks_dir ("demo": the project's, written first;
    "hub"; or a folder in the original formats), and that folder (None for the hub)."""
    bdir = cfg.benchmarks_dir
    if bdir == "demo":
        bdir = str(demo_benchmarks_dir(profile))
    items = []
    for name in cfg.benchmarks:
        items += load_benchmark(name, bdir, limit=cfg.limit_per_benchmark)
    return items, (None if bdir == "hub" else Path(bdir))


def read_training_rows(path: str | Path) -> tuple[list[dict], collections.Counter]:
    """Step: rows of a training set in the Open-Platypus schema (JSON lines, or a .json list) and a Counter of
    the rows skipped by reason (malformed JSON, missing/empty/non-string fields): odd rows are counted, not
    fatal. `input` may be absent or null (instruction/output datasets): it reads as "". A missing file, or
    one with no usable row, is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: training file not found")
    skipped: collections.Counter = collections.Counter()
    if path.suffix == ".json":
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}, line {exc.lineno}: malformed JSON ({exc.msg})") from None
        if not isinstance(records, list):
            raise ValueError(f"{path}: expected a JSON list of rows, got {type(records).__name__}")
    else:
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    skipped["malformed_json"] += 1
    records = [{**r, "input": r.get("input") or ""} if isinstance(r, dict) else r for r in records]
    rows = validate_rows(records, path.stem, skipped)
    if not rows:
        detail = f"all {sum(skipped.values())} rows unusable: {dict(sorted(skipped.items()))}" if skipped else "no rows"
        raise ValueError(f"{path}: empty training set ({detail})")
    if skipped:
        log.warning("%s: skipped %d rows %s", path, sum(skipped.values()), dict(sorted(skipped.items())))
    return rows, skipped


# ---------------------------------------------------------------- the stage and the command
class DecontaminateError(RuntimeError):
    """The stage refuses to go on; the message says why and what to do."""


@dataclass
class Inputs:
    """What the stage reads: 01's rows (odd ones counted), the benchmark items, and the paths to hash."""

    rows: list[dict]
    skipped: dict
    items: list[dict]
    paths: list[Path]

    def per_source(self) -> pd.Series:
        return pd.Series(collections.Counter(r["data_source"] for r in self.rows), name="rows").sort_index()

    def per_benchmark(self) -> pd.Series:
        return pd.Series(collections.Counter(it["benchmark"] for it in self.items), name="test items").sort_index()


AS_RELEASED_REASON = "skipped: rows as released, already decontaminated by the authors"  # report, manifest


def as_released(profile: Profile) -> bool:
    """training_data: as_released: the rows pass through with no leak detection (see the module docstring)."""
    return profile.training_data == "as_released"


def passed_through(rows: list[dict], cfg: DecontaminateConfig) -> Result:
    """The stage's result when no detection runs: every row kept, no pair, the reason in the summary."""
    pairs = pd.DataFrame(columns=PAIR_COLUMNS)
    summary = summarise(pairs, rows, [], set(), cfg)
    summary.update(detectors=[], views=[], leak_detection=AS_RELEASED_REASON, training_data="as_released")
    return Result(list(rows), pairs, contamination_table(pairs, set()), summary)


def load_inputs(profile: Profile) -> Inputs:
    """Step 1: 01_curate's curated.jsonl and the benchmark test items of the profile (none when the
    rows are as released: nothing is compared with them)."""
    train_path = artifact(profile, CURATED)
    rows, skipped = read_training_rows(train_path)
    if as_released(profile):
        return Inputs(rows, dict(sorted(skipped.items())), [], [train_path])
    items, bdir = load_benchmark_items(profile.decontaminate, profile)
    return Inputs(rows, dict(sorted(skipped.items())), items, [train_path] + ([bdir] if bdir is not None else []))


def embedder_for(profile: Profile) -> Embedder | None:
    """The profile's embedding model through the shared cache; None when no selected detector reads cosines."""
    return Embedder(profile.models.embedding, profile.cache_dir()) if uses_embeddings(profile.decontaminate) else None


def detect(
    rows: list[dict], items: list[dict], cfg: DecontaminateConfig, embedder=None, timings: dict | None = None
) -> Result:
    """Steps 2-5 composed: embed, candidates, flag, categorise, choose removals (seconds per step into
    `timings` when given)."""
    if not rows:
        raise ValueError("empty training set: nothing to check")
    if not items:
        raise ValueError("no benchmark items: nothing to check against")
    timings = {} if timings is None else timings
    with _timed(timings, "embed_s"):
        emb = embed_texts(rows, items, cfg, embedder)
    with _timed(timings, "candidates_s"):
        cands = candidate_pairs(rows, emb, cfg)
    with _timed(timings, "categorise_s"):
        pairs = categorise_pairs(flag_pairs(cands, rows, items, cfg, embedder=embedder), rows, items, cfg)
        clean, removed = choose_removals(pairs, rows)
    summary = summarise(pairs, rows, items, removed, cfg, cands)
    return Result(clean, pairs, contamination_table(pairs, removed), summary, cands)


find_leaks = detect  # the name bench/ and earlier callers use


@contextlib.contextmanager
def _timed(timings: dict, name: str):
    t0 = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - t0, 3)


def save(
    profile: Profile, inputs: Inputs, result: Result, timings: dict | None = None, force: bool = False
) -> list[Path]:
    """Step 6 (last): the artifacts, figure, tables and manifest.json, exactly as the runner writes them.

    Refuses (DecontaminateError) to overwrite outputs changed by hand since the last recorded run - a
    reviewed flagged_pairs.csv - unless `force` (the runner's --force)."""
    edited = edited_outputs(profile.run_dir(STAGE))
    if edited and not force:
        name = Path(profile.source_file or "params/<profile>.yaml").name
        raise DecontaminateError(
            f"{', '.join(edited)} changed after the run that wrote it; rerun with `platypus run "
            f"params/{name} --only 02 --force` (force=True in the notebook) to overwrite, or "
            "move the edited files away"
        )
    result.summary["skipped_train_rows"] = dict(inputs.skipped)
    with StageRun(profile.run_dir(STAGE), STAGE, profile.fingerprint_params(STAGE)) as run:
        run.timings.update(timings or {})
        for path in inputs.paths:
            run.add_input(path)
        with run.timed("save_s"):
            paths = save_outputs(
                result, profile.run_dir(STAGE), profile.report_dir("figures"), profile.report_dir("tables")
            )
        for p in paths:
            run.add_output(p)
        run.metrics.update({k: v for k, v in result.summary.items() if isinstance(v, (int, float))})
        run.metrics["training_data"] = profile.training_data
        if "leak_detection" in result.summary:
            run.metrics["leak_detection"] = result.summary["leak_detection"]
    log.info(
        "decontamination: %d pairs flagged, %d rows removed, %d clean rows",
        result.summary["flagged_pairs"],
        result.summary["removed_rows"],
        len(result.clean),
    )
    return paths


def run_decontaminate(profile: Profile, force: bool = False) -> dict:
    """The whole stage, for scripts and tests (the runner executes notebook 02, the same steps): load,
    detect, save. Returns the summary."""
    timings: dict = {}
    with _timed(timings, "load_s"):
        inputs = load_inputs(profile)
    if as_released(profile):
        log.info("leak detection %s (training_data: as_released): every row of 01 is kept", AS_RELEASED_REASON)
        result = passed_through(inputs.rows, profile.decontaminate)
    else:
        result = detect(inputs.rows, inputs.items, profile.decontaminate, embedder_for(profile), timings)
    save(profile, inputs, result, timings, force=force)
    return result.summary


def check_file(
    train_file: str | Path,
    benchmarks_dir: str,
    out: str | Path,
    cfg: DecontaminateConfig | None = None,
    embedding_model: str = "embedded:all-minilm-l6-v2",
    cache_dir: str | Path | None = None,
) -> dict:
    """Standalone use (`platypus decontaminate`): check any dataset in the Open-Platypus schema against
    benchmarks, writing clean.jsonl, flagged_pairs.csv, contamination_table.csv, decontamination_report.json
    and the figure into `out`. Rows without data_source are counted under the file's name; odd rows are
    skipped and counted (`skipped_train_rows`). Embeddings are cached under `cache_dir` (default
    $PLATYPUS_CACHE or ~/.cache/platypus), made absolute, so every working folder shares them."""
    cfg = (cfg or DecontaminateConfig()).model_copy(update={"benchmarks_dir": str(benchmarks_dir)})
    rows, skipped = read_training_rows(train_file)
    items, _ = load_benchmark_items(cfg)
    cache = Path(cache_dir or default_cache_dir()).expanduser().resolve()
    embedder = Embedder(embedding_model, cache) if uses_embeddings(cfg) else None
    result = detect(rows, items, cfg, embedder)
    result.summary["skipped_train_rows"] = dict(sorted(skipped.items()))
    save_outputs(result, Path(out), Path(out))
    return result.summary
