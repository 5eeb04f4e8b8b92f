"""The OpenAI API surface both the gateway and the worker speak: request schemas, the error
type and the one installer of error handlers. Imports nothing from gateway, worker or engine.
"""
