"""Walk-forward backtest: the splitter owns time, the engine clones a fresh estimator per fold, the report
puts the market beside the model."""

from racequant.backtest.engine import BacktestError, BacktestResult, BettingConfig, run_backtest
from racequant.backtest.report import store_result, write_outputs
from racequant.backtest.splitter import Fold, WalkForwardSplit
from racequant.betting.kelly import KellyStaking

__all__ = [
    "BacktestError",
    "BacktestResult",
    "BettingConfig",
    "Fold",
    "KellyStaking",
    "WalkForwardSplit",
    "run_backtest",
    "store_result",
    "write_outputs",
]
