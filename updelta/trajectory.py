"""`updelta.trajectory.trajectory(base, checkpoints)`: the public path of the trajectory API (a re-export shim).

The scan that measures a trajectory is `updelta.api.trajectory`; its tables (torch-free) are `updelta.tables.trajectory`.
"""
from updelta.api import trajectory  # noqa: F401
from updelta.tables.trajectory import (  # noqa: F401
    UPDATE_COLS,
    Trajectory,
    as_result,
    find_checkpoints,
    is_trajectory,
    load_result,
    load_table,
    step_of,
)
