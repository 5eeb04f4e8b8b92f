"""End users' chat conversations on the Chat page, kept in the dashboard process.

Streamlit's session state dies with the browser tab's connection, so a page refresh would
lose the conversation. Each browser session therefore gets an unguessable token (kept in the
page URL) and its conversation lives here under that token: a refresh finds it again, and
nobody without the token can see it. The database keeps the requests and feedback anyway.
"""

from __future__ import annotations

import secrets
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

# Conversations kept per dashboard process; the least recently used go first.
MAX_SESSIONS = 10_000


@dataclass
class ChatMessage:
    role: Literal["user", "assistant"]
    content: str
    # For answers: the gateway's response id that feedback refers to, and what was served.
    response_id: str | None = None
    model: str | None = None
    # The vote and comment stored through the gateway (None: not yet rated).
    rating: int | None = None
    comment: str | None = None


@dataclass
class PendingAnswer:
    """An answer streaming in now (app/ui/chat_answers.py); done is set once it is in the
    conversation, or failed with error."""

    alias: str
    text: str = ""
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class ChatSession:
    """One browser session: who it is to the gateway, and its current conversation.

    pending is the answer streaming now; questions asked meanwhile wait in queued and are
    asked in turn. lock guards messages, pending and queued, which the answer's own thread
    changes when it ends."""

    token: str
    user_id: str
    conversation_id: str
    alias: str | None = None
    messages: list[ChatMessage] = field(default_factory=list)
    pending: PendingAnswer | None = None
    # The last answer that failed, shown (with why) until the next answer starts: an answer
    # can fail before the page that asked for it renders it.
    failed: PendingAnswer | None = None
    queued: list[str] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @classmethod
    def new(cls) -> ChatSession:
        return cls(
            token=secrets.token_urlsafe(24),
            user_id=f"chat-{uuid.uuid4().hex[:16]}",
            conversation_id=uuid.uuid4().hex,
        )

    def start_over(self) -> None:
        """A new conversation: empty, and a new session id for the gateway and analytics (an
        answer still streaming for the old one is left out of it)."""
        with self.lock:
            self.messages = []
            self.pending = None
            self.failed = None
            self.queued = []
            self.conversation_id = uuid.uuid4().hex

    def prompt_messages(self) -> list[dict[str, str]]:
        """The conversation as the chat completions API wants it."""
        return [{"role": m.role, "content": m.content} for m in self.messages]

    def last_answer(self) -> ChatMessage | None:
        if self.messages and self.messages[-1].role == "assistant":
            return self.messages[-1]
        return None

    def drop_last_answer(self) -> None:
        """Before a regenerate: the question stays, the answer goes."""
        if self.last_answer() is not None:
            self.messages.pop()

    def answer_by_id(self, response_id: str) -> ChatMessage | None:
        return next((m for m in self.messages if m.response_id == response_id), None)


class ConversationStore:
    """Chat sessions by token, bounded, safe to share between Streamlit's script threads."""

    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, ChatSession] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, token: str | None) -> ChatSession | None:
        if not token:
            return None
        with self._lock:
            found = self._sessions.get(token)
            if found is not None:
                self._sessions.move_to_end(token)
            return found

    def create(self) -> ChatSession:
        session = ChatSession.new()
        with self._lock:
            self._sessions[session.token] = session
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return session

    def __len__(self) -> int:
        return len(self._sessions)
