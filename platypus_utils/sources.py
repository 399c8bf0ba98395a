"""Source loaders for stage 01 (`SOURCE_LOADERS`): each reads one source in its original release format
and returns Open-Platypus rows `{"instruction", "input", "output", "data_source"}` (all strings).

`load_source(src, profile)` -> (rows, skipped): `skipped` counts every row left out by reason; "filtered:*"
reasons are deliberate choices, the others unusable input. A missing file or folder is a FileNotFoundError,
an unknown source an UnknownSourceError (a ValueError) listing the known names. `limit` keeps the first N
rows after filtering, in file order.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from .artifacts import SkippedRows, iter_json_list, iter_jsonl, limit_long_fields
from .refs import is_pinned_commit, record_snapshot, split_revision

if TYPE_CHECKING:  # pragma: no cover
    from .config import Profile, SourceConfig

log = logging.getLogger("platypus")

# (where: file and line or item, row or None for a record left out and counted in `skipped`)
Records = Iterator[tuple[str, Optional[dict]]]


class UnknownSourceError(ValueError):
    """A source name that has no loader; the message lists the known names."""


# The authors' list (data_pipeline/*_format.py), with "calculation, science" split and "AI" lower-cased.
STEM_KEYWORDS: list[str] = [
    k.strip()
    for k in """
    algebra, geometry, calculus, statistics, probability, theorem, proof, equation, integral, derivative,
    matrix, vector, graph, function, complex number, real number, imaginary number, differential, fraction,
    decimal, percent, logarithm, sequence, sum, product, difference, quotient, prime, composite, factorial,
    binomial, polynomial, exponential, pi, euler, infinity, limit, differential equation, linear algebra,
    set theory, group theory, ring theory, field theory, number theory, combinatorics, topology,
    measure theory, game theory, cryptology, algorithm, computation, percentage, calculation,
    science, technology, engineering, physics, chemistry, biology, computer science, information technology,
    environmental, aerospace, biomedical, chemical, robotics, ai, artificial intelligence, machine learning,
    deep learning, neural network, programming, coding, software, hardware, network, database, security,
    cybersecurity, blockchain, virtual reality, augmented reality, quantum, nanotechnology, biotechnology,
    genetics, genomics, solar, wind, hydro, nuclear, fossil fuel, carbon, greenhouse gas, pollution,
    conservation, biodiversity, ecosystem, species, evolution, cell, molecule, atom, particle, gravity,
    relativity, momentum, velocity, acceleration, mass, heat, light, sound, electricity, magnetism
""".split(",")
]
_STEM_RE = re.compile(r"\b(?:" + "|".join(re.escape(k) for k in STEM_KEYWORDS) + r")\b")


def has_stem_keyword(text: str) -> bool:
    """True if the lower-cased text contains one of STEM_KEYWORDS as a whole word (or phrase)."""
    return bool(_STEM_RE.search(text.lower()))


def _skip(skipped: SkippedRows, reason: str) -> None:
    """Count a record left out (`return _skip(...)` returns None)."""
    skipped[reason] += 1


def _row(instruction: str, inp: str, output: str, source: str) -> dict:
    return {"instruction": instruction, "input": inp, "output": output, "data_source": source}


def _source_path(src: SourceConfig) -> Path:
    if not src.path:
        raise ValueError(
            f"source {src.name!r}: set `path` to a local copy in its original format "
            f"(or `hub_id`, where the source has a hub release)"
        )
    path = Path(src.path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: source path not found")
    return path


def _files_in(path: Path, pattern: str, exclude: tuple[str, ...] = ()) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.glob(pattern) if p.name not in exclude)
    if not files:
        raise FileNotFoundError(f"{path}: no {pattern} files in this folder")
    return files


def _records(files: Iterable[Path], skipped: SkippedRows, what: str = "") -> Iterator[tuple[str, Any]]:
    """(where, value) of each record: JSON lines, or with `what` the items of JSON lists of `what`."""
    for f in files:
        if what:
            yield from ((f"{f}, item {k}", obj) for k, obj in iter_json_list(f, skipped, what=what))
        else:
            yield from ((f"{f}, line {n}", obj) for n, obj in iter_jsonl(f, skipped))


def _fields(obj: Any, required: dict[str, bool], skipped: SkippedRows) -> Optional[dict]:
    """Check the named fields of one record. required: field -> may be empty. None (counted) if bad."""
    if not isinstance(obj, dict):
        return _skip(skipped, "not_an_object")
    for field, may_be_empty in required.items():
        if field not in obj or obj[field] is None:
            return _skip(skipped, f"missing_field:{field}")
        if not isinstance(obj[field], str):
            return _skip(skipped, f"non_string_field:{field}")
        if not may_be_empty and not obj[field].strip():
            return _skip(skipped, f"empty_field:{field}")
    return obj


def open_platypus_row(obj: Any, default_source: str, skipped: SkippedRows) -> Optional[dict]:
    """A record already in the schema as a row (no data_source: `default_source`); None (counted) if bad."""
    ok = _fields(obj, {"instruction": False, "input": True, "output": False}, skipped)
    if ok is None:
        return None
    source = ok.get("data_source")
    if source is not None and not isinstance(source, str):
        return _skip(skipped, "non_string_field:data_source")
    return _row(ok["instruction"], ok["input"], ok["output"], source or default_source)


def validate_rows(records: Iterable[Any], default_source: str, skipped: SkippedRows) -> list[dict]:
    return [row for obj in records if (row := open_platypus_row(obj, default_source, skipped)) is not None]


def load_jsonl(src: SourceConfig, profile: Profile, skipped: SkippedRows) -> Records:
    for f in _files_in(_source_path(src), "*.jsonl"):
        for where, obj in _records([f], skipped, "rows" if f.suffix == ".json" else ""):
            yield where, open_platypus_row(obj, f.stem, skipped)


def load_demo(src: SourceConfig, profile: Profile, skipped: SkippedRows) -> Records:
    from .demo_data import demo_corpus_path

    if src.path:
        log.warning("source 'demo' ignores path=%s: the demo corpus is written by the project", src.path)
    for where, obj in _records([demo_corpus_path(profile)], skipped):
        yield where, open_platypus_row(obj, "demo", skipped)


def _file_loader(pattern: str, formatter: Callable[[Any, SkippedRows], Optional[dict]], what: str = "", exclude=()):
    """A loader of the source's files matching `pattern`: JSON lines, or JSON lists of `what`."""

    def load(src: SourceConfig, profile: Profile, skipped: SkippedRows) -> Records:
        files = _files_in(_source_path(src), pattern, exclude)
        for where, obj in _records(files, skipped, what):
            yield where, formatter(obj, skipped)

    return load


def format_math(obj: Any, skipped: SkippedRows) -> Optional[dict]:
    """MATH (Hendrycks et al.): instruction = problem, output = the reference solution."""
    ok = _fields(obj, {"problem": False, "solution": False}, skipped)
    return None if ok is None else _row(ok["problem"].strip(), "", ok["solution"].strip(), "MATH")


def format_theoremqa(obj: Any, skipped: SkippedRows, theorem_key: str = "theorem") -> Optional[dict]:
    """One TheoremQA record: question + "\\nRelevant Theorem: " + theorem, output the answer (lists as JSON);
    image questions are skipped."""
    if not isinstance(obj, dict):
        return _skip(skipped, "not_an_object")
    if obj.get("Picture"):
        return _skip(skipped, "filtered:image")
    if _fields(obj, {"Question": False}, skipped) is None:
        return None
    answer = obj.get("Answer")
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        return _skip(skipped, "filtered:no_answer")
    theorem = obj.get(theorem_key) or obj.get("theorem") or ""
    if not isinstance(theorem, str):
        return _skip(skipped, f"non_string_field:{theorem_key}")
    instruction = obj["Question"].strip()
    if theorem.strip():
        instruction += "\nRelevant Theorem: " + theorem.strip()
    output = json.dumps(answer, ensure_ascii=False) if isinstance(answer, (list, dict)) else str(answer)
    return _row(instruction, "", output, "theoremqa")


def format_scibench(obj: Any, skipped: SkippedRows) -> Optional[dict]:
    """instruction = problem_text (+ " The unit of the answer is {unit}."); output = the worked solution
    followed by the final answer where a solution exists, else the answer with its unit."""
    ok = _fields(obj, {"problem_text": False}, skipped)
    if ok is None:
        return None
    unit = obj["unit"].strip() if isinstance(obj.get("unit"), str) else ""
    answer = obj.get("answer_number")
    if not isinstance(answer, str) or not answer.strip():
        answer = obj.get("answer_latex")
    answer = answer.strip() if isinstance(answer, str) else ""
    solution = obj.get("solution")
    solution = solution.replace("\r\n", "\n").strip() if isinstance(solution, str) else ""  # the release has CRLF
    if not answer and not solution:
        return _skip(skipped, "filtered:no_answer")
    final = f"{answer} {unit}".strip() if answer else ""
    output = solution + (f"\nThe answer is {final}." if final else "") if solution else final
    instruction = ok["problem_text"].strip()
    if unit:
        instruction += f" The unit of the answer is {unit}."
    return _row(instruction, "", output, "scibench")


def load_scibench(src: SourceConfig, profile: Profile, skipped: SkippedRows) -> Records:
    """SciBench: every <book>.json and its <book>_sol.json (further problems with worked solutions)."""
    folder = _source_path(src)
    if not folder.is_dir():
        raise ValueError(f"{folder}: the scibench source is a folder of <book>.json and <book>_sol.json files")
    books = sorted(p for p in folder.glob("*.json") if not p.stem.endswith("_sol"))
    if not books:
        raise FileNotFoundError(f"{folder}: no <book>.json files")
    for book in books:
        solutions = book.with_name(f"{book.stem}_sol.json")
        if not solutions.exists():
            log.warning("%s: not found; only %s is read", solutions, book.name)
        for where, obj in _records([book, solutions] if solutions.exists() else [book], skipped, "problems"):
            yield where, format_scibench(obj, skipped)


# the skills the authors removed, recognised from the question text (the LLaVA release has no `skill`)
_CUSTOMARY_UNIT = re.compile(
    r"\b\d[\d,.]*\s+(?:inch(?:es)?|feet|foot|yards?|miles?|fluid ounces?|ounces?|pounds?|tons?|"
    r"cups?|pints?|quarts?|gallons?)\b",
    re.I,
)
_SENTENCE_KIND = re.compile(r"Which is a (?:simple|compound|complex|compound-complex) sentence\?")


def _removed_skill(text: str, options: list[str]) -> Optional[str]:
    lower = text.lower()
    if "estimate" in lower and any(_CUSTOMARY_UNIT.search(o) for o in options):
        return "customary_units"
    if "run-on" in lower:
        return "run_on_sentences"
    if _SENTENCE_KIND.search(text) or any(o.strip().lower() == "compound-complex" for o in options):
        return "sentence_structure"
    return "guide_words" if "guide words" in lower else None


_OPTION_LINE = re.compile(r"^([A-E])\. ?(.*)$")
MAX_INPUT_WORDS = 400


def format_scienceqa_llava(obj: Any, skipped: SkippedRows) -> Optional[dict]:
    """One LLaVA ScienceQA record: the prompt with "A: ..." option lines, output "The answer is B: <option>"."""
    if not isinstance(obj, dict):
        return _skip(skipped, "not_an_object")
    conv = obj.get("conversations")
    turns = conv[:2] if isinstance(conv, list) else []
    if len(turns) < 2 or not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns):
        return _skip(skipped, "malformed:conversations")
    prompt, answer = conv[0]["value"], conv[1]["value"].strip()
    if obj.get("image") or "<image>" in prompt:
        return _skip(skipped, "filtered:image")
    lines = prompt.strip().split("\n")
    first_option = next((i for i, line in enumerate(lines) if line.startswith("A. ")), None)
    if not first_option:  # none, or no question before the options
        return _skip(skipped, "malformed:no_options")
    options: dict[str, str] = {}
    for line in lines[first_option:]:
        m = _OPTION_LINE.match(line)
        if m and len(options) < 5 and m.group(1) == "ABCDE"[len(options)]:
            options[m.group(1)] = m.group(2)
        elif options:  # an option text that spans lines (e.g. a letter closing "Thanks,\nAnne")
            options[list(options)[-1]] += "\n" + line
    if answer not in options:
        return _skip(skipped, "malformed:answer_not_in_options")
    body = "\n".join(lines[:first_option]).strip()
    skill = _removed_skill(body, list(options.values()))
    if skill is not None:
        return _skip(skipped, f"filtered:skill:{skill}")
    if len(body.split()) > MAX_INPUT_WORDS:
        return _skip(skipped, "filtered:over_400_words")
    instruction = body + "\n" + "\n".join(f"{letter}: {text}" for letter, text in options.items())
    return _row(instruction, "", f"The answer is {answer}: {options[answer]}", "scienceqa")


PRM_ANSWER_MARKER = "# Answer\n\n"


def _prm_step_texts(step: Any) -> list[str]:
    """A step's texts: the chosen completion if rated +1, else the first +1 one giving the answer, else the
    first +1 one; then a human completion rated +1."""
    if not isinstance(step, dict):
        return []
    texts = []
    completions = step.get("completions") or []
    good = [c for c in completions if isinstance(c, dict) and c.get("rating") == 1 and isinstance(c.get("text"), str)]
    chosen = step.get("chosen_completion")
    if isinstance(chosen, int) and 0 <= chosen < len(completions) and completions[chosen] in good:
        texts.append(completions[chosen]["text"])
    elif good:
        texts.append(([c for c in good if PRM_ANSWER_MARKER in c["text"]] or good)[0]["text"])
    human = step.get("human_completion")
    if isinstance(human, dict) and human.get("rating") == 1 and isinstance(human.get("text"), str):
        texts.append(human["text"])
    return texts


def format_prm800k(obj: Any, skipped: SkippedRows) -> Optional[dict]:
    """One PRM800K record as the authors' convert_prm.py shaped it: finished solutions whose +1-rated steps
    end in the ground-truth answer, "# Answer" replaced by "The answer is ..." (a deterministic choice)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("question"), dict) or not isinstance(obj.get("label"), dict):
        return _skip(skipped, "malformed:prm800k_record")
    question, label = obj["question"], obj["label"]
    if label.get("finish_reason") != "solution":
        return _skip(skipped, "filtered:unfinished")
    problem, truth = question.get("problem"), question.get("ground_truth_answer")
    if not isinstance(problem, str) or not problem.strip() or not isinstance(truth, str) or not truth.strip():
        return _skip(skipped, "malformed:prm800k_question")
    texts = [t.strip() for step in label.get("steps") or [] for t in _prm_step_texts(step)]
    full = "\n".join(t for t in texts if t)
    cut = full.rfind(PRM_ANSWER_MARKER)
    if cut == -1:
        return _skip(skipped, "filtered:no_final_answer")
    found = full[cut + len(PRM_ANSWER_MARKER) :].strip()
    if found != truth.strip():
        return _skip(skipped, "filtered:answer_mismatch")
    body = full[:cut].strip()
    output = (body + "\n" if body else "") + f"The answer is {found}."
    return _row(problem.strip(), "", output, "MATH/PRM-800K")


ARB_CHOICE_INPUT = "Choose A, B, C or D as your solution."


def _arb_field(obj: dict, name: str) -> Any:
    """A field as the API spells it ("Problem Statement") or with underscores ("Problem_Statement")."""
    return obj.get(name, obj.get(name.replace(" ", "_")))


def format_arb(obj: Any, subset: str, skipped: SkippedRows) -> Optional[dict]:
    """One ARB record as the authors' duckai_format.py shaped it: math, physics: problem -> Solution; mcat*,
    law: problem with "A. ..." options, output the solution without its answer letter (law: Final Answer)."""
    if not isinstance(obj, dict):
        return _skip(skipped, "not_an_object")
    problem = _arb_field(obj, "Problem Statement")
    if not isinstance(problem, str) or not problem.strip():
        return _skip(skipped, "malformed:arb_problem")
    kind = subset.lower()
    if kind.startswith(("math", "physics")):
        solution = obj.get("Solution")
        if not isinstance(solution, str) or not solution.strip():
            return _skip(skipped, "malformed:arb_solution")
        return _row(problem.strip(), "", solution.strip(), "ARB")
    options = _arb_field(obj, "Answer Candidates")
    if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
        return _skip(skipped, "malformed:arb_options")
    instruction = problem.strip() + "".join(f"\n{chr(65 + i)}. {o}" for i, o in enumerate(options))
    if kind.startswith("law"):
        output = _arb_field(obj, "Final Answer")
    elif kind.startswith("mcat"):
        output = obj.get("Solution")
        output = output.split(".", 1)[-1].lstrip() if isinstance(output, str) else None
    else:
        raise UnknownSourceError(f"ARB subset {subset!r}: expected math, physics, mcatReading, mcatScience or law")
    if not isinstance(output, str) or not output.strip():
        return _skip(skipped, "malformed:arb_answer")
    return _row(instruction, ARB_CHOICE_INPUT, output.strip(), "ARB")


def load_arb(src: SourceConfig, profile: Profile, skipped: SkippedRows) -> Records:
    """ARB: a folder of <subset>.json files (the subset read from the file name)."""
    for f in _files_in(_source_path(src), "*.json"):
        for where, obj in _records([f], skipped, "ARB problems"):
            yield where, format_arb(obj, f.stem, skipped)


_SCIENCEQA_REMOVED_SKILLS = {
    "Choose customary units of distance",
    "Choose customary units of mass",
    "Choose customary units of volume",
    "Is it a complete sentence or a run-on",
    "Is the sentence simple, compound, complex, or compound-complex",
    "Use guide words",
}
_SCIENCEQA_LECTURE_CUES = (
    "What information supports",
    "Based on",
    "Read the following",
    "Use the evidence",
    "Look at the",
    "According to a",
)


def _hub_scienceqa(rec: dict, skipped: SkippedRows) -> Optional[dict]:
    if rec.get("skill") in _SCIENCEQA_REMOVED_SKILLS:
        return _skip(skipped, "filtered:skill")
    if not (rec.get("solution") or "").strip():
        return _skip(skipped, "filtered:no_solution")
    instruction = rec["question"] + "\n" + "\n".join(f"{chr(65 + i)}: {c}" for i, c in enumerate(rec["choices"]))
    needs_lecture = any(k in rec["question"] for k in _SCIENCEQA_LECTURE_CUES)
    inp = (rec.get("lecture") or "") if needs_lecture else ""
    if len(inp.split()) > MAX_INPUT_WORDS:
        return _skip(skipped, "filtered:over_400_words")
    return _row(instruction, inp, rec["solution"], "scienceqa")


def _hub_reclor(rec: dict, skipped: SkippedRows) -> Optional[dict]:
    options = "".join(f"\n{chr(65 + i)}: {a}" for i, a in enumerate(rec["answers"]))
    instruction = rec["context"] + " " + rec["question"] + options
    if not has_stem_keyword(instruction):
        return _skip(skipped, "filtered:no_stem_keyword")
    return _row(instruction, ARB_CHOICE_INPUT, chr(65 + int(rec["label"])), "reclor")


def _hub_airoboros(rec: dict, skipped: SkippedRows) -> Optional[dict]:
    if not has_stem_keyword(rec["instruction"]):
        return _skip(skipped, "filtered:no_stem_keyword")
    return _row(rec["instruction"], "", rec["response"], "airoboros")


def _hub_tigerbot(rec: dict, skipped: SkippedRows) -> Optional[dict]:
    if "python" not in rec["instruction"]:
        return _skip(skipped, "filtered:not_python")
    # the problem statement is in `input`
    return _row(rec["input"], "", rec["output"], "tigerbot-kaggle")


def _hub_guanaco(rec: dict, skipped: SkippedRows) -> Optional[dict]:
    text = rec["text"]
    if "### Assistant:" not in text:
        return _skip(skipped, "malformed:no_assistant_turn")
    human, rest = text.split("### Assistant:", 1)
    # the first exchange only
    instruction = human.replace("### Human:", "").strip()
    output = rest.split("### Human:", 1)[0].strip()
    if not has_stem_keyword(instruction):
        return _skip(skipped, "filtered:no_stem_keyword")
    return _row(instruction, "", output, "guanaco")


@dataclass(frozen=True)
class HubSource:
    formatter: Callable[[dict, SkippedRows], Optional[dict]]
    data_files: Optional[str] = None
    splits: tuple[str, ...] = ("train",)


HUB_SOURCES: dict[str, HubSource] = {
    "garage-bAInd/Open-Platypus": HubSource(lambda r, s: open_platypus_row(r, "open-platypus", s)),
    "metaeval/ScienceQA_text_only": HubSource(_hub_scienceqa),
    "wenhu/TheoremQA": HubSource(lambda r, s: format_theoremqa(r, s, theorem_key="theorem_def"), data_files="test.csv"),
    "metaeval/reclor": HubSource(_hub_reclor),
    "TigerResearch/tigerbot-kaggle-leetcodesolutions-en-2k": HubSource(_hub_tigerbot),
    "nuprl/leetcode-solutions-python-testgen-gpt4": HubSource(
        lambda r, s: _row(r["prompt"], "", r["full_code"], "leetcode_ne")
    ),
    "jondurbin/airoboros-gpt4-1.4.1": HubSource(_hub_airoboros, data_files="instructions.jsonl"),
    "timdettmers/openassistant-guanaco": HubSource(_hub_guanaco, splits=("train", "test")),
}
DEFAULT_HUB_ID = "garage-bAInd/Open-Platypus"


def load_hub(src: SourceConfig, profile: Profile, skipped: SkippedRows) -> Records:
    """One hub source by `hub_id` (default: Open-Platypus), "org/name@<revision>" pinned (else logged)."""
    from datasets import load_dataset

    ref = src.hub_id or DEFAULT_HUB_ID
    hub_id, revision = split_revision(ref)
    if hub_id not in HUB_SOURCES:
        raise UnknownSourceError(f"hub_id {hub_id!r} has no formatter; known: {', '.join(HUB_SOURCES)}")
    spec = HUB_SOURCES[hub_id]
    kwargs = {"data_files": spec.data_files} if spec.data_files else {}
    if revision is None:
        log.warning("hub dataset %s is not pinned: write it as %s@<commit sha> to pin it", hub_id, hub_id)
    else:
        record_snapshot(ref, hub_id, revision, revision if is_pinned_commit(revision) else None)
        kwargs["revision"] = revision
    for split in spec.splits:
        for k, rec in enumerate(load_dataset(hub_id, split=split, **kwargs), 1):
            try:
                row = spec.formatter(dict(rec), skipped)
            except (KeyError, TypeError, AttributeError, ValueError) as exc:
                skipped[f"malformed:{type(exc).__name__}"] += 1
                continue
            yield f"{hub_id} ({split}), row {k}", row


# Where a source differs from the authors' (PLATYPUS.md §1):
# - math: they replaced MATH's solutions by PRM800K's step-by-step ones and trained on MATH's *test* split, which
#   overlaps MMLU's mathematics subjects; the local copy is the test split too (stage 02 must find the overlap), with
#   its reference solutions. With `prm800k` enabled as well, exact dedup lets a longer PRM solution replace the MATH
#   one, as their update_MATH.py did.
# - theoremqa: they appended the theorem's definition (`theorem_def`, hub CSV); the offline release has only its
#   name, appended here. The 53 picture questions are "filtered:image".
# - scienceqa (LLaVA release): no `solution` or `lecture`, so the output is the answer letter and text and the input
#   empty; the context stays in the instruction (the question often needs it); the six skills they removed are
#   recognised from the question text ("filtered:skill:*").
# - prm800k: a row per labelled solution (exact dedup keeps the longest); they drew among the +1 completions with an
#   unseeded random.choice (deterministic here) and deleted the "# Answer" line (here "The answer is ...").
# - hub guanaco: the first exchange only; they kept later turns inside the output with renamed markers.
SOURCE_LOADERS: dict[str, Callable[[SourceConfig, Profile, SkippedRows], Records]] = {
    "demo": load_demo,
    "jsonl": load_jsonl,
    "math": _file_loader("*.jsonl", format_math),
    "theoremqa": _file_loader("*.json", format_theoremqa, "questions"),
    "scibench": load_scibench,
    "scienceqa": _file_loader("*.json", format_scienceqa_llava, "questions", ("pid_splits.json",)),
    "prm800k": _file_loader("*.jsonl", format_prm800k),
    "arb": load_arb,
    "hub": load_hub,
}


def load_source(src: SourceConfig, profile: Profile) -> tuple[list[dict], SkippedRows]:
    loader = SOURCE_LOADERS.get(src.name)
    if loader is None:
        raise UnknownSourceError(f"unknown source {src.name!r}; known: {', '.join(SOURCE_LOADERS)}")
    if src.name in ("theoremqa", "scienceqa") and not src.path and src.hub_id:
        loader = load_hub  # the hub release of a source that also has a local format
    cfg, skipped, rows = profile.curate, SkippedRows(), []
    for where, row in loader(src, profile, skipped):
        if row is not None:
            row = limit_long_fields(row, cfg.max_row_chars, cfg.over_long_rows, where, skipped)
        if row is not None:
            rows.append(row)
    if src.limit is not None and len(rows) > src.limit:
        skipped["filtered:over_limit"] += len(rows) - src.limit
        rows = rows[: src.limit]
    log.info("source %s: %d rows, skipped %d %s", src.name, len(rows), sum(skipped.values()), dict(skipped))
    return rows, skipped
