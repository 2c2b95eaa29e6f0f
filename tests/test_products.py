"""Cost products computed by torch where the weights are (issue 14): the same engine, the same
permutations as its CPU kernels. CI has no GPU, so the torch path runs here on CPU tensors
(``products="torch"``); a CUDA machine runs the last test too (and benches/gpu_check.py)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import rebasin_rs as rb  # noqa: E402
import rebasin_rs.torch as rbt  # noqa: E402
from rebasin_rs.torch import _products  # noqa: E402

from _nets import mlp_params, resnet20_params  # noqa: E402

transformers = pytest.importorskip("transformers")


def as_torch(params, dtype=torch.float32):
    return {k: torch.as_tensor(np.asarray(v)).to(dtype) for k, v in params.items()}


def both(spec, a, b, **options):
    cpu = rb.weight_matching(spec, a, b, products="cpu", **options)
    dev = rb.weight_matching(spec, a, b, products="torch", **options)
    return cpu, dev


def assert_same(cpu, dev):
    assert cpu.perms.keys() == dev.perms.keys()
    for g in cpu.perms:
        np.testing.assert_array_equal(cpu.perms[g], dev.perms[g], err_msg=g)
    assert cpu.sweeps == dev.sweeps
    assert cpu.orders == dev.orders
    assert dev.objective == pytest.approx(cpu.objective, rel=1e-5)
    # The products ran in torch: the engine gathered nothing itself.
    assert dev.timings["gather"] == 0.0 and cpu.timings["gather"] > 0.0


CASES = {
    "mlp": (lambda: rb.specs.mlp(["fc0", "fc1", "fc2", "fc3"]), lambda rng: mlp_params([12, 48, 40, 32, 6], rng)),
    "resnet20": (lambda: rb.specs.resnet20(), lambda rng: resnet20_params(1, rng)),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("init", [None, "forward"])
def test_torch_products_give_the_permutations_of_the_cpu_kernels(name, init):
    make_spec, make_params = CASES[name]
    rng = np.random.default_rng(1)
    spec = make_spec()
    # Two unrelated models: several sweeps of real coordinate descent, not a planted copy.
    a, b = as_torch(make_params(rng)), as_torch(make_params(rng))
    cpu, dev = both(spec, a, b, init=init)
    assert cpu.sweeps > 1
    assert_same(cpu, dev)


def test_a_cost_budget_and_half_precision_give_the_same_permutations():
    rng = np.random.default_rng(2)
    spec = rb.specs.resnet20()
    a, b = resnet20_params(1, rng), resnet20_params(1, rng)
    for dtype in (torch.bfloat16, torch.float16):
        ta, tb = as_torch(a, dtype), as_torch(b, dtype)
        assert_same(*both(spec, ta, tb, max_cost_memory=0))
        assert_same(*both(spec, ta, tb, init="forward", max_cost_memory=64 * 64 * 4))


def tiny_gpt2(seed):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=32,
                                   bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_align_of_a_transformer_with_torch_products_runs_the_nested_head_solve():
    a, b = tiny_gpt2(0), tiny_gpt2(1)
    x = torch.randint(0, 100, (2, 12))
    spec = rbt.infer_spec(a, x)
    cpu_b, cpu = rbt.align(a, b, spec=spec, products="cpu")
    dev_b, dev = rbt.align(a, b, spec=spec, products="torch")
    assert_same(cpu, dev)
    for (k, u), (_, v) in zip(cpu_b.state_dict().items(), dev_b.state_dict().items()):
        assert torch.equal(u, v), k
    # A permuted copy is recovered exactly through the torch products.
    gen = torch.Generator().manual_seed(7)
    perms = {g: torch.randperm(n, generator=gen) for g, n in spec.validate(a.state_dict()).items()}
    back, _ = rbt.align(a, rbt.permute_model(a, spec, perms), spec=spec, products="torch")
    for (k, u), (_, v) in zip(a.state_dict().items(), back.state_dict().items()):
        assert torch.equal(u, v), k


def test_only_costs_cross_one_call_per_cost_or_update(monkeypatch):
    calls = []
    real = _products.TorchProducts.add_products

    def counted(self, n, requests):
        out = real(self, n, requests)
        calls.append((n, len(requests), out.shape, out.dtype, out.flags.c_contiguous))
        return out

    monkeypatch.setattr(_products.TorchProducts, "add_products", counted)
    rng = np.random.default_rng(3)
    spec = rb.specs.resnet20()
    rb.weight_matching(spec, as_torch(resnet20_params(1, rng)), as_torch(resnet20_params(1, rng)),
                       products="torch")
    assert calls
    assert all(shape == (n, n) and dtype == np.float32 and c for n, _, shape, dtype, c in calls)
    # A group's members are summed on the device and come back as one matrix.
    assert max(k for _, k, _, _, _ in calls) > 1


def test_a_failure_on_the_device_is_raised_as_it_is_and_the_precision_restored(monkeypatch):
    before = torch.get_float32_matmul_precision()

    def oom(self, n, requests):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(_products.TorchProducts, "add_products", oom)
    rng = np.random.default_rng(4)
    spec = rb.specs.mlp(["fc0", "fc1", "fc2"])
    a, b = as_torch(mlp_params([5, 8, 8, 3], rng)), as_torch(mlp_params([5, 8, 8, 3], rng))
    with pytest.raises(torch.cuda.OutOfMemoryError, match="Tried to allocate"):
        rb.weight_matching(spec, a, b, products="torch", tf32=True)
    assert torch.get_float32_matmul_precision() == before


def test_bad_products_options_and_non_finite_weights_are_named():
    rng = np.random.default_rng(5)
    spec = rb.specs.mlp(["fc0", "fc1", "fc2"])
    p = mlp_params([5, 8, 8, 3], rng)
    a, b = as_torch(p), as_torch(mlp_params([5, 8, 8, 3], rng))
    with pytest.raises(rb.RebasinError, match="products must be 'auto', 'cpu' or 'torch', got 'gpu'"):
        rb.weight_matching(spec, a, b, products="gpu")
    with pytest.raises(TypeError, match="tf32 must be a bool"):
        rb.weight_matching(spec, a, b, tf32="yes")
    with pytest.raises(rb.RebasinError, match="products='torch' needs torch tensors") as e:
        rb.weight_matching(spec, p, b, products="torch")
    assert e.value.param == "fc0.weight"
    meta = dict(b, **{"fc1.weight": b["fc1.weight"].to("meta")})
    with pytest.raises(rb.RebasinError, match="on one device"):
        rb.weight_matching(spec, a, meta, products="torch")
    bad = dict(b, **{"fc1.weight": b["fc1.weight"].clone()})
    bad["fc1.weight"][2, 3] = float("nan")
    with pytest.raises(rb.RebasinError, match="fc1.weight' of model B is not finite") as e:
        rb.weight_matching(spec, a, bad, products="torch")
    assert e.value.param == "fc1.weight"
    # The caller's tensors are untouched by the matching.
    assert torch.isnan(bad["fc1.weight"][2, 3]) and torch.equal(a["fc0.weight"], as_torch(p)["fc0.weight"])
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x = torch.randn(1, 4)
    with pytest.raises(rb.RebasinError, match="align: products must be"):
        rbt.align(m, m, x, products="cuda")
    with pytest.raises(rb.RebasinError, match="method='activation' does not use them"):
        rbt.align(m, m, x, method="activation", data=[x], products="torch")


def test_cpu_tensors_use_the_cpu_kernels_by_default():
    rng = np.random.default_rng(6)
    spec = rb.specs.mlp(["fc0", "fc1", "fc2"])
    a, b = as_torch(mlp_params([5, 8, 8, 3], rng)), as_torch(mlp_params([5, 8, 8, 3], rng))
    assert rb.weight_matching(spec, a, b).timings["gather"] > 0.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benches/gpu_check.py covers it)")
def test_cuda_weights_have_their_products_computed_on_the_device():
    rng = np.random.default_rng(7)
    spec = rb.specs.resnet20()
    a, b = as_torch(resnet20_params(1, rng)), as_torch(resnet20_params(1, rng))
    cpu = rb.weight_matching(spec, a, b)
    dev = rb.weight_matching(spec, {k: v.cuda() for k, v in a.items()}, {k: v.cuda() for k, v in b.items()})
    assert_same(cpu, dev)
