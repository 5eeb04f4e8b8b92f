"""Operator login."""

import streamlit as st

from app.control.accounts import LoginLockedError
from app.ui import auth, resources

st.title("Herd")
st.caption("Operator console for self-hosted GGUF models on llama.cpp.")

with st.form("login"):
    name = st.text_input("Operator name", key="login_name")
    password = st.text_input("Password", type="password", key="login_password")
    submitted = st.form_submit_button("Log in")

if auth.account_disabled() and not submitted:
    st.warning("Your account has been disabled; ask an admin.")
elif auth.session_expired() and not submitted:
    st.warning("Your session has expired. Please log in again.")

if submitted:
    with resources.database_errors():
        try:
            ok = auth.log_in(name, password)
        except LoginLockedError as exc:
            st.error(
                f"Too many failed logins for this operator name. "
                f"Try again in {exc.retry_after_s} seconds."
            )
            st.stop()
    if ok:
        st.rerun()
    st.error("Wrong operator name or password.")

st.info(
    "On first run `herd up` creates the operator **admin** and prints its password once. "
    "Create more accounts with `herd users add NAME --role operator`."
)
