"""The report as one HTML document that opens offline.

Charts are embedded as ``data:`` URIs and the styles are inline; there is no script and no
reference to anything outside the file. Every value from the database is escaped.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from agentrt.report.charts import CHARTS
from agentrt.report.data import AgentData, Finding, Update, as_float

__all__ = ["agent_section", "document"]

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 2.2em; border-bottom: 2px solid #ddd; }
h3 { font-size: 1.05em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; display: block; margin: .8em 0 .2em; }
.muted { color: #666; } .empty { color: #666; font-style: italic; }
.pass { color: #176d2c; } .fail { color: #b3261e; } .warn { color: #8a5a00; }
ul.checks { margin: 0; padding-left: 1.1em; }
"""

_LISTED_CHANGES = 20

_CAPTIONS = {
    "reward": "Mean reward of the live decisions in each bucket of consecutive decisions. "
    "Dashed: the baseline's live mean (decisions without a policy version). Dotted: "
    "promotions (black) and rollbacks (red). Triangles: reward changes the change detector "
    "found.",
    "actions": "Share of each action among the decisions of each bucket.",
    "exploration": "Entropy of the chosen actions (over its maximum), the share of actions "
    "chosen at least once, and the smallest propensity logged.",
}


def document(database: str, generated: datetime, since: datetime | None, sections: str) -> str:
    """The whole page around the agents' sections."""
    scope = f"decisions since {_time(since)} UTC" if since is not None else "all decisions"
    body = sections or '<p class="empty">No agents: none is configured or stored.</p>'
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>agentrt report</title><style>{_STYLE}</style></head><body>"
        "<h1>agentrt report</h1>"
        f'<p class="muted">Database {_e(database)}; {scope}; generated {_time(generated)} UTC.'
        f"</p>{body}</body></html>\n"
    )


def agent_section(data: AgentData, anchor: str, images: Sequence[bytes]) -> str:
    """One agent's section: its summary, charts, findings and history."""
    parts = [f'<section id="{_e(anchor)}"><h2>{_e(data.agent_id)}</h2>']
    if not data.decisions:
        parts.append('<p class="empty">No decisions stored for this agent in this range.</p>')
    else:
        parts.append(_summary(data))
        for chart, png in zip(CHARTS, images, strict=True):
            encoded = base64.b64encode(png).decode("ascii")
            alt = _e(f"{data.agent_id}: {chart} chart")
            parts.append(f'<img src="data:image/png;base64,{encoded}" alt="{alt}">')
            parts.append(f'<p class="muted">{_e(_CAPTIONS[chart])}</p>')
        parts.append("<h3>Exploration health</h3>" + _exploration(data))
        parts.append("<h3>Patterns</h3>" + _patterns(data))
        parts.append("<h3>Anomalies</h3>" + _anomalies(data))
    parts.append("<h3>Version history</h3>" + _versions(data))
    parts.append("<h3>Strategy updates</h3>" + _updates(data))
    parts.append("</section>")
    return "".join(parts)


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _time(value: datetime | None) -> str:
    return "–" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _number(value: object, digits: int = 4) -> str:
    """A JSON value for a table cell, numbers to ``digits`` significant digits (escaped)."""
    return _e(_format(value, digits))


def _format(value: object, digits: int = 4) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    number = as_float(value)
    if number is None:
        return "–" if value is None else str(value)
    return f"{number:.{digits}g}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int]) -> str:
    """A table of cells that are already HTML; the ``numeric`` columns align right."""
    head = "".join(f"<th>{_e(header)}</th>" for header in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{cell}</td>' if column in numeric else f"<td>{cell}</td>"
            for column, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _window(item: Finding) -> str:
    return f"window {_time(item.window_start)} to {_time(item.window_end)} UTC"


def _summary(data: AgentData) -> str:
    active = [row for row in data.versions if row.status == "active"]
    serving = f"v{active[-1].version} ({active[-1].learner})" if active else "baseline"
    learned = [live for version, live in data.live.items() if version is not None]
    rewarded = sum(live.rewarded for live in learned if live.mean is not None)
    total = math.fsum(live.mean * live.rewarded for live in learned if live.mean is not None)
    baseline = data.live.get(None)
    rows = [
        ("serving now", _e(serving)),
        ("decisions", f"{data.decisions} ({_time(data.first)} to {_time(data.last)} UTC)"),
        (
            "live reward, learned versions",
            f"{_number(total / rewarded)} (n={rewarded})" if rewarded else "–",
        ),
        (
            "live reward, baseline",
            f"{_number(baseline.mean)} (n={baseline.rewarded})"
            if baseline is not None and baseline.rewarded
            else "–",
        ),
    ]
    cells = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows)
    return f"<table>{cells}</table>"


def _exploration(data: AgentData) -> str:
    if not data.health:
        return '<p class="empty">No exploration_health knowledge yet (no learning cycle).</p>'
    latest = data.health[-1]
    payload = latest.payload
    rows = [
        (_e(name), _number(payload.get(key)))
        for name, key in (
            ("entropy (bits)", "entropy_bits"),
            ("normalized entropy", "normalized_entropy"),
            ("coverage", "coverage"),
            ("minimum propensity", "min_propensity"),
            ("share with propensity 1", "deterministic_share"),
            ("share with unknown propensity", "unknown_propensity_share"),
            ("reward staleness (seconds)", "reward_staleness_seconds"),
        )
    ]
    out = f'<p class="muted">The latest, {_e(_window(latest))}.</p>'
    out += _table(["measure", "value"], rows, {1})
    unsupported = (as_float(payload.get("deterministic_share")) or 0.0) + (
        as_float(payload.get("unknown_propensity_share")) or 0.0
    )
    if unsupported > 0.5:
        out += (
            '<p class="warn">Most decisions have a propensity of 1 or none: these logs cannot '
            "support off-policy evaluation.</p>"
        )
    return out


def _patterns(data: AgentData) -> str:
    if data.patterns is None:
        return '<p class="empty">No patterns knowledge yet.</p>'
    payload = data.patterns.payload
    rules = [rule for rule in payload.get("rules") or [] if isinstance(rule, dict)]
    intro = (
        f'<p class="muted">{_e(_window(data.patterns))}: {_number(payload.get("tested"))} '
        f"comparisons, significance {_number(payload.get('significance'))} "
        "(Bonferroni-corrected).</p>"
    )
    if not rules:
        return intro + '<p class="empty">No significant pattern found.</p>'
    rows = [
        (
            _e(rule.get("rule", "")),
            _e(rule.get("action", "")),
            _number(rule.get("support")),
            _number(rule.get("mean_when")),
            _number(rule.get("mean_otherwise")),
            _number(rule.get("p_adjusted"), 3),
        )
        for rule in rules
    ]
    headers = ["pattern", "action", "n", "mean when", "mean otherwise", "p (adjusted)"]
    return intro + _table(headers, rows, {2, 3, 4, 5})


def _anomalies(data: AgentData) -> str:
    if data.anomalies is None:
        return '<p class="empty">No anomalies knowledge yet.</p>' + _changes(data)
    payload = data.anomalies.payload
    out = (
        f'<p class="muted">{_e(_window(data.anomalies))}: '
        f"{_number(payload.get('flagged_decisions'))} decisions flagged "
        f"(robust |z| above {_number(payload.get('threshold'))}).</p>"
    )
    rows = []
    metrics = payload.get("metrics")
    for metric, entry in sorted((metrics if isinstance(metrics, dict) else {}).items()):
        if not isinstance(entry, dict) or not entry.get("count"):
            continue
        ids = [str(i) for i in entry.get("decision_ids") or []]
        listed = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        rows.append(
            (
                _e(metric),
                _number(entry.get("count")),
                _number(entry.get("median")),
                f"{_number(entry.get('flagged'))} ({_number(entry.get('high'))} high, "
                f"{_number(entry.get('low'))} low)",
                f"<code>{_e(listed)}</code>" if ids else "–",
            )
        )
    if rows:
        out += _table(["metric", "values", "median", "flagged", "decision ids"], rows, {1, 2})
    return out + _changes(data)


def _changes(data: AgentData) -> str:
    if not data.changes:
        return ""
    shown = data.changes[-_LISTED_CHANGES:]
    rows = [
        (
            _time(change.at),
            _e(change.direction),
            _number(change.mean_before),
            _number(change.mean_after),
        )
        for change in reversed(shown)
    ]
    count = (
        f"the newest {len(shown)} of {len(data.changes)}" if len(shown) < len(data.changes) else ""
    )
    intro = f"<p>Reward changes the change detector found{', ' + count if count else ''}:</p>"
    headers = ["began (UTC)", "direction", "mean before", "mean after"]
    return intro + _table(headers, rows, {2, 3})


def _validation(validation: dict[str, Any] | None) -> str:
    """Each validator, passed or failed, with its reason (or, in older reports, failed checks)."""
    validation = validation or {}
    reports = validation.get("validators")
    items = []
    for name, report in sorted((reports if isinstance(reports, dict) else validation).items()):
        if not isinstance(report, dict) or not isinstance(report.get("passed"), bool):
            continue
        reason = report.get("reason")
        checks = report.get("details", report.get("checks"))
        if reason is None and isinstance(checks, dict):
            reason = ", ".join(str(key) for key, ok in checks.items() if ok is False)
        verdict, css = ("passed", "pass") if report["passed"] else ("failed", "fail")
        detail = f": {_e(reason)}" if reason else ""
        items.append(f'<li><span class="{css}">{_e(name)} {verdict}</span>{detail}</li>')
    return f'<ul class="checks">{"".join(items)}</ul>' if items else "–"


def _versions(data: AgentData) -> str:
    if not data.versions:
        return '<p class="empty">No policy versions yet: the baseline serves.</p>'
    rows = []
    for row in data.versions:
        live = data.live.get(row.version)
        css = {"active": "pass", "rejected": "fail", "failed": "fail"}.get(row.status, "")
        rows.append(
            (
                f"v{row.version}",
                "–" if row.parent_version is None else f"v{row.parent_version}",
                _e(row.learner),
                f'<span class="{css}">{_e(row.status)}</span>',
                _e(row.status_reason or "–"),
                _time(row.created_at),
                _time(row.activated_at),
                "–" if live is None else f"{_number(live.mean)} (n={live.rewarded})",
                _validation(row.validation),
            )
        )
    headers = ["version", "parent", "learner", "status", "reason", "created (UTC)"]
    headers += ["activated (UTC)", "live reward", "validation"]
    return _table(headers, rows, set())


def _update_text(update: Update) -> str:
    details = update.details
    if update.kind == "promote":
        ope = details.get("ope")
        return f"v{details.get('candidate_version')} promoted" + (f": {ope}" if ope else "")
    if update.kind == "reject":
        reasons = "; ".join(str(reason) for reason in details.get("reasons") or [])
        return f"v{details.get('candidate_version')} rejected: {reasons or details.get('ope')}"
    if update.kind == "rollback":
        activated = details.get("activated")
        target = "the baseline" if activated is None else f"v{activated}"
        how = " by hand" if details.get("manual") else ""
        return f"v{details.get('retired')} rolled back{how} to {target}: {details.get('reason')}"
    if update.kind == "exploration":
        before, after = update.previous.get("exploration"), update.updated.get("exploration")
        return f"{details.get('reason')}: {_settings(before)} → {_settings(after)}"
    text = json.dumps(details, sort_keys=True, default=str)
    return text if len(text) <= 300 else text[:299] + "…"


def _settings(strategy: object) -> str:
    """An exploration strategy as ``method, epsilon 0.099``."""
    if not isinstance(strategy, dict):
        return str(strategy)
    shown = [str(strategy.get("method", "?"))]
    shown += [f"{key} {_format(value)}" for key, value in strategy.items() if key != "method"]
    return ", ".join(shown)


def _updates(data: AgentData) -> str:
    if not data.updates:
        return '<p class="empty">No strategy updates.</p>'
    rows = [
        (_time(item.created_at), _e(item.kind), _e(_update_text(item))) for item in data.updates
    ]
    caption = f'<p class="muted">The newest {len(rows)}, newest first.</p>'
    return caption + _table(["at (UTC)", "kind", "change"], rows, set())
