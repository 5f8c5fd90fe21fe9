"""Helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

INSTALL_TOOLS = "scripts/install-test-tools.sh (make test runs it; as root on Debian it installs them)"


def require_tool(tool: str, found: bool, package: str) -> None:
    """Skip the test, with one line naming ``tool`` and how to install it, when the program it
    drives is missing; CI (``NDMG_REQUIRE_TEST_TOOLS=1``, set by .ci/run) fails instead."""
    if not found:
        missing_tool(tool, package)


def missing_tool(tool: str, package: str) -> NoReturn:
    message = f"{tool} is not installed: apt-get install {package}, or run {INSTALL_TOOLS}"
    if os.environ.get("NDMG_REQUIRE_TEST_TOOLS") == "1":
        pytest.fail(message + " (NDMG_REQUIRE_TEST_TOOLS=1: CI runs every test)", pytrace=False)
    pytest.skip(message)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def postgres_bin() -> Path | None:
    """The PostgreSQL server's programs (Debian's postgresql package), newest version first."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name), reverse=True)
    return found[0].parent if found else None
