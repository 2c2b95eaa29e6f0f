"""rebasin_rs.torch on hand-made models: every rule of the tracer, its fallbacks, its warnings, and
the adapters' contracts (devices, dtypes, nothing mutated, clear errors)."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import rebasin_rs as rb  # noqa: E402
import rebasin_rs.torch as rbt  # noqa: E402


def seeded(factory, seed=0):
    torch.manual_seed(seed)
    return factory()


def planted_roundtrip(model, x, spec=None, **align_opts):
    """Permute a copy at random, align it back: every tensor must come back exactly."""
    spec = spec or rbt.infer_spec(model, x)
    rng = np.random.default_rng(3)
    planted = {g: rng.permutation(n) for g, n in spec.validate(model.state_dict()).items()}
    b = rbt.permute_model(model, spec, planted)
    aligned, _ = rbt.align(model, b, spec=spec, **align_opts)
    for k, v in model.state_dict().items():
        assert torch.equal(aligned.state_dict()[k], v), k


def no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


class FunctionalNet(nn.Module):
    """Functionals, methods, a residual add, LayerNorm, a view and a mean over tokens."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 32)
        self.ln = nn.LayerNorm(32)
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 32)
        self.scale = nn.Parameter(torch.rand(32) + 0.5)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.fc2(F.gelu(self.fc1(self.ln(h)))) * self.scale
        h = torch.relu(h).view(h.size(0), h.size(1), -1)
        return self.head(h.mean(dim=1))


class ConvZoo(nn.Module):
    """Conv1d/3d, ConvTranspose2d, InstanceNorm, GroupNorm(1), GroupNorm(C), PReLU, pooling."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(2, 8, 3, padding=1)
        self.gn1 = nn.GroupNorm(1, 8)
        self.c2 = nn.Conv1d(8, 8, 3, padding=1)
        self.gn2 = nn.GroupNorm(8, 8)
        self.pr = nn.PReLU(8)
        self.c3 = nn.Conv3d(8, 6, 1)
        self.inorm = nn.InstanceNorm3d(6, affine=True, track_running_stats=True)
        self.up = nn.ConvTranspose2d(6, 5, 2, stride=2)
        self.bn = nn.BatchNorm2d(5)
        self.out = nn.Conv2d(5, 1, 1)

    def forward(self, x):
        h = self.pr(self.gn2(self.c2(F.relu(self.gn1(self.c1(x))))))  # (N, 8, L)
        h = self.inorm(self.c3(h[:, :, None, None, :]))  # (N, 6, 1, 1, L)
        h = F.relu(self.bn(self.up(h.flatten(2, 3))))  # (N, 5, 2, 2L)
        return F.adaptive_avg_pool2d(self.out(h), 1).flatten(1)


class Branches(nn.Module):
    """Inception-like: two branches concatenated on channels, then a 1x1 conv and a flatten."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 1)
        self.bn = nn.BatchNorm2d(10)
        self.mix = nn.Conv2d(10, 8, 1)
        self.fc = nn.Linear(8 * 4 * 4, 5)
        self.fc2 = nn.Linear(5, 2)

    def forward(self, x):
        h = torch.cat([F.relu(self.a(x)), torch.sigmoid(self.b(x))], dim=1)
        h = F.relu(self.mix(self.bn(h)))
        h = F.max_pool2d(h, 2)
        return self.fc2(F.relu(self.fc(torch.flatten(h, 1))))


def excite_bn(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
                    m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
                              nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.3)
    return model.eval()


MLP = lambda: nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(),  # noqa: E731
                            nn.Dropout(0.1), nn.Linear(16, 3))


@pytest.mark.parametrize("make,shape", [
    (MLP, (4, 5)),
    (FunctionalNet, (4, 7, 6)),
    (ConvZoo, (2, 2, 9)),
    (Branches, (2, 3, 8, 8)),
])
def test_every_hidden_unit_is_permuted_and_the_function_kept(make, shape):
    model = excite_bn(seeded(make))
    x = torch.randn(*shape)
    spec = no_warnings(rbt.infer_spec, model, x)
    cov = rbt.spec_coverage(model, x)
    assert cov.share == 1.0 and cov.hidden > 0, cov
    with torch.no_grad():
        scale = float(model(x).abs().max())
    assert scale > 1e-3
    for seed in range(3):
        assert rbt.check_equivalence(model, spec, x, seed=seed) < 1e-5 * max(1.0, scale)
    planted_roundtrip(model, x, spec)


def test_mlp_spec_is_the_expected_one():
    spec = rbt.infer_spec(seeded(MLP), torch.randn(1, 5))
    assert spec.groups == {
        "P_0": (("0.weight", 0), ("0.bias", 0), ("2.weight", 1)),
        "P_2": (("2.weight", 0), ("2.bias", 0), ("5.weight", 1)),
    }


def test_residual_and_parameter_product_share_one_group():
    spec = rbt.infer_spec(seeded(FunctionalNet), torch.randn(2, 3, 6))
    (stream,) = [g for g, ms in spec.groups.items() if ("inp.weight", 0) in ms]
    for member in [("ln.weight", 0), ("fc1.weight", 1), ("fc2.weight", 0), ("scale", 0), ("head.weight", 1)]:
        assert member in spec.groups[stream]


def test_concatenation_gives_pieces_and_flatten_gives_a_view():
    spec = rbt.infer_spec(seeded(Branches), torch.randn(1, 3, 8, 8))
    assert spec.pieces["bn.weight[0:4]"] == ("bn.weight", ((0, 0, 4),))
    assert spec.pieces["mix.weight[:, 4:10]"] == ("mix.weight", ((1, 4, 10),))
    assert spec.views["fc.weight"] == (5, 8, 4, 4)
    (g,) = [g for g, ms in spec.groups.items() if ("fc.weight", 1) in ms]
    # mix.weight is read in pieces (its input axis is the concatenation); both follow its output.
    assert {("mix.weight[:, 0:4]", 0), ("mix.weight[:, 4:10]", 0)} <= set(spec.groups[g])


def test_pieces_roundtrip_in_numpy():
    model = excite_bn(seeded(Branches))
    spec = rbt.infer_spec(model, torch.randn(1, 3, 8, 8))
    params = {k: v.numpy() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    perms = {g: rng.permutation(n) for g, n in spec.validate(params).items()}
    inverse = {g: np.argsort(p) for g, p in perms.items()}
    moved = rb.apply_permutation(spec, perms, params)
    assert not np.array_equal(moved["bn.weight"], params["bn.weight"])
    back = rb.apply_permutation(spec, inverse, moved)
    for k in params:
        assert np.array_equal(back[k], params[k]), k


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.g = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.gn = nn.GroupNorm(4, 16)
        self.c2 = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        h = F.relu(self.g(F.relu(self.c1(x))))
        h = F.relu(self.c2(self.gn(h)))
        return self.fc(h.mean((2, 3)))


def planted(model, spec, seed=1):
    """B = A with a random permutation of every group (none the identity)."""
    sizes = spec.validate(model.state_dict())
    rng = np.random.default_rng(seed)
    perms = {g: np.roll(np.arange(n), 1) if n == 2 else rng.permutation(n) for g, n in sizes.items()}
    return rbt.permute_model(model, spec, perms)


def test_grouped_convolution_and_groupnorm_move_as_blocks():
    model = excite_bn(seeded(Grouped))
    x = torch.randn(2, 3, 6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = rbt.infer_spec(model, x)
    cov = rbt.spec_coverage(model, x)
    assert cov.share == 1.0 and not cov.unpermuted
    assert cov.by_kind == {"groups": (4, 4), "within-group": (8, 8), "units": (8, 8)}
    # The grouped layer's weight is (groups, out per group, in per group, kh, kw): the groups on
    # axis 0 (shared with its input's channels), each side's position in a group on its own axis.
    assert spec.views["g.weight"] == (4, 4, 4, 3, 3)
    axes = {g: {ax for m, ax in ms if m == "g.weight"} for g, ms in spec.groups.items()}
    assert sorted(map(sorted, filter(None, axes.values()))) == [[0], [1], [2]]
    assert ("gn.weight", 0) in [m for ms in spec.groups.values() for m in ms]
    assert rbt.check_equivalence(model, spec, x) < 1e-5
    b = planted(model, spec)
    assert not torch.equal(b.g.weight, model.g.weight)
    for method, kw in (("weight", {}), ("activation", {"data": [torch.randn(16, 3, 6, 6) for _ in range(3)]})):
        aligned, res = rbt.align(model, b, x, spec=spec, method=method, **kw)
        for k, v in model.state_dict().items():
            assert torch.equal(aligned.state_dict()[k], v), (method, k)
        if method == "activation":
            assert res.sweeps == 0  # every group measured by its activations, none left to weights


class GroupedTransposed(nn.Module):
    """A transposed grouped convolution, a depthwise one with a channel multiplier, GroupNorm
    with groups that nest in the convolution's, and 1-D grouped convolutions."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 1)
        self.t = nn.ConvTranspose2d(16, 24, 3, groups=4)
        self.gn = nn.GroupNorm(8, 24)
        self.dw = nn.Conv2d(24, 48, 3, groups=24)
        self.c2 = nn.Conv2d(48, 12, 1)
        self.g1 = nn.Conv1d(12, 12, 3, groups=3)
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        h = torch.tanh(self.t(torch.tanh(self.c1(x))))
        h = torch.tanh(self.dw(self.gn(h)))
        h = torch.tanh(self.c2(h)).flatten(2)
        return self.fc(torch.tanh(self.g1(h)).mean(2))


def test_grouped_variants_keep_the_function_and_are_recovered():
    model = excite_bn(seeded(GroupedTransposed))
    x = torch.randn(2, 3, 6, 6)
    spec = rbt.infer_spec(model, x)
    assert rbt.spec_coverage(model, x).share == 1.0
    assert rbt.check_equivalence(model, spec, x) < 1e-5
    aligned, _ = rbt.align(model, planted(model, spec), x, spec=spec)
    for k, v in model.state_dict().items():
        assert torch.equal(aligned.state_dict()[k], v), k


class Clashing(nn.Module):
    """Groups of 3 channels, then GroupNorm in groups of 2: no block structure holds both."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 12, 1)
        self.g = nn.Conv2d(12, 12, 3, groups=4)
        self.gn = nn.GroupNorm(6, 12)
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        return self.fc(F.relu(self.gn(self.g(F.relu(self.c1(x))))).mean((2, 3)))


def test_clashing_channel_groups_stay_fixed_with_a_warning():
    model = excite_bn(seeded(Clashing))
    x = torch.randn(2, 3, 6, 6)
    with pytest.warns(UserWarning, match=r"GroupNorm with 6 groups"):
        spec = rbt.infer_spec(model, x)
    assert rbt.spec_coverage(model, x).share < 1.0
    assert rbt.check_equivalence(model, spec, x) < 1e-5


class Unknown(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 12)
        self.fc2 = nn.Linear(12, 12)
        self.fc3 = nn.Linear(12, 2)

    def forward(self, x):
        h = torch.cumsum(F.relu(self.fc1(x)), dim=1)  # depends on the order of the units
        return self.fc3(F.relu(self.fc2(h)))


def test_unknown_operation_fixes_its_units_and_is_named():
    model = seeded(Unknown)
    x = torch.randn(3, 4)
    with pytest.warns(UserWarning, match="cumsum"):
        spec = rbt.infer_spec(model, x)
    assert list(spec.groups) == ["P_fc2"]
    assert rbt.check_equivalence(model, spec, x) < 1e-5


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, 10)
        self.shared = nn.Linear(10, 10)
        self.out = nn.Linear(10, 2)

    def forward(self, x):
        h = F.relu(self.inp(x))
        h = F.relu(self.shared(h))
        h = F.relu(self.shared(h))  # the same weights twice tie input and output units
        return self.out(h)


def test_shared_module_ties_its_units():
    model = seeded(Tied)
    x = torch.randn(2, 3)
    spec = no_warnings(rbt.infer_spec, model, x)
    assert len(spec.groups) == 1
    assert rbt.check_equivalence(model, spec, x) < 1e-5
    planted_roundtrip(model, x, spec)


class Embed(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.fc = nn.Linear(8, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, idx):
        return self.out(F.relu(self.fc(self.emb(idx).mean(1))))


def test_embedding_columns_are_units_rows_are_not():
    model = seeded(Embed)
    x = torch.randint(0, 20, (3, 5))
    spec = no_warnings(rbt.infer_spec, model, x)
    assert ("emb.weight", 1) in [m for ms in spec.groups.values() for m in ms]
    assert ("emb.weight", 0) not in [m for ms in spec.groups.values() for m in ms]
    assert rbt.check_equivalence(model, spec, x) < 1e-5
    planted_roundtrip(model, x, spec)


class ShapeBranch(nn.Module):
    """Python control flow on a shape: torch.fx cannot trace it, torch.export can."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x):
        if x.shape[0] > 1:
            x = x * 2
        return self.fc2(F.relu(self.fc1(x)))


def test_export_fallback_when_fx_fails():
    model = seeded(ShapeBranch)
    x = torch.randn(3, 4)
    spec = rbt.infer_spec(model, x)
    assert spec.groups == {"P_fc1": (("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1))}
    assert rbt.check_equivalence(model, spec, x) < 1e-5


class DataBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return x


def test_untraceable_model_says_what_failed_and_how_to_pass_a_spec():
    with pytest.raises(ValueError, match=r"torch.fx.*torch.export.*spec="):
        rbt.infer_spec(DataBranch(), torch.randn(2, 4))


class Extra(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 6)
        self.fc3 = nn.Linear(6, 2)
        self.register_buffer("mask", torch.rand(6) + 0.5, persistent=False)

    def forward(self, x):
        h = F.relu(self.fc1(x)) * self.mask  # not in state_dict: permute_model cannot move it
        return self.fc3(F.relu(self.fc2(h)))


def test_tensor_outside_state_dict_keeps_its_units():
    model = seeded(Extra)
    x = torch.randn(2, 4)
    with pytest.warns(UserWarning, match="not in the state_dict"):
        spec = rbt.infer_spec(model, x)
    assert list(spec.groups) == ["P_fc2"]
    assert rbt.check_equivalence(model, spec, x) < 1e-5


def test_infer_spec_leaves_the_model_as_it_was():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    model.train()
    model[1].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rbt.infer_spec(model, torch.randn(2, 3, 6, 6))
    assert model.training and not model[1].training and model[0].training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_permute_model_copies_unless_inplace():
    model = seeded(MLP)
    spec = rbt.infer_spec(model, torch.randn(1, 5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    perms = {"P_0": torch.randperm(16), "P_2": np.random.default_rng(0).permutation(16)}
    out = rbt.permute_model(model, spec, perms)
    assert out is not model
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert torch.equal(out[0].weight, model[0].weight[perms["P_0"]])
    same = rbt.permute_model(model, spec, perms, inplace=True)
    assert same is model and torch.equal(model[0].weight, out[0].weight)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_keep_their_dtype(dtype):
    model = seeded(MLP).to(dtype)
    x = torch.randn(4, 5, dtype=dtype)
    spec = rbt.infer_spec(model, x)
    planted = {g: torch.randperm(n) for g, n in spec.validate(model.state_dict()).items()}
    b = rbt.permute_model(model, spec, planted)
    assert all(p.dtype == dtype for p in b.parameters())
    aligned, res = rbt.align(model, b, spec=spec)
    assert all(p.dtype == dtype for p in aligned.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(aligned.state_dict()[k], v), k
    assert rbt.check_equivalence(model, spec, x) < 1e-2


def test_align_infers_the_spec_and_matches_learnable_parameters_only():
    a = excite_bn(seeded(Branches, 0))
    b = excite_bn(seeded(Branches, 1), seed=1)
    x = torch.randn(2, 3, 8, 8)
    aligned, res = rbt.align(a, b, x)
    assert set(res.perms) == set(rbt.infer_spec(a, x).groups)
    # Same function as B, closer to A than B was.
    with torch.no_grad():
        assert torch.allclose(aligned(x), b(x), atol=1e-5)
    dot = lambda m: sum(float((pa * pm).sum().detach()) for pa, pm in zip(a.parameters(), m.parameters()))  # noqa: E731
    assert dot(aligned) > dot(b)
    assert res.history == sorted(res.history)


def test_align_errors_name_the_fix():
    a, b = seeded(MLP), seeded(MLP, 1)
    with pytest.raises(ValueError, match="example_inputs"):
        rbt.align(a, b)
    with pytest.raises(ValueError, match="method"):
        rbt.align(a, b, torch.randn(1, 5), method="ste")
    wider = nn.Sequential(nn.Linear(5, 17), nn.ReLU(), nn.Linear(17, 16), nn.Tanh(), nn.Dropout(), nn.Linear(16, 3))
    with pytest.raises(ValueError, match="same architecture"):
        rbt.align(a, wider, torch.randn(1, 5))
    with pytest.raises(TypeError, match="model_b"):
        rbt.align(a, {"0.weight": 1}, torch.randn(1, 5))
    with pytest.raises(TypeError, match="example_inputs"):
        rbt.infer_spec(a, 3.0)
    spec = rbt.infer_spec(a, torch.randn(1, 5))
    with pytest.raises(ValueError, match="P_2"):
        rbt.permute_model(a, spec, {"P_0": np.arange(16)})
    with pytest.raises(ValueError, match="not a permutation"):
        rbt.permute_model(a, spec, {"P_0": np.zeros(16, int), "P_2": np.arange(16)})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benches/gpu_check.py covers it)")
def test_cuda_models_stay_on_the_device():
    a = seeded(Branches).cuda().eval()
    x = torch.randn(2, 3, 8, 8, device="cuda")
    spec = rbt.infer_spec(a, x)
    planted = {g: torch.randperm(n) for g, n in spec.validate(a.state_dict()).items()}
    b = rbt.permute_model(a, spec, planted)
    aligned, _ = rbt.align(a, b, spec=spec)
    assert all(p.is_cuda for p in aligned.parameters())
    for k, v in a.state_dict().items():
        assert torch.equal(aligned.state_dict()[k], v), k


def test_bad_input_raises_one_error_family_with_the_users_names():
    a = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    b = nn.Sequential(nn.Linear(4, 9), nn.ReLU(), nn.Linear(9, 2))
    x = torch.randn(1, 4)
    with pytest.raises(rb.RebasinError, match="example_inputs"):
        rbt.align(a, a)
    with pytest.raises(rb.RebasinError, match="unknown method"):
        rbt.align(a, a, x, method="magic")
    with pytest.raises(rb.RebasinError) as e:
        rbt.align(a, b, x)  # another architecture: the spec of A does not fit B
    assert e.value.param is not None and e.value.param in a.state_dict()
    with pytest.raises(rb.RebasinError, match="could not trace"):
        rbt.infer_spec(a, torch.randn(1, 5))
    with pytest.raises(rb.RebasinError, match="no batch"):
        rbt.reset_bn_stats(nn.Sequential(nn.BatchNorm1d(3)), [])
