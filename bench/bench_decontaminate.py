"""Benchmark stage 02_decontaminate's detection once embedded (prints figures; not a test).

    nice -n 19 .venv/bin/python bench/bench_decontaminate.py [--train 25000] [--items 26000] [--real]

Synthetic: `--train` training rows (MATH-like word sequences, 40-160 words) against `--items` benchmark
items (15-60 words, the size of the four leaderboard test sets together: ~26k), with planted leaks
(verbatim copies, rewordings at cosine ~0.7, same-shape pairs with other numbers). Embeddings are
synthetic 384-d vectors handed over by a stand-in embedder, so the figures are for detection "once
embedded": the blockwise similarity pass for detectors (a) and (c), the 13-gram index and lookups (b),
answer checks and categorisation, and building the tables. The issue's target: under 2 minutes on
2 CPU cores.

--real: the real offline sources (after exact dedup) against the real benchmarks in
../shared/data/benchmarks, with embeddings from the shared cache (encoded first where missing, which
takes minutes of CPU the first time).

The first pass (decontaminate.candidates: first_pass), issue 24:

    nice -n 19 .venv/bin/python bench/bench_decontaminate.py --recall [--rows 1000]
    nice -n 19 .venv/bin/python bench/bench_decontaminate.py --cold 1000

--recall: the share of the pairs the exhaustive pass flags that the first pass keeps, on the demo, on the
labelled pairs (tests/fixtures/contamination_labelled.jsonl) and on `--rows` rows of the real offline
sources, with MiniLM's cosines and the judge (the stage's defaults). The first pass always searches the
whole of ../shared/data/benchmarks (and the labelled items); the exhaustive pass it is compared with reads
the STEM subjects of MMLU and ARC (~3.9k of the 26k items, where the sources' flagged pairs are: embedding
all 60k views takes most of an hour on 2 busy cores), so the recall printed is over the flagged pairs of
those items. Printed per setting of first_pass_top_k: the items the first pass reads (its cost) and the
recall, as the stage has it (an item read for any row counts for every row) and per row (the item among
that row's own neighbours: a lower bound that does not grow with the training set).

--encoders: MiniLM's texts/s with PyTorch and with OpenVINO (models.embedding_backend; bf16 on a CPU with
bfloat16 units), and each backend's largest cosine difference from PyTorch fp32 on the labelled pairs.

--cold N: `platypus decontaminate` (check_file) of N real rows against the whole benchmarks folder with an
empty embedding cache: wall time, items read, texts embedded (the issue's target: 1,000 rows in 2 minutes
on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import sys
import tempfile
import time
import tracemalloc
import zlib
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PLATYPUS_PROGRESS", "0")

import numpy as np  # noqa: E402

from platypus_utils.config import DecontaminateConfig  # noqa: E402
from platypus_utils.decontaminate.stage import detect as find_leaks  # noqa: E402
from platypus_utils.embeddings import normalise  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class TableEmbedder:
    """Returns precomputed vectors for known texts (the detection is what is timed, not the encoder)."""

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table
        self.dim = len(next(iter(table.values())))

    def _other(self, text: str) -> np.ndarray:
        """A text the synthetic set did not plant (outputs, other views): a random unit vector seeded by
        the text, so unplanted texts are unrelated to each other, as real sentences mostly are."""
        v = np.random.default_rng(zlib.crc32(text.encode())).standard_normal(self.dim)
        return v / np.linalg.norm(v)

    def encode(self, texts, desc=""):
        return np.stack([self.table[t] if t in self.table else self._other(t) for t in texts]).astype(np.float32)


def synthetic(n_train: int, n_items: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = np.array(["".join(letters[rng.integers(0, 26, size=rng.integers(2, 9))]) for _ in range(20_000)])
    dim = 384

    def sentence(lo, hi):
        words = vocab[rng.zipf(1.3, size=rng.integers(lo, hi)) % len(vocab)]
        nums = rng.integers(0, 1000, size=3).astype(str)
        return " ".join(words[: len(words) // 2]) + f" {nums[0]} " + " ".join(words[len(words) // 2 :]) + f" {nums[1]}?"

    items = [
        {
            "benchmark": ("mmlu", "arc_challenge", "hellaswag", "truthfulqa")[k % 4],
            "subject": "s",
            "item_id": f"item/{k}",
            "question": sentence(15, 60),
            "choices": [],
            "answer": str(rng.integers(0, 100)),
        }
        for k in range(n_items)
    ]
    rows = [
        {
            "instruction": sentence(40, 160),
            "input": "",
            "output": f"so the answer is {rng.integers(0, 100)}",
            "data_source": ("MATH", "theoremqa", "scibench", "scienceqa")[k % 4],
        }
        for k in range(n_train)
    ]
    table: dict[str, np.ndarray] = {}
    for it in items:
        table[it["question"]] = rng.standard_normal(dim).astype(np.float32)
    n_leak = max(3, n_train // 500)
    planted = rng.choice(n_items, size=3 * n_leak, replace=False)
    leaked_rows = rng.choice(n_train, size=3 * n_leak, replace=False)
    for k, (j, i) in enumerate(zip(planted, leaked_rows)):
        it, q = items[j], items[j]["question"]
        if k % 3 == 0:  # verbatim copy
            rows[i] = {**rows[i], "instruction": "Solve: " + q, "output": f"the answer is {it['answer']}"}
        elif k % 3 == 1:  # rewording: different words, near vector, same numbers and answer
            nums = " ".join(n for n in q.replace("?", "").split() if n.isdigit())
            rows[i] = {**rows[i], "instruction": f"reworded {k} {nums}", "output": f"the answer is {it['answer']}"}
        else:  # same shape, other numbers
            rows[i] = {**rows[i], "instruction": f"other numbers {k} 9999 8888", "output": "the answer is -1"}
    for r in rows:
        t = (r["instruction"] + " " + r["input"]).strip()
        if t not in table:
            table[t] = rng.standard_normal(dim).astype(np.float32)
    for k, (j, i) in enumerate(zip(planted, leaked_rows)):  # near vectors: verbatim ~0.99, others ~0.7-0.9
        key = (rows[i]["instruction"] + " " + rows[i]["input"]).strip()
        noise = (0.1, 0.9, 0.6)[k % 3]
        table[key] = table[items[j]["question"]] + noise * rng.standard_normal(dim).astype(np.float32) * np.linalg.norm(
            table[items[j]["question"]]
        ) / np.sqrt(dim)
    table = {k: normalise(v[None])[0] for k, v in table.items()}
    return rows, items, table, n_leak


def run(rows, items, embedder, label: str, trace_memory: bool) -> None:
    cfg = DecontaminateConfig(candidates="exhaustive")  # detection once embedded, every item read
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t, c = time.perf_counter(), time.process_time()
    result = find_leaks(rows, items, cfg, embedder)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    s = result.summary
    print(f"{label}: {len(rows)} training rows x {len(items)} benchmark items")
    print(
        f"  detection once embedded: {wall:.1f} s wall, {cpu:.1f} s CPU; peak RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB (before: {rss_before:.0f} MB)"
    )
    print(
        f"  flagged pairs {s['flagged_pairs']} {s['pairs_by_detector']}; by category {s['pairs_by_category']}; "
        f"removed rows {s['removed_rows']}; pairs checked by (c) below the embedding threshold: "
        f"{s['answer_detector_candidates']}"
    )
    if trace_memory:  # a second pass: tracemalloc slows Python code two- to threefold, so not in the timing
        tracemalloc.start()
        find_leaks(rows, items, cfg, embedder)
        print(f"  peak traced memory of the detection: {tracemalloc.get_traced_memory()[1] / 2**20:.0f} MB")
        tracemalloc.stop()


DATA = ROOT.parent / "shared" / "data"
STEM = re.compile("math|physics|chemistry|statistics|computer|algebra|astronomy|electrical|econometrics|machine")
KS = (1, 2, 3, 5, 10, 20, 50)


def real_rows(n: int | None = None, seed: int = 0) -> list[dict]:
    """The real offline sources after exact dedup (as --real reads them); `n` of them drawn with `seed`."""
    from platypus_utils import curate, sources
    from platypus_utils.config import Profile, SourceConfig

    real = []
    for name in ("math", "theoremqa", "scibench", "scienceqa"):
        source = SourceConfig(name=name, path=str(DATA / "sources" / name))
        real += sources.load_source(source, Profile(name="b"))[0]
    real = [real[i] for i in curate.exact_dedup(real)[0]]
    return real if n is None else [real[i] for i in sorted(random.Random(seed).sample(range(len(real)), n))]


def labelled() -> tuple[list[dict], list[dict]]:
    """The labelled pairs as training rows and benchmark items (one of each per pair)."""
    pairs = [json.loads(x) for x in (ROOT / "tests" / "fixtures" / "contamination_labelled.jsonl").open()]
    rows = [{"input": "", **p["train"]} for p in pairs]
    items = [
        {"subject": "", "choices": [], "item_id": p["id"], **{k: v for k, v in p.items() if k != "train"}}
        for p in pairs
    ]
    return rows, items


def flagged_ids(result) -> set[tuple[int, str, str]]:
    return {(int(p.train_index), str(p.test_id), str(p.action)) for p in result.pairs.itertuples()}


def share(kept: list[bool]) -> str:
    return f"{sum(kept) / len(kept):.2%} ({sum(kept)}/{len(kept)})" if kept else "-"


def first_pass_recall(rows, items, flagged, cfg, embedder) -> None:
    """Print, per first_pass_top_k, the items the first pass reads for `rows` among `items` (each window's k
    nearest by words and by static vectors, and the n-gram hits) and the share of `flagged` ((row, item_id,
    action) triples) it keeps: as the stage reads them, and per row; all flagged pairs, and those removed."""
    from platypus_utils.decontaminate.candidates import FirstPassIndex, ngram_items, top_items, with_twins
    from platypus_utils.decontaminate.embed import ngram_texts
    from platypus_utils.decontaminate.static import top_items_static
    from platypus_utils.decontaminate.textmatch import gram_words
    from platypus_utils.decontaminate.views import item_views, train_windows

    t = time.perf_counter()
    views, windows = item_views(items, cfg), train_windows(rows, cfg, embedder)
    first = FirstPassIndex.build(views["text"].tolist(), embedder)
    view_item, texts = views["item"].to_numpy(), windows["text"].tolist()
    by_words = top_items(first.lexical, view_item, [gram_words(x) for x in texts], max(KS))
    by_static = top_items_static(first.static, view_item, embedder, texts, max(KS))
    grams = ngram_items(ngram_texts(rows, cfg), views, first.tokens, cfg)
    print(f"  first pass over {len(items)} items, {len(windows)} windows: {time.perf_counter() - t:.1f} s")
    ids = [it["item_id"] for it in items]
    win_row = windows["row"].to_numpy()
    gram_ids, at = {ids[j] for j in grams}, {i: j for j, i in enumerate(ids)}
    for k in KS:
        own: dict[int, set] = {}
        for r, a, b in zip(win_row.tolist(), by_words, by_static):
            own.setdefault(r, set()).update(ids[j] for j in (*a[:k].tolist(), *b[:k].tolist()))
        union = {ids[j] for j in with_twins({at[i] for i in set().union(*own.values())}, views)} | gram_ids
        kept = [j in union for _, j, _ in flagged]
        kept_row = [j in own.get(i, set()) or j in gram_ids for i, j, _ in flagged]
        removed = [ok for ok, (_, _, action) in zip(kept, flagged) if action == "remove"]
        print(
            f"  top {k:>2}: reads {len(union):>5} of {len(items)} items; keeps {share(kept)} of the flagged pairs "
            f"(per row {share(kept_row)}), {share(removed)} of those removed"
        )


def recall(n_rows: int) -> None:
    """--recall: exhaustive vs first pass on the demo, the labelled pairs and n_rows real rows."""
    from platypus_utils.benchmarks import load_benchmark
    from platypus_utils.decontaminate.inputs import load_benchmark_items
    from platypus_utils.decontaminate.stage import detect
    from platypus_utils.demo_data import demo_corpus_rows, write_demo_benchmarks
    from platypus_utils.embeddings import Embedder
    from platypus_utils.models import default_cache_dir

    embedder = Embedder("embedded:all-minilm-l6-v2", default_cache_dir(), device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = DecontaminateConfig(benchmarks_dir=str(write_demo_benchmarks(Path(tmp) / "b")))
        items, _ = load_benchmark_items(cfg)
        full = detect(demo_corpus_rows(), items, cfg.model_copy(update={"candidates": "exhaustive"}), embedder)
        first = detect(demo_corpus_rows(), items, cfg, embedder)
    same = flagged_ids(first) == flagged_ids(full) and first.summary["removed_rows"] == full.summary["removed_rows"]
    print(f"demo: {len(full.pairs)} pairs flagged exhaustively; first pass (defaults): same pairs and removals: {same}")
    bench = [
        it
        for b in ("arc_challenge", "hellaswag", "mmlu", "truthfulqa")
        for it in load_benchmark(b, DATA / "benchmarks")
    ]
    stem = [it for it in bench if it["benchmark"] == "arc_challenge" or STEM.search(it.get("subject") or "")]
    cfg = DecontaminateConfig(benchmarks_dir=str(DATA / "benchmarks"))
    for label, rows, extra in (("labelled pairs", *labelled()), (f"{n_rows} real rows", real_rows(n_rows), [])):
        t = time.perf_counter()
        full = detect(rows, extra + stem, cfg.model_copy(update={"candidates": "exhaustive"}), embedder)
        print(
            f"{label}: exhaustive over {len(extra + stem)} items in {time.perf_counter() - t:.0f} s: {len(full.pairs)} flagged pairs"
        )
        first_pass_recall(rows, extra + bench, flagged_ids(full), cfg, embedder)


def cold(n_rows: int) -> None:
    """--cold: the standalone command's work on n_rows real rows, empty embedding cache."""
    from platypus_utils.decontaminate.inputs import load_benchmark_items
    from platypus_utils.decontaminate.stage import detect
    from platypus_utils.embeddings import Embedder

    rows = real_rows(n_rows)
    cfg = DecontaminateConfig(benchmarks_dir=str(DATA / "benchmarks"))
    for candidates in ("first_pass",):
        with tempfile.TemporaryDirectory() as cache:
            t, timings = time.perf_counter(), {}
            items, _ = load_benchmark_items(cfg)
            embedder = Embedder("embedded:all-minilm-l6-v2", cache, device="cpu")
            result = detect(rows, items, cfg.model_copy(update={"candidates": candidates}), embedder, timings)
            wall = time.perf_counter() - t
            sample = [it["question"] for it in random.Random(0).sample(items, 512)]
            t = time.perf_counter()  # the encoder alone (each call's texts sorted by length)
            embedder._encode(sample)
            rate = len(sample) / (time.perf_counter() - t)
        s = result.summary
        print(
            f"cold {candidates}: {len(rows)} rows x {len(items)} items in {wall:.0f} s wall (empty cache, model load "
            f"included; steps { ({k: round(v) for k, v in timings.items()}) }); texts embedded {embedder.stats['encoded']}; "
            f"flagged {s['flagged_pairs']}, removed {s['removed_rows']}; MiniLM ({embedder.backend}, CPU) {rate:.0f} texts/s on "
            f"512 test questions; load average {os.getloadavg()[0]:.1f}"
        )


def encoders() -> None:
    """--encoders: MiniLM's texts/s with each backend (models.embedding_backend) on 512 test questions, and how far
    each backend's cosines are from PyTorch fp32's on every labelled pair (training row against its test item)."""
    from platypus_utils.embeddings import Embedder

    pairs = [json.loads(x) for x in (ROOT / "tests" / "fixtures" / "contamination_labelled.jsonl").open()]
    rows = [(p["train"]["instruction"] + " " + p["train"].get("input", "")).strip() for p in pairs]
    items = [p["question"] for p in pairs]
    sample = [it["question"] for it in random.Random(0).sample(real_items(), 512)]
    cos = {}
    for backend in ("torch", "openvino"):
        with tempfile.TemporaryDirectory() as cache:
            e = Embedder("embedded:all-minilm-l6-v2", cache, device="cpu", backend=backend)
            e._encode(sample[:8])  # model load and (OpenVINO) compile
            t = time.perf_counter()
            e._encode(sample)
            rate = len(sample) / (time.perf_counter() - t)
            cos[backend] = (e.encode(rows) * e.encode(items)).sum(1)
        diff = np.abs(cos[backend] - cos["torch"])
        print(
            f"{e.backend}: {rate:.0f} texts/s on 512 test questions (load average {os.getloadavg()[0]:.1f}); "
            f"labelled pairs ({len(pairs)}): |cosine - PyTorch's| max {diff.max():.4f}, mean {diff.mean():.5f}"
        )


def real_items() -> list[dict]:
    from platypus_utils.benchmarks import load_benchmark

    return [it for b in ("arc_challenge", "mmlu") for it in load_benchmark(b, DATA / "benchmarks")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=25_000)
    ap.add_argument("--items", type=int, default=26_000)
    ap.add_argument("--real", action="store_true")
    ap.add_argument("--trace-memory", action="store_true", help="a second, traced pass for peak Python memory")
    ap.add_argument("--recall", action="store_true", help="the first pass's recall against the exhaustive pass")
    ap.add_argument("--rows", type=int, default=1000, help="real rows for --recall")
    ap.add_argument("--cold", type=int, default=0, metavar="N", help="a cold run of N real rows, empty cache")
    ap.add_argument("--encoders", action="store_true", help="texts/s and cosines of each embedding backend")
    args = ap.parse_args()
    if args.recall or args.cold or args.encoders:
        if args.encoders:
            encoders()
        if args.recall:
            recall(args.rows)
        if args.cold:
            cold(args.cold)
        return
    t = time.perf_counter()
    rows, items, table, n_leak = synthetic(args.train, args.items)
    print(
        f"synthetic data built in {time.perf_counter() - t:.1f} s; planted {n_leak} verbatim, {n_leak} reworded, "
        f"{n_leak} other-number pairs"
    )
    run(rows, items, TableEmbedder(table), "synthetic", args.trace_memory)
    if args.real:
        from platypus_utils import curate, sources
        from platypus_utils.benchmarks import load_benchmark
        from platypus_utils.config import Profile, SourceConfig
        from platypus_utils.embeddings import Embedder
        from platypus_utils.models import default_cache_dir

        data = ROOT.parent / "shared" / "data"
        real = []
        for name in ("math", "theoremqa", "scibench", "scienceqa"):
            real += sources.load_source(SourceConfig(name=name, path=str(data / "sources" / name)), Profile(name="b"))[
                0
            ]
        real = [real[i] for i in curate.exact_dedup(real)[0]]
        bench = [
            it
            for name in ("arc_challenge", "hellaswag", "mmlu", "truthfulqa")
            for it in load_benchmark(name, data / "benchmarks")
        ]
        embedder = Embedder("embedded:all-minilm-l6-v2", default_cache_dir(), device="cpu")
        t = time.perf_counter()
        embedder.encode([curate.embedding_text(r) for r in real])
        embedder.encode([it["question"] for it in bench])
        print(f"real embeddings ready in {time.perf_counter() - t:.1f} s ({embedder.stats})")
        run(real, bench, embedder, "real offline sources vs leaderboard test sets", args.trace_memory)


if __name__ == "__main__":
    sys.exit(main())
