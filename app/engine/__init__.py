"""The inference engine: the only code in Herd that imports llama_cpp.

The worker talks to an `Engine` (see protocol.py) built by `factory.make_engine`: the batched
engine (batched.py: several slots in one llama context, one decode per step, prefix reuse),
or, for models it cannot serve, the single-slot engine around one `llama_cpp.Llama`.
"""
