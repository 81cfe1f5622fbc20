"""Monitoring of the served predictions: the log writer, daily metrics, drift and alerts."""

from racequant.monitor.alerts import check_and_alert, evaluate_alerts, send_alerts
from racequant.monitor.drift import drift, psi
from racequant.monitor.metrics import daily_metrics
from racequant.monitor.writer import LogWriter

__all__ = ["LogWriter", "check_and_alert", "daily_metrics", "drift", "evaluate_alerts", "psi", "send_alerts"]
