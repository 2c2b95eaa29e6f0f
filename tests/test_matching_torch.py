"""weight_matching and apply_permutation on torch tensors (CPU here; the same code keeps tensors on
their own device)."""

from __future__ import annotations

import numpy as np
import pytest

import rebasin_rs as rb

torch = pytest.importorskip("torch")
nn = torch.nn


def make_mlp(seed: int) -> "nn.Module":
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 24), nn.LayerNorm(24), nn.ReLU(),
                         nn.Linear(24, 4))


SPEC_LAYERS = ["0", "2", "5"]


def spec():
    return rb.specs.mlp(SPEC_LAYERS, norms=[None, "3"])


def test_permuted_state_dict_computes_the_same_function():
    model = make_mlp(0).eval()
    sd = model.state_dict()
    rng = np.random.default_rng(0)
    perms = {g: rng.permutation(n) for g, n in spec().validate(sd).items()}
    new_sd = rb.apply_permutation(spec(), perms, sd)
    assert all(isinstance(v, torch.Tensor) for v in new_sd.values())
    assert type(new_sd) is type(sd)
    x = torch.randn(5, 10)
    before = model(x)
    other = make_mlp(1).eval()
    other.load_state_dict(new_sd)
    torch.testing.assert_close(other(x), before, rtol=1e-5, atol=1e-6)
    # The source state dict is untouched.
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_apply_permutation_keeps_dtype_and_device(dtype):
    sd = {k: v.to(dtype) for k, v in make_mlp(0).state_dict().items()}
    perms = {g: np.arange(n)[::-1].copy() for g, n in spec().validate(sd).items()}
    out = rb.apply_permutation(spec(), perms, sd)
    for k, v in out.items():
        assert v.dtype == dtype and v.device == sd[k].device
    torch.testing.assert_close(out["0.bias"], sd["0.bias"].flip(0))


def test_weight_matching_on_tensors_equals_numpy_and_recovers_a_planted_permutation():
    model = make_mlp(0)
    a = dict(model.named_parameters())  # requires_grad tensors: detached internally
    rng = np.random.default_rng(1)
    planted = {g: rng.permutation(n) for g, n in spec().validate(a).items()}
    inv = {g: np.argsort(p) for g, p in planted.items()}
    b = rb.apply_permutation(spec(), inv, {k: v.detach() for k, v in a.items()})
    res = rb.weight_matching(spec(), a, b)
    for g in planted:
        np.testing.assert_array_equal(res.perms[g], planted[g])
    res_np = rb.weight_matching(spec(), {k: v.detach().numpy() for k, v in a.items()},
                                {k: v.numpy() for k, v in b.items()})
    assert res_np.objective == pytest.approx(res.objective, rel=1e-12)
    # float64 tensors and a mix of kinds work too.
    res64 = rb.weight_matching(spec(), {k: v.detach().double() for k, v in a.items()},
                               {k: v.numpy() for k, v in b.items()})
    for g in planted:
        np.testing.assert_array_equal(res64.perms[g], planted[g])


def test_integer_tensor_is_refused():
    sd = make_mlp(0).state_dict()
    bad = dict(sd)
    bad["0.weight"] = torch.ones(32, 10, dtype=torch.int64)
    with pytest.raises(TypeError, match=r"params_a\['0.weight'\].*floating"):
        rb.weight_matching(spec(), bad, sd)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_weights_match_as_their_float32_values(dtype):
    # The engine reads float16/bfloat16 in place and widens them block by block: the result is that
    # of the same values widened up front, for torch tensors and numpy float16 arrays alike.
    dt = getattr(torch, dtype)
    a = {k: v.to(dt) for k, v in make_mlp(0).state_dict().items()}
    b = {k: v.to(dt) for k, v in make_mlp(1).state_dict().items()}
    wide_a = {k: v.float() for k, v in a.items()}
    wide_b = {k: v.float() for k, v in b.items()}
    half = rb.weight_matching(spec(), a, b)
    wide = rb.weight_matching(spec(), wide_a, wide_b)
    assert half.objective == wide.objective and half.history == wide.history
    for g in half.perms:
        np.testing.assert_array_equal(half.perms[g], wide.perms[g])
        np.testing.assert_array_equal(rb.group_cost(spec(), a, b, half.perms, g),
                                      rb.group_cost(spec(), wide_a, wide_b, half.perms, g))
    if dtype == "float16":
        np_half = rb.weight_matching(spec(), {k: v.numpy() for k, v in a.items()}, {k: v.numpy() for k, v in b.items()})
        assert np_half.objective == wide.objective
    # Mixed: A in half precision, B in float32.
    assert rb.weight_matching(spec(), a, wide_b).objective == wide.objective
    # The caller's tensors are untouched and keep their dtype.
    assert all(v.dtype == dt for v in a.values())


def test_align_of_bfloat16_models_reads_them_in_place():
    import rebasin_rs.torch as rbt

    a, b = make_mlp(0).to(torch.bfloat16).eval(), make_mlp(1).to(torch.bfloat16).eval()
    x = torch.randn(3, 10, dtype=torch.bfloat16)
    aligned, res = rbt.align(a, b, x)
    _, wide = rbt.align(a.float(), b.float(), x.float())
    assert res.objective == wide.objective
    assert all(v.dtype == torch.bfloat16 for v in aligned.state_dict().values())
    # A permutation of B, exactly: the same multiset of values in every weight.
    for k, v in b.state_dict().items():
        assert torch.equal(aligned.state_dict()[k].flatten().sort().values, v.flatten().sort().values), k
