"""Discovery benchmark: list and parse a 5,000-scan BIDS dataset on a local moto S3.

Prints figures, asserts nothing. Bars:
  * discovery makes exactly ceil(keys / 1000) S3 requests (one paginated listing);
  * ndmg_cloud.core.entities.parse_entities parses >= 50,000 keys/s;
  * parse_entities agrees with pybids' parse_file_entities on every key (0 mismatches).

Run: .venv/bin/python benchmarks/discovery.py   (or `make bench`; `--smoke`: 20 subjects,
the figures only, as `make test` runs it so that the benchmark cannot rot)
Only 127.0.0.1 is used; credentials are fake ("testing").
"""

from __future__ import annotations

import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

REGION = "us-east-1"
BUCKET = "ndmg-bench"
BIDSDIR = "bench/ds"
PREFIX = BIDSDIR + "/"
SUBJECTS = 1000
SESSIONS = 5
PARSE_BAR = 50_000  # keys/s
PYBIDS_SAMPLE = 2000

# Fake credentials for the local endpoint only, set before boto3 is imported.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }
)
for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(var, None)

import boto3  # noqa: E402
from botocore.config import Config as BotoConfig  # noqa: E402


def bar(ok: bool, what: str) -> str:
    return f"  -> bar {'met' if ok else 'NOT met'}: {what}"


def dataset_keys(subjects: int = SUBJECTS) -> list[str]:
    """Relative keys of the generated dataset: 5 files per session, plus a few extras."""
    rel = ["dataset_description.json", "README", "CHANGES", "participants.tsv"]
    for s in range(1, subjects + 1):
        sub = f"sub-{s:04d}"
        for e in range(1, SESSIONS + 1):
            ses = f"ses-{e}"
            base = f"{sub}/{ses}"
            rel.append(f"{base}/anat/{sub}_{ses}_T1w.nii.gz")
            for ext in (".nii.gz", ".bval", ".bvec", ".json"):
                rel.append(f"{base}/dwi/{sub}_{ses}_dwi{ext}")
    # Junk and excluded keys: not candidates, or under ignored / output folders.
    rel += [
        "sub-0001/ses-1/dwi/notes.txt",
        "sub-0002/.DS_Store",
        "code/convert.py",
        "sourcedata/sub-0001/raw.tar",
        "derivatives/ndmg/sub-0001/ses-1/dwi/sub-0001_ses-1_dwi.nii.gz",
    ]
    return rel


def load_in_process(keys: list[str]) -> str:
    """Insert the objects straight into the moto backend the server thread serves."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for key in keys:
        backend.put_object(BUCKET, key, b"", disable_notification=True)
    return "in-process via moto.s3.models.s3_backends[account]['aws'].put_object"


def load_over_http(client, keys: list[str]) -> str:
    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=BUCKET, Key=k, Body=b""), keys))
    return "over HTTP with 32 threads of boto3 put_object"


def main() -> int:
    import argparse
    import logging

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="20 subjects: the figures, quickly (make test)")
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no per-request access log

    # port=0: the OS picks a free port at bind time (no race with other processes).
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        return run(endpoint, subjects=20 if args.smoke else SUBJECTS)
    finally:
        server.stop()
        print(f"moto server on {endpoint} stopped")


def run(endpoint: str, subjects: int) -> int:
    from ndmg_cloud.core import entities as ndmg_entities
    from ndmg_cloud.participant.discover import discover
    from ndmg_cloud.participant.params import PARAM_SCHEMAS, resolve

    print(f"moto server: {endpoint}")
    boto_cfg = BotoConfig(max_pool_connections=32, retries={"max_attempts": 1})
    setup = boto3.client("s3", region_name=REGION, endpoint_url=endpoint, config=boto_cfg)
    setup.create_bucket(Bucket=BUCKET)

    rel_keys = dataset_keys(subjects)
    keys = [PREFIX + k for k in rel_keys]
    t0 = time.perf_counter()
    try:
        how = load_in_process(keys)
        listed = sum(p.get("KeyCount", 0) for p in setup.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX))
        if listed != len(keys):
            raise RuntimeError(f"server lists {listed} keys, expected {len(keys)}")
    except Exception as err:
        print(f"in-process load failed ({err!r}); falling back to HTTP")
        how = load_over_http(setup, keys)
    print(f"loaded {len(keys):,} keys {how} in {time.perf_counter() - t0:.1f} s")

    # ---- discovery: one listing, counted at the HTTP layer -------------------------------
    print("\n== discovery ==")
    # resolve() takes validated params, i.e. with the defaults the DAG's Params fill in.
    params = {name: schema.get("default") for name, schema in PARAM_SCHEMAS.items()}
    params.update({"bucket": BUCKET, "bidsdir": BIDSDIR, "pipeline": "m2g"})
    config = resolve(params, "bench_run")
    print(f"input {config.input_root.uri()}  output {config.output_root.uri()}")
    client = boto3.client("s3", region_name=REGION, endpoint_url=endpoint)
    requests: list[str] = []

    def count(event_name: str, **_: object) -> None:
        requests.append(event_name)

    client.meta.events.register("before-send.s3.*", count)
    ndmg_entities._matchers()  # load pybids' config once, outside the timed region
    t0 = time.perf_counter()
    found = discover(config, client)
    elapsed = time.perf_counter() - t0
    expected = math.ceil(found.keys_listed / 1000)
    ops = sorted({e.rsplit(".", 1)[-1] for e in requests})
    print(f"keys listed:            {found.keys_listed:,} (generated {len(keys):,})")
    print(f"keys parsed:            {found.keys_parsed:,}")
    print(f"S3 requests made:       {len(requests)} ({', '.join(ops)})")
    print(f"expected ceil(keys/1000): {expected}")
    print(f"discovery seconds:      {elapsed:.3f}")
    print(f"keys/s (end to end):    {found.keys_listed / elapsed:,.0f}")
    print(f"scans found:            {len(found.scans):,} (valid {len(found.valid):,}, invalid {len(found.invalid):,})")
    print(bar(len(requests) == expected, f"S3 requests ({len(requests)}) == ceil(keys/1000) ({expected})"))

    # Where the end-to-end time goes: the same listing without parsing.
    from ndmg_cloud.core.s3 import list_objects

    t0 = time.perf_counter()
    n = sum(1 for _ in list_objects(client, BUCKET, PREFIX))
    list_only = time.perf_counter() - t0
    print(f"(listing alone, no parsing: {n:,} keys in {list_only:.3f} s, {n / list_only:,.0f} keys/s; moto serves the pages)")
    from ndmg_cloud.core.bids import discover_scans

    t0 = time.perf_counter()
    in_memory = discover_scans(keys, PREFIX)
    grouping = time.perf_counter() - t0
    print(
        f"(discover_scans on the key list in memory, no S3: {in_memory.keys_listed:,} keys, "
        f"{len(in_memory.scans):,} scans in {grouping:.3f} s, {in_memory.keys_listed / grouping:,.0f} keys/s)"
    )

    # ---- parse rate over every key --------------------------------------------------------
    print("\n== entity parsing ==")
    paths = ["/" + k for k in rel_keys]
    parse = ndmg_entities.parse_entities
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        for p in paths:
            parse(p)
        runs.append(time.perf_counter() - t0)
    best = min(runs)
    rate = len(paths) / best
    print(
        f"parse_entities:                 {len(paths):,} keys (all of them), best of 3 "
        f"{best:.3f} s -> {rate:,.0f} keys/s (runs: {', '.join(f'{r:.3f}' for r in runs)} s)"
    )
    print(bar(rate >= PARSE_BAR, f"{rate:,.0f} keys/s >= {PARSE_BAR:,} keys/s"))

    from bids.layout import parse_file_entities
    from bids.layout.models import Config

    preloaded: dict = {}
    for name in ("bids", "derivatives"):
        preloaded.update(Config.load(name).entities)
    preloaded_list = list(preloaded.values())

    step = max(1, len(paths) // PYBIDS_SAMPLE)
    sample = paths[::step][:PYBIDS_SAMPLE]
    t0 = time.perf_counter()
    for p in sample:
        parse_file_entities(p)
    plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    for p in sample:
        parse_file_entities(p, entities=preloaded_list)
    pre = time.perf_counter() - t0
    print(f"pybids parse_file_entities (plain, reloads config): {len(sample):,} keys, {len(sample) / plain:,.0f} keys/s")
    print(f"pybids parse_file_entities (entities= preloaded):   {len(sample):,} keys, {len(sample) / pre:,.0f} keys/s")

    t0 = time.perf_counter()
    mismatches = []
    for p in paths:
        mine = parse(p)
        theirs = parse_file_entities(p, entities=preloaded_list)
        if mine != theirs or [type(v) for v in mine.values()] != [type(theirs[k]) for k in mine]:
            mismatches.append((p, mine, theirs))
    print(
        f"equivalence on all {len(paths):,} keys vs pybids (entities= preloaded): "
        f"{len(mismatches)} mismatches ({time.perf_counter() - t0:.1f} s)"
    )
    for p, mine, theirs in mismatches[:5]:
        print(f"  {p}: ndmg {mine} != pybids {theirs}")
    print(bar(not mismatches, "0 mismatches"))
    return 0


if __name__ == "__main__":
    t_start = time.perf_counter()
    rc = main()
    print(f"\ntotal script time: {time.perf_counter() - t_start:.1f} s")
    sys.exit(rc)
