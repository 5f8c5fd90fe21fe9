"""What a scan may inherit and what its logs may keep.

An Airflow worker's environment holds the metadata DB's URL, the API's JWT secret, the
Fernet key and AWS keys. The local backend's runner gets only an allow-list of it (plus the
AWS settings it needs for S3); the pipeline the runner starts gets the runner's environment
without AWS credentials or anything named like a secret (in a Batch container that
environment is the image's and the job definition's). Log lines are redacted of key-like
strings before they are kept as a log tail (reasons, XCom, the report).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import unquote

# The local runner: a process environment, locale and temp dirs, thread caps, this project's
# own settings, and the AWS settings boto3 reads (the runner reads and writes S3).
RUNNER_NAMES = {
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "TEMP",
    "TMP",
    "VIRTUAL_ENV",
    "PYTHONPATH",
    "PYTHONHASHSEED",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
}
RUNNER_PREFIXES = ("LC_", "NDMG_", "AWS_")
# Never handed to a pipeline: what boto3 would sign requests with, and anything named so.
CREDENTIAL_NAMES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"}
SECRET_WORDS = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|PRIVATE|FERNET|_CONN\b|SQL_ALCHEMY|JWT", re.I)
NOT_FOR_A_PIPELINE_PREFIXES = ("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_", "AWS_CONTAINER_CREDENTIALS_")

REDACTED = "[redacted]"
_KEY_LIKE = [
    re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA)[A-Z0-9]{16}\b"),  # AWS access key ids
    # an AWS secret access key's shape: 40 of base64's characters, mixed case
    re.compile(r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]*[a-z])(?=[A-Za-z0-9/+]*[A-Z])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    # STS session tokens (IQoJ... today, FwoG... before), bare
    re.compile(r"(?<![A-Za-z0-9/+=])(?:IQoJ|FwoG)[A-Za-z0-9/+=%]{20,}"),
    # a Fernet key: 32 bytes, urlsafe base64 (44 characters, the last '=')
    re.compile(r"(?<![A-Za-z0-9_=-])(?=[A-Za-z0-9_-]*[a-z])(?=[A-Za-z0-9_-]*[A-Z])[A-Za-z0-9_-]{43}=(?![A-Za-z0-9_=-])"),
]
# a secret access key URL-encoded ('/' as %2F, '+' as %2B): 40 characters once decoded
_ENCODED_KEY = re.compile(r"(?<![A-Za-z0-9%/+])[A-Za-z0-9%/+]*%2[BFbf][A-Za-z0-9%/+]*(?![A-Za-z0-9%/+=])")
_ASSIGNED_SECRET = re.compile(
    r"""(?i)\b([\w.-]*(?:secret|password|passwd|token|api[_-]?key|access[_-]?key)[\w.-]*)(["']?\s*[:=]\s*["']?)([^\s"',;]+)"""
)
_URL_PASSWORD = re.compile(r"(://[^/\s:@]+:)([^@\s]+)(@)")  # a password may hold '/' (or %2F)


def runner_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The local runner's environment: the allow-list of ``environ``."""
    return {k: v for k, v in environ.items() if k in RUNNER_NAMES or k.startswith(RUNNER_PREFIXES)}


def pipeline_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """A pipeline's environment: ``environ`` without credentials or secret-named variables."""
    return {
        k: v
        for k, v in environ.items()
        if k not in CREDENTIAL_NAMES and not k.startswith(NOT_FOR_A_PIPELINE_PREFIXES) and not SECRET_WORDS.search(k)
    }


def redact(line: str) -> str:
    """``line`` with key-like strings, assigned secrets and URL passwords replaced."""
    for pattern in _KEY_LIKE:
        line = pattern.sub(REDACTED, line)
    line = _ENCODED_KEY.sub(lambda m: REDACTED if _KEY_LIKE[1].fullmatch(unquote(m.group(0))) else m.group(0), line)
    line = _ASSIGNED_SECRET.sub(lambda m: m.group(1) + m.group(2) + REDACTED, line)
    return _URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + m.group(3), line)
