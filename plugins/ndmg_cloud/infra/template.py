"""The CloudFormation template ``ndmg-batch.yaml``, package data of ``ndmg_cloud.infra``."""

from __future__ import annotations

from importlib import resources

TEMPLATE_NAME = "ndmg-batch.yaml"  # beside this module: a source tree and a wheel alike


def template_body() -> str:
    """The template's text: the same file from a source tree, an editable install, a wheel
    or the Airflow image."""
    return resources.files(__package__).joinpath(TEMPLATE_NAME).read_text()
