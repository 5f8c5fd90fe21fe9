"""The atlas facts the catalogue records, against the pinned neuroparc files themselves, and
``ndmg_cloud atlases`` showing which atlases each pipeline can use."""

from __future__ import annotations

import importlib.util

from ndmg_cloud.cli.main import main
from ndmg_cloud.core.atlases import catalogue

from conftest import ROOT
from m2g_sources import NEUROPARC_TARBALL, require_m2g_sources, third_party


def test_the_recorded_largest_labels_are_those_of_the_pinned_neuroparc_files():
    require_m2g_sources(python=False)
    spec = importlib.util.spec_from_file_location("neuroparc_labels", ROOT / "scripts/neuroparc_labels.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    read = module.largest_labels(third_party() / NEUROPARC_TARBALL)

    names = catalogue("m2g")
    assert dict(names.largest) == read
    assert len(read) == 94  # every 2 and 4 mm label file of the catalogue
    assert {file for file in names.files if "res-1x1x1" not in file} == set(read)
    assert names.largest_label("DS72784") == 72778 and names.largest_label("DS16784") == 16782
    assert [name for name in names.names() if names.unusable(name, 32767, "") is not None] == ["DS72784"]


def test_atlases_shows_which_atlases_m2g_can_use_and_why_not(capsys):
    assert main(["atlases"]) == 0
    out = capsys.readouterr().out.splitlines()

    [ds72784] = [line for line in out if line.split()[0] == "DS72784"]
    assert ds72784.split()[1:4] == ["1mm", "2mm", "4mm"]
    assert "not for m2g: labels up to 72,778; its graph.py stores labels as 16-bit integers (up to 32,767)" in ds72784
    assert "46 usable with m2g, 1 not: DS72784" in out
    assert all("not for" not in line for line in out if line.split()[0] != "DS72784")


def test_atlases_of_a_pipeline_without_a_label_limit_are_all_usable(capsys):
    assert main(["atlases", "--pipeline", "ndmg"]) == 0
    out = capsys.readouterr().out
    assert "40 usable with ndmg\n" in out and "not for" not in out
