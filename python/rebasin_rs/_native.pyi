"""Type stubs of the native extension (Rust, PyO3). Use the wrappers in ``rebasin_rs``.

Every error of the engine is raised as ``rebasin_rs.RebasinError`` (defined in Python, in
``rebasin_rs._errors``) with ``group``, ``param`` and ``axis`` filled from the names passed in;
inputs of the wrong type raise ``TypeError``.
"""

from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str
# The largest ``n_threads`` accepted (larger counts raise RebasinError).
MAX_THREADS: int

# (name, size, [(parameter index, axis), ...])
_Group = tuple[str, int, list[tuple[int, int]]]
_Warm = tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]

def solve_lap(
    cost: npt.NDArray[np.float32] | npt.NDArray[np.float64],
    maximize: bool,
    warm_row_to_col: npt.NDArray[np.int64] | None = None,
    warm_u: npt.NDArray[np.float64] | None = None,
    warm_v: npt.NDArray[np.float64] | None = None,
) -> tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    float,
    npt.NDArray[np.float64],
    npt.NDArray[np.float64],
]: ...

def assign_cold(
    cost: npt.NDArray[np.float32] | npt.NDArray[np.float64], maximize: bool
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...

def weight_matching(
    groups: list[_Group],
    names: list[str],
    params_a: list[npt.NDArray[np.float32] | npt.NDArray[np.uint16]],
    params_b: list[npt.NDArray[np.float32] | npt.NDArray[np.uint16]],
    max_iter: int,
    seed: int,
    init: list[npt.NDArray[np.int64]] | None = None,
    n_threads: int | None = None,
    forward: bool = False,
    warm: list[_Warm | None] | None = None,
    dtypes_a: list[str] | None = None,  # "float32" | "float16" | "bfloat16" (uint16 bit patterns)
    dtypes_b: list[str] | None = None,
    max_cost_bytes: int | None = None,
) -> tuple[
    list[npt.NDArray[np.int64]],
    float,
    int,
    list[float],
    list[list[int]],
    list[_Warm | None],
    dict[str, float],
]: ...

def weight_matching_on(
    groups: list[_Group],
    names: list[str],
    shapes: list[tuple[int, ...]],
    products: Any,  # add_products(n, requests), objective(parts), first_non_finite(params)
    max_iter: int,
    seed: int,
    init: list[npt.NDArray[np.int64]] | None = None,
    n_threads: int | None = None,
    forward: bool = False,
    warm: list[_Warm | None] | None = None,
    max_cost_bytes: int | None = None,
) -> tuple[
    list[npt.NDArray[np.int64]],
    float,
    int,
    list[float],
    list[list[int]],
    list[_Warm | None],
    dict[str, float],
]: ...
def group_cost(
    groups: list[_Group],
    names: list[str],
    params_a: list[npt.NDArray[np.float32] | npt.NDArray[np.uint16]],
    params_b: list[npt.NDArray[np.float32] | npt.NDArray[np.uint16]],
    perms: list[npt.NDArray[np.int64]],
    g: int,
    dtypes_a: list[str] | None = None,
    dtypes_b: list[str] | None = None,
) -> npt.NDArray[np.float32]: ...
def visit_orders(n_groups: int, seed: int, sweeps: int) -> list[list[int]]: ...
