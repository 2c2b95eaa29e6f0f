//! PyO3 bindings of rebasin-rs: convert, validate, release the GIL, map errors. No algorithms here.

use numpy::npyffi::{NPY_ARRAY_ALIGNED, NPY_ARRAY_DEFAULT, NPY_TYPES, PY_ARRAY_API};
use numpy::{
    PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use rebasin_core::lap::{self, CostValue, WarmStart};
use rebasin_core::{pool, LapError, MatchError, PoolError};
use std::os::raw::c_int;

// The one Python exception family (a ValueError), defined in Python so that users can import,
// catch and subclass it like any class of theirs.
pyo3::import_exception!(rebasin_rs._errors, RebasinError);

mod matching;
mod products;

/// `RebasinError(message, group, param, axis)`.
fn rebasin_error(
    msg: impl Into<String>,
    group: Option<String>,
    param: Option<String>,
    axis: Option<usize>,
) -> PyErr {
    RebasinError::new_err((msg.into(), group, param, axis))
}

/// A `RebasinError` that concerns no group, parameter or axis.
pub(crate) fn plain_error(msg: impl Into<String>) -> PyErr {
    rebasin_error(msg, None, None, None)
}

/// Every solver error: the message names the entry and says how to fix it; no field applies.
fn lap_error(e: LapError) -> PyErr {
    plain_error(e.to_string())
}

/// Every thread-count error: the message names `n_threads`; no field applies.
pub(crate) fn pool_error(e: PoolError) -> PyErr {
    plain_error(e.to_string())
}

/// Every matching error, with the group, parameter and axis it names as attributes.
pub(crate) fn match_error(e: MatchError) -> PyErr {
    let msg = e.to_string();
    let (group, param, axis) = match e {
        MatchError::ParamCount { .. }
        | MatchError::InitCount { .. }
        | MatchError::NoSuchGroup { .. } => (None, None, None),
        MatchError::ShapeMismatch { param, .. } | MatchError::DataLength { param, .. } => {
            (None, Some(param), None)
        }
        MatchError::TooFewUnits { group, .. }
        | MatchError::NoMember { group }
        | MatchError::NoSuchParam { group, .. }
        | MatchError::BadInit { group, .. }
        | MatchError::Assignment { group, .. } => (Some(group), None, None),
        MatchError::AxisOutOfRange {
            group, param, axis, ..
        }
        | MatchError::AxisSize {
            group, param, axis, ..
        }
        | MatchError::AxisTwice {
            group, param, axis, ..
        } => (Some(group), Some(param), Some(axis)),
        MatchError::NonFinite { group, param, .. } => (Some(group), Some(param), None),
        MatchError::Products { .. } => (None, None, None),
    };
    rebasin_error(msg, group, param, axis)
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
    c_order.ok_or_else(contiguous_error)
}

fn contiguous_error() -> PyErr {
    PyTypeError::new_err(
        "cost: the native solver takes a C-contiguous array; call rebasin_rs.solve_lap, which \
         converts any layout",
    )
}

pub(crate) fn to_i64(v: Vec<usize>) -> Vec<i64> {
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
            return Err(plain_error(
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

/// `(row_ind, col_ind)`, as scipy returns them.
type Assignment<'py> = (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>);

/// Matrices of at most this many entries are solved with the GIL held: releasing and taking it
/// back costs more than solving them.
const SMALL: usize = 1024;

fn assign<'py, T: CostValue + numpy::Element>(
    py: Python<'py>,
    a: &Bound<'py, PyArray2<T>>,
    maximize: bool,
) -> PyResult<Assignment<'py>> {
    let (rows, cols) = (a.shape()[0], a.shape()[1]);
    let sol = if rows * cols <= SMALL && a.is_c_contiguous() {
        // SAFETY: the GIL is held for the whole solve, so no Python code can write to the array
        // meanwhile; skipping rust-numpy's borrow registry is a third of a tiny matrix's call.
        let cost = unsafe { a.as_slice() }.map_err(|_| contiguous_error())?;
        lap::solve(cost, rows, cols, maximize, None)
    } else {
        let ro = a.readonly();
        let cost = contiguous(&ro)?;
        py.detach(|| lap::solve(cost, rows, cols, maximize, None))
    }
    .map_err(lap_error)?;
    Ok((
        PyArray1::from_iter(py, sol.row_ind.iter().map(|&i| i as i64)),
        PyArray1::from_iter(py, sol.col_ind.iter().map(|&j| j as i64)),
    ))
}

/// Drop-in replacement for ``scipy.optimize.linear_sum_assignment``, much faster at scale.
///
/// Same contract as scipy, checked by running scipy's own test file against it: any 2-D real
/// array-like, rectangular in either orientation; returns ``(row_ind, col_ind)`` as int64 arrays
/// sorted by row, of length ``min(rows, cols)``; ``+inf`` marks a forbidden pair; an infeasible
/// matrix, NaN or ``-inf`` (``+inf`` when maximising) and a non-matrix raise ``ValueError``; an
/// array that does not cast safely to float64 (strings, objects, dates, complex, long double)
/// raises ``TypeError``; an empty matrix gives empty arrays; ties are broken as scipy does where
/// its rule forces an answer (a constant matrix gives the identity). A native function, as
/// scipy's is: a call on a tiny matrix costs no more than scipy's.
///
/// Args:
///     cost_matrix: The cost matrix of the bipartite graph.
///     maximize: Calculate a maximum weight matching instead of a minimum.
///
/// Returns:
///     ``(row_ind, col_ind)``: ``cost_matrix[row_ind, col_ind].sum()`` is optimal.
///
/// Raises:
///     ValueError: as scipy does (not a matrix, invalid entries, infeasible matrix); a
///         :class:`RebasinError`.
///     TypeError: as scipy does: an array whose dtype does not cast safely to float64.
///
/// Example:
///     >>> import numpy as np, rebasin_rs as rb
///     >>> rb.linear_sum_assignment(np.array([[4, 1, 3], [2, 0, 5], [3, 2, 2]]))
///     (array([0, 1, 2]), array([1, 0, 2]))
#[pyfunction]
#[pyo3(signature = (cost_matrix, maximize=None), text_signature = "(cost_matrix, maximize=False)")]
fn linear_sum_assignment<'py>(
    py: Python<'py>,
    cost_matrix: &Bound<'py, PyAny>,
    maximize: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let maximize = match maximize {
        None => false,
        Some(m) => m.is_truthy()?,
    };
    if let Ok(a) = cost_matrix.cast::<PyArray2<f64>>() {
        if usable(a) {
            return Ok(assign(py, a, maximize)?.into_pyobject(py)?.into_any());
        }
    }
    if let Ok(a) = cost_matrix.cast::<PyArray2<f32>>() {
        if usable(a) {
            return Ok(assign(py, a, maximize)?.into_pyobject(py)?.into_any());
        }
    }
    // Anything else is converted as scipy converts it (`PyArray_ContiguousFromAny(cost,
    // NPY_DOUBLE, 0, 0)`: a safe cast, lists read element by element as floats). What that
    // refuses, and anything but a matrix, goes to the Python conversion, which words the error.
    if let Some(a) = as_f64_matrix(py, cost_matrix) {
        return Ok(assign(py, &a, maximize)?.into_pyobject(py)?.into_any());
    }
    py.import("rebasin_rs._lap")?
        .getattr("_linear_sum_assignment")?
        .call1((cost_matrix, maximize))
}

/// C-ordered and aligned: readable as a slice. Anything else (a view of a buffer at an odd
/// offset, Fortran order) is converted first, as numpy copies it for scipy.
fn usable<T: numpy::Element>(a: &Bound<'_, PyArray2<T>>) -> bool {
    // SAFETY: reading the flags of a live array object with the GIL held.
    let flags = unsafe { (*a.as_array_ptr()).fields.flags };
    a.is_c_contiguous() && flags & NPY_ARRAY_ALIGNED != 0
}

/// `x` as a C-ordered float64 matrix, converted as scipy converts its input; `None` where numpy
/// refuses it or it is not 2-D (the error is dropped: the caller words its own).
fn as_f64_matrix<'py>(py: Python<'py>, x: &Bound<'py, PyAny>) -> Option<Bound<'py, PyArray2<f64>>> {
    // SAFETY: the numpy C API with the GIL held; PyArray_FromAny steals the descriptor and
    // returns a new reference or NULL with an exception set.
    let converted = unsafe {
        let descr = PY_ARRAY_API.PyArray_DescrFromType(py, NPY_TYPES::NPY_DOUBLE as c_int);
        let ptr = PY_ARRAY_API.PyArray_FromAny(
            py,
            x.as_ptr(),
            descr,
            2,
            2,
            NPY_ARRAY_DEFAULT,
            std::ptr::null_mut(),
        );
        Bound::from_owned_ptr_or_err(py, ptr)
    };
    converted.ok()?.cast_into::<PyArray2<f64>>().ok()
}

/// `(row_ind, col_ind)` only, as `scipy.optimize.linear_sum_assignment` returns: the potentials
/// and the objective of [`solve_lap`] are not built, which is most of a tiny matrix's call.
/// `cost` must be a C-contiguous float32 or float64 array.
#[pyfunction]
fn assign_cold<'py>(
    py: Python<'py>,
    cost: &Bound<'py, PyAny>,
    maximize: bool,
) -> PyResult<Assignment<'py>> {
    if let Ok(a) = cost.cast::<PyArray2<f64>>() {
        return assign(py, a, maximize);
    }
    if let Ok(a) = cost.cast::<PyArray2<f32>>() {
        return assign(py, a, maximize);
    }
    Err(PyTypeError::new_err(
        "cost: the native solver takes a 2-D float32 or float64 numpy array; call \
         rebasin_rs.linear_sum_assignment, which converts any real array-like",
    ))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("MAX_THREADS", pool::MAX_THREADS)?;
    m.add_function(wrap_pyfunction!(solve_lap, m)?)?;
    m.add_function(wrap_pyfunction!(assign_cold, m)?)?;
    m.add_function(wrap_pyfunction!(linear_sum_assignment, m)?)?;
    m.add_function(wrap_pyfunction!(matching::weight_matching, m)?)?;
    m.add_function(wrap_pyfunction!(matching::visit_orders, m)?)?;
    m.add_function(wrap_pyfunction!(matching::group_cost, m)?)?;
    m.add_function(wrap_pyfunction!(products::weight_matching_on, m)?)?;
    Ok(())
}
