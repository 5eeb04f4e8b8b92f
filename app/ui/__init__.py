"""What the Streamlit pages share: cached resources, auth, navigation. Only here and in
pages/ is streamlit imported."""
