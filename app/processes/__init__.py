"""Herd's own processes: `herd up` starts them, watches them and restarts what dies."""
