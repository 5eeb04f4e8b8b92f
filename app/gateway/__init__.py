"""The gateway: one OpenAI-compatible API in front of every worker.

app.create_app builds the HTTP side (the caller adds routers such as the admin API);
upstream.Upstream admits, places, retries and records every call to the workers, for
proxy.Proxy (completions, with the caches) and embedding_calls alike; routing loads who can
serve what from PostgreSQL in the background; request_log writes the request rows in batches
and spools them to disk while the database is away.
"""
