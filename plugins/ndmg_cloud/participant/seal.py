"""Seals on what a run writes for itself, so that a rewrite is found before anything is used.

The run plan, the settlement, the released scans, the job specs and the XComs that point at
them live where others can write: the job dir (anyone with write access to it) and Airflow's
XCom table (in Airflow 3.3 a USER-role account may create or patch XComs through the REST
API). Each is sealed when the run writes it: an HMAC-SHA256, under a deployment secret that
USER-role accounts cannot read (``NDMG_SEAL_KEY``), of the document and of *where* it belongs
(its URI, or this run's id and the XCom's role). A reader passes where it expects the
document, so a sealed document copied to another place, another run or another scan does not
verify either. A document whose seal is missing or wrong is refused: nothing in it is used.

The scan container does not hold the key (it is less trusted than the orchestrator): it gets
the SHA-256 of its job spec in its environment (``core.spec.JOB_SPEC_SHA256_ENV``) instead.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

SEAL_KEY_ENV = "NDMG_SEAL_KEY"  # the secret itself (at least MIN_KEY_CHARS characters)
SEAL_KEY_FILE_ENV = "NDMG_SEAL_KEY_FILE"  # or a file holding it (the compose deployment's secrets volume)
SEAL_FIELD = "ndmg_seal"
MIN_KEY_CHARS = 32
HOW_TO_SET = (
    f"set {SEAL_KEY_ENV} (a random secret: python -c 'import secrets; print(secrets.token_hex(32))') "
    f"or {SEAL_KEY_FILE_ENV} (a file holding one) in the environment of every Airflow component, and keep it "
    "from USER-role accounts (docs/security.md)"
)


class NoSealKey(RuntimeError):
    """The deployment has not set the seal key: nothing is written unsealed."""


class BrokenSeal(ValueError):
    """A document's seal is missing or does not match: it was not written here by this run."""


def _key() -> bytes:
    key = os.environ.get(SEAL_KEY_ENV, "")
    key_file = os.environ.get(SEAL_KEY_FILE_ENV, "")
    if not key and key_file:
        try:
            key = Path(key_file).read_text().strip()
        except OSError as err:
            raise NoSealKey(f"cannot read the seal key from {SEAL_KEY_FILE_ENV}={key_file}: {err.strerror}; {HOW_TO_SET}") from None
    if not key:
        raise NoSealKey(f"no seal key: {HOW_TO_SET}")
    if len(key) < MIN_KEY_CHARS:
        raise NoSealKey(f"the seal key is {len(key)} characters, fewer than {MIN_KEY_CHARS}: {HOW_TO_SET}")
    return key.encode()


def check_key() -> None:
    """``NoSealKey`` saying what to set if this deployment has no usable seal key."""
    _key()


def _digest(document: dict[str, Any], where: str) -> str:
    body = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    return hmac.new(_key(), where.encode() + b"\0" + body, hashlib.sha256).hexdigest()


def seal(document: dict[str, Any], where: str) -> dict[str, Any]:
    """``document`` with its seal for ``where`` (a URI, or ``<run id>:<role>`` for an XCom)."""
    body = {k: v for k, v in document.items() if k != SEAL_FIELD}
    return {**body, SEAL_FIELD: _digest(body, where)}


def unseal(document: Any, where: str, what: str) -> dict[str, Any]:
    """``document`` without its seal, if the seal is this deployment's for ``where``; else
    ``BrokenSeal`` naming ``what`` and where, and what to do."""
    if not isinstance(document, dict):
        raise BrokenSeal(f"{what} ({where}) is not a document this run wrote: refusing it")
    body = {k: v for k, v in document.items() if k != SEAL_FIELD}
    given = document.get(SEAL_FIELD)
    if not isinstance(given, str) or not hmac.compare_digest(given, _digest(body, where)):
        why = "has no seal" if given is None else "has a seal that does not match"
        raise BrokenSeal(
            f"{what} ({where}) {why}: it was not written there by this run (rewritten, copied from elsewhere, "
            "or written by code before seals), so nothing in it is used. Find who else writes the job dir or this "
            "run's XComs; then clear the run from discover to write it again"
        )
    return body
