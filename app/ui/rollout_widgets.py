"""Rollout controls shared by the Rollouts and Retraining pages."""

from __future__ import annotations

from typing import Any

import streamlit as st

from app.control.audit import Via
from app.control.deployments import DeploymentError
from app.db.tables import Rollout
from app.rollouts.actions import RolloutError, Rollouts
from app.ui import resources
from app.ui.admin_actions import client_address
from app.ui.changes import confirmed, run_change, show_confirmation

FLASH = "rollout_flash"
REFUSED = (RolloutError, DeploymentError)


def rollouts(page: str) -> Rollouts:
    """Rollout actions as made on this page ("rollouts", "evaluation"): their audit rows
    say so."""
    engine, settings = resources.database().engine, resources.settings()
    return Rollouts(engine, settings, Via.PAGE, origin=page, source=client_address())


def candidate_name(snapshot: list[dict[str, Any]], action: Rollout) -> str:
    """The model an open canary or promotion put on its alias, by name as stored."""
    for deployment in snapshot:
        if deployment["deployment_id"] == action.candidate_deployment_id:
            return str(deployment["model"])
    return "the canary"


def start_canary(
    manager: Rollouts,
    alias: str,
    model: str,
    percent: float,
    decided_by: str,
    *,
    note: str = "",
    page: str,
) -> None:
    """Start a canary from a page (Rollouts, Evaluation): the one Rollouts.canary path,
    recorded with the page it was started from beside the evaluations it cites."""
    run_change(
        FLASH,
        f"canary {model} on {alias}",
        lambda: manager.canary(
            alias, model, percent, decided_by, note=note, signals={"started_from": page}
        ),
        refused=REFUSED,
        done=f"{percent:g}% of the traffic",
    )


def execute_rollback_button(
    alias: str, decision_id: int, operator: str, page: str = "retraining"
) -> None:
    """Offer to execute a recorded 'rollback' decision on its alias, when one is open."""
    show_confirmation(FLASH)
    manager = rollouts(page)
    with resources.database_errors():
        action = manager.open_action(alias)
    if action is None:
        st.caption(f"`{alias}` has no open canary or promotion to roll back.")
        return
    if confirmed(
        f"execute_rollback_{decision_id}",
        f"Execute this rollback on `{alias}`",
        f"Undo the {action.action} #{action.id} on `{alias}` and give the version before it "
        "all the traffic again?",
        confirm="Yes, roll back",
    ):
        run_change(
            FLASH,
            f"roll back {alias}",
            lambda: manager.rollback(
                alias, operator, decision_id=decision_id, note=f"executes decision #{decision_id}"
            ),
            refused=REFUSED,
            done=f"the {action.action} #{action.id} is undone",
        )
