"""The few S3 operations the orchestrator makes, each over a client passed in.

Listing is one paginated ListObjectsV2 (1,000 keys a request); nothing here sets an ACL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from ndmg_cloud.core.layout import split_uri


class S3AccessError(RuntimeError):
    """S3 said no; the message names the bucket/prefix and what to check."""


@dataclass(frozen=True)
class S3Object:
    key: str
    size: int
    etag: str
    last_modified: Any = None  # a datetime, from the listing


def list_objects(client: Any, bucket: str, prefix: str = "") -> Iterator[S3Object]:
    paginator = client.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": 1000}):
            for obj in page.get("Contents", ()):
                yield S3Object(obj["Key"], obj["Size"], obj.get("ETag", "").strip('"'), obj.get("LastModified"))
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            raise S3AccessError(f"bucket {bucket!r} does not exist (check the 'bucket' param and the AWS region)") from None
        if code in ("AccessDenied", "AllAccessDisabled", "403"):
            raise S3AccessError(
                f"access denied listing s3://{bucket}/{prefix}: the orchestrator's role needs s3:ListBucket on this bucket and prefix"
            ) from None
        raise


def put_json(client: Any, uri: str, document: Any) -> None:
    """Write ``document`` at ``uri`` (s3://, or a local path: see ``write_at``)."""
    write_at(client, uri, json.dumps(document, indent=2, sort_keys=True).encode(), "application/json")


def put_bytes(client: Any, bucket: str, key: str, body: bytes, content_type: str) -> None:
    # No ACL argument on purpose: objects stay private to the bucket owner.
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        raise S3AccessError(f"could not write s3://{bucket}/{key} ({code}): check the role's s3:PutObject") from None


def get_json(client: Any, bucket: str, key: str) -> Any:
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return json.loads(body)


def get_bytes(client: Any, uri: str) -> bytes:
    bucket, key = split_uri(uri)
    body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def write_at(client: Any, uri: str, body: bytes, content_type: str = "application/json") -> None:
    """Write ``body`` at ``uri``: an s3:// URI, or a local path (the local backend's job dir)."""
    if uri.startswith("s3://"):
        bucket, key = split_uri(uri)
        put_bytes(client, bucket, key, body, content_type)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)


def read_json_at(client: Any, uri: str) -> Any:
    """The document ``put_json`` wrote at ``uri``."""
    return json.loads(read_at(client, uri))


def read_if_present(client: Any, uri: str) -> bytes | None:
    """What ``write_at`` wrote at ``uri``, or None if nothing is there (S3's NoSuchKey, which
    a role that may list the prefix gets; any other refusal raises)."""
    try:
        return read_at(client, uri)
    except FileNotFoundError:
        return None
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise


def read_at(client: Any, uri: str, start: int | None = None, length: int | None = None) -> bytes:
    """Read what ``write_at`` wrote (``length`` bytes from ``start``: one ranged GET)."""
    if not uri.startswith("s3://"):
        with open(uri, "rb") as handle:
            handle.seek(start or 0)
            return handle.read() if length is None else handle.read(length)
    bucket, key = split_uri(uri)
    ranged = {} if start is None else {"Range": f"bytes={start}-{'' if length is None else start + length - 1}"}
    body: bytes = client.get_object(Bucket=bucket, Key=key, **ranged)["Body"].read()
    return body
