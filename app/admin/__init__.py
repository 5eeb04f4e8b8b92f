"""The one path every configuration change takes: pages, CLI, admin API and `herd apply`
call app.admin.changes.Admin, which writes an audit_log row in the change's transaction."""
