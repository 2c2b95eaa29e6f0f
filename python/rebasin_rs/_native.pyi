"""Type stubs of the native extension (Rust, PyO3). Use the wrappers in ``rebasin_rs``."""

import numpy as np
import numpy.typing as npt

__version__: str

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

def weight_matching(
    groups: list[tuple[int, list[tuple[int, int]]]],
    params_a: list[npt.NDArray[np.float32]],
    params_b: list[npt.NDArray[np.float32]],
    max_iter: int,
    seed: int,
    init: list[npt.NDArray[np.int64]] | None = None,
    n_threads: int | None = None,
    forward: bool = False,
    warm: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]] | None] | None = None,
) -> tuple[
    list[npt.NDArray[np.int64]],
    float,
    int,
    list[float],
    list[list[int]],
    list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]] | None],
]: ...
def group_cost(
    groups: list[tuple[int, list[tuple[int, int]]]],
    params_a: list[npt.NDArray[np.float32]],
    params_b: list[npt.NDArray[np.float32]],
    perms: list[npt.NDArray[np.int64]],
    g: int,
) -> npt.NDArray[np.float32]: ...
def visit_orders(n_groups: int, seed: int, sweeps: int) -> list[list[int]]: ...
