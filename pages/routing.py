"""Routing: traffic weights per alias, alias settings, API keys, and where traffic goes."""

from collections.abc import Callable
from datetime import UTC, datetime, time

import streamlit as st

from app.analytics.routing_traffic import traffic_per_minute, traffic_totals
from app.control.accounts import Role
from app.control.aliases import AliasSettingError, AliasSettings, AliasStore
from app.control.deployments import DeploymentError, Deployments
from app.control.keys import ApiKeyError, ApiKeys, KeyPolicy
from app.db.pgvector import pgvector_problem
from app.ui import admin_actions, auth, changes, charts, resources, routing_rows
from app.ui.analytics_widgets import chart

REFRESH_S = 5.0
FLASH_KEY = "routing_flash"
NEW_KEY = "routing_new_key"
LIVE_WINDOWS_MIN = {"Last 15 minutes": 15, "Last hour": 60, "Last 3 hours": 180}

operator = auth.require_role(Role.VIEWER)
can_route = operator.role.allows(Role.OPERATOR)
can_key = operator.role.allows(Role.ADMIN)
st.title("Routing", help=(
    "Viewers may look. Operators change traffic weights and alias settings. API keys grant "
    "access to the gateway, so only admins create and revoke them."
))  # fmt: skip
settings = resources.settings()
admin = admin_actions.admin()
actor = admin_actions.page_actor(operator, "routing")

with resources.database_errors():
    engine = resources.database().engine
    deployments = Deployments(engine, resources.settings().worker_live_s)
    alias_store = AliasStore(engine)
    api_keys = ApiKeys(engine)
    grouped = routing_rows.by_alias(deployments.all())
    stored = alias_store.all()
    keys = api_keys.list()


def change(action: str, run: Callable[[], object]) -> None:
    changes.run_change(
        FLASH_KEY, action, run, refused=(DeploymentError, AliasSettingError, ApiKeyError),
        done="saved",
    )  # fmt: skip


changes.show_confirmation(FLASH_KEY)

# ---- traffic weights ---------------------------------------------------------------------
st.header("Traffic weights")
st.caption(
    "Weights are relative: 95 and 5 send 5 % of an alias's calls to a canary, 50 and 50 make "
    "an A/B test. A conversation stays on its worker, so the split applies to new sessions. "
    "Gateways apply a saved change within a second."
)
if not grouped:
    st.info("Nothing deployed yet; deploy a model on the Deployments page.")
for alias, members in grouped.items():
    with st.container(border=True):
        st.subheader(f"`{alias}`")
        new_weights: dict[int, int] = {}
        if can_route:
            cols = st.columns(min(len(members), 4))
            for i, d in enumerate(members):
                new_weights[d.id] = int(
                    cols[i % len(cols)].number_input(
                        f"{d.model_name} (deployment {d.id})",
                        min_value=0,
                        max_value=10_000,
                        value=d.traffic_weight,
                        step=5,
                        key=f"weight_{d.id}",
                    )
                )
        st.dataframe(
            routing_rows.split_rows(members, new_weights), hide_index=True, width="stretch"
        )
        if can_route:
            changed = any(new_weights[d.id] != d.traffic_weight for d in members)
            if st.button(
                "Save weights", key=f"weights_save_{alias}", disabled=not changed, type="primary"
            ):
                change(
                    f"set the weights of {alias}",
                    lambda alias=alias, w=new_weights: admin.set_traffic_weights(actor, alias, w),
                )

# ---- alias settings ----------------------------------------------------------------------
st.header("Alias settings")
aliases = sorted(set(grouped) | set(stored))
defaults = AliasSettings.defaults(settings)
if aliases:
    st.dataframe(
        routing_rows.alias_rows(aliases, stored, defaults), hide_index=True, width="stretch"
    )
embedding_aliases = sorted(
    {d.alias for members in grouped.values() for d in members if d.serving.embeddings}
)
with resources.database_errors():
    pgvector_off = pgvector_problem(engine)
if pgvector_off is not None:
    st.warning(f"The semantic cache is off: {pgvector_off}.")
elif not embedding_aliases:
    st.caption(
        "The semantic cache needs an embedding alias: deploy a model with “Serve embeddings” "
        "on the Deployments page."
    )
if aliases and can_route:
    chosen = st.selectbox("Alias", aliases, key="alias_pick")
    current = stored.get(chosen, defaults)
    with st.form(f"alias_form_{chosen}"):
        cols = st.columns(4)
        cache_on = cols[0].toggle(
            "Response cache", value=current.cache_enabled, key=f"alias_cache_{chosen}",
            help="Answers deterministic calls (temperature 0 or a seed) from the cache.",
        )  # fmt: skip
        ttl = cols[1].number_input(
            "Cache TTL (s)", min_value=1.0, value=float(current.cache_ttl_s), step=60.0,
            key=f"alias_ttl_{chosen}",
        )  # fmt: skip
        log_text = cols[2].toggle(
            "Log prompt and answer text", value=current.log_text, key=f"alias_log_{chosen}",
            help="Off: requests are still counted and timed, their text is not stored.",
        )  # fmt: skip
        rpm = cols[3].number_input(
            "Rate limit (requests/min, 0 = none)", min_value=0,
            value=current.rate_limit_rpm or 0, key=f"alias_rpm_{chosen}",
            help="Per gateway replica; calls above it get 429 with Retry-After.",
        )  # fmt: skip
        semantic = st.columns([2, 1])
        embed_choices = ["off", *embedding_aliases]
        if current.semantic_cache_alias and current.semantic_cache_alias not in embed_choices:
            embed_choices.append(current.semantic_cache_alias)
        embed_alias = semantic[0].selectbox(
            "Semantic cache: embedding alias", embed_choices,
            index=embed_choices.index(current.semantic_cache_alias or "off"),
            key=f"alias_semantic_{chosen}", disabled=pgvector_off is not None,
            help="Answers a chat call from an earlier answer to a question that means the "
            "same (same system prompt and sampling settings), embedded by this alias.",
        )  # fmt: skip
        threshold = semantic[1].number_input(
            "Similarity threshold", min_value=0.01, max_value=1.0, step=0.01,
            value=float(current.semantic_cache_threshold), key=f"alias_threshold_{chosen}",
            help="Cosine similarity of the two questions above which the cached answer is "
            "reused; Monitoring compares thumbs-up rates of cached and fresh answers.",
        )  # fmt: skip
        if st.form_submit_button("Save alias settings"):
            change(
                f"save the settings of {chosen}",
                lambda: admin.set_alias_settings(
                    actor,
                    chosen,
                    AliasSettings(
                        cache_enabled=bool(cache_on),
                        cache_ttl_s=float(ttl),
                        log_text=bool(log_text),
                        rate_limit_rpm=int(rpm) or None,
                        semantic_cache_alias=None if embed_alias == "off" else str(embed_alias),
                        semantic_cache_threshold=float(threshold),
                    ),
                ),
            )

# ---- API keys ----------------------------------------------------------------------------
st.header("API keys")
st.caption(
    "Once any key exists, every call to the gateway needs `Authorization: Bearer <key>`. "
    "Only a hash of each key is stored; a key is shown once, when it is created."
)
created = st.session_state.pop(NEW_KEY, None)
if created is not None:
    st.success(f"Key **{created.name}** created. Copy it now: it will not be shown again.")
    st.code(created.key, language=None)
if keys:
    st.dataframe(routing_rows.key_rows(keys), hide_index=True, width="stretch")
else:
    st.caption("No keys yet: the gateway answers calls without one.")
if can_key:
    left, right = st.columns(2)
    with left, st.form("key_create", clear_on_submit=True):
        name = st.text_input("New key's name", key="key_name", placeholder="e.g. support-bot")
        scopes = st.multiselect(
            "Aliases it may call (none chosen: every alias)", aliases, key="key_scopes"
        )
        admin_scope = st.checkbox("Admin scope (may call /admin/v1)", key="key_admin")
        limit_cols = st.columns(3)
        rpm_limit = limit_cols[0].number_input(
            "Requests/min (0 = none)", min_value=0, key="key_rpm"
        )
        tpm_limit = limit_cols[1].number_input("Tokens/min (0 = none)", min_value=0, key="key_tpm")
        daily = limit_cols[2].number_input("Tokens/day (0 = none)", min_value=0, key="key_daily")
        expires_on = st.date_input("Expires (optional)", value=None, key="key_expires")
        if st.form_submit_button("Create key"):
            try:
                key_policy = KeyPolicy(
                    scopes=tuple(scopes) or None,
                    admin=admin_scope,
                    expires_at=(
                        datetime.combine(expires_on, time(), tzinfo=UTC) if expires_on else None
                    ),
                    rate_limit_rpm=int(rpm_limit) or None,
                    rate_limit_tpm=int(tpm_limit) or None,
                    daily_token_quota=int(daily) or None,
                )
                with resources.database_errors():
                    st.session_state[NEW_KEY] = admin.create_key(actor, name, key_policy)
            except ApiKeyError as exc:
                st.error(f"Cannot create the key: {exc}")
            else:
                st.rerun()
    active = {f"{k.name} ({k.prefix}…, id {k.id})": k for k in keys if k.active}
    with right:
        if active:
            label = st.selectbox("Key to revoke", list(active), key="key_revoke_pick")
            sure = st.checkbox("Calls with this key will fail", key="key_revoke_confirm")
            if st.button("Revoke", key="key_revoke", disabled=not sure):
                change("revoke the key", lambda: admin.revoke_key(actor, str(active[label].id)))
elif can_route:
    st.caption("Creating and revoking keys needs the admin role.")


# ---- live traffic ------------------------------------------------------------------------
@st.fragment(run_every=REFRESH_S)
def live_traffic() -> None:
    """Requests per worker per minute, refreshed in place every REFRESH_S seconds."""
    cols = st.columns(2)
    window = cols[0].selectbox("Window", list(LIVE_WINDOWS_MIN), key="live_window")
    alias = cols[1].selectbox("Alias", ["(all)", *aliases], key="live_alias")
    minutes = LIVE_WINDOWS_MIN[window]
    picked = None if alias == "(all)" else alias
    with resources.database_errors():
        per_minute = traffic_per_minute(engine, minutes, picked)
        totals = traffic_totals(engine, minutes, picked)
    grid = charts.last_minutes(minutes)
    fig = charts.lines(
        per_minute, {"": "requests"}, title="Requests per minute", y_title="requests",
        group="target", grid=grid, empty_bin=0,
    )  # fmt: skip
    chart(fig, per_minute, "routing_requests")
    if any(r["errors"] for r in per_minute):
        fig = charts.lines(
            per_minute, {"": "errors"}, title="Errors per minute", y_title="errors",
            group="target", grid=grid, empty_bin=0,
        )  # fmt: skip
        chart(fig, per_minute, "routing_errors")
    if totals:
        st.dataframe(totals, hide_index=True, width="stretch")


st.header("Where traffic goes")
st.caption(
    "Per worker and model version; 'response cache' are calls answered without a worker, "
    "'not routed' those refused before reaching one (no live worker, all busy, rate limit)."
)
live_traffic()
