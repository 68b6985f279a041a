"""A small Prometheus registry: counters and histograms with labels, rendered in the text format.

Kept tiny on purpose: the data path records with one dictionary lookup and an addition, and the
text is built only when ``/metrics`` is scraped.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

LabelValues = tuple[str, ...]

#: Request-duration buckets in seconds (Envoy/Linkerd-like resolution around a millisecond).
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: Sequence[str], values: LabelValues, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class Counter:
    """A monotonically growing number per label set."""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self.values: dict[LabelValues, float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        """Add ``amount`` to the series ``labels``."""
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def render(self) -> list[str]:
        """Prometheus text lines."""
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for labels, value in sorted(self.values.items()):
            out.append(f"{self.name}{_labels(self.label_names, labels)} {value:g}")
        return out


class Histogram:
    """Observations in cumulative buckets per label set."""

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DURATION_BUCKETS,
    ) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self.buckets = tuple(buckets)
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
        """Prometheus text lines (cumulative ``_bucket``, ``_sum``, ``_count``)."""
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for labels, (counts, (total, count)) in sorted(self.series.items()):
            running = 0
            for bound, n in zip((*self.buckets, float("inf")), counts, strict=True):
                running += n
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                tag = 'le="' + le + '"'
                out.append(f"{self.name}_bucket{_labels(self.label_names, labels, tag)} {running}")
            out.append(f"{self.name}_sum{_labels(self.label_names, labels)} {total:g}")
            out.append(f"{self.name}_count{_labels(self.label_names, labels)} {count:g}")
        return out


class Registry:
    """The metrics of one process."""

    def __init__(self) -> None:
        self.metrics: list[Counter | Histogram] = []

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Counter:
        """A new counter registered here."""
        metric = Counter(name, help_text, labels)
        self.metrics.append(metric)
        return metric

    def histogram(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Histogram:
        """A new histogram registered here."""
        metric = Histogram(name, help_text, labels)
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        """The whole registry in the Prometheus text format."""
        lines: list[str] = []
        for metric in self.metrics:
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
