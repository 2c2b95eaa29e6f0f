"""Applying permutations to models: weights out, permutations back in on the model's own device
and dtype, and the check that a spec keeps the function."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from rebasin_rs._errors import RebasinError
from rebasin_rs._matching import check_perms, permuted_entries
from rebasin_rs._spec import PermutationSpec, check_spec
from rebasin_rs.torch._utils import (check_materialized, check_module, device_of, eval_mode, example_args, to_device,
                                     without_cache)


def extract_weights(model: torch.nn.Module, names: Any = None) -> dict[str, np.ndarray]:
    """The model's state as float32 CPU numpy arrays (detached; one transfer per tensor from an
    accelerator; no copy for a CPU float32 tensor). ``names`` restricts it to those entries.

    Without ``names``, entries that are not floating point (``num_batches_tracked``) are left
    out; a name asked for must be a floating-point entry of the state dict.

    Raises:
        RebasinError: a name is not in ``model.state_dict()``, or an entry is on the meta device.
        TypeError: ``names`` is a string rather than a collection of names, or names an entry
            that is not floating point.

    Example:
        >>> import torch, rebasin_rs.torch as rbt
        >>> w = rbt.extract_weights(torch.nn.Linear(3, 2))
        >>> w["weight"].dtype, w["weight"].shape
        (dtype('float32'), (2, 3))
    """
    state, keep = _weight_entries(model, names, "extract_weights")
    return {n: state[n].detach().to("cpu", torch.float32).contiguous().numpy() for n in keep}


def _weight_entries(model: torch.nn.Module, names: Any, label: str) -> tuple[dict, list[str]]:
    """(state dict with tensors, the floating-point names asked for, checked)."""
    check_module(model, "model")
    if isinstance(names, (str, bytes)):
        raise TypeError(f"names must be a collection of state_dict names, got the string {names!r}; write [{names!r}]")
    state = model.state_dict(keep_vars=True)
    keep = [n for n, t in state.items() if isinstance(t, torch.Tensor) and t.is_floating_point()] if names is None \
        else list(names)
    check_materialized(model, "model", keep)
    for n in keep:
        if n not in state:
            raise RebasinError(f"{label}: the model has no entry {n!r} in its state_dict", param=n)
        t = state[n]
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{label}: {n!r} has dtype {getattr(t, 'dtype', type(t).__name__)}; "
                            "only floating-point entries are weights")
    return state, keep


def stored_weights(model: torch.nn.Module, names: Any) -> dict[str, torch.Tensor]:
    """Entries ``names`` of the model's state as they are stored (detached, on their device, in
    their dtype; no copy), for the matching engine: on the CPU it reads float16 and bfloat16 in
    place and widens them block by block (a half-precision model is never copied whole to
    float32); on a GPU torch computes the products there. Checked as :func:`extract_weights`
    checks them."""
    state, keep = _weight_entries(model, names, "stored_weights")
    return {n: state[n].detach() for n in keep}


def check_finite(model: torch.nn.Module, names: Any, label: str) -> None:
    """RebasinError naming the first of ``names`` (state_dict entries) holding NaN or inf.

    The engine refuses non-finite weights that it matches; buffers (BatchNorm running
    statistics) are permuted without being matched, so a NaN there would reach the aligned model
    without a word."""
    state = model.state_dict(keep_vars=True)
    learnable = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    for n in names:
        t = state[n]
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            continue
        t = t.detach()
        # A NaN or inf makes the sum non-finite; a finite sum clears the tensor at a twentieth
        # of the cost of isfinite().all() (measured on CPU, 512x512 float32: 0.02 vs 4 ms). A
        # non-finite sum may be an overflow of finite values, so the exact test decides.
        if bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all()):
            continue
        kind = "parameter" if n in learnable else "buffer"
        raise RebasinError(
            f"{label}: {kind} {n!r} holds NaN or infinite values; fix the model first (BatchNorm "
            "running statistics can be re-estimated with rebasin_rs.torch.reset_bn_stats)", param=n
        )


def _layout(spec: PermutationSpec, name: str) -> tuple:
    """How the spec permutes parameter ``name``: its members' blocks, views and axes' groups."""
    axes = spec.axes_to_perm
    members = [m for m in axes if spec.param_of(m) == name]
    return tuple(sorted(
        (repr(spec.pieces[m][1:]) if m in spec.pieces else "", repr(spec.views.get(m)), repr(sorted(axes[m].items())))
        for m in members
    ))


def _check_tied(spec: PermutationSpec, state: dict, names: list[str]) -> None:
    """Two names of one tensor (tied weights) must be permuted alike: the tensor can take only one
    order, and which name's would win depended on the order of the writes."""
    first: dict[int, str] = {}
    for n in names:
        other = first.setdefault(id(state[n]), n)
        if other != n and _layout(spec, n) != _layout(spec, other):
            raise RebasinError(
                f"spec: {other!r} and {n!r} are one tensor (tied weights) but the spec permutes them "
                "differently; put their axes in the same groups", param=n
            )


def permute_model(model: torch.nn.Module, spec: PermutationSpec, perms: Any, *,
                  inplace: bool = False) -> torch.nn.Module:
    """Applies permutations to a model's parameters and buffers, on their own device and in their
    own dtype.

    With ``inplace=True`` gradients (``.grad``) are permuted with their parameters; a copy has no
    gradients (as ``copy.deepcopy`` gives). Optimizer state (Adam's moments) is not permuted:
    build the optimizer after permuting.

    Args:
        model: The model to permute.
        spec: Its permutation spec (names from ``model.state_dict()``).
        perms: Permutation name -> int array or tensor (``perm[i]`` is the unit moved to slot i),
            for instance ``MatchingResult.perms``.
        inplace: Permute ``model`` itself; by default a deep copy is permuted and ``model`` is
            left untouched.

    Returns:
        The permuted model (``model`` itself when ``inplace=True``).

    Raises:
        ValueError: (:class:`~rebasin_rs.RebasinError`) the spec does not fit the model, a
            permutation is missing or invalid, or a permuted entry is on the meta device.
        TypeError: ``perms`` is not a mapping, or ``inplace`` is not a bool.

    Example:
        >>> import numpy as np, torch, rebasin_rs.torch as rbt
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
        >>> spec = rbt.infer_spec(net, torch.randn(1, 2))
        >>> moved = rbt.permute_model(net, spec, {"P_0": np.array([2, 0, 1])})
        >>> bool(torch.equal(moved[0].weight[0], net[0].weight[2]))
        True
    """
    check_module(model, "model")
    check_spec(spec)
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {type(inplace).__name__}")
    state = model.state_dict(keep_vars=True)
    names = spec.real_params()
    check_materialized(model, "model", names)
    sub = {n: state[n].detach() for n in names if n in state}
    checked = check_perms(spec, perms, sub)  # names, sizes and permutations, before any write
    _check_tied(spec, state, names)
    if inplace:
        # A gradient left in the old order would move each unit by another unit's gradient at
        # the next optimizer step.
        grads = {n: state[n].grad for n in names if state[n].grad is not None}
        gspec = spec.restrict(grads)
        if gspec.groups:
            check_perms(gspec, checked, grads)
        # One entry at a time, each written back before the next is permuted: the peak is one
        # tensor more, not a second model. A tied tensor is permuted and written once.
        first: dict[int, str] = {}
        for n in sub:
            first.setdefault(id(state[n]), n)
        unique = {n: sub[n] for n in first.values()}
        with torch.no_grad():
            for n, x in permuted_entries(spec, checked, unique):
                state[n].copy_(x)
                del x
                if n in grads and gspec.groups:
                    _, g = next(permuted_entries(gspec, checked, {n: grads[n]}))
                    state[n].grad.copy_(g)
        return model
    new = dict(permuted_entries(spec, checked, sub))
    # The copy takes the permuted tensors in place of the originals (deepcopy's memo), so the
    # permuted parameters are not copied twice.
    memo: dict[int, Any] = {}
    for n in names:
        t = state[n]
        if id(t) not in memo:
            fresh = new[n].to(memory_format=torch.contiguous_format)
            if isinstance(t, torch.nn.Parameter):
                fresh = torch.nn.Parameter(fresh, requires_grad=t.requires_grad)
            memo[id(t)] = fresh
    return copy.deepcopy(model, memo)


def _flat_outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flat_outputs(v)]
    return []


def _reveal(model: torch.nn.Module, rng: np.random.Generator) -> list[str]:
    """Draws at random, in place, every floating-point entry of ``model``'s state that is constant
    or tiny (zero biases, unit norm weights and variances, 1e-6 layer scales): a wrong spec can
    hide behind them (a bias of zeros reads the same in any order). Signs are kept (variances
    stay positive); values become ``c * U(0.5, 1.5)`` with ``c`` the constant (1 for a tiny
    one), zeros ``N(0, 0.1)``. Returns the names drawn."""
    drawn = []
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            if not t.is_floating_point() or t.numel() < 2 or t.is_meta:
                continue
            x = t.detach()
            top = float(x.abs().max())
            if not np.isfinite(top) or (float(x.max() - x.min()) > 1e-6 * top and top >= 1e-4):
                continue
            shape = tuple(x.shape)
            if top == 0.0:
                val = rng.normal(0.0, 0.1, shape)
            else:
                c = float(x.flatten()[0]) if top >= 1e-4 else float(np.sign(float(x.sum())) or 1.0)
                val = c * rng.uniform(0.5, 1.5, shape)
            t.detach().copy_(torch.from_numpy(val).to(x.dtype))
            drawn.append(name)
    return drawn


def check_equivalence(model: torch.nn.Module, spec: PermutationSpec, example_inputs: Any, *,
                      seed: int = 0, randomize: bool = True) -> float:
    """How much the outputs change when the units of every group of ``spec`` are permuted: the
    largest absolute difference between the outputs of a model and of its copy permuted by random
    permutations (none the identity: a group of two units is always swapped), relative to the
    largest absolute output. About float rounding (1e-7 in float32) for a correct spec.

    A wrong spec can hide behind parameters that read the same in any order, so by default
    (``randomize``) the check runs on a copy whose constant or tiny floating-point entries (zero
    biases, unit norm weights, BatchNorm statistics at their init, 1e-6 layer scales) are first
    drawn at random, keeping their signs. ``model`` is not modified; both run in eval mode without
    gradients.

    Example:
        >>> import torch, rebasin_rs.torch as rbt
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> x = torch.randn(3, 4)
        >>> rbt.check_equivalence(net, rbt.infer_spec(net, x), x) < 1e-5
        True
    """
    check_module(model, "model")
    check_materialized(model, "model")
    check_spec(spec)
    if not isinstance(randomize, bool):
        raise TypeError(f"randomize must be a bool, got {type(randomize).__name__}")
    sizes = spec.validate(model.state_dict(keep_vars=True))
    rng = np.random.default_rng(seed)
    if randomize:
        model = copy.deepcopy(model)
        _reveal(model, rng)
    perms = {}
    for g, n in sizes.items():
        p = rng.permutation(n)
        # The identity would hide a wrong group (it is half of the permutations of two units).
        perms[g] = np.roll(p, 1) if np.array_equal(p, np.arange(n)) else p
    permuted = permute_model(model, spec, perms)
    args, kwargs = example_args(example_inputs)
    device = device_of(model)
    # Without a cache: a decoder's cache holds its keys and values, which a permutation moves.
    args, kwargs = to_device(args, device), without_cache(model, args, to_device(kwargs, device))
    with eval_mode(model):
        ref = _flat_outputs(model(*args, **kwargs))
    with eval_mode(permuted):
        out = _flat_outputs(permuted(*args, **kwargs))
    if len(ref) != len(out) or not ref:
        raise RebasinError("check_equivalence: the model returned no tensor to compare")
    diff = scale = 0.0
    for r, o in zip(ref, out):
        if r.shape != o.shape:
            return float("inf")
        if r.numel():
            diff = max(diff, float((r.double() - o.double()).abs().max()))
            scale = max(scale, float(r.double().abs().max()))
    return diff / scale if scale > 0 else diff


def learnable_spec(model: torch.nn.Module, spec: PermutationSpec) -> PermutationSpec:
    """``spec`` restricted to the model's learnable parameters: buffers (BatchNorm running
    statistics) are permuted with their units but do not weigh in the matching."""
    return spec.restrict({n for n, _ in model.named_parameters(remove_duplicate=False)})


def complete_perms(sizes: dict[str, int], perms: Any) -> dict[str, np.ndarray]:
    """A permutation for every group of ``sizes``: the identity for those ``perms`` lacks."""
    return {g: perms.get(g, np.arange(n)) for g, n in sizes.items()}
