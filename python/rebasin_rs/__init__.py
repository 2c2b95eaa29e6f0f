"""rebasin-rs: Git Re-Basin in Rust.

Align and merge neural networks through their permutation symmetries (Ainsworth, Hayase and
Srinivasa, "Git Re-Basin", ICLR 2023). The engine is Rust: an exact Jonker-Volgenant linear
assignment solver, which is also a drop-in replacement for
``scipy.optimize.linear_sum_assignment``.

Example:
    >>> import numpy as np
    >>> import rebasin_rs as rb
    >>> rows, cols = rb.linear_sum_assignment(np.array([[4.0, 1.0], [2.0, 3.0]]))
    >>> cols.tolist()
    [1, 0]

Bad input raises :class:`RebasinError` (a ``ValueError``) whose ``group``, ``param`` and ``axis``
name the permutation, parameter and axis concerned.

``import rebasin_rs`` never imports torch; the PyTorch adapters live in ``rebasin_rs.torch``.
"""

from rebasin_rs import specs
from rebasin_rs._errors import RebasinError
from rebasin_rs._lap import LapSolution, linear_sum_assignment, solve_lap
from rebasin_rs._matching import MatchingResult, apply_permutation, group_cost, weight_matching
from rebasin_rs._cycle import cycle_error
from rebasin_rs._merge import MergeManyResult, interpolate, loss_barrier, merge_many
from rebasin_rs._native import __version__
from rebasin_rs._spec import PermutationSpec

__all__ = [
    "LapSolution",
    "MatchingResult",
    "MergeManyResult",
    "PermutationSpec",
    "RebasinError",
    "__version__",
    "apply_permutation",
    "cycle_error",
    "group_cost",
    "interpolate",
    "linear_sum_assignment",
    "loss_barrier",
    "merge_many",
    "solve_lap",
    "specs",
    "weight_matching",
]
