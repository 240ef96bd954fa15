"""deploy/grafana/paramsched.json: a Grafana dashboard for the server's Prometheus metrics.
Every query names only metrics the server exports (server/observability.py), with the
suffixes Prometheus gives them, and every panel is on the grid without overlapping."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from paramsched.server.observability import Metrics

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "paramsched.json"


def exported_series() -> set[str]:
    metrics = Metrics()
    metrics.rpcs.labels("GetJob", "OK").inc()
    metrics.rpc_latency.labels("GetJob").observe(0.01)
    metrics.store_latency.labels("get").observe(0.01)
    metrics.plan_refills.inc()
    metrics.plan_iterations.inc()
    metrics.fenced_reports.inc()
    text = generate_latest(metrics.registry).decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def test_every_query_names_an_exported_metric_and_every_metric_is_shown():
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_series()
    used: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"\bparamsched_[a-z_]+", target["expr"]))
            assert names, target["expr"]
            assert names <= exported, (panel["title"], names - exported)
            assert 'instance=~"$instance"' in target["expr"]
            used |= names
    families = {"paramsched_rpcs_total", "paramsched_rpc_duration_seconds_bucket",
                "paramsched_store_duration_seconds_bucket", "paramsched_active_jobs",
                "paramsched_plan_refills_total", "paramsched_plan_iterations_total",
                "paramsched_fenced_reports_total"}
    assert families <= used


def test_panels_have_unique_ids_and_do_not_overlap():
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, p["title"]
        cells |= mine
