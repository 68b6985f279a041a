"""The Prometheus registry: counters and cumulative histograms in the text format."""

from __future__ import annotations

from shared.telemetry.metrics import Registry


def test_counter_and_histogram_render_in_prometheus_text() -> None:
    registry = Registry()
    requests = registry.counter("reqs_total", "Requests.", ["code"])
    duration = registry.histogram("dur_seconds", "Duration.", ["peer"])
    requests.inc("200")
    requests.inc("200")
    requests.inc("503")
    for value in (0.0004, 0.001, 0.003, 20.0):
        duration.observe(value, 'a"b')
    text = registry.render()
    assert 'reqs_total{code="200"} 2' in text and 'reqs_total{code="503"} 1' in text
    assert 'dur_seconds_bucket{peer="a\\"b",le="0.001"} 2' in text  # le is "less or equal", cumulative
    assert 'dur_seconds_bucket{peer="a\\"b",le="10"} 3' in text
    assert 'dur_seconds_bucket{peer="a\\"b",le="+Inf"} 4' in text
    assert 'dur_seconds_count{peer="a\\"b"} 4' in text
    assert "# TYPE dur_seconds histogram" in text and text.endswith("\n")
