"""The Chat page's parts: its session, the model picker, messages with feedback, streaming.

The page talks to the gateway over HTTP like any API client (app/ui/chat_client.py), so
votes land in `feedback` through POST /v1/feedback, the same path API clients use. Answers
stream in threads of their own (app/ui/chat_answers.py): the page shows them as they come,
and a question asked meanwhile waits its turn, so no answer the user saw is ever dropped.
"""

from __future__ import annotations

import streamlit as st

from app.ui import chat_answers, resources
from app.ui.chat_client import ChatClient, ChatError, ChatModel, client_options
from app.ui.conversations import ChatMessage, ChatSession, ConversationStore

SESSION_KEY = "chat_session"
PENDING_KEY = "chat_pending"
PROMPT_KEY = "chat_prompt"
# The URL query parameter holding this browser session's token (see app/ui/conversations).
QUERY_PARAM = "chat"
# How often the page shows more of an answer that streams in, and what follows its text.
STREAM_REFRESH_S = 0.1
CURSOR = " ▌"
# st.feedback("thumbs") returns 0 for thumbs down and 1 for thumbs up.
THUMBS_TO_RATING = {0: -1, 1: 1}
RATING_TO_THUMBS = {-1: 0, 1: 1}


@st.cache_resource(show_spinner=False)
def _client(base_url: str, api_key: str | None, timeout_s: float) -> ChatClient:
    # Shared by every session of this process: one pool of keep-alive connections.
    return ChatClient(base_url, api_key, timeout_s)


def client() -> ChatClient:
    return _client(*client_options(resources.settings()))


@st.cache_resource(show_spinner=False)
def conversation_store() -> ConversationStore:
    return ConversationStore()


def current_session() -> ChatSession:
    """This browser session's chat; after a refresh, found again by the token in the URL."""
    found = st.session_state.get(SESSION_KEY)
    if not isinstance(found, ChatSession):
        store = conversation_store()
        found = store.get(st.query_params.get(QUERY_PARAM)) or store.create()
        st.session_state[SESSION_KEY] = found
    if st.query_params.get(QUERY_PARAM) != found.token:
        st.query_params[QUERY_PARAM] = found.token
    return found


def load_models(chat: ChatClient) -> list[ChatModel] | None:
    """The served aliases; None (with the reason shown) when the gateway cannot say."""
    try:
        return chat.models()
    except ChatError as exc:
        st.error(str(exc), icon=":material/cloud_off:")
        return None


def pick_alias(session: ChatSession, models: list[ChatModel]) -> str | None:
    if not models:
        st.info(
            "No model is being served yet. An operator deploys one on the Deployments page; "
            "then reload this page.",
            icon=":material/hourglass_empty:",
        )
        return None
    aliases = [m.alias for m in models]
    index = aliases.index(session.alias) if session.alias in aliases else 0
    alias = st.selectbox("Model", aliases, index=index, key="chat_alias")
    session.alias = alias
    return alias


def _ask(session: ChatSession) -> None:
    """chat_input's callback: runs before the script, so the new question renders in order
    (or, while an answer streams, below it, waiting)."""
    text = st.session_state.get(PROMPT_KEY)
    if isinstance(text, str) and text.strip() and chat_answers.ask(session, text.strip()):
        st.session_state[PENDING_KEY] = True


def _regenerate(session: ChatSession) -> None:
    with session.lock:
        if session.pending is not None:  # a click left from before an answer started
            return
        session.drop_last_answer()
    st.session_state[PENDING_KEY] = True


def _start_over(session: ChatSession) -> None:
    session.start_over()
    st.session_state.pop(PENDING_KEY, None)


def new_conversation_button(session: ChatSession) -> None:
    st.button(
        "New conversation",
        key="chat_new",
        icon=":material/add_comment:",
        on_click=_start_over,
        args=(session,),
        disabled=not session.messages,
    )


def _send_feedback(
    chat: ChatClient, session: ChatSession, message: ChatMessage, rating: int, comment: str | None
) -> bool:
    try:
        chat.feedback(message.response_id or "", rating, user=session.user_id, comment=comment)
    except ChatError as exc:
        st.error(f"Your feedback was not saved: {exc}")
        return False
    message.rating, message.comment = rating, comment
    return True


def feedback_controls(chat: ChatClient, session: ChatSession, message: ChatMessage) -> None:
    """Thumbs up/down, stored at once; then an optional comment."""
    rid = message.response_id
    if rid is None:
        return
    thumbs = st.feedback(
        "thumbs",
        key=f"chat_fb_{rid}",
        default=RATING_TO_THUMBS.get(message.rating) if message.rating is not None else None,
    )
    rating = THUMBS_TO_RATING.get(thumbs) if thumbs is not None else None
    if rating is None:
        return
    if rating != message.rating:
        # The comment goes along so a changed vote keeps it (a vote replaces the last one).
        _send_feedback(chat, session, message, rating, message.comment)
    if message.rating is None:
        return
    left, right = st.columns([5, 1], vertical_alignment="bottom")
    comment = left.text_input(
        "Comment (optional)",
        value=message.comment or "",
        key=f"chat_comment_{rid}",
        placeholder="What was good or wrong about this answer?",
    )
    if right.button("Send", key=f"chat_comment_send_{rid}") and _send_feedback(
        chat, session, message, message.rating, comment.strip() or None
    ):
        st.toast("Thanks for your feedback.")
    if message.comment:
        st.caption("Feedback saved with your comment.")


def history(chat: ChatClient, session: ChatSession) -> None:
    with session.lock:
        messages = list(session.messages)
    for message in messages:
        with st.chat_message(message.role):
            st.markdown(message.content)
            if message.role == "assistant":
                feedback_controls(chat, session, message)


def answer(chat: ChatClient, session: ChatSession, alias: str) -> None:
    """Start answering the conversation so far (pending_answer shows it)."""
    chat_answers.answer(chat, session, alias)


def pending_answer(session: ChatSession) -> None:
    """The answer streaming now, and the questions waiting for it, shown as it comes in;
    once it is in the conversation the page runs again to show it with its buttons. A
    failed answer shows why, and the page goes on (Retry is below)."""
    with session.lock:
        pending, waiting, last_failure = session.pending, list(session.queued), session.failed
    if pending is None:
        if last_failure is not None:
            with st.chat_message("assistant"):
                if last_failure.text:
                    st.markdown(last_failure.text)
                st.error(last_failure.error, icon=":material/error:")
        return
    with st.chat_message("assistant"):
        shown, failed = st.empty(), st.empty()
    for question in waiting:
        with st.chat_message("user"):
            st.markdown(question)
            st.caption("Asked while the answer above was coming: it is answered next.")
    while True:
        shown.markdown(pending.text + CURSOR)
        if pending.done.wait(STREAM_REFRESH_S):
            break
    if pending.error is None:
        st.rerun()
    shown.markdown(pending.text)  # what came before the failure stays in view
    failed.error(pending.error, icon=":material/error:")


def regenerate_button(session: ChatSession) -> None:
    if not session.messages:
        return
    label = "Regenerate" if session.last_answer() is not None else "Retry"
    st.button(
        label,
        key="chat_regenerate",
        icon=":material/refresh:",
        on_click=_regenerate,
        args=(session,),
    )


def prompt_input(session: ChatSession, enabled: bool) -> None:
    st.chat_input(
        "Ask something" if enabled else "No model to chat with right now",
        key=PROMPT_KEY,
        on_submit=_ask,
        args=(session,),
        disabled=not enabled,
    )


def take_pending() -> bool:
    """Was a question asked (or a regenerate clicked) that still needs its answer?"""
    return bool(st.session_state.pop(PENDING_KEY, False))
