"""A small IAM policy evaluator for the S3 actions the scan jobs make, written from AWS's
documented evaluation logic (not moto's, which does not evaluate policies):

- a request is allowed only if some statement allows it and none denies it (an explicit
  Deny wins over any Allow; no matching Allow is an implicit deny);
- ``Action``/``NotAction`` and ``Resource``/``NotResource`` match with IAM's wildcards:
  ``*`` any run of characters (``/`` included), ``?`` any one character; actions ignore
  case, resources do not;
- ``Condition`` operators used here: ``StringLike``/``StringEquals`` (any of the listed
  values matches) and their ``Not`` forms, on the request's context keys (``s3:prefix``);
  ``ArnLike``/``ArnEquals`` (the same wildcards; AWS documents the two as behaving alike);
  ``Bool`` (``"true"``/``"false"``, a key absent from the request never matches);
  ``Null`` (``"true"``: the key is absent from the request's context, ``"false"``: present);
- ``Principal`` (a resource policy's, e.g. a queue policy): ``"*"`` is anyone, otherwise
  the request's principal must be listed under its kind (``Service``, ``AWS``).

"Evaluating IAM policies" (IAM User Guide, policy evaluation logic) is the reference. Identity
policies, and one resource policy at a time (the queue of new scans' policy, with the S3
service as the caller): no bucket policy, SCP or boundary is deployed.
"""

from __future__ import annotations

import re
from typing import Any

ALLOWED, EXPLICIT_DENY, IMPLICIT_DENY = "allowed", "explicitly denied", "implicitly denied"


def _pattern(glob: str, ignore_case: bool) -> re.Pattern:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)
    return re.compile(f"^{body}$", re.I | re.S if ignore_case else re.S)


def _listed(value: Any) -> list[str]:
    return value if isinstance(value, list) else [value]


def _matches(statement: dict, key: str, not_key: str, value: str, ignore_case: bool) -> bool:
    if key in statement:
        return any(_pattern(p, ignore_case).match(value) for p in _listed(statement[key]))
    return not any(_pattern(p, ignore_case).match(value) for p in _listed(statement[not_key]))


def _condition_holds(condition: dict, context: dict[str, str]) -> bool:
    for operator, tests in condition.items():
        for key, wanted in tests.items():
            value = context.get(key)
            if operator in ("StringLike", "StringNotLike"):
                hit = value is not None and any(_pattern(w, False).match(value) for w in _listed(wanted))
            elif operator in ("StringEquals", "StringNotEquals"):
                hit = value is not None and value in _listed(wanted)
            elif operator in ("ArnLike", "ArnEquals"):
                hit = value is not None and any(_pattern(w, False).match(value) for w in _listed(wanted))
            elif operator == "Bool":
                hit = value is not None and value.lower() in [str(w).lower() for w in _listed(wanted)]
            elif operator == "Null":  # "true": the key is absent from the request; "false": present
                hit = (value is None) == (_listed(wanted)[0] == "true")
                if not hit:
                    return False
                continue
            else:
                raise NotImplementedError(f"condition operator {operator}")
            if hit == operator.startswith("StringNot"):
                return False
    return True


def _principal_matches(statement: dict, principal: dict[str, str] | None) -> bool:
    named = statement.get("Principal", "*")  # none: an identity policy's, whose principal is its holder
    if named == "*":
        return True
    if principal is None:
        raise ValueError(f"a statement for principal {named}: say who makes the request (principal=)")
    return any(principal.get(kind) in _listed(values) or "*" in _listed(values) for kind, values in named.items())


def evaluate(
    policies: list[dict], action: str, resource: str, context: dict[str, str] | None = None, principal: dict[str, str] | None = None
) -> str:
    """What IAM decides for one request under these policies (``principal`` for a resource
    policy: {"Service": "s3.amazonaws.com"} or {"AWS": "<account or ARN>"})."""
    allowed = False
    for policy in policies:
        for statement in _listed(policy["Statement"]):
            if not _principal_matches(statement, principal):
                continue
            if not _matches(statement, "Action", "NotAction", action, ignore_case=True):
                continue
            if not _matches(statement, "Resource", "NotResource", resource, ignore_case=False):
                continue
            if not _condition_holds(statement.get("Condition", {}), context or {}):
                continue
            if statement["Effect"] == "Deny":
                return EXPLICIT_DENY
            allowed = True
    return ALLOWED if allowed else IMPLICIT_DENY


def object_arn(bucket: str, key: str) -> str:
    return f"arn:aws:s3:::{bucket}/{key}"
