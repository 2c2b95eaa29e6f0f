"""Merging on plain mappings of arrays or tensors: interpolation, loss barriers and MergeMany."""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from rebasin_rs._cycle import frank_wolfe, pairwise
from rebasin_rs._errors import RebasinError
from rebasin_rs._matching import _as_f32, _is_torch, apply_permutation, weight_matching
from rebasin_rs._spec import PermutationSpec, check_spec, compare_states

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
    with np.errstate(over="ignore", invalid="ignore"):
        out = a.astype(np.float64) * (1.0 - alpha) + np.asarray(b, dtype=np.float64) * alpha
        return out.astype(a.dtype)


def interpolate(params_a: Mapping[str, Any], params_b: Mapping[str, Any], alpha: float = 0.5) -> dict[str, Any]:
    """``(1 - alpha) * A + alpha * B`` for every floating entry; other entries (integer counters
    such as BatchNorm's ``num_batches_tracked``) are taken from A. Inputs are not modified.

    Args:
        params_a: Name -> array or tensor (model A).
        params_b: Name -> array or tensor, with A's names and shapes (B aligned to A first, e.g.
            with :func:`rebasin_rs.weight_matching` and :func:`rebasin_rs.apply_permutation`).
        alpha: 0 gives A, 1 gives B. Any float (extrapolation is allowed).

    Returns:
        A new dict; tensors stay on A's device in A's dtype (the sum is taken in float32).

    Raises:
        RebasinError: (a ``ValueError``) the names, shapes or kinds (floating point or not) differ;
            an entry holds NaN or inf; ``alpha`` is not finite or overflows an entry's dtype.

    Example:
        >>> import numpy as np, rebasin_rs as rb
        >>> rb.interpolate({"w": np.zeros(2)}, {"w": np.ones(2)}, 0.25)["w"].tolist()
        [0.25, 0.25]
    """
    alpha = float(alpha)
    if not np.isfinite(alpha):
        raise RebasinError(f"alpha must be finite, got {alpha}")
    compare_states(params_a, params_b)
    out = {}
    for k, a in params_a.items():
        b = params_b[k]
        if not _is_float(a):
            out[k] = a
            continue
        out[k] = _lerp(a, b, alpha)
        if _all_finite(out[k]):
            continue
        out[k], differ = _keep_equal(out[k], a, b)
        if _all_finite(differ(out[k])):
            continue
        for label, x in (("params_a", a), ("params_b", b)):
            if not _all_finite(differ(x)):
                raise RebasinError(f"{label}[{k!r}] holds NaN or infinite values where the other model "
                                   "differs; fix the model first", param=k)
        raise RebasinError(f"alpha={alpha:g} overflows {k!r} (its dtype cannot hold the result); "
                           "use an alpha in [0, 1]", param=k)
    return out


def _keep_equal(out: Any, a: Any, b: Any) -> tuple[Any, Callable[[Any], Any]]:
    """``out`` with A's value wherever A and B agree, and a function that picks the entries where
    they differ. An entry equal in both models is their merge at any alpha, infinite ones
    included (a causal mask of -inf), where the arithmetic may give NaN (``-inf * 0`` at an
    endpoint)."""
    if _is_torch(out):
        import torch

        a = a.detach()
        same = a == b.detach().to(a.device)
        return torch.where(same, a.to(out.dtype), out), lambda x: x.detach().to(same.device)[~same]
    same = np.asarray(a) == np.asarray(b)
    return np.where(same, np.asarray(a), out).astype(out.dtype), lambda x: np.asarray(x)[~same]


def _all_finite(x: Any) -> bool:
    """No NaN or inf in ``x``. A finite sum clears it at a fraction of the cost of an elementwise
    test; a non-finite sum may be an overflow of finite values, so the exact test decides."""
    if _is_torch(x):
        import torch

        return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())
    x = np.asarray(x)
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(x.sum())) or bool(np.isfinite(x).all())


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
        rounds: Rounds run (round 1 places the models one by one; each later round aligns every
            model to the mean of the others).
        objective: ``sum_i <model_i, mean of the others>`` over the spec's parameters, aligned
            (the quantity every accepted step raises), at the end.
        history: The objective before the first round, then after each round (non-decreasing).
        converged: True when the last round changed no permutation or gained less than ``tol``;
            False when ``max_rounds`` stopped the loop (a warning says so).
    """

    merged: dict[str, Any]
    perms: list[dict[str, np.ndarray]]
    rounds: int
    objective: float = float("nan")
    history: list[float] = field(default_factory=list)
    converged: bool = True

    def pairwise(self, i: int, j: int) -> dict[str, np.ndarray]:
        """The permutations aligning model ``i`` onto model ``j``, through the shared frame:
        ``apply_permutation(spec, res.pairwise(i, j), params_list[i])`` is model ``i`` in ``j``'s
        unit order. Maps through one frame are cycle-consistent (:func:`cycle_error` is 0)."""
        return pairwise(self.perms, i, j)


def merge_many(spec: PermutationSpec, params_list: Sequence[Mapping[str, Any]], *, method: str = "mergemany",
               max_rounds: int = 100, tol: float = 1e-3, seed: int = 0, n_threads: int | None = None,
               progress: bool | None = None) -> MergeManyResult:
    """MergeMany (Git Re-Basin, Algorithm 3): aligns each model to the mean of the others (weight
    matching), round after round, and returns the average of the aligned models.

    Round 1 places the models one by one, in an order drawn from ``seed``: the first stays as it
    is and each next one is matched (``init="forward"``) to the mean of those placed before it, so
    permuted copies of one model are recovered exactly in this round. Each later round visits the
    models in a fresh random order and re-matches each to the mean of all the others, starting
    from its current permutations; a model's permutations change only when that raises
    ``<model_i, mean of the others>``, so the objective ``sum_i <model_i, mean of the others>``
    rises with every change and no state can come back (the loop cannot cycle). The loop stops
    when a round changes nothing, or raises the objective by at most ``tol`` times its value.

    Args:
        spec: The permutation spec, shared by all models.
        params_list: Two or more mappings name -> array or tensor. None is modified.
        method: ``"mergemany"`` (the rounds above) or ``"frank-wolfe"`` (C2M3's optimiser of the
            same objective: Frank-Wolfe over doubly stochastic relaxations of every model's
            permutations at once, from round 1's placement, keeping the best projection onto
            permutations met; ``max_rounds`` and ``tol`` then bound its iterations; in numpy,
            for models of up to a few million parameters). Both give every model's permutations
            onto one shared frame, so the pairwise maps (:meth:`MergeManyResult.pairwise`) are
            cycle-consistent.
        max_rounds: At most this many rounds; a warning says when this stops the loop.
        tol: Stop when a round gains at most ``tol * |objective|``. Round 1 does most of the work:
            on four random ResNet-18s, 99.3% of the gain that running to a fixed point (``tol=0``,
            16 rounds) reached, and the default stops after round 2 at 99.5%; on four trained MLPs
            ``tol=0`` took 12 rounds instead of 6 and lowered the merged loss by 0.2%.
        seed: Seed of the order the models are visited in, and of the matchings.
        n_threads: Threads for the cost products.
        progress: A progress bar over the rounds (default: when stderr is a terminal).

    Returns:
        A :class:`MergeManyResult`. For BatchNorm networks, re-estimate the statistics of the
        merged model afterwards (``rebasin_rs.torch.reset_bn_stats``).

    Raises:
        RebasinError: (a ``ValueError``) fewer than two models, the spec does not fit them,
            ``max_rounds < 1`` or ``tol`` negative or not finite.

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
        >>> res.rounds, res.converged
        (2, True)
    """
    models = list(params_list)
    res = _merge_many(spec, models, max_rounds=max_rounds, tol=tol, seed=seed, n_threads=n_threads,
                      progress=progress, method=method)
    if not res.converged:
        warnings.warn(_unconverged(res, max_rounds, tol), RuntimeWarning, stacklevel=2)
    merged = _average([apply_permutation(spec, p, m) for p, m in zip(res.perms, models)])
    return MergeManyResult(merged=merged, perms=res.perms, rounds=res.rounds, objective=res.history[-1],
                           history=res.history, converged=res.converged)


def _unconverged(res: Any, max_rounds: int, tol: float) -> str:
    """The warning when ``max_rounds`` stopped MergeMany (shared with the torch adapter)."""
    return (f"merge_many stopped at max_rounds={max_rounds} before converging: the last round raised the "
            f"objective from {res.history[-2]:.8g} to {res.history[-1]:.8g} (tol={tol:g}); pass a larger "
            "max_rounds or tol")


class _Rounds(NamedTuple):
    perms: list[dict[str, np.ndarray]]
    rounds: int
    history: list[float]
    converged: bool


def _merge_many(spec: PermutationSpec, params_list: Sequence[Mapping[str, Any]], *, max_rounds: int, tol: float,
                seed: int, n_threads: int | None, progress: bool | None, method: str = "mergemany") -> _Rounds:
    """The rounds of :func:`merge_many`, without the average (the torch adapter averages modules)
    and without the warning (each caller raises it at its caller's line)."""
    if method not in ("mergemany", "frank-wolfe"):
        raise RebasinError(f"method must be 'mergemany' or 'frank-wolfe', got {method!r}")
    if method == "frank-wolfe":
        # Round 1's placement (which recovers permuted copies exactly) competes with Frank-Wolfe
        # from the identity (C2M3's start): started from that placement, Frank-Wolfe stalled at
        # once on random MLPs (each model's best response was its own vertex), while from the
        # identity it ended 3.2% above MergeMany's objective (4 random 8-32-32-3 MLPs).
        first = _merge_many(spec, params_list, max_rounds=1, tol=tol, seed=seed, n_threads=n_threads,
                            progress=False)
        if int(max_rounds) < 1:
            raise RebasinError(f"max_rounds must be at least 1, got {max_rounds}")
        perms, rounds, history, converged = frank_wolfe(spec, list(params_list), first.perms,
                                                        max_rounds=int(max_rounds), tol=float(tol))
        # Reported as MergeMany's objective, sum_i <model_i, mean of the others>: 2 / (n - 1) times
        # the sum over pairs that Frank-Wolfe raises.
        scale = 2.0 / (len(params_list) - 1)
        return _Rounds(perms=perms, rounds=rounds, history=[h * scale for h in history], converged=converged)
    check_spec(spec)
    models = list(params_list)
    if len(models) < 2:
        raise RebasinError(f"merge_many needs at least two models, got {len(models)}")
    if int(max_rounds) < 1:
        raise RebasinError(f"max_rounds must be at least 1, got {max_rounds}")
    tol = float(tol)
    if not (np.isfinite(tol) and tol >= 0):
        raise RebasinError(f"tol must be a finite number >= 0, got {tol}")
    sizes = spec.validate(models[0])
    for k, m in enumerate(models[1:], 1):
        spec.validate(models[0], m)
        if set(m) != set(models[0]):
            raise RebasinError(f"params_list[{k}] has other names than params_list[0]; one architecture is needed")
    names = spec.real_params()
    n = len(models)
    # The matching works on float32 numpy copies of the spec's parameters.
    work = [{p: _as_f32(m[p], f"params_list[{k}]", p) for p in names} for k, m in enumerate(models)]
    perms = [{g: np.arange(s) for g, s in sizes.items()} for _ in models]
    aligned = [dict(w) for w in work]
    # The models' norms do not depend on the permutations, so the objective is a function of the
    # aligned sum S alone: sum_i <a_i, (S - a_i) / (n - 1)> = (|S|^2 - sum_i |a_i|^2) / (n - 1).
    # S is kept in float64 and updated when a model moves; the targets are written into buffers
    # kept from step to step (fresh 45 MB arrays at every step cost more than the arithmetic).
    norms = sum(_sq(w[p]) for w in work for p in names)
    total = {p: np.sum([w[p] for w in work], axis=0, dtype=np.float64) for p in names}
    scratch = {p: np.empty_like(total[p]) for p in names}
    target = {p: np.empty_like(work[0][p]) for p in names}

    def objective() -> float:
        return (_dot(total, total, names) - norms) / (n - 1)

    def mean_into_target(i: int | None, placed: Sequence[int] = ()) -> dict[str, np.ndarray]:
        """The mean of the others (``i`` given) or of the ``placed`` models, into ``target``."""
        for p in names:
            if i is not None:
                np.subtract(total[p], aligned[i][p], out=scratch[p])
                k = n - 1
            else:
                scratch[p][...] = aligned[placed[0]][p]
                for j in placed[1:]:
                    scratch[p] += aligned[j][p]
                k = len(placed)
            np.multiply(scratch[p], 1.0 / k, out=target[p], casting="same_kind")
        return target

    def place(i: int, init: Any) -> bool:
        """Matches model i to ``target``; keeps the new permutations if they differ (the engine
        moves a permutation only for a gain), and says whether they did."""
        res = weight_matching(spec, target, work[i], init=init, seed=int(rng.integers(2**63)),
                              n_threads=n_threads)
        if all(np.array_equal(res.perms[g], perms[i][g]) for g in sizes):
            return False
        perms[i] = res.perms
        new = apply_permutation(spec, perms[i], work[i])
        for p in names:
            total[p] += new[p]
            total[p] -= aligned[i][p]
        aligned[i] = new
        return True

    rng = np.random.default_rng(seed)
    history = [objective()]
    converged = False
    bar = _progress(int(max_rounds), progress)
    rounds = 0
    try:
        for rounds in range(1, int(max_rounds) + 1):
            changed = False
            order = rng.permutation(n)
            if rounds == 1:
                # Each model against those placed before it, with a fresh matching walked from
                # the input ("forward"), which recovers a permuted copy exactly: the mean of all
                # the others would mix models not aligned yet. Warm starts from the identity
                # instead left permuted copies in two clusters (found by the tests).
                for k, i in enumerate(order[1:], 1):
                    mean_into_target(None, order[:k])
                    changed |= place(i, "forward")
            else:
                for i in order:
                    mean_into_target(i)
                    # From the current permutations: the descent can only raise <a_i, target>,
                    # hence the objective. A fresh matching each time (the first version) jumped
                    # between local optima, sometimes to a lower one, and on four random ResNet-18s
                    # never stopped (100 rounds, 160 s).
                    changed |= place(i, perms[i])
            history.append(objective())
            gain = history[-1] - history[-2]
            if bar is not None:
                bar.update(1)
                bar.set_postfix(objective=f"{history[-1]:.6g}", gain=f"{gain:.3g}")
            if not changed or (rounds > 1 and gain <= tol * abs(history[-1])):
                converged = True
                break
    finally:
        if bar is not None:
            bar.close()
    return _Rounds(perms=perms, rounds=rounds, history=history, converged=converged)


def _dot(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], names: Sequence[str]) -> float:
    """``sum_p <a_p, b_p>`` in float64 (both operands float64: numpy's mixed-type dot is 10x slower)."""
    return float(sum(np.dot(np.ravel(a[p]).astype(np.float64, copy=False),
                            np.ravel(b[p]).astype(np.float64, copy=False)) for p in names))


def _sq(x: np.ndarray) -> float:
    """``<x, x>`` in float64."""
    x = np.ravel(x).astype(np.float64, copy=False)
    return float(np.dot(x, x))


def _progress(total: int, progress: bool | None):
    """A tqdm bar over ``total`` rounds when stderr is a terminal (or ``progress=True``), else None."""
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="MergeMany rounds", leave=False)


def _average(params_list: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The mean of several models' floating entries, in the first model's type, device and dtype
    (summed in float32 for tensors, float64 for arrays, in one pass); other entries from the first
    model."""
    first, n = params_list[0], len(params_list)
    out = {}
    for k, a in first.items():
        if not _is_float(a):
            out[k] = a
        elif _is_torch(a):
            import torch

            with torch.no_grad():
                acc = a.detach().float().clone()
                for m in params_list[1:]:
                    acc += m[k].detach().to(a.device).float()
                out[k] = (acc / n).to(a.dtype)
        else:
            a = np.asarray(a)
            acc = a.astype(np.float64)
            for m in params_list[1:]:
                acc += np.asarray(m[k], dtype=np.float64)
            out[k] = (acc / n).astype(a.dtype)
    return out
