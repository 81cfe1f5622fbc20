from racequant.dashboard.views.backtest import render

render()
