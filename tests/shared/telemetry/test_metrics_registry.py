"""The Prometheus registry: counters, gauges, cumulative histograms and scrape-time families in the text
format, and the naming scheme it enforces (docs/metrics.md)."""

from __future__ import annotations

import math
import shutil
import subprocess

import pytest

from shared.telemetry.common_metrics import ConfigStatus, common_families
from shared.telemetry.metrics import Family, Registry, check_name, format_value


def test_counter_and_histogram_render_in_prometheus_text() -> None:
    registry = Registry()
    requests = registry.counter("meshgate_test_requests_total", "Requests.", ["code"])
    duration = registry.histogram("meshgate_test_duration_seconds", "Duration.", ["peer"])
    requests.inc("200")
    requests.inc("200")
    requests.inc("503")
    for value in (0.0004, 0.001, 0.003, 20.0):
        duration.observe(value, 'a"b')
    text = registry.render()
    assert 'meshgate_test_requests_total{code="200"} 2' in text
    assert 'meshgate_test_requests_total{code="503"} 1' in text
    peer = 'peer="a\\"b"'
    assert f'meshgate_test_duration_seconds_bucket{{{peer},le="0.001"}} 2' in text  # cumulative, le is <=
    assert f'meshgate_test_duration_seconds_bucket{{{peer},le="10"}} 3' in text
    assert f'meshgate_test_duration_seconds_bucket{{{peer},le="+Inf"}} 4' in text
    assert f"meshgate_test_duration_seconds_sum{{{peer}}} 20.0044" in text
    assert f"meshgate_test_duration_seconds_count{{{peer}}} 4" in text
    assert "# TYPE meshgate_test_duration_seconds histogram" in text and text.endswith("\n")
    assert "# HELP meshgate_test_requests_total Requests." in text


def test_every_family_has_help_and_type_before_its_samples() -> None:
    registry = Registry()
    registry.gauge("meshgate_test_open", "Open now.").set(3)
    registry.counter("meshgate_test_unused_total", "Never incremented.", ["code"])
    registry.collect(lambda: [Family("meshgate_test_index", "gauge", "Index.").add(7)])
    lines = registry.render().splitlines()
    assert lines == [
        "# HELP meshgate_test_open Open now.",
        "# TYPE meshgate_test_open gauge",
        "meshgate_test_open 3",
        "# HELP meshgate_test_unused_total Never incremented.",
        "# TYPE meshgate_test_unused_total counter",
        "# HELP meshgate_test_index Index.",
        "# TYPE meshgate_test_index gauge",
        "meshgate_test_index 7",
    ]


def test_values_keep_their_precision() -> None:
    assert format_value(1234567) == "1234567"  # not 1.23457e+06
    assert format_value(2.0**60) == repr(2.0**60)
    assert format_value(0.25) == "0.25"
    assert format_value(math.inf) == "+Inf" and format_value(-math.inf) == "-Inf"
    assert format_value(math.nan) == "NaN"


def test_label_values_and_help_are_escaped() -> None:
    family = Family("meshgate_test_things", "gauge", "Back\\slash and\nnewline.", ("name",))
    text = "\n".join(family.add(1, 'x\\y"z\nw').render())
    assert "# HELP meshgate_test_things Back\\\\slash and\\nnewline." in text
    assert 'meshgate_test_things{name="x\\\\y\\"z\\nw"} 1' in text


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("requests_total", "counter"),  # no prefix
        ("meshgate_requests", "counter"),  # counter without _total
        ("meshgate_open_total", "gauge"),  # _total on a gauge
        ("meshgate_latency_milliseconds", "histogram"),  # not a base unit
        ("meshgate_Requests_total", "counter"),  # not snake case
        ("meshgate_duration_seconds_count", "histogram"),  # reserved suffix
        ("meshgate_things_sum", "gauge"),
    ],
)
def test_names_outside_the_scheme_are_refused(name: str, kind: str) -> None:
    with pytest.raises(ValueError):
        check_name(name, kind)  # type: ignore[arg-type]


def test_registry_refuses_duplicates_and_bad_labels() -> None:
    registry = Registry()
    registry.counter("meshgate_test_total", "One.")
    with pytest.raises(ValueError):
        registry.counter("meshgate_test_total", "Two.")
    with pytest.raises(ValueError):
        registry.histogram("meshgate_test_seconds", "Le is reserved.", ["le"])
    registry.collect(lambda: [Family("meshgate_test_total", "counter", "Again.")])
    with pytest.raises(ValueError, match="rendered twice"):
        registry.render()


def test_common_families() -> None:
    config = ConfigStatus()
    config.applied("abc123")
    config.failed()
    registry = Registry()
    registry.collect(
        lambda: common_families("sidecar", ready=True, config=config, certificates={"svid": 3600.4})
    )
    text = registry.render()
    assert 'meshgate_build_info{component="sidecar",version="' in text
    assert "meshgate_ready 1" in text
    assert 'meshgate_config_info{version="abc123"} 1' in text
    assert "meshgate_config_reloads_total 1" in text and "meshgate_config_reload_errors_total 1" in text
    assert "meshgate_config_last_reload_successful 0" in text
    assert 'meshgate_certificate_expiry_seconds{certificate="svid"} 3600' in text


def test_promtool_accepts_the_output() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus); the e2e metrics test needs it in CI")
    registry = Registry()
    registry.counter("meshgate_test_requests_total", "Requests.", ["route", "code"]).inc("a", "200")
    registry.histogram("meshgate_test_request_duration_seconds", "Durations.", ["route"]).observe(0.01, "a")
    registry.gauge("meshgate_test_open", "Open.", ["service"])  # no samples yet
    registry.collect(lambda: common_families("gateway", ready=False, config=ConfigStatus(), certificates={}))
    done = subprocess.run(
        [promtool, "check", "metrics"], input=registry.render(), capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and done.stdout == "" and done.stderr == "", done.stdout + done.stderr
