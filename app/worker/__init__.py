"""The worker process: one loaded model behind an OpenAI-compatible HTTP API.

process.run_worker is the entry point; app.create_app builds the HTTP side; registration and
heartbeat keep the process's row in `workers` current.
"""
