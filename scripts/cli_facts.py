"""Record a pipeline's command-line interface as facts, read from its source (not run).

    python scripts/cli_facts.py SOURCE.py --program m2g --source neurodata/m2g@<commit>:<path> \
        --date 2023-04-15 > tests/facts/m2g-deploy-95d271f7.json

Every ``add_argument(...)`` call in SOURCE.py becomes one entry: its names and, when given,
``nargs``, ``action`` and ``default`` (literal values only). The tests build an argparse
parser from these entries, so the adapters' command lines are checked against what the
real program accepts, not against our own golden strings.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

KEPT = ("nargs", "action", "default")
# Keywords that change what a parser accepts but are not recorded: refuse the source rather
# than record facts looser than the program (none of the recorded sources uses them).
UNRECORDED = ("type", "choices", "required", "dest", "const")


def arguments(source: str) -> list[dict]:
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            entry = {"names": [a.value for a in node.args if isinstance(a, ast.Constant)]}
            unrecorded = [k.arg for k in node.keywords if k.arg in UNRECORDED]
            if unrecorded:
                raise SystemExit(f"{entry['names']} uses {unrecorded}: teach cli_facts.py to record them")
            for keyword in node.keywords:
                if keyword.arg in KEPT and isinstance(keyword.value, ast.Constant):
                    entry[keyword.arg] = keyword.value.value
            out.append(entry)
    return sorted(out, key=lambda e: not e["names"][0].startswith("-"))  # positionals last, in order


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--program", required=True)
    parser.add_argument("--source", required=True, help="repository@commit:path or package==version:path")
    parser.add_argument("--date", required=True, help="date of that code")
    args = parser.parse_args()
    facts = {"program": args.program, "source": args.source, "date": args.date, "arguments": arguments(args.path.read_text())}
    head = json.dumps({k: v for k, v in facts.items() if k != "arguments"}, indent=1)[:-2]
    rows = ",\n  ".join(json.dumps(a) for a in facts["arguments"])
    sys.stdout.write(f'{head},\n "arguments": [\n  {rows}\n ]\n}}\n')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
