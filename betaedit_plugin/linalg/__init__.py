"""Pure-torch math of the three closed-form sequential editors (no models, no I/O)."""

from .closed_form import alphaedit_delta, betaedit_delta, memit_delta
from .incremental import IncrementalSolver, add_keys
from .nullspace import nullspace_basis, nullspace_projector, protected_cov

__all__ = [
    "memit_delta",
    "alphaedit_delta",
    "betaedit_delta",
    "nullspace_projector",
    "nullspace_basis",
    "protected_cov",
    "add_keys",
    "IncrementalSolver",
]
