# Intentionally empty: the platform's per-tenant user code goes here.
