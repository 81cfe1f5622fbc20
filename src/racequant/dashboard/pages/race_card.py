from racequant.dashboard.views.race_card import render

render()
