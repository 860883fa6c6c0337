"""Pure-torch math of the three closed-form sequential editors (no models, no I/O)."""

from .closed_form import alphaedit_delta, betaedit_delta, memit_delta
from .incremental import DEFAULT_REFRESH_EVERY_FLOAT32, AutoFormSolver, IncrementalSolver, add_keys, solver_device_bytes
from .nullspace import nullspace_basis, nullspace_projector, protected_cov
from .placement import Placement
from .solver import DenseSolver, FactoredSolver, Solver

__all__ = [
    "memit_delta",
    "alphaedit_delta",
    "betaedit_delta",
    "nullspace_projector",
    "nullspace_basis",
    "protected_cov",
    "add_keys",
    "IncrementalSolver",
    "Solver",
    "FactoredSolver",
    "DenseSolver",
    "AutoFormSolver",
    "Placement",
    "solver_device_bytes",
    "DEFAULT_REFRESH_EVERY_FLOAT32",
]
