"""rbt.register_rule: a user teaches the tracer a module or function it leaves fixed otherwise."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import rebasin_rs.torch as rbt  # noqa: E402


@torch.fx.wrap
def fused_gated_mlp(x, w_gate, w_up, w_down):
    """Stands for a fused kernel (Triton, CUDA): torch.fx does not look inside it."""
    return F.linear(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)


class GatedMLP(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.gate = nn.Linear(d, h, bias=False)
        self.up = nn.Linear(d, h, bias=False)
        self.down = nn.Linear(h, d, bias=False)

    def forward(self, x):
        return fused_gated_mlp(x, self.gate.weight, self.up.weight, self.down.weight)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.mlp = GatedMLP(16, 32)
        self.norm = nn.LayerNorm(16)
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.mlp(h)
        return self.out(self.norm(h))


def module_rule(call):
    x = call.input()
    hidden = call.new_units(call.module.gate.out_features)
    call.bind("gate.weight", [hidden, x.axes[-1]])
    call.bind("up.weight", [hidden, x.axes[-1]])
    call.bind("down.weight", [x.axes[-1], hidden])
    return x  # the output carries the input's units


def function_rule(call):
    x = call.input()
    w_gate, w_up, w_down = (call.arg(n, k) for k, n in ((1, "w_gate"), (2, "w_up"), (3, "w_down")))
    hidden = call.new_units(w_gate.shape[0])
    call.bind(w_gate, [hidden, x.axes[-1]])
    call.bind(w_up, [hidden, x.axes[-1]])
    call.bind(w_down, [x.axes[-1], hidden])
    return rbt.AbstractTensor(list(x.axes))


@pytest.fixture(autouse=True)
def clean_registry():
    yield
    for target in (GatedMLP, fused_gated_mlp, "fused_gated_mlp", nn.ReLU):
        rbt.unregister_rule(target)


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.normal_(0, 0.1)
    return model, torch.randn(5, 8)


def test_unknown_block_is_fixed_with_a_warning(net):
    model, x = net
    with pytest.warns(UserWarning, match="fused_gated_mlp"):
        spec = rbt.infer_spec(model, x)
    assert not any(m.startswith("mlp.") for m in spec.params())
    assert rbt.spec_coverage(model, x).share < 1.0


def _assert_fully_permuted(model, x):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = rbt.infer_spec(model, x)
    cov = rbt.spec_coverage(model, x)
    assert cov.share == 1.0 and cov.hidden == 16 + 32
    hidden = [g for g, ms in spec.groups.items() if ("mlp.gate.weight", 0) in ms]
    assert len(hidden) == 1
    assert set(spec.groups[hidden[0]]) == {("mlp.gate.weight", 0), ("mlp.up.weight", 0), ("mlp.down.weight", 1)}
    with torch.no_grad():
        scale = float(model(x).abs().max())
    for seed in range(3):
        assert rbt.check_equivalence(model, spec, x, seed=seed) < 1e-5 * max(1.0, scale)
    # A randomly permuted copy is aligned back exactly.
    gen = torch.Generator().manual_seed(3)
    perms = {g: torch.randperm(n, generator=gen) for g, n in spec.validate(model.state_dict()).items()}
    b = rbt.permute_model(model, spec, perms)
    aligned, _ = rbt.align(model, b, x)
    for (name, ta), tb in zip(model.state_dict().items(), aligned.state_dict().values()):
        assert torch.equal(ta, tb), name


def test_module_rule_permutes_the_block(net):
    model, x = net
    rbt.register_rule(GatedMLP, module_rule)
    _assert_fully_permuted(model, x)


def test_function_rule_permutes_the_block(net):
    model, x = net

    @rbt.register_rule(fused_gated_mlp)
    def rule(call):
        return function_rule(call)

    _assert_fully_permuted(model, x)


def test_rule_by_name(net):
    model, x = net
    rbt.register_rule("fused_gated_mlp", function_rule)
    _assert_fully_permuted(model, x)


def test_declining_rule_and_unregister(net):
    model, x = net
    rbt.register_rule(GatedMLP, lambda call: NotImplemented)
    with pytest.warns(UserWarning, match="GatedMLP"):
        rbt.infer_spec(model, x)
    rbt.unregister_rule(GatedMLP)
    with pytest.warns(UserWarning, match="fused_gated_mlp"):
        rbt.infer_spec(model, x)


def test_user_rule_overrides_a_builtin():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(3, 4)
    assert rbt.spec_coverage(model, x).share == 1.0
    rbt.register_rule(nn.ReLU, lambda call: NotImplemented)
    cov = rbt.spec_coverage(model, x)
    assert cov.permuted == 0 and "unsupported module ReLU" in cov.unpermuted
    rbt.unregister_rule(nn.ReLU)
    assert rbt.spec_coverage(model, x).share == 1.0


def test_bad_registrations():
    with pytest.raises(TypeError, match="target"):
        rbt.register_rule(3, module_rule)
    with pytest.raises(TypeError, match="rule must be callable"):
        rbt.register_rule(GatedMLP, "not a function")
