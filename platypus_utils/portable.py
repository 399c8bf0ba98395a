"""Make a report folder portable: replace the absolute paths of the machine that wrote it (core layer).

`relativize_text` rewrites each absolute path at a path boundary: under the project root -> relative ("."
for the root), under its parent -> "../", under home -> "~/". `to_project`/`from_project` write and read
a manifest path (relative under the root, else absolute).
A path boundary is the start of text, whitespace, a quote, `(`, `=`, ...; URLs and other text are left alone.
`make reports` runs this over reports/real-offline/ so the committed reports read the same whoever made them.

    python -m platypus_utils.portable reports/real-offline [--root .] [--check]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

TEXT_SUFFIXES = (".ipynb", ".json", ".jsonl", ".md", ".html", ".csv", ".txt", ".tex", ".yaml")
# start of text or a character that cannot be part of a path
_BOUNDARY = r"(?<![\w.~/:%-])"
_MACHINE_PATH = re.compile(_BOUNDARY + r"/(?:home|root|Users|work|content|mnt)/[^\s\\\"'<>)\]},;]*")


def _replacements(root: Path) -> list[tuple[re.Pattern, str]]:
    """(pattern, replacement) pairs, the most specific prefix first."""
    root = root.resolve()
    pairs = {str(root): "."}
    if str(root.parent) != "/":
        pairs.setdefault(str(root.parent), "..")
    home = str(Path.home().resolve())
    if home != "/":
        pairs.setdefault(home, "~")
    out = []
    for prefix, short in sorted(pairs.items(), key=lambda p: -len(p[0])):
        # prefix/rest -> short/rest (short "." drops itself: "./params" -> "params"), prefix alone -> short
        out.append((re.compile(_BOUNDARY + re.escape(prefix) + r"/"), "" if short == "." else short + "/"))
        out.append((re.compile(_BOUNDARY + re.escape(prefix) + r"(?![\w.-])"), short))
    return out


def relativize_text(text: str, root: str | Path) -> str:
    """`text` with the absolute paths under `root`, its parent folder and the home folder made relative."""
    for pattern, replacement in _replacements(Path(root)):
        text = pattern.sub(replacement, text)
    return text


def to_project(path: str | Path, root: str | Path) -> str:
    """A `path` under `root` as a relative POSIX path ("." for the root); any other path unchanged."""
    try:
        rel = Path(path).relative_to(Path(root))
    except ValueError:
        return str(path)
    return rel.as_posix() or "."


def from_project(text: str, root: str | Path) -> str:
    """The inverse of `to_project`: a relative path joined to `root`, an absolute one unchanged."""
    return text if Path(text).is_absolute() else str(Path(root) / text)


# paths the project's own code names (the Colab setup cell's clone)
FIXED_PATHS = frozenset({"/content/platypus"})


def absolute_paths(text: str) -> list[str]:
    """The substrings of `text` that look like a machine's absolute path, less FIXED_PATHS."""
    return [p for p in _MACHINE_PATH.findall(text) if p not in FIXED_PATHS]


def relativize_folder(folder: str | Path, root: str | Path) -> list[Path]:
    """Rewrite the text files under `folder` in place; returns the files changed."""
    changed = []
    for path in _text_files(folder):
        text = path.read_text(encoding="utf-8")
        new = relativize_text(text, root)
        if new != text:
            path.write_text(new, encoding="utf-8", newline="")
            changed.append(path)
    return changed


def _text_files(folder: str | Path) -> list[Path]:
    return [p for p in sorted(Path(folder).rglob("*")) if p.is_file() and p.suffix in TEXT_SUFFIXES]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m platypus_utils.portable", description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="a report folder, e.g. reports/real-offline")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the project root (default: the current folder)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a machine path is left")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        print(f"{args.folder}: no such folder", file=sys.stderr)
        return 2
    if not args.check:
        changed = relativize_folder(args.folder, args.root)
        print(f"{len(changed)} file(s) under {args.folder} made portable")
    left = [f"{f}: {p}" for f in _text_files(args.folder) for p in absolute_paths(f.read_text(encoding="utf-8"))]
    for line in left[:20]:
        print(f"absolute path left: {line}", file=sys.stderr)
    return 1 if left and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
