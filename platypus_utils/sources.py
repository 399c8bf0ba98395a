"""Source loaders for stage 01: each reads one source in its original release format and returns
Open-Platypus rows `{"instruction", "input", "output", "data_source"}` (all strings).

    rows, skipped = load_source(source_config, profile)

`skipped` is a Counter of rows left out, by reason ("malformed_json", "missing_field:output",
"empty_field:instruction", "non_string_field:input", "filtered:image", "filtered:no_stem_keyword",
"filtered:over_limit", ...): nothing is dropped without being counted. Reasons starting with
"filtered:" are deliberate choices (images, skills, keyword filters, `limit`); every other reason is
input that could not be used. A missing file or folder is a
FileNotFoundError naming it; an unknown source name is an UnknownSourceError (a ValueError) listing
the known names; a source whose whole file cannot be parsed is a ValueError naming the file.

Sources (`SOURCE_LOADERS`):
  demo       the corpus the project writes itself (platypus_utils.demo_data)
  jsonl      any file already in the Open-Platypus schema (.jsonl, or a .json list)
  math       MATH (Hendrycks et al.), JSON lines problem/level/type/solution
  theoremqa  TheoremQA, a JSON list of Question/Answer/Picture/theorem/...
  scibench   SciBench, a folder of <book>.json and <book>_sol.json
  scienceqa  ScienceQA as re-released for LLaVA (conversations)
  prm800k    PRM800K (GitHub release): step-by-step MATH solutions with step ratings
  arb        ARB (arb.duckai.org API JSON): math, physics, mcatReading, mcatScience, law
  hub        one of the Open-Platypus hub sources, by `hub_id` (needs network; see HUB_SOURCES)

`limit` keeps the first N rows after formatting and filtering, in file order.

Bad rows, one at a time: a line (JSON lines, read by artifacts.iter_jsonl) or list item (JSON
files) that is not UTF-8 is skipped as "undecodable", one with a lone surrogate ("\\ud800": valid
JSON, but no UTF-8 file can hold it) as "lone_surrogate", a line that is not JSON as
"malformed_json", each logged with its file and line (or item); the rest of the file is read. A
row with a field longer than `curate.max_row_chars` characters is logged with its file and line
and handled per `curate.over_long_rows`: "keep" (with the warning), "truncate" (the field cut to
the limit) or "drop" (skipped as "filtered:over_long"); kept or truncated ones are counted in the
returned SkippedRows' `notes`.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from .artifacts import SkippedRows, iter_jsonl, limit_long_fields, lone_surrogate
from .refs import is_pinned_commit, record_snapshot, split_revision

if TYPE_CHECKING:  # pragma: no cover
    from .config import Profile, SourceConfig

log = logging.getLogger("platypus")

FIELDS = ("instruction", "input", "output", "data_source")
_LOCATION: contextvars.ContextVar[str] = contextvars.ContextVar("platypus_source_location", default="")


class UnknownSourceError(ValueError):
    """A source name that has no loader; the message lists the known names."""


# ---------------------------------------------------------------- STEM keyword filter
# The authors' list (data_pipeline/*_format.py) with its two bugs fixed: a missing comma had fused
# "calculation" and "science" into "calculationscience", and the upper-case "AI" could never match the
# lower-cased text it was searched in. Repeated entries are dropped; order is otherwise theirs.
STEM_KEYWORDS: list[str] = [
    # mathematics
    "algebra",
    "geometry",
    "calculus",
    "statistics",
    "probability",
    "theorem",
    "proof",
    "equation",
    "integral",
    "derivative",
    "matrix",
    "vector",
    "graph",
    "function",
    "complex number",
    "real number",
    "imaginary number",
    "differential",
    "fraction",
    "decimal",
    "percent",
    "logarithm",
    "sequence",
    "sum",
    "product",
    "difference",
    "quotient",
    "prime",
    "composite",
    "factorial",
    "binomial",
    "polynomial",
    "exponential",
    "pi",
    "euler",
    "infinity",
    "limit",
    "differential equation",
    "linear algebra",
    "set theory",
    "group theory",
    "ring theory",
    "field theory",
    "number theory",
    "combinatorics",
    "topology",
    "measure theory",
    "game theory",
    "cryptology",
    "algorithm",
    "computation",
    "percentage",
    "calculation",
    # general STEM
    "science",
    "technology",
    "engineering",
    "physics",
    "chemistry",
    "biology",
    "computer science",
    "information technology",
    "environmental",
    "aerospace",
    "biomedical",
    "chemical",
    "robotics",
    "ai",
    "artificial intelligence",
    "machine learning",
    "deep learning",
    "neural network",
    "programming",
    "coding",
    "software",
    "hardware",
    "network",
    "database",
    "security",
    "cybersecurity",
    "blockchain",
    "virtual reality",
    "augmented reality",
    "quantum",
    "nanotechnology",
    "biotechnology",
    "genetics",
    "genomics",
    "solar",
    "wind",
    "hydro",
    "nuclear",
    "fossil fuel",
    "carbon",
    "greenhouse gas",
    "pollution",
    "conservation",
    "biodiversity",
    "ecosystem",
    "species",
    "evolution",
    "cell",
    "molecule",
    "atom",
    "particle",
    "gravity",
    "relativity",
    "momentum",
    "velocity",
    "acceleration",
    "mass",
    "heat",
    "light",
    "sound",
    "electricity",
    "magnetism",
]
_STEM_RE = re.compile(r"\b(?:" + "|".join(re.escape(k) for k in STEM_KEYWORDS) + r")\b")


def has_stem_keyword(text: str) -> bool:
    """True if the lower-cased text contains one of STEM_KEYWORDS as a whole word (or phrase)."""
    return bool(_STEM_RE.search(text.lower()))


# ---------------------------------------------------------------- helpers
class _Row(dict):
    """A row (equal to the plain dict) that knows the file and line it was made from."""

    __slots__ = ("where",)


def _row(instruction: str, inp: str, output: str, source: str) -> dict:
    row = _Row(instruction=instruction, input=inp, output=output, data_source=source)
    row.where = _LOCATION.get()
    return row


def _need(path: Path, what: str = "file") -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path}: source {what} not found")
    return path


def _source_path(src: SourceConfig) -> Path:
    if not src.path:
        raise ValueError(
            f"source {src.name!r}: set `path` to a local copy in its original format "
            f"(or `hub_id`, where the source has a hub release)"
        )
    return _need(Path(src.path), "path")


def _read_json(path: Path) -> Any:
    """A whole JSON file. Bytes that are not UTF-8 are kept as surrogates for `_read_json_list` to
    skip the items holding them; a file that is not JSON at all is a ValueError naming file and line."""
    try:
        return json.loads(_need(path).read_bytes().decode("utf-8", errors="surrogateescape"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}, line {exc.lineno}: malformed JSON ({exc.msg})") from None


def _read_json_list(path: Path, what: str, skipped: SkippedRows) -> Iterable[Any]:
    """The items of a JSON file holding a list (of `what`), or a ValueError naming the file. While
    an item is used, rows made from it know its place ("<file>, item N"); an item with bytes that
    are not UTF-8 ("undecodable") or a lone surrogate ("lone_surrogate") is skipped and counted."""
    data = _read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of {what}, got {type(data).__name__}")

    def items() -> Iterable[Any]:
        for k, obj in enumerate(data, 1):
            where = f"{path}, item {k}"
            ch = lone_surrogate(obj)
            if ch is not None and "\udc80" <= ch <= "\udcff":  # surrogateescape's stand-in for a byte
                skipped.skip("undecodable", where, "bytes that are not UTF-8")
            elif ch is not None:
                skipped.skip("lone_surrogate", where, f"U+{ord(ch):04X} in a string (UTF-8 cannot encode it)")
            else:
                _LOCATION.set(where)
                yield obj

    return items()


def _read_json_lines(path: Path, skipped: SkippedRows) -> Iterable[Any]:
    """The values of a JSON lines file as artifacts.iter_jsonl reads it (bad lines skipped and counted
    with file and line, not fatal); while a value is used, rows made from it know its file and line."""
    for lineno, obj in iter_jsonl(_need(path), skipped):
        _LOCATION.set(f"{path}, line {lineno}")
        yield obj


def _fields(obj: Any, required: dict[str, bool], skipped: Counter) -> Optional[dict]:
    """Check the named fields of one record. required: field -> may be empty. None (counted) if bad."""
    if not isinstance(obj, dict):
        skipped["not_an_object"] += 1
        return None
    for field, may_be_empty in required.items():
        if field not in obj or obj[field] is None:
            skipped[f"missing_field:{field}"] += 1
            return None
        if not isinstance(obj[field], str):
            skipped[f"non_string_field:{field}"] += 1
            return None
        if not may_be_empty and not obj[field].strip():
            skipped[f"empty_field:{field}"] += 1
            return None
    return obj


def _files_in(path: Path, pattern: str, exclude: tuple[str, ...] = ()) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.glob(pattern) if p.name not in exclude)
    if not files:
        raise FileNotFoundError(f"{path}: no {pattern} files in this folder")
    return files


# ---------------------------------------------------------------- demo and jsonl
def validate_rows(records: Iterable[Any], default_source: str, skipped: Counter) -> list[dict]:
    """Open-Platypus rows from records that should already have the schema; bad ones are counted.

    instruction and output must be non-empty strings, input a string (may be empty); data_source,
    when present, a string (an empty or absent one becomes `default_source`). Extra keys are dropped.
    """
    rows = []
    for obj in records:
        ok = _fields(obj, {"instruction": False, "input": True, "output": False}, skipped)
        if ok is None:
            continue
        source = ok.get("data_source")
        if source is not None and not isinstance(source, str):
            skipped["non_string_field:data_source"] += 1
            continue
        rows.append(_row(ok["instruction"], ok["input"], ok["output"], source or default_source))
    return rows


def load_jsonl(src: SourceConfig, profile: Profile) -> tuple[list[dict], Counter]:
    """A file in the Open-Platypus schema: JSON lines, or a .json file holding a list of rows."""
    path = _source_path(src)
    skipped: Counter = SkippedRows()
    files = _files_in(path, "*.jsonl")
    rows: list[dict] = []
    for f in files:
        if f.suffix == ".json":
            data = _read_json_list(f, "rows", skipped)
            records: Iterable[Any] = data
        else:
            records = _read_json_lines(f, skipped)
        rows.extend(validate_rows(records, f.stem, skipped))
    return rows, skipped


def load_demo(src: SourceConfig, profile: Profile) -> tuple[list[dict], Counter]:
    """The project's demo corpus, written to runs/<profile>/00_demo_data/ first if absent or stale."""
    from .demo_data import demo_corpus_path

    if src.path:
        log.warning("source 'demo' ignores path=%s: the demo corpus is written by the project", src.path)
    path = demo_corpus_path(profile)
    skipped: Counter = SkippedRows()
    rows = validate_rows(_read_json_lines(path, skipped), "demo", skipped)
    return rows, skipped


# ---------------------------------------------------------------- MATH
def load_math(src: SourceConfig, profile: Profile) -> tuple[list[dict], Counter]:
    """MATH (Hendrycks et al.): instruction = problem, output = the reference solution, data_source "MATH".

    The authors replaced MATH's solutions by PRM800K's step-by-step solutions (kept only when the final
    answer matched, "# Answer" stripped) and trained on the MATH *test* split, which overlaps MMLU's
    mathematics subjects. PRM800K is not available offline, so the reference solutions are used as they
    are. The local copy is the test split too: stage 02 must find its overlap with MMLU.
    """
    skipped: Counter = SkippedRows()
    rows = []
    for f in _files_in(_source_path(src), "*.jsonl"):
        for obj in _read_json_lines(f, skipped):
            ok = _fields(obj, {"problem": False, "solution": False}, skipped)
            if ok is not None:
                rows.append(_row(ok["problem"].strip(), "", ok["solution"].strip(), "MATH"))
    return rows, skipped


# ---------------------------------------------------------------- TheoremQA
def _answer_text(answer: Any) -> str:
    if isinstance(answer, (list, dict)):
        return json.dumps(answer, ensure_ascii=False)
    return str(answer)


def format_theoremqa(obj: Any, skipped: Counter, theorem_key: str = "theorem") -> Optional[dict]:
    """One TheoremQA record -> row, as the authors shaped it: question + "\\nRelevant Theorem: " + theorem,
    output the answer. Image questions are skipped (the authors' set is text-only)."""
    if not isinstance(obj, dict):
        skipped["not_an_object"] += 1
        return None
    if obj.get("Picture"):
        skipped["filtered:image"] += 1
        return None
    ok = _fields(obj, {"Question": False}, skipped)
    if ok is None:
        return None
    if obj.get("Answer") is None or (isinstance(obj["Answer"], str) and not obj["Answer"].strip()):
        skipped["filtered:no_answer"] += 1
        return None
    theorem = obj.get(theorem_key) or obj.get("theorem") or ""
    if not isinstance(theorem, str):
        skipped[f"non_string_field:{theorem_key}"] += 1
        return None
    instruction = obj["Question"].strip()
    if theorem.strip():
        instruction += "\nRelevant Theorem: " + theorem.strip()
    return _row(instruction, "", _answer_text(obj["Answer"]), "theoremqa")


def load_theoremqa(src: SourceConfig, profile: Profile) -> tuple[list[dict], Counter]:
    """TheoremQA: question + "\\nRelevant Theorem: " + theorem; output str(Answer) (lists as JSON).

    The authors appended the theorem's *definition* (`theorem_def`, from the hub CSV); the offline
    release has only the theorem's name (`theorem`), which is what is appended here. The 53 questions
    that need a picture are skipped and counted as "filtered:image".
    """
    skipped: Counter = SkippedRows()
    rows = []
    for f in _files_in(_source_path(src), "*.json"):
        data = _read_json_list(f, "questions", skipped)
        for obj in data:
            row = format_theoremqa(obj, skipped)
            if row is not None:
                rows.append(row)
    return rows, skipped


# ---------------------------------------------------------------- SciBench
def _clean_unit(unit: Any) -> str:
    return unit.strip() if isinstance(unit, str) else ""


def format_scibench(obj: Any, skipped: Counter) -> Optional[dict]:
    """instruction = problem_text (+ " The unit of the answer is {unit}."); output = the worked solution
    followed by the final answer where a solution exists, else the answer with its unit."""
    ok = _fields(obj, {"problem_text": False}, skipped)
    if ok is None:
        return None
    unit = _clean_unit(obj.get("unit"))
    answer = obj.get("answer_number")
    if not isinstance(answer, str) or not answer.strip():
        answer = obj.get("answer_latex")
    answer = answer.strip() if isinstance(answer, str) else ""
    solution = obj.get("solution")
    solution = solution.replace("\r\n", "\n").strip() if isinstance(solution, str) else ""  # the release has CRLF
    if not answer and not solution:
        skipped["filtered:no_answer"] += 1
        return None
    final = f"{answer} {unit}".strip() if answer else ""
    if solution:
        output = solution + (f"\nThe answer is {final}." if final else "")
    else:
        output = final
    instruction = ok["problem_text"].strip()
    if unit:
        instruction += f" The unit of the answer is {unit}."
    return _row(instruction, "", output, "scibench")


def load_scibench(src: SourceConfig, profile: Profile) -> tuple[list[dict], Counter]:
    """SciBench: every <book>.json and its <book>_sol.json, as the authors did (they read all JSON files
    of the release). The _sol files hold further problems with worked solutions (disjoint from the
    <book>.json problems in the offline release: 580 + 112 rows); duplicates, if any, are left to the
    curation's exact dedup."""
    folder = _source_path(src)
    if not folder.is_dir():
        raise ValueError(f"{folder}: the scibench source is a folder of <book>.json and <book>_sol.json files")
    books = sorted(p for p in folder.glob("*.json") if not p.stem.endswith("_sol"))
    if not books:
        raise FileNotFoundError(f"{folder}: no <book>.json files")
    skipped: Counter = SkippedRows()
    rows = []
    for book in books:
        solutions = book.with_name(f"{book.stem}_sol.json")
        if not solutions.exists():
            log.warning("%s: not found; only %s is read", solutions, book.name)
        for f in (book, solutions) if solutions.exists() else (book,):
            data = _read_json_list(f, "problems", skipped)
            for obj in data:
                row = format_scibench(obj, skipped)
                if row is not None:
                    rows.append(row)
    return rows, skipped


# ---------------------------------------------------------------- ScienceQA
# Skills the authors removed (by ScienceQA's `skill` column, which the LLaVA release lacks; here they are
# recognised from the question text).
_CUSTOMARY_UNIT = re.compile(
    r"\b\d[\d,.]*\s+(?:inch(?:es)?|feet|foot|yards?|miles?|fluid ounces?|ounces?|pounds?|tons?|"
    r"cups?|pints?|quarts?|gallons?)\b",
    re.I,
)
_SKILL_PATTERNS: list[tuple[str, Callable[[str, list[str]], bool]]] = [
    (
        "customary_units",
        lambda text, options: "estimate" in text.lower() and any(_CUSTOMARY_UNIT.search(o) for o in options),
    ),
    ("run_on_sentences", lambda text, options: "run-on" in text.lower()),
    (
        "sentence_structure",
        lambda text, options: (
            bool(re.search(r"Which is a (?:simple|compound|complex|compound-complex) sentence\?", text))
            or any(o.strip().lower() == "compound-complex" for o in options)
        ),
    ),
    ("guide_words", lambda text, options: "guide words" in text.lower()),
]
_OPTION_LINE = re.compile(r"^([A-E])\. ?(.*)$")
MAX_INPUT_WORDS = 400


def format_scienceqa_llava(obj: Any, skipped: Counter) -> Optional[dict]:
    """One LLaVA ScienceQA record -> row: instruction = the prompt (context, question) with options as
    "A: ..." lines, input "", output "The answer is B: <option text>". Image questions are skipped."""
    if not isinstance(obj, dict):
        skipped["not_an_object"] += 1
        return None
    conv = obj.get("conversations")
    if (
        not isinstance(conv, list)
        or len(conv) < 2
        or not all(isinstance(t, dict) for t in conv[:2])
        or not isinstance(conv[0].get("value"), str)
        or not isinstance(conv[1].get("value"), str)
    ):
        skipped["malformed:conversations"] += 1
        return None
    prompt, answer = conv[0]["value"], conv[1]["value"].strip()
    if obj.get("image") or "<image>" in prompt:
        skipped["filtered:image"] += 1
        return None
    lines = prompt.strip().split("\n")
    first_option = next((i for i, line in enumerate(lines) if line.startswith("A. ")), None)
    if first_option is None or first_option == 0:
        skipped["malformed:no_options"] += 1
        return None
    options: list[tuple[str, str]] = []
    for line in lines[first_option:]:
        m = _OPTION_LINE.match(line)
        if m and len(options) < 5 and m.group(1) == "ABCDE"[len(options)]:
            options.append((m.group(1), m.group(2)))
        elif options:  # an option text that spans lines (e.g. a letter closing "Thanks,\nAnne")
            options[-1] = (options[-1][0], options[-1][1] + "\n" + line)
    letters = [letter for letter, _ in options]
    if answer not in letters:
        skipped["malformed:answer_not_in_options"] += 1
        return None
    body = "\n".join(lines[:first_option]).strip()
    option_texts = [t for _, t in options]
    for skill, matches in _SKILL_PATTERNS:
        if matches(body, option_texts):
            skipped[f"filtered:skill:{skill}"] += 1
            return None
    if len(body.split()) > MAX_INPUT_WORDS:
        skipped["filtered:over_400_words"] += 1
        return None
    instruction = body + "\n" + "\n".join(f"{letter}: {text}" for letter, text in options)
    output = f"The answer is {answer}: {dict(options)[answer]}"
    return _row(instruction, "", output, "scienceqa")


def load_scienceqa(src: SourceConfig, profile: Profile) -> tuple[list[dict], Counter]:
    """ScienceQA, LLaVA re-release (a JSON list of {id, conversations[, image]}).

    Following PLATYPUS.md §1 where this release allows: text-only questions (image questions skipped,
    "filtered:image"); the six skills the authors removed, recognised from the question text
    ("filtered:skill:*"); questions over 400 words dropped. Not possible here: the authors kept only
    rows with a long-form `solution` and used it as the output, and used the `lecture` as input for
    "Based on / Read the following ..." questions; this release has neither field, so the output is
    the answer letter and option text and the input is empty. The context ("Context: ...") stays
    in the instruction, since the question often cannot be answered without it.
    """
    skipped: Counter = SkippedRows()
    rows = []
    for f in _files_in(_source_path(src), "*.json", exclude=("pid_splits.json",)):
        data = _read_json_list(f, "questions", skipped)
        for obj in data:
            row = format_scienceqa_llava(obj, skipped)
            if row is not None:
                rows.append(row)
    return rows, skipped


# ---------------------------------------------------------------- PRM800K
PRM_ANSWER_MARKER = "# Answer\n\n"


def format_prm800k(obj: Any, skipped: Counter) -> Optional[dict]:
    """One PRM800K record (openai/prm800k phase*_*.jsonl) -> row, as the authors' convert_prm.py shaped it:
    only finished solutions (finish_reason "solution"), each step's completion rated +1 (a human
    completion rated +1 too), the final answer after "# Answer" equal to the ground truth.

    Fixes: the authors drew among the +1 completions with an unseeded random.choice; here the labeller's
    chosen completion is taken when rated +1, else the first +1 completion that gives the answer, else the
    first +1 one (deterministic). They also deleted the "# Answer" line with the answer; here the marker is
    replaced by "The answer is ...", so the output states its answer. Steps are joined by newlines.
    """
    if not isinstance(obj, dict) or not isinstance(obj.get("question"), dict) or not isinstance(obj.get("label"), dict):
        skipped["malformed:prm800k_record"] += 1
        return None
    question, label = obj["question"], obj["label"]
    if label.get("finish_reason") != "solution":
        skipped["filtered:unfinished"] += 1
        return None
    problem, truth = question.get("problem"), question.get("ground_truth_answer")
    if not isinstance(problem, str) or not problem.strip() or not isinstance(truth, str) or not truth.strip():
        skipped["malformed:prm800k_question"] += 1
        return None
    texts: list[str] = []
    for step in label.get("steps") or []:
        if not isinstance(step, dict):
            continue
        good = [
            c
            for c in step.get("completions") or []
            if isinstance(c, dict) and c.get("rating") == 1 and isinstance(c.get("text"), str)
        ]
        chosen = step.get("chosen_completion")
        completions = step.get("completions") or []
        if isinstance(chosen, int) and 0 <= chosen < len(completions) and completions[chosen] in good:
            texts.append(completions[chosen]["text"])
        elif good:
            with_answer = [c for c in good if PRM_ANSWER_MARKER in c["text"]]
            texts.append((with_answer or good)[0]["text"])
        human = step.get("human_completion")
        if isinstance(human, dict) and human.get("rating") == 1 and isinstance(human.get("text"), str):
            texts.append(human["text"])
    full = "\n".join(t.strip() for t in texts if t.strip())
    cut = full.rfind(PRM_ANSWER_MARKER)
    if cut == -1:
        skipped["filtered:no_final_answer"] += 1
        return None
    found = full[cut + len(PRM_ANSWER_MARKER) :].strip()
    if found != truth.strip():
        skipped["filtered:answer_mismatch"] += 1
        return None
    body = full[:cut].strip()
    output = (body + "\n" if body else "") + f"The answer is {found}."
    return _row(problem.strip(), "", output, "MATH/PRM-800K")


def load_prm800k(src: SourceConfig, profile: Profile) -> tuple[list[dict], Counter]:
    """PRM800K (GitHub release, openai/prm800k/prm800k/data/phase{1,2}_{train,test}.jsonl): a file or a
    folder of them. Rows are per labelled solution, so a problem can come several times; the curation's
    exact dedup keeps the longest. With the `math` source enabled too, the same dedup lets a longer PRM
    solution replace the MATH reference one, as the authors' update_MATH.py did."""
    skipped: Counter = SkippedRows()
    rows = []
    for f in _files_in(_source_path(src), "*.jsonl"):
        for obj in _read_json_lines(f, skipped):
            row = format_prm800k(obj, skipped)
            if row is not None:
                rows.append(row)
    return rows, skipped


# ---------------------------------------------------------------- ARB
ARB_CHOICE_INPUT = "Choose A, B, C or D as your solution."


def _arb_field(obj: dict, *names: str) -> Any:
    for name in names:
        if name in obj:
            return obj[name]
    return None


def format_arb(obj: Any, subset: str, skipped: Counter) -> Optional[dict]:
    """One ARB record (arb.duckai.org API JSON) -> row, as the authors' duckai_format.py shaped it.

    math, physics: instruction = Problem_Statement, output = Solution. mcatReading, mcatScience:
    instruction = problem + "\nA. ..." option lines, input "Choose A, B, C or D as your solution.",
    output = the solution without its leading "X." answer letter. law: the same instruction and input,
    output = the Final Answer.
    """
    if not isinstance(obj, dict):
        skipped["not_an_object"] += 1
        return None
    problem = _arb_field(obj, "Problem Statement", "Problem_Statement")
    if not isinstance(problem, str) or not problem.strip():
        skipped["malformed:arb_problem"] += 1
        return None
    kind = subset.lower()
    if kind.startswith(("math", "physics")):
        solution = _arb_field(obj, "Solution")
        if not isinstance(solution, str) or not solution.strip():
            skipped["malformed:arb_solution"] += 1
            return None
        return _row(problem.strip(), "", solution.strip(), "ARB")
    options = _arb_field(obj, "Answer Candidates", "Answer_Candidates")
    if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
        skipped["malformed:arb_options"] += 1
        return None
    instruction = problem.strip() + "".join(f"\n{chr(65 + i)}. {o}" for i, o in enumerate(options))
    if kind.startswith("law"):
        output = _arb_field(obj, "Final Answer", "Final_Answer")
    elif kind.startswith("mcat"):
        output = _arb_field(obj, "Solution")
        output = output.split(".", 1)[-1].lstrip() if isinstance(output, str) else None
    else:
        raise UnknownSourceError(f"ARB subset {subset!r}: expected math, physics, mcatReading, mcatScience or law")
    if not isinstance(output, str) or not output.strip():
        skipped["malformed:arb_answer"] += 1
        return None
    return _row(instruction, ARB_CHOICE_INPUT, output.strip(), "ARB")


def load_arb(src: SourceConfig, profile: Profile) -> tuple[list[dict], Counter]:
    """ARB: a folder of <subset>.json files (a JSON list per subset, as the arb.duckai.org API returns it;
    the subset - math, physics, mcatReading, mcatScience, law - is read from the file name)."""
    skipped: Counter = SkippedRows()
    rows = []
    for f in _files_in(_source_path(src), "*.json"):
        data = _read_json_list(f, "ARB problems", skipped)
        for obj in data:
            row = format_arb(obj, f.stem, skipped)
            if row is not None:
                rows.append(row)
    return rows, skipped


# ---------------------------------------------------------------- hub sources (network)
def _hub_open_platypus(rec: dict, skipped: Counter) -> Optional[dict]:
    rows = validate_rows([rec], "open-platypus", skipped)
    return rows[0] if rows else None


def _hub_scienceqa(rec: dict, skipped: Counter) -> Optional[dict]:
    """metaeval/ScienceQA_text_only, as the authors' scienceqa_format.py did."""
    removed = {
        "Choose customary units of distance",
        "Choose customary units of mass",
        "Choose customary units of volume",
        "Is it a complete sentence or a run-on",
        "Is the sentence simple, compound, complex, or compound-complex",
        "Use guide words",
    }
    if rec.get("skill") in removed:
        skipped["filtered:skill"] += 1
        return None
    if not (rec.get("solution") or "").strip():
        skipped["filtered:no_solution"] += 1
        return None
    choices = list(rec["choices"])
    instruction = rec["question"] + "\n" + "\n".join(f"{chr(65 + i)}: {c}" for i, c in enumerate(choices))
    needs_lecture = any(
        k in rec["question"]
        for k in (
            "What information supports",
            "Based on",
            "Read the following",
            "Use the evidence",
            "Look at the",
            "According to a",
        )
    )
    inp = (rec.get("lecture") or "") if needs_lecture else ""
    if len(inp.split()) > MAX_INPUT_WORDS:
        skipped["filtered:over_400_words"] += 1
        return None
    return _row(instruction, inp, rec["solution"], "scienceqa")


def _hub_theoremqa(rec: dict, skipped: Counter) -> Optional[dict]:
    return format_theoremqa(rec, skipped, theorem_key="theorem_def")


def _hub_reclor(rec: dict, skipped: Counter) -> Optional[dict]:
    instruction = (
        rec["context"] + " " + rec["question"] + "".join(f"\n{chr(65 + i)}: {a}" for i, a in enumerate(rec["answers"]))
    )
    if not has_stem_keyword(instruction):
        skipped["filtered:no_stem_keyword"] += 1
        return None
    return _row(instruction, "Choose A, B, C or D as your solution.", chr(65 + int(rec["label"])), "reclor")


def _hub_tigerbot(rec: dict, skipped: Counter) -> Optional[dict]:
    if "python" not in rec["instruction"]:
        skipped["filtered:not_python"] += 1
        return None
    # The authors swapped the fields: the problem statement is in `input`.
    return _row(rec["input"], "", rec["output"], "tigerbot-kaggle")


def _hub_leetcode(rec: dict, skipped: Counter) -> Optional[dict]:
    return _row(rec["prompt"], "", rec["full_code"], "leetcode_ne")


def _hub_airoboros(rec: dict, skipped: Counter) -> Optional[dict]:
    if not has_stem_keyword(rec["instruction"]):
        skipped["filtered:no_stem_keyword"] += 1
        return None
    return _row(rec["instruction"], "", rec["response"], "airoboros")


def _hub_guanaco(rec: dict, skipped: Counter) -> Optional[dict]:
    text = rec["text"]
    if "### Assistant:" not in text:
        skipped["malformed:no_assistant_turn"] += 1
        return None
    human, rest = text.split("### Assistant:", 1)
    instruction = human.replace("### Human:", "").strip()
    # Only the first exchange: the authors kept later turns inside the output with renamed markers.
    output = rest.split("### Human:", 1)[0].strip()
    if not has_stem_keyword(instruction):
        skipped["filtered:no_stem_keyword"] += 1
        return None
    return _row(instruction, "", output, "guanaco")


@dataclass(frozen=True)
class HubSource:
    splits: tuple[str, ...]
    formatter: Callable[[dict, Counter], Optional[dict]]
    data_files: Optional[str] = None


# Default hub ids from PLATYPUS.md §1. PRM800K, ARB and SciBench were never hub datasets (local loaders above).
HUB_SOURCES: dict[str, HubSource] = {
    "garage-bAInd/Open-Platypus": HubSource(("train",), _hub_open_platypus),
    "metaeval/ScienceQA_text_only": HubSource(("train",), _hub_scienceqa),
    "wenhu/TheoremQA": HubSource(("train",), _hub_theoremqa, data_files="test.csv"),
    "metaeval/reclor": HubSource(("train",), _hub_reclor),
    "TigerResearch/tigerbot-kaggle-leetcodesolutions-en-2k": HubSource(("train",), _hub_tigerbot),
    "nuprl/leetcode-solutions-python-testgen-gpt4": HubSource(("train",), _hub_leetcode),
    "jondurbin/airoboros-gpt4-1.4.1": HubSource(("train",), _hub_airoboros, data_files="instructions.jsonl"),
    "timdettmers/openassistant-guanaco": HubSource(("train", "test"), _hub_guanaco),
}
DEFAULT_HUB_ID = "garage-bAInd/Open-Platypus"


def load_hub(src: SourceConfig, profile: Profile) -> tuple[list[dict], Counter]:
    """One hub source by `hub_id` (default: Open-Platypus itself), shaped as the authors did.
    "org/name@<revision>" reads the dataset at that revision (recorded for the manifest); without
    one, whatever the hub's main branch holds today is read (logged)."""
    from datasets import load_dataset

    ref = src.hub_id or DEFAULT_HUB_ID
    hub_id, revision = split_revision(ref)
    if hub_id not in HUB_SOURCES:
        raise UnknownSourceError(f"hub_id {hub_id!r} has no formatter; known: {', '.join(HUB_SOURCES)}")
    if revision is None:
        log.warning("hub dataset %s is not pinned: write it as %s@<commit sha> to pin it", hub_id, hub_id)
    else:
        record_snapshot(ref, hub_id, revision, revision if is_pinned_commit(revision) else None)
    spec = HUB_SOURCES[hub_id]
    skipped: Counter = SkippedRows()
    rows = []
    for split in spec.splits:
        kwargs = {"data_files": spec.data_files} if spec.data_files else {}
        if revision is not None:
            kwargs["revision"] = revision
        for k, rec in enumerate(load_dataset(hub_id, split=split, **kwargs), 1):
            _LOCATION.set(f"{hub_id} ({split}), row {k}")
            try:
                row = spec.formatter(dict(rec), skipped)
            except (KeyError, TypeError, AttributeError, ValueError) as exc:
                skipped[f"malformed:{type(exc).__name__}"] += 1
                continue
            if row is not None:
                rows.append(row)
    return rows, skipped


def _limit_long_rows(rows: list[dict], skipped: Counter, profile: Profile) -> tuple[list[dict], SkippedRows]:
    """curate.max_row_chars / over_long_rows applied to every row, naming its file and line."""
    if not isinstance(skipped, SkippedRows):
        counted = SkippedRows(skipped)
        counted.notes.update(getattr(skipped, "notes", {}))
        skipped = counted
    cfg = getattr(profile, "curate", None)
    max_chars = getattr(cfg, "max_row_chars", None)
    policy = getattr(cfg, "over_long_rows", "keep")
    kept = []
    for row in rows:
        where = getattr(row, "where", "") or "source row"
        fields = {k: row[k] for k in FIELDS if k in row}
        limited = limit_long_fields(fields, max_chars, policy, where, skipped)
        if limited is not None:
            kept.append(limited)
    return kept, skipped


# ---------------------------------------------------------------- registry
SOURCE_LOADERS: dict[str, Callable[[SourceConfig, Profile], tuple[list[dict], Counter]]] = {
    "demo": load_demo,
    "jsonl": load_jsonl,
    "math": load_math,
    "theoremqa": load_theoremqa,
    "scibench": load_scibench,
    "scienceqa": load_scienceqa,
    "prm800k": load_prm800k,
    "arb": load_arb,
    "hub": load_hub,
}


def load_source(src: SourceConfig, profile: Profile) -> tuple[list[dict], Counter]:
    """Rows of one configured source in the Open-Platypus schema, and a Counter of skipped rows by reason."""
    loader = SOURCE_LOADERS.get(src.name)
    if loader is None:
        raise UnknownSourceError(f"unknown source {src.name!r}; known: {', '.join(SOURCE_LOADERS)}")
    token = _LOCATION.set(f"source {src.name}")
    try:
        if src.name in ("theoremqa", "scienceqa") and not src.path and src.hub_id:
            rows, skipped = load_hub(src, profile)  # the hub release of a source that also has a local format
        else:
            rows, skipped = loader(src, profile)
    finally:
        _LOCATION.reset(token)
    rows, skipped = _limit_long_rows(rows, skipped, profile)
    rows = [{k: r[k] for k in FIELDS} for r in rows]  # fixed key order: byte-identical outputs downstream
    if src.limit is not None and len(rows) > src.limit:
        skipped["filtered:over_limit"] += len(rows) - src.limit
        rows = rows[: src.limit]
    log.info("source %s: %d rows, skipped %d %s", src.name, len(rows), sum(skipped.values()), dict(skipped))
    return rows, skipped
