from racequant.dashboard.views.models import render

render()
