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
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PLATYPUS_PROGRESS", "0")

import numpy as np  # noqa: E402

from platypus_utils.config import DecontaminateConfig  # noqa: E402
from platypus_utils.decontaminate import find_leaks  # noqa: E402
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
    cfg = DecontaminateConfig()
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=25_000)
    ap.add_argument("--items", type=int, default=26_000)
    ap.add_argument("--real", action="store_true")
    ap.add_argument("--trace-memory", action="store_true", help="a second, traced pass for peak Python memory")
    args = ap.parse_args()
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
