"""The gateway: one OpenAI-compatible API in front of every worker.

app.create_app builds the HTTP side; proxy.Proxy routes, retries, caches and records each
call; routing loads who can serve what from PostgreSQL in the background; request_log writes
the request rows in batches and spools them to disk while the database is away.
"""
