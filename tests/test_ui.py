"""The trigger form as a person uses it: headless Chromium on a live ``airflow standalone``,
signing in, filling the form, clicking Trigger; and the trigger-time refusals behind it.
(The screenshots are ``make screenshots``, not a test.)"""

from __future__ import annotations

from urllib.parse import quote, unquote

import pytest
import requests

from ndmg_cloud.orchestration.links import airflow_report_url

from conftest import wait_for
from datasets import put_phantoms

DAG = "ndmg_participant"


@pytest.fixture
def api(live_airflow):
    session = requests.Session()
    token = session.post(
        f"{live_airflow['url']}/auth/token", json={"username": "admin", "password": live_airflow["password"]}, timeout=10
    ).json()["access_token"]
    session.headers["Authorization"] = f"Bearer {token}"
    return session


@pytest.fixture
def phantom_bucket(s3, tmp_path):
    put_phantoms(s3, tmp_path, "ui-data", "study")
    return "ui-data"


def signed_in_form(browser, live_airflow):
    """A page on the DAG with the trigger dialog open, signed in through the login form."""
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    page.goto(f"{live_airflow['url']}/dags/{DAG}", wait_until="networkidle")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(live_airflow["password"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**/dags/{DAG}")
    page.wait_for_load_state("networkidle")
    page.get_by_role("button", name="Trigger").first.click()
    return page, page.get_by_role("dialog")


def choose(page, dialog, section: str, param: str, label: str) -> None:
    dialog.get_by_role("button", name=section).click()
    page.locator(f"#element_{param}").click()
    page.get_by_role("option", name=label, exact=True).click()


def runs(api, live_airflow) -> list[dict]:
    return api.get(f"{live_airflow['url']}/api/v2/dags/{DAG}/dagRuns", timeout=10).json()["dag_runs"]


def trigger_a_lite_run_from_the_form(page, dialog, bucket: str, bidsdir: str) -> str:
    """Fill the three fields a person fills for a lite run on this machine, click Trigger:
    the new run's id, from the run page the UI opens."""
    # the optional fields are optional: nothing in the form demands bidsdir, jobdir, dataset...
    dialog.get_by_role("button", name="Pipeline").click()
    assert page.locator("#element_space").inner_text() == "pipeline default"  # not the word "null"
    dialog.get_by_role("button", name="Dataset").click()
    page.locator("#element_bucket").fill(bucket)
    page.locator("#element_bidsdir").fill(bidsdir)
    choose(page, dialog, "Pipeline", "pipeline", "lite (small demo pipeline)")
    choose(page, dialog, "Run control", "backend", "local (on the Airflow worker)")
    trigger = dialog.get_by_role("button", name="Trigger")
    assert trigger.is_enabled()
    trigger.click()
    page.wait_for_url(f"**/dags/{DAG}/runs/**", timeout=30_000)  # the UI opens the new run
    return unquote(page.url.rsplit("/runs/", 1)[1].split("/")[0])


def open_the_report_from_the_ui(page, url: str, run_id: str) -> str:
    """The report as a person reaches it: the last log line of verify_and_report is a link to
    it, served by Airflow. The text of the page it opens."""
    page.goto(f"{url}/dags/{DAG}/runs/{quote(run_id, safe='')}/tasks/verify_and_report", wait_until="networkidle")
    link = page.get_by_role("link", name=airflow_report_url(url, run_id))
    with page.context.expect_page() as opened:
        link.click()
    report = opened.value
    report.wait_for_load_state()
    return report.inner_text("body")


def test_a_person_fills_three_fields_clicks_trigger_and_the_run_succeeds(browser, live_airflow, api, phantom_bucket):
    page, dialog = signed_in_form(browser, live_airflow)
    run_id = trigger_a_lite_run_from_the_form(page, dialog, phantom_bucket, "study")

    run_url = f"{live_airflow['url']}/api/v2/dags/{DAG}/dagRuns/{quote(run_id, safe='')}"
    assert wait_for(lambda: api.get(run_url, timeout=10).json()["state"] in ("success", "failed"), timeout=300)
    run = api.get(run_url, timeout=10).json()
    assert run["state"] == "success", run
    assert run["conf"]["bucket"] == phantom_bucket and run["conf"]["backend"] == "local"
    assert run["conf"]["bidsdir"] == "study" and run["conf"]["jobdir"] is None

    text = open_the_report_from_the_ui(page, live_airflow["url"], run_id)
    assert "sub-01_ses-1" in text and "sub-02" in text and "succeeded" in text
    page.close()


def test_a_bad_label_in_the_form_is_refused_with_the_param_named(browser, live_airflow, api, phantom_bucket):
    before = len(runs(api, live_airflow))
    page, dialog = signed_in_form(browser, live_airflow)
    dialog.get_by_role("button", name="Dataset").click()
    page.locator("#element_bucket").fill(phantom_bucket)
    page.locator("#element_participant_label").fill("01;rm")
    dialog.get_by_role("button", name="Trigger").click()
    error = dialog.get_by_text("Invalid input for param participant_label")
    error.wait_for(timeout=15_000)
    assert "'01;rm'" in dialog.inner_text()
    assert len(runs(api, live_airflow)) == before  # no run was created
    page.close()


def test_an_atlas_m2g_cannot_use_is_refused_in_the_form_with_the_reason(browser, live_airflow, api, phantom_bucket):
    before = len(runs(api, live_airflow))
    page, dialog = signed_in_form(browser, live_airflow)
    dialog.get_by_role("button", name="Dataset").click()
    page.locator("#element_bucket").fill(phantom_bucket)
    dialog.get_by_role("button", name="Pipeline").click()
    page.locator("#element_parcellation").fill("DS72784")
    dialog.get_by_role("button", name="Trigger").click()
    dialog.get_by_text("has labels up to 72,778").wait_for(timeout=15_000)
    assert "its graph.py stores labels as 16-bit integers" in dialog.inner_text()
    assert len(runs(api, live_airflow)) == before  # no run was created
    page.close()


@pytest.mark.parametrize(
    "conf, named",
    [
        ({"bucket": "s3://lab-data"}, "param bucket"),
        ({"bucket": "lab-data", "participant_label": ["01;rm"]}, "param participant_label"),
        ({"bucket": "lab-data", "session_label": ["1 2"]}, "param session_label"),
        ({"bucket": "lab-data", "modif": "sub-01"}, "param modif"),
        ({"bucket": "lab-data", "modif": "derivatives/../.."}, "param modif"),
        ({"bucket": "lab-data", "bidsdir": "study/../other"}, "param bidsdir"),
        ({"bucket": "lab-data", "output_uri": "/tmp/out"}, "param output_uri"),
        ({"bucket": "lab-data", "jobdir": "s3://lab-data/{{ conn.aws_default.password }}/"}, "param jobdir"),
        ({"bucket": "lab-data", "dataset": "{% raw %}"}, "param dataset"),
        ({"bucket": "lab-data", "parcelation": ["AAL"]}, "unknown parameter 'parcelation'; did you mean 'parcellation'"),
        ({"bucket": "lab-data", "parcellation": ["AAL", "Nope"]}, "'Nope' is not an atlas of m2g's image"),
        ({"bucket": "lab-data", "parcellation": ["DS72784"]}, "'DS72784' has labels up to 72,778, and m2g keeps labels only up to 32,767"),
        (
            {"bucket": "lab-data", "parcellation": ["AAL"], "voxelsize": "3mm"},
            "option voxelsize='3mm' for pipeline 'm2g' must be one of 1mm, 2mm, 4mm",
        ),
    ],
)
def test_bad_params_are_refused_at_trigger_time(live_airflow, api, conf, named):
    before = len(runs(api, live_airflow))
    answer = api.post(f"{live_airflow['url']}/api/v2/dags/{DAG}/dagRuns", json={"logical_date": None, "conf": conf}, timeout=10)
    assert answer.status_code == 400, answer.text
    assert named in answer.json()["detail"]
    assert len(runs(api, live_airflow)) == before


def test_the_report_route_needs_a_signed_in_user(live_airflow):
    answer = requests.get(airflow_report_url(live_airflow["url"], "any-run"), timeout=10)
    assert answer.status_code == 401
