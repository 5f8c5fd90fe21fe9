"""What a person sees when ndmg_cloud cannot do what it was asked: one line on stderr,
``ndmg_cloud: <what happened>: <what to do>``, a non-zero exit code and never a traceback.
(The cases that need a live Airflow are in test_cli.py.)"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ndmg_cloud.cli.main import EMBEDDED_AWS_ENV, aws_error, main, parser

from conftest import _free_port
from datasets import put_dataset

NDMG_CLOUD = str(Path(sys.executable).parent / "ndmg_cloud")
AWS_SETTINGS = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_PROFILE",
)


def shell_without_aws(tmp_path: Path) -> dict[str, str]:
    """A shell with no AWS settings at all (no ~/.aws, no instance metadata to fall back on)."""
    env = {k: v for k, v in os.environ.items() if k not in AWS_SETTINGS}
    env.update(
        AWS_CONFIG_FILE=str(tmp_path / "no-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


def one_line_error(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ndmg_cloud: ")
    return lines[0]


def ndmg_cloud(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The installed command in a shell of its own, as a person runs it."""
    return subprocess.run([NDMG_CLOUD, *argv], env=env, capture_output=True, text=True, timeout=120)


def test_estimate_without_aws_settings_says_what_to_export(tmp_path):
    done = ndmg_cloud("estimate", "--bucket", "lab-data", "--bidsdir", "ds", env=shell_without_aws(tmp_path))
    assert done.returncode == 2
    line = one_line_error(done.stderr)
    assert line.startswith("ndmg_cloud: cannot list s3://lab-data/ds/: no usable AWS credentials")
    assert "AWS_PROFILE or ~/.aws" in line
    assert (
        "export AWS_ENDPOINT_URL=http://127.0.0.1:PORT AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo "
        "AWS_DEFAULT_REGION=us-east-1" in line
    )


def test_the_export_line_is_what_make_airflow_sets(monkeypatch):
    from ndmg_cloud.demo import stack as demo

    environ = {}
    monkeypatch.setattr(os, "environ", environ)
    demo.configure_environment(Path("home"), "http://127.0.0.1:PORT")
    assert {k: environ[k] for k in EMBEDDED_AWS_ENV} == EMBEDDED_AWS_ENV


def test_an_endpoint_that_does_not_answer():
    with socket.socket() as held:  # bound, never listening: nothing can answer on its port
        held.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{held.getsockname()[1]}"
        done = ndmg_cloud(
            "estimate", "--bucket", "lab-data", "--bidsdir", "ds", env={**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_MAX_ATTEMPTS": "1"}
        )
    assert done.returncode == 2
    line = one_line_error(done.stderr)
    assert f"cannot list s3://lab-data/ds/: nothing answers at AWS_ENDPOINT_URL={endpoint}" in line
    assert "start it (`make airflow`) and export the endpoint it prints" in line


def test_a_bucket_that_does_not_exist(s3):
    done = ndmg_cloud("estimate", "--bucket", "no-such-bucket", "--bidsdir", "ds")
    assert done.returncode == 2
    assert "bucket 'no-such-bucket' does not exist" in one_line_error(done.stderr)


def test_estimate_takes_dashed_and_seed_spellings(s3, capsys):
    put_dataset(s3, "lab-data", "ds/")
    for flag in ("--participant-label", "--participant_label"):
        assert main(["estimate", "--bucket", "lab-data", "--bidsdir", "ds", flag, "01"]) == 0
        assert "2 scans found" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        ("AccessDenied", "Access Denied", "cannot read s3://b/k: access denied (Access Denied): your AWS identity needs"),
        ("NoSuchKey", "The specified key does not exist.", "cannot read s3://b/k: no such object"),
        ("NoSuchBucket", "The bucket does not exist", "cannot read s3://b/k: the bucket does not exist"),
        ("InvalidAccessKeyId", "The key does not exist", "cannot read s3://b/k: AWS refused the credentials (InvalidAccessKeyId)"),
        ("SlowDown", "Reduce your request rate", "cannot read s3://b/k: AWS answered SlowDown: Reduce your request rate"),
    ],
)
def test_aws_client_errors_say_what_and_what_to_do(code, message, expected):
    from botocore.exceptions import ClientError

    err = ClientError({"Error": {"Code": code, "Message": message}}, "GetObject")
    assert str(aws_error(err, "cannot read s3://b/k")).startswith(expected)


def test_no_region(monkeypatch, capsys):
    from botocore.exceptions import NoRegionError

    monkeypatch.delenv("AWS_ENDPOINT_URL")
    line = str(aws_error(NoRegionError(), "cannot terminate the jobs"))
    assert line.startswith("cannot terminate the jobs: no AWS region: export AWS_DEFAULT_REGION=")
    assert "export AWS_ENDPOINT_URL=http://127.0.0.1:PORT" in line


def test_an_airflow_url_that_is_not_a_url(monkeypatch, capsys):
    monkeypatch.setenv("NDMG_AIRFLOW_PASSWORD", "x")
    assert main(["status", "--airflow-url", "localhost:8080"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "the Airflow URL 'localhost:8080' is not a URL: give http://host:port" in line


def test_no_airflow_password(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("NDMG_AIRFLOW_PASSWORD", raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))  # no generated password there
    assert main(["status", "--airflow-url", f"http://127.0.0.1:{_free_port()}"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "no Airflow password: export NDMG_AIRFLOW_PASSWORD" in line


def test_the_password_airflow_standalone_generated_is_used(monkeypatch, tmp_path):
    from ndmg_cloud.cli.main import airflow_from

    (tmp_path / "simple_auth_manager_passwords.json.generated").write_text('{"admin": "s3cret"}')
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", raising=False)
    monkeypatch.delenv("NDMG_AIRFLOW_PASSWORD", raising=False)
    assert airflow_from(parser().parse_args(["status"])).password == "s3cret"
    monkeypatch.setenv("NDMG_AIRFLOW_PASSWORD", "given")
    assert airflow_from(parser().parse_args(["status"])).password == "given"


def test_a_password_is_never_taken_from_the_command_line(capsys):
    assert main(["status", "--password", "hunter2"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "--password is gone: a password on the command line shows in `ps` and shell history: export NDMG_AIRFLOW_PASSWORD" in line


def test_local_without_airflow_home(monkeypatch, capsys):
    monkeypatch.delenv("AIRFLOW_HOME")
    assert main(["participant", "--bucket", "b", "--local"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "--local triggers through the Airflow of AIRFLOW_HOME, and it is not set" in line
    assert "export AIRFLOW_HOME=" in line and ".airflow-demo" in line


def test_local_with_an_airflow_home_that_has_no_database(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", raising=False)
    assert main(["participant", "--bucket", "b", "--local"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert f"the Airflow at AIRFLOW_HOME={tmp_path} has no database ('Database migration required')" in line
    assert "set AIRFLOW_HOME to the home of the Airflow you started" in line


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["participant", "--bucket", "b", "--credentials", "creds.csv"],
            "--credentials is gone: jobs get AWS access from their job role; the orchestrator uses your normal "
            "AWS settings (AWS_PROFILE or ~/.aws)",
        ),
        (["participant", "--bucket", "b", "--credentials=creds.csv"], "--credentials is gone"),
        (["--state", "participant", "--bucket", "b"], "--state is gone: the action is the subcommand now"),
        (["participant", "--bucket", "b", "--filtering_type", "local"], "--filtering_type is gone: use --track-type"),
        (["participant", "--bucket", "b", "--pipeline", "dwi"], "--pipeline dwi is the seed's modality"),
        (["participant", "--bucket", "b", "--tr", "2.0"], "--tr is gone: functional MRI is not processed here"),
    ],
)
def test_seed_flags_that_are_gone_get_a_migration_hint(argv, expected, capsys):
    assert main(argv) == 2
    assert one_line_error(capsys.readouterr().err).startswith(f"ndmg_cloud: {expected}")


def _parsers(top: argparse.ArgumentParser):
    yield "ndmg_cloud", top
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"ndmg_cloud {name}", sub


def test_every_flag_has_help_and_one_style():
    for command, p in _parsers(parser()):
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and action.help.strip(), f"{command} {action.option_strings or action.dest}: no help"
            long = [s for s in action.option_strings if s.startswith("--")]
            if long:
                assert "_" not in long[0], f"{command} {long[0]}: the first spelling has dashes"
            for spelling in long:  # every underscore spelling is an alias of a dashed one
                assert spelling.replace("_", "-") in long, f"{command} {spelling}"
            for spelling in long:  # and every dashed multi-word flag takes the seed's underscores
                if "-" in spelling[2:]:
                    assert spelling[:2] + spelling[2:].replace("-", "_") in long, f"{command} {spelling}"


def test_help_shows_the_dashed_spellings(capsys):
    with pytest.raises(SystemExit):
        main(["participant", "--help"])
    out = capsys.readouterr().out
    assert "--participant-label PARTICIPANT_LABEL" in out and "--dry-run" in out
    assert "--space, --sp {native,native_dsn}" in out
    assert "--participant_label" in out  # only in the note that says the seed spellings work
    assert out.count("--participant_label") == 1
