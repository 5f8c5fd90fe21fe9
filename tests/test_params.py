"""Params: locations resolved, bad values refused with the value named and a fix."""

from __future__ import annotations

import json

import pytest

from ndmg_cloud.participant.params import PARAM_SCHEMAS, ParamError, check_conf_keys, resolve


def test_defaults_follow_the_seed_layout():
    config = resolve({"bucket": "lab-data", "bidsdir": "studies/ds1"}, "run1")
    assert config.input_root.uri() == "s3://lab-data/studies/ds1/"
    assert config.output_root.uri() == "s3://lab-data/studies/ds1/derivatives/ndmg/"
    assert config.jobdir == "s3://lab-data/studies/ds1/derivatives/ndmg/jobs/run1/"
    assert config.dataset == "ds1"
    assert config.pipeline == "m2g"
    assert config.options["parcellation"] == ["AAL", "Desikan"]
    assert config.options["track_type"] == "local"


def test_bucket_root_dataset_and_output_uri_elsewhere():
    config = resolve({"bucket": "openneuro.org", "output_uri": "s3://my-lab/out"}, "r")
    assert config.input_root.uri() == "s3://openneuro.org/"
    assert config.output_root.uri() == "s3://my-lab/out/"
    assert config.dataset == "openneuro.org"


@pytest.mark.parametrize(
    "params, message",
    [
        ({}, "no bucket given"),
        ({"bucket": "s3://lab-data/ds"}, "'s3://lab-data/ds' is not an S3 bucket name"),
        ({"bucket": "Lab_Data"}, "'Lab_Data' is not an S3 bucket name"),
        ({"bucket": "lab-data", "modif": ""}, "modif is empty"),
        ({"bucket": "lab-data", "modif": "sub-01"}, "modif 'sub-01' is refused: it must be a folder under derivatives/"),
        ({"bucket": "lab-data", "bidsdir": "ds", "modif": "sub-02/derivatives"}, "modif 'sub-02/derivatives' is refused"),
        ({"bucket": "lab-data", "bidsdir": "ds", "modif": "out"}, "modif 'out' is refused: it must be a folder under derivatives/"),
        ({"bucket": "lab-data", "bidsdir": "ds", "modif": "derivatives/../sub-01"}, "no '.', '..' or empty segments"),
        ({"bucket": "lab-data", "bidsdir": "ds", "modif": "derivatives//x"}, "modif 'derivatives//x' is refused"),
        (
            {"bucket": "lab-data", "bidsdir": "ds", "output_uri": "s3://lab-data/ds/./sub-01/x"},
            "output_uri 's3://lab-data/ds/./sub-01/x' is refused",
        ),
        (
            {"bucket": "lab-data", "bidsdir": "ds", "output_uri": "s3://lab-data/ds/code/out"},
            "inside the input dataset s3://lab-data/ds/ but not under its derivatives/",
        ),
        (
            {"bucket": "lab-data", "bidsdir": "ds", "jobdir": "s3://lab-data/ds/sourcedata/jobs"},
            "jobdir 's3://lab-data/ds/sourcedata/jobs' lies inside the input dataset",
        ),
        (
            {"bucket": "lab-data", "bidsdir": "ds", "jobdir": "s3://lab-data/ds//sub-01/jobs"},
            "jobdir 's3://lab-data/ds//sub-01/jobs' is refused",
        ),
        (
            {"bucket": "lab-data", "jobdir": "s3://bkt/{{ conn.aws_default.password }}/"},
            "jobdir 's3://bkt/{{ conn.aws_default.password }}/' is refused",
        ),
        ({"bucket": "lab-data", "bidsdir": "ds{% raw %}"}, "bidsdir 'ds{% raw %}' is refused"),
        ({"bucket": "lab-data", "dataset": "{{ var.value.x }}"}, "dataset '{{ var.value.x }}' is refused"),
        (
            {"bucket": "lab-data", "participant_label": ["1" * 65]},
            "participant_label '" + "1" * 65 + "' is refused: it must be a BIDS label: letters and digits only, at most 64",
        ),
        ({"bucket": "lab-data", "participant_label": ["01A", "sub-01a"]}, "participant_label '01A' and '01a' differ only in case"),
        ({"bucket": "lab-data", "bidsdir": "ds", "output_uri": "s3://lab-data/ds/"}, "is the dataset root"),
        ({"bucket": "lab-data", "bidsdir": "ds", "output_uri": "s3://lab-data/ds/sub-1/x"}, "inside subject folder"),
        ({"bucket": "lab-data", "output_uri": "/tmp/out"}, "output_uri '/tmp/out' is refused: it must be an s3://bucket/path URI"),
        ({"bucket": "lab-data", "jobdir": "/tmp/jobs"}, "jobdir '/tmp/jobs' is a local path"),
        ({"bucket": "lab-data", "bidsdir": "ds", "jobdir": "s3://lab-data/ds/sub-01/jobs/"}, "inside subject folder 'sub-01'"),
        ({"bucket": "lab-data", "participant_label": ["01;rm"]}, "participant_label '01;rm' is refused: it must be a BIDS label"),
        ({"bucket": "lab-data", "pipeline": "fmriprep"}, "pipeline 'fmriprep' is unknown"),
        ({"bucket": "lab-data", "pipeline": "lite", "voxelsize": "2mm"}, "option voxelsize='2mm' is not supported by pipeline 'lite'"),
        ({"bucket": "lab-data", "parcellation": ["Desikan", "Nope"]}, "'Nope' is not an atlas of m2g's image"),
        ({"bucket": "lab-data", "seeds": 0}, "must be a whole number above 0"),
        ({"bucket": "lab-data", "pipeline": "ndmg", "parcellation": ["aal", "desikan"]}, "takes 1 atlas name"),
    ],
)
def test_bad_params_are_refused_with_the_value(params, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve(params, "run1")


def test_output_in_another_folder_of_the_bucket_is_fine():
    config = resolve({"bucket": "lab-data", "bidsdir": "ds", "output_uri": "s3://lab-data/results/ds"}, "r")
    assert config.output_root.prefix == "results/ds/"


def test_unknown_conf_key_is_refused_with_a_suggestion():
    with pytest.raises(ParamError, match="unknown parameter 'parcelation'; did you mean 'parcellation'"):
        check_conf_keys({"bucket": "b", "parcelation": ["AAL"]})
    check_conf_keys({"bucket": "b", "parcellation": ["AAL"]})


def test_every_param_has_a_title_and_description_for_the_form():
    for name, schema in PARAM_SCHEMAS.items():
        assert schema.get("title") and schema.get("description"), name


def test_config_round_trips_through_xcom_form():
    from ndmg_cloud.participant.params import RunConfig

    config = resolve({"bucket": "lab-data", "bidsdir": "ds"}, "run1")
    assert RunConfig.from_dict(config.to_dict()) == config


def test_empty_parcellation_means_the_pipeline_default():
    assert resolve({"bucket": "lab-data", "parcellation": []}, "r").options["parcellation"] == ["AAL", "Desikan"]


def test_a_label_given_as_one_string_is_one_label():
    config = resolve({"bucket": "lab-data", "participant_label": "01", "session_label": "sub-x"[4:]}, "r")
    assert (config.participants, config.sessions) == (["01"], ["x"])


@pytest.mark.parametrize("run_id", ["..", ".", "a/../b"])
def test_a_run_id_that_is_a_path_segment_is_refused(run_id):
    """Airflow's run-id pattern allows '..': it would put dot segments back into the run's keys."""
    with pytest.raises(ParamError, match=r"would put a path segment into the run's keys"):
        resolve({"bucket": "lab-data"}, run_id)


def test_the_trigger_middleware_leaves_a_pipeline_that_is_no_name_to_airflows_schema():
    """A list or an object as ``pipeline`` is not for the options check to judge (it would
    otherwise crash the api-server's middleware): Airflow's enum refuses it, naming the param."""
    from ndmg_cloud.orchestration.webapp import trigger_conf_problem
    from ndmg_cloud.participant.params import check_options

    for pipeline in (["m2g"], {"name": "m2g"}, 3):
        assert check_options({"bucket": "lab-data", "pipeline": pipeline}) is None
        assert trigger_conf_problem(json.dumps({"conf": {"bucket": "lab-data", "pipeline": pipeline}}).encode()) is None
    assert "'DS72784' has labels up to 72,778" in (trigger_conf_problem(b'{"conf": {"parcellation": ["DS72784"]}}') or "")
