"""Transformers: heads, within-head units, MLP units and the residual stream permuted without
changing the function, on torchvision ViT and Swin and Hugging Face GPT-2, BERT and Llama (GQA,
rotary embeddings); a permuted copy is recovered exactly."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
transformers = pytest.importorskip("transformers")

from torch import nn  # noqa: E402

import rebasin_rs.torch as rbt  # noqa: E402


def excite(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter random (ViT's head and class token start at zero, norms at one), so no two
    units are equal and outputs do not vanish: a wrong permutation then shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name.lower() or name.endswith("ln_1.weight") or name.endswith("ln_2.weight")
                                 or name.endswith("ln_f.weight") or "LayerNorm" in name):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5 if name.endswith("weight")
                        else torch.randn(p.shape, generator=gen) * 0.1)
            elif float(p.std()) == 0.0 or p.numel() == 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


def hf_inputs():
    return torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1))


def build(name):
    torch.manual_seed(0)
    if name == "vit_b_16":
        return torchvision.models.vit_b_16(image_size=32, num_classes=10), torch.randn(2, 3, 32, 32)
    if name == "swin_t":
        return torchvision.models.swin_t(num_classes=10), torch.randn(2, 3, 64, 64)
    if name == "gpt2":
        cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=32)
        return transformers.GPT2LMHeadModel(cfg), hf_inputs()
    if name == "bert":
        cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                      vocab_size=100, max_position_embeddings=32, num_labels=3)
        return transformers.BertForSequenceClassification(cfg), hf_inputs()
    if name == "llama":
        cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                       intermediate_size=128, vocab_size=100, max_position_embeddings=32)
        return transformers.LlamaForCausalLM(cfg), hf_inputs()
    raise KeyError(name)


NAMES = ["vit_b_16", "swin_t", "gpt2", "bert", "llama"]


@pytest.fixture(scope="module")
def built():
    return {}


def get(built, name):
    if name not in built:
        model, x = build(name)
        model = excite(model)
        built[name] = (model, x, rbt.infer_spec(model, x, warn=False))
    return built[name]


def logits(model, x):
    with torch.no_grad():
        out = model(x)
    return out if isinstance(out, torch.Tensor) else out.logits


@pytest.mark.parametrize("name", NAMES)
def test_heads_within_head_mlp_and_residual_units_are_permuted(built, name):
    model, x, spec = get(built, name)
    cov = rbt.spec_coverage(model, x)
    print(f"{name}: {cov.permuted}/{cov.hidden} ({cov.share:.1%}); by kind {cov.by_kind}; {len(spec.groups)} groups")
    heads, within, units = cov.by_kind["heads"], cov.by_kind["within-head"], cov.by_kind["units"]
    assert heads[0] == heads[1] > 0, cov.by_kind
    assert units[0] == units[1] > 0, cov.by_kind
    if name == "llama":
        # Rotary embeddings rotate pairs of query/key dimensions at fixed frequencies: those stay,
        # the value/output within-head units move.
        assert 0 < within[0] < within[1]
        # Only those: every fixed unit is a q/k within-head unit, held by the rotary frequencies
        # (the inv_freq buffer, outside the state_dict: both models share it) or, where a head's
        # halves cannot be expressed, the slice that rotate_half makes.
        assert cov.hidden - cov.permuted == within[1] - within[0]
        assert all("inv_freq" in why or "a slice that cuts a unit axis" in why for why in cov.unpermuted), \
            cov.unpermuted
    else:
        assert within[0] == within[1] > 0, cov.by_kind
        assert cov.share == 1.0, cov.unpermuted


@pytest.mark.parametrize("name", NAMES)
def test_random_permutations_keep_outputs(built, name):
    model, x, spec = get(built, name)
    scale = float(logits(model, x).abs().max())
    assert scale > 1e-2, "outputs vanish: the check would prove nothing"
    for seed in (0, 1):
        assert rbt.check_equivalence(model, spec, x, seed=seed) < 1e-4 * max(1.0, scale)


@pytest.mark.parametrize("name", NAMES)
def test_align_recovers_a_permuted_copy(built, name):
    model, x, spec = get(built, name)
    rng = np.random.default_rng(4)
    planted = {g: rng.permutation(n) for g, n in spec.validate(model.state_dict()).items()}
    b = rbt.permute_model(model, spec, planted)
    assert any(not torch.equal(b.state_dict()[k], v) for k, v in model.state_dict().items())
    aligned, _ = rbt.align(model, b, spec=spec)
    for k, v in model.state_dict().items():
        assert torch.equal(aligned.state_dict()[k], v), k


def test_residual_stream_is_one_group_across_blocks(built):
    model, x, spec = get(built, "gpt2")
    # The tied embedding / LM head, every block's attention output and MLP output, every
    # LayerNorm: one permutation.
    # (torch.export names the tied matrix by one of its two names.)
    (stream,) = [g for g, ms in spec.groups.items()
                 if {("transformer.wte.weight", 1), ("lm_head.weight", 1)} & set(ms)]
    members = {m for m, _ in spec.groups[stream]}
    for name in ["transformer.wpe.weight", "transformer.h.0.ln_1.weight", "transformer.h.1.attn.c_proj.weight",
                 "transformer.h.1.mlp.c_proj.bias", "transformer.ln_f.bias"]:
        assert name in members, name


def test_fused_projection_is_split_into_q_k_v_pieces(built):
    model, x, spec = get(built, "vit_b_16")
    pieces = [p for p, (param, _) in spec.pieces.items() if param == "encoder.layers.encoder_layer_0.self_attention.in_proj_weight"]
    assert len(pieces) == 3
    for p in pieces:
        assert spec.views[p] == (12, 64, 768)  # (heads, head_dim, embedding)


def test_grouped_query_attention_keeps_its_grouping(built):
    model, x, spec = get(built, "llama")
    axes = spec.axes_to_perm
    q, k = axes["model.layers.0.self_attn.q_proj.weight"], axes["model.layers.0.self_attn.k_proj.weight"]
    # q's heads are (key/value head, query within the group): its first factor is k's head group.
    assert spec.views["model.layers.0.self_attn.q_proj.weight"][:3] == (2, 2, 16)
    assert q[0] == k[0]
    assert spec.views["model.layers.0.self_attn.k_proj.weight"][:2] == (2, 16)


def test_multihead_attention_module_directly():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(5, 24)
            self.attn = nn.MultiheadAttention(24, 3, batch_first=True)
            self.out = nn.Linear(24, 2)

        def forward(self, x):
            h = self.inp(x)
            a, w = self.attn(h, h, h, need_weights=True, average_attn_weights=False)
            return self.out(h + a), w

    torch.manual_seed(0)
    model = excite(Block())
    x = torch.randn(2, 7, 5)
    spec = rbt.infer_spec(model, x)
    assert rbt.spec_coverage(model, x).share == 1.0
    assert rbt.check_equivalence(model, spec, x) < 1e-5
    rng = np.random.default_rng(0)
    b = rbt.permute_model(model, spec, {g: rng.permutation(n) for g, n in spec.validate(model.state_dict()).items()})
    aligned, _ = rbt.align(model, b, spec=spec)
    for k, v in model.state_dict().items():
        assert torch.equal(aligned.state_dict()[k], v), k


def test_merging_permuted_copies_of_a_transformer_keeps_its_function(built):
    model, x, spec = get(built, "bert")
    rng = np.random.default_rng(7)
    sizes = spec.validate(model.state_dict())
    copies = [rbt.permute_model(model, spec, {g: rng.permutation(n) for g, n in sizes.items()}) for _ in range(3)]
    soup = rbt.merge_many(copies, spec=spec).merged
    assert torch.allclose(logits(soup, x), logits(model, x), atol=1e-4)
    b_aligned, _ = rbt.align(copies[0], copies[1], spec=spec)
    mid = rbt.merge(copies[0], b_aligned, 0.5)
    assert torch.allclose(logits(mid, x), logits(model, x), atol=1e-4)
