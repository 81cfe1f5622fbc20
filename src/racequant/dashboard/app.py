"""The dashboard's entry script (``racequant dashboard`` runs ``streamlit run`` on this file).

Settings come from the environment: RACEQUANT_DB, RACEQUANT_MODELS_DIR, RACEQUANT_MODEL_VERSION, RACEQUANT_API_URL.
"""

from pathlib import Path

import streamlit as st

from racequant.dashboard.common import settings
from racequant.logging import configure_logging

PAGES = Path(__file__).parent / "pages"

st.set_page_config(page_title="racequant", page_icon=":horse_racing:", layout="wide")
configure_logging(settings().log_level)
navigation = st.navigation(
    [
        st.Page(PAGES / "race_card.py", title="Race card", icon=":material/sports_score:", default=True),
        st.Page(PAGES / "backtest.py", title="Backtest", icon=":material/query_stats:"),
        st.Page(PAGES / "monitoring.py", title="Monitoring", icon=":material/monitor_heart:"),
        st.Page(PAGES / "models.py", title="Models", icon=":material/model_training:"),
    ]
)
with st.sidebar:
    s = settings()
    st.caption(f"Warehouse `{s.db}` (read-only)  \nModels `{s.models_dir}`")
navigation.run()
