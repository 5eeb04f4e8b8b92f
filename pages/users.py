"""Users: dashboard accounts for admins: create, disable, change role, reset password."""

from collections.abc import Callable

import streamlit as st

from app.control.accounts import AccountError, Role
from app.ui import admin_actions, auth, changes, resources

FLASH_KEY = "users_flash"

operator = auth.require_role(Role.ADMIN)
st.title("Users")
st.caption(
    "Viewers look, operators deploy and route, admins also manage keys and accounts. "
    "A disabled account is logged out at its next page view. The last enabled admin cannot "
    "be disabled, demoted or removed."
)
admin = admin_actions.admin()
actor = admin_actions.page_actor(operator, "users")

with resources.database_errors():
    users = admin.accounts().list()


def change(action: str, run: Callable[[], object]) -> None:
    changes.run_change(FLASH_KEY, action, run, refused=(AccountError,))


changes.show_confirmation(FLASH_KEY)
st.dataframe(
    [
        {
            "name": u.name,
            "role": u.role.value,
            "state": "disabled" if u.disabled else "enabled",
            "created": u.created_at.strftime("%Y-%m-%d %H:%M"),
            "last login": u.last_login_at.strftime("%Y-%m-%d %H:%M") if u.last_login_at else "-",
        }
        for u in users
    ],
    hide_index=True,
    width="stretch",
)

left, right = st.columns(2)
with left, st.form("user_create", clear_on_submit=True):
    st.subheader("New account")
    new_name = st.text_input("Name", key="user_new_name")
    new_password = st.text_input("Password (8+ characters)", type="password", key="user_new_pw")
    new_role = st.selectbox("Role", [r.value for r in Role], index=1, key="user_new_role")
    if st.form_submit_button("Create account"):
        change(
            f"create {new_name!r}",
            lambda: admin.add_user(actor, new_name, new_password, Role(new_role)),
        )

with right:
    st.subheader("Change an account")
    by_name = {u.name: u for u in users}
    picked = st.selectbox("Account", list(by_name), key="user_pick")
    if picked:
        user = by_name[picked]
        state = "disabled" if user.disabled else "enabled"
        st.caption(f"{picked}: {user.role.value}, {state}")
        roles = [r.value for r in Role]
        role = st.selectbox(
            "Role", roles, index=roles.index(user.role.value), key=f"user_role_{picked}"
        )
        cols = st.columns(2)
        if cols[0].button("Save role", key="user_role_save"):
            change(
                f"change the role of {picked!r}", lambda: admin.set_role(actor, picked, Role(role))
            )
        if user.disabled:
            if cols[1].button("Enable", key="user_enable"):
                change(f"enable {picked!r}", lambda: admin.set_disabled(actor, picked, False))
        elif cols[1].button("Disable", key="user_disable"):
            change(f"disable {picked!r}", lambda: admin.set_disabled(actor, picked, True))
        with st.form(f"user_password_{picked}", clear_on_submit=True):
            password = st.text_input("New password", type="password", key=f"user_pw_{picked}")
            if st.form_submit_button("Reset password"):
                change(
                    f"reset the password of {picked!r}",
                    lambda: admin.reset_password(actor, picked, password),
                )
