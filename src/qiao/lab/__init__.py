"""``qiao lab``: several simulated hosts on one kernel, for demos and tests."""
