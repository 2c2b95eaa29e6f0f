"""rebasin_rs.torch on torchvision's zoo: inferred specs permute every hidden unit, keep the
function, and aligning a permuted copy recovers the original exactly."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import numpy as np  # noqa: E402

import rebasin_rs.torch as rbt  # noqa: E402

# Small inputs keep the suite fast; every model here pools adaptively before its classifier.
ZOO = {
    "resnet18": 32,
    "resnet50": 32,
    "vgg11_bn": 32,
    "mobilenet_v3_small": 32,
    "efficientnet_b0": 32,
    "convnext_tiny": 32,
    "densenet121": 32,
}


def excite(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random normalisation parameters and running statistics (and ConvNeXt's layer scales), so
    that no unit is a copy of another and outputs do not vanish: at initialisation BatchNorm is
    the identity and ConvNeXt's blocks are almost skipped, which would hide a wrong permutation."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm, torch.nn.GroupNorm)):
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        for name, p in model.named_parameters():
            if name.endswith("layer_scale"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
    return model


def build(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return excite(getattr(torchvision.models, name)(num_classes=10), seed).eval()


@pytest.fixture(scope="module")
def zoo():
    return {}


def _model_and_spec(zoo, name):
    if name not in zoo:
        m = build(name)
        x = torch.randn(2, 3, ZOO[name], ZOO[name], generator=torch.Generator().manual_seed(1))
        zoo[name] = (m, x, rbt.infer_spec(m, x))
    return zoo[name]


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_spec_permutes_every_hidden_unit(zoo, name):
    m, x, spec = _model_and_spec(zoo, name)
    cov = rbt.spec_coverage(m, x)
    print(f"{name}: {cov.permuted}/{cov.hidden} hidden units permuted ({cov.share:.1%}), {len(spec.groups)} groups")
    assert cov.hidden > 0
    assert cov.share == 1.0, cov.unpermuted


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_random_permutations_keep_outputs(zoo, name):
    m, x, spec = _model_and_spec(zoo, name)
    with torch.no_grad():
        scale = float(m(x).abs().max())
    assert scale > 1e-2, "outputs vanish: the check would prove nothing"
    for seed in (0, 1):
        assert rbt.check_equivalence(m, spec, x, seed=seed) < 1e-4 * max(1.0, scale)


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_align_recovers_a_permuted_copy(zoo, name):
    m, x, spec = _model_and_spec(zoo, name)
    rng = np.random.default_rng(5)
    sizes = spec.validate(m.state_dict())
    planted = {g: rng.permutation(n) for g, n in sizes.items()}
    b = rbt.permute_model(m, spec, planted)
    # The planted copy really moved (units are distinct after excite()).
    assert any(not torch.equal(b.state_dict()[k], v) for k, v in m.state_dict().items())
    aligned, res = rbt.align(m, b, spec=spec)
    for k, v in m.state_dict().items():
        assert torch.equal(aligned.state_dict()[k], v), k


def test_randomised_batchnorm_statistics_are_permuted(zoo):
    m, x, spec = _model_and_spec(zoo, "resnet50")
    members = {mm for ms in spec.groups.values() for mm, _ in ms}
    assert {"bn1.running_mean", "bn1.running_var", "layer4.2.bn3.running_var"} <= members
    # Wrong statistics would change the output: drop them from the spec and check it breaks.
    groups = {g: tuple(m_ for m_ in ms if "running" not in m_[0]) for g, ms in spec.groups.items()}
    broken = type(spec)(groups)
    with torch.no_grad():
        scale = float(m(x).abs().max())
    assert rbt.check_equivalence(m, broken, x) > 1e-3 * scale


def test_densenet_concatenations_become_pieces(zoo):
    m, x, spec = _model_and_spec(zoo, "densenet121")
    # The first dense layer of block 2 reads the transition's output as one block; the second
    # reads it and the first layer's 32 new channels: two pieces of norm1 and of conv1's input.
    pieces = [p for p in spec.pieces if p.startswith("features.denseblock2.denselayer2.conv1.weight")]
    assert len(pieces) == 2
    assert spec.pieces[pieces[1]][1] == ((1, 128, 160),)
