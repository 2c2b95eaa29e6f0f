//! PyO3 bindings of rebasin-rs: convert, validate, release the GIL, map errors. No algorithms here.

use numpy::{PyArray1, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use rebasin_core::lap::{self, CostValue, WarmStart};
use rebasin_core::LapError;

fn lap_error(e: LapError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

type SolveOut<'py> = (
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    f64,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
);

fn contiguous<'a, T: numpy::Element>(a: &'a PyReadonlyArray2<'_, T>) -> PyResult<&'a [T]> {
    // `as_slice` also accepts Fortran order, which would read the matrix transposed.
    let c_order = a.is_c_contiguous().then(|| a.as_slice().ok()).flatten();
    c_order.ok_or_else(|| {
        PyTypeError::new_err(
            "cost: the native solver takes a C-contiguous array; call rebasin_rs.solve_lap, \
             which converts any layout",
        )
    })
}

fn to_i64(v: Vec<usize>) -> Vec<i64> {
    v.into_iter().map(|x| x as i64).collect()
}

fn run<'py, T: CostValue + numpy::Element>(
    py: Python<'py>,
    cost: &[T],
    shape: [usize; 2],
    maximize: bool,
    warm: Option<(&[i64], &[f64], &[f64])>,
) -> PyResult<SolveOut<'py>> {
    let warm = warm.map(|(row_to_col, u, v)| WarmStart { row_to_col, u, v });
    let sol = py
        .detach(|| lap::solve(cost, shape[0], shape[1], maximize, warm))
        .map_err(lap_error)?;
    Ok((
        PyArray1::from_vec(py, to_i64(sol.row_ind)),
        PyArray1::from_vec(py, to_i64(sol.col_ind)),
        sol.objective,
        PyArray1::from_vec(py, sol.u),
        PyArray1::from_vec(py, sol.v),
    ))
}

/// Solves a dense linear assignment problem (Jonker-Volgenant) with the GIL released.
///
/// Low-level: `cost` must be a C-contiguous float32 or float64 array; the public wrapper
/// `rebasin_rs.solve_lap` accepts any array-like. Returns `(row_ind, col_ind, objective, u, v)`.
#[pyfunction]
#[pyo3(signature = (cost, maximize, warm_row_to_col=None, warm_u=None, warm_v=None))]
fn solve_lap<'py>(
    py: Python<'py>,
    cost: &Bound<'py, PyAny>,
    maximize: bool,
    warm_row_to_col: Option<PyReadonlyArray1<'py, i64>>,
    warm_u: Option<PyReadonlyArray1<'py, f64>>,
    warm_v: Option<PyReadonlyArray1<'py, f64>>,
) -> PyResult<SolveOut<'py>> {
    let warm = match (&warm_row_to_col, &warm_u, &warm_v) {
        (Some(r), Some(u), Some(v)) => Some((
            r.as_slice()
                .map_err(|_| PyTypeError::new_err("warm_row_to_col must be contiguous"))?,
            u.as_slice()
                .map_err(|_| PyTypeError::new_err("warm_u must be contiguous"))?,
            v.as_slice()
                .map_err(|_| PyTypeError::new_err("warm_v must be contiguous"))?,
        )),
        (None, None, None) => None,
        _ => {
            return Err(PyValueError::new_err(
                "warm_row_to_col, warm_u and warm_v go together: pass all three or none",
            ))
        }
    };
    if let Ok(a) = cost.extract::<PyReadonlyArray2<'py, f64>>() {
        let shape = [a.shape()[0], a.shape()[1]];
        return run(py, contiguous(&a)?, shape, maximize, warm);
    }
    if let Ok(a) = cost.extract::<PyReadonlyArray2<'py, f32>>() {
        let shape = [a.shape()[0], a.shape()[1]];
        return run(py, contiguous(&a)?, shape, maximize, warm);
    }
    Err(PyTypeError::new_err(
        "cost: the native solver takes a 2-D float32 or float64 numpy array; call \
         rebasin_rs.solve_lap, which converts any real array-like",
    ))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(solve_lap, m)?)?;
    Ok(())
}
