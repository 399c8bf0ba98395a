"""Stage 02_decontaminate: find training rows that leak benchmark test questions.

Three detectors, each reported on its own and combined:
  (a) embedding similarity, the paper's way (all-MiniLM-L6-v2, cosine >= 0.8), flagging
      *every* training row above the threshold, not only the most similar one (the
      authors' code kept near-copies of the row it removed);
  (b) n-gram overlap on normalised words (13-grams as GPT-3 and lm-eval), which catches
      long verbatim passages the embedding of a short prefix can miss;
  (c) answer-verified similarity: a pair below the embedding threshold but at cosine >=
      `answer_detector_threshold` (default 0.6) is flagged when every number of the test
      question is in the train text and the test answer is in the train output. It catches
      rewordings the 0.8 threshold misses; chosen by measurement on a hand-labelled set
      (tests/fixtures/contamination_labelled.jsonl, bench/bench_detectors.py).
Each flagged (train row, test item) pair is put in a category by explicit rules, in
this order, and the rule that decided is written beside it:
  1. similar_but_different - a number of the test question is not in the train text
     (same shape, other numbers; number words such as "fifteen" count as numbers);
  2. duplicate - near-verbatim: n-gram overlap >= verbatim_ngram_overlap, the whole test question
     inside the train text, or cosine >= duplicate_threshold with >= verbatim_word_share of the
     test's words in the train text;
  3. gray_area - same meaning in other words: cosine >= duplicate_threshold;
  4. similar_but_different - the test answer is not in the train output;
  5. gray_area - reworded, same numbers and the test answer in the train output.
The action per category comes from params (default: remove duplicate and gray-area).
"""
from __future__ import annotations

import collections
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .artifacts import StageRun, write_json, write_jsonl, write_text
from .config import DecontaminateConfig, Profile
from .curate import embedding_text, normalise_text
from .embeddings import Embedder, pairs_above

log = logging.getLogger("platypus")
STAGE = "02_decontaminate"
CATEGORIES = ("duplicate", "gray_area", "similar_but_different")
SEVERITY = {c: k for k, c in enumerate(CATEGORIES)}  # lower is more severe
PAIR_COLUMNS = ["train_index", "train_source", "train_text", "benchmark", "subject", "test_id", "test_text",
                "embedding_cosine", "ngram_overlap", "answer_match", "by_embedding", "by_ngram", "by_answer",
                "category", "rule", "action"]
_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*")
_WORD = re.compile(r"\w+")
_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
          "seventeen eighteen nineteen").split()
_TENS = {w: 10 * k for k, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if k >= 2}
_NUMBER_WORD = re.compile(r"\b(?:(" + "|".join(_TENS) + r")(?:[- ](" + "|".join(_UNITS[1:10]) + r"))?|("
                          + "|".join(_UNITS) + r"|hundred|thousand))\b", re.I)
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
# Function words left out when a long answer is compared word by word with a train output.
_STOPWORDS = frozenset("a an the of to in on at by for with and or but if is are was were be been it its this that these "
                       "those you your he she they them his her their we our as from into than then so do does did not no "
                       "yes can will would there".split())


def words(text: str) -> list[str]:
    return _WORD.findall(normalise_text(text))


def numbers(text: str, number_words: bool = False) -> collections.Counter:
    """Numbers in a text (thousands separators dropped). With number_words, "fifteen" and "twenty-five"
    count as 15 and 25 too: used on the train side, so a rewording that spells a number out still agrees."""
    found = collections.Counter(n.replace(",", "") for n in _NUMBER.findall(text))
    if number_words:
        for m in _NUMBER_WORD.finditer(text):
            tens, unit, single = (g.lower() if g else g for g in m.groups())
            if single:
                value = {"hundred": 100, "thousand": 1000}.get(single, _UNITS.index(single) if single in _UNITS else 0)
            else:
                value = _TENS[tens] + (_UNITS.index(unit) if unit else 0)
            found[str(value)] += 1
    return found


def missing_numbers(question: str, train_text: str) -> list[str]:
    """Numbers of the test question (with multiplicity) that the train text lacks."""
    return sorted((numbers(question) - numbers(train_text, number_words=True)).elements())


def latex_plain(text: str) -> str:
    """LaTeX answer markup as plain text: \\frac{a}{b} -> a/b, \\text{x} -> x, no $ or spacing commands."""
    t = re.sub(r"\\[dt]frac", r"\\frac", text)
    for _ in range(2):  # one level of nesting
        t = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"\1/\2", t)
        t = re.sub(r"\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}", r"\1", t)
    t = re.sub(r"\^\{?\\circ\}?", "", t)
    t = re.sub(r"\\(?:left|right|[,;:!]|quad|qquad)", " ", t)
    return t.replace("$", "").replace("\\%", "%")


_ANSWER_CUE = re.compile(r"\banswer\s*(?:is|:|=)\s*", re.I)
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")


def final_answer(output: str) -> tuple[str, bool]:
    """The part of a training output that states its answer, and whether it is a \\boxed{} one: the last
    \\boxed{}, else the sentence after the last "answer is", else the last sentence."""
    boxed = _BOXED.findall(output)
    if boxed:
        return latex_plain(boxed[-1]), True
    cues = list(_ANSWER_CUE.finditer(output))
    if cues:
        return latex_plain(_SENTENCE_BREAK.split(output[cues[-1].end():].strip(), maxsplit=1)[0]), False
    sentences = [x for x in _SENTENCE_BREAK.split(output.strip()) if x.strip()]
    return latex_plain(sentences[-1] if sentences else ""), False


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
    answer_numbers = [n.replace(",", "") for n in _NUMBER.findall(plain)]
    if answer_numbers:
        segment = final if boxed else final.rsplit("=", 1)[-1]
        got = [n.replace(",", "") for n in _NUMBER.findall(segment)]
        return got == answer_numbers if boxed else got[-len(answer_numbers):] == answer_numbers
    content = [w for w in answer_words if w not in _STOPWORDS and len(w) > 1]  # not the "s" of "camel's"
    if len(content) >= 3 and all(w.isalpha() for w in content):
        output_words = words(output)
        present = set(output_words)
        return (sum(w in present for w in content) / len(content) >= 0.75
                and _longest_common_run(answer_words, output_words) >= 3)
    return contains_phrase(final, plain)


def contains_phrase(text: str, phrase: str) -> bool:
    """Whether the words of `phrase` occur in `text` in order and adjacent (case and punctuation ignored)."""
    needle = words(phrase)
    return bool(needle) and _holds(words(text), needle)


def word_share(text: str, other: str) -> float:
    """Share of the distinct words of `text` that occur in `other`."""
    mine = set(words(text))
    return len(mine & set(words(other))) / len(mine) if mine else 0.0


def test_text(item: dict, compare: str) -> str:
    if compare == "question_choices":
        return item["question"] + " " + " ".join(item.get("choices") or [])
    if compare == "question_answer":
        return item["question"] + " " + (item.get("answer") or "")
    return item["question"]


# ---------------------------------------------------------------- n-gram detector
def _holds(hay: list[str], needle: list[str]) -> bool:
    k = len(needle)
    return any(hay[i:i + k] == needle for i in range(len(hay) - k + 1))


_GRAM_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the polynomial gram hash


def _gram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """64-bit hash of each window of n consecutive word ids (len(ids) - n + 1 of them); wraps mod 2**64."""
    count = len(ids) - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for t in range(n):
            h = h * _GRAM_BASE + ids[t:t + count].astype(np.uint64) + np.uint64(1)
    return h


class NgramIndex:
    """Training rows indexed by hashed word n-grams, for one or more n.

    Words become integer ids, each n-gram a 64-bit polynomial hash, and the index for one n is two
    sorted arrays (gram hash, row): built with numpy over all rows at once, looked up with
    searchsorted. Deterministic (no per-process string hashing) and a few bytes per gram.
    """

    def __init__(self, train_texts: list[str]):
        self.tokens = [words(t) for t in train_texts]
        self._vocab: dict[str, int] = {}
        lengths = np.array([len(t) for t in self.tokens], dtype=np.int64)
        self._flat = np.fromiter((self._vocab.setdefault(w, len(self._vocab)) for toks in self.tokens for w in toks),
                                 dtype=np.int64, count=int(lengths.sum()))
        self._row_of = np.repeat(np.arange(len(self.tokens), dtype=np.int64), lengths)
        self._room = np.concatenate([np.arange(n, 0, -1) for n in lengths]) if len(lengths) else np.zeros(0, np.int64)
        self._index: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _ids(self, toks: list[str]) -> np.ndarray:
        # a word unknown to the training rows gets an id no training gram has
        unknown = len(self._vocab)
        return np.array([self._vocab.get(w, unknown) for w in toks], dtype=np.int64)

    def index(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(gram hashes, rows), sorted by hash then row, one entry per distinct (gram, row)."""
        if n not in self._index:
            h = _gram_hashes(self._flat, n)
            ok = self._room[:len(h)] >= n  # windows that stay inside their row
            h, rows = h[ok], self._row_of[:len(ok)][ok]
            order = np.lexsort((rows, h))
            h, rows = h[order], rows[order]
            keep = np.ones(len(h), dtype=bool)
            keep[1:] = (h[1:] != h[:-1]) | (rows[1:] != rows[:-1])
            self._index[n] = (h[keep], rows[keep])
        return self._index[n]

    def _rows_with(self, grams: np.ndarray, n: int) -> np.ndarray:
        """Rows holding each gram, concatenated (a row once per gram it holds)."""
        h, rows = self.index(n)
        lo, hi = np.searchsorted(h, grams, "left"), np.searchsorted(h, grams, "right")
        counts = hi - lo
        if not counts.sum():
            return np.zeros(0, dtype=np.int64)
        starts = np.repeat(lo - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
        return rows[starts + np.arange(counts.sum())]

    def overlaps(self, text: str, n: int, min_tokens: int) -> dict[int, float]:
        """Share of `text`'s distinct n-grams found in each training row (rows with any hit only).
        Texts shorter than n count as one gram: their whole word sequence (share 1.0 where a row holds it)."""
        toks = words(text)
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

    def overlap(self, text: str, row: int, n: int) -> float:
        """Share of `text`'s distinct n-grams (its whole sequence when shorter than n) found in one row."""
        toks = words(text)
        if not toks:
            return 0.0
        n_eff = min(n, len(toks))
        mine = {tuple(toks[k:k + n_eff]) for k in range(len(toks) - n_eff + 1)}
        theirs = {tuple(self.tokens[row][k:k + n_eff]) for k in range(len(self.tokens[row]) - n_eff + 1)}
        return len(mine & theirs) / len(mine)


# ---------------------------------------------------------------- categories
def categorise(train_row: dict, item: dict, cosine: float, ngram: float, cfg: DecontaminateConfig) -> tuple[str, str]:
    """(category, rule) for one flagged pair; see the module docstring for the rule order."""
    train_text = embedding_text(train_row)
    missing = missing_numbers(item["question"], train_text)
    if missing:
        return "similar_but_different", f"numbers differ: test has {missing} not in train text"
    if ngram >= cfg.verbatim_ngram_overlap:
        return "duplicate", f"near-verbatim: {cfg.ngram_n}-gram overlap {ngram:.2f}, cosine {cosine:.3f}"
    if contains_phrase(train_text, item["question"]):
        return "duplicate", f"verbatim: the whole test question is in the train text, cosine {cosine:.3f}"
    if cosine >= cfg.duplicate_threshold:
        share = word_share(item["question"], train_text)
        if share >= cfg.verbatim_word_share:
            return "duplicate", f"near-verbatim: cosine {cosine:.3f}, {share:.0%} of the test's words in train text"
        return "gray_area", f"same meaning in other words: cosine {cosine:.3f}, {share:.0%} of the test's words"
    if not answer_in_output(item.get("answer") or "", train_row["output"]):
        return "similar_but_different", f"answer differs: test answer {item.get('answer')!r} not in train output"
    return "gray_area", f"reworded, same numbers and answer: cosine {cosine:.3f}"


def answer_verified(train_row: dict, item: dict) -> bool:
    """Detector (c)'s check: the test's numbers are all in the train text and its answer is in the output."""
    return (not missing_numbers(item["question"], embedding_text(train_row))
            and answer_in_output(item.get("answer") or "", train_row["output"]))


@dataclass
class Result:
    clean: list[dict]
    pairs: pd.DataFrame
    table: pd.DataFrame
    summary: dict


def detector_verdicts(cosine: float, ngram: float, answer_match: bool, cfg: DecontaminateConfig) -> dict[str, bool]:
    """Which detectors flag a (train row, test item) pair, from its scores."""
    return {
        "by_embedding": cosine >= cfg.similarity_threshold,
        "by_ngram": ngram >= cfg.ngram_overlap_threshold,
        "by_answer": cfg.answer_detector_threshold is not None and cosine >= cfg.answer_detector_threshold
        and answer_match,
    }


def find_leaks(rows: list[dict], items: list[dict], cfg: DecontaminateConfig, embedder: Embedder) -> Result:
    """Flag every (train row, test item) pair any detector catches, categorise, apply the policy."""
    if not rows:
        raise ValueError("empty training set: nothing to check")
    if not items:
        raise ValueError("no benchmark items: nothing to check against")
    train_texts = [embedding_text(r) for r in rows]
    tests = [test_text(it, cfg.compare) for it in items]
    tr = embedder.encode(train_texts, desc="train rows")
    te = embedder.encode(tests, desc="benchmark items")

    # One blockwise pass at the lower of the two cosine thresholds serves detectors (a) and (c).
    low = cfg.similarity_threshold
    if cfg.answer_detector_threshold is not None:
        low = min(low, cfg.answer_detector_threshold)
    cosines: dict[tuple[int, int], float] = {}
    for ii, jj, ss in pairs_above(tr, te, low, cfg.block_size, desc="train x benchmark"):
        cosines.update(zip(zip(ii.tolist(), jj.tolist()), ss.tolist()))
    log.info("%d pairs at cosine >= %.2f", len(cosines), low)

    ngrams = NgramIndex(train_texts)
    shares: dict[tuple[int, int], float] = {}
    for j, text in enumerate(tests):
        for i, share in ngrams.overlaps(text, cfg.ngram_n, cfg.ngram_min_tokens).items():
            shares[(i, j)] = share
    candidates = set(cosines) | {k for k, v in shares.items() if v >= cfg.ngram_overlap_threshold}

    scores: dict[tuple[int, int], dict] = {}
    for i, j in sorted(candidates):
        cos = cosines[(i, j)] if (i, j) in cosines else float(tr[i] @ te[j])
        ngram = shares.get((i, j), 0.0)
        answer_match = answer_verified(rows[i], items[j])
        verdicts = detector_verdicts(cos, ngram, answer_match, cfg)
        if any(verdicts.values()):
            scores[(i, j)] = {"embedding_cosine": cos, "ngram_overlap": ngram, "answer_match": answer_match, **verdicts}
    n_by = {k: sum(s[k] for s in scores.values()) for k in ("by_embedding", "by_ngram", "by_answer")}
    log.info("detectors: embedding %d pairs (cosine >= %.2f), %d-gram %d pairs (overlap >= %.2f), "
             "answer-verified %d pairs (cosine >= %s)", n_by["by_embedding"], cfg.similarity_threshold, cfg.ngram_n,
             n_by["by_ngram"], cfg.ngram_overlap_threshold, n_by["by_answer"], cfg.answer_detector_threshold)

    records = []
    for (i, j), s in sorted(scores.items()):
        category, rule = categorise(rows[i], items[j], s["embedding_cosine"], s["ngram_overlap"], cfg)
        records.append({
            "train_index": i, "train_source": rows[i]["data_source"], "train_text": train_texts[i],
            "benchmark": items[j]["benchmark"], "subject": items[j].get("subject", ""),
            "test_id": items[j]["item_id"], "test_text": tests[j],
            "embedding_cosine": round(s["embedding_cosine"], 6), "ngram_overlap": round(s["ngram_overlap"], 6),
            "answer_match": s["answer_match"], "by_embedding": s["by_embedding"], "by_ngram": s["by_ngram"],
            "by_answer": s["by_answer"], "category": category, "rule": rule, "action": cfg.actions[category],
        })
    pairs = pd.DataFrame(records, columns=PAIR_COLUMNS)

    # a row is removed if any of its pairs says so; its category is the most severe one
    removed = set(pairs.loc[pairs["action"] == "remove", "train_index"].tolist()) if len(pairs) else set()
    clean = [r for k, r in enumerate(rows) if k not in removed]
    table = contamination_table(pairs, removed)
    summary = {
        "train_rows": len(rows), "benchmark_items": len(items), "flagged_pairs": len(pairs),
        "flagged_rows": int(pairs["train_index"].nunique()) if len(pairs) else 0,
        "removed_rows": len(removed), "clean_rows": len(clean),
        "pairs_by_detector": {
            "embedding": int(pairs["by_embedding"].sum()) if len(pairs) else 0,
            "ngram": int(pairs["by_ngram"].sum()) if len(pairs) else 0,
            "answer": int(pairs["by_answer"].sum()) if len(pairs) else 0,
            "both": int((pairs["by_embedding"] & pairs["by_ngram"]).sum()) if len(pairs) else 0,
            "answer_only": int((pairs["by_answer"] & ~pairs["by_embedding"] & ~pairs["by_ngram"]).sum())
            if len(pairs) else 0,
        },
        "pairs_by_category": {c: int((pairs["category"] == c).sum()) if len(pairs) else 0 for c in CATEGORIES},
        # pairs below the embedding threshold that detector (c) checked (cosine >= answer_detector_threshold)
        "answer_detector_candidates": sum(v < cfg.similarity_threshold for v in cosines.values()),
        "actions": dict(cfg.actions),
    }
    return Result(clean, pairs, table, summary)


def score_pairs(pairs: list[dict], cfg: DecontaminateConfig, embedder: Embedder | None = None,
                cosines: list[float] | None = None) -> pd.DataFrame:
    """Score given (train row, test item) pairs one by one, as find_leaks would score them.

    Each pair is {"train": {instruction, input, output, data_source}, "question", "answer", ...}, as in
    tests/fixtures/contamination_labelled.jsonl. The cosines come from `embedder`, or are given
    (`cosines`, one per pair). Returns one row per pair: cosine, n-gram overlap, answer_match, each
    detector's verdict, category and rule (category "" when no detector flags it). Used to measure
    the detectors on a labelled set (bench/bench_detectors.py).
    """
    train = [embedding_text(p["train"]) for p in pairs]
    tests = [test_text(p, cfg.compare) for p in pairs]
    if cosines is None:
        if embedder is None:
            raise ValueError("score_pairs needs an embedder or the cosines")
        tr = embedder.encode(train, desc="labelled train texts")
        te = embedder.encode(tests, desc="labelled test items")
        cosines = [float(tr[k] @ te[k]) for k in range(len(pairs))]
    out = []
    for k, p in enumerate(pairs):
        cos = float(cosines[k])
        ngram = NgramIndex([train[k]]).overlaps(tests[k], cfg.ngram_n, cfg.ngram_min_tokens).get(0, 0.0)
        answer_match = answer_verified(p["train"], p)
        verdicts = detector_verdicts(cos, ngram, answer_match, cfg)
        category, rule = categorise(p["train"], p, cos, ngram, cfg) if any(verdicts.values()) else ("", "")
        out.append({"embedding_cosine": cos, "ngram_overlap": ngram, "answer_match": answer_match, **verdicts,
                    "category": category, "rule": rule})
    return pd.DataFrame(out)


def contamination_table(pairs: pd.DataFrame, removed: set[int]) -> pd.DataFrame:
    """Training source x benchmark: distinct rows per category (most severe per row and benchmark)
    and rows removed - the paper's Table 1 form."""
    cols = ["data_source", "benchmark", *CATEGORIES, "removed"]
    if pairs.empty:
        return pd.DataFrame(columns=cols)
    worst = (pairs.assign(sev=pairs["category"].map(SEVERITY))
             .sort_values("sev").drop_duplicates(["train_index", "benchmark"]))
    out = []
    for (src, bench), grp in worst.groupby(["train_source", "benchmark"], sort=True):
        row = {"data_source": src, "benchmark": bench}
        for c in CATEGORIES:
            row[c] = int((grp["category"] == c).sum())
        row["removed"] = int(grp["train_index"].isin(removed).sum())
        out.append(row)
    return pd.DataFrame(out, columns=cols)


def load_benchmark_items(cfg: DecontaminateConfig, profile: Profile | None = None) -> tuple[list[dict], Path | None]:
    from .benchmarks import load_benchmark

    bdir = cfg.benchmarks_dir
    if bdir == "demo":
        from .demo_data import demo_benchmarks_dir

        bdir = str(demo_benchmarks_dir(profile))
    items = []
    for name in cfg.benchmarks:
        got = load_benchmark(name, bdir, limit=cfg.limit_per_benchmark)
        log.info("benchmark %s: %d test items", name, len(got))
        items += got
    return items, (None if bdir == "hub" else Path(bdir))


def write_outputs(result: Result, out: Path, fig_dir: Path, table_dir: Path | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [write_jsonl(out / "clean.jsonl", result.clean),
             write_text(out / "flagged_pairs.csv", result.pairs.to_csv(index=False)),
             write_text(out / "contamination_table.csv", result.table.to_csv(index=False)),
             write_json(out / "decontamination_report.json", result.summary)]
    if table_dir is not None:
        table_dir.mkdir(parents=True, exist_ok=True)
        paths.append(write_text(table_dir / "contamination_table.csv", result.table.to_csv(index=False)))
        md = result.table.to_markdown(index=False) if len(result.table) else "_no flagged rows_"
        paths.append(write_text(table_dir / "contamination_table.md", md + "\n"))
    paths += contamination_figure(result, fig_dir / "02_contamination")
    return paths


def contamination_figure(result: Result, stem: Path) -> list[Path]:
    from .plotting import save_figure, style

    plt, sns = style()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    pairs = result.pairs
    if pairs.empty:
        ax.text(0.5, 0.5, "no flagged pairs", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        caption = "No training row was flagged against any benchmark."
    else:
        counts = (pairs.assign(sev=pairs["category"].map(SEVERITY)).sort_values("sev")
                  .drop_duplicates(["train_index", "benchmark"])
                  .groupby(["train_source", "category"]).size().unstack(fill_value=0)
                  .reindex(columns=list(CATEGORIES), fill_value=0))
        counts.plot.barh(stacked=True, ax=ax, color=sns.color_palette("colorblind", 3))
        ax.legend(title="category", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("flagged training rows (most severe category per benchmark)")
        ax.set_ylabel("")
        caption = "Flagged training rows per source and category.\n" + counts.to_string()
    ax.set_title("Benchmark contamination of the training data")
    return save_figure(fig, stem, caption)


def run_decontaminate(profile: Profile) -> dict:
    cfg = profile.decontaminate
    out = profile.run_dir(STAGE)
    train_path = profile.run_dir("01_curate") / "curated.jsonl"
    with StageRun(out, STAGE, profile.fingerprint_params(STAGE)) as run:
        rows, skipped = read_training_rows(train_path)
        run.add_input(train_path)
        items, bdir = load_benchmark_items(cfg, profile)
        if bdir is not None:
            run.add_input(bdir)
        embedder = Embedder(profile.models.embedding, profile.cache_dir())
        with run.timed("detect_s"):
            result = find_leaks(rows, items, cfg, embedder)
        result.summary["skipped_train_rows"] = dict(sorted(skipped.items()))
        for p in write_outputs(result, out, profile.report_dir("figures"), profile.report_dir("tables")):
            run.add_output(p)
        run.metrics.update({k: v for k, v in result.summary.items() if isinstance(v, (int, float))})
        log.info("decontamination: %d pairs flagged, %d rows removed, %d clean rows",
                 result.summary["flagged_pairs"], result.summary["removed_rows"], len(result.clean))
    return result.summary


def read_training_rows(path: str | Path) -> tuple[list[dict], collections.Counter]:
    """Rows of a training set in the Open-Platypus schema (JSON lines, or a .json list), and a Counter of
    the rows skipped by reason (malformed JSON, missing/empty/non-string fields): odd rows are counted,
    not fatal. A missing file, or one with no usable row, is an error naming it."""
    from .config import SourceConfig
    from .sources import load_jsonl

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: training file not found")
    rows, skipped = load_jsonl(SourceConfig(name="jsonl", path=str(path)), None)
    if not rows:
        detail = f"all {sum(skipped.values())} rows unusable: {dict(sorted(skipped.items()))}" if skipped else "no rows"
        raise ValueError(f"{path}: empty training set ({detail})")
    if skipped:
        log.warning("%s: skipped %d rows %s", path, sum(skipped.values()), dict(sorted(skipped.items())))
    return rows, skipped


def check_file(train_file: str | Path, benchmarks_dir: str, out: str | Path, cfg: DecontaminateConfig | None = None,
               embedding_model: str = "embedded:all-minilm-l6-v2", cache_dir: str | Path | None = None) -> dict:
    """Standalone use: check any dataset in the Open-Platypus schema against benchmarks, writing
    clean.jsonl, flagged_pairs.csv, contamination_table.csv, decontamination_report.json and the figure
    into `out`. Rows without data_source are counted under the file's name; odd rows are skipped and
    counted in the report (`skipped_train_rows`)."""
    from .models import default_cache_dir

    cfg = (cfg or DecontaminateConfig()).model_copy(update={"benchmarks_dir": str(benchmarks_dir)})
    rows, skipped = read_training_rows(train_file)
    items, _ = load_benchmark_items(cfg)
    embedder = Embedder(embedding_model, Path(cache_dir) if cache_dir else default_cache_dir())
    result = find_leaks(rows, items, cfg, embedder)
    result.summary["skipped_train_rows"] = dict(sorted(skipped.items()))
    write_outputs(result, Path(out), Path(out))
    return result.summary
