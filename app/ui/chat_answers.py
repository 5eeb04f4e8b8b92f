"""Chat answers that nothing on the page can cut off: each streams from the gateway in a
thread of its own, and joins the conversation when it is complete.

A Streamlit page run stops whenever the user acts (a new question, a vote, a click); an
answer streamed inside the run would be dropped half-way, and the gateway would log it
cancelled. Here the page only shows the answer's text so far. A question asked while an
answer streams waits in the session's queue and is asked, with the whole conversation
before it, once that answer is in.
"""

from __future__ import annotations

import logging
import threading

from app.ui.chat_client import ChatClient, ChatError, ChatStream
from app.ui.conversations import ChatMessage, ChatSession, PendingAnswer

log = logging.getLogger(__name__)


def ask(session: ChatSession, question: str) -> bool:
    """Add a question to the conversation, to be answered now (True); while an answer
    streams, queue it instead (False): it is asked when that answer is in."""
    with session.lock:
        if session.pending is not None:
            session.queued.append(question)
            return False
        session.messages.append(ChatMessage(role="user", content=question))
        return True


def answer(chat: ChatClient, session: ChatSession, alias: str) -> None:
    """Start answering the conversation as it is now, unless an answer is streaming."""
    with session.lock:
        if session.pending is None:
            _launch(chat, session, PendingAnswer(alias))


def _launch(chat: ChatClient, session: ChatSession, pending: PendingAnswer) -> None:
    """Stream pending's answer to the conversation so far (the caller holds the lock)."""
    session.pending, session.failed = pending, None
    stream = chat.chat(
        pending.alias,
        session.prompt_messages(),
        user=session.user_id,
        session_id=session.conversation_id,
    )
    threading.Thread(
        target=_stream, args=(chat, session, pending, stream), name="chat-answer", daemon=True
    ).start()


def _stream(
    chat: ChatClient, session: ChatSession, pending: PendingAnswer, stream: ChatStream
) -> None:
    try:
        for _ in stream:
            pending.text = stream.text
    except ChatError as exc:
        pending.error = str(exc)
    except Exception as exc:  # the answer must end whatever happens, or the page waits on it
        log.exception("chat answer failed")
        pending.error = f"The answer failed ({type(exc).__name__}). Please try again."
    _finish(chat, session, pending, stream)


def _finish(
    chat: ChatClient, session: ChatSession, pending: PendingAnswer, stream: ChatStream
) -> None:
    """The answer joins the conversation (unless it failed, or the conversation was started
    over meanwhile), then the next queued question is asked."""
    with session.lock:
        if session.pending is pending:
            session.pending = None
            if pending.error is not None:
                session.failed = pending
            if pending.error is None:
                session.messages.append(
                    ChatMessage(role="assistant", content=stream.text,
                                response_id=stream.response_id, model=pending.alias)
                )  # fmt: skip
            waiting, session.queued = session.queued, []
            if waiting and pending.error is None:
                session.messages.append(ChatMessage(role="user", content=waiting[0]))
                session.queued = waiting[1:]
                _launch(chat, session, PendingAnswer(pending.alias))
            else:
                # After a failure the questions stay in the conversation, to be retried.
                session.messages += [ChatMessage(role="user", content=q) for q in waiting]
        # Set under the lock: a page that sees it done finds the next answer pending.
        pending.done.set()
