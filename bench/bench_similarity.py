"""Benchmark the similarity passes of 01_curate and 02_decontaminate (prints figures; not a test).

    .venv/bin/python bench/bench_similarity.py [--rows 25000 200000] [--naive-rows 5000]

Synthetic, clustered, L2-normalised 384-d embeddings (all-MiniLM-L6-v2's width), so that a
share of rows have near-duplicates. Reports the blockwise pass time and peak memory, beside a
naive greedy pass (each row compared with the kept set one at a time, as the authors' notebook
did) on the same rows.
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import numpy as np

from platypus_utils.curate import near_dedup
from platypus_utils.embeddings import normalise, pairs_above


def synthetic(n: int, dim: int = 384, dup_share: float = 0.1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    k = int(n * dup_share)
    src = rng.integers(0, n - k, size=k)
    x[n - k :] = x[src] + 0.3 * rng.standard_normal((k, dim), dtype=np.float32)  # cosine ~0.95
    return normalise(x[rng.permutation(n)])


def rows_for(n: int) -> list[dict]:
    return [{"instruction": f"q{i}", "input": "", "output": "x" * (i % 97), "data_source": "s"} for i in range(n)]


def naive_greedy(emb: np.ndarray, threshold: float) -> int:
    kept: list[int] = []
    for i in range(len(emb)):
        if not kept or float((emb[kept] @ emb[i]).max()) < threshold:
            kept.append(i)
    return len(kept)


def kernel_pass(emb: np.ndarray, threshold: float, block_size: int, kernel: str) -> int:
    """The self-similarity pass over upper-triangle tiles with numpy or torch matmul; returns the pair count."""
    if kernel == "torch":
        import torch

        x = torch.from_numpy(emb)
        hits = 0
        for i0 in range(0, len(emb), block_size):
            for j0 in range(i0, len(emb), block_size):
                tile = x[i0 : i0 + block_size] @ x[j0 : j0 + block_size].T
                idx = torch.nonzero(tile >= threshold)
                hits += int((idx[:, 0] + i0 < idx[:, 1] + j0).sum())
        return hits
    if kernel == "faiss":
        return sum(len(i) for i, _, _ in pairs_above(emb, None, threshold, block_size, backend="faiss"))
    return sum(len(i) for i, _, _ in pairs_above(emb, None, threshold, block_size))


def compare_kernels(n: int, threshold: float) -> None:
    """numpy vs torch matmul (and faiss when installed), float32, several tile sizes, upper triangle only."""
    from platypus_utils.embeddings import faiss_available

    emb = synthetic(n)
    kernels = ["numpy", "torch"] + (["faiss"] if faiss_available() else [])
    print(f"{n} rows, 384-d float32, threshold {threshold}: kernel, tile, wall s, CPU s, pairs")
    for kernel in kernels:
        for bs in (1024, 2048, 4096):
            t, c = time.perf_counter(), time.process_time()
            hits = kernel_pass(emb, threshold, bs, kernel)
            print(f"  {kernel:6} {bs:5} {time.perf_counter() - t:8.2f} {time.process_time() - c:8.2f} {hits:8}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[25_000, 200_000])
    ap.add_argument("--naive-rows", type=int, default=5_000)
    ap.add_argument("--block-size", type=int, default=2048)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--kernels", type=int, metavar="ROWS", help="only compare numpy/torch/faiss and tile sizes on ROWS")
    args = ap.parse_args()
    if args.kernels:
        compare_kernels(args.kernels, args.threshold)
        return
    print(f"{'rows':>8} {'pass':<28} {'seconds':>9} {'kept':>8} {'peak traced MB':>15}")
    for n in args.rows:
        emb, rows = synthetic(n), rows_for(n)
        tracemalloc.start()
        t = time.perf_counter()
        kept, _ = near_dedup(rows, emb, args.threshold, args.block_size)
        dt = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        print(f"{n:>8} {'blockwise near_dedup':<28} {dt:>9.2f} {len(kept):>8} {peak:>15.1f}")
        t = time.perf_counter()
        hits = sum(len(i) for i, _, _ in pairs_above(emb, None, args.threshold, args.block_size))
        print(f"{n:>8} {'pairs_above only':<28} {time.perf_counter() - t:>9.2f} {hits:>8} {'':>15}")
        m = min(n, args.naive_rows)
        t = time.perf_counter()
        k_naive = naive_greedy(emb[:m], args.threshold)
        print(f"{m:>8} {'naive greedy (authors)':<28} {time.perf_counter() - t:>9.2f} {k_naive:>8} {'':>15}")
    print(f"peak RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
