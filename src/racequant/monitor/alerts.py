"""Alerts: drift, latency and calibration, posted as JSON to a Slack-compatible webhook, else logged.

Each alert is posted with a timeout and a few retries (exponential back-off); when the webhook is unset or keeps
failing, the alert goes to the log (WARNING) instead, and every alert is recorded in the prediction log's
``alerts`` table with whether it was delivered.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, date, datetime
from typing import Any

import httpx

from racequant.monitor.source import LogSource, log_access
from racequant.warehouse import prediction_log

logger = logging.getLogger(__name__)


def evaluate_alerts(
    drift_report: dict[str, Any] | None,
    metrics: dict[str, Any] | None,
    *,
    latency_ms_max: float = 500.0,
    ece_max: float = 0.10,
) -> list[dict[str, Any]]:
    """The alerts a drift report and a day's metrics call for: kind, message and details each."""
    alerts: list[dict[str, Any]] = []
    if drift_report is not None and drift_report.get("flags"):
        parts = []
        perf = drift_report["performance"]
        if perf["auc_flag"]:
            parts.append(f"win AUC dropped by {perf['auc_drop']:.3f} (limit {perf['auc_drop_max']})")
        if perf["ece_flag"]:
            parts.append(f"recent win ECE {perf['recent']['win_ece']:.3f} (limit {perf['ece_max']})")
        if drift_report["features"]["flag"]:
            parts.append("feature PSI above limit: " + ", ".join(drift_report["features"]["drifted"][:10]))
        if drift_report["interval_coverage"]["flag"]:
            cov = drift_report["interval_coverage"]
            parts.append(f"interval coverage {cov['recent']['coverage']:.2f} below {cov['target']}")
        alerts.append(
            {
                "kind": "drift",
                "message": "Drift: " + "; ".join(parts),
                "details": {"flags": drift_report["flags"], "as_of": drift_report["as_of"]},
            }
        )
    if metrics is not None:
        latency = metrics.get("mean_latency_ms")
        if latency is not None and latency > latency_ms_max:
            alerts.append(
                {
                    "kind": "latency",
                    "message": f"Mean latency {latency:.0f} ms on {metrics['day']} (limit {latency_ms_max:.0f} ms)",
                    "details": {"day": metrics["day"], "mean_latency_ms": latency},
                }
            )
        ece = metrics.get("win_ece")
        if ece is not None and ece > ece_max:
            alerts.append(
                {
                    "kind": "calibration",
                    "message": f"Win ECE {ece:.3f} on {metrics['day']} (limit {ece_max})",
                    "details": {"day": metrics["day"], "win_ece": ece},
                }
            )
    return alerts


def post_webhook(
    url: str, payload: dict[str, Any], timeout_s: float = 5.0, retries: int = 3, backoff_s: float = 0.25
) -> bool:
    """POST ``payload`` as JSON; True once a 2xx answer comes back, False after ``retries`` more failures."""
    for attempt in range(retries + 1):
        try:
            response = httpx.post(url, json=payload, timeout=timeout_s)
            if response.is_success:
                return True
            logger.warning("alert webhook answered %d (attempt %d)", response.status_code, attempt + 1)
        except httpx.HTTPError as exc:
            logger.warning("alert webhook failed (attempt %d): %s", attempt + 1, type(exc).__name__)
        if attempt < retries:
            time.sleep(backoff_s * 2**attempt)
    return False


def send_alerts(
    alerts: list[dict[str, Any]],
    *,
    webhook_url: str | None = None,
    timeout_s: float = 5.0,
    retries: int = 3,
    backoff_s: float = 0.25,
    log: LogSource | None = None,
) -> list[dict[str, Any]]:
    """Post each alert (Slack-compatible: ``text`` plus racequant's fields); fall back to the log.

    Returns the alerts with ``delivered`` and ``raised_at`` added; with ``log`` they are also recorded there.
    """
    sent = []
    for alert in alerts:
        raised_at = datetime.now(UTC)
        payload = {
            "text": f"[racequant] {alert['message']}",
            "kind": alert["kind"],
            "details": alert.get("details", {}),
            "raised_at": raised_at.isoformat(),
        }
        delivered = False
        if webhook_url:
            delivered = post_webhook(webhook_url, payload, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)
        if not delivered:
            logger.warning("ALERT %s: %s", alert["kind"], alert["message"])
        sent.append({**alert, "delivered": delivered, "raised_at": raised_at.isoformat()})
    if log is not None and sent:
        with log_access(log, write=True) as access:
            access.write(
                lambda c: [
                    prediction_log.insert_alert(
                        c,
                        a["kind"],
                        a["message"],
                        json.dumps(a.get("details", {}), default=str),
                        a["delivered"],
                        datetime.fromisoformat(a["raised_at"]),
                    )
                    for a in sent
                ]
            )
    return sent


def check_and_alert(
    source: LogSource, settings: Any, *, day: date | str | None = None, reference_features: Any = None
) -> list[dict[str, Any]]:
    """``racequant monitor alerts``: the day's metrics (stored) and the drift report, then any alerts they call for,
    sent per ``settings`` (webhook, timeout, retries, thresholds) and recorded in the log."""
    from racequant.monitor.drift import drift, drift_thresholds
    from racequant.monitor.metrics import daily_metrics

    day = date.fromisoformat(day) if isinstance(day, str) else day or datetime.now(UTC).date()
    metrics = daily_metrics(source, day, store=True)
    report = drift(
        source,
        as_of=day,
        recent_days=settings.drift_recent_days,
        reference_features=reference_features,
        **drift_thresholds(settings),
    )
    alerts = evaluate_alerts(report, metrics, latency_ms_max=settings.alert_latency_ms, ece_max=settings.drift_ece_max)
    return send_alerts(
        alerts,
        webhook_url=settings.alert_webhook_url,
        timeout_s=settings.alert_timeout_s,
        retries=settings.alert_retries,
        log=source,
    )
