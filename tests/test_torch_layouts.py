"""Fused projections laid out head by head (issue 13): GPT-NeoX's q/k/v interleaved per head, a
partial rotary slice inside each head, and Falcon's multi-query projection (q heads, then one k
and one v head) picked by index lists. Small modules traced by torch.fx, the same layouts as the
Hugging Face models in test_hf_models.py (traced by torch.export there)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import rebasin_rs as rb  # noqa: E402
import rebasin_rs.torch as rbt  # noqa: E402

D, H, HD, T = 24, 3, 8, 5
# Grouped layout: G groups of QG query heads, each group with one key and one value head.
G, QG = 2, 2


class Block(nn.Module):
    """Attention with one fused projection, then an MLP, both residual. ``layout``:
    ``"per-head"``: (heads, q | k | v) as GPT-NeoX; ``"multi-query"``: (q heads | k | v) as Falcon.
    ``rotary``: the first ``rotary`` units of each q/k head are scaled by a table that is not in
    the state_dict (as rotary frequencies are), the rest pass through."""

    def __init__(self, layout: str, rotary: int = 0) -> None:
        super().__init__()
        self.layout, self.rotary = layout, rotary
        heads = {"per-head": 3 * H, "multi-query": H + 2, "grouped": G * (QG + 2)}[layout]
        self.nq = G * QG if layout == "grouped" else H
        self.qkv = nn.Linear(D, heads * HD)
        self.dense = nn.Linear(self.nq * HD, D)
        self.fc1, self.fc2 = nn.Linear(D, 32), nn.Linear(32, D)
        self.register_buffer("table", torch.linspace(0.5, 1.5, max(rotary, 1)), persistent=False)

    def rotate(self, x):
        if not self.rotary:
            return x
        return torch.cat([x[..., :self.rotary] * self.table, x[..., self.rotary:]], dim=-1)

    def forward(self, x):
        b, t, _ = x.shape
        if self.layout == "per-head":
            qkv = self.qkv(x).view(b, t, H, 3 * HD).transpose(1, 2)
            q, k, v = qkv.chunk(3, dim=-1)
        elif self.layout == "multi-query":
            qkv = self.qkv(x).view(b, t, H + 2, HD)
            q, k, v = qkv[..., :-2, :], qkv[..., [-2], :], qkv[..., [-1], :]
            q, k, v = (y.transpose(1, 2) for y in (q, k, v))
        else:
            # Falcon's grouped q/k/v as transformers >= 5.25 reads it: viewed as (rows, head
            # size) first, then as groups of (q heads | k | v), k and v picked by position and
            # repeated for each q head of their group.
            rows = self.qkv(x).view(b, t, -1, HD)
            grouped = rows.view(b, t, G, -1, HD)
            q = grouped[..., :-2, :].flatten(-3, -2)
            k, v = grouped[..., -2, :], grouped[..., -1, :]
            q, k, v = (y.transpose(1, 2) for y in (q, k, v))
            k, v = (y[:, :, None].expand(b, G, QG, t, HD).reshape(b, G * QG, t, HD) for y in (k, v))
        a = F.scaled_dot_product_attention(self.rotate(q), self.rotate(k), v)
        x = x + self.dense(a.transpose(1, 2).reshape(b, t, self.nq * HD))
        return x + self.fc2(F.gelu(self.fc1(x)))


class Net(nn.Module):
    def __init__(self, layout: str, rotary: int = 0) -> None:
        super().__init__()
        self.inp = nn.Linear(6, D)
        self.blocks = nn.Sequential(Block(layout, rotary), Block(layout, rotary))
        self.out = nn.Linear(D, 4)

    def forward(self, x):
        return self.out(self.blocks(self.inp(x)))


def make(layout: str, rotary: int = 0, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = Net(layout, rotary)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    return net.eval()


X = torch.randn(2, T, 6, generator=torch.Generator().manual_seed(1))

# layout, rotary -> within-head units that must stay (q/k units under the table, 2 blocks).
CASES = {
    "per-head": ("per-head", 0, 0),
    "per-head, partial rotary": ("per-head", 3, 2 * 2 * 3),  # blocks x (q, k) x units per head
    "multi-query": ("multi-query", 0, None),
    "grouped": ("grouped", 0, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fused_layouts_keep_the_function_and_move_their_heads(case):
    layout, rotary, fixed_within = CASES[case]
    net = make(layout, rotary)
    spec = rbt.infer_spec(net, X, warn=False)
    cov = rbt.spec_coverage(net, X)
    heads, within, units = cov.by_kind["heads"], cov.by_kind["within-head"], cov.by_kind["units"]
    assert heads[0] == heads[1] > 0 and units[0] == units[1] > 0, cov
    if fixed_within is not None:
        # Every within-head unit of q, k and v moves, except those the table holds.
        assert within[1] - within[0] == fixed_within, cov
        assert cov.hidden - cov.permuted == fixed_within, cov
    else:
        # Multi-query: q, k and v share one head layout in the view, so their within-head units
        # are one permutation; nothing holds them here.
        assert within[0] == within[1] > 0, cov
    assert rbt.check_equivalence(net, spec, X) < 1e-5
    for seed in (1, 2):
        assert rbt.check_equivalence(net, spec, X, seed=seed) < 1e-5


@pytest.mark.parametrize("case", list(CASES))
def test_a_permuted_copy_is_recovered_exactly(case):
    layout, rotary, _ = CASES[case]
    net = make(layout, rotary)
    spec = rbt.infer_spec(net, X, warn=False)
    rng = np.random.default_rng(3)
    planted = {g: rng.permutation(n) for g, n in spec.validate(net.state_dict()).items()}
    b = rbt.permute_model(net, spec, planted)
    assert not torch.equal(b.blocks[0].qkv.weight, net.blocks[0].qkv.weight)
    with torch.no_grad():
        assert torch.allclose(b(X), net(X), atol=1e-5)
    aligned, _ = rbt.align(net, b, X)
    for k, v in net.state_dict().items():
        assert torch.equal(aligned.state_dict()[k], v), k


def test_per_head_layout_is_sliced_under_a_head_shape():
    net = make("per-head")
    spec = rbt.infer_spec(net, X, warn=False)
    name = "blocks.0.qkv.weight"
    pieces = {m: p for m, p in spec.pieces.items() if p[0] == name}
    # q, k and v of every head: the rows viewed as (heads, 3 * head_dim), each a third of a head.
    assert sorted(p[1] for p in pieces.values()) == [((1, 0, HD),), ((1, HD, 2 * HD),), ((1, 2 * HD, 3 * HD),)]
    assert {p[2] for p in pieces.values()} == {(H, 3 * HD, D)}
    q = next(m for m, p in pieces.items() if p[1] == ((1, 0, HD),))
    w = net.blocks[0].qkv.weight.detach()
    assert torch.equal(spec.take(q, {name: w}), w.view(H, 3 * HD, D)[:, :HD])


def test_a_head_of_whole_units_against_head_halves_keeps_the_heads():
    # The output projection's input is (heads, head_dim) with head_dim whole; the rotary slice
    # wants each q/k head cut where the value heads are not: heads still match, the cut part
    # stays (here every within-head unit is tied to q/k through the multi-query view).
    net = make("multi-query", rotary=3)
    cov = rbt.spec_coverage(net, X)
    assert cov.by_kind["heads"][0] == cov.by_kind["heads"][1] > 0, cov
    spec = rbt.infer_spec(net, X, warn=False)
    assert rbt.check_equivalence(net, spec, X) < 1e-5


# -- the spec: pieces sliced under a shape (numpy, no tracing) ------------------------------------

def _woven_spec():
    pieces = {f"w[{s}]": ("w", ((1, s * 2, s * 2 + 2),), (3, 6, 4)) for s in range(3)}
    groups = {"heads": tuple((f"w[{s}]", 0) for s in range(3)), "qk": (("w[0]", 1), ("w[1]", 1)),
              "v": (("w[2]", 1),)}
    return rb.PermutationSpec(groups, pieces=pieces)


def test_pieces_under_a_shape_permute_as_the_layout_says():
    spec = _woven_spec()
    w = np.arange(18 * 4, dtype=np.float64).reshape(18, 4)
    perms = {"heads": np.array([2, 0, 1]), "qk": np.array([1, 0]), "v": np.array([1, 0])}
    out = rb.apply_permutation(spec, perms, {"w": w})["w"]
    # By hand: rows are (head, part q/k/v, unit); heads reordered, units within q/k and v swapped.
    expect = w.reshape(3, 3, 2, 4)[perms["heads"]][:, :, [1, 0]].reshape(18, 4)
    np.testing.assert_array_equal(out, expect)
    assert out.shape == w.shape and np.array_equal(w, np.arange(18 * 4).reshape(18, 4))  # input untouched
    # torch, a non-contiguous parameter: the same, written whole.
    t = torch.tensor(w).T.contiguous().T
    np.testing.assert_array_equal(rb.apply_permutation(spec, perms, {"w": t})["w"].numpy(), expect)


def test_pieces_under_a_shape_round_trip_and_are_checked(tmp_path):
    spec = _woven_spec()
    path = tmp_path / "spec.json"
    spec.save(path)
    assert rb.PermutationSpec.load(path) == spec
    with pytest.raises(rb.RebasinError, match="viewed as"):
        spec.validate({"w": np.zeros((17, 4))})
    mixed = dict(spec.pieces)
    mixed["w[2]"] = ("w", ((1, 4, 6),), (6, 3, 4))
    with pytest.raises(rb.RebasinError, match="different shapes"):
        rb.PermutationSpec(spec.groups, pieces=mixed)
    with pytest.raises(rb.RebasinError, match="sizes must be positive"):
        rb.PermutationSpec({"P": (("w[0]", 0),)}, pieces={"w[0]": ("w", ((1, 0, 2),), (3, 0, 4))})
    with pytest.raises(rb.RebasinError, match="must be"):
        rb.PermutationSpec({"P": (("w[0]", 0),)}, pieces={"w[0]": ("w", ((1, 0, 2),), "364")})


def test_a_woven_axis_is_never_read_as_a_plain_one():
    # A woven axis (2 heads, each a | b) fed to torchvision Swin's patch merging, which lays four
    # copies of the channels side by side: not one woven axis, so those units stay. Read as a
    # plain axis, the spec changed the function (0.36 on this net).
    tv_swin = pytest.importorskip("torchvision.models.swin_transformer")

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.m, self.o = nn.Linear(3, 12), nn.Linear(48, 5), nn.Linear(6, 5)

        def forward(self, x):  # (B, 4, 4, 3)
            y = self.lin(x)
            b, h, w, _ = y.shape
            a, c = y.view(b, h, w, 2, 6).chunk(2, -1)
            side = self.o((a * c).reshape(b, h, w, 6)).mean((1, 2))
            return self.m(tv_swin._patch_merging_pad(F.gelu(y))).mean((1, 2)) + side

    torch.manual_seed(0)
    net, x = Net().eval(), torch.randn(2, 4, 4, 3)
    spec = rbt.infer_spec(net, x, warn=False)
    for seed in range(6):
        assert rbt.check_equivalence(net, spec, x, seed=seed) < 1e-5


def test_check_equivalence_never_draws_the_identity():
    # A wrong spec on a group of two units (fc1's outputs moved, fc2's inputs not): the identity,
    # half of the permutations of two, would hide it.
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1)).eval()
    wrong = rb.PermutationSpec({"P": (("0.weight", 0), ("0.bias", 0))})
    x = torch.randn(8, 3)
    assert all(rbt.check_equivalence(net, wrong, x, seed=s) > 1e-4 for s in range(10))
