"""`python -m platypus_utils.finetune PROFILE [--set KEY=VALUE ...]`: stage 03 in this process; what
`accelerate launch` runs once per GPU when finetune.num_gpus > 1 (see distributed.accelerate_command)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Optional

from ..config import load_profile, parse_set
from .distributed import process_info
from .stage import run_finetune

log = logging.getLogger("platypus")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m platypus_utils.finetune", description=__doc__)
    parser.add_argument("params", help="profile YAML")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a profile key")
    args = parser.parse_args(argv)
    rank = process_info()[0]
    logging.basicConfig(
        level=logging.WARNING, format=f"%(asctime)s [rank {rank}] %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    run_finetune(load_profile(args.params, parse_set(args.set)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
