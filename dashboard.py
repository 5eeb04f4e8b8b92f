"""Herd's dashboard: `herd dashboard` (or `herd up`) runs this with Streamlit."""

import streamlit as st

from app.ui.navigation import build_navigation

st.set_page_config(page_title="Herd", page_icon=":material/pets:", layout="wide")
build_navigation().run()
