"""Linear assignment: scipy's contract on the Rust Jonker-Volgenant solver."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rebasin_rs import _native
from rebasin_rs._errors import RebasinError

__all__ = ["LapSolution", "linear_sum_assignment", "solve_lap"]


@dataclass(frozen=True)
class LapSolution:
    """An optimal assignment and the dual potentials that certify it.

    Attributes:
        row_ind: Assigned rows, increasing (int64).
        col_ind: ``col_ind[k]`` is the column assigned to ``row_ind[k]`` (int64).
        objective: Total cost of the assignment, summed in float64 from the input entries.
        u: Row potentials (float64).
        v: Column potentials (float64). When minimising, ``cost[i, j] - u[i] - v[j] >= 0``
            everywhere and ``== 0`` on the assigned pairs (``<= 0`` when maximising); in a
            rectangular problem the unassigned rows or columns of the larger side have potential
            zero. Entries above ``2**960`` are solved on a copy scaled by a power of two (their
            differences would overflow); the potentials are scaled back and, for a rectangular
            matrix whose entries come close to the float maximum, can then overflow to infinity
            (the assignment is still optimal).
        maximize: Whether the problem was a maximisation.

    Example:
        >>> import numpy as np, rebasin_rs as rb
        >>> sol = rb.solve_lap(np.array([[4.0, 1.0], [2.0, 3.0]]))
        >>> sol.objective
        3.0
    """

    row_ind: np.ndarray
    col_ind: np.ndarray
    objective: float
    u: np.ndarray
    v: np.ndarray
    maximize: bool

    def __iter__(self):
        """Unpacks as ``(row_ind, col_ind)``, like ``linear_sum_assignment``."""
        return iter((self.row_ind, self.col_ind))


def _as_cost(cost: Any, name: str) -> tuple[np.ndarray, bool]:
    """Returns a C-contiguous float32/float64 view or copy of ``cost`` and whether it is the
    transpose of the input (a Fortran-ordered input is solved through its transpose, uncopied).

    The conversion is scipy's (``PyArray_ContiguousFromAny(cost, NPY_DOUBLE)``): an array (or an
    object with ``__array__``) must cast *safely* to float64 (bool, integers, float16/32/64), else
    TypeError; a list or tuple is read element by element as floats (numeric strings are parsed,
    None is NaN); then anything but a matrix is a ValueError.
    """
    a = np.asarray(cost)
    # `kind in "biuf"` with at most 8 bytes is exactly what casts safely to float64 (long double
    # is kind "f" with more bytes); np.can_cast would say the same, at a third of a tiny call.
    if not (a.dtype.kind in "biuf" and a.dtype.itemsize <= 8):
        if isinstance(cost, (list, tuple)):
            a = np.asarray(cost, dtype=np.float64)
        else:
            real = f"; pass {name}.real" if a.dtype.kind == "c" else ""
            raise TypeError(
                f"Cannot cast array data from {a.dtype!r} to dtype('float64') according to the "
                f"rule 'safe': {name} must be real numbers (bool, integer or float of at most 64 "
                f"bits){real}"
            )
    if a.ndim != 2:
        raise RebasinError(
            f"{name}: expected a matrix (2-D array), got a {a.ndim}-D array of shape {a.shape}; "
            "pass a matrix of shape (rows, cols)"
        )
    if a.dtype != np.float64 and a.dtype != np.float32:
        a = a.astype(np.float64)
    if not a.flags.aligned:  # a view of a buffer at an odd offset: the solver reads aligned memory
        return np.array(a, order="C"), False
    if a.flags.c_contiguous:
        return a, False
    if a.flags.f_contiguous:
        return a.T, True
    return np.ascontiguousarray(a), False


def solve_lap(
    cost: Any,
    *,
    maximize: bool = False,
    warm_start: LapSolution | None = None,
) -> LapSolution:
    """Solves the linear assignment problem exactly (Jonker-Volgenant), with dual potentials.

    The smaller side is assigned completely; rectangular matrices of either orientation are
    solved without padding. ``+inf`` (``-inf`` when maximising) marks a forbidden pair. The GIL is
    released while solving, and a C-contiguous float32/float64 matrix is read in place.

    Args:
        cost: A 2-D real array-like (float16/32/64, integers or booleans; any layout).
        maximize: Maximise the total instead of minimising it.
        warm_start: A previous solution of a matrix of the same shape and sense. The result is the
            same optimum as a cold solve, found faster when the matrix changed little (the
            potentials are reused and every previous pair that is still tight is kept). Any warm
            start is safe: potentials far larger than the entries (more than 1024 times, e.g. the
            solution of the matrix times 1e16), which rounding would make meaningless, are set
            aside and the solve starts cold.

    Returns:
        A :class:`LapSolution` (which also unpacks as ``row_ind, col_ind``).

    Raises:
        RebasinError: (a ``ValueError``) ``cost`` is not 2-D, holds NaN or the infinity that
            cannot mean "forbidden", or is infeasible; or ``warm_start`` does not fit.
        TypeError: ``cost`` does not cast safely to float64 (strings, objects, dates, complex,
            long double), or ``warm_start`` is not a solution.

    Example:
        >>> import numpy as np, rebasin_rs as rb
        >>> c = np.array([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]])
        >>> sol = rb.solve_lap(c)
        >>> sol.col_ind.tolist(), sol.objective
        ([1, 0, 2], 5.0)
        >>> c[0, 0] -= 0.5
        >>> rb.solve_lap(c, warm_start=sol).objective
        5.0
    """
    maximize = bool(maximize)
    rows, cols, objective, u, v = _solve(cost, "cost", maximize, warm_start)
    return LapSolution(rows, cols, objective, u, v, maximize)


def _solve(cost: Any, name: str, maximize: bool, warm_start: LapSolution | None = None):
    """``(rows, cols, objective, u, v)`` in the input's orientation."""
    a, transposed = _as_cost(cost, name)
    warm = ()
    if warm_start is not None:
        warm = _warm_arrays(warm_start, a.shape[::-1] if transposed else a.shape, maximize)
        if transposed:
            r2c, u, v = warm
            c2r = np.full(a.shape[0], -1, dtype=np.int64)
            assigned = r2c >= 0
            c2r[r2c[assigned]] = np.flatnonzero(assigned)
            warm = (c2r, v, u)
    rows, cols, objective, u, v = _native.solve_lap(a, maximize, *warm)
    if transposed:
        order = np.argsort(cols, kind="stable")
        rows, cols, u, v = cols[order], rows[order], v, u
    return rows, cols, objective, u, v


def _warm_arrays(
    warm: Any, shape: tuple[int, int], maximize: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not isinstance(warm, LapSolution):
        raise TypeError(
            f"warm_start must be a LapSolution returned by solve_lap, got {type(warm).__name__}"
        )
    if warm.maximize != maximize:
        raise RebasinError(
            f"warm_start was solved with maximize={warm.maximize} but this call has "
            f"maximize={maximize}; pass a solution of the same sense"
        )
    if len(warm.u) != shape[0] or len(warm.v) != shape[1]:
        raise RebasinError(
            f"warm_start is for a {len(warm.u)}x{len(warm.v)} matrix but cost is "
            f"{shape[0]}x{shape[1]}; pass a solution of a matrix of the same shape"
        )
    rows = np.asarray(warm.row_ind, dtype=np.int64)
    cols = np.asarray(warm.col_ind, dtype=np.int64)
    if rows.shape != cols.shape or rows.ndim != 1:
        raise RebasinError("warm_start.row_ind and warm_start.col_ind must be 1-D of one length")
    if rows.size and (rows.min() < 0 or rows.max() >= shape[0]):
        raise RebasinError(f"warm_start.row_ind must lie in 0..{shape[0]}")
    r2c = np.full(shape[0], -1, dtype=np.int64)
    r2c[rows] = cols
    u = np.ascontiguousarray(warm.u, dtype=np.float64)
    v = np.ascontiguousarray(warm.v, dtype=np.float64)
    return r2c, u, v


def _linear_sum_assignment(cost_matrix: Any, maximize: Any) -> tuple[np.ndarray, np.ndarray]:
    """:func:`linear_sum_assignment` of anything but a C-ordered float64 array and a bool, which
    the native function solves without coming here: converted as scipy converts."""
    a, transposed = _as_cost(cost_matrix, "cost_matrix")
    rows, cols = _native.assign_cold(a, bool(maximize))
    if transposed:
        order = np.argsort(cols, kind="stable")
        rows, cols = cols[order], rows[order]
    return rows, cols


#: Native, as scipy's is (documented in the Rust bindings, rust/python/src/lib.rs).
linear_sum_assignment = _native.linear_sum_assignment
__test__ = {"linear_sum_assignment": linear_sum_assignment.__doc__}
