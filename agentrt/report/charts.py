"""The report's charts, drawn as PNG bytes on matplotlib's Agg canvas.

Each chart is its own ``Figure`` with a ``FigureCanvasAgg``; pyplot, its global figure
registry and GUI backends are never involved, so drawing is thread-safe and leaves nothing
behind. The x axis counts decisions in time order, so each bucket gets the same width however
bursty the traffic; the times of version changes and knowledge windows are placed on it
through the buckets' time spans.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from agentrt.report.data import OTHER, AgentData, Bucket, Marker, as_float

__all__ = ["CHARTS", "CHART_DPI", "CHART_SIZE", "draw"]

CHARTS = ("reward", "actions", "exploration")
CHART_SIZE = (9.0, 3.6)  # inches; at CHART_DPI a PNG is 900 x 360 pixels
CHART_DPI = 100

_SHOWN_ACTIONS = 8  # drawn in the action chart; the others are drawn together
_LABELLED_MARKERS = 15  # more version changes than this are drawn without labels
_HEALTH = (
    ("normalized entropy", "normalized_entropy"),
    ("coverage", "coverage"),
    ("min propensity", "min_propensity"),
)


def draw(data: AgentData) -> list[bytes]:
    """The agent's charts in :data:`CHARTS` order, as PNG bytes; none without decisions."""
    if not data.buckets:
        return []
    timeline = _Timeline(data.buckets)
    return [
        _reward_chart(data, timeline),
        _actions_chart(data, timeline),
        _exploration_chart(data, timeline),
    ]


class _Timeline:
    """Where times fall along the decisions (0 to N, oldest first)."""

    def __init__(self, buckets: Sequence[Bucket]) -> None:
        times: list[float] = []
        positions: list[float] = []
        self.middles: list[float] = []
        done = 0
        for bucket in buckets:
            times += [bucket.start.timestamp(), bucket.end.timestamp()]
            positions += [done, done + bucket.decisions]
            self.middles.append(done + bucket.decisions / 2)
            done += bucket.decisions
        self.first, self.last = buckets[0].start, buckets[-1].end
        self.total = float(done)
        self._times = np.asarray(times, dtype=np.float64)
        self._positions = np.asarray(positions, dtype=np.float64)

    def position(self, at: datetime | None) -> float | None:
        """The position of ``at``; None outside the decisions' time range."""
        if at is None or not self.first <= at <= self.last:
            return None
        return float(np.interp(at.timestamp(), self._times, self._positions))

    def spread(self, values: list[float]) -> tuple[list[float], list[float]]:
        """Per-bucket values at the buckets' middles, held flat to both ends of the axis."""
        return [0.0, *self.middles, self.total], [values[0], *values, values[-1]]


def _figure(title: str) -> tuple[Figure, Axes]:
    figure = Figure(figsize=CHART_SIZE, dpi=CHART_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_title(_plain(title), fontsize=10, loc="left")
    axes.grid(visible=True, alpha=0.3)
    axes.tick_params(labelsize=8)
    return figure, axes


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    # No "Software" text chunk: the PNG names no URL, and the same data gives the same bytes.
    figure.savefig(buffer, format="png", dpi=CHART_DPI, metadata={"Software": None})
    return buffer.getvalue()


def _plain(text: str, limit: int = 80) -> str:
    """Text that matplotlib shows as it is: a ``$`` would start mathtext."""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def _when(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _decision_axis(
    axes: Axes, timeline: _Timeline, markers: Sequence[Marker], *, labels: bool
) -> None:
    """The decision axis, with the time range, and the version changes as dotted lines."""
    axes.set_xlim(0.0, timeline.total)
    axes.set_xlabel(
        f"decisions, oldest first ({_when(timeline.first)} to {_when(timeline.last)} UTC)",
        fontsize=8,
    )
    shown = [(x, marker) for marker in markers if (x := timeline.position(marker.at)) is not None]
    labels = labels and len(shown) <= _LABELLED_MARKERS
    for x, marker in shown:
        color = "tab:red" if marker.kind == "rollback" else "black"
        axes.axvline(x, color=color, linestyle=":", linewidth=1.2, zorder=3)
        if labels:
            axes.text(
                x,
                0.97,
                _plain(marker.label, 30),
                transform=axes.get_xaxis_transform(),
                rotation=90,
                va="top",
                ha="right",
                fontsize=7,
                color=color,
            )


def _legend(axes: Axes) -> None:
    """The legend right of the plot, where it hides nothing (every chart the same width)."""
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)


def _reward_chart(data: AgentData, timeline: _Timeline) -> bytes:
    figure, axes = _figure(f"{data.agent_id}: mean reward of live decisions")
    _decision_axis(axes, timeline, data.markers, labels=True)
    points = [
        (x, bucket.reward_sum / bucket.rewarded)
        for x, bucket in zip(timeline.middles, data.buckets, strict=True)
        if bucket.rewarded
    ]
    if not points:
        axes.text(0.5, 0.5, "no rewarded live decisions", transform=axes.transAxes, ha="center")
        return _png(figure)
    size = math.ceil(data.decisions / len(data.buckets))
    xs, ys = zip(*points, strict=True)
    axes.plot(xs, ys, marker=".", linewidth=1.5, label=f"per {size} decisions")
    baseline = data.live.get(None)
    if baseline is not None and baseline.mean is not None:
        axes.axhline(
            baseline.mean,
            color="tab:gray",
            linestyle="--",
            linewidth=1.2,
            label=f"baseline {baseline.mean:.3g} (n={baseline.rewarded})",
        )
    # Overlapping windows report one shift at nearby decisions: one triangle per bucket.
    width = timeline.total / len(data.buckets)
    found = {
        x // width for change in data.changes if (x := timeline.position(change.at)) is not None
    }
    changes = [(slot + 0.5) * width for slot in sorted(found)]
    if changes:
        axes.plot(
            changes,
            [0.03] * len(changes),
            linestyle="none",
            marker="^",
            color="tab:orange",
            transform=axes.get_xaxis_transform(),
            label="reward change detected",
        )
    axes.set_ylabel("reward", fontsize=8)
    _legend(axes)
    return _png(figure)


def _actions_chart(data: AgentData, timeline: _Timeline) -> bytes:
    figure, axes = _figure(f"{data.agent_id}: share of each action")
    series = {
        action: [bucket.counts.get(action, 0) / bucket.decisions for bucket in data.buckets]
        for action in data.actions[:_SHOWN_ACTIONS]
    }
    rest = [max(0.0, 1.0 - sum(shares)) for shares in zip(*series.values(), strict=True)]
    if any(share > 1e-9 for share in rest):
        series[OTHER] = rest
    xs = timeline.spread(rest)[0]
    ys = [timeline.spread(shares)[1] for shares in series.values()]
    axes.stackplot(xs, *ys, labels=[_plain(action, 30) for action in series])
    _decision_axis(axes, timeline, data.markers, labels=False)
    axes.set_ylim(0.0, 1.0)
    axes.set_ylabel("share of decisions", fontsize=8)
    _legend(axes)
    return _png(figure)


def _exploration_chart(data: AgentData, timeline: _Timeline) -> bytes:
    windows = [
        (x, item.payload)
        for item in data.health
        if (x := timeline.position(item.window_end or item.window_start)) is not None
    ]
    if len(windows) >= 2:
        title = f"exploration health (knowledge, {len(windows)} windows at their ends)"
        xs = [x for x, _ in windows]
        series = {label: [_nan(p.get(key)) for _, p in windows] for label, key in _HEALTH}
    else:
        title = "exploration health (computed per bucket of decisions)"
        k = data.action_count
        values = {
            "normalized entropy": [_entropy(bucket, k) for bucket in data.buckets],
            "coverage": [bucket.chosen / max(k, 1) for bucket in data.buckets],
            "min propensity": [_nan(bucket.min_propensity) for bucket in data.buckets],
        }
        xs = timeline.spread(values["coverage"])[0]
        series = {label: timeline.spread(v)[1] for label, v in values.items()}
    figure, axes = _figure(f"{data.agent_id}: {title}")
    for label, ys in series.items():
        axes.plot(xs, ys, marker=".", linewidth=1.5, label=label)
    _decision_axis(axes, timeline, data.markers, labels=False)
    axes.set_ylim(0.0, 1.05)
    _legend(axes)
    return _png(figure)


def _entropy(bucket: Bucket, k: int) -> float:
    """Entropy of the chosen actions over log2(k); NaN for fewer than two actions.

    Actions beyond the most chosen ones are counted together, which can only lower it.
    """
    if k < 2 or not bucket.decisions:
        return math.nan
    shares = [n / bucket.decisions for n in bucket.counts.values() if n]
    return -math.fsum(p * math.log2(p) for p in shares) / math.log2(k) + 0.0


def _nan(value: object) -> float:
    number = as_float(value)
    return math.nan if number is None else number
