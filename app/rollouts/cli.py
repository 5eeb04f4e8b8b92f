"""`herd rollout ...`: canary, promote and roll back an alias."""

from __future__ import annotations

import argparse
import json

from app.common.cli_output import echo
from app.common.cli_parser import SubParsers, command, group
from app.config import Settings
from app.control.audit import cli_actor
from app.db.database import Database
from app.rollouts.actions import Rollouts


def _run(settings: Settings, args: argparse.Namespace) -> int:
    actor = cli_actor(args)
    by = actor.who
    with Database.open_current(settings) as db:
        rollouts = Rollouts(db.engine, settings, actor.via, actor.origin, actor.source)
        if args.rollout_command == "canary":
            done = rollouts.canary(args.alias, args.model, args.percent, by, note=args.note)
        elif args.rollout_command == "promote":
            done = rollouts.promote(args.alias, by, note=args.note)
        elif args.rollout_command == "rollback":
            done = rollouts.rollback(args.alias, by, note=args.note, decision_id=args.decision)
        else:
            echo(json.dumps(rollouts.history(args.alias), indent=2, default=str))
            return 0
        after = {d["model"]: (d["weight"], d["state"]) for d in rollouts.snapshot(args.alias)}
    echo(f"{args.rollout_command} #{done} on {args.alias}: {after}")
    return 0


def register(sub: SubParsers) -> None:
    """Hook `herd rollout ...` into the `herd` parser."""
    rollout = group(sub, "rollout", "canary, promote, roll back an alias")
    canary = command(rollout, "canary", _run, "serve MODEL beside ALIAS's current version")
    canary.add_argument("alias")
    canary.add_argument("model", help="the model's name in the store")
    canary.add_argument("--percent", type=float, default=5.0, help="share of traffic (5)")
    promote = command(rollout, "promote", _run, "give the open canary all the traffic")
    promote.add_argument("alias")
    back = command(rollout, "rollback", _run, "restore the version before the open canary")
    back.add_argument("alias")
    back.add_argument("--decision", type=int, default=None, help="the decision it executes")
    history = command(rollout, "history", _run, "the recorded actions (JSON)")
    history.add_argument("alias", nargs="?", default=None)
    for p in (canary, promote, back, history):
        p.add_argument("--by", default=None, help="who (default: the OS user)")
        p.add_argument("--note", default="", help="why")
