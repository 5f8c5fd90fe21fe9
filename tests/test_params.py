"""Params: locations resolved, bad values refused with the value named and a fix."""

from __future__ import annotations

import pytest

from ndmg_cloud.params import PARAM_SCHEMAS, ParamError, check_conf_keys, resolve


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
        ({"bucket": "lab-data", "modif": "sub-01"}, "inside subject folder 'sub-01'"),
        ({"bucket": "lab-data", "bidsdir": "ds", "modif": "sub-02/derivatives"}, "inside subject folder 'sub-02'"),
        ({"bucket": "lab-data", "bidsdir": "ds", "output_uri": "s3://lab-data/ds/"}, "is the dataset root"),
        ({"bucket": "lab-data", "bidsdir": "ds", "output_uri": "s3://lab-data/ds/sub-1/x"}, "inside subject folder"),
        ({"bucket": "lab-data", "output_uri": "/tmp/out"}, "output_uri: '/tmp/out' is not an s3:// URI"),
        ({"bucket": "lab-data", "jobdir": "/tmp/jobs"}, "jobdir '/tmp/jobs' is a local path"),
        ({"bucket": "lab-data", "bidsdir": "ds", "jobdir": "s3://lab-data/ds/sub-01/jobs/"}, "inside subject folder 'sub-01'"),
        ({"bucket": "lab-data", "participant_label": ["01;rm"]}, "sub label '01;rm' is not a BIDS label"),
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
    from ndmg_cloud.params import RunConfig

    config = resolve({"bucket": "lab-data", "bidsdir": "ds"}, "run1")
    assert RunConfig.from_dict(config.to_dict()) == config


def test_empty_parcellation_means_the_pipeline_default():
    assert resolve({"bucket": "lab-data", "parcellation": []}, "r").options["parcellation"] == ["AAL", "Desikan"]
