"""The control plane's lowest layer: the audit log, which every package that makes a change
writes through (app/control/audit.py imports app/db alone, so anything may import it)."""
