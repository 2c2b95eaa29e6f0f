"""Weight matching and applying permutations, on mappings of numpy arrays or torch tensors."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from rebasin_rs import _native
from rebasin_rs._errors import RebasinError
from rebasin_rs._spec import PermutationSpec, check_spec

__all__ = ["MatchingResult", "apply_permutation", "group_cost", "weight_matching"]


@dataclass(frozen=True, eq=False)
class MatchingResult:
    """What :func:`weight_matching` found.

    Attributes:
        perms: Permutation name -> int64 array; ``perm[i]`` is the unit of model B moved to slot
            ``i`` (the official convention).
        objective: ``sum_p <A_p, pi(B_p)>`` over the parameters of the spec, after matching.
        sweeps: Sweeps run (the last made no progress unless ``max_iter`` stopped the loop).
        history: The objective after each sweep.
        orders: The permutation names in the order each sweep visited them.
        timings: Seconds spent, by part of the work (not part of equality or the repr). From
            :func:`weight_matching`: ``"gemm"`` (cost products), ``"gather"`` (gathers of
            permuted weights), ``"lap"`` (assignments), summed over the forward pass and the
            sweeps; ``"forward"`` (the forward pass, its products and assignments included;
            0 without one) and ``"total"`` (the whole call in Rust). Other methods fill their own
            keys (the straight-through estimator: ``"matching"``, ``"step"``, ``"steps"``).
    """

    perms: dict[str, np.ndarray]
    objective: float
    sweeps: int
    history: list[float]
    orders: list[list[str]]
    # Each group's last assignment and duals, for ``warm_start=`` of a later call.
    warm: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    timings: dict[str, float] = field(default_factory=dict, repr=False, compare=False)

    def __eq__(self, other: object) -> bool:
        # The generated __eq__ compared the perms dicts, whose arrays have no truth value: ``==``
        # raised "The truth value of an array ... is ambiguous".
        if not isinstance(other, MatchingResult):
            return NotImplemented
        same_objective = self.objective == other.objective or (np.isnan(self.objective) and np.isnan(other.objective))
        return (self.perms.keys() == other.perms.keys()
                and all(np.array_equal(self.perms[g], other.perms[g]) for g in self.perms)
                and bool(same_objective) and self.sweeps == other.sweeps and self.history == other.history
                and self.orders == other.orders)

    __hash__ = None  # type: ignore[assignment]  # mutable arrays inside


def _num(n: int) -> str:
    """``2**63`` rather than 9223372036854775808."""
    return f"2**{n.bit_length() - 1}" if n > 2**32 and n & (n - 1) == 0 else str(n)


def check_int(value: Any, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high)``: a float, a string or a bool is a TypeError (they were
    once truncated silently: ``max_iter=1.7`` ran one sweep, ``True`` one), a value out of range
    a RebasinError naming ``name``. numpy integers are ints."""
    if not isinstance(value, (bool, np.bool_)):
        try:
            value = operator.index(value)
        except TypeError:
            pass
        else:
            if (low is not None and value < low) or (high is not None and value >= high):
                bounds = ([] if low is None else [f"at least {low}"]) + ([] if high is None else [f"below {_num(high)}"])
                raise RebasinError(f"{name} must be {' and '.join(bounds)}, got {value}")
            return value
    raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _as_f32(x: Any, label: str, name: str) -> np.ndarray:
    """A C-contiguous float32 numpy view (no copy when it already is one)."""
    if _is_torch(x):
        if not x.is_floating_point():
            raise TypeError(f"{label}[{name!r}] has dtype {x.dtype}; weights must be floating point")
        return x.detach().to("cpu").float().contiguous().numpy()
    a = np.asarray(x)
    if a.dtype.kind != "f":
        raise TypeError(
            f"{label}[{name!r}] has dtype {a.dtype}; weights must be floating point "
            "(convert with .astype(np.float32))"
        )
    return np.ascontiguousarray(a, dtype=np.float32)


def _as_engine(x: Any, label: str, name: str) -> tuple[np.ndarray, str]:
    """``(array, dtype name)`` for the engine: float32 as a C-contiguous view; float16 and
    bfloat16 kept in their own precision, as their 16-bit patterns (numpy has no bfloat16), for
    the engine to widen block by block (a half-precision model is never copied whole to
    float32); anything else floating converted to float32."""
    if _is_torch(x):
        import torch

        if not x.is_floating_point():
            raise TypeError(f"{label}[{name!r}] has dtype {x.dtype}; weights must be floating point")
        t = x.detach()
        if t.dtype in (torch.float16, torch.bfloat16):
            bits = t.to("cpu").contiguous().view(torch.int16).numpy().view(np.uint16)
            return bits, "float16" if t.dtype == torch.float16 else "bfloat16"
        return t.to("cpu").float().contiguous().numpy(), "float32"
    a = np.asarray(x)
    if a.dtype == np.float16 or a.dtype.name == "bfloat16":  # ml_dtypes' bfloat16
        return np.ascontiguousarray(a).view(np.uint16), a.dtype.name
    return _as_f32(a, label, name), "float32"


def weight_matching(
    spec: PermutationSpec,
    params_a: Mapping[str, Any],
    params_b: Mapping[str, Any],
    *,
    max_iter: int = 100,
    seed: int = 0,
    init: Mapping[str, Any] | str | None = None,
    n_threads: int | None = None,
    warm_start: MatchingResult | None = None,
    max_cost_memory: int | None = None,
    products: str = "auto",
    tf32: bool = False,
) -> MatchingResult:
    """Finds the permutations of model B's units that best match model A (Git Re-Basin,
    weight matching), entirely in Rust with the GIL released.

    Coordinate descent: each permutation in turn solves the linear assignment problem that
    maximises ``sum_k <A_k, pi(B_k)>`` with the others fixed, in an order drawn from ``seed``,
    until a whole sweep makes no progress. Cost matrices are computed once with a threaded GEMM and
    then updated as neighbouring permutations change; every assignment is warm-started.

    Args:
        spec: The permutation groups (see :class:`PermutationSpec` and ``rebasin_rs.specs``).
        params_a: Name -> array or CPU tensor of model A (the reference).
        params_b: Name -> array or tensor of model B (the one to permute). Neither is modified.
        max_iter: At most this many sweeps (an int, ``1 <= max_iter < 2**63``).
        seed: Seed of the visiting order (any int, taken modulo ``2**64``); the result is
            deterministic for a seed.
        init: Optional starting permutations, name -> int array; or ``"forward"``: first solve
            each group once in the spec's order (a network walked from its input) from the
            weights whose other axes are matched already, then run the sweeps from there. This
            recovers a permuted copy exactly, where the paper's start (the identity) can stop in
            a local optimum; ``rebasin_rs.torch.align`` uses it by default.
        n_threads: Threads for the cost products (default: all, or ``RAYON_NUM_THREADS``); at
            most 1024 (``rebasin_rs._native.MAX_THREADS``), larger counts raise RebasinError.
        warm_start: The result of an earlier call on similar weights (the same spec): its
            assignments' duals start this call's solves warm (the straight-through estimator
            calls it at every step). Same result as without, faster.
        max_cost_memory: At most this many bytes of kept cost matrices (``4 n**2`` per
            permutation of ``n`` units; default: no limit). The smallest groups' costs that fit
            are kept and updated as their neighbours move; the others are computed at each visit
            and dropped after: less memory on large models (a Llama MLP group of 5632 units keeps
            127 MB), more products. Same result up to float32 rounding.
        products: Who computes the cost products. ``"auto"`` (default): torch on the device when
            every weight of A and B is a CUDA tensor on one device, else the Rust kernels on CPU
            threads. ``"torch"``: torch where the tensors are (CPU tensors too), ``"cpu"``: the
            Rust kernels (tensors on a GPU are copied to the host). Either way the Rust engine
            runs the same coordinate descent (kept costs, incremental updates, warm-started
            assignments on the CPU): the device only computes the products, each cost or update
            crossing to the CPU as one ``n x n`` float32 matrix; weights stay on the device in
            their stored dtype. Same permutations as the CPU kernels up to float32 rounding.
        tf32: With torch products on a GPU, allow TF32 matmuls (faster, ~1e-3 relative error;
            default: full float32).

    Returns:
        A :class:`MatchingResult`.

    Raises:
        RebasinError: (a ``ValueError``) the spec does not fit the parameters (missing name, axis
            sizes, A/B shapes), ``init`` or ``warm_start`` is not a set of permutations of the
            spec, ``max_iter`` is out of range, or a weight is NaN or infinite; its ``group``,
            ``param`` and ``axis`` say where.
        TypeError: a parameter is not floating point; ``max_iter`` or ``seed`` is not an int (a
            float, a string or a bool), ``init`` is not a mapping, ``"forward"`` or None, or
            ``warm_start`` is not a :class:`MatchingResult`.

    Example:
        >>> import numpy as np, rebasin_rs as rb
        >>> rng = np.random.default_rng(0)
        >>> a = {"fc1.weight": rng.standard_normal((8, 4)), "fc1.bias": rng.standard_normal(8),
        ...      "fc2.weight": rng.standard_normal((3, 8))}
        >>> spec = rb.specs.mlp(["fc1", "fc2"])
        >>> perm = rng.permutation(8)
        >>> b = rb.apply_permutation(spec, {"P_fc1": perm}, a)
        >>> res = rb.weight_matching(spec, a, b)
        >>> bool((perm[res.perms["P_fc1"]] == np.arange(8)).all())
        True
    """
    check_spec(spec)
    max_iter = check_int(max_iter, "max_iter", low=1, high=2**63)
    if n_threads is not None:
        n_threads = check_int(n_threads, "n_threads", low=1, high=_native.MAX_THREADS + 1)
    if max_cost_memory is not None:
        max_cost_memory = check_int(max_cost_memory, "max_cost_memory", low=0, high=2**63)
    # Any int is a seed: the engine takes it modulo 2**64 (a negative seed is a valid one).
    seed = check_int(seed, "seed") % 2**64
    if init is not None and not isinstance(init, (str, Mapping)):
        raise TypeError(f"init must be a mapping of permutations, 'forward' or None, got {type(init).__name__}")
    if warm_start is not None and not isinstance(warm_start, MatchingResult):
        raise TypeError(f"warm_start must be a MatchingResult (an earlier call's result) or None, "
                        f"got {type(warm_start).__name__}")
    if products not in ("auto", "cpu", "torch"):
        raise RebasinError(f"products must be 'auto', 'cpu' or 'torch', got {products!r}")
    if not isinstance(tf32, (bool, np.bool_)):
        raise TypeError(f"tf32 must be a bool, got {type(tf32).__name__}")
    on_device = _torch_products(spec, params_a, params_b, products)
    sizes, group_names, groups, names, a, b = _native_args(spec, params_a, params_b, on_device=on_device)
    init_list = None
    forward = False
    if isinstance(init, str):
        if init != "forward":
            raise RebasinError(f"init must be a mapping of permutations, 'forward' or None, got {init!r}")
        forward, init = True, None
    if init is not None:
        init_list = []
        for g in group_names:
            if g not in init:
                raise RebasinError(f"init: no permutation for group {g!r}; give one for every group", group=g)
            init_list.append(_check_perm(init[g], sizes[g], f"init[{g!r}]", g))
    warm = None
    if warm_start is not None and warm_start.warm is not None:
        warm = [warm_start.warm.get(g) for g in group_names]
    threads = None if n_threads is None else int(n_threads)
    if on_device:
        from rebasin_rs.torch._products import TorchProducts, matmul_precision

        backend = TorchProducts([x for x, _ in a], [x for x, _ in b])
        with matmul_precision(bool(tf32)):
            out = _native.weight_matching_on(
                groups, names, backend.shapes(), backend, max_iter, seed, init_list, threads,
                forward, warm, max_cost_bytes=max_cost_memory,
            )
    else:
        out = _native.weight_matching(
            groups, names, [x for x, _ in a], [x for x, _ in b], max_iter, seed, init_list, threads, forward, warm,
            dtypes_a=[d for _, d in a], dtypes_b=[d for _, d in b], max_cost_bytes=max_cost_memory,
        )
    perms, objective, sweeps, history, orders, warm_out, timings = out
    return MatchingResult(
        perms=dict(zip(group_names, perms)),
        objective=objective,
        sweeps=sweeps,
        history=list(history),
        orders=[[group_names[g] for g in o] for o in orders],
        warm=dict(zip(group_names, warm_out)),
        timings=dict(timings),
    )


def _is_stored(params: Any) -> bool:
    """Whether ``params`` is a checkpoint folder read tensor by tensor (``_folder.StoredState``)."""
    return hasattr(params, "meta") and hasattr(params, "layout")


def _torch_products(spec: PermutationSpec, params_a: Mapping[str, Any], params_b: Mapping[str, Any],
                    products: str) -> bool:
    """Whether torch computes the products (see ``products=`` of :func:`weight_matching`):
    ``"auto"`` when every weight of the spec is a CUDA tensor, all on one device."""
    if products == "cpu":
        return False
    if _is_stored(params_a) and _is_stored(params_b):
        return True  # checkpoint folders (_folder.StoredState): read tensor by tensor by torch
    devices = set()
    for label, params in (("params_a", params_a), ("params_b", params_b)):
        for p in spec.params():
            x = params.get(p) if isinstance(params, Mapping) else None
            if x is None:
                continue  # validate() names it
            if not _is_torch(x):
                if products == "torch":
                    raise RebasinError(f"products='torch' needs torch tensors; {label}[{p!r}] is a "
                                       f"{type(x).__name__} (use products='cpu' for arrays)", param=p)
                return False
            devices.add(x.device)
    if products == "torch":
        if len(devices) > 1:
            raise RebasinError(f"products='torch' needs the weights of A and B on one device; they are on "
                               f"{sorted(map(str, devices))} (move both models to one device)")
        return True
    return len(devices) == 1 and next(iter(devices)).type == "cuda"


def _as_device(x: Any, label: str, name: str) -> tuple[Any, str]:
    """``(tensor, dtype name)`` for torch products: detached, on its device, in its stored dtype."""
    if not x.is_floating_point():
        raise TypeError(f"{label}[{name!r}] has dtype {x.dtype}; weights must be floating point")
    return x.detach(), str(x.dtype).removeprefix("torch.")


def _native_args(spec: PermutationSpec, params_a: Mapping[str, Any], params_b: Mapping[str, Any], *,
                 on_device: bool = False):
    """Validated sizes, group names, groups as ``(name, size, [(param index, axis)])``, member
    names, and ``(array, dtype name)`` pairs in spec order (see :func:`_as_engine`; with
    ``on_device``, the tensors as they are, for torch products)."""
    if on_device and _is_stored(params_a) and _is_stored(params_b):
        # Checkpoint folders (``_folder.StoredState``): checked and laid out on their headers'
        # meta tensors; each tensor is read when a product needs it.
        return _lazy_args(spec, params_a, params_b)
    sizes = spec.validate(params_a, params_b, members_only=True)
    names = spec.params()
    index = {p: k for k, p in enumerate(names)}
    convert = _as_device if on_device else _as_engine
    a = [convert(spec.take(p, params_a), "params_a", p) for p in names]
    b = [convert(spec.take(p, params_b), "params_b", p) for p in names]
    # Axes of size 1 are never permuted; dropping them (a view) lets the engine read a 1x1
    # convolution as the matrix it is, without copying it to move an axis.
    axis_map = []
    for k, ((x, dx), (y, dy)) in enumerate(zip(a, b)):
        keep = [d for d, size in enumerate(x.shape) if size != 1] or [0]
        axis_map.append({d: i for i, d in enumerate(keep)})
        shape = tuple(x.shape[d] for d in keep)
        a[k], b[k] = (x.reshape(shape), dx), (y.reshape(shape), dy)
    group_names = list(spec.groups)
    groups = [(g, sizes[g], [(index[p], axis_map[index[p]][ax]) for p, ax in spec.groups[g]]) for g in group_names]
    return sizes, group_names, groups, names, a, b


def _lazy_args(spec: PermutationSpec, state_a: Any, state_b: Any):
    """:func:`_native_args` for two ``StoredState`` folders: ``(loader, dtype name)`` pairs, each
    loader reading its tensor from the folder (as the engine sees it: the spec's piece, size-1
    axes dropped) when called."""
    sizes, group_names, groups, names, meta_a, meta_b = _native_args(spec, state_a.meta, state_b.meta,
                                                                     on_device=True)

    def loader(state: Any, p: str, shape: tuple, label: str):
        param = spec.param_of(p)

        def load():
            x = spec.take(p, {param: state[param]})
            return _as_device(x, label, p)[0].reshape(shape)
        load.shape, load.device = shape, getattr(state, "device", None)
        return load
    a = [(loader(state_a, p, tuple(x.shape), "params_a"), d) for p, (x, d) in zip(names, meta_a)]
    b = [(loader(state_b, p, tuple(x.shape), "params_b"), d) for p, (x, d) in zip(names, meta_b)]
    return sizes, group_names, groups, names, a, b


def group_cost(spec: PermutationSpec, params_a: Mapping[str, Any], params_b: Mapping[str, Any],
               perms: Mapping[str, Any] | None, group: str) -> np.ndarray:
    """The cost matrix that weight matching maximises for one permutation, the others fixed:
    ``C[i, j] = sum_k <A_k slot i, B_k unit j>`` over the members ``k`` of ``group``, with every
    other permuted axis of B read through its permutation. Computed by the Rust kernel (threaded
    GEMM, GIL released), as :func:`weight_matching` computes it.

    Args:
        spec: The permutation groups.
        params_a: Name -> array or CPU tensor of model A.
        params_b: Name -> array or tensor of model B.
        perms: Permutation name -> int array for every group (for instance
            ``MatchingResult.perms``), or None for the identity everywhere.
        group: The permutation whose cost to compute.

    Returns:
        A float32 array of shape ``(n, n)``, ``n`` the size of ``group``: solving
        ``linear_sum_assignment(C, maximize=True)`` gives the best ``perms[group]`` for the others.

    Raises:
        RebasinError: ``group`` is not in the spec, a permutation is missing or malformed, or the
            spec does not fit the parameters.
        TypeError: a parameter is not floating point.

    Example:
        >>> import numpy as np, rebasin_rs as rb
        >>> spec = rb.specs.mlp(["fc1", "fc2"])
        >>> a = {"fc1.weight": np.eye(3, 2), "fc1.bias": np.zeros(3), "fc2.weight": np.eye(1, 3)}
        >>> rb.group_cost(spec, a, a, None, "P_fc1")
        array([[2., 0., 0.],
               [0., 1., 0.],
               [0., 0., 0.]], dtype=float32)
    """
    check_spec(spec)
    if group not in spec.groups:
        raise RebasinError(f"group_cost: the spec has no permutation {group!r} (it has {list(spec.groups)})",
                           group=group)
    if perms is not None and not isinstance(perms, Mapping):
        raise TypeError(f"perms must be a mapping of permutation name -> int array, or None, got {type(perms).__name__}")
    sizes, group_names, groups, names, a, b = _native_args(spec, params_a, params_b)
    if perms is None:
        perms = {g: np.arange(n) for g, n in sizes.items()}
    plist = []
    for g in group_names:
        if g not in perms:
            raise RebasinError(f"perms: no permutation for group {g!r}; give one for every group", group=g)
        plist.append(_check_perm(perms[g], sizes[g], f"perms[{g!r}]", g))
    n = sizes[group]
    flat = _native.group_cost(groups, names, [x for x, _ in a], [x for x, _ in b], plist, group_names.index(group),
                              dtypes_a=[d for _, d in a], dtypes_b=[d for _, d in b])
    return flat.reshape(n, n)


def _check_perm(p: Any, size: int, label: str, group: str) -> np.ndarray:
    if _is_torch(p):
        p = p.detach().cpu().numpy()
    arr = np.asarray(p)
    if arr.dtype.kind not in "iu" or arr.shape != (size,):
        raise RebasinError(f"{label} must be an integer array of shape ({size},), got {arr.dtype} {arr.shape}",
                           group=group)
    arr = arr.astype(np.int64)
    if not np.array_equal(np.sort(arr), np.arange(size)):
        raise RebasinError(f"{label} is not a permutation of 0..{size}", group=group)
    return np.ascontiguousarray(arr)


def _permute_member(spec: PermutationSpec, name: str, x: Any, axes: Mapping[int, str],
                    perms: Mapping[str, np.ndarray]) -> Any:
    """``x`` (a member's tensor) with its permuted axes reordered, in its original shape."""
    shape = tuple(x.shape)
    x = x.reshape(spec.shape_of(name, x))
    for axis, g in sorted(axes.items()):
        if _is_torch(x):
            import torch

            x = x.index_select(axis, torch.as_tensor(perms[g], device=x.device))
        else:
            x = np.take(np.asarray(x), perms[g], axis=axis)
    return x.reshape(shape)


def check_perms(spec: PermutationSpec, perms: Any, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``perms`` checked against the spec and the parameters: one permutation of the right size per
    group, as int64 arrays."""
    check_spec(spec)
    if not isinstance(perms, Mapping):
        raise TypeError(f"perms must be a mapping of permutation name -> int array, got {type(perms).__name__}")
    sizes = spec.validate(params)
    checked = {}
    for g, size in sizes.items():
        if g not in perms:
            raise RebasinError(f"perms: no permutation for group {g!r}", group=g)
        checked[g] = _check_perm(perms[g], size, f"perms[{g!r}]", g)
    return checked


def permuted_entries(spec: PermutationSpec, checked: Mapping[str, np.ndarray], params: Mapping[str, Any]):
    """``(name, entry)`` for each entry of ``params``, permuted by the checked permutations (see
    :func:`check_perms`), one at a time: a caller that writes each back before the next holds one
    permuted entry at a time, not a second model."""
    axes = spec.axes_to_perm
    by_param: dict[str, list[str]] = {}
    for m in axes:
        by_param.setdefault(spec.param_of(m), []).append(m)
    for name, x in params.items():
        members = by_param.get(name)
        if members:
            if not _is_torch(x):
                x = np.asarray(x)
            if members == [name]:
                x = _permute_member(spec, name, x, axes[name], checked)
            else:
                # Pieces: permute each block of the original and write it into a contiguous copy
                # (under the pieces' shape, if they give one).
                shape = tuple(x.shape)
                under = spec.pieces[members[0]][2:]
                new = x.reshape(under[0] if under else shape)
                if _is_torch(x):
                    import torch

                    new = new.clone(memory_format=torch.contiguous_format)
                else:
                    new = np.array(new, order="C")
                for m in members:
                    block = _permute_member(spec, m, spec.take(m, {name: x}), axes[m], checked)
                    index = [slice(None)] * len(new.shape)
                    for axis, lo, hi in spec.pieces[m][1]:
                        index[axis] = slice(lo, hi)
                    new[tuple(index)] = block.reshape(new[tuple(index)].shape)
                x = new.reshape(shape)
        yield name, x


def apply_permutation(spec: PermutationSpec, perms: Mapping[str, Any], params: Mapping[str, Any]) -> Any:
    """Returns a new mapping with every axis of the spec permuted: ``new[..., i, ...] =
    old[..., perm[i], ...]``. Parameters the spec does not name are passed through as they are.

    Works on numpy arrays and torch tensors (kept on their device, in their dtype); the input is
    never modified.

    Args:
        spec: The permutation groups.
        perms: Permutation name -> int array (for instance ``MatchingResult.perms``).
        params: Name -> array or tensor.

    Returns:
        A mapping of the same type as ``params`` (a ``dict`` for other mapping types).

    Raises:
        RebasinError: a spec parameter is missing, a permutation is missing or has the wrong size.
        TypeError: ``perms`` or ``params`` is not a mapping.
    """
    checked = check_perms(spec, perms, params)
    out = dict(permuted_entries(spec, checked, params))
    kind = type(params)
    if kind is dict:
        return out
    try:
        return kind(out)
    except TypeError:
        return out
