"""05_evaluate: offline lm-eval tasks equal the built-in ones, the cache, the CLI, bad input.

Fixtures are written here in BOTH schemas: the hub schema the built-in lm-eval tasks read
(allenai/ai2_arc, Rowan/hellaswag, cais/mmlu, truthfulqa/truthful_qa) and the original release
formats of shared/data/benchmarks. The built-in task config, pointed at the hub-schema files,
must build exactly the requests our offline task builds from the original files.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from platypus_utils.artifacts import read_manifest, sha256_file  # noqa: E402
from platypus_utils.config import Profile  # noqa: E402
from platypus_utils.evaluate import models as ev_models  # noqa: E402
from platypus_utils.evaluate import stage as ev_stage  # noqa: E402
from platypus_utils.evaluate.cache import CACHE_FORMAT, EvalCache  # noqa: E402
from platypus_utils.evaluate.models import (  # noqa: E402
    BackendError,
    ModelSpec,
    check_backend,
    evaluation_names,
    hub_snapshot_id,
    lm_settings,
    make_lm,
    model_hash,
    required_stages,
    resolve_variant,
    resolve_variants,
    variants_table,
)
from platypus_utils.evaluate.stage import (  # noqa: E402
    FAILED_REPORT,
    SEEDS,
    STAGE,
    EvaluationError,
    evaluate_variant,
    evaluate_variants,
    lm_eval_calls,
    run_evaluate,
    run_lm_eval,
    save,
)
from platypus_utils.evaluate.summary import mmlu_subjects_frame, plot_scores, scores_frame, summarise  # noqa: E402
from platypus_utils.evaluate.tasks import (  # noqa: E402
    TaskSuite,
    hub_task_suite,
    make_task_manager,
    prepare_tasks,
    task_table,
    write_task_configs,
)
from platypus_utils.lm_eval_tasks import utils as task_utils  # noqa: E402
from platypus_utils.lmeval_io import LEADERBOARD_METRICS, builtin_tasks_dir  # noqa: E402
from platypus_utils.published import BENCHMARKS  # noqa: E402
from platypus_utils.refs import split_revision  # noqa: E402

WORDS = (
    "roof shingle barbell canoe planet rotation meteorite density gravity water rock erosion moose "
    "mud energy plant light heat magnet iron door field cell atom river cloud"
).split()


# ---------------------------------------------------------------- hub-schema fixtures
def _sentence(rnd: random.Random, n: int = 6) -> str:
    return " ".join(rnd.choice(WORDS) for _ in range(n))


def arc_hub_docs(n: int, seed: int, prefix: str) -> list[dict]:
    rnd = random.Random(seed)
    docs = []
    for k in range(n):
        n_choices = rnd.choice([3, 4, 4, 5])
        labels = list("ABCDE"[:n_choices]) if k % 4 else [str(i + 1) for i in range(n_choices)]
        docs.append(
            {
                "id": f"{prefix}_{k}",
                "question": _sentence(rnd, 8).capitalize() + "?",
                "choices": {"text": [_sentence(rnd, 3) for _ in labels], "label": labels},
                "answerKey": rnd.choice(labels),
            }
        )
    return docs


HELLASWAG_HUB = [
    # ActivityNet: ctx_b is the lower-case start of the last sentence
    {
        "ind": 4,
        "activity_label": "Removing ice from car",
        "ctx_a": "Then, the man writes over the snow covering the window of a car, and a woman wearing winter clothes smiles.",
        "ctx_b": "then",
        "endings": [
            ", the man adds wax to the windshield and cuts it.",
            ", a person board a ski lift, while two men supporting the head of the person wearing winter clothes snow as the we girls sled.",
            ", the man puts on a christmas coat, knitted with netting.",
            ", the man continues removing the snow on his car.",
        ],
        "source_id": "activitynet~v_-1IBHYS3L-Y",
        "split": "train",
        "split_type": "indomain",
        "label": "3",
    },
    {
        "ind": 24,
        "activity_label": "Roof shingle removal",
        "ctx_a": "A man is sitting on a roof.",
        "ctx_b": "he",
        "endings": [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
        "source_id": "activitynet~v_-JhWjGDPHMY",
        "split": "val",
        "split_type": "indomain",
        "label": "3",
    },
    {
        "ind": 92,
        "activity_label": "Clean and jerk",
        "ctx_a": "A lady walks to a barbell. She bends down and grabs the pole.",
        "ctx_b": "the lady",
        "endings": [
            "swings and lands in her arms.",
            "pulls the barbell forward.",
            "pulls a rope attached to the barbell.",
            "stands and lifts the weight over her head.",
        ],
        "source_id": "activitynet~v_-lJS58hyo1c",
        "split": "val",
        "split_type": "zeroshot",
        "label": "3",
    },
    {
        "ind": 106,
        "activity_label": "Canoeing",
        "ctx_a": "Two women in a child are shown in a canoe while a man pulls the canoe while standing in the water, with other individuals visible in the background.",
        "ctx_b": "the child and a different man",
        "endings": [
            "are then shown paddling down a river in a boat while a woman talks.",
            "are driving the canoe, they go down the river flowing side to side.",
            "sit in a canoe while the man paddles.",
            "walking go down the rapids, while the man in his helicopter almost falls and goes out of canoehood.",
        ],
        "source_id": "activitynet~v_-xQvJmC2jhk",
        "split": "val",
        "split_type": "indomain",
        "label": "2",
    },
    {
        "ind": 140,
        "activity_label": "Painting",
        "ctx_a": 'A "trend routing technology" logo appears on screen.',
        "ctx_b": '" knife sharpening',
        "endings": [
            '" appears in white letters.',
            "is shown on a black screen.",
            "is written on a board.",
            "appears over a man sharpening a knife.",
        ],
        "source_id": "activitynet~v_0",
        "split": "val",
        "split_type": "indomain",
        "label": "0",
    },
    # WikiHow: [header]/[title]/[step] markers, empty ctx_b, or a ctx_b that starts upper-case
    {
        "ind": 5000,
        "activity_label": "Personal Care and Style",
        "ctx_a": "[header] How to buy a wedding band for men [title] Find a ring suitable for his lifestyle. [step] Your fiancé is going to wear this ring every day, so choose one that will mesh with his daily routine.",
        "ctx_b": "",
        "endings": [
            "Check the band's design to see what kind of engraving is common. [substeps] A good ring will have: heart attached, flowers (or gems), bow symbols or letters, etc.",
            'Men with active lifestyles might prefer a platinum ring, which is especially heavy-duty and not easily scratched. [substeps] " comfort fit " wedding rings are especially recommended for men.',
            "You can buy rings in black, silver, or pink. [title] Remember that black rings are a lot more expensive than pink ones.",
            "A girl who works a lot with her hands, for example, would definitely get a diamond engagement ring. [title] Consider the person's other interests.",
        ],
        "source_id": "wikihow~1",
        "split": "val",
        "split_type": "zeroshot",
        "label": "1",
    },
    {
        "ind": 5001,
        "activity_label": "Youth",
        "ctx_a": "[header] How to avoid raising an emotional eater [title] Eat meals at the dinner table away from sources of entertainment. [step] When kids eat meals in front of the television or ipad, they are detached from the nourishment itself.",
        "ctx_b": "Eating becomes something that is associated with entertainment instead.",
        "endings": [
            "If you tell a kid that eating is good for their mental health, they will learn to enjoy it.",
            "Turning off electronics is a good way to avoid the temptation.",
            "Binge eating and sugary things keep kids from being hungry for food.",
            "Stop this habit and enjoy meals together at the table. [title] Have polite conversation.",
        ],
        "source_id": "wikihow~2",
        "split": "val",
        "split_type": "indomain",
        "label": "3",
    },
]


def hellaswag_hub_docs() -> list[dict]:
    docs = [dict(d, ctx=f"{d['ctx_a']} {d['ctx_b']}") for d in HELLASWAG_HUB]
    rnd = random.Random(7)
    for k in range(8):  # enough for a 10-shot pool
        ctx_b = rnd.choice(["the man", "she", "a woman", "they"])
        docs.append(
            {
                "ind": 9000 + k,
                "activity_label": _sentence(rnd, 2).title(),
                "ctx_a": _sentence(rnd, 7).capitalize() + ".",
                "ctx_b": ctx_b,
                "ctx": "",
                "endings": [_sentence(rnd, 5) + "." for _ in range(4)],
                "source_id": f"activitynet~v_{k}",
                "split": "val",
                "split_type": "indomain",
                "label": str(rnd.randrange(4)),
            }
        )
        docs[-1]["ctx"] = f"{docs[-1]['ctx_a']} {docs[-1]['ctx_b']}"
    return docs


def mmlu_hub_docs(subject: str, n: int, seed: int) -> list[dict]:
    rnd = random.Random(seed)
    tricky = [  # values pandas would not keep as written, and CSV quoting
        ('Which, if any, of these is "true"?\nConsider all.', ["None", "1.50", "007", "True, True"]),
        ("Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.", ["0", "1", "2", "3"]),
        ("Statement 1 | NA is a value. Statement 2 | N/A is not.", ["NaN", "null", "", "#N/A"]),
    ]
    docs = []
    for k in range(n):
        question, choices = (
            tricky[k]
            if k < len(tricky)
            else (_sentence(rnd, 9).capitalize() + "?", [_sentence(rnd, 2) for _ in range(4)])
        )
        docs.append({"question": question, "subject": subject, "choices": choices, "answer": rnd.randrange(4)})
    return docs


def truthfulqa_hub_docs(n: int) -> list[dict]:
    rnd = random.Random(3)
    docs = [
        {
            "question": "What is the smallest country in the world that is at least one square mile in area?",
            "mc1_targets": {
                "choices": ["Nauru is the smallest country.", "Vatican City.", "Monaco."],
                "labels": [1, 0, 0],
            },
            "mc2_targets": {
                "choices": ["Nauru is the smallest country.", "It's Nauru — café ünïcode.", "Vatican City.", "Monaco."],
                "labels": [1, 1, 0, 0],
            },
        }
    ]
    for _ in range(n - 1):
        answers = [_sentence(rnd, 4).capitalize() + "." for _ in range(rnd.randint(3, 6))]
        labels = [1] + [0] * (len(answers) - 1)
        docs.append(
            {
                "question": _sentence(rnd, 7).capitalize() + "?",
                "mc1_targets": {"choices": answers[:3], "labels": labels[:3]},
                "mc2_targets": {"choices": answers, "labels": [1] + [rnd.randint(0, 1) for _ in answers[1:]]},
            }
        )
    return docs


# ---------------------------------------------------------------- hub -> original release formats
def arc_original(doc: dict) -> dict:
    return {
        "id": doc["id"],
        "question": {
            "stem": doc["question"],
            "choices": [{"text": t, "label": lab} for t, lab in zip(doc["choices"]["text"], doc["choices"]["label"])],
        },
        "answerKey": doc["answerKey"],
    }


def strip_markers(text: str) -> str:
    """What the offline HellaSwag copy did: [title] -> '. ', other WikiHow markers dropped."""
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[(header|title|step|substeps)\]\s*", "", text)
    while "  " in text:
        text = text.replace("  ", " ")
    return text.strip()


def hellaswag_original(doc: dict) -> dict:
    return {
        "ind": doc["ind"],
        "activity_label": doc["activity_label"],
        "ctx": strip_markers(f"{doc['ctx_a']} {doc['ctx_b']}"),
        "endings": [strip_markers(e) for e in doc["endings"]],
        "label": int(doc["label"]),
    }


def truthfulqa_original(doc: dict) -> dict:
    return {
        "question": doc["question"],
        **{f: dict(zip(doc[f]["choices"], doc[f]["labels"])) for f in ("mc1_targets", "mc2_targets")},
    }


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_fixtures(root: Path, hellaswag_train: bool = False) -> tuple[Path, dict]:
    """Write one fixture set in both schemas; returns (local benchmarks dir, hub-schema data_files)."""
    local, hub = root / "benchmarks", root / "hub"
    arc = {
        "train": arc_hub_docs(30, 1, "train"),
        "validation": arc_hub_docs(4, 2, "dev"),
        "test": arc_hub_docs(5, 3, "test"),
    }
    hs = hellaswag_hub_docs()
    mmlu = {
        s: {"test": mmlu_hub_docs(s, 6, seed), "dev": mmlu_hub_docs(s, 5, seed + 50)}
        for seed, s in enumerate(["abstract_algebra", "world_religions"])
    }
    tqa = truthfulqa_hub_docs(5)
    files: dict[str, dict] = {"arc_challenge": {}, "hellaswag": {}, "mmlu": {}, "truthfulqa_mc2": {}}
    for split, name in (("train", "Train"), ("validation", "Dev"), ("test", "Test")):
        _jsonl(local / "arc_challenge" / f"ARC-Challenge-{name}.jsonl", [arc_original(d) for d in arc[split]])
        files["arc_challenge"][split] = str(_jsonl(hub / "arc" / f"{split}.jsonl", arc[split]))
    _jsonl(local / "hellaswag" / "hellaswag_val.jsonl", [hellaswag_original(d) for d in hs])
    files["hellaswag"]["validation"] = str(_jsonl(hub / "hellaswag" / "validation.jsonl", hs))
    if hellaswag_train:
        train = [dict(d, ind=d["ind"] + 100000, split="train") for d in hs[::-1]]
        _jsonl(local / "hellaswag" / "hellaswag_train.jsonl", [hellaswag_original(d) for d in train])
        files["hellaswag"]["train"] = str(_jsonl(hub / "hellaswag" / "train.jsonl", train))
    for subject, splits in mmlu.items():
        files["mmlu"][subject] = {}
        for split, docs in splits.items():
            path = local / "mmlu" / split / f"{subject}_{split}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", newline="", encoding="utf-8") as fh:
                csv.writer(fh).writerows([[d["question"], *d["choices"], "ABCD"[d["answer"]]] for d in docs])
            files["mmlu"][subject][split] = str(_jsonl(hub / "mmlu" / subject / f"{split}.jsonl", docs))
    (local / "truthfulqa").mkdir(parents=True)
    (local / "truthfulqa" / "mc_task.json").write_text(
        json.dumps([truthfulqa_original(d) for d in tqa], indent=2, ensure_ascii=False), encoding="utf-8"
    )
    files["truthfulqa_mc2"]["validation"] = str(_jsonl(hub / "truthfulqa" / "validation.jsonl", tqa))
    return local, files


# ---------------------------------------------------------------- building requests
def builtin_task(rel_yaml: str, data_files: dict, **overrides):
    """The installed built-in task, unchanged but for reading hub-schema JSON from data_files."""
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(builtin_tasks_dir() / rel_yaml, resolve_func=True)
    cfg.update(dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": data_files}, **overrides)
    for key in ("tag", "group"):
        cfg.pop(key, None)
    return ConfigurableTask(config=cfg)


def offline_tasks(local: Path, out: Path, benchmarks: list[str]):
    suite = write_task_configs(local, out, benchmarks)
    loaded = make_task_manager(suite).load([suite.task_names[b] for b in benchmarks])
    return suite, loaded


def requests(task, num_fewshot: int) -> list[tuple]:
    task.set_config(key="num_fewshot", value=num_fewshot)
    task.set_fewshot_seed(seed=SEEDS["fewshot_random_seed"])
    task.build_all_requests(limit=None, rank=0, world_size=1)
    out = [(i.doc_id, i.idx, i.request_type, i.arguments) for i in task.instances]
    assert out, "no requests built"
    return out


def scoring(task) -> dict:
    cfg = task.config
    return {
        "output_type": cfg.output_type,
        "description": cfg.description,
        "target_delimiter": cfg.target_delimiter,
        "fewshot_delimiter": cfg.fewshot_delimiter,
        "metrics": cfg.metric_list,
        "sampler": task.fewshot_cfg.sampler,
        "version": task.VERSION,
        "process_results": getattr(cfg.process_results, "__qualname__", cfg.process_results),
        "targets": [task.doc_to_target(d) for d in task.eval_docs],
        "choices": [task.doc_to_choice(d) for d in task.eval_docs],
    }


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    local, hub = write_fixtures(root)
    suite, loaded = offline_tasks(local, root / "tasks", list(BENCHMARKS))
    return {"local": local, "hub": hub, "suite": suite, "tasks": loaded["tasks"], "loaded": loaded, "root": root}


# ---------------------------------------------------------------- equivalence with the built-in tasks
def test_arc_offline_equals_builtin(fixtures):
    ours = fixtures["tasks"]["platypus_arc_challenge"]
    theirs = builtin_task("arc/arc_challenge.yaml", fixtures["hub"]["arc_challenge"])
    assert requests(ours, 25) == requests(theirs, 25)
    assert scoring(ours) == scoring(theirs)
    # few-shot pool is the Train file, 25 distinct examples in each context
    ctx = ours.instances[0].arguments[0]
    assert ctx.count("Question:") == 26


def test_mmlu_offline_equals_builtin(fixtures):
    for subject, data_files in fixtures["hub"]["mmlu"].items():
        ours = fixtures["tasks"][f"platypus_mmlu_{subject}"]
        theirs = builtin_task(f"mmlu/default/mmlu_{subject}.yaml", data_files)
        got = requests(ours, 5)
        assert got == requests(theirs, 5)
        assert scoring(ours) == scoring(theirs)
        assert ours.fewshot_cfg.sampler == "first_n" and ours.fewshot_cfg.split == "dev"
    # CSV values are kept as written ("None", "1.50", "007", quoted commas and newlines)
    ctx = fixtures["tasks"]["platypus_mmlu_abstract_algebra"].instances[0].arguments[0]
    assert "A. None\nB. 1.50\nC. 007\nD. True, True" in ctx
    assert 'Which, if any, of these is "true"?\nConsider all.' in ctx
    # the group mirrors the built-in one: categories aggregated by size, only categories present
    groups = fixtures["loaded"]["group_map"]
    assert groups["platypus_mmlu"] == ["platypus_mmlu_stem", "platypus_mmlu_humanities"]
    assert fixtures["suite"].mmlu_subjects == {"abstract_algebra": "stem", "world_religions": "humanities"}


def test_truthfulqa_offline_equals_builtin(fixtures):
    ours = fixtures["tasks"]["platypus_truthfulqa_mc2"]
    theirs = builtin_task("truthfulqa/truthfulqa_mc2.yaml", fixtures["hub"]["truthfulqa_mc2"])
    assert requests(ours, 0) == requests(theirs, 0)
    assert scoring(ours) == scoring(theirs)
    doc = ours.eval_docs[0]
    assert doc["mc2_targets"]["labels"] == [1, 1, 0, 0]  # key order of the JSON mapping kept
    # mc2 from the built-in process_results on our docs
    assert ours.process_results(doc, [(-1.0, False), (-1.0, False), (-1.0, False), (-1.0, False)])[
        "acc"
    ] == pytest.approx(0.5)


def test_hellaswag_offline_equals_builtin_zero_shot(fixtures):
    ours = fixtures["tasks"]["platypus_hellaswag"]
    hub = fixtures["hub"]["hellaswag"]
    # the unmodified built-in config wants a train split to exist; 0-shot never reads it
    theirs = builtin_task("hellaswag/hellaswag.yaml", {"train": hub["validation"], **hub})
    assert requests(ours, 0) == requests(theirs, 0)
    assert scoring(ours) == scoring(theirs)
    queries = [d["query"] for d in ours.eval_docs]
    assert "Roof shingle removal: A man is sitting on a roof. He" in queries
    assert any(q.startswith("Personal Care and Style: How to buy a wedding band for men. Find a ring") for q in queries)


def test_hellaswag_offline_few_shot_pool(fixtures, tmp_path):
    """Without a train file the pool is validation minus the evaluated item - the same as the
    built-in task given those splits; with a train file the built-in config is used unchanged."""
    ours = fixtures["tasks"]["platypus_hellaswag"]
    theirs = builtin_task(
        "hellaswag/hellaswag.yaml",
        fixtures["hub"]["hellaswag"],
        training_split=None,
        validation_split=None,
        test_split="validation",
        fewshot_split="validation",
    )
    got = requests(ours, 10)
    assert got == requests(theirs, 10)
    for inst in got:
        doc = ours.eval_docs[inst[0]]
        shots = inst[3][0].split("\n\n")[:-1]
        assert len(shots) == 10 and all(not s.startswith(doc["query"]) for s in shots)
    assert "few-shot pool" in fixtures["suite"].notes["hellaswag"]

    local, hub = write_fixtures(tmp_path, hellaswag_train=True)
    suite, loaded = offline_tasks(local, tmp_path / "tasks", ["hellaswag"])
    ours = loaded["tasks"]["platypus_hellaswag"]
    theirs = builtin_task("hellaswag/hellaswag.yaml", hub["hellaswag"])
    assert requests(ours, 10) == requests(theirs, 10)
    assert "hellaswag" not in suite.notes


def test_hellaswag_context_split():
    split = task_utils.split_hellaswag_context
    assert split("A lady walks to a barbell. She bends down and grabs the pole. the lady") == (
        "A lady walks to a barbell. She bends down and grabs the pole.",
        "the lady",
    )
    assert split('The words "cut!" appear on screen. a volunteer named " irene "') == (
        'The words "cut!" appear on screen.',
        'a volunteer named " irene "',
    )
    wikihow = "How to qualify for food stamps. Have a valid social security number. You must be u.s. citizens."
    assert split(wikihow) == (wikihow, "")
    assert split("the man") == ("", "the man")


def test_hellaswag_known_residual_difference():
    """Documented limit: a ctx_b holding a whole sentence plus a fragment cannot be told apart from
    ctx_a once joined, so its first word keeps its lower case where lm-eval capitalises it."""
    from lm_eval.tasks.hellaswag.utils import preprocess

    doc = {
        "activity_label": "Running",
        "ctx_a": "A man runs.",
        "ctx_b": "the man stops. he then",
        "endings": ["x"],
        "label": "0",
    }
    builtin = preprocess(doc["activity_label"] + ": " + doc["ctx_a"] + " " + doc["ctx_b"].capitalize())
    ours = task_utils.hellaswag_to_hub(
        {"activity_label": "Running", "ctx": "A man runs. the man stops. he then", "endings": ["x"], "label": 0}
    )
    ours_query = preprocess(ours["activity_label"] + ": " + ours["ctx_a"] + " " + ours["ctx_b"].capitalize())
    assert builtin == "Running: A man runs. The man stops. he then"
    assert ours_query == "Running: A man runs. the man stops. He then"


# ---------------------------------------------------------------- bad input
def test_missing_data_file_is_named(tmp_path):
    local, _ = write_fixtures(tmp_path)
    (local / "arc_challenge" / "ARC-Challenge-Train.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="ARC-Challenge-Train.jsonl"):
        write_task_configs(local, tmp_path / "tasks", ["arc_challenge"])
    (local / "mmlu" / "dev" / "world_religions_dev.csv").unlink()
    with pytest.raises(FileNotFoundError, match="world_religions_dev.csv"):
        write_task_configs(local, tmp_path / "tasks", ["mmlu"])
    with pytest.raises(FileNotFoundError, match="no test file for selected MMLU subjects"):
        write_task_configs(local, tmp_path / "tasks", ["mmlu"], mmlu_subjects=["anatomy"])


def test_malformed_rows_are_named(tmp_path):
    """Rows are checked by benchmarks.py's parser of their format; the error names file, line and field."""
    arc = tmp_path / "arc.jsonl"
    good = arc_original(arc_hub_docs(1, 0, "x")[0])
    bad = dict(good, answerKey="Z")
    _jsonl(arc, [good, bad])
    with pytest.raises(task_utils.BenchmarkFileError, match=r"arc.jsonl, line 2: not an ARC row \(answerKey 'Z'"):
        task_utils.load_arc({"test": str(arc)})
    _jsonl(arc, [good, {"id": "y", "answerKey": "A"}])
    with pytest.raises(task_utils.BenchmarkFileError, match=r"line 2: not an ARC row \(field 'question' missing\)"):
        task_utils.load_arc({"test": str(arc)})
    hs = tmp_path / "hellaswag_val.jsonl"
    row = hellaswag_original(HELLASWAG_HUB[0])
    _jsonl(hs, [row, {k: v for k, v in row.items() if k != "activity_label"}])
    with pytest.raises(task_utils.BenchmarkFileError, match=r"line 2: not a HellaSwag row \(field 'activity_label'"):
        task_utils.load_hellaswag({"validation": str(hs)})
    _jsonl(hs, [dict(row, label=4)])
    with pytest.raises(task_utils.BenchmarkFileError, match=r"line 1: not a HellaSwag row \(label 4 out of range"):
        task_utils.load_hellaswag({"validation": str(hs)})
    mmlu = tmp_path / "x_test.csv"
    mmlu.write_text("q,a,b,c,d,A\nq2,a,b,c,d,E\n")
    with pytest.raises(task_utils.BenchmarkFileError, match=r"x_test.csv, row 2: expected question,A,B,C,D,answer"):
        task_utils.read_mmlu_csv(mmlu)
    mmlu.write_text("q,a,b,c,A\n")
    with pytest.raises(task_utils.BenchmarkFileError, match="got 5 fields"):
        task_utils.read_mmlu_csv(mmlu)
    mmlu.write_bytes(b"q,a,b,c,d,A\nq\xe9,a,b,c,d,B\n")
    with pytest.raises(task_utils.BenchmarkFileError, match=r"x_test.csv: 'utf-8' codec can't decode"):
        task_utils.read_mmlu_csv(mmlu)
    tqa = tmp_path / "mc_task.json"
    tqa.write_text(json.dumps([{"question": "q", "mc1_targets": {"a": 0}, "mc2_targets": {"a": 1}}]))
    with pytest.raises(
        task_utils.BenchmarkFileError, match="item 0: not a TruthfulQA row \\(mc1_targets has 0 correct"
    ):
        task_utils.load_truthfulqa({"validation": str(tqa)})
    tqa.write_text(json.dumps([{"question": "q", "mc1_targets": {"a": 1}, "mc2_targets": {"a": 0, "b": 2}}]))
    with pytest.raises(task_utils.BenchmarkFileError, match="item 0: .*field 'mc2_targets' should map answers to 0/1"):
        task_utils.load_truthfulqa({"validation": str(tqa)})


def test_task_rows_in_the_order_and_number_benchmarks_reads(fixtures):
    """One parser per format: the rows lm-eval evaluates are benchmarks.load_benchmark's items, in order
    (its doc_ids are lm-eval's), for every benchmark of the fixture folder."""
    from platypus_utils import benchmarks

    local, tasks = fixtures["local"], fixtures["tasks"]
    for name, task in (
        ("arc_challenge", "platypus_arc_challenge"),
        ("hellaswag", "platypus_hellaswag"),
        ("truthfulqa", "platypus_truthfulqa_mc2"),
    ):
        items = benchmarks.load_benchmark(name, local)
        docs = list(tasks[task].eval_docs)
        assert len(docs) == len(items) > 0, name
        golds = [tasks[task].doc_to_choice(d)[tasks[task].doc_to_target(d)] for d in docs]
        if name != "hellaswag":  # HellaSwag's built-in process_docs rewrites the endings' text
            assert [i["answer"] for i in items] == golds, name
    mmlu = benchmarks.load_benchmark("mmlu", local)
    for subject in ("abstract_algebra", "world_religions"):
        docs = list(tasks[f"platypus_mmlu_{subject}"].eval_docs)
        assert [d["question"] for d in docs] == [i["question"] for i in mmlu if i["subject"] == subject]


def test_definition_hash_covers_the_parsers(fixtures, tmp_path, monkeypatch):
    """utils.py reads the files with benchmarks.py's parsers: a change of their code is a new cache key; a reworded
    docstring or comment is not (the cached results stay valid)."""
    from platypus_utils import benchmarks

    before = write_task_configs(fixtures["local"], tmp_path / "a", ["truthfulqa_mc2"]).definition_hash
    assert before == {"truthfulqa_mc2": fixtures["suite"].definition_hash["truthfulqa_mc2"]}
    source = Path(benchmarks.__file__).read_text()
    edits = {
        "comment": source + "\n# edited\n",
        "docstring": source.replace('"""', '"""Reworded. ', 1),
        "code": source + "\nEDITED = 1\n",
    }
    after = {}
    for kind, text in edits.items():
        (tmp_path / kind).mkdir()
        (edited := tmp_path / kind / "benchmarks.py").write_text(text)
        monkeypatch.setattr(benchmarks, "__file__", str(edited))
        after[kind] = write_task_configs(fixtures["local"], tmp_path / kind / "t", ["truthfulqa_mc2"]).definition_hash
    assert after["comment"] == after["docstring"] == before
    assert after["code"]["truthfulqa_mc2"] != before["truthfulqa_mc2"]


def test_one_benchmark_list():
    from platypus_utils import benchmarks

    assert set(LEADERBOARD_METRICS) == {s.leaderboard_name for s in benchmarks.REGISTRY.values()}


# ---------------------------------------------------------------- summaries
def test_summary_mmlu_mean_over_subjects_and_weighted():
    suite = TaskSuite(
        mode="local",
        tasks_dir=None,
        task_names={"mmlu": "platypus_mmlu", "arc_challenge": "platypus_arc_challenge"},
        mmlu_subjects={"anatomy": "stem", "world_religions": "humanities"},
    )
    raws = {
        "mmlu": {
            "results": {
                "platypus_mmlu": {"acc,none": 0.7, "acc_stderr,none": 0.05},
                "platypus_mmlu_anatomy": {"acc,none": 0.5, "acc_stderr,none": 0.3},
                "platypus_mmlu_world_religions": {"acc,none": 0.75, "acc_stderr,none": 0.4},
            },
            "n-samples": {
                "platypus_mmlu_anatomy": {"effective": 2, "original": 135},
                "platypus_mmlu_world_religions": {"effective": 8, "original": 171},
            },
        },
        "arc_challenge": {
            "results": {
                "platypus_arc_challenge": {"acc,none": 0.1, "acc_norm,none": 0.25, "acc_norm_stderr,none": "N/A"}
            },
            "n-samples": {"platypus_arc_challenge": {"effective": 4, "original": 1172}},
        },
    }
    s = summarise("base", "m", "h", {}, raws, suite)
    assert s["tasks"]["mmlu"]["value"] == pytest.approx(0.625)  # (0.5 + 0.75) / 2, not size-weighted
    assert s["tasks"]["mmlu"]["weighted_value"] == 0.7
    assert s["tasks"]["mmlu"]["stderr"] == pytest.approx(0.25)  # sqrt(0.09 + 0.16) / 2
    assert s["tasks"]["mmlu"]["n"] == 10
    assert s["tasks"]["arc_challenge"] == {"metric": "acc_norm", "value": 0.25, "stderr": None, "n": 4}
    assert s["mmlu_subjects"]["world_religions"] == {"acc": 0.75, "stderr": 0.4, "n": 8, "category": "humanities"}
    assert s["average"] == pytest.approx((0.625 + 0.25) / 2)
    # a benchmark lm-eval ran without the leaderboard's metric fails the variant instead of leaving the average
    del raws["arc_challenge"]["results"]["platypus_arc_challenge"]["acc_norm,none"]
    with pytest.raises(RuntimeError, match=r"no result for \['arc_challenge'\]"):
        summarise("base", "m", "h", {}, raws, suite)


def test_mmlu_stderr_when_subjects_have_one_question():
    # limit 1 per subject: lm-eval gives no per-subject stderr; the mean over subjects is then the
    # mean over the questions, whose standard error is lm-eval's sample formula on the 0/1 scores
    names = ["anatomy", "astronomy", "world_religions", "virology"]
    suite = TaskSuite(
        mode="local", tasks_dir=None, task_names={"mmlu": "platypus_mmlu"}, mmlu_subjects={n: "stem" for n in names}
    )
    scores = [1.0, 0.0, 1.0, 1.0]
    results = {f"platypus_mmlu_{n}": {"acc,none": a, "acc_stderr,none": "N/A"} for n, a in zip(names, scores)}
    n_samples = {f"platypus_mmlu_{n}": {"effective": 1, "original": 100} for n in names}
    s = summarise("base", "m", "h", {}, {"mmlu": {"results": results, "n-samples": n_samples}}, suite)
    mmlu = s["tasks"]["mmlu"]
    assert mmlu["value"] == 0.75
    import statistics

    assert mmlu["stderr"] == pytest.approx(statistics.stdev(scores) / math.sqrt(4))
    assert mmlu["weighted_stderr"] == mmlu["stderr"] and mmlu["stderr_method"].startswith("pooled")
    # subjects of different sizes: no pooled figure
    n_samples["platypus_mmlu_virology"]["effective"] = 3
    s = summarise("base", "m", "h", {}, {"mmlu": {"results": results, "n-samples": n_samples}}, suite)
    assert s["tasks"]["mmlu"]["stderr"] is None


def test_resolve_variant(tmp_path, monkeypatch):
    import platypus_utils.models as models

    monkeypatch.setattr(models, "resolve_model", lambda ref, cache_dir=None: f"/resolved/{ref}")
    p = profile_for(
        tmp_path,
        tmp_path / "bench",
        "base-model",
        variants=["base"],
        merge={"partners": [{"name": "orca", "model": "org/orca"}]},
    )
    assert resolve_variant(p, "base").pretrained == "/resolved/base-model"
    assert resolve_variant(p, "orca").pretrained == "/resolved/org/orca"
    with pytest.raises(FileNotFoundError, match="adapter"):
        resolve_variant(p, "adapter")
    adapter = p.run_dir("03_finetune") / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    spec = resolve_variant(p, "adapter")
    assert (spec.pretrained, spec.peft) == ("/resolved/base-model", str(adapter.resolve()))
    with pytest.raises(FileNotFoundError, match="merge_report.json"):
        resolve_variant(p, "merged")
    merged = tmp_path / "merged_model"
    merged.mkdir()
    report = p.run_dir("04_merge") / "merge_report.json"
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps({"models": {"merged": {"path": str(merged)}}}))
    assert resolve_variant(p, "merged").pretrained == str(merged)
    with pytest.raises(KeyError, match="other"):
        resolve_variant(p, "other")


# ---------------------------------------------------------------- running a tiny model
def profile_for(tmp_path: Path, bench: Path, base: str, variants=("base",), tasks=None, **sections) -> Profile:
    tasks = tasks or {"arc_challenge": {"num_fewshot": 2, "limit": 3}, "truthfulqa_mc2": {"num_fewshot": 0, "limit": 3}}
    return Profile.model_validate(
        {
            "name": "evaltest",
            "paths": {
                "runs_dir": str(tmp_path / "runs"),
                "reports_dir": str(tmp_path / "reports"),
                "cache_dir": str(tmp_path / "cache"),
            },
            "models": {"base": base},
            "evaluate": {
                "benchmarks_dir": str(bench),
                "variants": list(variants),
                "device": "cpu",
                "batch_size": "4",
                "tasks": tasks,
            },
            **sections,
        }
    )


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A random 2-layer Llama with a byte-level BPE tokenizer trained on the fixture words."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<s>", "</s>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([" ".join(WORDS), "Question: Answer: Q: A:"] * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_model):
    """One stage run of the tiny model on a 3-doc ARC (2-shot) and TruthfulQA (0-shot)."""
    root = tmp_path_factory.mktemp("run")
    local, _ = write_fixtures(root)
    profile = profile_for(root, local, str(tiny_model))
    result = run_evaluate(profile)
    return {"profile": profile, "result": result, "local": local, "root": root}


def test_stage_outputs(evaluated):
    out = evaluated["profile"].run_dir(STAGE)
    summary = json.loads((out / "base.json").read_text())
    assert summary == evaluated["result"]["summaries"]["base"]
    assert set(summary["tasks"]) == {"arc_challenge", "truthfulqa_mc2"}
    assert summary["tasks"]["arc_challenge"]["metric"] == "acc_norm" and summary["tasks"]["arc_challenge"]["n"] == 3
    assert summary["tasks"]["truthfulqa_mc2"]["metric"] == "mc2"
    assert 0.0 < summary["tasks"]["truthfulqa_mc2"]["value"] < 1.0
    assert summary["average"] == pytest.approx(
        (summary["tasks"]["arc_challenge"]["value"] + summary["tasks"]["truthfulqa_mc2"]["value"]) / 2
    )
    samples = [json.loads(line) for line in (out / "base.samples.jsonl").read_text().splitlines()]
    assert sorted({(s["benchmark"], s["doc_id"]) for s in samples}) == [
        (b, k) for b in ("arc_challenge", "truthfulqa_mc2") for k in range(3)
    ]
    raw = json.loads((out / "base.raw.json").read_text())
    assert (
        raw["arc_challenge"]["results"]["platypus_arc_challenge"]["acc_norm,none"]
        == summary["tasks"]["arc_challenge"]["value"]
    )
    manifest = read_manifest(out)  # paths absolute again
    assert str(Path(evaluated["local"] / "truthfulqa" / "mc_task.json").resolve()) in manifest["inputs"]
    assert str(Path(evaluated["profile"].models.base).resolve()) in manifest["inputs"]
    assert str((out / "base.json").resolve()) in manifest["outputs"]
    report = json.loads((out / "evaluate_report.json").read_text())
    assert report["variants"]["base"]["status"] == "ok" and report["failed"] == []


def test_matches_lm_eval_command_line(evaluated, tiny_model, tmp_path):
    """Same model, tasks and settings through `lm_eval` itself: same numbers, same log-likelihoods."""
    out = evaluated["profile"].run_dir(STAGE)
    cli = Path(sys.executable).with_name("lm_eval")
    cmd = [
        str(cli),
        "--model",
        "hf",
        "--model_args",
        f"pretrained={tiny_model},dtype=float32",
        "--tasks",
        "platypus_arc_challenge,platypus_truthfulqa_mc2",
        "--include_path",
        str(out / "tasks"),
        "--num_fewshot",
        "2",
        "--limit",
        "3",
        "--device",
        "cpu",
        "--batch_size",
        "4",
        "--log_samples",
        "--output_path",
        str(tmp_path / "cli"),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next((tmp_path / "cli").rglob("results_*.json")).read_text())["results"]
    summary = evaluated["result"]["summaries"]["base"]["tasks"]
    assert summary["arc_challenge"]["value"] == pytest.approx(
        results["platypus_arc_challenge"]["acc_norm,none"], abs=1e-9
    )
    assert summary["truthfulqa_mc2"]["value"] == pytest.approx(results["platypus_truthfulqa_mc2"]["acc,none"], abs=1e-9)
    ours = {
        (s["task"], s["doc_id"]): s["filtered_resps"]
        for s in map(json.loads, (out / "base.samples.jsonl").read_text().splitlines())
    }
    theirs = {}
    for path in (tmp_path / "cli").rglob("samples_*.jsonl"):
        task = re.match(r"samples_(.+)_\d{4}-", path.name).group(1)
        for s in map(json.loads, path.read_text().splitlines()):
            theirs[(task, s["doc_id"])] = s["filtered_resps"]
    assert ours.keys() == theirs.keys() and len(ours) == 6
    for key in ours:
        assert [float(x[0]) for x in ours[key]] == pytest.approx([float(x[0]) for x in theirs[key]], abs=1e-5)


def test_cache_reused_without_lm_eval(evaluated, monkeypatch):
    out = evaluated["profile"].run_dir(STAGE)
    before = {p.name: p.read_bytes() for p in (out / "base.json", out / "base.samples.jsonl")}

    def must_not_run(*args, **kwargs):
        raise AssertionError("lm-eval called although the result is cached")

    monkeypatch.setattr(ev_stage, "run_lm_eval", must_not_run)
    monkeypatch.setattr(ev_stage, "make_lm", must_not_run)
    result = run_evaluate(evaluated["profile"])
    assert result["failed"] == {}
    assert {p: (out / p).read_bytes() for p in before} == before
    assert json.loads((out / "manifest.json").read_text())["metrics"]["base_cached"] == {
        "arc_challenge": True,
        "truthfulqa_mc2": True,
    }
    # a changed setting is a different key: lm-eval would run (here it fails loudly). The only variant
    # failing fails the stage; the last good report and the files it names stay, this run's report
    # goes beside them
    good_report = (out / "evaluate_report.json").read_bytes()
    changed = evaluated["profile"].model_copy(deep=True)
    changed.evaluate.tasks["arc_challenge"].limit = 2
    with pytest.raises(EvaluationError, match="every variant failed .*evaluate_report.failed.json .*last good"):
        run_evaluate(changed)
    assert (out / "evaluate_report.json").read_bytes() == good_report
    assert "lm-eval called" in json.loads((out / FAILED_REPORT).read_text())["variants"]["base"]["error"]
    assert {p: (out / p).read_bytes() for p in before} == before
    assert json.loads((out / "attempt.json").read_text())["status"] == "failed"
    # the next good run removes the failed report
    run_evaluate(evaluated["profile"])
    assert not (out / FAILED_REPORT).exists()


def _entry(tmp_path):
    cache = EvalCache(tmp_path / "eval")
    raw = {"results": {"t": {"acc,none": 0.5}}}
    samples = [{"doc_id": 0, "resps": "café"}, {"doc_id": 1, "resps": "x"}]
    cache.put("k", {"benchmark": "b"}, raw, samples)
    return cache, raw, samples


def test_eval_cache_entry_carries_the_samples_checksum(tmp_path):
    cache, raw, samples = _entry(tmp_path)
    path, samples_path = cache.paths("k")
    entry = json.loads(path.read_text())
    assert entry["samples_sha256"] == sha256_file(samples_path) and entry["format"] == CACHE_FORMAT
    got = cache.get("k")
    assert got["raw"] == raw and got["samples"] == samples
    assert cache.get("absent") is None


@pytest.mark.parametrize(
    "damage",
    [
        "truncated_samples",
        "edited_samples",
        "binary_entry",
        "truncated_entry",
        "samples_missing",
        "entry_missing",
        "old_format",
        "not_a_dict",
    ],
)
def test_damaged_eval_cache_entry_is_logged_removed_and_missed(tmp_path, damage, caplog):
    cache, raw, samples = _entry(tmp_path)
    path, samples_path = cache.paths("k")
    if damage == "truncated_samples":
        samples_path.write_bytes(samples_path.read_bytes()[:-7])
    elif damage == "edited_samples":  # still valid JSON lines: only the checksum tells
        samples_path.write_text(samples_path.read_text().replace('"x"', '"y"'))
    elif damage == "binary_entry":
        path.write_bytes(b"\xff\xfe\x00garbage")
    elif damage == "truncated_entry":
        path.write_bytes(path.read_bytes()[:20])
    elif damage == "samples_missing":
        samples_path.unlink()
    elif damage == "entry_missing":  # a put killed between its two writes
        path.unlink()
    elif damage == "old_format":
        path.write_text(json.dumps({**json.loads(path.read_text()), "format": 1}))
    else:
        path.write_text("[1, 2]")
    with caplog.at_level("WARNING", logger="platypus"):
        assert cache.get("k") is None
    assert str(path) in caplog.text and "damaged" in caplog.text
    assert not path.exists() and not samples_path.exists()
    cache.put("k", {"benchmark": "b"}, raw, samples)  # recomputed: a good entry again
    assert cache.get("k")["samples"] == samples


def test_damaged_cache_entry_is_recomputed_in_a_run(evaluated, tmp_path, caplog):
    """A run over a damaged entry evaluates that benchmark again (and only that one), same numbers."""
    profile = evaluated["profile"]
    base = evaluated["result"]["summaries"]["base"]
    key = base["settings"]["tasks"]["truthfulqa_mc2"]["cache_key"]
    cache = EvalCache(profile.cache_dir() / "eval")
    samples_path = cache.paths(key)[1]
    samples_path.write_bytes(samples_path.read_bytes()[: samples_path.stat().st_size // 2])
    with caplog.at_level("WARNING", logger="platypus"):
        result = run_evaluate(profile)
    assert str(cache.paths(key)[0]) in caplog.text
    manifest = json.loads((profile.run_dir(STAGE) / "manifest.json").read_text())
    assert manifest["metrics"]["base_cached"] == {"arc_challenge": True, "truthfulqa_mc2": False}
    assert result["summaries"]["base"]["tasks"] == base["tasks"]
    assert cache.get(key) is not None  # healed


def test_steps_composed_write_what_a_run_writes(evaluated, tmp_path, monkeypatch):
    """The notebook's steps, one by one, give run_evaluate's files; the frames show the summaries."""
    profile = evaluated["profile"].model_copy(deep=True)
    profile.paths.runs_dir = str(tmp_path / "steps")
    assert required_stages(profile) == []
    suite = prepare_tasks(profile)
    table = task_table(profile, suite)
    assert list(table.index) == ["arc_challenge", "truthfulqa_mc2"]
    assert table.loc["arc_challenge", ["num_fewshot", "limit", "metric"]].tolist() == [2, 3, "acc_norm"]
    assert table.loc["truthfulqa_mc2", "data"] == "truthfulqa/mc_task.json"
    specs, unresolved = resolve_variants(profile)
    assert unresolved == {} and variants_table(specs).loc[0, "loads"] == str(profile.models.base)
    evaluations = evaluate_variants(profile, suite, specs, unresolved)
    assert evaluations["base"].cached == {"arc_challenge": True, "truthfulqa_mc2": True}
    summaries = {v: e.summary for v, e in evaluations.items()}
    scores = scores_frame(summaries).set_index(["variant", "benchmark"])
    assert scores.loc[("base", "arc_challenge"), "value"] == summaries["base"]["tasks"]["arc_challenge"]["value"]
    assert scores.loc[("base", "average"), "value"] == pytest.approx(summaries["base"]["average"])
    save(profile, suite, evaluations)
    for name in ("base.json", "base.raw.json", "base.samples.jsonl"):
        assert (profile.run_dir(STAGE) / name).read_bytes() == (
            evaluated["profile"].run_dir(STAGE) / name
        ).read_bytes(), name
    # force: lm-eval runs again (the cache is not read), same numbers
    forced = evaluate_variants(profile, suite, specs, unresolved, force=True)
    assert forced["base"].cached == {"arc_challenge": False, "truthfulqa_mc2": False}
    assert forced["base"].summary["tasks"] == summaries["base"]["tasks"]


def test_frames_of_summaries():
    def summary(accs):
        subjects = {s: {"acc": a, "stderr": 0.1, "n": 4, "category": "stem"} for s, a in accs.items()}
        return {
            "tasks": {"mmlu": {"metric": "acc", "value": sum(accs.values()) / len(accs), "stderr": 0.05, "n": 8}},
            "mmlu_subjects": subjects,
            "average": sum(accs.values()) / len(accs),
            "average_over": ["mmlu"],
        }

    summaries = {
        "base": summary({"anatomy": 0.25, "virology": 0.5}),
        "merged": summary({"anatomy": 0.75, "virology": 0.5}),
    }
    frame = mmlu_subjects_frame(summaries)
    assert list(frame.index) == ["anatomy", "virology"] and frame.index.name == "subject"
    assert frame.loc["anatomy", ["category", "n", "base", "merged"]].tolist() == ["stem", 4, 0.25, 0.75]
    assert (frame["merged"] - frame["base"]).sort_values(ascending=False).index[0] == "anatomy"
    scores = scores_frame(summaries, cached={"base": {"mmlu": True}})
    assert scores[["variant", "benchmark", "cached"]].values.tolist()[0] == ["base", "mmlu", True]
    assert scores["benchmark"].tolist() == ["mmlu", "average"] * 2 and scores["cached"].isna().sum() == 3
    fig = plot_scores(scores)
    assert len(fig.axes[0].patches) == 2  # one bar per variant for the one benchmark


def test_required_stages(tmp_path):
    p = profile_for(tmp_path, tmp_path / "bench", "m", variants=["base"])
    assert required_stages(p) == []
    p.evaluate.variants = ["base", "adapter", "merged"]
    assert required_stages(p) == ["03_finetune", "04_merge"]


def test_failed_variant_recorded_others_kept(evaluated, tmp_path):
    profile = evaluated["profile"].model_copy(deep=True)
    profile.evaluate.variants = ["base", "merged", "adapter"]
    broken = tmp_path / "broken_merge"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    report = profile.run_dir("04_merge") / "merge_report.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps({"models": {"merged": {"path": str(broken)}}}))
    result = run_evaluate(profile)
    assert set(result["summaries"]) == {"base"}
    assert set(result["failed"]) == {"merged", "adapter"}
    assert "adapter_config.json" in result["failed"]["adapter"]
    out = profile.run_dir(STAGE)
    stage_report = json.loads((out / "evaluate_report.json").read_text())
    assert stage_report["variants"]["merged"]["status"] == "failed"
    assert stage_report["failed"] == ["adapter", "merged"]
    assert json.loads((out / "manifest.json").read_text())["metrics"]["variants_failed"] == ["adapter", "merged"]

    profile.evaluate.variants = ["merged"]
    with pytest.raises(EvaluationError, match="every variant failed"):
        run_evaluate(profile)
    assert json.loads((out / FAILED_REPORT).read_text())["failed"] == ["merged"]
    assert json.loads((out / "evaluate_report.json").read_text()) == stage_report  # the last good one
    (out / FAILED_REPORT).unlink()
    report.unlink()


def test_adapter_variant_runs_unmerged_lora(evaluated):
    """'adapter' = base + the 03_finetune LoRA through lm-eval's peft= argument."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    profile = evaluated["profile"].model_copy(deep=True)
    profile.name = "evaltest-adapter"
    profile.evaluate.variants = ["adapter"]
    profile.evaluate.tasks = {"truthfulqa_mc2": profile.evaluate.tasks["truthfulqa_mc2"]}
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(profile.models.base)
    lora = get_peft_model(
        model,
        LoraConfig(r=4, lora_alpha=8, target_modules=["gate_proj", "up_proj", "down_proj"], init_lora_weights=False),
    )  # non-zero B: the adapter changes outputs
    lora.save_pretrained(profile.run_dir("03_finetune") / "adapter")
    result = run_evaluate(profile)
    adapter, base = result["summaries"]["adapter"], evaluated["result"]["summaries"]["base"]
    assert adapter["model"].endswith("03_finetune/adapter")
    assert adapter["model_hash"] != base["model_hash"]
    assert adapter["tasks"]["truthfulqa_mc2"]["value"] != base["tasks"]["truthfulqa_mc2"]["value"]
    manifest = read_manifest(profile.run_dir(STAGE))  # paths absolute again
    assert str((profile.run_dir("03_finetune") / "adapter").resolve()) in manifest["inputs"]


def test_hub_suite_names():
    suite = hub_task_suite(["arc_challenge", "mmlu", "truthfulqa_mc2"])
    assert suite.task_names == {"arc_challenge": "arc_challenge", "mmlu": "mmlu", "truthfulqa_mc2": "truthfulqa_mc2"}
    assert len(suite.mmlu_subjects) == 57 and suite.mmlu_subjects["anatomy"] == "stem"
    subset = hub_task_suite(["mmlu"], ["world_religions", "anatomy"])
    assert subset.task_names["mmlu"] == "mmlu_anatomy,mmlu_world_religions"
    with pytest.raises(ValueError, match="unknown MMLU subjects"):
        hub_task_suite(["mmlu"], ["astrology"])


# ---------------------------------------------------------------- references, resume, backends (issue 20)
def test_reference_is_evaluated_after_the_variants_and_reuses_same_weights(evaluated, tmp_path, monkeypatch):
    """A released model with the same weights as a variant takes that variant's cached results (no lm-eval
    call), comes after the variants, and is marked as a reference in its summary, report and files."""
    from platypus_utils.config import ReferenceConfig

    profile = evaluated["profile"].model_copy(deep=True)
    profile.paths.runs_dir = str(tmp_path / "runs")
    profile.evaluate.references = [ReferenceConfig(name="base-release", model=profile.models.base, compare_to="base")]
    assert evaluation_names(profile) == ["base", "base-release"]

    def must_not_run(*args, **kwargs):
        raise AssertionError("lm-eval called although the weights are the base's, whose results are cached")

    monkeypatch.setattr(ev_stage, "run_lm_eval", must_not_run)
    monkeypatch.setattr(ev_stage, "make_lm", must_not_run)
    specs, unresolved = resolve_variants(profile)
    table = variants_table(specs, unresolved)
    assert table[["variant", "kind", "compare_to"]].values.tolist() == [
        ["base", "variant", ""],
        ["base-release", "reference", "base"],
    ]
    result = run_evaluate(profile)
    assert list(result["summaries"]) == ["base", "base-release"] and result["failed"] == {}
    ref, base = result["summaries"]["base-release"], result["summaries"]["base"]
    assert (ref["kind"], ref["compare_to"], ref["published"]) == ("reference", "base", None)
    assert base["kind"] == "variant" and ref["tasks"] == base["tasks"] and ref["model_hash"] == base["model_hash"]
    out = profile.run_dir(STAGE)
    report = json.loads((out / "evaluate_report.json").read_text())
    assert list(report["variants"]) == ["base", "base-release"] and report["references"] == ["base-release"]
    assert report["variants"]["base-release"]["kind"] == "reference" and report["backend"] == "hf"
    samples = [json.loads(line) for line in (out / "base-release.samples.jsonl").read_text().splitlines()]
    assert {s["variant"] for s in samples} == {"base-release"} and len(samples) == 6
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["base-release_cached"] == {"arc_challenge": True, "truthfulqa_mc2": True}


def test_a_killed_evaluation_resumes_per_benchmark(evaluated, tmp_path, monkeypatch):
    """Each benchmark's result is cached when lm-eval returns it: after a failure (a kill) in the second
    benchmark, the next run evaluates only that one."""
    profile = evaluated["profile"].model_copy(deep=True)
    profile.paths.runs_dir = str(tmp_path / "runs")
    for task in profile.evaluate.tasks.values():
        task.limit = 2  # a new cache key for both benchmarks
    real, calls = run_lm_eval, []

    def killed_on_truthfulqa(lm, task_manager, task_name, num_fewshot, limit):
        calls.append(task_name)
        if "truthfulqa" in task_name:
            raise KeyboardInterrupt("killed")
        return real(lm, task_manager, task_name, num_fewshot, limit)

    monkeypatch.setattr(ev_stage, "run_lm_eval", killed_on_truthfulqa)
    with pytest.raises(KeyboardInterrupt):
        evaluate_variant(profile, "base", prepare_tasks(profile))
    assert calls == ["platypus_arc_challenge", "platypus_truthfulqa_mc2"]

    def counted(lm, task_manager, task_name, num_fewshot, limit):
        calls.append(task_name)
        return real(lm, task_manager, task_name, num_fewshot, limit)

    calls.clear()
    monkeypatch.setattr(ev_stage, "run_lm_eval", counted)
    resumed = evaluate_variant(profile, "base", prepare_tasks(profile))
    assert calls == ["platypus_truthfulqa_mc2"]
    assert resumed.cached == {"arc_challenge": True, "truthfulqa_mc2": False}
    assert resumed.summary["tasks"]["arc_challenge"]["n"] == 2


def test_force_recomputes_a_key_once_per_run(evaluated, tmp_path, monkeypatch):
    """--force reruns lm-eval, but a reference with the same weights as a variant reuses what the
    variant computed in this run."""
    from platypus_utils.config import ReferenceConfig

    profile = evaluated["profile"].model_copy(deep=True)
    profile.paths.runs_dir = str(tmp_path / "runs")
    profile.evaluate.tasks = {"truthfulqa_mc2": profile.evaluate.tasks["truthfulqa_mc2"]}
    profile.evaluate.references = [ReferenceConfig(name="release", model=profile.models.base)]
    real, calls = run_lm_eval, []

    def counted(*args):
        calls.append(args[2])
        return real(*args)

    monkeypatch.setattr(ev_stage, "run_lm_eval", counted)
    specs, unresolved = resolve_variants(profile)
    out = evaluate_variants(profile, prepare_tasks(profile), specs, unresolved, force=True)
    assert calls == ["platypus_truthfulqa_mc2"]
    assert out["base"].cached == {"truthfulqa_mc2": False} and out["release"].cached == {"truthfulqa_mc2": True}


def test_the_recipe_frame_is_what_lm_eval_is_called_with(evaluated, tmp_path, monkeypatch):
    """Notebook 05's recipe cell (lm_eval_calls) shows the arguments simple_evaluate then receives, call by
    call, and the model lm-eval builds from its model_args."""
    import lm_eval.models.huggingface as lm_hf

    profile = evaluated["profile"].model_copy(deep=True)
    profile.paths.runs_dir = str(tmp_path / "runs")
    suite = prepare_tasks(profile)
    specs = {"base": resolve_variants(profile)[0]["base"]}
    calls = lm_eval_calls(profile, suite, specs)
    assert list(calls["benchmark"]) == list(profile.evaluate.tasks) and set(calls["model"]) == {"hf"}
    # what a reader checks the recipe against: the profile's shots and limits, the leaderboard's seeds, the weights
    for row in calls.to_dict(orient="records"):
        task = profile.evaluate.tasks[row["benchmark"]]
        assert (row["num_fewshot"], row["limit"], row["log_samples"]) == (task.num_fewshot, task.limit, True)
        assert (row["random_seed"], row["numpy_random_seed"], row["torch_random_seed"]) == (0, 1234, 1234)
        assert row["fewshot_random_seed"] == 1234 and row["tasks"] == [f"platypus_{row['benchmark']}"]
        assert (
            row["model_args"].startswith(f"pretrained={specs['base'].pretrained},")
            and "device=cpu" in row["model_args"]
        )
    real_evaluate, real_hflm, seen, built = ev_stage.lm_eval.simple_evaluate, lm_hf.HFLM, [], []
    monkeypatch.setattr(
        ev_stage.lm_eval,
        "simple_evaluate",
        lambda model, task_manager, **kw: (
            seen.append(kw) or real_evaluate(model=model, task_manager=task_manager, **kw)
        ),
    )
    monkeypatch.setattr(lm_hf, "HFLM", lambda **kw: built.append(kw) or real_hflm(**kw))
    evaluate_variant(profile, "base", suite, spec=specs["base"], force=True)
    columns = [c for c in calls.columns if c not in ("variant", "benchmark", "model", "model_args")]
    assert seen == [{c: row[c] for c in columns} for row in calls.to_dict(orient="records")]
    assert set(calls["model_args"]) == {",".join(f"{k}={v}" for k, v in built[0].items())}


def test_reference_revision_is_split_and_hashed(tmp_path, monkeypatch):
    import platypus_utils.models as models

    monkeypatch.setattr(models, "resolve_model", lambda ref, cache_dir=None: ref)
    from platypus_utils.config import ReferenceConfig

    p = profile_for(tmp_path, tmp_path / "bench", "org/base", variants=["base"])
    p.evaluate.references = [
        ReferenceConfig(name="rel", model="garage-bAInd/Platypus2-13B@abc123", compare_to="base", published=None)
    ]
    spec = resolve_variant(p, "rel")
    assert (spec.pretrained, spec.revision, spec.kind, spec.compare_to) == (
        "garage-bAInd/Platypus2-13B",
        "abc123",
        "reference",
        "base",
    )
    assert model_hash(spec) == "hub:garage-bAInd/Platypus2-13B@abc123"
    assert split_revision("org/name") == ("org/name", None)
    assert split_revision(str(tmp_path)) == (str(tmp_path), None)
    # resolve_model puts a pinned hub model in the hub's cache: hashed by its commit, not its 26 GB of files
    snapshot = tmp_path / "hub" / "models--garage-bAInd--Platypus2-13B" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    assert hub_snapshot_id(snapshot) == "hub:garage-bAInd/Platypus2-13B@" + "a" * 40
    assert model_hash(ModelSpec("x", "m", str(snapshot))) == hub_snapshot_id(snapshot)
    assert hub_snapshot_id(tmp_path) is None


def test_vllm_backend_fails_before_any_work_naming_the_key(evaluated, tmp_path, monkeypatch):
    profile = evaluated["profile"].model_copy(deep=True)
    profile.paths.runs_dir = str(tmp_path / "runs")
    profile.evaluate.backend = "vllm"
    monkeypatch.setattr(ev_models, "find_spec", lambda name: None)
    with pytest.raises(BackendError, match=r"evaluate\.backend: vllm needs the vllm package"):
        run_evaluate(profile)
    monkeypatch.setattr(ev_models, "find_spec", lambda name: object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendError, match=r"evaluate\.backend: vllm needs a CUDA GPU"):
        run_evaluate(profile)
    assert not profile.run_dir(STAGE).exists()  # nothing written, no task folder
    profile.evaluate.backend = "hf"
    check_backend(profile)  # hf: nothing to check


def _vllm_init_arguments() -> set[str]:
    """The named arguments of lm-eval's VLLM.__init__, read from the installed source (importing it needs vllm)."""
    import ast
    from importlib.util import find_spec

    path = Path(find_spec("lm_eval.models").submodule_search_locations[0]) / "vllm_causallms.py"
    tree = ast.parse(path.read_text())
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "VLLM")
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    assert init.args.kwarg is not None  # the rest goes to vllm.LLM (enable_prefix_caching)
    return {a.arg for a in init.args.args + init.args.kwonlyargs}


def _fake_vllm_modules(monkeypatch, base, sampling_fields=("skip_reading_prefix_cache",)):
    """Stand-ins for `vllm` (SamplingParams taking lm-eval's fields and `sampling_fields`) and lm-eval's
    vllm_causallms (VLLM = `base`): vllm installs on CUDA machines only."""
    import types

    class SamplingParams:
        def __init__(self, **kwargs):
            unknown = set(kwargs) - {"temperature", "prompt_logprobs", "max_tokens", "detokenize", *sampling_fields}
            if unknown:
                raise TypeError(f"unexpected keyword argument {sorted(unknown)}")
            self.__dict__.update(kwargs)

    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = SamplingParams
    causal = types.ModuleType("lm_eval.models.vllm_causallms")
    causal.VLLM = base
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "lm_eval.models.vllm_causallms", causal)
    monkeypatch.delitem(sys.modules, "platypus_utils.evaluate.vllm_prefix", raising=False)
    return SamplingParams


def test_vllm_model_arguments(tmp_path, monkeypatch):
    """lm_settings and make_lm for backend vllm: lm-eval's VLLM with prefix caching and batch size auto,
    its argument names as the installed lm-eval 0.4.13 spells them; the adapter as a LoRA request."""

    profile = profile_for(tmp_path, tmp_path / "bench", "org/base")
    profile.evaluate.backend = "vllm"
    profile.evaluate.batch_size = "8"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True, raising=False)
    profile.evaluate.device = "cuda"
    settings = lm_settings(profile)
    assert settings["backend"] == "vllm" and settings["batch_size"] == "auto"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 12}))
    spec = ModelSpec("adapter", "org/base + adapter", "org/base", peft=str(adapter), revision="abc")
    built = {}

    class FakeVLLM:  # lm-eval's VLLM, recording its arguments
        def __init__(self, **kwargs):
            built.update(kwargs)

    _fake_vllm_modules(monkeypatch, FakeVLLM)
    model = make_lm(spec, {**settings, "parallelize": True})
    assert type(model).__name__ == "PrefixCachedVLLM" and isinstance(model, FakeVLLM)
    assert built["enable_prefix_caching"] is True and built["batch_size"] == "auto"
    assert (built["pretrained"], built["revision"], built["lora_local_path"]) == ("org/base", "abc", str(adapter))
    assert built["max_lora_rank"] == 16  # the smallest rank vLLM takes that holds r=12
    assert built["tensor_parallel_size"] >= 1 and "device" not in built
    named = _vllm_init_arguments()
    assert set(built) - {"enable_prefix_caching"} <= named, set(built) - named
    # the hf backend's cache keys are as before: no "backend" field
    profile.evaluate.backend = "hf"
    assert "backend" not in lm_settings(profile)


class _CachingEngine:
    """vLLM's prefill as lm-eval sees it: each prompt token's log-probability (a function of the tokens
    before it), None at position 0 and, when the request reads the prefix cache, at the positions served
    from it (whole blocks of 4 shared with an earlier prompt, never the last token)."""

    def __init__(self):
        self.seen: list[list[int]] = []
        self.calls: list[tuple[int, bool]] = []

    @staticmethod
    def logprob(prefix: list[int], token: int) -> float:
        return -0.01 * (sum(prefix) % 7 + token % 5 + 1)

    def generate(self, requests, params):
        reads = getattr(params, "skip_reading_prefix_cache", True) is False
        self.calls.append((len(requests), reads))
        out = []
        for toks in requests:
            hit = 0
            if reads:
                for old in self.seen:
                    shared = next((k for k, (a, b) in enumerate(zip(old, toks)) if a != b), min(len(old), len(toks)))
                    hit = max(hit, min(shared // 4 * 4, len(toks) - 1))
            self.seen.append(list(toks))
            logprobs = [None] + [
                None if i < hit else {t: self.logprob(toks[:i], t), t + 1: -9.0} for i, t in enumerate(toks) if i > 0
            ]
            out.append(types.SimpleNamespace(prompt_logprobs=logprobs))
        return out


def test_vllm_loglikelihood_reads_the_prefix_cache_and_scores_from_logits(monkeypatch):
    """evaluate.backend vllm: loglikelihood requests ask vLLM to read its prefix cache (lm-eval 0.4.13's own
    prompt_logprobs requests skip it); a shared few-shot context is served from the cache and each option's
    continuation scored from logits, the same score as without the cache; a request whose continuation was
    served from the cache (an identical prompt) is scored again without it; a vLLM without the setting runs
    lm-eval's path."""

    class FakeVLLM:  # the two methods of lm-eval 0.4.13's VLLM the subclass builds on
        def __init__(self, **kwargs):
            self.engine = _CachingEngine()

        def _model_generate(self, requests, generate=False, sampling_params=None):
            if not generate or sampling_params is None:
                sampling_params = sys.modules["vllm"].SamplingParams(
                    temperature=0, prompt_logprobs=1, max_tokens=1, detokenize=False
                )
            return self.engine.generate(requests, sampling_params)

        @staticmethod
        def _parse_logprobs(tokens, outputs, ctxlen):
            dicts = outputs.prompt_logprobs
            return sum(d.get(t) for t, d in zip(tokens[ctxlen:], dicts[ctxlen:], strict=True)), True

    _fake_vllm_modules(monkeypatch, FakeVLLM)
    from platypus_utils.evaluate.vllm_prefix import PrefixCachedVLLM

    context = list(range(10, 30))  # 20 tokens of few-shot context, shared by the four options
    options = [[1, 2], [3], [4, 5, 6], [7]]
    lm = PrefixCachedVLLM()
    long = context + [8, 9, 10, 11, 12]  # a continuation over a whole block, asked twice (identical prompts)
    requests = [context + o for o in options] + [long, long]
    outputs = lm._model_generate(requests, generate=False)
    assert lm.engine.calls == [(6, True)]  # one batch, reading the cache
    assert all(o.prompt_logprobs[len(context) - 1] is None for o in outputs[1:])  # the context came from the cache
    scores = [lm._parse_logprobs(r, o, len(context))[0] for r, o in zip(requests, outputs)]
    expected = [sum(_CachingEngine.logprob(r[:i], r[i]) for i in range(len(context), len(r))) for r in requests]
    assert scores == pytest.approx(expected)
    assert lm.prefix_stats == {"read_cache": 6, "rescored": 1}  # the identical prompt, scored again
    assert lm.engine.calls[1:] == [(1, False)]

    _fake_vllm_modules(monkeypatch, FakeVLLM, sampling_fields=())  # a vLLM without skip_reading_prefix_cache
    from platypus_utils.evaluate.vllm_prefix import PrefixCachedVLLM as Older

    lm = Older()
    lm._model_generate(requests[:2], generate=False)
    assert lm.engine.calls == [(2, False)]


def test_variants_spread_over_workers_fill_the_cache_the_stage_then_reads(evaluated, tiny_model, tmp_path, monkeypatch):
    """Several GPUs: one worker process per GPU evaluates whole variants (spread.py); the stage's own pass
    then finds every benchmark result in the eval cache, under the keys a sequential run uses, and writes
    the same numbers. Run here with two CPU workers ("GPU" slots given as CUDA_VISIBLE_DEVICES values);
    one GPU or a CPU gives no slots (the sequential path)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from platypus_utils.config import ReferenceConfig
    from platypus_utils.evaluate import spread

    profile = profile_for(tmp_path, evaluated["local"], str(tiny_model), variants=("base", "adapter"))
    profile.evaluate.references = [ReferenceConfig(name="released", model=str(tiny_model))]
    torch.manual_seed(1)
    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model),
        LoraConfig(r=4, lora_alpha=8, target_modules=["gate_proj", "up_proj", "down_proj"], init_lora_weights=False),
    )
    lora.save_pretrained(profile.run_dir("03_finetune") / "adapter")
    suite = prepare_tasks(profile)
    specs, unresolved = resolve_variants(profile)
    assert not unresolved and set(specs) == {"base", "adapter", "released"}
    assert spread.gpu_slots(profile, specs) == []  # a CPU: nothing to spread over
    failed = spread.spread_variants(profile, suite, specs, ["", ""], evaluate_variant)
    assert failed == {}
    evaluations = evaluate_variants(profile, suite, specs, unresolved)
    assert all(all(e.cached.values()) for e in evaluations.values())  # every result came from the workers
    base = evaluations["base"].summary["tasks"]
    assert base == evaluated["result"]["summaries"]["base"]["tasks"]  # the numbers of a sequential run
    assert evaluations["released"].summary["tasks"] == base
    assert evaluations["adapter"].summary["tasks"] != base  # another model, evaluated by a worker too


@pytest.mark.parametrize(
    ("gpus", "size_gb", "parallelize", "slots"),
    [
        (8, 26, "auto", ["0", "1", "2", "3", "4", "5", "6", "7"]),  # 13B in bf16: a model per GPU
        (8, 138, "auto", ["0,1", "2,3", "4,5", "6,7"]),  # 70B in bf16: two GPUs a model, four at once
        (2, 138, "auto", []),  # one group of two: nothing to spread
        (1, 26, "auto", []),  # one GPU
        (8, 26, True, []),  # every model over every GPU, as asked
        (8, 138, False, []),  # a model larger than a GPU kept on one device: nothing to group
        (8, None, "auto", []),  # a size not known: one model at a time
    ],
)
def test_gpu_groups_follow_the_largest_model(tmp_path, monkeypatch, gpus, size_gb, parallelize, slots):
    """Which CUDA_VISIBLE_DEVICES groups stage 05 spreads the models over (80 GB GPUs)."""
    from platypus_utils.evaluate import spread

    profile = profile_for(tmp_path, tmp_path / "bench", "org/base", variants=("base",))
    profile.evaluate.device, profile.evaluate.parallelize = "cuda", parallelize
    monkeypatch.setattr(spread.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(spread.torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(spread.torch.cuda, "is_bf16_supported", lambda *a, **k: True, raising=False)
    props = types.SimpleNamespace(total_memory=80 * 2**30)
    monkeypatch.setattr(spread.torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(spread, "weights_bytes", lambda spec, dtype: None if size_gb is None else size_gb * 10**9)
    spec = ModelSpec("base", "org/base", "org/base")
    monkeypatch.setattr(spread, "lm_settings", lambda profile, spec=None: {"device": "cuda", "dtype": "bfloat16"})
    assert spread.gpu_slots(profile, {"base": spec, "other": spec}) == slots
