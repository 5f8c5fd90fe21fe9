"""The real pipelines' command lines, as facts read from their source (``tests/facts/``,
written by ``scripts/cli_facts.py``), turned into argparse parsers and stand-in programs.

A stand-in program parses exactly as the real one (same flags, nargs and actions) and
refuses to go further: it is what ``ndmg-scan --self-check`` and ``ndmg-image-contract``
meet here, where the real images cannot run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FACTS = Path(__file__).resolve().parent / "facts"
M2G_DEPLOY = "m2g-deploy-95d271f7"  # the commit Dockerfile.m2g pins
M2G_POST_PAPER = "m2g-deploy-da1fdd29"  # the first deploy commit that takes --track_type
M2G_TAG = "m2g-tag-v0.3.0"
M2G_PYPI = "m2g-pypi-0.3.0"
NDMG_PYPI = "ndmg-pypi-0.2.1"


def load(name: str) -> dict:
    return json.loads((FACTS / f"{name}.json").read_text())


def parser_of(name: str) -> argparse.ArgumentParser:
    facts = load(name)
    parser = argparse.ArgumentParser(prog=facts["program"])
    for argument in facts["arguments"]:
        parser.add_argument(*argument["names"], **{k: v for k, v in argument.items() if k != "names"})
    return parser


def parse(name: str, argv: list[str]) -> argparse.Namespace:
    """Parse a full command (program first) as that code's parser would; SystemExit(2) if refused."""
    facts = load(name)
    assert argv[0] == facts["program"], f"{argv[0]} is not {facts['program']}"
    return parser_of(name).parse_args(argv[1:])


STAND_IN = '''#!{python}
"""Stand-in for {program}: the parser of {source}; never runs the pipeline."""
import argparse, json, sys

def main():
    facts = json.load(open({facts!r}))
    parser = argparse.ArgumentParser(prog=facts["program"])
    for argument in facts["arguments"]:
        parser.add_argument(*argument["names"], **{{k: v for k, v in argument.items() if k != "names"}})
    parser.parse_args()
    sys.exit("stand-in {program}: parsed, and a stand-in never runs the pipeline")

if __name__ == "__main__":
    sys.exit(main())
'''


def install_stand_in(name: str, bin_dir: Path) -> Path:
    """Write an executable stand-in of that code's program into ``bin_dir``."""
    facts = load(name)
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / facts["program"]
    path.write_text(
        STAND_IN.format(python=sys.executable, program=facts["program"], source=facts["source"], facts=str(FACTS / f"{name}.json"))
    )
    path.chmod(0o755)
    return path
