"""Command line: `platypus run PARAMS.yaml`, `platypus validate`, `platypus decontaminate`, `platypus analyse`,
`platypus plan`, `platypus push`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .config import ProfileError, load_profile, parse_set
from .preflight import check_target_modules
from .published import TEST_SETS


def _detectors(text: str) -> list[str]:
    """--detectors embedding,ngram -> ["embedding", "ngram"]."""
    from .config import DETECTORS

    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in names if x not in DETECTORS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown detector(s) {unknown or text!r}: choose from {', '.join(DETECTORS)}")
    return names


def _number_in(low: float, high: float | None, what: str):
    """An argparse type: a number in (low, high] (high None: no upper bound)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number ({what})") from None
        if not (value > low and (high is None or value <= high)):
            upper = f" and at most {high:g}" if high is not None else ""
            raise argparse.ArgumentTypeError(f"{text} is out of range: give a number above {low:g}{upper} ({what})")
        return value

    return parse


def _add_set(parser, help: str = "override a profile key") -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run a profile's stages (papermill notebooks)")
    add = p.add_argument
    add("params", help="profile YAML, e.g. params/demo.yaml")
    add("--only", action="append", metavar="STAGE", help="run only this stage (repeatable): 03, finetune")
    add("--from", dest="start", metavar="STAGE", help="run from this stage on")
    add("--force", action="store_true", help="rerun stages even when up to date")
    _add_set(p, "override a profile key, e.g. --set finetune.sft.max_steps=5")
    add("-v", "--verbose", action="store_true", help="stream cell output to the terminal")
    add(
        "--wait",
        action="store_true",
        help="if another run of this profile holds its lock, wait for it instead of exiting (3)",
    )
    add(
        "--allow-edited-notebooks",
        action="store_true",
        help="run stage notebooks whose code cells differ from their committed version (else refused)",
    )


def _add_validate(sub) -> None:
    sub.add_parser("validate", help="validate profiles without running anything").add_argument("params", nargs="+")


def _add_decontaminate(sub) -> None:
    p = sub.add_parser(
        "decontaminate", help="check any Open-Platypus-schema JSONL against benchmarks; prints a JSON summary"
    )
    add = p.add_argument
    add("train", nargs="?", help="JSON lines (or a .json list) with instruction, output[, input, data_source]")
    add("--benchmarks", required=True, help="directory in the original formats, or 'hub'")
    add("--out", help="output directory (needed with a training file)")
    add(
        "--build-index",
        metavar="FILE",
        help="write the benchmark side (views, first-pass index, vectors, model) to FILE and stop; "
        "another machine passes it with --index",
    )
    add("--index", metavar="FILE", help="a --build-index file, read instead of embedding the benchmarks")
    candidates_help = "items the exact pass reads: a lexical first pass's candidates (default) or every item"
    add("--candidates", choices=["first_pass", "exhaustive"], default="first_pass", help=candidates_help)
    engine_help = (
        "where the steps run: this process (default) or Ray Data over blocks of rows (the `ray` extra; docs/ray.md)"
    )
    add("--engine", choices=["local", "ray"], default="local", help=engine_help)
    add("--ray-address", help="with --engine ray: a running cluster's address (default: start a local one)")
    add(
        "--detectors",
        type=_detectors,
        metavar="LIST",
        help="comma-separated, from embedding, ngram, answer, judge (default: the profile "
        "default, embedding,ngram,answer,judge); ngram alone needs no embedding model",
    )
    benchmark_help = "check only this benchmark (repeatable; default: all four)"
    add("--benchmark", action="append", dest="benchmark_names", choices=TEST_SETS, help=benchmark_help)
    add("--threshold", type=float, default=0.8, help="embedding detector's cosine threshold")
    add(
        "--judge",
        metavar="MODEL",
        help="the rewording judge's model: a sentence-embedding reference (default embedded:all-minilm-l6-v2) or "
        "llm:<causal LM> to ask it the LLM-Decontaminator question (batched; meant for a GPU)",
    )
    decisions_help = "a reviewer's decisions on flagged pairs (CSV pair_id,decision or YAML pair_id: keep|remove)"
    add("--decisions", metavar="FILE", help=decisions_help)
    add("--embedding-model", default="embedded:all-minilm-l6-v2")
    add("--cache-dir", help="embedding cache (default $PLATYPUS_CACHE or ~/.cache/platypus)")


def _add_analyse(sub) -> None:
    p = sub.add_parser("analyse", help="paired per-subject tables and figures from lm-eval output folders")
    add = p.add_argument
    inputs_help = "lm-eval --output_path folder (one model) or a 05_evaluate folder; NAME: the variant's"
    add("inputs", nargs="+", metavar="DIR[=NAME]", help=inputs_help)
    add("--baseline", required=True, help="the variant every other one is compared with")
    add("--out", required=True, help="output folder (tables/, figures/, summary.md)")
    merged_help = "VARIANT is PARTNER + the adapter: also compare them (repeatable)"
    add("--merged", action="append", default=[], metavar="VARIANT=PARTNER", help=merged_help)
    add("--force", action="store_true", help="compare even when few-shot, version or limit differ")
    add(
        "--results-file",
        action="append",
        default=[],
        dest="results_files",
        metavar="NAME|latest|all",
        help="a folder holds several results_*.json for the same tasks: read this one (a file name; repeatable, "
        "one per input), the latest, or all (a later file's tasks replace an earlier one's)",
    )
    add("--confidence", type=float, default=0.95)
    add("--n-bootstrap", type=int, default=2000)
    add("--fdr", type=float, default=0.05, help="Benjamini-Hochberg false discovery rate")
    add("--seed", type=int, default=0)
    add("--formats", default="png,pdf", help="comma-separated: png, pdf, svg")


def _add_plan(sub) -> None:
    p = sub.add_parser("plan", help="dry run before renting a GPU: parameters, steps, memory, time, disk")
    add = p.add_argument
    add("params", help="profile YAML, e.g. params/platypus2-13b.yaml")
    config_help = (
        "folder with the base model's config.json (else plan.base_config, a params/model_configs copy, or the hub)"
    )
    add("--config", metavar="DIR", help=config_help)
    add("--out", help="JSON output (default reports/<profile>/plan.json)")
    add("--gpu", choices=["a100", "h100", "h200"], help="GPU for the time estimate (plan.gpu)")
    memory_type = _number_in(0, None, "GiB per GPU")
    add("--gpu-memory-gb", type=memory_type, help="GiB per GPU the plan must fit (plan.gpu_memory_gb)")
    mfu_type = _number_in(0, 1, "the model-FLOP utilisation, a share")
    add("--mfu", type=mfu_type, help="model-FLOP utilisation for the time estimate, in (0, 1] (plan.mfu)")
    _add_set(p)


def _add_push(sub) -> None:
    p = sub.add_parser("push", help="upload the adapter and merged models with their cards")
    p.add_argument("params", help="profile YAML with export.push_to_hub: true")
    p.add_argument("--dry-run", action="store_true", help="say what would go to which repo; upload nothing")
    _add_set(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="platypus", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_validate, _add_decontaminate, _add_analyse, _add_plan, _add_push):
        add(sub)
    return parser


def _cmd_run(args) -> int:
    from .runner import RunLocked, StageFailed, run  # the runner imports every stage: only when running

    try:
        flags = {k: getattr(args, k) for k in ("only", "start", "force", "verbose", "wait", "allow_edited_notebooks")}
        run(args.params, overrides=parse_set(args.set), **flags)
    except StageFailed:
        return 1
    except RunLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    return 0


def _cmd_validate(args) -> int:
    """Every profile is checked; exit 2 if any is bad; unpinned hub references are warned about."""
    from .hub import unpinned_references

    bad = 0
    for path in args.params:
        try:
            profile = load_profile(path)
            check_target_modules(profile)
        except ProfileError as exc:
            print(f"error: {exc}", file=sys.stderr)
            bad += 1
            continue
        for ref in unpinned_references(profile):
            print(
                f"warning: {path}: key '{ref.key}': hub {ref.repo_type} {ref.repo_id!r} is not pinned to a "
                f"revision; write it as {ref.repo_id}@<commit sha> so a rerun reads the same files",
                file=sys.stderr,
            )
        print(f"{path}: ok (profile {profile.name})")
    return 2 if bad else 0


def _check_out_file(out: Path, given: Path) -> None:
    """--out names a file to write: not a folder, not under a file, not the input (else ValueError)."""
    if out.is_dir():
        raise ValueError(f"--out {out}: is a folder; give the JSON file to write, e.g. {out / 'plan.json'}")
    if any(p.exists() and not p.is_dir() for p in out.parents):
        raise ValueError(f"--out {out}: a folder on its path is a file")
    if out.resolve() == given.resolve():
        raise ValueError(f"--out {out}: is the input {given}; choose another file")


def _cmd_plan(args) -> int:
    from .artifacts import write_json
    from .plan import check_fits, format_plan, make_plan, shown_path

    profile = load_profile(args.params, overrides=parse_set(args.set))
    if args.out:
        _check_out_file(Path(args.out), Path(args.params))
    result = make_plan(profile, config_dir=args.config, gpu=args.gpu, gpu_memory_gb=args.gpu_memory_gb, mfu=args.mfu)
    print(format_plan(result))
    out = write_json(Path(args.out) if args.out else profile.report_dir() / "plan.json", result)
    print(f"written: {shown_path(out)}")
    check_fits(result)  # exit 2 naming the keys to change, after the table and the JSON
    return 0


def _cmd_decontaminate(args) -> int:
    from pydantic import ValidationError

    from .config import DecontaminateConfig
    from .decontaminate.stage import check_file

    settings = {"similarity_threshold": args.threshold, "candidates": args.candidates, "engine": args.engine}
    optional = {  # a flag not given keeps the default
        "ray_address": args.ray_address,
        "detectors": args.detectors,
        "benchmarks": args.benchmark_names,
        "judge_model": args.judge,
        "decisions": args.decisions and str(Path(args.decisions).resolve()),
    }
    settings.update({k: v for k, v in optional.items() if v})
    try:
        cfg = DecontaminateConfig(**settings)
    except ValidationError as exc:
        flags = {"similarity_threshold": "--threshold", "detectors": "--detectors", "benchmarks": "--benchmark"}
        problems = "; ".join(f"{flags.get(str(e['loc'][0]), e['loc'][0])}: {e['msg']}" for e in exc.errors())
        raise ValueError(problems) from None
    if args.build_index:
        from .decontaminate.stage import build_benchmark_index

        meta = build_benchmark_index(args.benchmarks, args.build_index, cfg, args.embedding_model, args.cache_dir)
        print(json.dumps(meta, indent=2))
        return 0
    if not args.train or not args.out:
        raise ValueError("give a training file and --out (or --build-index FILE to index the benchmarks only)")
    summary = check_file(
        args.train, args.benchmarks, args.out, cfg, args.embedding_model, args.cache_dir, index=args.index
    )
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_analyse(args) -> int:
    from .analysis.paired import StatsSettings
    from .analysis.stage import analyse

    merged = dict(m.split("=", 1) for m in args.merged if "=" in m)
    st = StatsSettings(args.confidence, args.n_bootstrap, args.fdr, args.seed)
    formats = [f for f in args.formats.split(",") if f]
    opts = {"force": args.force, "formats": formats, "st": st, "merged": merged, "results_files": args.results_files}
    produced = analyse(args.inputs, args.baseline, args.out, **opts)
    compared = produced.get("verdicts", []) or [produced.get("no_comparison", "")]
    print("\n".join([c for c in compared if c] + produced["notes"] + [f"summary: {produced['summary']}"]))
    return 0


def _cmd_push(args) -> int:
    from .export import push_to_hub

    records = push_to_hub(load_profile(args.params, overrides=parse_set(args.set)), dry_run=args.dry_run)
    for r in records:
        done = f"pushed, commit {r['commit']}" if r["pushed"] else "would push (--dry-run)"
        print(f"{r['variant']}: {r['folder']} -> {r['repo_id']}: {done}")
    return 0


COMMANDS = {
    "run": _cmd_run,
    "validate": _cmd_validate,
    "plan": _cmd_plan,
    "decontaminate": _cmd_decontaminate,
    "analyse": _cmd_analyse,
    "push": _cmd_push,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("platypus").setLevel(logging.INFO)
    try:
        return COMMANDS[args.command](args)
    except (ProfileError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
