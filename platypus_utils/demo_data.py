"""The `demo` profile's data, hand-written in platypus_utils/data/demo/: a small training corpus with
planted exact duplicates, near-duplicates and benchmark leaks (`demo_corpus_labels()` lists them by row
index), and small benchmarks in the original releases' layouts and formats. Outputs are byte-identical
from call to call (a fixed-seed shuffle only). The data files and how their cosines were measured: data/demo/README.md.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import random
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from .artifacts import atomic_path, iter_jsonl, write_text
from .text import FIELDS

if TYPE_CHECKING:
    from .config import Profile

log = logging.getLogger("platypus")

DEMO_STAGE = "00_demo_data"
CORPUS_FILE = "demo_corpus.jsonl"
LABELS_FILE = "demo_corpus_labels.json"
BENCHMARKS_SUBDIR = "benchmarks"
_SHUFFLE_SEED = 20230815  # fixed: the corpus order (and so the label indices) never changes


def _data_file(name: str):
    return resources.files("platypus_utils").joinpath("data", "demo", name)


def load_demo_table(name: str) -> list[dict] | dict:
    """One demo data file by name as fresh objects (.jsonl: a list of records); a bad line is a ValueError."""
    if not name.endswith(".jsonl"):
        return json.loads(_data_file(name).read_text(encoding="utf-8"))
    return [obj for _, obj in iter_jsonl(_data_file(name), strict=True)]


def _holds(path: Path, text: str) -> bool:
    return path.is_file() and path.read_bytes() == text.encode("utf-8")


def _json_line(obj: dict, **kw) -> str:
    return json.dumps(obj, ensure_ascii=False, **kw) + "\n"


def _arc_text(items: list[dict]) -> str:
    lines = []
    for item in items:
        n = len(item["choices"])
        labels = [str(i + 1) for i in range(n)] if item.get("numeric_labels") else [chr(65 + i) for i in range(n)]
        choices = [{"text": t, "label": lab} for t, lab in zip(item["choices"], labels)]
        row = {"id": item["id"], "question": {"stem": item["stem"], "choices": choices}, "answerKey": item["answerKey"]}
        lines.append(_json_line(row, separators=(",", ":")))  # the release's compact style
    return "".join(lines)


def _mmlu_csv(items: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")  # the release uses bare \n
    writer.writerows([item["question"], *item["choices"], item["answer"]] for item in items)
    return buf.getvalue()


def _hellaswag_text() -> str:
    lines = []
    for ind, item in enumerate(load_demo_table("hellaswag.jsonl")):
        label = (3 * ind + 1) % 4
        endings = list(item["wrong"])
        endings.insert(label, item["correct"])
        row = {"ind": ind, "activity_label": item["activity_label"], "ctx": item["ctx"], "endings": endings}
        lines.append(_json_line({**row, "label": label}))
    return "".join(lines)


def _truthfulqa_text() -> str:
    tqa = []
    for item in load_demo_table("truthfulqa.jsonl"):
        best, false = item["best"], item["false"]
        mc1 = {best: 1, **{f: 0 for f in false[:3]}}
        mc2 = {best: 1, **{t: 1 for t in item["more_true"]}, **{f: 0 for f in false}}
        tqa.append({"question": item["question"], "mc1_targets": mc1, "mc2_targets": mc2})
    return json.dumps(tqa, indent=2, ensure_ascii=False)


def _grouped(records: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        groups.setdefault(tuple(record[k] for k in keys), []).append(record)
    return groups


def demo_benchmark_files() -> dict[str, str]:
    """Relative path -> file text of every demo benchmark file, in the original release formats."""
    arc = _grouped(load_demo_table("arc_challenge.jsonl"), "split")
    files = {f"arc_challenge/ARC-Challenge-{s}.jsonl": _arc_text(arc[(s,)]) for s in ("Train", "Dev", "Test")}
    files["hellaswag/hellaswag_val.jsonl"] = _hellaswag_text()
    for (subject, split), items in _grouped(load_demo_table("mmlu.jsonl"), "subject", "split").items():
        files[f"mmlu/{split}/{subject}_{split}.csv"] = _mmlu_csv(items)
    files["truthfulqa/mc_task.json"] = _truthfulqa_text()
    return files


def write_demo_benchmarks(root: str | Path) -> Path:
    """Write the demo benchmarks under `root`, atomically: `root` is replaced as a whole."""
    root = Path(root)
    with atomic_path(root) as tmp:
        for rel, text in demo_benchmark_files().items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8", newline="")
    log.info("demo benchmarks written to %s", root)
    return root


def demo_benchmarks_dir(profile: Profile) -> Path:
    """The demo benchmarks folder of this profile's run, written first if absent, incomplete or stale."""
    root = profile.run_dir(DEMO_STAGE) / BENCHMARKS_SUBDIR
    if not all(_holds(root / rel, text) for rel, text in demo_benchmark_files().items()):
        write_demo_benchmarks(root)
    return root


def demo_benchmark_item_ids() -> dict[str, set[str]]:
    """The item ids (as `benchmarks.load_benchmark` names them) of the demo test splits."""
    mmlu = _grouped([it for it in load_demo_table("mmlu.jsonl") if it["split"] == "test"], "subject")
    return {
        "arc_challenge": {it["id"] for it in load_demo_table("arc_challenge.jsonl") if it["split"] == "Test"},
        "hellaswag": {f"hellaswag/{i}" for i in range(len(load_demo_table("hellaswag.jsonl")))},
        "mmlu": {f"mmlu/{subject}/test/{i}" for (subject,), items in mmlu.items() for i in range(len(items))},
        "truthfulqa": {f"truthfulqa/{i}" for i in range(len(load_demo_table("truthfulqa.jsonl")))},
    }


def _row(record: dict, **override: str) -> dict:
    return {f: override.get(f, record.get(f)) for f in FIELDS}


def _tagged_rows() -> list[tuple[str, dict]]:
    """(tag, row) of every corpus row in its final order; tags name each row's planted role."""
    tagged = [(f"base:{i}", _row(r)) for i, r in enumerate(load_demo_table("corpus_rows.jsonl"))]
    for i, r in enumerate(load_demo_table("corpus_exact_duplicates.jsonl")):
        outputs = (r["longer_output"], r["shorter_output"])
        first, second = outputs if r["longer_first"] else outputs[::-1]
        tagged += [(f"exact:{i}:a", _row(r, output=first)), (f"exact:{i}:b", _row(r, output=second))]
    for i, r in enumerate(load_demo_table("corpus_near_duplicates.jsonl")):
        tagged += [(f"near:{i}:{side}", _row(r[side], data_source=r["data_source"])) for side in ("terse", "verbose")]
    tagged += [(f"leak:{r['item_id']}", _row(r)) for r in load_demo_table("corpus_leaks.jsonl")]
    random.Random(_SHUFFLE_SEED).shuffle(tagged)
    return tagged


def _labels(rows: list[dict], index: dict[str, int]) -> dict:
    exact = []
    for i, r in enumerate(load_demo_table("corpus_exact_duplicates.jsonl")):
        a, b = index[f"exact:{i}:a"], index[f"exact:{i}:b"]
        keep, drop = (a, b) if r["longer_first"] else (b, a)
        exact.append({"rows": sorted([a, b]), "keep": keep, "drop": drop})
    near = []
    for i, r in enumerate(load_demo_table("corpus_near_duplicates.jsonl")):
        terse, verbose = index[f"near:{i}:terse"], index[f"near:{i}:verbose"]
        near.append({"rows": sorted([terse, verbose]), "keep": verbose, "drop": terse, "cosine": r["cosine"]})
    leaks = [
        {"row": index[f"leak:{r['item_id']}"], **{k: r[k] for k in ("benchmark", "item_id", "category", "cosine")}}
        for r in load_demo_table("corpus_leaks.jsonl")
    ]
    return {
        "n_rows": len(rows),
        "sources": sorted({r["data_source"] for r in rows}),
        "exact_duplicates": sorted(exact, key=lambda d: d["rows"]),
        "near_duplicates": sorted(near, key=lambda d: d["rows"]),
        "leaks": sorted(leaks, key=lambda d: d["row"]),
        "similarity": load_demo_table("corpus_similarity.json"),
    }


def _build() -> tuple[list[dict], dict]:
    tagged = _tagged_rows()
    rows = [row for _, row in tagged]
    return rows, _labels(rows, {tag: i for i, (tag, _) in enumerate(tagged)})


def demo_corpus_rows() -> list[dict]:
    return _build()[0]


def demo_corpus_labels() -> dict:
    """What was planted in the demo corpus, by row index: exact_duplicates, near_duplicates, leaks."""
    return _build()[1]


def _corpus_text() -> str:
    return "".join(_json_line(r) for r in demo_corpus_rows())


def write_demo_corpus(path: str | Path) -> Path:
    """Write the demo corpus as JSON lines, atomically."""
    return write_text(path, _corpus_text())


def demo_corpus_path(profile: Profile) -> Path:
    """The demo corpus of this profile's run (with its labels beside it), written if absent or stale."""
    folder = profile.run_dir(DEMO_STAGE)
    labels = json.dumps(demo_corpus_labels(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    for path, text in ((folder / CORPUS_FILE, _corpus_text()), (folder / LABELS_FILE, labels)):
        if not _holds(path, text):
            write_text(path, text)
    return folder / CORPUS_FILE
