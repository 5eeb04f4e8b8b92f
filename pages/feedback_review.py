"""Feedback review: browse rated conversations, read them, tag them, correct answers."""

from datetime import timedelta
from functools import partial

import streamlit as st

from app.analytics.review import (
    ReviewError,
    ReviewFilter,
    add_tag,
    remove_tag,
    save_correction,
)
from app.control.accounts import Role
from app.ui import auth, reads, resources
from app.ui.charts import csv_bytes
from app.ui.tables import readable

operator = auth.require_role(Role.VIEWER)
can_edit = operator.role.allows(Role.OPERATOR)
st.title("Feedback review")

with resources.database_errors():
    engine = resources.database().engine
    options = reads.filter_options()

cols = st.columns(5)
rating = cols[0].selectbox("Rating", ["any", "thumbs down", "thumbs up"], index=1)
models = {"(any)": None, **{name: model_id for model_id, name in options.models.items()}}
model = cols[1].selectbox("Model version", list(models))
days = cols[2].number_input("Last days", min_value=1, max_value=3650, value=30)
search = cols[3].text_input("Text contains", help="In the comment, the prompt or the answer")
tag = cols[4].text_input("Tag")
corrected = st.radio("Corrected", ["any", "not yet", "yes"], horizontal=True)

now = reads.now("review")
review_filter = ReviewFilter(
    rating={"any": None, "thumbs down": -1, "thumbs up": 1}[rating],
    model_id=models[model],
    start=now - timedelta(days=int(days)),
    search=search or None,
    tag=tag or None,
    corrected={"any": None, "not yet": False, "yes": True}[corrected],
    limit=200,
)
with resources.database_errors():
    rows = reads.list_rated(review_filter)

if not rows:
    st.info("No rated conversations match these filters.")
    st.stop()

st.dataframe(readable(rows), hide_index=True, width="stretch")
st.download_button("CSV", partial(csv_bytes, rows), file_name="feedback.csv", mime="text/csv")


def _forget_reviews() -> None:
    # The list and the exchange show tags and corrections: the next run reads them anew.
    reads.list_rated.clear()
    reads.conversation.clear()


def _label(row: dict) -> str:
    thumb = "+" if row["net"] > 0 else "-" if row["net"] < 0 else "0"
    when = f"{row['rated_at']:%Y-%m-%d %H:%M}"
    return f"[{thumb}] {when} {row['model'] or ''}: {row['comment'] or ''}"


by_label = {_label(row): row["request_id"] for row in rows}
picked = st.selectbox("Conversation", list(by_label))
request_id = by_label[picked]
with resources.database_errors():
    found = reads.conversation(request_id)
if found is None:
    st.warning("That request no longer exists.")
    st.stop()

st.subheader("Exchange")
st.caption(
    f"{found['model'] or 'unknown model'} @ {found['alias'] or '-'}, "
    f"{found['created_at']:%Y-%m-%d %H:%M:%S} UTC, request {found['request_id']}"
)
prompt = found["prompt"]
if isinstance(prompt, list):
    for message in prompt:
        role = message.get("role", "user") if isinstance(message, dict) else "user"
        content = message.get("content", "") if isinstance(message, dict) else str(message)
        with st.chat_message("assistant" if role == "assistant" else "user"):
            st.write(f"*{role}*: {content}")
elif prompt is not None:
    with st.chat_message("user"):
        st.write(str(prompt))
else:
    st.caption("The prompt was not logged.")
with st.chat_message("assistant"):
    st.write(found["response"] or "*(no answer logged)*")
for vote in found["votes"]:
    thumb = "thumbs up" if vote["rating"] == 1 else "thumbs down"
    st.write(f"**{thumb}** by {vote['user_id'] or 'anonymous'}: {vote['comment'] or ''}")
st.write("Tags: " + (", ".join(f"`{t}`" for t in found["tags"]) or "none"))
if found["correction"]:
    st.success(f"Corrected answer (by {found['corrected_by']}):\n\n{found['correction']}")

if can_edit:
    st.subheader("Review")
    tag_cols = st.columns(2)
    with tag_cols[0].form("add_tag", clear_on_submit=True):
        new_tag = st.text_input("Add a tag", key="new_tag")
        if st.form_submit_button("Add tag") and new_tag:
            try:
                add_tag(engine, request_id, new_tag, operator.name)
                _forget_reviews()
                st.rerun()
            except ReviewError as exc:
                st.error(str(exc))
    if found["tags"]:
        with tag_cols[1].form("remove_tag"):
            old_tag = st.selectbox("Remove a tag", found["tags"])
            if st.form_submit_button("Remove tag"):
                remove_tag(engine, request_id, old_tag)
                _forget_reviews()
                st.rerun()
    with st.form("correction"):
        text = st.text_area(
            "Corrected answer",
            value=found["correction"] or found["response"] or "",
            help="Used as the 'chosen' answer of a preference pair in the dataset export.",
            key="correction_text",
        )
        if st.form_submit_button("Save correction"):
            try:
                save_correction(engine, request_id, text, operator.name)
                _forget_reviews()
                st.success("Correction saved.")
            except ReviewError as exc:
                st.error(str(exc))
