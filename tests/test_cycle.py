"""Cycle-consistent merging of N models (issue 16): Frank-Wolfe over every model's permutations
to one shared frame (C2M3's optimiser of MergeMany's objective), the pairwise maps through that
frame, and the cycle error that measures how far pairwise maps are from consistent."""

from __future__ import annotations

import numpy as np
import pytest

import rebasin_rs as rb

SPEC = rb.specs.mlp(["fc1", "fc2", "fc3"], bias=True)


def mlp(seed: int, width: int = 16) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    return {"fc1.weight": r.standard_normal((width, 6)), "fc1.bias": r.standard_normal(width),
            "fc2.weight": r.standard_normal((width, width)), "fc2.bias": r.standard_normal(width),
            "fc3.weight": r.standard_normal((3, width)), "fc3.bias": r.standard_normal(3)}


def copies(k: int = 4, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    base = mlp(seed)
    return [rb.apply_permutation(SPEC, {g: rng.permutation(16) for g in SPEC.groups}, base) for _ in range(k)]


def all_maps(res, n):
    return {(i, j): res.pairwise(i, j) for i in range(n) for j in range(n) if i != j}


@pytest.mark.parametrize("method", ["mergemany", "frank-wolfe"])
def test_permuted_copies_are_merged_into_one_model(method):
    models = copies()
    res = rb.merge_many(SPEC, models, method=method)
    aligned = [rb.apply_permutation(SPEC, p, m) for p, m in zip(res.perms, models)]
    for a in aligned[1:]:
        for k in a:
            np.testing.assert_allclose(a[k], aligned[0][k])
    for k in res.merged:
        np.testing.assert_allclose(res.merged[k], aligned[0][k])
    # The pairwise map i -> j puts model i in j's unit order.
    for (i, j), p in all_maps(res, len(models)).items():
        moved = rb.apply_permutation(SPEC, p, models[i])
        for k in moved:
            np.testing.assert_allclose(moved[k], models[j][k])


def test_frank_wolfe_is_cycle_consistent_and_never_below_the_first_placement():
    models = [mlp(s) for s in range(1, 5)]
    fw = rb.merge_many(SPEC, models, method="frank-wolfe")
    with pytest.warns(RuntimeWarning, match="max_rounds=1"):
        first = rb.merge_many(SPEC, models, max_rounds=1)
    assert fw.objective >= first.objective - 1e-9
    assert all(b >= a - 1e-9 for a, b in zip(fw.history, fw.history[1:]))
    assert rb.cycle_error(all_maps(fw, 4)) == 0.0
    # The reported objective is MergeMany's: sum_i <model_i, mean of the others>, aligned.
    aligned = [rb.apply_permutation(SPEC, p, m) for p, m in zip(fw.perms, models)]
    names = SPEC.real_params()
    total = {k: sum(a[k] for a in aligned) for k in names}
    value = sum(float(np.vdot(a[k], total[k] - a[k])) for a in aligned for k in names) / 3
    assert fw.objective == pytest.approx(value, rel=1e-6)  # the matching reads float32 copies


def test_pairwise_weight_matching_is_not_cycle_consistent():
    models = [mlp(s) for s in range(1, 5)]
    maps = {(i, j): rb.weight_matching(SPEC, models[j], models[i], init="forward").perms
            for i in range(4) for j in range(4) if i != j}
    assert rb.cycle_error(maps) > 0.1
    mm = rb.merge_many(SPEC, models)
    assert rb.cycle_error(all_maps(mm, 4)) == 0.0


def test_cycle_error_counts_units_and_refuses_bad_maps():
    maps = {(0, 1): {"P": np.array([1, 0, 2])}, (1, 2): {"P": np.array([0, 2, 1])},
            (0, 2): {"P": np.array([1, 0, 2])}}
    assert rb.cycle_error(maps) == pytest.approx(2 / 3)
    maps[(0, 2)] = {"P": np.array([1, 2, 0])}  # = (0 -> 1) then (1 -> 2)
    assert rb.cycle_error(maps) == 0.0
    with pytest.raises(rb.RebasinError, match="triple"):
        rb.cycle_error({(0, 1): {"P": np.arange(3)}})
    with pytest.raises(rb.RebasinError, match="same groups"):
        rb.cycle_error({**maps, (1, 2): {"Q": np.arange(3)}})
    with pytest.raises(rb.RebasinError, match="one architecture"):
        rb.cycle_error({**maps, (1, 2): {"P": np.arange(4)}})
    with pytest.raises(TypeError, match="maps must be a mapping"):
        rb.cycle_error([np.arange(3)])
    with pytest.raises(rb.RebasinError, match="method must be"):
        rb.merge_many(SPEC, copies(), method="zipit")


def test_modules_merge_with_frank_wolfe():
    torch = pytest.importorskip("torch")
    import rebasin_rs.torch as rbt

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
                               torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 2)).eval()
    x = torch.randn(2, 3, 8, 8)
    spec = rbt.infer_spec(base, x)
    rng = np.random.default_rng(0)
    models = [rbt.permute_model(base, spec, {g: rng.permutation(8) for g in spec.groups}) for _ in range(3)]
    out = rbt.merge_many(models, x, method="frank-wolfe")
    with torch.no_grad():
        torch.testing.assert_close(out.merged(x), base(x), rtol=1e-4, atol=1e-5)
    moved = rbt.permute_model(models[0], spec, out.pairwise(0, 2))
    for k, v in models[2].state_dict().items():
        torch.testing.assert_close(moved.state_dict()[k], v)
    others = [torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2)) for _ in range(3)]
    fw = rbt.merge_many(others, torch.randn(1, 3), method="frank-wolfe")
    maps = {(i, j): fw.pairwise(i, j) for i in range(3) for j in range(3) if i != j}
    assert rb.cycle_error(maps) == 0.0
