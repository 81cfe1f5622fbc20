"""The Streamlit dashboard (``racequant dashboard``): race cards, backtests, monitoring and the model registry.

No modelling logic: the pages call the Predictor, fusion, the backtest store and the monitor, and read the
warehouse read-only through ``racequant.warehouse.dashboard_queries``.
"""

from pathlib import Path

APP_PATH = Path(__file__).with_name("app.py")

__all__ = ["APP_PATH"]
