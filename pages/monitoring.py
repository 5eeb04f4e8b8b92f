"""Monitoring: latency, traffic and engagement per model version, with A/B comparisons."""

import streamlit as st

from app.control.accounts import Role
from app.ui import auth, charts, reads, resources
from app.ui.ab_chart import ab_figure
from app.ui.analytics_widgets import chart, line_chart, scope_picker, tile_row, uncounted_note

auth.require_role(Role.VIEWER)
st.title("Monitoring")

TABS = ["Latency", "Traffic", "Engagement", "Versions (A/B)"]

with resources.database_errors():
    options = reads.filter_options()
    scope = scope_picker(options, "mon")
    aliases = [scope.alias] if scope.alias else options.aliases
    # Only the open tab is drawn (st.tabs keeps it under its key), so only its reads are
    # asked, at once with the tiles'.
    by_tab = {
        "Latency": [(reads.latency_series, (scope,))],
        "Traffic": [(reads.traffic_series, (scope,)), (reads.semantic_cache_rows, (scope,))],
        "Engagement": [(reads.engagement_series, (scope,)), (reads.session_series, (scope,))],
        "Versions (A/B)": [(reads.compare_versions, (scope, alias)) for alias in aliases],
    }
    reads.prefetch(
        (reads.tiles, (scope,)),
        (reads.requests_by_class, (scope,)),
        (reads.key_usage_rows, (scope,)),
        *by_tab.get(st.session_state.get("mon_tab") or TABS[0], []),
    )
    tile_row(reads.tiles(scope))
    uncounted_note(scope)

unknown_shown = st.toggle(
    "Show calls that reached no model",
    value=True,
    key="mon_unknown",
    help="Calls for an unknown alias or refused before routing have no model; their "
    "series are labelled 'unknown'. The tiles count them, so the charts do too unless "
    "this is off.",
)
known = (lambda rows: rows) if unknown_shown else charts.known_models

# The bins each series was queried in: a bin without traffic is a gap, not a line.
grid, engagement_grid = charts.series_grid(scope), charts.engagement_grid(scope)

if not options.models:
    st.info("No traffic recorded yet. For a demo, run `herd demo-traffic --requests 100000`.")

# Only the open tab is drawn (a tab change reruns the page): the browser then draws 2-8
# charts, not all 17, which is most of what a range change costs at 1M requests.
latency_tab, traffic_tab, engagement_tab, ab_tab = st.tabs(TABS, key="mon_tab", on_change="rerun")
if latency_tab.open:
    with resources.database_errors():
        latency = known(reads.latency_series(scope))
    with latency_tab:
        pct = {"p50": "ttft_p50_ms", "p95": "ttft_p95_ms", "p99": "ttft_p99_ms"}
        line_chart(latency, pct, title="Time to first token", y_title="ms", grid=grid, key="ttft")
        pct = {"p50": "total_p50_ms", "p95": "total_p95_ms", "p99": "total_p99_ms"}
        line_chart(latency, pct, title="Total latency", y_title="ms", grid=grid, key="latency")
if traffic_tab.open:
    with resources.database_errors():
        traffic = known(reads.traffic_series(scope))
        semantic = reads.semantic_cache_rows(scope)
    with traffic_tab:
        line_chart(
            traffic,
            {"": "requests_per_minute"},
            title="Requests",
            y_title="per min",
            grid=grid,
            empty_bin=0,
            key="traffic",
        )
        left, right = st.columns(2)
        with left:
            line_chart(
                traffic,
                {"": "tokens_per_second"},
                title="Tokens/s",
                y_title="tok/s",
                grid=grid,
                key="tokens_per_second",
            )
            line_chart(
                traffic,
                {"server": "error_rate", "client": "client_error_rate"},
                title="Errors: server (5xx) and client (4xx)",
                y_title="",
                percent=True,
                grid=grid,
                key="errors",
            )
        with right:
            queue = {"avg": "queue_avg_ms", "p95": "queue_p95_ms"}
            line_chart(traffic, queue, title="Queue wait", y_title="ms", grid=grid, key="queue")
            line_chart(
                traffic,
                {"": "cache_hit_rate"},
                title="Cache hit rate",
                y_title="",
                percent=True,
                grid=grid,
                key="cache",
            )
        if semantic:
            st.subheader("Semantic cache", help=(
                "Chat calls answered from an earlier answer to a similar question, and whether "
                "people rate those answers as well as fresh ones. A cached thumbs-up rate below "
                "the fresh one suggests a higher similarity threshold (Routing page)."
            ))  # fmt: skip
            st.dataframe(semantic, hide_index=True, width="stretch")
if engagement_tab.open:
    with resources.database_errors():
        engagement = known(reads.engagement_series(scope))
        sessions = reads.session_series(scope)
    with engagement_tab:
        fig = charts.band(
            engagement,
            "thumbs_up_ratio",
            "thumbs_up_low",
            "thumbs_up_high",
            title="Thumbs-up ratio (95% Wilson band)",
            y_title="",
            grid=engagement_grid,
        )
        chart(fig, engagement, "thumbs_up")
        left, right = st.columns(2)
        with left:
            line_chart(
                engagement,
                {"": "feedback_rate"},
                title="Feedback rate",
                y_title="",
                percent=True,
                grid=engagement_grid,
                key="feedback_rate",
            )
            line_chart(
                sessions,
                {"": "sessions"},
                title="Sessions",
                y_title="sessions",
                grid=engagement_grid,
                empty_bin=0,
                key="sessions",
            )
            line_chart(
                sessions,
                {"": "regenerate_rate"},
                title="Regenerate rate",
                y_title="",
                percent=True,
                grid=engagement_grid,
                key="regenerates",
            )
        with right:
            line_chart(
                engagement,
                {"": "comments"},
                title="Comments",
                y_title="comments",
                grid=engagement_grid,
                empty_bin=0,
                key="comments",
            )
            line_chart(
                sessions,
                {"": "turns_per_session"},
                title="Turns per session",
                y_title="turns",
                grid=engagement_grid,
                key="turns",
            )
            line_chart(
                sessions,
                {"": "one_turn_share"},
                title="Sessions abandoned after one turn",
                y_title="",
                percent=True,
                grid=engagement_grid,
                key="one_turn",
            )
if ab_tab.open:
    with ab_tab:
        shown = False
        for alias in aliases:
            with resources.database_errors():
                comparisons = reads.compare_versions(scope, alias)
            if not comparisons:
                continue
            shown = True
            st.subheader(f"Alias `{alias}`")
            versions = [comparisons[0].baseline.as_dict()] + [
                c.candidate.as_dict() for c in comparisons
            ]
            st.dataframe(versions, hide_index=True, width="stretch")
            st.plotly_chart(
                ab_figure([comparisons[0].baseline] + [c.candidate for c in comparisons]),
                config=charts.PLOTLY_CONFIG,
                key=f"ab_chart_{alias}",
            )
            rows = [c.as_dict() for c in comparisons]
            st.dataframe(rows, hide_index=True, width="stretch")
            for c in comparisons:
                up = c.thumbs_up
                if up is None:
                    continue
                verdict = "significant" if up.significant(c.alpha) else "not significant"
                st.write(
                    f"**{c.candidate.model}** vs **{c.baseline.model}**: thumbs-up "
                    f"{up.p_b:.1%} vs {up.p_a:.1%} ({up.difference:+.1%}, p = {up.p_value:.2g}, "
                    f"{verdict} at {c.alpha}); p95 latency x{c.total_p95_ratio or 0:.2f}."
                )
        if not shown:
            st.caption("No alias has more than one model version with traffic in this period.")

st.header("Usage per API key")
with resources.database_errors():
    per_key = reads.key_usage_rows(scope)
if per_key:
    st.dataframe(per_key, hide_index=True, width="stretch")
    st.caption(
        "Requests and tokens in the period as the gateways count them for key limits "
        "(table `api_key_usage`); tokens today are against the key's daily quota (UTC day)."
    )
else:
    st.caption("No API keys.")
