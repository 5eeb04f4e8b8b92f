"""Chat: end users talk to a served model and rate its answers; no operator login needed."""

import streamlit as st

from app.ui import chat

st.title("Chat")
session = chat.current_session()
client = chat.client()

top = st.columns([4, 1], vertical_alignment="bottom")
with top[0]:
    models = chat.load_models(client)
    alias = chat.pick_alias(session, models) if models is not None else None
with top[1]:
    chat.new_conversation_button(session)

chat.history(client, session)
if chat.take_pending() and alias is not None:
    chat.answer(client, session, alias)
# Before the answer streams: a question can be asked meanwhile (it waits its turn).
chat.prompt_input(session, enabled=alias is not None)
chat.pending_answer(session)
if alias is not None:
    chat.regenerate_button(session)
