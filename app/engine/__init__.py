"""The inference engine: the only code in Herd that imports llama_cpp.

The worker talks to an `Engine` (see protocol.py); `single_slot.load_engine` builds the one
that exists today: one slot around one `llama_cpp.Llama`, with a bounded queue.
"""
