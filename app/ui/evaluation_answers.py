"""Models' greedy answers beside the reference, one prompt at a time, for reading."""

from __future__ import annotations

import streamlit as st

from app.evaluation.answers import SideBySide, prompt_text


def answers_side_by_side(entries: list[SideBySide], models: list[str]) -> None:
    """Per prompt: the prompt, then columns reference | model A | model B ..."""
    for k, entry in enumerate(entries, start=1):
        with st.container(border=True):
            st.markdown(f"**Prompt {k}** ({entry.source.replace('_', ' ')})")
            st.text(prompt_text(entry.prompt))
            columns = st.columns(1 + len(models))
            columns[0].caption("reference")
            columns[0].text(entry.reference)
            for column, model in zip(columns[1:], models, strict=True):
                column.caption(model)
                answer = entry.answers.get(model)
                column.text("(not answered in this set)" if answer is None else answer or "(empty)")
