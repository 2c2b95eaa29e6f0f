"""The operations timm's models meet, in plain torch modules (no timm needed): unbind of a fused
q/k/v view, a shifted-window roll and a channel-preserving pad, a q/k/v bias concatenated at run
time from a zero buffer outside the state_dict, torch.stack, F.normalize, a spatial axis cut into
patches next to the channels; and check_equivalence catching a wrong spec that constant
parameters would hide."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import rebasin_rs as rb  # noqa: E402
import rebasin_rs.torch as rbt  # noqa: E402

D, H = 24, 3


class Attn(nn.Module):
    """timm's Attention: qkv viewed (B, N, 3, heads, head_dim), permuted and unbound; optionally
    EVA-02's bias (q_bias, a zero k_bias buffer outside the state_dict, v_bias) and a roll of
    the tokens (a shifted window) and a pad of them."""

    def __init__(self, eva: bool = False, shift: bool = False) -> None:
        super().__init__()
        self.eva, self.shift = eva, shift
        self.qkv = nn.Linear(D, 3 * D, bias=not eva)
        if eva:
            self.q_bias = nn.Parameter(torch.randn(D))
            self.register_buffer("k_bias", torch.zeros(D), persistent=False)
            self.v_bias = nn.Parameter(torch.randn(D))
        self.proj = nn.Linear(D, D)
        self.fc1, self.fc2 = nn.Linear(D, 32), nn.Linear(32, D)
        self.head = nn.Linear(D, 2)

    def forward(self, x):
        B, N, C = x.shape
        h = x
        if self.shift:
            h = torch.roll(h, shifts=1, dims=1)
            h = F.pad(h, (0, 0, 0, 2))
        if self.eva:
            qkv = F.linear(h, self.qkv.weight, torch.cat((self.q_bias, self.k_bias, self.v_bias)))
        else:
            qkv = self.qkv(h)
        q, k, v = qkv.reshape(B, -1, 3, H, C // H).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, -1, C)[:, :N]
        x = x + self.proj(o)
        x = x + self.fc2(torch.stack([F.gelu(self.fc1(x)), torch.tanh(self.fc1(x))], 0).mean(0))
        return self.head(x.mean(1))


class Patches(nn.Module):
    """MobileViT's unfolding: (B, C, H, W) viewed as (B * C * n_h, p_h, n_w, p_w), transposed and
    regrouped as (B * P, N, C), a Linear on the channels, then folded back."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.fc = nn.Linear(8, 8)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = self.conv(x)
        B, C, Hh, W = x.shape
        p = 2
        y = x.reshape(B * C * (Hh // p), p, W // p, p).transpose(1, 2)
        y = y.reshape(B, C, -1, p * p).transpose(1, 3).reshape(B * p * p, -1, C)
        y = torch.relu(self.fc(y))
        y = y.contiguous().view(B, p * p, -1, C).transpose(1, 3).reshape(B * C * (Hh // p), W // p, p, p)
        y = y.transpose(1, 2).reshape(B, C, Hh, W)
        return self.out(y).mean((2, 3))


def recovered(model, x, seed=1):
    spec = rbt.infer_spec(model, x)
    sizes = spec.validate(model.state_dict())
    rng = np.random.default_rng(seed)
    b = rbt.permute_model(model, spec, {g: rng.permutation(n) for g, n in sizes.items()})
    aligned, _ = rbt.align(model, b, x, spec=spec)
    return all(torch.equal(aligned.state_dict()[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kind", ["plain", "eva", "shift"])
def test_unbound_qkv_heads_move(kind):
    torch.manual_seed(0)
    model = Attn(eva=kind == "eva", shift=kind == "shift").eval()
    x = torch.randn(2, 5, D)
    cov = rbt.spec_coverage(model, x)
    # Every unit moves; q, k and v picked apart by unbind are not units.
    assert cov.share == 1.0, cov.unpermuted
    assert set(cov.by_kind) == {"units", "heads", "within-head"}
    assert all(p == h for p, h in cov.by_kind.values())
    spec = rbt.infer_spec(model, x)
    assert rbt.check_equivalence(model, spec, x) < 1e-5
    assert recovered(model, x)
    if kind == "eva":
        assert "k_bias" not in str(spec.groups)  # constant, outside the state_dict: not a member


def test_a_non_constant_tensor_outside_the_state_dict_still_holds_its_units():
    torch.manual_seed(0)
    model = Attn(eva=True).eval()
    model.k_bias.normal_()  # no longer one value: permuting it would change it, and it is not saved
    x = torch.randn(2, 5, D)
    cov = rbt.spec_coverage(model, x)
    assert cov.share < 1.0 and any("k_bias" in why for why in cov.unpermuted)
    assert rbt.check_equivalence(model, rbt.infer_spec(model, x, warn=False), x) < 1e-5


def test_patches_cut_from_the_spatial_axes_leave_the_channels_free():
    torch.manual_seed(0)
    model = Patches().eval()
    x = torch.randn(2, 3, 4, 6)
    assert rbt.spec_coverage(model, x).share == 1.0
    spec = rbt.infer_spec(model, x)
    assert rbt.check_equivalence(model, spec, x) < 1e-5
    assert recovered(model, x)


def test_a_roll_or_pad_of_the_units_fixes_them():
    class Rolled(nn.Module):
        def __init__(self, how):
            super().__init__()
            self.how, self.a, self.b = how, nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x):
            h = self.a(x)
            h = torch.roll(h, 1, dims=-1) if self.how == "roll" else F.pad(h, (1, 0))[..., 1:]
            return self.b(torch.relu(h))

    for how in ("roll", "pad"):
        model, x = Rolled(how).eval(), torch.randn(3, 4)
        with pytest.warns(UserWarning):
            spec = rbt.infer_spec(model, x)
        assert rbt.spec_coverage(model, x).share == 0.0
        assert rbt.check_equivalence(model, spec, x) < 1e-5


class Normed(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def test_check_equivalence_sees_a_wrong_spec_behind_constant_parameters():
    torch.manual_seed(0)
    model, x = Normed().eval(), torch.randn(5, 4)
    spec = rbt.infer_spec(model, x)
    g = next(iter(spec.groups))
    # Leave BatchNorm's weight, bias and running statistics out: at their init (ones and zeros)
    # they read the same in any order, so the model alone cannot tell the spec is wrong.
    wrong = rb.PermutationSpec({g: tuple(m for m in spec.groups[g] if not m[0].startswith("bn."))})
    assert rbt.check_equivalence(model, wrong, x, randomize=False) < 1e-6
    assert rbt.check_equivalence(model, wrong, x) > 1e-2
    assert rbt.check_equivalence(model, spec, x) < 1e-5
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rbt.check_equivalence(model, spec, x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # not modified
    with pytest.raises(TypeError, match="randomize"):
        rbt.check_equivalence(model, spec, x, randomize=1)
