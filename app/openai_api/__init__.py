"""The OpenAI API surface both the gateway and the worker speak, both directions: request
schemas (schemas, bodies, embeddings), answers (completions: whole bodies and stream chunks,
live and replayed; sse: their framing) and errors (errors: the one shape and type, the 503,
the one installer of error handlers). Imports nothing from gateway or worker; of the engine,
only the event types answers are built from.
"""
