"""Activation matching and the straight-through estimator."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import rebasin_rs.torch as rbt  # noqa: E402


@pytest.fixture(scope="module")
def pair():
    from rebasin_rs.demo import load_mnist1d, mlp, train

    x, y, _, _ = load_mnist1d()
    x, y = x[:2000], y[:2000]
    models = []
    for s in (0, 1):
        torch.manual_seed(s)
        models.append(train(mlp(128), x, y, epochs=15, seed=s))
    return x, y, models


def loss_barrier(a, b, x, y):
    def evaluate(m):
        with torch.no_grad():
            return float(F.cross_entropy(m(x), y))

    return rbt.interpolation_curve(a, b, evaluate, alphas=11, progress=False).barriers["loss"]


def batches(x, y, size):
    return [(x[k:k + size], y[k:k + size]) for k in range(0, len(x), size)]


def test_activation_matching_recovers_a_permuted_copy_exactly(pair):
    x, y, (a, _) = pair
    spec = rbt.infer_spec(a, x[:1])
    rng = np.random.default_rng(0)
    b = rbt.permute_model(a, spec, {g: rng.permutation(n) for g, n in spec.validate(a.state_dict()).items()})
    aligned, res = rbt.align(a, b, method="activation", data=batches(x, y, 500), progress=False)
    for k, v in a.state_dict().items():
        assert torch.equal(aligned.state_dict()[k], v), k


def test_activation_matching_per_channel_in_a_batchnorm_cnn():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 4)).eval()
    with torch.no_grad():
        net[1].running_mean.normal_(0, 0.2)
        net[1].running_var.uniform_(0.5, 1.5)
    x = torch.randn(64, 3, 8, 8)
    spec = rbt.infer_spec(net, x[:1])
    rng = np.random.default_rng(1)
    b = rbt.permute_model(net, spec, {g: rng.permutation(n) for g, n in spec.validate(net.state_dict()).items()})
    aligned, _ = rbt.align(net, b, method="activation", data=[x[:32], x[32:]], progress=False)
    for k, v in net.state_dict().items():
        assert torch.equal(aligned.state_dict()[k], v), k


def test_activation_matching_and_ste_lower_the_barrier(pair):
    x, y, (a, b) = pair
    naive = loss_barrier(a, b, x, y)
    act, _ = rbt.align(a, b, method="activation", data=batches(x, y, 500), progress=False)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    ste, res = rbt.align(a, b, method="ste", data=batches(x, y, 128), epochs=2, progress=False)
    wm, _ = rbt.align(a, b, x[:1])
    barriers = {"naive": naive, "activation": loss_barrier(a, act, x, y), "ste": loss_barrier(a, ste, x, y),
                "weight": loss_barrier(a, wm, x, y)}
    print("loss barriers:", {k: round(v, 3) for k, v in barriers.items()})
    assert barriers["activation"] < naive / 2
    assert barriers["ste"] < naive / 2
    assert len(res.history) == 2 and all(np.isfinite(res.history))
    for k, v in a.state_dict().items():
        assert torch.equal(v, before[k]), "model A was modified"
    # Every aligned model still computes what B computes.
    with torch.no_grad():
        for m in (act, ste):
            assert torch.allclose(m(x), b(x), atol=1e-4)


def test_methods_need_data():
    a = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    b = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="needs data="):
        rbt.align(a, b, torch.randn(1, 3), method="activation")
    with pytest.raises(ValueError, match="unknown method"):
        rbt.align(a, b, torch.randn(1, 3), method="sinkhorn")


def test_activation_matching_of_a_model_only_torch_export_traces():
    # It used to refuse such models ("needs a model that torch.fx can trace"). The export graph
    # is specialised to its input shapes: a batch of one takes the other branch, traced anew.
    class ShapeBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 16), nn.Linear(16, 2)

        def forward(self, x):
            if x.shape[0] > 1:
                x = x * 2
            return self.fc2(torch.relu(self.fc1(x)))

    torch.manual_seed(0)
    a = ShapeBranch()
    x = torch.randn(2, 4)
    spec = rbt.infer_spec(a, x)
    b = rbt.permute_model(a, spec, {"P_fc1": np.random.default_rng(0).permutation(16)})
    data = [torch.randn(8, 4), torch.randn(1, 4), torch.randn(8, 4)]
    aligned, _ = rbt.align(a, b, x, method="activation", data=data)
    for k, v in a.state_dict().items():
        assert torch.equal(aligned.state_dict()[k], v), k


def test_export_graphs_are_kept_per_keyword_names_and_order():
    # Dict batches of one shape but other keywords (or their order) took the graph traced for the
    # first: the captured activations were computed from the wrong inputs, without an error.
    from rebasin_rs.torch._methods import _Graphs

    class Optional(nn.Module):
        def __init__(self):
            super().__init__()
            self.f1, self.f2 = nn.Linear(8, 16), nn.Linear(16, 4)

        def forward(self, x, y=None, z=None):
            if y is not None:
                x = x + y
            if z is not None:
                x = x - 5 * z
            h = self.f1(x)
            if h.shape[0] > 3:  # torch.fx cannot trace this: torch.export does
                h = h * 1.0
            return self.f2(F.relu(h))

    torch.manual_seed(0)
    m = Optional()
    x, y, z = torch.randn(3, 4, 8).unbind(0)
    spec = rbt.infer_spec(m, {"x": x, "y": y})
    graphs = _Graphs(m, m, {"x": x, "y": y}, spec.validate(m.state_dict()))
    seen = {}
    m.f1.register_forward_hook(lambda mod, inp, out: seen.__setitem__("f1", out))
    for batch in ({"x": x, "y": y}, {"x": x, "z": z}, {"y": y, "x": x}):
        captured = {}
        node_groups = graphs.run(0, (), batch, captured.__setitem__)
        m(**batch)
        layer = [n for n, gs in node_groups.items() if any(is_layer for _, _, is_layer in gs)]
        assert layer and any(torch.equal(captured[n], seen["f1"]) for n in layer), list(batch)


def test_use_cache_is_passed_only_where_the_forward_takes_it_by_keyword():
    from rebasin_rs.torch._utils import without_cache

    class Star(nn.Module):
        def forward(self, *args, use_cache=True):
            return args[0]

    class PosOnly(nn.Module):
        def forward(self, x, use_cache=True, /):
            return x

    class Plain(nn.Module):
        def forward(self, x, use_cache=True):
            return x

    args = (torch.zeros(1), torch.zeros(1), torch.zeros(1))
    assert without_cache(Star(), args, {}) == {"use_cache": False}
    assert without_cache(PosOnly(), args[:1], {}) == {}
    assert without_cache(Plain(), args[:1], {}) == {"use_cache": False}
    assert without_cache(Plain(), args[:2], {}) == {}
    assert without_cache(Plain(), args[:1], {"use_cache": True}) == {"use_cache": True}
