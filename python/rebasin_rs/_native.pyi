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
