"""Stage 02 on Ray Data (decontaminate.engine: ray): what it costs here, for docs/ray.md (prints figures; not a test).

    nice -n 19 .venv/bin/python bench/bench_decontaminate_ray.py [--rows 1000] [--cpus 2] [--block 250]

Prints, on this machine (the load average beside each figure: a busy machine gives upper bounds on time):

  * MiniLM (PyTorch, CPU) texts/s in one Ray actor holding 1 CPU (torch then runs 1 thread), on training windows
    of the rows below: the figure the cost per million rows is extrapolated from;
  * the windows per training row (prompt and output, cut at the model's 256 word pieces), on these rows and, when
    ../shared/data/sources is there, on 2,000 rows of the real offline sources (MATH, TheoremQA, SciBench, ScienceQA);
  * `--rows` training rows (the demo corpus repeated, each copy's texts made its own so nothing comes from the
    cache) against the demo benchmarks, the stage's defaults (first pass, every detector, the judge): the local
    engine and engine: ray on a local cluster of `--cpus` CPUs, wall time and the steps' seconds, and whether
    their outputs agree.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from platypus_utils.config import DecontaminateConfig  # noqa: E402
from platypus_utils.decontaminate.inputs import load_benchmark_items  # noqa: E402
from platypus_utils.decontaminate.stage import detect  # noqa: E402
from platypus_utils.decontaminate.views import train_windows  # noqa: E402
from platypus_utils.demo_data import demo_corpus_rows, write_demo_benchmarks  # noqa: E402
from platypus_utils.embeddings import Embedder  # noqa: E402

MODEL = "embedded:all-minilm-l6-v2"
SOURCES = ROOT.parent / "shared" / "data" / "sources"


def load() -> str:
    return f"load average {os.getloadavg()[0]:.1f}"


def rows_of(n: int) -> list[dict]:
    """n training rows: the demo corpus repeated, each copy's prompt and output made its own."""
    demo = demo_corpus_rows()
    out = []
    for k in range(n):
        r = dict(demo[k % len(demo)])
        copy = k // len(demo)
        if copy:
            r["instruction"] = f"{r['instruction']} (copy {copy})"
            r["output"] = f"{r['output']} (copy {copy})"
        out.append(r)
    return out


def actor_rate(ray, texts: list[str]) -> float:
    """Texts/s of the embedder in one actor with 1 CPU (an empty cache: every text is encoded)."""

    @ray.remote(num_cpus=1)
    class Encoder:
        def __init__(self, cache: str):
            self.embedder = Embedder(MODEL, cache, device="cpu")
            self.embedder.encode(["warm up"])

        def seconds(self, batch: list[str]) -> float:
            t = time.perf_counter()
            self.embedder.encode(batch)
            return time.perf_counter() - t

    with tempfile.TemporaryDirectory() as cache:
        actor = Encoder.remote(cache)
        return len(texts) / ray.get(actor.seconds.remote(texts))


def windows_per_row(rows: list[dict], embedder) -> float:
    cfg = DecontaminateConfig()
    return len(train_windows(rows, cfg, embedder)) / len(rows)


def real_windows(embedder, n: int = 2000) -> str:
    if not SOURCES.is_dir():
        return "no ../shared/data/sources here"
    from platypus_utils import sources
    from platypus_utils.config import Profile, SourceConfig

    real = []
    for name in ("math", "theoremqa", "scibench", "scienceqa"):
        real += sources.load_source(SourceConfig(name=name, path=str(SOURCES / name)), Profile(name="b"))[0]
    sample = random.Random(0).sample(real, min(n, len(real)))
    return f"{windows_per_row(sample, embedder):.2f} windows per row on {len(sample)} real source rows"


def engines(rows: list[dict], items: list[dict], cfg: DecontaminateConfig, cpus: int, block: int) -> None:
    results = {}
    for engine in ("local", "ray"):
        with tempfile.TemporaryDirectory() as cache:
            timings: dict = {}
            t = time.perf_counter()
            run = cfg.model_copy(update={"engine": engine, "ray_block_rows": block, "ray_num_cpus": cpus})
            results[engine] = detect(rows, items, run, Embedder(MODEL, cache, device="cpu"), timings)
            wall = time.perf_counter() - t
        steps = {k: round(v, 1) for k, v in timings.items()}
        print(f"{engine}: {len(rows)} rows in {wall:.0f} s ({len(rows) / wall:.1f} rows/s); steps {steps}; {load()}")
    cols = ["train_index", "test_id", "category", "action"]
    same = results["ray"].pairs[cols].equals(results["local"].pairs[cols])
    print(f"same pairs and categories: {same}; removed rows {results['ray'].summary['removed_rows']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--block", type=int, default=250)
    args = ap.parse_args()
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=args.cpus, include_dashboard=False)
    rows = rows_of(args.rows)
    with tempfile.TemporaryDirectory() as cache:
        embedder = Embedder(MODEL, cache, device="cpu")
        windows = train_windows(rows, DecontaminateConfig(), embedder)["text"].tolist()
        print(f"{len(windows) / len(rows):.2f} windows per row on these rows; {real_windows(embedder)}")
    rate = actor_rate(ray, windows[:1000])
    print(f"MiniLM in one Ray actor with 1 CPU: {rate:.1f} texts/s on {min(1000, len(windows))} windows; {load()}")
    root = write_demo_benchmarks(Path(tempfile.mkdtemp()) / "benchmarks")
    cfg = DecontaminateConfig(benchmarks_dir=str(root))
    items, _ = load_benchmark_items(cfg)
    engines(rows, items, cfg, args.cpus, args.block)


if __name__ == "__main__":
    main()
