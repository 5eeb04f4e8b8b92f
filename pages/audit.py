"""Audit: every configuration change, by whom, how, from where, before and after."""

from datetime import UTC, datetime, timedelta

import streamlit as st

from app.control.accounts import Role
from app.control.audit import Via, audit_actors, audit_origins, read_audit
from app.ui import auth, resources

PERIODS = {"Last 24 hours": 1, "Last 7 days": 7, "Last 30 days": 30, "Everything": None}

operator = auth.require_role(Role.ADMIN)
st.title("Audit")
st.caption(
    "One row per change made on a page, with the CLI, through the API or by `herd apply`, "
    "and by Herd itself (system). **Via** is the way in; **origin** the page, command or "
    "API route; **source** the client's address or host. The `audit_log` table holds the "
    "same rows for SQL."
)
engine = resources.database().engine
with resources.database_errors():
    actors = audit_actors(engine)
    origins = audit_origins(engine)

ANY = "(any)"
cols = st.columns(5)
who = cols[0].selectbox("Who", [ANY, *actors], key="audit_who")
via = cols[1].selectbox("Via", [ANY, *(v.value for v in Via)], key="audit_via")
origin = cols[2].selectbox("Origin", [ANY, *origins], key="audit_origin")
action = cols[3].text_input(
    "Action starts with", key="audit_action", placeholder="deployment. / job. / batch."
)
period = cols[4].selectbox("Period", list(PERIODS), key="audit_period")
days = PERIODS[period]
since = datetime.now(UTC) - timedelta(days=days) if days else None
with resources.database_errors():
    rows = read_audit(
        engine,
        actor=None if who == ANY else who,
        action=action.strip() or None,
        via=None if via == ANY else via,
        origin=None if origin == ANY else origin,
        since=since,
    )
if not rows:
    st.info("No changes recorded for these filters.")
else:
    latest = rows[0]
    st.caption(
        f"{len(rows)} change(s), newest first. Latest: {latest.action} by {latest.actor} "
        f"via {latest.via}" + (f" ({latest.origin})." if latest.origin else ".")
    )
    st.dataframe(
        [
            {
                "at": r.at.strftime("%Y-%m-%d %H:%M:%S"),
                "who": r.actor,
                "via": r.via,
                "origin": r.origin,
                "source": r.source,
                "action": r.action,
                "target": f"{r.target_kind} {r.target_id or ''}".strip(),
                "before": r.before,
                "after": r.after,
            }
            for r in rows
        ],
        hide_index=True,
        width="stretch",
    )
