"""The official weight-matching loop ported to numpy + scipy: the reference that rebasin_rs is
tested and benchmarked against. Slow by design (every cost recomputed, every assignment cold-solved
with scipy); needs scipy.

Example:
    >>> import numpy as np, rebasin_rs as rb
    >>> from rebasin_rs.reference import reference_weight_matching
    >>> rng = np.random.default_rng(0)
    >>> a = {"fc1.weight": rng.standard_normal((6, 3)), "fc2.weight": rng.standard_normal((2, 6))}
    >>> spec = rb.PermutationSpec({"P": (("fc1.weight", 0), ("fc2.weight", 1))})
    >>> sorted(reference_weight_matching(spec, a, a)["P"].tolist())
    [0, 1, 2, 3, 4, 5]
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

import rebasin_rs as rb

__all__ = ["objective", "reference_weight_matching"]


def reference_weight_matching(spec: rb.PermutationSpec, params_a: Mapping[str, Any], params_b: Mapping[str, Any],
                              max_iter: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """Git Re-Basin's weight matching as the official code does it (every cost recomputed from
    scratch, every assignment cold-solved with scipy), in float32 like the official JAX code,
    visiting the groups in the same order as rebasin_rs for the same seed."""
    from scipy.optimize import linear_sum_assignment

    names = list(spec.groups)
    sizes = spec.validate(params_a, params_b)
    axes = spec.axes_to_perm
    a = {p: np.asarray(spec.take(p, params_a), dtype=np.float32) for p in spec.params()}
    b = {p: np.asarray(spec.take(p, params_b), dtype=np.float32) for p in spec.params()}
    perms = {g: np.arange(n) for g, n in sizes.items()}
    orders = rb._native.visit_orders(len(names), seed, max_iter)
    for it in range(max_iter):
        progress = False
        for gi in orders[it]:
            g = names[gi]
            n = sizes[g]
            cost = np.zeros((n, n), dtype=np.float32)
            for p, ax in spec.groups[g]:
                wb = b[p]
                for ax2, h in axes[p].items():
                    if ax2 != ax:
                        wb = np.take(wb, perms[h], axis=ax2)
                wa = np.moveaxis(a[p], ax, 0).reshape(n, -1)
                wb = np.moveaxis(wb, ax, 0).reshape(n, -1)
                cost += wa @ wb.T
            _, ci = linear_sum_assignment(cost, maximize=True)
            old = float(cost[np.arange(n), perms[g]].astype(np.float64).sum())
            new = float(cost[np.arange(n), ci].astype(np.float64).sum())
            if new > old + 1e-12:
                perms[g] = ci
                progress = True
        if not progress:
            break
    return perms


def objective(spec: rb.PermutationSpec, perms: Mapping[str, Any], params_a: Mapping[str, Any],
              params_b: Mapping[str, Any]) -> float:
    """sum_p <A_p, pi(B_p)> over the spec's parameters, in float64."""
    pb = rb.apply_permutation(spec, perms, params_b)
    return float(sum(np.sum(np.asarray(params_a[p], np.float64) * np.asarray(pb[p], np.float64))
                     for p in spec.real_params()))
