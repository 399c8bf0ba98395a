"""Command line: `platypus run PARAMS.yaml`, `platypus validate`, `platypus decontaminate`."""
from __future__ import annotations

import argparse
import json
import logging
import sys

import yaml

from .config import ProfileError, load_profile


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ProfileError(f"--set {item!r}: expected KEY=VALUE, e.g. finetune.max_steps=10")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)  # typed like the profile: 10 -> int, true -> bool
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="platypus", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p_run = sub.add_parser("run", help="run a profile's stages (papermill notebooks)")
    p_run.add_argument("params", help="profile YAML, e.g. params/demo.yaml")
    p_run.add_argument("--only", action="append", metavar="STAGE", help="run only this stage (repeatable): 03, finetune")
    p_run.add_argument("--from", dest="start", metavar="STAGE", help="run from this stage on")
    p_run.add_argument("--force", action="store_true", help="rerun stages even when up to date")
    p_run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a profile key, e.g. --set finetune.max_steps=5")
    p_run.add_argument("-v", "--verbose", action="store_true", help="stream cell output to the terminal")

    p_val = sub.add_parser("validate", help="validate profiles without running anything")
    p_val.add_argument("params", nargs="+")

    p_dec = sub.add_parser("decontaminate", help="check any Open-Platypus-schema JSONL against benchmarks")
    p_dec.add_argument("train", help="JSON lines with instruction, input, output[, data_source]")
    p_dec.add_argument("--benchmarks", required=True, help="directory in the original formats, or 'hub'")
    p_dec.add_argument("--out", required=True, help="output directory")
    p_dec.add_argument("--threshold", type=float, default=0.8)
    p_dec.add_argument("--embedding-model", default="embedded:all-minilm-l6-v2")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("platypus").setLevel(logging.INFO)
    try:
        if args.command == "run":
            from .runner import StageFailed, run

            try:
                run(args.params, only=args.only, start=args.start, force=args.force,
                    overrides=_parse_set(args.set), verbose=args.verbose)
            except StageFailed:
                return 1
        elif args.command == "validate":
            for path in args.params:
                profile = load_profile(path)
                print(f"{path}: ok (profile {profile.name})")
        elif args.command == "decontaminate":
            from .config import DecontaminateConfig
            from .decontaminate import check_file

            cfg = DecontaminateConfig(similarity_threshold=args.threshold)
            summary = check_file(args.train, args.benchmarks, args.out, cfg, args.embedding_model)
            print(json.dumps(summary, indent=2))
    except ProfileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
