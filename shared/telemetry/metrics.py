"""A small Prometheus registry: counters, gauges and histograms with labels, rendered in the text
exposition format (version 0.0.4), plus families computed when ``/metrics`` is scraped.

Kept tiny on purpose: the data path records with one dictionary lookup and an addition, and the
text is built only when ``/metrics`` is scraped. Every process (control plane, sidecar, gateway)
renders through this module, so the output is the same everywhere; names are checked against the
scheme in docs/metrics.md when a metric is registered or rendered (``meshgate_`` prefix, snake case,
``_total`` exactly on counters, base units).
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

LabelValues = tuple[str, ...]
Kind = Literal["counter", "gauge", "histogram"]

#: What ``/metrics`` answers with.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Request-duration buckets in seconds (Envoy/Linkerd-like resolution around a millisecond).
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_NAME = re.compile(r"^meshgate_[a-z][a-z0-9]*(_[a-z0-9]+)*$")
_LABEL = re.compile(r"^[a-z][a-z0-9_]*$")
_RESERVED_SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created", "_info")
_NOT_BASE_UNITS: tuple[str, ...] = ("milliseconds", "microseconds", "nanoseconds", "minutes", "hours", "days")
_NOT_BASE_UNITS += ("millis", "kilobytes", "megabytes", "gigabytes", "bits", "percent")


def check_name(name: str, kind: Kind) -> None:
    """ValueError unless ``name`` follows the naming scheme for a metric of ``kind``."""
    if not _NAME.match(name):
        raise ValueError(f"metric {name!r}: names are meshgate_ then snake_case (a-z, 0-9)")
    if any(f"_{unit}" in name for unit in _NOT_BASE_UNITS):
        raise ValueError(f"metric {name!r}: use base units (seconds, bytes, ratios)")
    is_total = name.endswith("_total")
    if kind == "counter" and not is_total:
        raise ValueError(f"counter {name!r} must end with _total")
    if kind != "counter" and is_total:
        raise ValueError(f"{kind} {name!r} must not end with _total")
    if kind == "histogram" and name.endswith(_RESERVED_SUFFIXES):
        raise ValueError(f"histogram {name!r} must not end with a reserved suffix")
    if kind == "gauge" and name.endswith(_RESERVED_SUFFIXES[:3]):
        raise ValueError(f"gauge {name!r} must not end with _bucket, _sum or _count")


def check_labels(names: Sequence[str]) -> None:
    """ValueError unless ``names`` are distinct snake_case label names other than ``le``."""
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate label names in {names!r}")
    for name in names:
        if not _LABEL.match(name) or name == "le":
            raise ValueError(f"label {name!r}: snake_case, not 'le'")


def escape_label(value: str) -> str:
    """A label value as the text format quotes it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value: integers without a fraction (exact up to 2**53), ``+Inf``, ``NaN``, else repr."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _labels(names: Sequence[str], values: LabelValues, extra: str = "") -> str:
    parts = [f'{n}="{escape_label(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _header(name: str, kind: Kind, help_text: str) -> list[str]:
    return [f"# HELP {name} {_escape_help(help_text)}", f"# TYPE {name} {kind}"]


@dataclass
class Family:
    """A counter or gauge family whose samples are computed at scrape time (from existing state)."""

    name: str
    kind: Literal["counter", "gauge"]
    help: str
    label_names: tuple[str, ...] = ()
    samples: list[tuple[LabelValues, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_name(self.name, self.kind)
        check_labels(self.label_names)

    def add(self, value: float, *labels: str) -> Family:
        """One more sample (``labels`` in the order of :attr:`label_names`); returns self."""
        if len(labels) != len(self.label_names):
            raise ValueError(f"{self.name}: {len(self.label_names)} label values expected")
        self.samples.append((labels, value))
        return self

    def render(self) -> list[str]:
        """Prometheus text lines."""
        out = _header(self.name, self.kind, self.help)
        for labels, value in sorted(self.samples):
            out.append(f"{self.name}{_labels(self.label_names, labels)} {format_value(value)}")
        return out


class _Metric:
    kind: Kind

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        check_name(name, self.kind)
        check_labels(labels)
        self.name, self.help, self.label_names = name, help_text, tuple(labels)


class Counter(_Metric):
    """A monotonically growing number per label set."""

    kind: Kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self.values: dict[LabelValues, float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        """Add ``amount`` (not negative) to the series ``labels``."""
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def render(self) -> list[str]:
        """Prometheus text lines."""
        out = _header(self.name, self.kind, self.help)
        for labels, value in sorted(self.values.items()):
            out.append(f"{self.name}{_labels(self.label_names, labels)} {format_value(value)}")
        return out


class Gauge(Counter):
    """A number per label set that goes up and down."""

    kind: Kind = "gauge"

    def set(self, value: float, *labels: str) -> None:
        """Set the series ``labels`` to ``value``."""
        self.values[labels] = value


class Histogram(_Metric):
    """Observations in cumulative buckets per label set."""

    kind: Kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DURATION_BUCKETS,
    ) -> None:
        super().__init__(name, help_text, labels)
        if list(buckets) != sorted(set(buckets)) or not buckets or math.isinf(buckets[-1]):
            raise ValueError(f"{name}: buckets must be finite, distinct and increasing (+Inf is added)")
        self.buckets = tuple(float(b) for b in buckets)
        self.series: dict[LabelValues, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, *labels: str) -> None:
        """Record one observation."""
        series = self.series.get(labels)
        if series is None:
            series = ([0] * (len(self.buckets) + 1), [0.0, 0.0])
            self.series[labels] = series
        counts, sums = series
        counts[bisect.bisect_left(self.buckets, value)] += 1
        sums[0] += value
        sums[1] += 1

    def render(self) -> list[str]:
        """Prometheus text lines (cumulative ``_bucket`` with ``le`` up to ``+Inf``, ``_sum``, ``_count``)."""
        out = _header(self.name, self.kind, self.help)
        for labels, (counts, (total, count)) in sorted(self.series.items()):
            running = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                running += n
                tag = f'le="{format_value(bound)}"'
                out.append(f"{self.name}_bucket{_labels(self.label_names, labels, tag)} {running}")
            out.append(f"{self.name}_sum{_labels(self.label_names, labels)} {format_value(total)}")
            out.append(f"{self.name}_count{_labels(self.label_names, labels)} {format_value(count)}")
        return out


Collector = Callable[[], Iterable[Family]]
"""Called at every scrape; returns families computed from the process's state."""


class Registry:
    """The metrics of one process: recorded ones and collected (scrape-time) ones."""

    def __init__(self) -> None:
        self.metrics: list[Counter | Histogram] = []
        self.collectors: list[Collector] = []

    def _add(self, metric: Counter | Histogram) -> None:
        if any(m.name == metric.name for m in self.metrics):
            raise ValueError(f"metric {metric.name!r} is already registered")
        self.metrics.append(metric)

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Counter:
        """A new counter registered here."""
        metric = Counter(name, help_text, labels)
        self._add(metric)
        return metric

    def gauge(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Gauge:
        """A new gauge registered here."""
        metric = Gauge(name, help_text, labels)
        self._add(metric)
        return metric

    def histogram(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DURATION_BUCKETS,
    ) -> Histogram:
        """A new histogram registered here."""
        metric = Histogram(name, help_text, labels, buckets)
        self._add(metric)
        return metric

    def collect(self, collector: Collector) -> None:
        """Render ``collector``'s families at every scrape, after the recorded metrics."""
        self.collectors.append(collector)

    def render(self) -> str:
        """The whole registry in the Prometheus text format; ValueError when a collector returns a
        family whose name is already taken (the text format allows each family once)."""
        lines: list[str] = []
        seen = {metric.name for metric in self.metrics}
        for metric in self.metrics:
            lines.extend(metric.render())
        for collector in self.collectors:
            for family in collector():
                if family.name in seen:
                    raise ValueError(f"metric {family.name!r} rendered twice")
                seen.add(family.name)
                lines.extend(family.render())
        return "\n".join(lines) + "\n"
