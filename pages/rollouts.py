"""Rollouts: canary a model version beside an alias's current one, promote, roll back."""

import streamlit as st

from app.control.accounts import Role
from app.control.deployments import traffic_shares
from app.ui import auth, resources
from app.ui.changes import confirmed, run_change, show_confirmation
from app.ui.rollout_widgets import FLASH, REFUSED, candidate_name, rollouts, start_canary
from app.ui.tables import plain

operator = auth.require_role(Role.VIEWER)
can_act = operator.role.allows(Role.OPERATOR)
st.title("Rollouts")
st.caption(
    "A canary serves a share of an alias's traffic beside the current version; promote gives "
    "it all the traffic (the previous version stays deployed at weight 0 for the grace "
    "period); rollback restores the version before the canary in one step. A canary worse "
    "than the current version (error rate, p95 latency) is rolled back automatically."
)
show_confirmation(FLASH)
manager = rollouts("rollouts")
with resources.database_errors():
    aliases = sorted({d.alias for d in manager.deployments.all()})
    models = [m.name for m in resources.model_store().list() if m.status == "valid"]
if not aliases:
    st.info("No alias is deployed yet: deploy a model on the Deployments page first.")
    st.stop()
alias = st.selectbox("Alias", aliases, key="rollout_alias")
with resources.database_errors():
    snapshot = manager.snapshot(alias)
    action = manager.open_action(alias)
shares = traffic_shares({d["deployment_id"]: d["weight"] for d in snapshot})
st.dataframe(
    [{**d, "share": f"{shares.get(d['deployment_id'], 0):.0%}"} for d in snapshot],
    hide_index=True,
    width="stretch",
)
if action is not None:
    st.info(f"Open {action.action} #{action.id} by {action.decided_by} since "
            f"{action.created_at:%Y-%m-%d %H:%M:%S} UTC.")  # fmt: skip
    if action.action == "canary":
        with resources.database_errors():
            health = manager.canary_health(action)
        st.dataframe([{"side": side, **values} for side, values in health.items()], hide_index=True)

if can_act:
    if action is None:
        serving = {d["model"] for d in snapshot if d["weight"] > 0}
        with st.form("canary"):
            model = st.selectbox(
                "Canary model", [m for m in models if m not in serving], key="canary_model"
            )
            percent = st.number_input(
                "Share of traffic (%)", min_value=1, max_value=99, value=20, key="canary_percent"
            )
            note = st.text_input("Note (why)", key="canary_note")
            if st.form_submit_button("Start canary"):
                start_canary(manager, alias, str(model), float(percent), operator.name,
                             note=note, page="rollouts")  # fmt: skip
    else:
        candidate = candidate_name(snapshot, action)
        cols = st.columns(2)
        with cols[0]:
            if action.action == "canary" and confirmed(
                "promote",
                "Promote",
                f"Give {candidate} all of `{alias}`'s traffic? The current version stays "
                "deployed at weight 0 for the grace period.",
                confirm="Yes, promote",
            ):
                run_change(FLASH, f"promote on {alias}",
                           lambda: manager.promote(alias, operator.name),
                           refused=REFUSED, done="the canary has all the traffic")  # fmt: skip
        with cols[1]:
            if confirmed(
                "rollback",
                "Roll back",
                f"Undo the {action.action} of {candidate} on `{alias}` and give the version "
                "before it all the traffic again?",
                confirm="Yes, roll back",
            ):
                run_change(FLASH, f"roll back {alias}",
                           lambda: manager.rollback(alias, operator.name),
                           refused=REFUSED, done="the previous version is back")  # fmt: skip

st.subheader("History")
with resources.database_errors():
    history = manager.history(alias)
if not history:
    st.caption("No rollout recorded for this alias yet.")
else:
    st.dataframe(
        [
            {
                "id": h["id"],
                "when": h["created_at"],
                "action": h["action"],
                "by": h["decided_by"],
                "candidate model": h["candidate_model_id"],
                "weights before": plain({d["model"]: d["weight"] for d in h["before"]}),
                "weights after": plain({d["model"]: d["weight"] for d in h["after"]}),
                "perplexity cited": plain(
                    {e["model"]: e.get("perplexity") for e in h["evaluation"]}
                ),
                "decision": h["decision_id"],
                "note": h["note"],
            }
            for h in history
        ],
        hide_index=True,
        width="stretch",
    )
