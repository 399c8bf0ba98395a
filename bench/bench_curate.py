"""Benchmark stage 01_curate (prints figures; not a test).

    HF_HUB_OFFLINE=1 nice -n 19 .venv/bin/python bench/bench_curate.py [--sources-dir ../shared/data/sources]
        [--encode-sample 512] [--synthetic-rows 25000 200000] [--naive-rows 5000] [--stage-limit N] [--skip-stage]

1. The real offline sources (MATH, TheoremQA, SciBench, ScienceQA through sources.py): encode rate of
   the embedding model (a sample, into an empty cache), then the similarity pass on all rows (their
   embeddings from the shared cache, encoded there first if absent) beside the naive greedy pass
   the authors' notebook used (each row against the kept set, one at a time).
2. The stage twice on those sources with an empty embedding cache: the first run encodes every
   row, the second finds them all in the cache (the issue's target: at least 10 times faster).
3. Synthetic clustered 384-d embeddings (bench_similarity.synthetic), each size in a fresh
   process: similarity-pass wall and CPU time, peak traced memory (tracemalloc) and peak RSS.

Wall times on a shared machine are pessimistic: the process CPU time is printed beside them
(on an idle 2-core machine wall time is about CPU time / 2 for the BLAS-bound passes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PLATYPUS_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from bench_similarity import naive_greedy, rows_for, synthetic  # noqa: E402

from platypus_utils import curate, sources  # noqa: E402
from platypus_utils.artifacts import sha256_file  # noqa: E402
from platypus_utils.config import Profile, SourceConfig  # noqa: E402
from platypus_utils.embeddings import Embedder, pairs_above  # noqa: E402
from platypus_utils.models import default_cache_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REAL = ("math", "theoremqa", "scibench", "scienceqa")
MODEL = "embedded:all-minilm-l6-v2"


class Timer:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def __str__(self):
        return f"{self.wall:8.2f} s wall {self.cpu:8.2f} s CPU"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def real_sources(sources_dir: Path, limit: int | None) -> list[dict]:
    profile = Profile(name="bench")
    rows = []
    for name in REAL:
        got, skipped = sources.load_source(SourceConfig(name=name, path=str(sources_dir / name), limit=limit), profile)
        print(f"  {name:10} {len(got):6} rows ({sum(skipped.values())} skipped)")
        rows += got
    return rows


def section_real(args) -> None:
    print("== 1. real offline sources")
    rows = real_sources(Path(args.sources_dir), None)
    kept, _ = curate.exact_dedup(rows)
    rows = [rows[i] for i in kept]
    texts = [curate.embedding_text(r) for r in rows]
    print(f"  {len(rows)} rows after exact dedup")

    with tempfile.TemporaryDirectory() as empty:
        cold = Embedder(MODEL, empty, device="cpu")
        cold.encode(["warm-up"])  # model load is not encoding
        sample = texts[:: max(1, len(texts) // args.encode_sample)][: args.encode_sample]
        with Timer() as t:
            cold.encode(sample)
        print(
            f"  encode rate: {len(sample) / t.wall:6.1f} texts/s wall ({len(sample)} texts, {t}; "
            f"mean {np.mean([len(s) for s in sample]):.0f} chars)"
        )

    shared = Embedder(MODEL, args.cache_dir, device="cpu")
    with Timer() as t:
        emb = shared.encode(texts)
    print(f"  all embeddings from the shared cache {args.cache_dir}: {shared.stats} in {t}")

    tracemalloc.start()
    with Timer() as t:
        kept_near, removed = curate.near_dedup(rows, emb, 0.8)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    print(
        f"  similarity pass (blockwise, numpy): {t}; {len(removed)} near-duplicates removed; peak traced {peak:.0f} MB"
    )
    with Timer() as t:
        n_pairs = sum(len(i) for i, _, _ in pairs_above(emb, None, 0.8))
    print(f"  pairs_above alone: {t}; {n_pairs} pairs at cosine >= 0.8")
    m = min(len(emb), args.naive_rows)
    with Timer() as t:
        k_naive = naive_greedy(emb[:m], 0.8)
    print(
        f"  naive greedy (authors' notebook) on the first {m} rows: {t}; kept {k_naive} "
        f"(first-come, not the more verbose: a different rule)"
    )


def section_stage(args) -> None:
    print("\n== 2. the stage twice, empty embedding cache first")
    sources_dir = Path(args.sources_dir)
    with tempfile.TemporaryDirectory() as tmp:
        profile = Profile.model_validate(
            {
                "name": "bench",
                "paths": {"runs_dir": f"{tmp}/runs", "reports_dir": f"{tmp}/reports", "cache_dir": f"{tmp}/cache"},
                "curate": {
                    "sources": [{"name": n, "path": str(sources_dir / n), "limit": args.stage_limit} for n in REAL]
                },
            }
        )
        times, digests = [], []
        for attempt in ("first (encodes)", "second (cache)"):
            with Timer() as t:
                report = curate.run_curate(profile)
            times.append(t.wall)
            digests.append(sha256_file(profile.run_dir("01_curate") / "curated.jsonl"))
            timings = json.loads((profile.run_dir("01_curate") / "manifest.json").read_text()).get("timings", {})
            print(
                f"  {attempt:16} {t}; kept {report['totals']['kept']}; cache {report['embedding_cache']}; "
                f"steps { ({k: round(v, 1) for k, v in timings.items()}) }"
            )
        print(
            f"  speed-up of the second run: {times[0] / times[1]:.1f}x wall; curated.jsonl "
            f"{'byte-identical' if digests[0] == digests[1] else 'DIFFERS'} across the two runs"
        )


def synthetic_child(n: int, block_size: int) -> None:
    emb, rows = synthetic(n), rows_for(n)
    base_rss = rss_mb()
    tracemalloc.start()
    with Timer() as t:
        kept, removed = curate.near_dedup(rows, emb, 0.8, block_size)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    print(
        json.dumps(
            {
                "rows": n,
                "wall_s": t.wall,
                "cpu_s": t.cpu,
                "kept": len(kept),
                "removed": len(removed),
                "peak_traced_mb": peak,
                "embeddings_mb": emb.nbytes / 2**20,
                "rss_before_mb": base_rss,
                "peak_rss_mb": rss_mb(),
            }
        )
    )


def section_synthetic(args) -> None:
    print("\n== 3. synthetic clustered embeddings (384-d, 10% near-duplicates), one process per size")
    print(f"  {'rows':>8} {'wall s':>8} {'CPU s':>8} {'kept':>8} {'traced MB':>10} {'emb MB':>8} {'peak RSS MB':>12}")
    for n in args.synthetic_rows:
        out = subprocess.run(
            [sys.executable, __file__, "--synthetic-child", str(n), "--block-size", str(args.block_size)],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"  {r['rows']:>8} {r['wall_s']:>8.1f} {r['cpu_s']:>8.1f} {r['kept']:>8} {r['peak_traced_mb']:>10.0f} "
            f"{r['embeddings_mb']:>8.0f} {r['peak_rss_mb']:>12.0f}"
        )
    m = args.naive_rows
    emb = synthetic(m)
    with Timer() as t:
        naive_greedy(emb, 0.8)
    print(f"  naive greedy on {m} synthetic rows: {t} (quadratic: x{(25_000 / m) ** 2:.0f} for 25k rows)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sources-dir", default=str(ROOT.parent / "shared" / "data" / "sources"))
    ap.add_argument("--cache-dir", default=str(default_cache_dir()))
    ap.add_argument("--encode-sample", type=int, default=512)
    ap.add_argument("--naive-rows", type=int, default=5000)
    ap.add_argument("--synthetic-rows", type=int, nargs="*", default=[25_000, 200_000])
    ap.add_argument("--block-size", type=int, default=2048)
    ap.add_argument("--stage-limit", type=int, default=None, help="rows per source in the stage runs (default: all)")
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--skip-stage", action="store_true")
    ap.add_argument("--synthetic-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.synthetic_child:
        synthetic_child(args.synthetic_child, args.block_size)
        return
    if not args.skip_real:
        section_real(args)
    if not args.skip_stage:
        section_stage(args)
    if args.synthetic_rows:
        section_synthetic(args)
    print(f"\npeak RSS of this process: {rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
