"""Weight matching, specs and apply_permutation: planted permutations, parity with the official
loop, function preservation on the paper's architectures, bad input."""

from __future__ import annotations

import dataclasses
import doctest
import pickle
import re

import numpy as np
import pytest

import rebasin_rs as rb
from _nets import (
    mlp_forward,
    mlp_params,
    objective,
    reference_weight_matching,
    resnet20_forward,
    resnet20_params,
    resnet50_forward,
    resnet50_params,
    vgg16_forward,
    vgg16_params,
)

MLP_LAYERS = ["fc0", "fc1", "fc2", "fc3"]


def random_perms(spec, params, rng):
    return {g: rng.permutation(n) for g, n in spec.validate(params).items()}


def inverse(perms):
    return {g: np.argsort(p) for g, p in perms.items()}


# ------------------------------------------------------------------------------------------------
# Function preservation: the spec builders describe real symmetries.

ARCHS = {
    "mlp": (lambda rng: mlp_params([12, 32, 24, 16, 5], rng), lambda: rb.specs.mlp(MLP_LAYERS),
            lambda p, x: mlp_forward(p, x, 4), (6, 12)),
    "resnet20x2": (lambda rng: resnet20_params(1, rng, blocks=2), lambda: rb.specs.resnet20(blocks=2),
                   lambda p, x: resnet20_forward(p, x, blocks=2), (2, 3, 8, 8)),
    "resnet50-narrow": (lambda rng: resnet50_params(4, rng, layers=(2, 2, 2, 2)),
                        lambda: rb.specs.resnet50(layers=(2, 2, 2, 2)),
                        lambda p, x: resnet50_forward(p, x, layers=(2, 2, 2, 2)), (2, 3, 32, 32)),
    "vgg16-narrow": (lambda rng: vgg16_params(2, rng), lambda: rb.specs.vgg16(spatial=1, channels=16),
                     lambda p, x: vgg16_forward(p, x), (2, 3, 32, 32)),
    "vgg16_bn-narrow-7x7": (lambda rng: vgg16_params(2, rng, bn=True, spatial=7),
                            lambda: rb.specs.vgg16(bn=True, spatial=7, channels=16),
                            lambda p, x: vgg16_forward(p, x, bn=True), (1, 3, 224, 224)),
}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_random_permutations_preserve_the_function(arch):
    make, spec_fn, forward, xshape = ARCHS[arch]
    rng = np.random.default_rng(0)
    params = make(rng)
    spec = spec_fn()
    sizes = spec.validate(params)
    # Every hidden unit is covered: every weight's output axis is permuted, except the head.
    assert len(sizes) >= 3
    x = rng.standard_normal(xshape)
    before = forward(params, x)
    perms = random_perms(spec, params, rng)
    permuted = rb.apply_permutation(spec, perms, params)
    assert any(not np.array_equal(permuted[k], params[k]) for k in params)
    np.testing.assert_allclose(forward(permuted, x), before, rtol=1e-7, atol=1e-9)


def test_apply_permutation_does_not_mutate_and_keeps_dtype():
    rng = np.random.default_rng(1)
    params = {k: v.astype(np.float32) for k, v in mlp_params([4, 6, 3], rng).items()}
    snapshot = {k: v.copy() for k, v in params.items()}
    spec = rb.specs.mlp(["fc0", "fc1"])
    out = rb.apply_permutation(spec, {"P_fc0": rng.permutation(6)}, params)
    for k in params:
        np.testing.assert_array_equal(params[k], snapshot[k])
        assert out[k].dtype == np.float32
    assert out is not params


# ------------------------------------------------------------------------------------------------
# Weight matching


@pytest.mark.parametrize("arch", ["mlp", "resnet20x2", "resnet50-narrow", "vgg16-narrow"])
def test_planted_permutations_are_recovered(arch):
    make, spec_fn, _, _ = ARCHS[arch]
    rng = np.random.default_rng(2)
    a = make(rng)
    spec = spec_fn()
    planted = random_perms(spec, a, rng)
    # B is A with its units shuffled (and a little noise): matching must undo the shuffle.
    b = rb.apply_permutation(spec, inverse(planted), a)
    b = {k: v + 1e-4 * rng.standard_normal(v.shape) for k, v in b.items()}
    res = rb.weight_matching(spec, a, b)
    for g, p in planted.items():
        np.testing.assert_array_equal(res.perms[g], p, err_msg=g)
    assert res.objective == pytest.approx(objective(spec, planted, a, b), rel=1e-5)
    assert res.sweeps == len(res.history) >= 1


def test_result_convention_and_determinism():
    rng = np.random.default_rng(3)
    a = mlp_params([10, 40, 30, 20, 4], rng)
    b = mlp_params([10, 40, 30, 20, 4], rng)
    spec = rb.specs.mlp(MLP_LAYERS)
    r1 = rb.weight_matching(spec, a, b, seed=7)
    r2 = rb.weight_matching(spec, a, b, seed=7)
    for g in spec.groups:
        np.testing.assert_array_equal(r1.perms[g], r2.perms[g])
        assert r1.perms[g].dtype == np.int64
    assert r1.history == r2.history and r1.orders == r2.orders
    # The history never decreases: each accepted step raises its own term of the objective.
    assert all(y >= x - 1e-6 * abs(x) for x, y in zip(r1.history, r1.history[1:]))
    assert r1.objective == pytest.approx(objective(spec, r1.perms, a, b), rel=1e-5)
    assert r1.objective > objective(spec, {g: np.arange(n) for g, n in spec.validate(a).items()}, a, b)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("arch", ["mlp", "resnet20x2", "vgg16-narrow"])
def test_never_below_the_official_loop(arch, seed):
    make, spec_fn, _, _ = ARCHS[arch]
    rng = np.random.default_rng(10 + seed)
    a, b = make(rng), make(rng)
    spec = spec_fn()
    ours = rb.weight_matching(spec, a, b, seed=seed)
    ref = reference_weight_matching(spec, a, b, seed=seed)
    ref_obj = objective(spec, ref, a, b)
    assert ours.objective >= ref_obj - 1e-6 * abs(ref_obj)


def test_group_costs_equal_numpy():
    rng = np.random.default_rng(4)
    a = resnet20_params(1, rng, blocks=1)
    b = resnet20_params(1, rng, blocks=1)
    spec = rb.specs.resnet20(blocks=1)
    names = list(spec.groups)
    perms = random_perms(spec, a, rng)
    for g in names:
        ours = rb.group_cost(spec, a, b, perms, g)
        n = len(perms[g])
        ref = np.zeros((n, n))
        for p, ax in spec.groups[g]:
            wb = np.asarray(b[p], np.float64)
            for ax2, h in spec.axes_to_perm[p].items():
                if ax2 != ax:
                    wb = np.take(wb, perms[h], axis=ax2)
            wa = np.moveaxis(np.asarray(a[p], np.float64), ax, 0).reshape(n, -1)
            ref += wa @ np.moveaxis(wb, ax, 0).reshape(n, -1).T
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_init_and_threads():
    rng = np.random.default_rng(5)
    a = mlp_params([6, 16, 12, 3], rng)
    spec = rb.specs.mlp(["fc0", "fc1", "fc2"])
    planted = random_perms(spec, a, rng)
    b = rb.apply_permutation(spec, inverse(planted), a)
    # Starting from the answer, one sweep confirms it.
    res = rb.weight_matching(spec, a, b, init=planted, n_threads=1)
    assert res.sweeps == 1
    for g in planted:
        np.testing.assert_array_equal(res.perms[g], planted[g])


# ------------------------------------------------------------------------------------------------
# Specs


def test_spec_from_axes_to_perm_matches_builder():
    spec = rb.PermutationSpec.from_axes_to_perm(
        {"fc0.weight": ("P_fc0", None), "fc0.bias": ("P_fc0",), "fc1.weight": (None, "P_fc0")}
    )
    assert spec.groups == rb.specs.mlp(["fc0", "fc1"]).groups
    assert spec.axes_to_perm["fc1.weight"] == {1: "P_fc0"}


def test_spec_rejects_an_axis_in_two_groups():
    with pytest.raises(ValueError, match="two groups"):
        rb.PermutationSpec({"P": (("w", 0),), "Q": (("w", 0),)})
    with pytest.raises(ValueError, match="empty"):
        rb.PermutationSpec({"P": ()})


# ------------------------------------------------------------------------------------------------
# Bad input: clear errors that name the parameter, nothing mutated.


def _mlp():
    rng = np.random.default_rng(6)
    return rb.specs.mlp(["fc0", "fc1"]), mlp_params([4, 6, 3], rng), mlp_params([4, 6, 3], rng)


def test_missing_parameter():
    spec, a, b = _mlp()
    del b["fc1.weight"]
    with pytest.raises(ValueError, match=r"params_b.*'fc1.weight'.*missing"):
        rb.weight_matching(spec, a, b)


def test_axis_size_mismatch_inside_a_group():
    spec, a, b = _mlp()
    a["fc0.bias"] = np.zeros(5)
    b["fc0.bias"] = np.zeros(5)
    with pytest.raises(ValueError, match=r"'fc0.bias'.*size 5"):
        rb.weight_matching(spec, a, b)


def test_a_b_shape_mismatch():
    spec, a, b = _mlp()
    b["fc1.weight"] = np.zeros((4, 6))
    with pytest.raises(ValueError, match=r"'fc1.weight'.*params_a.*params_b"):
        rb.weight_matching(spec, a, b)


def test_non_float_arrays():
    spec, a, b = _mlp()
    a["fc0.weight"] = np.ones((6, 4), dtype=np.int64)
    with pytest.raises(TypeError, match=r"params_a\['fc0.weight'\].*floating"):
        rb.weight_matching(spec, a, b)


def test_group_of_size_one_or_zero():
    rng = np.random.default_rng(7)
    a = {"fc0.weight": rng.standard_normal((1, 3)), "fc0.bias": rng.standard_normal(1),
         "fc1.weight": rng.standard_normal((2, 1))}
    with pytest.raises(ValueError, match="at least 2"):
        rb.weight_matching(rb.specs.mlp(["fc0", "fc1"]), a, a)


def test_bad_init_and_options():
    spec, a, b = _mlp()
    with pytest.raises(ValueError, match="not a permutation"):
        rb.weight_matching(spec, a, b, init={"P_fc0": np.zeros(6, dtype=int)})
    with pytest.raises(ValueError, match="no permutation"):
        rb.weight_matching(spec, a, b, init={})
    with pytest.raises(ValueError, match="max_iter"):
        rb.weight_matching(spec, a, b, max_iter=0)
    with pytest.raises(ValueError, match="n_threads"):
        rb.weight_matching(spec, a, b, n_threads=0)
    with pytest.raises(TypeError, match="PermutationSpec"):
        rb.weight_matching({"P": ()}, a, b)


def test_nothing_is_mutated():
    spec, a, b = _mlp()
    a32 = {k: v.astype(np.float32) for k, v in a.items()}
    snap = {k: v.copy() for k, v in b.items()}
    snap_a = {k: v.copy() for k, v in a32.items()}
    rb.weight_matching(spec, a32, b)
    for k in b:
        np.testing.assert_array_equal(b[k], snap[k])
        np.testing.assert_array_equal(a32[k], snap_a[k])


def test_apply_permutation_bad_perms():
    spec, a, _ = _mlp()
    with pytest.raises(ValueError, match="no permutation"):
        rb.apply_permutation(spec, {}, a)
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        rb.apply_permutation(spec, {"P_fc0": np.arange(5)}, a)


def test_non_finite_weights_name_the_group():
    spec, a, b = _mlp()
    b = dict(b)
    b["fc0.weight"] = b["fc0.weight"].copy()
    b["fc0.weight"][1, 1] = np.nan
    with pytest.raises(ValueError, match=r"group 'P_fc0'.*NaN or inf"):
        rb.weight_matching(spec, a, b)


def test_plain_lists_are_accepted():
    spec, a, _ = _mlp()
    lists = {k: v.tolist() for k, v in a.items()}
    res = rb.weight_matching(spec, a, lists)
    np.testing.assert_array_equal(res.perms["P_fc0"], np.arange(6))
    out = rb.apply_permutation(spec, res.perms, lists)
    np.testing.assert_allclose(out["fc0.weight"], a["fc0.weight"])


def test_warm_start_from_an_earlier_result_gives_the_same_result():
    rng = np.random.default_rng(3)
    spec = rb.specs.mlp(["fc1", "fc2", "fc3"])
    a = {"fc1.weight": rng.standard_normal((64, 10)), "fc1.bias": rng.standard_normal(64),
         "fc2.weight": rng.standard_normal((48, 64)), "fc2.bias": rng.standard_normal(48),
         "fc3.weight": rng.standard_normal((5, 48))}
    b = {k: v + 0.5 * rng.standard_normal(v.shape) for k, v in a.items()}
    first = rb.weight_matching(spec, a, b)
    b2 = {k: v + 0.01 * rng.standard_normal(v.shape) for k, v in b.items()}
    cold = rb.weight_matching(spec, a, b2, init=first.perms)
    warm = rb.weight_matching(spec, a, b2, init=first.perms, warm_start=first)
    for g in cold.perms:
        assert np.array_equal(cold.perms[g], warm.perms[g])
    assert warm.objective == pytest.approx(cold.objective, rel=1e-12)
    assert set(warm.warm) == set(spec.groups)


# ------------------------------------------------------------------------------------------------
# One exception family: RebasinError carries the user's names, from Python and from Rust alike.


def _no_index_numbers(msg):
    assert not re.search(r"(group|parameter|init for group) #?\d", msg), msg


def test_rebasin_error_is_a_value_error_with_fields():
    assert issubclass(rb.RebasinError, ValueError)
    assert "RebasinError" in rb.__all__ and "group_cost" in rb.__all__
    e = rb.RebasinError("msg", group="P", param="w", axis=1)
    assert (str(e), e.group, e.param, e.axis) == ("msg", "P", "w", 1)
    e2 = pickle.loads(pickle.dumps(e))
    assert (str(e2), e2.group, e2.param, e2.axis) == ("msg", "P", "w", 1)
    bare = rb.RebasinError("msg")
    assert (bare.group, bare.param, bare.axis) == (None, None, None)
    import rebasin_rs._errors as errors

    assert doctest.testmod(errors).failed == 0


def test_warm_start_with_a_repeated_column_names_the_group():
    spec, a, b = _mlp()
    first = rb.weight_matching(spec, a, b)
    col, u, v = first.warm["P_fc0"]
    col = col.copy()
    col[1] = col[0]
    broken = dataclasses.replace(first, warm={**first.warm, "P_fc0": (col, u, v)})
    with pytest.raises(rb.RebasinError, match=r"group 'P_fc0'.*assigned twice") as info:
        rb.weight_matching(spec, a, b, warm_start=broken)
    assert info.value.group == "P_fc0"
    assert "NaN" not in str(info.value)
    _no_index_numbers(str(info.value))


def test_init_naming_a_bad_permutation_names_the_group():
    spec, a, b = _mlp()
    with pytest.raises(rb.RebasinError, match=r"init\['P_fc0'\].*not a permutation") as info:
        rb.weight_matching(spec, a, b, init={"P_fc0": np.array([0, 0, 1, 2, 3, 4])})
    assert info.value.group == "P_fc0"
    with pytest.raises(rb.RebasinError, match="no permutation for group 'P_fc0'") as info:
        rb.weight_matching(spec, a, b, init={"Q": np.arange(6)})
    assert info.value.group == "P_fc0"
    _no_index_numbers(str(info.value))


def test_bad_parameters_name_the_parameter():
    spec, a, b = _mlp()
    missing = {k: v for k, v in b.items() if k != "fc1.weight"}
    with pytest.raises(rb.RebasinError, match="'fc1.weight'") as info:
        rb.weight_matching(spec, a, missing)
    assert (info.value.param, info.value.group) == ("fc1.weight", None)
    wrong = {**b, "fc1.weight": np.zeros((3, 5))}
    with pytest.raises(rb.RebasinError, match="'fc1.weight'") as info:
        rb.weight_matching(spec, a, wrong)
    assert info.value.param == "fc1.weight"
    sizes = {**a, "fc0.bias": np.zeros(5)}
    with pytest.raises(rb.RebasinError, match="'fc0.bias'") as info:
        rb.weight_matching(spec, sizes, {**b, "fc0.bias": np.zeros(5)})
    assert (info.value.group, info.value.param, info.value.axis) == ("P_fc0", "fc0.bias", 0)
    _no_index_numbers(str(info.value))


def test_nan_weight_says_nan_and_names_group_and_parameter():
    spec, a, b = _mlp()
    for init in (None, "forward"):
        bad = {**b, "fc1.weight": b["fc1.weight"].copy()}
        bad["fc1.weight"][0, 2] = np.inf
        with pytest.raises(rb.RebasinError, match=r"group 'P_fc0'.*'fc1.weight'.*NaN or inf") as info:
            rb.weight_matching(spec, a, bad, init=init)
        assert (info.value.group, info.value.param) == ("P_fc0", "fc1.weight")


def test_engine_errors_carry_names_and_axes():
    """Errors found in Rust (past the Python checks) reach Python as RebasinError with the names
    and the axis filled, not parsed from the message."""
    from rebasin_rs import _native

    a = [np.zeros((4, 3), np.float32), np.zeros(4, np.float32)]
    names = ["fc.weight", "fc.bias"]
    group = [("P_fc", 4, [(0, 0), (1, 0)])]
    with pytest.raises(rb.RebasinError, match=r"^parameter 'fc.weight': shape \[4, 3\]") as info:
        _native.weight_matching(group, names, a, [np.zeros((4, 2), np.float32), a[1]], 10, 0)
    assert (info.value.group, info.value.param, info.value.axis) == (None, "fc.weight", None)
    with pytest.raises(rb.RebasinError, match="group 'P_fc': has 4 units but axis 1 of parameter 'fc.weight'") as info:
        _native.weight_matching([("P_fc", 4, [(0, 1)])], names, a, a, 10, 0)
    assert (info.value.group, info.value.param, info.value.axis) == ("P_fc", "fc.weight", 1)
    with pytest.raises(rb.RebasinError, match="init for group 'P_fc'") as info:
        _native.weight_matching(group, names, a, a, 10, 0, [np.zeros(4, np.int64)])
    assert info.value.group == "P_fc"
    with pytest.raises(rb.RebasinError, match="names"):
        _native.weight_matching(group, names[:1], a, a, 10, 0)


def test_timings_are_reported():
    rng = np.random.default_rng(9)
    spec = rb.specs.mlp(MLP_LAYERS)
    a = mlp_params([8, 32, 32, 32, 4], rng)
    b = mlp_params([8, 32, 32, 32, 4], rng)
    res = rb.weight_matching(spec, a, b, init="forward", n_threads=1)
    t = res.timings
    assert list(t) == ["gemm", "gather", "lap", "forward", "total"]
    assert all(v >= 0 for v in t.values()) and t["forward"] > 0
    assert t["total"] >= t["gemm"] + t["lap"]
    # Timings are not part of the result's identity.
    field = {f.name: f for f in dataclasses.fields(rb.MatchingResult)}["timings"]
    assert not field.compare and "timings" not in repr(res)
    assert rb.MatchingResult({}, 0.0, 0, [], []).timings == {}


def test_group_cost_public():
    spec, a, b = _mlp()
    ident = {g: np.arange(n) for g, n in spec.validate(a).items()}
    np.testing.assert_array_equal(rb.group_cost(spec, a, b, None, "P_fc0"), rb.group_cost(spec, a, b, ident, "P_fc0"))
    with pytest.raises(rb.RebasinError, match="no permutation 'Q'") as info:
        rb.group_cost(spec, a, b, None, "Q")
    assert info.value.group == "Q"
    with pytest.raises(rb.RebasinError, match="no permutation for group 'P_fc0'"):
        rb.group_cost(spec, a, b, {}, "P_fc0")


@pytest.mark.parametrize("builder, kwargs, error, message", [
    ("mlp", {"layers": 3}, TypeError, "mlp: layers must be a list of module names"),
    ("mlp", {"layers": "fc1"}, TypeError, "got str 'fc1'"),  # not read letter by letter
    ("mlp", {"layers": ["fc1"]}, rb.RebasinError, "at least 2"),
    ("mlp", {"layers": ["fc1", "fc1"]}, rb.RebasinError, "names a module twice"),
    ("mlp", {"layers": ["fc1", 2]}, TypeError, "got 2"),
    ("mlp", {"layers": ["fc1", "fc2"], "norms": "bn"}, TypeError, "mlp: norms"),
    ("mlp", {"layers": ["fc1", "fc2", "fc3"], "norms": ["bn"]}, rb.RebasinError, "one entry per hidden layer"),
    ("vgg16", {"classifier": 5}, TypeError, "vgg16: classifier"),
    ("vgg16", {"classifier": (6, 3, 0)}, rb.RebasinError, "increasing"),
    ("vgg16", {"spatial": 0}, rb.RebasinError, "vgg16: spatial must be at least 1"),
    ("vgg16", {"channels": "512"}, TypeError, "vgg16: channels must be an int"),
    ("resnet20", {"blocks": 0}, rb.RebasinError, "resnet20: blocks must be at least 1"),
    ("resnet20", {"blocks": 2.5}, TypeError, "resnet20: blocks must be an int"),
    ("resnet20", {"head": 3}, TypeError, "resnet20: head"),
    ("resnet50", {"layers": 3}, TypeError, "resnet50: layers"),
    ("resnet50", {"layers": (3, 0, 6, 3)}, rb.RebasinError, "resnet50: layers must be at least 1"),
])
def test_spec_builders_name_a_bad_argument(builder, kwargs, error, message):
    # Each of these raised a bare TypeError from inside the builder, or built a spec of modules
    # that do not exist (a string read letter by letter, a stage of no blocks).
    with pytest.raises(error, match=re.escape(message)):
        getattr(rb.specs, builder)(**kwargs)


def test_spec_builders_take_numpy_arrays():
    assert rb.specs.resnet50(layers=np.array([3, 4, 6, 3])) == rb.specs.resnet50()
    assert rb.specs.vgg16(classifier=np.array([0, 3, 6])) == rb.specs.vgg16()
    assert rb.specs.mlp(np.array(["fc1", "fc2", "fc3"])) == rb.specs.mlp(["fc1", "fc2", "fc3"])


def test_last_history_entry_is_the_objective():
    # Issue 12: the history was tracked by float32 gains and ended ~1e-8 away from the objective.
    rng = np.random.default_rng(3)
    spec = rb.specs.mlp(["fc0", "fc1", "fc2"])
    a, b = (mlp_params([64, 256, 256, 10], rng) for _ in range(2))
    res = rb.weight_matching(spec, a, b)
    assert len(res.history) > 2
    assert res.history[-1] == res.objective
    assert res.history == sorted(res.history)


@pytest.mark.parametrize("arch", ["mlp", "resnet20x2"])
def test_a_cost_memory_cap_keeps_the_matching(arch):
    # Groups whose cost does not fit are recomputed at each visit instead of kept and updated.
    make, spec_fn, _, _ = ARCHS[arch]
    rng = np.random.default_rng(7)
    a, b = make(rng), make(rng)
    spec = spec_fn()
    full = rb.weight_matching(spec, a, b, init="forward")
    smallest = min(spec.validate(a).values())
    for cap in (0, 4 * smallest**2, 10**12):
        capped = rb.weight_matching(spec, a, b, init="forward", max_cost_memory=cap)
        assert capped.objective == pytest.approx(full.objective, rel=1e-9)
        for g in full.perms:
            np.testing.assert_array_equal(capped.perms[g], full.perms[g])
    with pytest.raises(rb.RebasinError, match="max_cost_memory"):
        rb.weight_matching(spec, a, b, max_cost_memory=-1)
    with pytest.raises(TypeError, match="max_cost_memory"):
        rb.weight_matching(spec, a, b, max_cost_memory=1.5)
