"""Benchmark the similarity passes of 01_curate and 02_decontaminate (prints figures; not a test).

    .venv/bin/python bench/bench_similarity.py [--rows 25000 200000] [--naive-rows 5000]
    .venv/bin/python bench/bench_similarity.py --approx 200000 1000000   # curate.backend faiss_ivf vs exact

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
import pandas as pd

from platypus_utils.curate import choose_kept, near_dedup
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


def collect(emb: np.ndarray, threshold: float, block_size: int, backend: str) -> tuple[pd.DataFrame, float]:
    """Every self-pair at the threshold as a frame (i < j, score), and the wall seconds it took."""
    t = time.perf_counter()
    parts = list(pairs_above(emb, None, threshold, block_size, backend=backend))
    wall = time.perf_counter() - t
    cat = [np.concatenate([p[k] for p in parts]) if parts else np.zeros(0) for k in range(3)]
    return pd.DataFrame({"i": cat[0].astype(np.int64), "j": cat[1].astype(np.int64), "score": cat[2]}), wall


def sampled_exact(emb: np.ndarray, queries: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    """The exact pairs (i < j) at the threshold that touch the query rows."""
    found: set[tuple[int, int]] = set()
    for q0 in range(0, len(queries), 256):
        q = queries[q0 : q0 + 256]
        for j0 in range(0, len(emb), 65536):
            ii, jj = np.nonzero(emb[q] @ emb[j0 : j0 + 65536].T >= threshold)
            a, b = q[ii], jj + j0
            found.update((int(x), int(y)) for x, y in zip(np.minimum(a, b), np.maximum(a, b)) if x != y)
    return found


def approx(ns: list[int], threshold: float, block_size: int, exact_up_to: int = 200_000) -> None:
    """--approx: curate.backend faiss_ivf against the exact pass: time, recall of the pairs at the threshold,
    kept rows. Exact over all pairs up to `exact_up_to` rows; above, exact for 2,000 sampled rows."""
    print(f"{'rows':>8} {'ivf s':>8} {'exact s':>8} {'pairs':>8} {'recall':>8}  kept rows")
    for n in ns:
        emb, rows = synthetic(n), rows_for(n)
        ivf, t_ivf = collect(emb, threshold, block_size, "faiss_ivf")
        got = set(zip(ivf["i"].tolist(), ivf["j"].tolist()))
        if n <= exact_up_to:
            exact, t_exact = collect(emb, threshold, block_size, "numpy")
            want = set(zip(exact["i"].tolist(), exact["j"].tolist()))
            kept = choose_kept(rows, ivf, threshold)[0], choose_kept(rows, exact, threshold)[0]
            same = "same as exact" if kept[0] == kept[1] else f"{len(set(kept[0]) ^ set(kept[1]))} differ"
            note = f"{len(kept[0])} kept, {same}"
        else:
            queries = np.sort(np.random.default_rng(1).choice(n, size=2000, replace=False))
            t = time.perf_counter()
            want = sampled_exact(emb, queries, threshold)
            t_exact, touched = time.perf_counter() - t, set(queries.tolist())
            got = {p for p in got if p[0] in touched or p[1] in touched}
            note = f"recall over the pairs of 2,000 sampled rows (exact for those: {t_exact:.0f} s)"
            t_exact = float("nan")
        rec = len(got & want) / len(want) if want else 1.0
        print(f"{n:>8} {t_ivf:>8.1f} {t_exact:>8.1f} {len(want):>8} {rec:>8.2%}  {note}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[25_000, 200_000])
    ap.add_argument("--naive-rows", type=int, default=5_000)
    ap.add_argument("--block-size", type=int, default=2048)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--kernels", type=int, metavar="ROWS", help="only compare numpy/torch/faiss and tile sizes on ROWS")
    ap.add_argument(
        "--approx", type=int, nargs="+", metavar="ROWS", help="faiss_ivf vs exact on ROWS (e.g. 200000 1000000)"
    )
    args = ap.parse_args()
    if args.approx:
        approx(args.approx, args.threshold, args.block_size)
        return
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
