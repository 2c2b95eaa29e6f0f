"""No silent wrong answers (issue 12): inputs that used to pass and give a wrong result, or fail with
an error that named neither the argument nor the fix, now raise one clear error naming the entry.

Models of different architectures, missing, extra or re-typed entries; options of the wrong type or
out of range; models on the meta device; gradients left unpermuted; NaN in buffers; malformed
specs and permutations.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402
from torch import nn  # noqa: E402

import rebasin_rs as rb  # noqa: E402
import rebasin_rs.torch as rbt  # noqa: E402


def seeded(factory, seed=0):
    torch.manual_seed(seed)
    return factory()


def bn_mlp(bias=True):
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2, bias=bias))


X = torch.randn(3, 4)


def mlp_params(seed=0):
    rng = np.random.default_rng(seed)
    return {"fc1.weight": rng.standard_normal((6, 4)), "fc1.bias": rng.standard_normal(6),
            "fc2.weight": rng.standard_normal((3, 6))}


SPEC = rb.specs.mlp(["fc1", "fc2"])


# ------------------------------------------------------------------------------------------------
# 1. Two models must be of one architecture: every entry, not only the spec's.


def test_resnet18_against_resnet34_is_refused_naming_the_first_extra_entry():
    tv = pytest.importorskip("torchvision")
    a, b = tv.models.resnet18(), tv.models.resnet34()
    with pytest.raises(rb.RebasinError, match="same architecture") as e:
        rbt.align(a, b, torch.randn(1, 3, 32, 32))
    assert e.value.param == "layer1.2.conv1.weight"
    with pytest.raises(rb.RebasinError) as e:
        rbt.align(b, a, torch.randn(1, 3, 32, 32))
    assert e.value.param == "layer1.2.conv1.weight"


@pytest.mark.parametrize("which", ["b", "a"])
def test_an_entry_missing_on_either_side_is_named(which):
    full, short = seeded(bn_mlp), seeded(lambda: bn_mlp(bias=False), 1)
    a, b = (full, short) if which == "b" else (short, full)
    with pytest.raises(rb.RebasinError, match=r"'3.bias'.*same architecture") as e:
        rbt.align(a, b, X)
    assert e.value.param == "3.bias"


def test_an_extra_entry_is_named():
    a, b = seeded(bn_mlp), seeded(bn_mlp, 1)
    b.register_buffer("extra", torch.ones(3))
    with pytest.raises(rb.RebasinError, match="model_b has an entry 'extra', which model_a lacks") as e:
        rbt.align(a, b, X)
    assert e.value.param == "extra"


@pytest.mark.parametrize("name", ["3.bias", "0.weight"])
def test_a_float_entry_stored_as_int_is_named(name):
    a, b = seeded(bn_mlp), seeded(bn_mlp, 1)
    module, attr = b[int(name[0])], name[2:]
    setattr(module, attr, nn.Parameter(getattr(module, attr).detach().to(torch.int32), requires_grad=False))
    with pytest.raises(rb.RebasinError, match=rf"'{name}' has dtype torch.float32 in model_a but torch.int32") as e:
        rbt.align(a, b, X)
    assert e.value.param == name


def test_float_widths_may_differ():
    a = seeded(bn_mlp)
    b = rbt.permute_model(a, rbt.infer_spec(a, X), {"P_0": np.random.default_rng(0).permutation(8)}).double()
    aligned, _ = rbt.align(a, b, X)
    assert aligned[0].weight.dtype == torch.float64
    assert torch.equal(aligned[0].weight.float(), a[0].weight)


def test_validate_of_two_state_dicts_compares_every_entry():
    a = mlp_params()
    assert SPEC.validate(a, dict(a)) == {"P_fc1": 6}
    with pytest.raises(rb.RebasinError, match="params_b has an entry 'fc2.bias'") as e:
        SPEC.validate(a, {**a, "fc2.bias": np.zeros(3)})
    assert e.value.param == "fc2.bias"
    with pytest.raises(rb.RebasinError, match="'step' has dtype int64 in params_a but float64") as e:
        SPEC.validate({**a, "step": np.zeros((), np.int64)}, {**a, "step": np.zeros(())})
    # The members only, as weight matching compares them: the mappings may hold just those.
    assert SPEC.validate(a, {**a, "fc2.bias": np.zeros(3)}, members_only=True) == {"P_fc1": 6}


def test_weight_matching_takes_the_matched_parameters_alone_but_checks_their_shapes_and_dtypes():
    a, b = mlp_params(0), mlp_params(1)
    rb.weight_matching(SPEC, {**a, "other": np.zeros(2)}, b)
    with pytest.raises(rb.RebasinError, match="'fc1.bias' has shape") as e:
        rb.weight_matching(SPEC, a, {**b, "fc1.bias": np.zeros(7)})
    assert e.value.param == "fc1.bias"
    with pytest.raises(TypeError, match=r"params_b\['fc1.bias'\] has dtype int32"):
        rb.weight_matching(SPEC, a, {**b, "fc1.bias": np.zeros(6, np.int32)})


def _rebasin(*args, cwd):
    return subprocess.run([sys.executable, "-m", "rebasin_rs", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, check=False)


def test_cli_align_with_a_spec_file_refuses_checkpoints_of_two_architectures(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    a = seeded(lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)))
    b = seeded(lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2),
                                     nn.ReLU(), nn.Linear(2, 2)), 1)
    # The spec of A's first layer only: B's shared entries fit it, B's extra layer does not show.
    spec = rb.PermutationSpec({"P_0": (("0.weight", 0), ("0.bias", 0), ("2.weight", 1))})
    spec.save(tmp_path / "spec.json")
    st.save_file(a.state_dict(), str(tmp_path / "a.safetensors"))
    st.save_file(b.state_dict(), str(tmp_path / "b.safetensors"))
    p = _rebasin("align", "a.safetensors", "b.safetensors", "--model", "spec.json", "-o", "out.safetensors",
                 cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr and re.search(r"'6\.(weight|bias)'.*same architecture", p.stderr), p.stderr
    assert not (tmp_path / "out.safetensors").exists()
    st.save_file(a.state_dict(), str(tmp_path / "a2.safetensors"))
    p = _rebasin("align", "a.safetensors", "a2.safetensors", "--model", "spec.json", "-o", "out.safetensors",
                 cwd=tmp_path)
    assert p.returncode == 0, p.stderr


# ------------------------------------------------------------------------------------------------
# 2. Options: real ints within range, named; meta models named.


BAD_MAX_ITER = [(2**64, rb.RebasinError), (2**63, rb.RebasinError), (0, rb.RebasinError),
                (float("inf"), TypeError), (1.7, TypeError), ("5", TypeError), (True, TypeError),
                (np.float64(3.0), TypeError)]


@pytest.mark.parametrize("value,error", BAD_MAX_ITER)
def test_bad_max_iter_is_named(value, error):
    a, b = mlp_params(0), mlp_params(1)
    with pytest.raises(error, match="max_iter"):
        rb.weight_matching(SPEC, a, b, max_iter=value)
    with pytest.raises(error, match="max_iter"):
        rbt.align(seeded(bn_mlp), seeded(bn_mlp, 1), X, max_iter=value)


@pytest.mark.parametrize("value", [1.5, "0", True, None, np.float32(2)])
def test_seed_must_be_an_int(value):
    with pytest.raises(TypeError, match="seed"):
        rb.weight_matching(SPEC, mlp_params(0), mlp_params(1), seed=value)
    with pytest.raises(TypeError, match="seed"):
        rbt.align(seeded(bn_mlp), seeded(bn_mlp, 1), X, seed=value)


def test_valid_ints_keep_their_meaning():
    a, b = mlp_params(0), mlp_params(1)
    # A seed is taken modulo 2**64, as before: -1 and 2**64 - 1 are one seed.
    r1 = rb.weight_matching(SPEC, a, b, seed=-1)
    r2 = rb.weight_matching(SPEC, a, b, seed=2**64 - 1)
    assert r1.orders == r2.orders
    r3 = rb.weight_matching(SPEC, a, b, seed=np.int64(5), max_iter=np.int32(3))
    r4 = rb.weight_matching(SPEC, a, b, seed=5, max_iter=3)
    assert r3.orders == r4.orders and np.array_equal(r3.perms["P_fc1"], r4.perms["P_fc1"])
    rb.weight_matching(SPEC, a, b, max_iter=2**63 - 1)


def test_align_init_missing_a_group_names_it():
    a, b = seeded(bn_mlp), seeded(bn_mlp, 1)
    with pytest.raises(rb.RebasinError, match="init has no permutation for group 'P_0'") as e:
        rbt.align(a, b, X, init={})
    assert e.value.group == "P_0"
    with pytest.raises(TypeError, match="init"):
        rbt.align(a, b, X, init=[np.arange(8)])
    with pytest.raises(TypeError, match="init"):
        rb.weight_matching(SPEC, mlp_params(0), mlp_params(1), init=[np.arange(6)])
    _, res = rbt.align(a, b, X)
    _, res2 = rbt.align(a, b, X, init=res.perms)
    assert all(np.array_equal(res.perms[g], res2.perms[g]) for g in res.perms)


def test_init_with_a_method_that_does_not_use_it_is_refused():
    a, b = seeded(bn_mlp), seeded(bn_mlp, 1)
    with pytest.raises(rb.RebasinError, match="init="):
        rbt.align(a, b, X, method="activation", data=[X], init={"P_0": np.arange(8)})


def test_warm_start_must_be_a_result():
    with pytest.raises(TypeError, match="warm_start must be a MatchingResult"):
        rb.weight_matching(SPEC, mlp_params(0), mlp_params(1), warm_start="x")


@pytest.mark.parametrize("kwargs,error,name", [
    (dict(inplace=1), TypeError, "inplace"), (dict(inplace="no"), TypeError, "inplace"),
    (dict(epochs=1.5), TypeError, "epochs"), (dict(epochs=0), rb.RebasinError, "epochs"),
    (dict(num_batches=0), rb.RebasinError, "num_batches"), (dict(num_batches=2.0), TypeError, "num_batches"),
    (dict(lr=0.0), rb.RebasinError, "lr"), (dict(lr=float("nan")), rb.RebasinError, "lr"),
    (dict(lr="1e-3"), TypeError, "lr"),
])
def test_align_options_are_checked(kwargs, error, name):
    a, b = seeded(bn_mlp), seeded(bn_mlp, 1)
    with pytest.raises(error, match=name):
        rbt.align(a, b, X, **kwargs)


def _meta(factory):
    with torch.device("meta"):
        return factory()


def test_meta_models_are_named_with_the_fix():
    a, meta = seeded(bn_mlp), _meta(bn_mlp)
    spec = rbt.infer_spec(meta, X.to("meta"))  # tracing needs no data
    fix = r"meta device.*load its weights first \(e.g. load_state_dict\(\.\.\., assign=True\) or to_empty\)"
    with pytest.raises(rb.RebasinError, match="model_b has parameters on the " + fix) as e:
        rbt.align(a, meta, X)
    assert e.value.param == "0.weight"
    with pytest.raises(rb.RebasinError, match="model_a has parameters on the " + fix):
        rbt.align(meta, a, X)
    with pytest.raises(rb.RebasinError, match=fix):
        rbt.extract_weights(meta)
    # permute_model used to return a meta model: the permutation lost, the weights loaded later
    # in their old order.
    with pytest.raises(rb.RebasinError, match=fix):
        rbt.permute_model(meta, spec, {"P_0": np.arange(8)})
    with pytest.raises(rb.RebasinError, match=fix):
        rbt.check_equivalence(meta, spec, X)


# ------------------------------------------------------------------------------------------------
# 3. Gradients move with their parameters.


def _with_grads(model):
    model.train()
    model(torch.randn(5, 4)).square().sum().backward()
    return model


def test_inplace_permutation_permutes_the_gradients():
    model = _with_grads(seeded(bn_mlp))
    spec = rbt.infer_spec(model, X)
    perm = np.random.default_rng(0).permutation(8)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    rbt.permute_model(model, spec, {"P_0": perm}, inplace=True)
    assert torch.equal(model[0].weight.grad, grads["0.weight"][perm])
    assert torch.equal(model[0].bias.grad, grads["0.bias"][perm])
    assert torch.equal(model[1].weight.grad, grads["1.weight"][perm])
    assert torch.equal(model[3].weight.grad, grads["3.weight"][:, perm])
    assert torch.equal(model[3].bias.grad, grads["3.bias"])


def test_align_inplace_permutes_the_gradients_and_a_copy_has_none():
    a = seeded(bn_mlp)
    spec = rbt.infer_spec(a, X)
    perm = np.random.default_rng(1).permutation(8)
    b = _with_grads(rbt.permute_model(a, spec, {"P_0": perm}))
    grads = {n: p.grad.clone() for n, p in b.named_parameters()}
    copy, _ = rbt.align(a, b, X)
    assert all(p.grad is None for p in copy.parameters())
    aligned, res = rbt.align(a, b, X, inplace=True)
    p = res.perms["P_0"]
    assert aligned is b and torch.equal(b[0].weight, a[0].weight)
    assert torch.equal(b[0].weight.grad, grads["0.weight"][p])
    assert torch.equal(b[3].weight.grad, grads["3.weight"][:, p])


# ------------------------------------------------------------------------------------------------
# 4. NaN and inf in what align permutes, buffers included.


@pytest.mark.parametrize("entry,kind", [("1.running_var", "buffer"), ("1.running_mean", "buffer"),
                                        ("1.weight", "parameter")])
def test_non_finite_values_in_b_are_refused_naming_the_entry(entry, kind):
    a, b = seeded(bn_mlp), seeded(bn_mlp, 1)
    with torch.no_grad():
        b.state_dict(keep_vars=True)[entry][2] = float("nan") if kind == "buffer" else float("inf")
    with pytest.raises(rb.RebasinError, match=rf"model_b: {kind} '{entry}' holds NaN or infinite") as e:
        rbt.align(a, b, X)
    assert e.value.param == entry


# ------------------------------------------------------------------------------------------------
# Specs and permutations that used to be read as something else.


@pytest.mark.parametrize("axis", [1.5, True, "1"])
def test_a_spec_axis_must_be_an_int(axis):
    with pytest.raises(rb.RebasinError, match="must be an int") as e:
        rb.PermutationSpec({"P": (("w", axis),)})
    assert e.value.param == "w"
    assert rb.PermutationSpec({"P": (("w", np.int64(1)),)}).groups == {"P": (("w", 1),)}


def test_malformed_members_are_refused():
    # ("a1",) was read as parameter "a", axis 1; (3, 0) as parameter "3".
    for members in [("a1",), ((3, 0),), "w0"]:
        with pytest.raises(rb.RebasinError, match="parameter name, axis"):
            rb.PermutationSpec({"P": members})
    with pytest.raises(rb.RebasinError, match="lists axis 0 of 'w' twice"):
        rb.PermutationSpec({"P": (("w", 0), ("w", 0))})
    with pytest.raises(TypeError, match="groups must be a mapping"):
        rb.PermutationSpec([("P", (("w", 0),))])
    with pytest.raises(rb.RebasinError, match="must be an int"):
        rb.PermutationSpec({"P": (("w", 0),)}, views={"w": (2.5, 2)})


def test_overlapping_pieces_are_refused():
    w = {"w": np.arange(16.0).reshape(4, 4)}
    pieces = {"w#a": ("w", ((0, 0, 3),)), "w#b": ("w", ((0, 1, 4),))}
    # Used to duplicate row 0 and lose another, silently.
    with pytest.raises(rb.RebasinError, match="pieces 'w#a' and 'w#b' of 'w' overlap"):
        rb.PermutationSpec({"P": (("w#a", 0),), "Q": (("w#b", 0),)}, pieces=pieces)
    disjoint = {"w#a": ("w", ((0, 0, 2), (1, 0, 2))), "w#b": ("w", ((0, 0, 2), (1, 2, 4)))}
    spec = rb.PermutationSpec({"P": (("w#a", 0), ("w#b", 0))}, pieces=disjoint)
    out = rb.apply_permutation(spec, {"P": np.array([1, 0])}, w)
    np.testing.assert_array_equal(out["w"][:2], w["w"][[1, 0]])
    np.testing.assert_array_equal(out["w"][2:], w["w"][2:])


@pytest.mark.parametrize("pieces,groups,pattern", [
    ({"w#a": ("w", ((0, 0, 2),))}, {"P": (("w", 1),), "Q": (("w#a", 0),)}, "also has pieces"),
    ({"w#a": ("w#b", ((0, 0, 2),)), "w#b": ("w", ((0, 0, 2),))}, {"P": (("w#a", 0),)}, "itself a piece"),
    ({"w": ("w", ((0, 0, 2),))}, {"P": (("w", 0),)}, "name of its own"),
    ({"w#a": ("w", ((0, 0, 2), (0, 2, 4)))}, {"P": (("w#a", 0),)}, "slices one axis twice"),
    ({"w#a": ("w", ((0, 0, 2.5),))}, {"P": (("w#a", 0),)}, "must be an int"),
])
def test_inconsistent_pieces_are_refused(pieces, groups, pattern):
    with pytest.raises(rb.RebasinError, match=pattern):
        rb.PermutationSpec(groups, pieces=pieces)


def test_a_spec_file_naming_a_group_twice_is_refused(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text('{"groups": {"P": [["w", 0]], "P": [["v", 0]]}}')
    with pytest.raises(rb.RebasinError, match="'P' appears twice"):
        rb.PermutationSpec.load(path)
    path.write_text(json.dumps({"groups": [["P", [["w", 0]]]]}))
    with pytest.raises(rb.RebasinError, match="'groups' must be a mapping"):
        rb.PermutationSpec.load(path)
    path.write_text(json.dumps({"groups": {"P": [["w", 0]]}, "pieces": {"x": 3}}))
    with pytest.raises(rb.RebasinError, match="malformed"):
        rb.PermutationSpec.load(path)


def test_axes_to_perm_refuses_a_string_for_a_tuple():
    # ("P1") is the string "P1": it was read as groups "P" and "1" on axes 0 and 1.
    with pytest.raises(rb.RebasinError, match=r"a single axis is written \('P1',\)"):
        rb.PermutationSpec.from_axes_to_perm({"fc1.bias": ("P1")})
    with pytest.raises(rb.RebasinError, match="permutation name"):
        rb.PermutationSpec.from_axes_to_perm({"fc1.bias": (1,)})


def test_perms_must_be_a_mapping():
    a = mlp_params()
    with pytest.raises(TypeError, match="perms must be a mapping"):
        rb.apply_permutation(SPEC, [np.arange(6)], a)
    with pytest.raises(TypeError, match="perms must be a mapping"):
        rb.group_cost(SPEC, a, a, [np.arange(6)], "P_fc1")
    model = seeded(bn_mlp)
    with pytest.raises(TypeError, match="perms must be a mapping"):
        rbt.permute_model(model, rbt.infer_spec(model, X), [np.arange(8)])
    with pytest.raises(TypeError, match="inplace"):
        rbt.permute_model(model, rbt.infer_spec(model, X), {"P_0": np.arange(8)}, inplace="yes")


def test_extract_weights_names_are_checked():
    model = seeded(bn_mlp)
    with pytest.raises(TypeError, match="string"):
        rbt.extract_weights(model, "0.weight")  # was read letter by letter
    with pytest.raises(rb.RebasinError, match="no entry 'nope'"):
        rbt.extract_weights(model, ["nope"])
    # A non-float entry asked for by name was dropped silently; now named.
    with pytest.raises(TypeError, match="num_batches_tracked"):
        rbt.extract_weights(model, ["1.num_batches_tracked"])
    assert "1.num_batches_tracked" not in rbt.extract_weights(model)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_tied_weights_permuted_two_ways_are_refused():
    model = seeded(Tied)
    # a.weight and b.weight are one tensor: which permutation won depended on the order of writes.
    spec = rb.PermutationSpec({"P": (("a.weight", 0), ("a.bias", 0)), "Q": (("b.weight", 1),)})
    with pytest.raises(rb.RebasinError, match="tied") as e:
        rbt.permute_model(model, spec, {"P": np.array([1, 0, 2, 3]), "Q": np.array([0, 1, 3, 2])})
    assert e.value.param == "b.weight"
    same = rb.PermutationSpec({"P": (("a.weight", 0), ("b.weight", 0))})
    moved = rbt.permute_model(model, same, {"P": np.array([1, 0, 2, 3])})
    assert moved.a.weight is moved.b.weight


def test_restrict_refuses_a_lone_name():
    # Read letter by letter, "fc1.weight" kept nothing and returned an empty spec.
    with pytest.raises(TypeError, match=r"write \['fc1.weight'\]"):
        SPEC.restrict("fc1.weight")
    assert SPEC.restrict(["fc1.weight"]).groups == {"P_fc1": (("fc1.weight", 0),)}


def test_results_compare_with_equals():
    a, b = mlp_params(0), mlp_params(1)
    r1, r2 = rb.weight_matching(SPEC, a, b), rb.weight_matching(SPEC, a, b)
    assert r1 == r2 and not (r1 != r2)
    flipped = rb.MatchingResult({"P_fc1": r1.perms["P_fc1"][::-1]}, r1.objective, r1.sweeps, r1.history, r1.orders)
    assert r1 != flipped


def test_namedtuple_inputs_reach_the_model():
    from collections import namedtuple

    from rebasin_rs.torch._utils import to_device

    Pair = namedtuple("Pair", "x y")
    moved = to_device(Pair(torch.ones(1), 2), "cpu")
    assert isinstance(moved, Pair) and moved.y == 2


def test_large_finite_values_are_not_mistaken_for_inf():
    # Their sum overflows float32; the exact test behind the quick one clears them.
    a = seeded(bn_mlp)
    with torch.no_grad():
        a[1].running_var.fill_(3e38)
    b = rbt.permute_model(a, rbt.infer_spec(a, X), {"P_0": np.random.default_rng(0).permutation(8)})
    aligned, _ = rbt.align(a, b, X)
    assert torch.equal(aligned[1].running_var, a[1].running_var)
