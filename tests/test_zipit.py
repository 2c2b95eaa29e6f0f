"""ZipIt! (issue 16): zipping a model with copies of itself (permuted or not) gives back its
function, on an MLP, a residual CNN with BatchNorm and three models at once; the merge and
unmerge matrices are what the paper defines; bad input is one line."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

import rebasin_rs as rb  # noqa: E402
import rebasin_rs.torch as rbt  # noqa: E402
from rebasin_rs.torch._zipit import _zip  # noqa: E402


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


class Res(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.fc = nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.bn(self.c1(x)))
        h = h + torch.relu(self.c2(h))
        return self.fc(h.mean((2, 3)))


def permuted(model, x, seed):
    spec = rbt.infer_spec(model, x, warn=False)
    rng = np.random.default_rng(seed)
    return rbt.permute_model(model, spec, {g: rng.permutation(n) for g, n in spec.validate(model.state_dict()).items()})


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_zipping_copies_gives_the_function_back(alpha):
    a = mlp()
    data = [torch.randn(64, 4, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    b, c = permuted(a, data[0], 1), permuted(a, data[0], 2)
    for models in ([a, a], [a, b], [a, b, c]):
        out = rbt.zipit(models, data, alpha=alpha)
        with torch.no_grad():
            torch.testing.assert_close(out.merged(data[0]), a(data[0]), rtol=1e-4, atol=1e-5)
        k = len(models)
        for g, (merge, unmerge) in out.merges.items():
            n = merge.shape[0]
            assert merge.shape == (n, k * n) and unmerge.shape == (k * n, n)
            np.testing.assert_allclose(merge.sum(1), 1.0)  # each merged feature a mean
            np.testing.assert_array_equal(unmerge.sum(1), 1.0)  # each feature reads one merged
            np.testing.assert_array_equal((merge > 0).T, unmerge > 0)
    assert all(p is not out.merged for p in models)


def test_zipping_a_residual_batchnorm_cnn_with_a_permuted_copy():
    torch.manual_seed(0)
    r = Res()
    xs = [torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    r.train()
    with torch.no_grad():
        for x in xs:
            r(x)
    r.eval()
    before = {k: v.clone() for k, v in r.state_dict().items()}
    out = rbt.zipit([r, permuted(r, xs[0], 3)], xs, reset_bn=False)
    with torch.no_grad():
        torch.testing.assert_close(out.merged(xs[0]), r(xs[0]), rtol=1e-4, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in r.state_dict().items())  # inputs untouched
    out = rbt.zipit([r, permuted(r, xs[0], 3)], xs)  # statistics re-estimated on the data
    assert out.merged.bn.num_batches_tracked == len(xs)


@pytest.mark.parametrize("stop_at", ["1", "2", 3])
def test_partial_zipping_of_copies_gives_the_function_back(stop_at):
    a = mlp()
    data = [torch.randn(64, 4, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    out = rbt.zipit([a, permuted(a, data[0], 1)], data, stop_at=stop_at)
    with torch.no_grad():
        torch.testing.assert_close(out.merged(data[0]), a(data[0]), rtol=1e-4, atol=1e-5)
    # Each model keeps its own layers after the cut.
    assert len(out.merged.heads) == 2


def test_partial_zipping_across_a_residual_stream():
    torch.manual_seed(0)
    r = Res().eval()
    xs = [torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(k)) for k in range(2)]
    out = rbt.zipit([r, permuted(r, xs[0], 3)], xs, stop_at="c1", reset_bn=False)
    with torch.no_grad():
        torch.testing.assert_close(out.merged(xs[0]), r(xs[0]), rtol=1e-4, atol=1e-5)
    with pytest.raises(rb.RebasinError, match="names no submodule"):
        rbt.zipit([r, r], xs, stop_at="nothing")
    with pytest.raises(TypeError, match="stop_at must be"):
        rbt.zipit([r, r], xs, stop_at=["c1"])


def test_greedy_zip_respects_the_within_model_budget():
    rng = np.random.default_rng(0)
    corr = rng.uniform(-1, 1, (8, 8))
    corr = (corr + corr.T) / 2
    corr[:4, :4] += 5  # model 0's features correlate most with each other
    for alpha, most in ((0.0, 0), (0.5, 2), (1.0, 4)):
        clusters, within = _zip(corr, 2, 4, alpha, 1.0)
        assert len(clusters) == 4 and sorted(f for c in clusters for f in c) == list(range(8))
        assert within <= 2 * most
        if alpha == 0.0:
            assert all({f // 4 for f in c} == {0, 1} or len(c) == 1 for c in clusters)


def test_zipit_refuses_bad_input():
    a = mlp()
    data = [torch.randn(8, 4)]
    with pytest.raises(rb.RebasinError, match="at least two models"):
        rbt.zipit([a], data)
    with pytest.raises(rb.RebasinError, match="alpha must be in"):
        rbt.zipit([a, a], data, alpha=2)
    with pytest.raises(rb.RebasinError, match="beta must be in"):
        rbt.zipit([a, a], data, beta=0)
    with pytest.raises(rb.RebasinError, match="no batch"):
        rbt.zipit([a, a], [])
    other = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(rb.RebasinError, match="share one architecture"):
        rbt.zipit([a, other], data)


class GQA(nn.Module):
    """Grouped-query attention as Hugging Face writes it: 4 query heads over 2 key/value heads
    (expanded), so the query axis is (kv heads, queries per kv head, head_dim)."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = nn.Linear(8, 16), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(16, 8)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, 4, 4).transpose(1, 2)
        k = self.k(x).view(b, n, 2, 4).transpose(1, 2)[:, :, None].expand(b, 2, 2, n, 4).reshape(b, 4, n, 4)
        v = self.v(x).view(b, n, 2, 4).transpose(1, 2)[:, :, None].expand(b, 2, 2, n, 4).reshape(b, 4, n, 4)
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.o(torch.relu(o.transpose(1, 2).reshape(b, n, 16)))


class Grouped(nn.Module):
    """A grouped convolution (4 groups) and a GroupNorm: channels move as (groups, within-group)."""

    def __init__(self):
        super().__init__()
        self.c1, self.g = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.gn, self.c3, self.fc = nn.GroupNorm(4, 16), nn.Conv2d(16, 8, 1), nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.gn(self.g(torch.relu(self.c1(x)))))
        return self.fc(torch.relu(self.c3(h)).mean((2, 3)))


class Cat(nn.Module):
    """Two branches concatenated into one layer's input (the layer's weight is cut in pieces)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(4, 5), nn.Linear(11, 3)

    def forward(self, x):
        return self.c(torch.cat([torch.relu(self.a(x)), torch.tanh(self.b(x))], 1))


def vit():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, depth=2).eval()


@pytest.mark.parametrize("make, shape", [(lambda: Heads(), (2, 3, 8)), (lambda: GQA(), (2, 5, 8)),
                                         (lambda: Grouped(), (4, 3, 8, 8)), (vit, (4, 3, 32, 32)),
                                         (lambda: Cat(), (32, 4))],
                         ids=["fused-qkv-heads", "grouped-query", "grouped-conv", "timm-vit", "concatenated"])
def test_zipping_heads_and_groups_gives_the_function_back(make, shape):
    """Attention heads zipped as whole heads (and grouped channels as whole groups): a model
    zipped with permuted copies of itself (heads, within-head units and the rest all permuted)
    computes what it computed."""
    torch.manual_seed(0)
    a = make().eval()
    data = [torch.randn(*shape, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    b, c = permuted(a, data[0], 1), permuted(a, data[0], 2)
    spec = rbt.infer_spec(a, data[0])
    assert spec.views or spec.pieces  # heads (or groups) are factors of viewed axes, or pieces
    for models, alpha in (([a, b], 0.5), ([a, b, c], 0.0)):
        out = rbt.zipit(models, data, alpha=alpha)
        with torch.no_grad():
            torch.testing.assert_close(out.merged(data[0]), a(data[0]), rtol=1e-4, atol=1e-5)
        assert set(out.merges) == set(spec.groups) and all(w == 0 for w in out.within.values())
        for g, (merge, unmerge) in out.merges.items():
            n = merge.shape[0]
            # b's and c's units are paired with the a unit they were permuted from
            assert all(np.count_nonzero(unmerge[:, i]) == len(models) for i in range(n)), g


def test_partial_zipping_through_attention():
    a = vit()
    data = [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(k)) for k in range(2)]
    b = permuted(a, data[0], 1)
    for stop in ("blocks.0.attn", "blocks.0"):
        out = rbt.zipit([a, b], data, stop_at=stop)
        with torch.no_grad():
            torch.testing.assert_close(out.merged(data[0]), a(data[0]), rtol=1e-4, atol=1e-5)


def test_zipped_heads_of_different_models_are_whole_heads():
    """Two different models: each merged head's q, k and v are the means of whole heads (all
    their within-head units under one within-head map), and the merge of the heads group pairs
    heads across models at alpha 0."""
    torch.manual_seed(0)
    a, b = Heads().eval(), Heads().eval()
    data = [torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(k)) for k in range(4)]
    out = rbt.zipit([a, b], data, alpha=0.0)
    heads = next(g for g, ms in out.spec.groups.items() if ("out.weight", 1) in ms)
    within = next(g for g, ms in out.spec.groups.items() if ("out.weight", 2) in ms)
    hm, wm = out.merges[heads][0], out.merges[within][0]
    assert all(set(np.flatnonzero(row) // 2) == {0, 1} for row in hm)  # one head of each model
    v = lambda m: m.qkv.weight.detach()[16:24].reshape(2, 4, 8).double()  # noqa: E731  (heads, within, in)
    want = torch.einsum("ch,dp,hpi->cdi", torch.from_numpy(hm[:, :2] * 2), torch.from_numpy(wm[:, :4] * 2), v(a)) / 2 + \
        torch.einsum("ch,dp,hpi->cdi", torch.from_numpy(hm[:, 2:] * 2), torch.from_numpy(wm[:, 4:] * 2), v(b)) / 2
    torch.testing.assert_close(v(out.merged), want.float().double(), rtol=1e-5, atol=1e-6)


class Heads(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.out = nn.Linear(8, 24), nn.Linear(8, 2)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, -1)
        q, k, v = q.reshape(2, 3, 2, 4).transpose(1, 2), k.reshape(2, 3, 2, 4).transpose(1, 2), v.reshape(2, 3, 2, 4)
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v.transpose(1, 2))
        return self.out(o.transpose(1, 2).reshape(2, 3, 8))


def test_zipping_beats_permutation_merging_on_disjoint_labels():
    """The paper's setting on scikit-learn's digits: A learns digits 0-4, B digits 5-9; the zipped
    model classifies all ten far better than B aligned by weight matching and averaged."""
    datasets = pytest.importorskip("sklearn.datasets")
    from rebasin_rs.demo import mlp as make, train

    d = datasets.load_digits()
    x, y = torch.tensor(d.data / 16.0, dtype=torch.float32), torch.tensor(d.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    (x, y), (xt, yt) = (x[order[:1200]], y[order[:1200]]), (x[order[1200:]], y[order[1200:]])
    for s in range(2):
        torch.manual_seed(2 * s)
        a = train(make(64, 2, n_in=64), x[y < 5], y[y < 5], epochs=30, seed=2 * s)
        torch.manual_seed(2 * s + 1)
        b = train(make(64, 2, n_in=64), x[y >= 5], y[y >= 5], epochs=30, seed=2 * s + 1)
        zipped = rbt.zipit([a, b], [x[k:k + 300] for k in range(0, 1200, 300)]).merged
        averaged = rbt.merge(a, rbt.align(a, b, x[:1])[0])
        with torch.no_grad():
            acc = {name: float((m(xt).argmax(1) == yt).float().mean())
                   for name, m in (("zip", zipped), ("wm", averaged), ("a", a))}
        assert acc["zip"] > acc["wm"] + 0.1 and acc["zip"] > acc["a"] + 0.2, acc


HF = {
    "gpt2": lambda T: T.GPT2LMHeadModel(T.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=32)),
    "llama-gqa": lambda T: T.LlamaForCausalLM(T.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                            num_attention_heads=4, num_key_value_heads=2,
                                                            vocab_size=100, max_position_embeddings=32)),
    "bert": lambda T: T.BertModel(T.BertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                               num_attention_heads=4, vocab_size=100, max_position_embeddings=32)),
}


@pytest.mark.parametrize("name", sorted(HF))
def test_zipping_hugging_face_models_as_loaded(name):
    """Hugging Face models with their default configs (use_cache left on), traced by
    torch.export, batches of keyword inputs: zipped with a permuted copy, the function is back."""
    T = pytest.importorskip("transformers")
    torch.manual_seed(0)
    a = HF[name](T).eval()
    data = [{"input_ids": torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(k))} for k in range(3)]
    b = permuted(a, data[0], 1)
    out = rbt.zipit([a, b], data, alpha=0.5)
    field = "last_hidden_state" if name == "bert" else "logits"
    with torch.no_grad():
        torch.testing.assert_close(getattr(out.merged(**data[0]), field), getattr(a(**data[0]), field),
                                   rtol=1e-4, atol=1e-5)
    assert all(w == 0 for w in out.within.values())
    with pytest.raises(rb.RebasinError, match="stop_at"):
        rbt.zipit([a, b], data, stop_at="lm_head" if name != "bert" else "pooler")


def test_tied_weights_take_one_merged_value():
    """GPT-2's embedding and output layer are one tensor: zipping two different models (merges
    inside one model change the cluster sizes) writes the spec's member's merged value, whatever
    the state_dict's order, and the merged model keeps them tied."""
    T = pytest.importorskip("transformers")
    torch.manual_seed(0)
    a, b = HF["gpt2"](T).eval(), HF["gpt2"](T).eval()
    data = [{"input_ids": torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(k))} for k in range(3)]
    out = rbt.zipit([a, b], data, alpha=0.5)
    m = out.merged
    assert m.lm_head.weight.data_ptr() == m.transformer.wte.weight.data_ptr() and sum(out.within.values()) > 0
    (g,) = [g for g, ms in out.spec.groups.items() if ("lm_head.weight", 1) in ms]
    unmerge = torch.from_numpy(out.merges[g][1])
    n = unmerge.shape[1]
    want = (a.lm_head.weight.double() @ unmerge[:n] + b.lm_head.weight.double() @ unmerge[n:]) / 2
    torch.testing.assert_close(m.lm_head.weight.double(), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(rb.RebasinError, match="keyword inputs"):
        rbt.zipit([mlp(), mlp()], [{"input": torch.randn(4, 4)}], stop_at="2")
