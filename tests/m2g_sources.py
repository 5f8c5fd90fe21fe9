"""Where this machine keeps what the real m2g needs, found as scripts/m2g-env.sh (which make images
uses) finds them: the pinned m2g and neuroparc sources (``NDMG_THIRD_PARTY``, else
``../shared/third_party`` beside the checkout or ``/work/shared/third_party``) and a CPython 3.7
(``NDMG_LOCAL_PYTHON37``, else pyenv's newest 3.7).
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from conftest import ROOT

M2G_TARBALL = "m2g-95d271f7.tar.gz"
NEUROPARC_TARBALL = "neuroparc-5a5e7469-atlases.tar.gz"


def third_party() -> Path | None:
    candidates = [os.environ.get("NDMG_THIRD_PARTY"), ROOT.parent / "shared/third_party", "/work/shared/third_party"]
    for candidate in filter(None, candidates):
        folder = Path(candidate)
        if (folder / M2G_TARBALL).is_file() and (folder / NEUROPARC_TARBALL).is_file():
            return folder.resolve()
    return None


def m2g_python_files() -> dict[str, bytes]:
    """The pinned m2g package's Python files, by path from the package's parent (``m2g/...``)."""
    with tarfile.open(third_party() / M2G_TARBALL) as archive:
        return {
            member.name.split("/", 1)[1]: archive.extractfile(member).read()
            for member in archive.getmembers()
            if member.isfile() and member.name.endswith(".py") and "/m2g/" in member.name
        }


def python37() -> Path | None:
    """The prefix of a CPython 3.7 (its bin/python3.7)."""
    given = os.environ.get("NDMG_LOCAL_PYTHON37")
    if given:
        return Path(given) if (Path(given) / "bin/python3.7").exists() else None
    versions = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    found = [p for p in versions.glob("3.7.*") if (p / "bin/python3.7").exists()]
    return max(found, key=lambda p: tuple(int(n) for n in p.name.split(".") if n.isdigit()), default=None)


def require_m2g_sources(python: bool = True) -> None:
    """Skip (fail where CI runs every test: NDMG_REQUIRE_TEST_TOOLS=1), naming what is missing:
    the sources, and unless not ``python`` a CPython 3.7 to run them."""
    missing = []
    if third_party() is None:
        missing.append(f"the pinned m2g and neuroparc sources ({M2G_TARBALL}, {NEUROPARC_TARBALL}: set NDMG_THIRD_PARTY to their folder)")
    if python and python37() is None:
        missing.append("CPython 3.7 (pyenv install 3.7, or NDMG_LOCAL_PYTHON37=<its prefix>)")
    if missing:
        message = "the real m2g cannot run on this machine: no " + " and no ".join(missing)
        if os.environ.get("NDMG_REQUIRE_TEST_TOOLS") == "1":
            pytest.fail(message + " (NDMG_REQUIRE_TEST_TOOLS=1: CI runs every test)", pytrace=False)
        pytest.skip(message)
