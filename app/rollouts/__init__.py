"""Canary, promotion and rollback of an alias (a layer above evaluation, whose results it
weighs), and `herd rollout`."""
