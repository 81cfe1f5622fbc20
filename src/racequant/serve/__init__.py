"""The HTTP API: ``create_app(settings)`` and ``run_server(settings, host, port)``; no modelling logic here."""

from racequant.serve.app import create_app, run_server
from racequant.serve.predictor import MarketPredictor, Predictor

__all__ = ["MarketPredictor", "Predictor", "create_app", "run_server"]
