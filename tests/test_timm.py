"""rebasin_rs.torch on timm's zoo, as a new user meets it (random inits, small configs, no
downloads): every hidden unit permuted on ResNeXt, RegNet, ViT/DeiT, Swin and the others here,
the function kept under random permutations (with constant parameters drawn at random first), and
a planted permutation recovered exactly."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

import numpy as np  # noqa: E402

import rebasin_rs.torch as rbt  # noqa: E402

# name -> (small config, input size, what coverage must reach). Below 1.0: docs/benchmarks.md says which
# operation holds the rest back.
ZOO = {
    "resnet18": ({}, 32, 1.0),
    "efficientnet_b0": ({}, 32, 1.0),
    "maxvit_nano_rw_256": ({"img_size": 64}, 64, 1.0),
    "resnext26ts": ({}, 32, 1.0),
    "regnetx_002": ({}, 32, 1.0),
    "regnety_002": ({}, 32, 1.0),
    "vit_tiny_patch16_224": ({"img_size": 32, "depth": 2}, 32, 1.0),
    "deit_tiny_distilled_patch16_224": ({"img_size": 32, "depth": 2}, 32, 1.0),
    "swin_tiny_patch4_window7_224": ({"img_size": 56, "depths": (2, 2), "num_heads": (2, 4), "embed_dim": 32}, 56, 1.0),
    "pvt_v2_b0": ({}, 64, 1.0),
    "fastvit_t8": ({}, 64, 1.0),
    "convnext_atto": ({}, 32, 1.0),
    "mobilenetv3_small_050": ({}, 32, 1.0),
    "coatnet_nano_rw_224": ({"img_size": 64}, 64, 1.0),
    "levit_128s": ({"img_size": 64}, 64, 1.0),
    "edgenext_xx_small": ({}, 64, 1.0),
    "mobilevit_xxs": ({}, 64, 1.0),
    "efficientformer_l1": ({}, 224, 1.0),
    # The q/k/v of each head, (3, head_dim) inside each grouped convolution group, viewed across
    # the concatenated scales: those groups' units stay fixed.
    "efficientvit_b0": ({}, 64, 0.96),
    # Interleaved rotary embeddings hold q/k's within-head units, and the fused q/k/v bias ties
    # v's to them.
    "eva02_tiny_patch14_224": ({"img_size": 28, "depth": 2}, 28, 0.88),
}


def build(name: str, seed: int = 0) -> torch.nn.Module:
    kwargs, _, _ = ZOO[name]
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()


def example(name: str, batch: int = 2) -> torch.Tensor:
    s = ZOO[name][1]
    return torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", list(ZOO))
def test_timm_model_is_covered_equivalent_and_recovered(name):
    model, x = build(name), example(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = rbt.infer_spec(model, x)
    cov = rbt.spec_coverage(model, x)
    assert cov.share >= ZOO[name][2], (cov.share, cov.unpermuted)
    # Relative to the outputs, after drawing the model's constant parameters at random.
    assert rbt.check_equivalence(model, spec, x) < 1e-5
    sizes = spec.validate(model.state_dict())
    rng = np.random.default_rng(2)
    perms = {g: np.roll(np.arange(n), 1) if n == 2 else rng.permutation(n) for g, n in sizes.items()}
    b = rbt.permute_model(model, spec, perms)
    aligned, res = rbt.align(model, b, x, spec=spec)
    for k, v in model.state_dict().items():
        assert torch.equal(aligned.state_dict()[k], v), k
    with torch.no_grad():
        torch.testing.assert_close(aligned(x), model(x), rtol=1e-4, atol=1e-5)


def test_kinds_on_grouped_and_attention_models():
    cov = rbt.spec_coverage(build("resnext26ts"), example("resnext26ts"))
    assert set(cov.by_kind) == {"units", "groups", "within-group"}
    assert all(p == h for p, h in cov.by_kind.values())
    cov = rbt.spec_coverage(build("vit_tiny_patch16_224"), example("vit_tiny_patch16_224"))
    # 3 heads per block, 2 blocks; q, k and v picked apart by unbind are not units.
    assert cov.by_kind["heads"] == (6, 6) and cov.by_kind["within-head"] == (128, 128)


def test_swin_shift_and_padding_leave_the_channels_free():
    name = "swin_tiny_patch4_window7_224"
    model, x = build(name), example(name)
    cov = rbt.spec_coverage(model, x)
    assert not any("roll" in why or "spatial" in why for why in cov.unpermuted)
    assert cov.by_kind["units"][0] == cov.by_kind["units"][1]


def test_activation_matching_recovers_a_grouped_model():
    name = "regnetx_002"
    model, x = build(name), example(name)
    spec = rbt.infer_spec(model, x, warn=False)
    sizes = spec.validate(model.state_dict())
    rng = np.random.default_rng(3)
    b = rbt.permute_model(model, spec, {g: rng.permutation(n) for g, n in sizes.items()})
    data = [torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    aligned, res = rbt.align(model, b, x, spec=spec, method="activation", data=data)
    # Dead units (zero after every ReLU on these inputs) have no preferred slot: compare outputs
    # and the groups' weights where activations tell units apart.
    with torch.no_grad():
        torch.testing.assert_close(aligned(x), model(x), rtol=1e-4, atol=1e-5)
    grouped = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert grouped
    for n in grouped:
        assert torch.equal(aligned.get_submodule(n).weight, model.get_submodule(n).weight), n
