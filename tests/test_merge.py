"""Merging: interpolation, barriers, BatchNorm reset, REPAIR and MergeMany, on state dicts and modules."""

from __future__ import annotations

import os

import numpy as np
import pytest

import rebasin_rs as rb

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import rebasin_rs.torch as rbt  # noqa: E402

# -- state dicts ------------------------------------------------------------------------------


def test_interpolate_numpy_and_torch():
    a = {"w": np.zeros((2, 2), np.float32), "n": np.array(3)}
    b = {"w": np.ones((2, 2), np.float32), "n": np.array(7)}
    m = rb.interpolate(a, b, 0.25)
    assert m["w"].dtype == np.float32 and np.allclose(m["w"], 0.25)
    assert m["n"] == 3  # integer entries are A's
    assert a["w"].sum() == 0 and b["w"].sum() == 4  # inputs untouched
    ta = {"w": torch.zeros(3, dtype=torch.float16)}
    tb = {"w": torch.ones(3, dtype=torch.float16)}
    tm = rb.interpolate(ta, tb, 1.5)  # extrapolation is allowed
    assert tm["w"].dtype == torch.float16 and torch.allclose(tm["w"].float(), torch.full((3,), 1.5))


def test_interpolate_errors_name_the_problem():
    with pytest.raises(ValueError, match="has no entry 'a'"):
        rb.interpolate({"a": np.zeros(1)}, {"b": np.zeros(1)})
    with pytest.raises(ValueError, match="'a' has shape"):
        rb.interpolate({"a": np.zeros(1)}, {"a": np.zeros(2)})
    with pytest.raises(ValueError, match="finite"):
        rb.interpolate({"a": np.zeros(1)}, {"a": np.zeros(1)}, float("nan"))


@pytest.mark.parametrize("as_tensor", [np.asarray, torch.as_tensor])
def test_interpolate_refuses_what_would_be_a_wrong_merge(as_tensor):
    # Each of these merged silently: B's float weights stored as int32 were mixed in as numbers,
    # a NaN spread into the merge, and an alpha of 1e308 wrote infinities.
    a = {"w": as_tensor(np.ones(3, np.float32)), "n": as_tensor(np.zeros((), np.int64))}
    b = dict(a, w=as_tensor(np.ones(3, np.int32)))
    with pytest.raises(rb.RebasinError, match="'w' has dtype .*int32 in params_b") as e:
        rb.interpolate(a, b)
    assert e.value.param == "w"
    b = dict(a, w=as_tensor(np.array([1, np.nan, 1], np.float32)))
    with pytest.raises(rb.RebasinError, match=r"params_b\['w'\] holds NaN"):
        rb.interpolate(a, b)
    with pytest.raises(rb.RebasinError, match=r"alpha=1e\+308 overflows 'w'"):
        rb.interpolate(a, dict(a, w=a["w"] * 3), 1e308)
    with pytest.raises(rb.RebasinError, match="params_b has no entry 'n'"):
        rb.interpolate(a, {"w": a["w"]})
    half = rb.interpolate(a, dict(a, w=a["w"] * 3), 0.5)
    assert np.allclose(np.asarray(half["w"]), 2.0) and half["n"] is a["n"]


def test_loss_barrier_definitions():
    assert rb.loss_barrier([1.0, 3.0, 2.0, 0.0]) == 2.5
    assert rb.loss_barrier([0.9, 0.5, 0.7], higher_is_better=True) == 0.3
    with pytest.raises(ValueError, match="endpoints"):
        rb.loss_barrier([1.0])


def _mlp_params(rng, widths=(6, 16, 12, 3)):
    return {
        **{f"layers.{k}.weight": rng.standard_normal((widths[k + 1], widths[k])).astype(np.float32)
           for k in range(len(widths) - 1)},
        **{f"layers.{k}.bias": rng.standard_normal(widths[k + 1]).astype(np.float32) for k in range(len(widths) - 1)},
    }


def test_merge_many_state_dicts_recovers_permuted_copies():
    rng = np.random.default_rng(0)
    base = _mlp_params(rng)
    spec = rb.specs.mlp(["layers.0", "layers.1", "layers.2"])
    sizes = spec.validate(base)
    copies = [rb.apply_permutation(spec, {g: rng.permutation(n) for g, n in sizes.items()}, base) for _ in range(4)]
    res = rb.merge_many(spec, copies, seed=1)
    # Every copy is brought onto the others: the average equals each aligned copy exactly.
    first = rb.apply_permutation(spec, res.perms[0], copies[0])
    for k, p in enumerate(res.perms):
        aligned = rb.apply_permutation(spec, p, copies[k])
        for name in base:
            assert np.allclose(aligned[name], first[name], atol=1e-6), (k, name)
            assert np.allclose(res.merged[name], first[name], atol=1e-6)
    assert res.rounds >= 1
    with pytest.raises(ValueError, match="at least two"):
        rb.merge_many(spec, copies[:1])


def _objective(spec, models, perms):
    """sum_i <model_i, mean of the others>, aligned, over the spec's parameters (float64)."""
    aligned = [rb.apply_permutation(spec, p, m) for p, m in zip(perms, models)]
    n = len(models)
    return sum(float(np.dot(np.ravel(aligned[i][k]).astype(np.float64),
                            np.mean([np.ravel(aligned[j][k]) for j in range(n) if j != i], axis=0, dtype=np.float64)))
               for i in range(n) for k in spec.real_params())


def test_merge_many_objective_rises_every_round_until_nothing_changes():
    rng = np.random.default_rng(3)
    spec = rb.specs.mlp(["layers.0", "layers.1", "layers.2"])
    models = [_mlp_params(rng, (6, 24, 24, 3)) for _ in range(4)]  # unrelated models: no shared solution
    res = rb.merge_many(spec, models, tol=0, max_rounds=200, seed=0, progress=True)
    assert res.converged and res.rounds < 200
    # Every change raises the objective, so no permutation state can come back (no cycle): the
    # history increases strictly up to the last round, which changed nothing.
    steps = np.diff(res.history)
    assert (steps[:-1] > 0).all() and steps[-1] == 0, res.history
    assert res.objective == res.history[-1]
    assert res.objective == pytest.approx(_objective(spec, models, res.perms), rel=1e-9)
    identity = [{g: np.arange(n) for g, n in spec.validate(models[0]).items()} for _ in models]
    assert res.history[0] == pytest.approx(_objective(spec, models, identity), rel=1e-9)
    # The default tol stops earlier, on the way to the same kind of point.
    quick = rb.merge_many(spec, models, seed=0)
    assert quick.converged and quick.rounds <= res.rounds
    assert quick.history == res.history[:len(quick.history)]


def test_merge_many_warns_when_max_rounds_stops_it():
    rng = np.random.default_rng(4)
    spec = rb.specs.mlp(["layers.0", "layers.1", "layers.2"])
    models = [_mlp_params(rng) for _ in range(3)]
    with pytest.warns(RuntimeWarning, match="stopped at max_rounds=1") as caught:
        res = rb.merge_many(spec, models, max_rounds=1)
    assert caught[0].filename == __file__  # pointing at the caller's line
    assert not res.converged and res.rounds == 1 and len(res.history) == 2
    with pytest.raises(ValueError, match="tol must be"):
        rb.merge_many(spec, models, tol=-1.0)
    with pytest.raises(ValueError, match="max_rounds"):
        rb.merge_many(spec, models, max_rounds=0)


# -- modules ---------------------------------------------------------------------------------


def bn_mlp(width=64):
    return nn.Sequential(nn.Linear(40, width), nn.BatchNorm1d(width), nn.ReLU(),
                         nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, 10))


def plain_mlp(width=64):
    return nn.Sequential(nn.Linear(40, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


@pytest.fixture(scope="module")
def mnist1d():
    from rebasin_rs.demo import load_mnist1d

    x, y, _, _ = load_mnist1d()
    return x[:2000], y[:2000]


def trained_pair(make, data, epochs=12):
    from rebasin_rs.demo import train

    x, y = data
    out = []
    for s in (0, 1):
        torch.manual_seed(s)
        out.append(train(make(), x, y, epochs=epochs, seed=s))
    return out


def loss_of(model, data):
    x, y = data
    with torch.no_grad():
        return float(F.cross_entropy(model.eval()(x), y))


def loader(data, batch=250):
    x, y = data
    return [(x[k:k + batch], y[k:k + batch]) for k in range(0, len(x), batch)]


def test_merge_interpolates_parameters_and_buffers():
    torch.manual_seed(0)
    a, b = bn_mlp(), bn_mlp()
    with torch.no_grad():
        b[1].running_mean.fill_(2.0)
    b[1].num_batches_tracked += 5
    m = rbt.merge(a, b, 0.5)
    assert torch.allclose(m[0].weight, (a[0].weight + b[0].weight) / 2)
    assert torch.allclose(m[1].running_mean, torch.full_like(a[1].running_mean, 1.0))
    assert m[1].num_batches_tracked == a[1].num_batches_tracked
    assert float(b[1].running_mean[0]) == 2.0 and m is not a


def test_interpolation_curve_endpoints_barriers_and_plot(tmp_path):
    torch.manual_seed(0)
    a, b = plain_mlp(), plain_mlp()
    x = torch.randn(32, 40)
    y = torch.randint(0, 10, (32,))
    before = {k: v.clone() for k, v in a.state_dict().items()}

    def evaluate(m):
        with torch.no_grad():
            out = m(x)
        return {"loss": float(F.cross_entropy(out, y)), "acc": float((out.argmax(1) == y).float().mean())}

    curve = rbt.interpolation_curve(a, b, evaluate, alphas=[0.0, 0.3, 0.5, 1.0], progress=False)
    assert curve.alphas == [0.0, 0.3, 0.5, 1.0]
    assert curve.metrics["loss"][0] == pytest.approx(evaluate(a)["loss"])
    assert curve.metrics["loss"][-1] == pytest.approx(evaluate(b)["loss"])
    assert curve.barriers["loss"] == pytest.approx(rb.loss_barrier(curve.metrics["loss"]))
    assert curve.barriers["acc"] == pytest.approx(rb.loss_barrier(curve.metrics["acc"], higher_is_better=True))
    for k, v in a.state_dict().items():
        assert torch.equal(v, before[k])
    with pytest.raises(ValueError, match="from 0.0 to 1.0"):
        rbt.interpolation_curve(a, b, evaluate, alphas=[0.2, 1.0])
    path = rbt.plot_curves({"naive": curve, "again": curve}, tmp_path / "c.png", title="t")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["c.png"]
    with pytest.raises(ValueError, match="does not exist"):
        rbt.plot_curves({"naive": curve}, tmp_path / "no" / "c.png")


def test_plot_legends_print_every_barrier_with_three_decimals(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    labels = []
    savefig = Figure.savefig

    def spy(fig, *args, **kwargs):
        labels.extend(t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts())
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    curve = rbt.InterpolationCurve(alphas=[0.0, 0.5, 1.0], metrics={"loss": [1.0, 2.5, 0.2], "acc": [0.9, 0.8, 0.9]},
                                   barriers={"loss": 1.9, "acc": 0.1})
    low = rbt.InterpolationCurve(alphas=curve.alphas, metrics=curve.metrics, barriers={"loss": 0.04567, "acc": 12.0})
    rbt.plot_curves({"naive": curve, "aligned": low}, tmp_path / "c.png")
    assert labels == ["naive (barrier 1.900)", "aligned (barrier 0.046)",
                      "naive (barrier 0.100)", "aligned (barrier 12.000)"]


def test_reset_bn_stats_measures_the_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 2)).train()
    x = torch.randn(400, 3) * torch.tensor([1.0, 2.0, 0.5]) + torch.tensor([1.0, -1.0, 3.0])
    new = rbt.reset_bn_stats(model, [x[k:k + 100] for k in range(0, 400, 100)], progress=False)
    assert torch.allclose(new[0].running_mean, x.mean(0), atol=1e-5)
    # The cumulative average of the batches' unbiased variances.
    expected = torch.stack([x[k:k + 100].var(0) for k in range(0, 400, 100)]).mean(0)
    assert torch.allclose(new[0].running_var, expected, atol=1e-4)
    assert torch.equal(model[0].running_mean, torch.zeros(3))  # not inplace: untouched
    assert new.training and new[0].momentum == model[0].momentum
    with pytest.raises(ValueError, match="no batch"):
        rbt.reset_bn_stats(model, [])
    with pytest.warns(UserWarning, match="no BatchNorm"):
        rbt.reset_bn_stats(plain_mlp(), [x])


def test_reset_and_repair_lower_the_barrier_of_a_batchnorm_network(mnist1d):
    a, b = trained_pair(bn_mlp, mnist1d)
    b_al, _ = rbt.align(a, b, mnist1d[0][:1])
    merged = rbt.merge(a, b_al, 0.5)
    ends = (loss_of(a, mnist1d) + loss_of(b, mnist1d)) / 2
    plain = loss_of(merged, mnist1d) - ends
    reset = loss_of(rbt.reset_bn_stats(merged, loader(mnist1d), progress=False), mnist1d) - ends
    repaired = loss_of(rbt.repair(a, b_al, merged, loader(mnist1d), progress=False), mnist1d) - ends
    print(f"BatchNorm MLP midpoint barrier: merged {plain:.3f}, BN reset {reset:.3f}, REPAIR {repaired:.3f}")
    assert reset < plain - 0.05
    assert repaired < plain - 0.05


def test_repair_restores_interpolated_statistics_without_batchnorm(mnist1d):
    a, b = trained_pair(plain_mlp, mnist1d)
    b_al, _ = rbt.align(a, b, mnist1d[0][:1])
    merged = rbt.merge(a, b_al, 0.5)
    repaired = rbt.repair(a, b_al, merged, loader(mnist1d), progress=False)
    x = mnist1d[0]
    with torch.no_grad():
        ha, hb, hm, hr = (m[0](x) for m in (a, b_al, merged, repaired))
    target_mean = (ha.mean(0) + hb.mean(0)) / 2
    target_std = (ha.std(0, unbiased=False) + hb.std(0, unbiased=False)) / 2
    assert torch.allclose(hr.mean(0), target_mean, atol=1e-3)
    assert torch.allclose(hr.std(0, unbiased=False), target_std, rtol=1e-3, atol=1e-3)
    assert not torch.allclose(hm.std(0, unbiased=False), target_std, rtol=1e-2)
    ends = (loss_of(a, mnist1d) + loss_of(b, mnist1d)) / 2
    plain, fixed = loss_of(merged, mnist1d) - ends, loss_of(repaired, mnist1d) - ends
    print(f"plain MLP midpoint barrier: merged {plain:.3f}, REPAIR {fixed:.3f}")
    assert fixed < plain
    assert torch.equal(merged[0].weight, rbt.merge(a, b_al, 0.5)[0].weight)  # not inplace: untouched


def test_merge_many_modules_recovers_one_function():
    torch.manual_seed(0)
    base = bn_mlp().eval()
    with torch.no_grad():
        for m in base.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    x = torch.randn(8, 40)
    spec = rbt.infer_spec(base, x)
    rng = np.random.default_rng(0)
    copies = [rbt.permute_model(base, spec, {g: rng.permutation(n) for g, n in spec.validate(base.state_dict()).items()})
              for _ in range(3)]
    out = rbt.merge_many(copies, x)
    with torch.no_grad():
        assert torch.allclose(out.merged(x), base(x), atol=1e-5)
    assert len(out.perms) == 3 and set(out.perms[0]) == set(spec.groups)
    # Round 1 recovers the copies; round 2 changes nothing.
    assert out.converged and out.rounds == 2 and out.history[1] == out.history[2]
    with pytest.warns(RuntimeWarning, match="max_rounds=1") as caught:
        assert not rbt.merge_many([bn_mlp(), bn_mlp()], x, max_rounds=1).converged
    assert caught[0].filename == __file__
    with pytest.raises(ValueError, match="example_inputs"):
        rbt.merge_many(copies)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_entries_equal_in_both_models_merge_to_themselves_infinite_ones_too(alpha):
    # A causal mask of -inf buffers: refused as "holds NaN or infinite values" by the first
    # version of the finite check, and -inf * 0 made it NaN at the endpoints before that.
    mask = torch.triu(torch.full((4, 4), float("-inf")), 1)
    a = {"mask": mask, "w": torch.ones(3)}
    b = {"mask": mask.clone(), "w": torch.zeros(3)}
    for x, y in ((a, b), ({k: v.numpy() for k, v in a.items()}, {k: v.numpy() for k, v in b.items()})):
        out = rb.interpolate(x, y, alpha)
        assert np.array_equal(np.asarray(out["mask"]), mask.numpy())
        assert np.allclose(np.asarray(out["w"]), 1 - alpha)
    with pytest.raises(rb.RebasinError, match=r"params_b\['mask'\] holds NaN or infinite values where the other"):
        rb.interpolate(a, dict(b, mask=mask + torch.diag(torch.full((4,), float("inf")))), alpha)
