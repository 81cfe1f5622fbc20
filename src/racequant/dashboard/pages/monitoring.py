from racequant.dashboard.views.monitoring import render

render()
