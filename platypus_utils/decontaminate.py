"""Stage 02_decontaminate: find training rows that leak benchmark test questions.

Two detectors, each reported on its own and combined:
  * embedding similarity, the paper's way (all-MiniLM-L6-v2, cosine >= 0.8), flagging
    *every* training row above the threshold, not only the most similar one (the
    authors' code kept near-copies of the row it removed);
  * n-gram overlap on normalised words (13-grams as GPT-3 and lm-eval), which catches
    long verbatim passages the embedding of a short prefix can miss.
Each flagged (train row, test item) pair is put in a category by explicit rules, in
this order, and the rule that decided is written beside it:
  1. similar_but_different - the numbers in the test question are not all in the train
     text (same shape, other numbers), or the test answer is not in the train output;
  2. duplicate - near-verbatim: cosine >= duplicate_threshold or n-gram overlap >= verbatim_ngram_overlap;
  3. gray_area - reworded, but same numbers and the test answer appears in the train output.
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

from .artifacts import StageRun, read_jsonl, write_json, write_jsonl, write_text
from .config import DecontaminateConfig, Profile
from .curate import FIELDS, embedding_text, normalise_text
from .embeddings import Embedder, pairs_above

log = logging.getLogger("platypus")
STAGE = "02_decontaminate"
CATEGORIES = ("duplicate", "gray_area", "similar_but_different")
SEVERITY = {c: k for k, c in enumerate(CATEGORIES)}  # lower is more severe
PAIR_COLUMNS = ["train_index", "train_source", "train_text", "benchmark", "subject", "test_id", "test_text",
                "embedding_cosine", "ngram_overlap", "category", "rule", "action"]
_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*")
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(normalise_text(text))


def numbers(text: str) -> collections.Counter:
    return collections.Counter(n.replace(",", "") for n in _NUMBER.findall(text))


def test_text(item: dict, compare: str) -> str:
    if compare == "question_choices":
        return item["question"] + " " + " ".join(item.get("choices") or [])
    if compare == "question_answer":
        return item["question"] + " " + (item.get("answer") or "")
    return item["question"]


# ---------------------------------------------------------------- n-gram detector
class NgramIndex:
    """Training rows indexed by hashed word n-grams, for one or more n."""

    def __init__(self, train_texts: list[str]):
        self.tokens = [words(t) for t in train_texts]
        self._index: dict[int, dict[int, list[int]]] = {}

    def _grams(self, toks: list[str], n: int) -> set[int]:
        return {hash(tuple(toks[k:k + n])) for k in range(len(toks) - n + 1)}

    def index(self, n: int) -> dict[int, list[int]]:
        if n not in self._index:
            idx: dict[int, list[int]] = collections.defaultdict(list)
            for row, toks in enumerate(self.tokens):
                for g in self._grams(toks, n):
                    idx[g].append(row)
            self._index[n] = idx
        return self._index[n]

    def overlaps(self, text: str, n: int, min_tokens: int) -> dict[int, float]:
        """Share of `text`'s n-grams found in each training row (rows with any hit only).
        Texts shorter than n use their whole word sequence as the one gram."""
        toks = words(text)
        if len(toks) < min_tokens:
            return {}
        n_eff = min(n, len(toks))
        grams = self._grams(toks, n_eff)
        idx = self.index(n_eff)
        hits: collections.Counter = collections.Counter()
        for g in grams:
            for row in set(idx.get(g, ())):
                hits[row] += 1
        return {row: c / len(grams) for row, c in hits.items()}

    def overlap(self, text: str, row: int, n: int) -> float:
        toks = words(text)
        if not toks:
            return 0.0
        n_eff = min(n, len(toks))
        grams = self._grams(toks, n_eff)
        return len(grams & self._grams(self.tokens[row], n_eff)) / len(grams)


# ---------------------------------------------------------------- categories
def categorise(train_row: dict, item: dict, cosine: float, ngram: float, cfg: DecontaminateConfig) -> tuple[str, str]:
    """(category, rule) for one flagged pair; see the module docstring for the rule order."""
    train_text = embedding_text(train_row)
    want, have = numbers(item["question"]), numbers(train_text)
    missing = want - have
    if missing:
        return "similar_but_different", f"numbers differ: test has {sorted(missing)} not in train text"
    if cosine >= cfg.duplicate_threshold or ngram >= cfg.verbatim_ngram_overlap:
        return "duplicate", f"near-verbatim: cosine {cosine:.3f}, {cfg.ngram_n}-gram overlap {ngram:.2f}"
    answer = normalise_text(item.get("answer") or "")
    output = normalise_text(train_row["output"])
    if answer and not re.search(r"(?<!\w)" + re.escape(answer) + r"(?!\w)", output):
        return "similar_but_different", f"answer differs: test answer {item.get('answer')!r} not in train output"
    return "gray_area", f"reworded, same numbers and answer: cosine {cosine:.3f}"


@dataclass
class Result:
    clean: list[dict]
    pairs: pd.DataFrame
    table: pd.DataFrame
    summary: dict


def find_leaks(rows: list[dict], items: list[dict], cfg: DecontaminateConfig, embedder: Embedder) -> Result:
    """Flag every (train row, test item) pair either detector catches, categorise, apply the policy."""
    if not rows:
        raise ValueError("empty training set: nothing to check")
    train_texts = [embedding_text(r) for r in rows]
    tests = [test_text(it, cfg.compare) for it in items]
    tr = embedder.encode(train_texts, desc="train rows")
    te = embedder.encode(tests, desc="benchmark items")

    scores: dict[tuple[int, int], dict] = {}
    for ii, jj, ss in pairs_above(tr, te, cfg.similarity_threshold, cfg.block_size, desc="train x benchmark"):
        for i, j, s in zip(ii.tolist(), jj.tolist(), ss.tolist()):
            scores[(i, j)] = {"embedding_cosine": float(s), "by_embedding": True, "by_ngram": False}
    log.info("embedding detector: %d pairs at cosine >= %.2f", len(scores), cfg.similarity_threshold)

    ngrams = NgramIndex(train_texts)
    n_ngram = 0
    for j, text in enumerate(tests):
        for i, share in ngrams.overlaps(text, cfg.ngram_n, cfg.ngram_min_tokens).items():
            entry = scores.get((i, j))
            if share >= cfg.ngram_overlap_threshold:
                n_ngram += 1
                if entry is None:
                    entry = scores[(i, j)] = {"embedding_cosine": float(tr[i] @ te[j]), "by_embedding": False}
                entry["by_ngram"] = True
            if entry is not None:
                entry["ngram_overlap"] = share
    log.info("n-gram detector: %d pairs with %d-gram overlap >= %.2f", n_ngram, cfg.ngram_n,
             cfg.ngram_overlap_threshold)

    records = []
    for (i, j), s in sorted(scores.items()):
        ngram = s.get("ngram_overlap", 0.0)
        category, rule = categorise(rows[i], items[j], s["embedding_cosine"], ngram, cfg)
        records.append({
            "train_index": i, "train_source": rows[i]["data_source"], "train_text": train_texts[i],
            "benchmark": items[j]["benchmark"], "subject": items[j].get("subject", ""),
            "test_id": items[j]["item_id"], "test_text": tests[j],
            "embedding_cosine": round(s["embedding_cosine"], 6), "ngram_overlap": round(ngram, 6),
            "by_embedding": s["by_embedding"], "by_ngram": s["by_ngram"],
            "category": category, "rule": rule, "action": cfg.actions[category],
        })
    pairs = pd.DataFrame(records, columns=PAIR_COLUMNS[:9] + ["by_embedding", "by_ngram"] + PAIR_COLUMNS[9:])

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
            "both": int((pairs["by_embedding"] & pairs["by_ngram"]).sum()) if len(pairs) else 0,
        },
        "pairs_by_category": {c: int((pairs["category"] == c).sum()) if len(pairs) else 0 for c in CATEGORIES},
        "actions": dict(cfg.actions),
    }
    return Result(clean, pairs, table, summary)


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
        rows = read_jsonl(train_path)
        run.add_input(train_path)
        items, bdir = load_benchmark_items(cfg, profile)
        if bdir is not None:
            run.add_input(bdir)
        embedder = Embedder(profile.models.embedding, profile.cache_dir())
        with run.timed("detect_s"):
            result = find_leaks(rows, items, cfg, embedder)
        for p in write_outputs(result, out, profile.report_dir("figures"), profile.report_dir("tables")):
            run.add_output(p)
        run.metrics.update({k: v for k, v in result.summary.items() if isinstance(v, (int, float))})
        log.info("decontamination: %d pairs flagged, %d rows removed, %d clean rows",
                 result.summary["flagged_pairs"], result.summary["removed_rows"], len(result.clean))
    return result.summary


def check_file(train_file: str | Path, benchmarks_dir: str, out: str | Path, cfg: DecontaminateConfig | None = None,
               embedding_model: str = "embedded:all-minilm-l6-v2", cache_dir: str | Path | None = None) -> dict:
    """Standalone use: check any dataset in the Open-Platypus schema against benchmarks."""
    from .models import default_cache_dir

    cfg = (cfg or DecontaminateConfig()).model_copy(update={"benchmarks_dir": str(benchmarks_dir)})
    rows = read_jsonl(train_file)
    bad = [k for k, r in enumerate(rows, 1) if not all(isinstance(r.get(f), str) for f in FIELDS[:3])]
    if bad:
        raise ValueError(f"{train_file}: rows {bad[:10]} lack string instruction/input/output fields")
    for r in rows:
        r.setdefault("data_source", "unknown")
    items, _ = load_benchmark_items(cfg)
    embedder = Embedder(embedding_model, Path(cache_dir) if cache_dir else default_cache_dir())
    result = find_leaks(rows, items, cfg, embedder)
    write_outputs(result, Path(out), Path(out))
    return result.summary
