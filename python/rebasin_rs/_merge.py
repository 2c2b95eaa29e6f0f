"""Merging on plain mappings of arrays or tensors: interpolation, loss barriers and MergeMany."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from rebasin_rs._errors import RebasinError
from rebasin_rs._matching import _as_f32, _is_torch, apply_permutation, weight_matching
from rebasin_rs._spec import PermutationSpec, check_spec

__all__ = ["MergeManyResult", "interpolate", "loss_barrier", "merge_many"]


def _is_float(x: Any) -> bool:
    if _is_torch(x):
        return bool(x.is_floating_point())
    return np.asarray(x).dtype.kind == "f"


def _lerp(a: Any, b: Any, alpha: float) -> Any:
    if _is_torch(a):
        import torch

        with torch.no_grad():
            out = a.detach().float() * (1.0 - alpha) + b.detach().to(a.device).float() * alpha
            return out.to(a.dtype)
    a = np.asarray(a)
    out = a.astype(np.float64) * (1.0 - alpha) + np.asarray(b, dtype=np.float64) * alpha
    return out.astype(a.dtype)


def interpolate(params_a: Mapping[str, Any], params_b: Mapping[str, Any], alpha: float = 0.5) -> dict[str, Any]:
    """``(1 - alpha) * A + alpha * B`` for every floating entry; other entries (integer counters
    such as BatchNorm's ``num_batches_tracked``) are taken from A. Inputs are not modified.

    Args:
        params_a, params_b: Name -> array or tensor, with the same names and shapes (B aligned
            to A first, e.g. with :func:`rebasin_rs.weight_matching` and
            :func:`rebasin_rs.apply_permutation`).
        alpha: 0 gives A, 1 gives B. Any float (extrapolation is allowed).

    Returns:
        A new dict; tensors stay on A's device in A's dtype (the sum is taken in float32).

    Raises:
        RebasinError: (a ``ValueError``) the names or shapes differ, or ``alpha`` is not finite.

    Example:
        >>> import numpy as np, rebasin_rs as rb
        >>> rb.interpolate({"w": np.zeros(2)}, {"w": np.ones(2)}, 0.25)["w"].tolist()
        [0.25, 0.25]
    """
    alpha = float(alpha)
    if not np.isfinite(alpha):
        raise RebasinError(f"alpha must be finite, got {alpha}")
    if set(params_a) != set(params_b):
        missing = sorted(set(params_a) ^ set(params_b))[:5]
        raise RebasinError(f"params_a and params_b have different names (for instance {missing}); "
                         "they must come from one architecture")
    out = {}
    for k, a in params_a.items():
        b = params_b[k]
        if tuple(np.shape(a)) != tuple(np.shape(b)):
            raise RebasinError(f"{k!r} has shape {tuple(np.shape(a))} in params_a but {tuple(np.shape(b))} in params_b",
                               param=k)
        out[k] = _lerp(a, b, alpha) if _is_float(a) else a
    return out


def loss_barrier(values: Sequence[float], *, higher_is_better: bool = False) -> float:
    """The barrier of a curve measured at alphas from 0 to 1 (endpoints first and last): for a
    loss ``max(L) - (L[0] + L[-1]) / 2`` (the paper's definition), for a metric where higher is
    better (accuracy) ``(A[0] + A[-1]) / 2 - min(A)``.

    Example:
        >>> import rebasin_rs as rb
        >>> rb.loss_barrier([0.1, 1.1, 0.3])
        0.9
    """
    v = [float(x) for x in values]
    if len(v) < 2:
        raise RebasinError("a barrier needs the values at both endpoints (alpha 0 and 1)")
    ends = (v[0] + v[-1]) / 2
    return round(ends - min(v), 12) if higher_is_better else round(max(v) - ends, 12)


@dataclass(frozen=True)
class MergeManyResult:
    """What :func:`merge_many` found.

    Attributes:
        merged: The average of the aligned models (name -> array or tensor, like the inputs).
        perms: For each input model, its permutations (group -> int64 array) onto the others.
        rounds: Rounds run (the last changed nothing unless ``max_rounds`` stopped the loop).
    """

    merged: dict[str, Any]
    perms: list[dict[str, np.ndarray]]
    rounds: int


def merge_many(spec: PermutationSpec, params_list: Sequence[Mapping[str, Any]], *, max_rounds: int = 100,
               seed: int = 0, n_threads: int | None = None) -> MergeManyResult:
    """MergeMany (Git Re-Basin, Algorithm 3): repeatedly aligns each model to the mean of the
    others (weight matching), until a whole round changes no permutation; returns the average of
    the aligned models.

    Args:
        spec: The permutation spec, shared by all models.
        params_list: Two or more mappings name -> array or tensor. None is modified.
        max_rounds: At most this many rounds over the models.
        seed: Seed of the order the models are visited in each round, and of the matchings.
        n_threads: Threads for the cost products.

    Returns:
        A :class:`MergeManyResult`. For BatchNorm networks, re-estimate the statistics of the
        merged model afterwards (``rebasin_rs.torch.reset_bn_stats``).

    Raises:
        RebasinError: (a ``ValueError``) fewer than two models, or the spec does not fit them.

    Example:
        >>> import numpy as np, rebasin_rs as rb
        >>> rng = np.random.default_rng(0)
        >>> base = {"fc1.weight": rng.standard_normal((6, 3)), "fc2.weight": rng.standard_normal((2, 6))}
        >>> spec = rb.specs.mlp(["fc1", "fc2"], bias=False)
        >>> models = [rb.apply_permutation(spec, {"P_fc1": rng.permutation(6)}, base) for _ in range(3)]
        >>> res = rb.merge_many(spec, models)
        >>> bool(np.allclose(rb.apply_permutation(spec, res.perms[0], models[0])["fc1.weight"],
        ...                  res.merged["fc1.weight"]))
        True
    """
    check_spec(spec)
    models = list(params_list)
    if len(models) < 2:
        raise RebasinError(f"merge_many needs at least two models, got {len(models)}")
    if int(max_rounds) < 1:
        raise RebasinError(f"max_rounds must be at least 1, got {max_rounds}")
    sizes = spec.validate(models[0])
    for k, m in enumerate(models[1:], 1):
        spec.validate(models[0], m)
        if set(m) != set(models[0]):
            raise RebasinError(f"params_list[{k}] has other names than params_list[0]; one architecture is needed")
    names = spec.real_params()
    # The matching works on float32 numpy copies of the spec's parameters.
    work = [{n: _as_f32(m[n], f"params_list[{k}]", n) for n in names} for k, m in enumerate(models)]
    perms = [{g: np.arange(n) for g, n in sizes.items()} for _ in models]
    aligned = [dict(w) for w in work]
    rng = np.random.default_rng(seed)
    rounds = 0
    for rounds in range(1, int(max_rounds) + 1):
        changed = False
        for i in rng.permutation(len(models)):
            others = [aligned[j] for j in range(len(models)) if j != i]
            mean = {n: np.mean([o[n] for o in others], axis=0, dtype=np.float64).astype(np.float32) for n in names}
            # A fresh matching each time ("forward" start): warm-starting from the model's last
            # permutations kept it in the wrong one of two clusters of models (found by the tests).
            res = weight_matching(spec, mean, work[i], init="forward", seed=int(rng.integers(2**63)),
                                  n_threads=n_threads)
            if any(not np.array_equal(res.perms[g], perms[i][g]) for g in sizes):
                changed = True
                perms[i] = res.perms
                aligned[i] = apply_permutation(spec, perms[i], work[i])
        if not changed:
            break
    final = [apply_permutation(spec, p, m) for p, m in zip(perms, models)]
    return MergeManyResult(merged=_average(final), perms=perms, rounds=rounds)


def _average(params_list: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The mean of several models' floating entries (a running mean in the inputs' own type and
    device); other entries from the first model."""
    acc = dict(params_list[0])
    for t, other in enumerate(params_list[1:], 2):
        acc = interpolate(acc, other, 1.0 / t)
    return acc
