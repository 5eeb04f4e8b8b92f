"""The control plane: deployments, aliases and weights, keys, accounts, the admin API router
and `herd apply`, all through app.control.changes.Admin, which writes an audit_log row in the
change's transaction; app/control/audit.py at the bottom imports app/db alone."""
