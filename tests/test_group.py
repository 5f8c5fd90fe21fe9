"""The group level: graph statistics checked against networkx and by hand, discriminability
on the phantoms (and its negative control), and the outputs a lab reads."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC

import networkx as nx
import numpy as np
import pytest

from ndmg_cloud.demo import synthetic
from ndmg_cloud.group import compare as group
from ndmg_cloud.group.discrim import discriminability, why_not
from ndmg_cloud.group.graphstats import adjacency, graph_stats
from ndmg_cloud.participant.verify import ScanResult
from ndmg_cloud.report.figures import parse_connectome
from ndmg_cloud.report.runreport import RunReport
from ndmg_cloud.scan import lite

BUCKET = "lab-group"
OUTPUT = f"s3://{BUCKET}/ds/derivatives/ndmg/"
PARC = "grid3"


# ------------------------------------------------------------------ graph statistics
def test_statistics_of_a_known_small_graph():
    # a triangle 1-2-3 with a tail 3-4, and node 5 that no streamline reached
    text = b"1 2 2.0\n1 3 1.0\n2 3 4.0\n3 4 3.0\n"
    matrix = adjacency(parse_connectome(text, first_node=1), nodes=5)
    stats = graph_stats(matrix)
    assert (stats.nodes, stats.edges) == (5, 4)
    assert stats.density == round(4 / 10, 4)  # the unreached region counts
    assert stats.total_weight == 10
    assert (stats.degree.mean, stats.degree.max, stats.degree.min) == (1.6, 3, 0)
    assert (stats.strength.max, stats.strength.mean) == (8, 4.0)  # node 3: 1 + 4 + 3
    # clustering: nodes 1 and 2 are 1, node 3 has 1 triangle of 3 pairs, nodes 4 and 5 are 0
    assert stats.clustering == round((1 + 1 + 1 / 3) / 5, 4)
    # efficiency: the mean of 1/distance over the 10 pairs (unreachable pairs count 0)
    pairs = {(1, 2): 1, (1, 3): 1, (2, 3): 1, (3, 4): 1, (1, 4): 2, (2, 4): 2}
    assert stats.global_efficiency == round(sum(1 / d for d in pairs.values()) / 10, 4)


def test_statistics_match_networkx_on_a_random_weighted_graph():
    rng = np.random.default_rng(3)
    g = nx.gnp_random_graph(30, 0.2, seed=3)
    for u, v in g.edges:
        g[u][v]["weight"] = float(rng.integers(1, 50))
    g = nx.relabel_nodes(g, {k: k + 1 for k in g.nodes})  # m2g's regions are 1..n
    text = "".join(f"{u} {v} {d['weight']}\n" for u, v, d in g.edges(data=True)).encode()
    stats = graph_stats(adjacency(parse_connectome(text, first_node=1), nodes=30))
    assert stats.edges == g.number_of_edges() and stats.density == round(nx.density(g), 4)
    assert stats.clustering == round(nx.average_clustering(g), 4)
    assert stats.global_efficiency == round(nx.global_efficiency(g), 4)
    assert stats.strength.max == max(s for _, s in g.degree(weight="weight"))
    assert stats.degree.median == float(np.median([d for _, d in g.degree()]))


def test_background_edges_are_not_regions():
    matrix = adjacency(parse_connectome(b"0 1 5.0\n1 2 1.0\n", first_node=1), nodes=2)
    assert matrix.tolist() == [[0, 1], [1, 0]]


# ------------------------------------------------------------------ discriminability
def test_discriminability_says_why_not_without_repeated_sessions():
    assert "at least 2 subjects with 2 or more scans" in why_not(["01", "01", "02", "03"])
    result = discriminability(np.zeros((3, 4)), ["01", "02", "03"])
    assert result.value is None and result.p_value is None and "has 0" in result.why_not


def test_discriminability_of_separated_subjects_is_one():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, (4, 6))
    vectors = np.repeat(centres, 2, axis=0) + rng.normal(0, 0.1, (8, 6))
    result = discriminability(vectors, [s for s in "aabbccdd"], permutations=500)
    assert result.value == 1.0 and (result.subjects, result.scans) == (4, 8)
    reaching = sum(v >= 1.0 for v in result.null)  # a shuffle may pair all 8 scans right: 1 in 105
    assert result.p_value == (1 + reaching) / (1 + 500) < 0.05
    assert len(result.null) == 500 and abs(np.mean(result.null) - 0.5) < 0.1


def test_the_statistic_and_p_value_are_hyppos_on_fixed_data():
    from hyppo.discrim import DiscrimOneSample

    rng = np.random.default_rng(7)
    for spread in (0.5, 2.0, 20.0):  # subjects well apart, overlapping, indistinct
        centres = rng.normal(0, 1, (6, 5))
        vectors = np.repeat(centres, 3, axis=0) + rng.normal(0, spread, (18, 5))
        subjects = [str(k) for k in range(6) for _ in range(3)] + ["99"]
        vectors = np.vstack([vectors, rng.normal(0, 1, (1, 5))])  # a single-scan subject takes no part
        ours = discriminability(vectors, subjects, permutations=1000)
        np.random.seed(1)  # hyppo draws its shuffles from numpy's global generator (it ignores random_state)
        theirs = DiscrimOneSample().test(vectors, np.array(subjects, float), reps=1000)
        assert ours.value == round(theirs.stat, 4)
        # two estimates of one permutation p-value from 1,000 shuffles each: within 4 standard errors
        p = theirs.pvalue
        assert abs(ours.p_value - p) <= 4 * np.sqrt(2 * p * (1 - p) / 1000) + 0.002, (spread, ours.p_value, p)


# ------------------------------------------------------------------ on the phantoms
@pytest.fixture(scope="module")
def phantom_graphs(tmp_path_factory):
    """lite's grid3 connectomes of the demo's dataset: 5 subjects x 2 sessions + sub-06."""
    root = tmp_path_factory.mktemp("group")
    synthetic.make_dataset(root / "bids", subjects=5, sessions=2, sessionless=1)
    graphs = {}
    for sub in sorted((root / "bids").glob("sub-*")):
        sessions = sorted(p.name[4:] for p in sub.glob("ses-*"))
        for ses in sessions or [None]:
            if ses is None:  # lite reads sub/ses: give it the work tree the runner makes
                (root / "work" / sub.name).mkdir(parents=True)
                (root / "work" / sub.name / "ses-1").symlink_to(sub)
            lite.run(root / ("bids" if ses else "work"), root / "out", sub.name[4:], ses or "1", [PARC])
            scan_id = f"{sub.name}_ses-{ses}" if ses else sub.name
            csv_path = next((root / "out" / sub.name / f"ses-{ses or '1'}" / "connectomes_d" / PARC).glob("*.csv"))
            graphs[scan_id] = csv_path.read_bytes()
    return graphs


def row(scan_id: str, status: str = "succeeded", reason: str | None = None) -> ScanResult:
    subject, _, session = scan_id.removeprefix("sub-").partition("_ses-")
    return ScanResult(
        scan_id,
        subject,
        session or None,
        status,
        reason=reason,
        outputs=[f"connectomes_d/{PARC}/{scan_id}_dwi_{PARC}_connectome.csv"] if status == "succeeded" else [],
    )


def put_run(s3, graphs: dict[str, bytes], rows: list[ScanResult], run_id: str = "manual__1") -> str:
    s3.create_bucket(Bucket=BUCKET)
    for r in rows:
        if r.outputs and r.scan_id in graphs:
            key = f"ds/derivatives/ndmg/sub-{r.subject}/" + (f"ses-{r.session}/" if r.session else "") + r.outputs[0]
            s3.put_object(Bucket=BUCKET, Key=key, Body=graphs[r.scan_id])
    report = RunReport.from_dict(
        {  # what ndmg_participant's verify_and_report writes, in short
            "dataset": "ds",
            "run_id": run_id,
            "pipeline": "lite",
            "options": {"parcellation": [PARC]},
            "input": f"s3://{BUCKET}/ds/",
            "output": OUTPUT,
            "started_at": "",
            "scans": [r.to_dict() for r in rows],
        }
    )
    uri = f"{OUTPUT}reports/{run_id}/report.json"
    s3.put_object(Bucket=BUCKET, Key=uri.removeprefix(f"s3://{BUCKET}/"), Body=json.dumps(report.to_dict()).encode())
    derivatives = {"Name": "lite connectomes of ds", "BIDSVersion": "1.9.0", "DatasetType": "derivative"}  # as every run writes it
    s3.put_object(Bucket=BUCKET, Key=f"{OUTPUT}dataset_description.json".removeprefix(f"s3://{BUCKET}/"), Body=json.dumps(derivatives))
    return uri


def test_the_demo_dataset_discriminates_its_subjects_and_shuffled_labels_do_not(s3, phantom_graphs):
    uri = put_run(s3, phantom_graphs, [row(s) for s in phantom_graphs])
    [result] = group.run_group(s3, uri)
    d = result.discriminability
    assert (d.subjects, d.scans) == (5, 10)  # sub-06 has one scan: no part in it
    assert d.value >= 0.9 and d.p_value < 0.05, d

    # negative control: the same connectomes under shuffled subject labels
    upper = np.triu_indices(result.nodes, k=1)
    vectors = np.array([adjacency(parse_connectome(phantom_graphs[s.scan_id], 1), result.nodes)[upper] for s in result.scans])
    labels = np.array([s.subject for s in result.scans])
    rng = np.random.default_rng(2026)
    shuffled = [discriminability(vectors, list(rng.permutation(labels)), permutations=200, seed=k) for k in range(50)]
    assert abs(np.mean([s.value for s in shuffled]) - 0.5) < 0.06  # chance
    assert sum(s.p_value < 0.05 for s in shuffled) <= 5  # significant about as often as a 5 % test allows


def test_group_outputs_list_every_scan_and_say_why_one_was_left_out(s3, phantom_graphs):
    rows = [row(s) for s in phantom_graphs]
    rows[3] = row(rows[3].scan_id, "failed", "exit 1: ndmg-lite: sub-02_ses-2_dwi.nii.gz has 33 volumes but 3 b-values")
    uri = put_run(s3, phantom_graphs, rows, run_id="manual__2")
    [result] = group.run_group(s3, uri)
    prefix = "ds/derivatives/ndmg/group/grid3/"
    doc = json.loads(s3.get_object(Bucket=BUCKET, Key=prefix + "group.json")["Body"].read())
    assert doc["report"] == uri and doc["nodes"] == 27 and doc["parcellation"] == PARC
    assert [x["scan_id"] for x in doc["left_out"]] == ["sub-02_ses-2"]
    assert doc["left_out"][0]["status"] == "failed" and "33 volumes but 3 b-values" in doc["left_out"][0]["reason"]
    assert len(doc["scans"]) == 10 and doc["discriminability"]["p_value"] is not None
    table = list(csv.DictReader(io.StringIO(s3.get_object(Bucket=BUCKET, Key=prefix + "group.csv")["Body"].read().decode())))
    assert len(table) == 11 and {r["status"] for r in table} == {"used", "failed"}
    first = next(r for r in table if r["scan_id"] == "sub-01_ses-1")
    assert int(first["edges"]) == len(phantom_graphs["sub-01_ses-1"].splitlines())
    html = s3.get_object(Bucket=BUCKET, Key=prefix + "group.html")["Body"].read().decode()
    assert "sub-02_ses-2" in html and 'class="discriminability"' in html and 'class="degrees"' in html
    import re

    assert not re.search(r"""(src|href)\s*=\s*(?!["']?(data:|#))|url\(|<link|<script""", html)  # self-contained
    mean = s3.get_object(Bucket=BUCKET, Key=prefix + "mean_connectome.csv")["Body"].read()
    assert parse_connectome(mean, 1).stats()["first_node"] == 1


def test_scans_an_earlier_run_made_are_compared_too(s3, phantom_graphs):
    rows = [row(s) for s in phantom_graphs]
    for r in rows[:6]:
        r.status = "skipped_done"  # verified in this run, made by the same code in an earlier one
    uri = put_run(s3, phantom_graphs, rows, run_id="manual__5")
    [result] = group.run_group(s3, uri, permutations=10, write=False)
    assert len(result.scans) == 11 and result.left_out == []


def test_a_scan_without_one_of_the_parcellations_is_listed_for_it(s3, phantom_graphs):
    rows = [row(s) for s in phantom_graphs]
    for r in rows[1:]:
        r.outputs = r.outputs + [r.outputs[0].replace(PARC, "grid2")]  # every scan but the first made grid2
        s3.create_bucket(Bucket=BUCKET)
        key = f"ds/derivatives/ndmg/sub-{r.subject}/" + (f"ses-{r.session}/" if r.session else "") + r.outputs[1]
        s3.put_object(Bucket=BUCKET, Key=key, Body=phantom_graphs[r.scan_id])
    uri = put_run(s3, phantom_graphs, rows, run_id="manual__6")
    grid2, grid3 = group.run_group(s3, uri, permutations=10, write=False)
    assert (grid2.parcellation, len(grid2.scans), len(grid3.scans)) == ("grid2", 10, 11)
    [gone] = grid2.left_out
    assert (gone.scan_id, gone.status) == (rows[0].scan_id, "no connectome") and "lists no grid2 connectome" in gone.reason


def test_a_missing_connectome_is_listed_not_dropped(s3, phantom_graphs):
    rows = [row(s) for s in phantom_graphs]
    graphs = {k: v for k, v in phantom_graphs.items() if k != "sub-04_ses-1"}  # succeeded, then deleted
    uri = put_run(s3, graphs, rows, run_id="manual__3")
    [result] = group.run_group(s3, uri, permutations=100, write=False)
    [gone] = result.left_out
    assert (gone.scan_id, gone.status) == ("sub-04_ses-1", "missing") and "is not there now" in gone.reason


def test_without_a_report_it_says_what_to_run(s3):
    s3.create_bucket(Bucket="empty-out")
    with pytest.raises(group.GroupError, match=r"no run report under s3://empty-out/d/reports/: run ndmg_participant"):
        group.newest_report(s3, "s3://empty-out/d/")


def test_the_group_command_wants_exactly_one_source(capsys, monkeypatch):
    from ndmg_cloud.cli.main import main

    monkeypatch.setenv("NDMG_AIRFLOW_PASSWORD", "x")
    assert main(["group"]) == 2
    assert "name one source of connectomes: a participant RUN id, --report" in capsys.readouterr().err
    assert main(["group", "manual__1", "--output", "s3://b/d/"]) == 2
    assert "(given: run, output)" in capsys.readouterr().err


def test_a_dry_run_report_has_nothing_to_compare(s3):
    s3.create_bucket(Bucket=BUCKET)
    report = RunReport.from_dict(
        {
            "dataset": "ds",
            "run_id": "dry",
            "params": {"dry_run": True},
            "output": OUTPUT,
            "started_at": "",
            "scans": [row("sub-01_ses-1").to_dict()],
        }
    )
    s3.put_object(Bucket=BUCKET, Key="ds/derivatives/ndmg/reports/dry/report.json", Body=json.dumps(report.to_dict()).encode())
    with pytest.raises(group.DryRunReport, match="report of a dry run"):
        group.run_group(s3, f"{OUTPUT}reports/dry/report.json")


def test_one_listing_and_one_get_per_connectome_no_head(s3, phantom_graphs):
    uri = put_run(s3, phantom_graphs, [row(s) for s in phantom_graphs], run_id="manual__4")
    calls: dict[str, int] = {}
    s3.meta.events.register("before-call.s3", lambda model, **_: calls.__setitem__(model.name, calls.get(model.name, 0) + 1))
    group.run_group(s3, uri, permutations=10, write=False)
    assert calls == {"GetObject": 2 + len(phantom_graphs), "ListObjectsV2": 1}  # the report, the derivatives mark, each graph; one page


def test_an_asset_triggered_run_compares_the_newest_report_of_each_dataset():
    """Airflow's own accessor and event models: an event is listed under its Asset and under
    the alias it came through, and one group run may gather several datasets' events."""
    from datetime import datetime, timedelta

    from airflow.sdk.api.datamodels._generated import AssetAliasReferenceAssetEventDagRun, AssetReferenceAssetEventDagRun
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    from ndmg_cloud.orchestration.group_tasks import find_report_step

    t0 = datetime(2026, 11, 26, tzinfo=UTC)

    def event(dataset: str, run: str, minutes: int) -> AssetEventDagRunReferenceResult:
        uri = f"s3://lab/{dataset}/derivatives/ndmg/reports"
        return AssetEventDagRunReferenceResult(
            asset=AssetReferenceAssetEventDagRun(name=f"ndmg-reports/{dataset}", uri=uri, extra={}),
            extra={"run_id": run, "report": f"{uri}/{run}/report.json"},
            source_task_id="verify_and_report",
            source_dag_id="ndmg_participant",
            source_run_id=run,
            source_map_index=-1,
            source_aliases=[AssetAliasReferenceAssetEventDagRun(name="ndmg-reports")],
            timestamp=t0 + timedelta(minutes=minutes),
        )

    events = TriggeringAssetEventsAccessor.build([event("hnu1", "a", 1), event("hnu1", "b", 5), event("bnu1", "c", 3)])
    assert sorted(find_report_step({"report": "", "output": ""}, events)) == [
        "s3://lab/bnu1/derivatives/ndmg/reports/c/report.json",
        "s3://lab/hnu1/derivatives/ndmg/reports/b/report.json",
    ]
    with pytest.raises(Exception, match="no run report to compare: trigger with 'report'"):
        find_report_step({"report": "", "output": ""}, TriggeringAssetEventsAccessor.build([]))


def test_a_report_that_points_elsewhere_writes_nothing_there(s3, phantom_graphs):
    """A report.json whose content names another bucket's raw dataset as its output (copied
    there by someone, or named by an asset event a USER created): the group level refuses
    it, and writes nothing into that dataset; a parcellation named like a path is left out."""
    from ndmg_cloud.group.compare import GroupError

    uri = put_run(s3, phantom_graphs, [row(s) for s in phantom_graphs], run_id="manual__7")
    report = json.loads(s3.get_object(Bucket=BUCKET, Key=uri.removeprefix(f"s3://{BUCKET}/"))["Body"].read())
    s3.create_bucket(Bucket="raw-lab")
    s3.put_object(Bucket="raw-lab", Key="HNU1/dataset_description.json", Body=b'{"Name": "HNU1", "DatasetType": "raw"}')
    s3.put_object(Bucket="raw-lab", Key="HNU1/sub-01/dwi/sub-01_dwi.nii.gz", Body=b"raw")
    before = {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket="raw-lab")["Contents"]}

    elsewhere = {**report, "output": "s3://raw-lab/HNU1/"}  # the report stays where it is, its content points away
    s3.put_object(Bucket=BUCKET, Key="ds/derivatives/ndmg/reports/manual__8/report.json", Body=json.dumps(elsewhere))
    with pytest.raises(GroupError, match="but that run's report lives at s3://raw-lab/HNU1/reports/manual__7/report.json"):
        group.run_group(s3, f"{OUTPUT}reports/manual__8/report.json")
    # the same report put inside the raw dataset (where it claims to be): not derivatives
    s3.put_object(Bucket="raw-lab", Key="HNU1/reports/manual__7/report.json", Body=json.dumps(elsewhere))
    with pytest.raises(GroupError, match="s3://raw-lab/HNU1/ is not marked as derivatives"):
        group.run_group(s3, "s3://raw-lab/HNU1/reports/manual__7/report.json")
    with pytest.raises(GroupError, match="not at the 'output' given"):
        group.run_group(s3, uri, expected_output="s3://lab-group/other/")
    for dots in ("..", "."):  # a run id of dots (Airflow's run-id pattern allows it) puts dot segments into keys
        key = f"ds/derivatives/ndmg/reports/{dots}/report.json"
        s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps({**report, "run_id": dots}))
        with pytest.raises(GroupError, match="refusing it"):
            group.run_group(s3, f"s3://{BUCKET}/{key}", permutations=0)
    after = {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket="raw-lab")["Contents"]}
    assert {k: v for k, v in after.items() if k in before} == before
    assert not [k for k in after if "group" in k]

    hostile = {**report, "scans": [{**r, "outputs": [o.replace(PARC, "..") for o in r["outputs"]]} for r in report["scans"]]}
    s3.put_object(Bucket=BUCKET, Key=uri.removeprefix(f"s3://{BUCKET}/"), Body=json.dumps(hostile))
    with pytest.raises(GroupError, match="nothing to compare"):
        group.run_group(s3, uri, permutations=0)
    assert not [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="ds/derivatives/").get("Contents", []) if "/group/" in o["Key"]]
