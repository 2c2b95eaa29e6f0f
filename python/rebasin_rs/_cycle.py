"""Cycle-consistent matching of N models: every model mapped to one shared *universe*, so that the
map between any two models is the composition of theirs (``P_ij = P_j^T P_i``) and every cycle of
maps closes.

:func:`frank_wolfe` maximises the sum over all pairs of models of their weight-matching objective
``sum_{i<j} <pi_i(theta_i), pi_j(theta_j)>`` over each model's permutations to the universe, as
C2M3 (Crisostomi et al., NeurIPS 2024) does: Frank-Wolfe on the relaxation to doubly stochastic
matrices, whose linear step is one assignment per model and group (the gradient is that model's
weight-matching cost against the sum of the others), with an exact search of the step along
the segment. It starts from the identity, as C2M3 does, and keeps the best projection onto
permutations met along the way, or MergeMany's first round (each model placed against those before
it) where that is better: it never ends below either.

:func:`cycle_error` measures how far a set of pairwise maps is from consistent.
"""

from __future__ import annotations

import itertools
from typing import Any, Mapping, Sequence

import numpy as np

from rebasin_rs._errors import RebasinError
from rebasin_rs._lap import solve_lap
from rebasin_rs._matching import _as_f32
from rebasin_rs._spec import PermutationSpec

def _apply(x: np.ndarray, axes: Mapping[int, str], soft: Mapping[str, np.ndarray], skip: int | None = None) -> np.ndarray:
    """``x`` with the (soft) permutation matrix ``soft[g]`` applied on each axis ``a`` of group
    ``g`` (``y = P x`` along that axis), except axis ``skip``."""
    for a, g in axes.items():
        if a != skip:
            x = np.moveaxis(np.tensordot(soft[g], x, axes=(1, a)), 0, a)
    return x


class _Problem:
    """The members of the spec (pieces and views resolved) of every model, in float64."""

    def __init__(self, spec: PermutationSpec, models: Sequence[Mapping[str, Any]]) -> None:
        self.spec = spec
        self.axes = spec.axes_to_perm
        self.members = spec.params()
        self.x = [{m: _as_f32(spec.take(m, model), f"params_list[{k}]", m).astype(np.float64)
                   for m in self.members} for k, model in enumerate(models)]
        self.degree = 2 * max(len(a) for a in self.axes.values())

    def applied(self, soft: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return [{m: _apply(xi[m], self.axes[m], si) for m in self.members} for xi, si in zip(self.x, soft)]

    def objective(self, soft: list[dict[str, np.ndarray]]) -> float:
        """``sum_{i<j} <pi_i(theta_i), pi_j(theta_j)>`` over the members."""
        ys = self.applied(soft)
        total = 0.0
        for m in self.members:
            s = sum(y[m] for y in ys)
            total += float(np.vdot(s, s)) - sum(float(np.vdot(y[m], y[m])) for y in ys)
        return total / 2

    def gradient(self, soft: list[dict[str, np.ndarray]], sizes: Mapping[str, int]) -> list[dict[str, np.ndarray]]:
        """d objective / d P_i^g for every model i and group g: model i's weight-matching cost
        against the sum of the others, each member read through the other axes' matrices."""
        ys = self.applied(soft)
        total = {m: sum(y[m] for y in ys) for m in self.members}
        grads = []
        for i, (xi, si) in enumerate(zip(self.x, soft)):
            gi = {g: np.zeros((n, n)) for g, n in sizes.items()}
            for m in self.members:
                target = total[m] - ys[i][m]
                for a, g in self.axes[m].items():
                    own = _apply(xi[m], self.axes[m], si, skip=a)
                    t = np.moveaxis(target, a, 0).reshape(sizes[g], -1)
                    o = np.moveaxis(own, a, 0).reshape(sizes[g], -1)
                    gi[g] += t @ o.T
            grads.append(gi)
        return grads


def _matrix(perm: np.ndarray) -> np.ndarray:
    """A permutation index array as a matrix (``P[i, perm[i]] = 1``: ``P x`` moves unit
    ``perm[i]`` to slot ``i``, the convention of :func:`rebasin_rs.apply_permutation`)."""
    m = np.zeros((len(perm), len(perm)))
    m[np.arange(len(perm)), perm] = 1.0
    return m


def _hard(perms: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every group's permutation as a matrix (:func:`_matrix`)."""
    return {g: _matrix(p) for g, p in perms.items()}


def frank_wolfe(spec: PermutationSpec, params_list: Sequence[Mapping[str, Any]], candidate: Sequence[Mapping[str, np.ndarray]],
                *, max_rounds: int, tol: float) -> tuple[list[dict[str, np.ndarray]], int, list[float], bool]:
    """Frank-Wolfe from the identity, keeping the best projection onto permutations it meets, or
    ``candidate`` (one mapping group -> int array per model) where that is better. Returns
    (permutations, iterations run, the best hard objective before and after each iteration,
    converged). The hard objective is ``sum_{i<j} <pi_i(theta_i), pi_j(theta_j)>``."""
    problem = _Problem(spec, params_list)
    sizes = {g: len(p) for g, p in candidate[0].items()}
    start = [{g: np.arange(n) for g, n in sizes.items()} for _ in candidate]
    soft = [_hard(p) for p in start]
    relaxed = problem.objective(soft)
    best = [dict(p) for p in candidate]
    best_value = problem.objective([_hard(p) for p in candidate])
    if relaxed > best_value:
        best, best_value = start, relaxed
    history = [best_value]
    converged = False
    rounds = 0
    for rounds in range(1, max_rounds + 1):
        grads = problem.gradient(soft, sizes)
        vertex = [{g: _matrix(solve_lap(gi[g], maximize=True).col_ind) for g in sizes} for gi in grads]
        direction = [{g: v[g] - s[g] for g in sizes} for v, s in zip(vertex, soft)]

        def at(step: float) -> list[dict[str, np.ndarray]]:
            return [{g: s[g] + step * d[g] for g in sizes} for s, d in zip(soft, direction)]

        # Along the segment the objective is a polynomial in the step of degree at most twice
        # the most permuted axes of one member (each axis is linear in the step, and the
        # objective pairs two models): interpolated exactly from that many points plus one, its
        # maximum on [0, 1] is at an end or a root of its derivative.
        ts = 0.5 - 0.5 * np.cos(np.pi * np.arange(problem.degree + 1) / problem.degree)
        known = {0.0: relaxed, 1.0: problem.objective(at(1.0))}
        values = [known[t] if t in known else problem.objective(at(t)) for t in ts]
        poly = np.polyfit(ts, values, problem.degree)
        crit = [float(r.real) for r in np.roots(np.polyder(poly)) if abs(r.imag) < 1e-12 and 0 < r.real < 1]
        step = max([0.0, 1.0] + crit, key=lambda t: np.polyval(poly, t))
        value = known[step] if step in known else problem.objective(at(step))
        gain = value - relaxed
        if step > 0 and gain > 0:
            soft, relaxed = at(step), value
        # The nearest permutations of the relaxed point (an assignment maximising <P, soft>).
        projected = [{g: solve_lap(s[g], maximize=True).col_ind for g in sizes} for s in soft]
        hard_value = problem.objective([_hard(p) for p in projected])
        if hard_value > best_value:
            best, best_value = projected, hard_value
        history.append(best_value)
        if step == 0 or gain <= tol * abs(relaxed):
            converged = True
            break
    return [{g: np.asarray(p[g], dtype=np.int64) for g in sizes} for p in best], rounds, history, converged


def pairwise(perms: Sequence[Mapping[str, np.ndarray]], i: int, j: int) -> dict[str, np.ndarray]:
    """The permutations that align model ``i`` onto model ``j``, from each model's permutations to
    a shared universe (``perm[s]``: the unit moved to universe slot ``s``): unit ``u`` of ``j``
    sits in slot ``s = perm_j^-1[u]``, which holds unit ``perm_i[s]`` of ``i``."""
    return {g: np.asarray(perms[i][g])[np.argsort(perms[j][g])] for g in perms[i]}


def cycle_error(maps: Mapping[tuple[int, int], Mapping[str, Any]]) -> float:
    """How far pairwise maps are from cycle-consistent: over every triple of models ``i, j, k``
    with maps ``i -> j``, ``j -> k`` and ``i -> k`` (each a mapping group -> permutation aligning
    the first model onto the second), the share of units where aligning ``i`` to ``j`` then to
    ``k`` differs from aligning ``i`` to ``k`` directly, averaged over triples and groups. Zero for
    maps that go through one universe (MergeMany's and Frank-Wolfe's).

    Example:
        >>> import numpy as np, rebasin_rs as rb
        >>> maps = {(0, 1): {"P": np.array([1, 0, 2])}, (1, 2): {"P": np.array([0, 2, 1])},
        ...         (0, 2): {"P": np.array([1, 0, 2])}}
        >>> round(rb.cycle_error(maps), 3)
        0.667
    """
    if not isinstance(maps, Mapping):
        raise TypeError(f"maps must be a mapping (i, j) -> permutations, got {type(maps).__name__}")
    models = sorted({k for pair in maps for k in pair})
    errors = []
    for i, j, k in itertools.permutations(models, 3):
        if (i, j) in maps and (j, k) in maps and (i, k) in maps:
            groups = set(maps[(i, k)])
            for pair in ((i, j), (j, k)):
                if set(maps[pair]) != groups:
                    raise RebasinError(f"cycle_error: maps[{pair}] has groups {sorted(maps[pair])} but maps[{(i, k)}] "
                                       f"has {sorted(groups)}; every map must hold the same groups")
            for g, direct in maps[(i, k)].items():
                first, second = np.asarray(maps[(i, j)][g]), np.asarray(maps[(j, k)][g])
                if not len(first) == len(second) == len(np.asarray(direct)):
                    raise RebasinError(f"cycle_error: group {g!r} has {len(first)}, {len(second)} and "
                                       f"{len(np.asarray(direct))} units in maps {(i, j)}, {(j, k)} and {(i, k)}; "
                                       "the maps must be between models of one architecture", group=g)
                # Align i onto j (unit first[u] of i at slot u of j), then that onto k.
                through = first[second]
                errors.append(float(np.mean(through != np.asarray(direct))))
    if not errors:
        raise RebasinError("cycle_error: maps holds no triple (i -> j, j -> k, i -> k); pass maps between at "
                           "least three models")
    return float(np.mean(errors))
