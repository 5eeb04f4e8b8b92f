"""The browser's side of `st.fragment(run_every=...)` for AppTest: which fragments a page
run scheduled to refresh (and how often), and one tick of their timers.

AppTest runs whole pages only; a page that goes stale between two of them passes there.
`tick` reruns just the scheduled fragments, as the browser's timers do, so a test sees what
a person who keeps the page open sees. It works through AppTest's runner class, so it is
tied to Streamlit's internals (checked against streamlit 1.67).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, ClassVar

from streamlit.runtime.scriptrunner_utils.script_requests import RerunData, ScriptRequests
from streamlit.testing.v1 import AppTest, app_test
from streamlit.testing.v1.local_script_runner import LocalScriptRunner


class _Runner(LocalScriptRunner):
    """AppTest's runner that can run only some fragments, and records the auto-reruns."""

    # Shared by the runners AppTest makes, one per run: the fragments the next run runs
    # alone (none: the whole page), and the timers of the last whole-page run.
    fragments: ClassVar[list[str]] = []
    scheduled: ClassVar[dict[str, float]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if _Runner.fragments:
            # The constructor queued a whole-page run; a fragment run replaces it.
            self._requests = ScriptRequests()

    def request_rerun(self, rerun_data: RerunData) -> bool:
        if _Runner.fragments:
            rerun_data = replace(
                rerun_data, fragment_id_queue=list(_Runner.fragments), is_auto_rerun=True
            )
            _Runner.fragments = []
        return super().request_rerun(rerun_data)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        tree = super().run(*args, **kwargs)
        if "SCRIPT_STOPPED_WITH_SUCCESS" in {event.name for event in self.events}:
            # A whole-page run (also one a fragment asked for) registers the timers anew.
            _Runner.scheduled = {
                msg.auto_rerun.fragment_id: msg.auto_rerun.interval
                for msg in self.forward_msgs()
                if msg.WhichOneof("type") == "auto_rerun"
            }
        return tree


@contextmanager
def fragment_timers() -> Iterator[None]:
    """AppTest runs within this record the fragments they schedule (see scheduled, tick)."""
    home: Any = app_test  # the module AppTest takes its runner class from
    original = home.LocalScriptRunner
    home.LocalScriptRunner = _Runner
    _Runner.fragments, _Runner.scheduled = [], {}
    try:
        yield
    finally:
        home.LocalScriptRunner = original


def scheduled() -> list[float]:
    """The refresh intervals (seconds) of the fragments the last whole-page run scheduled."""
    return sorted(_Runner.scheduled.values())


def tick(app: AppTest) -> AppTest:
    """Fire every scheduled fragment timer once. The tree holds what those fragments drew,
    or the whole page if one of them asked for a whole-page run."""
    assert _Runner.scheduled, "no fragment is scheduled to refresh"
    _Runner.fragments = list(_Runner.scheduled)
    app.run()
    assert not app.exception, app.exception
    return app
