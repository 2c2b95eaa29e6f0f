"""Hugging Face models as people build and load them (issue 13): default configs (``use_cache``
left at its default of True, attention left at its default implementation), no downloads.

For every architecture: the inferred spec keeps the function under random permutations, a randomly
permuted copy is aligned back exactly, coverage is counted per kind (units, heads, within-head) and
every fixed unit has a stated reason; the user's model and config are left as they were.
``pytest -s`` prints the table docs/benchmarks.md quotes.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import rebasin_rs.torch as rbt  # noqa: E402

T = transformers
IDS = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1))
PIXELS = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
# Small shapes shared by the configs: width 64, 4 heads of 16, MLP 128, 2 layers, vocabulary 100.
DEC = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=100,
           max_position_embeddings=32)

# name -> (config, model class, example inputs, fixed units: reason -> why it is right to keep them)
ROPE = "rotary embeddings turn pairs of query/key dimensions at fixed frequencies"
MODELS = {
    "llama": (lambda: T.LlamaConfig(**DEC, num_key_value_heads=2), "LlamaForCausalLM", IDS, ROPE),
    "llama-eager": (lambda: T.LlamaConfig(**DEC, num_key_value_heads=2, attn_implementation="eager"),
                    "LlamaForCausalLM", IDS, ROPE),
    "mistral": (lambda: T.MistralConfig(**DEC, num_key_value_heads=2), "MistralForCausalLM", IDS, ROPE),
    "qwen2": (lambda: T.Qwen2Config(**DEC, num_key_value_heads=2), "Qwen2ForCausalLM", IDS, ROPE),
    "gemma": (lambda: T.GemmaConfig(**DEC, num_key_value_heads=2, head_dim=16), "GemmaForCausalLM", IDS, ROPE),
    "phi": (lambda: T.PhiConfig(**DEC), "PhiForCausalLM", IDS,
            "partial rotary embeddings: the rotated q/k within-head units (" + ROPE + "); the rest move"),
    "gpt_neox": (lambda: T.GPTNeoXConfig(**DEC), "GPTNeoXForCausalLM", IDS,
                 "partial rotary embeddings: the rotated q/k within-head units; the rest move (q/k/v "
                 "fused head by head)"),
    "gpt2": (lambda: T.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=32), "GPT2LMHeadModel",
             IDS, None),
    "opt": (lambda: T.OPTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128, vocab_size=100,
                                max_position_embeddings=32, word_embed_proj_dim=64), "OPTForCausalLM", IDS, None),
    "bloom": (lambda: T.BloomConfig(hidden_size=64, n_layer=2, n_head=4, vocab_size=100), "BloomForCausalLM", IDS,
              "ALiBi gives every head its own fixed slope; the q/k/v selector of the fused projection"),
    "falcon": (lambda: T.FalconConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=100),
               "FalconForCausalLM", IDS, "rotary q/k within-head units; multi-query: the fused projection "
               "views q, k and v with one head layout, so v's within-head units are tied to them"),
    "falcon-rw": (lambda: T.FalconConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=100,
                                         multi_query=False, alibi=True, parallel_attn=False, bias=True),
                  "FalconForCausalLM", IDS, "ALiBi gives every head its own fixed slope; the q/k/v selector"),
    "falcon-gqa": (lambda: T.FalconConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=100,
                                          new_decoder_architecture=True, num_kv_heads=2), "FalconForCausalLM", IDS,
                   "rotary q/k within-head units; the grouped view gives q, k and v one head layout, so v's "
                   "within-head units are tied to them"),
    "bert": (lambda: T.BertConfig(**DEC), "BertModel", IDS, None),
    "roberta": (lambda: T.RobertaConfig(**{**DEC, "max_position_embeddings": 40}), "RobertaModel", IDS, None),
    "distilbert": (lambda: T.DistilBertConfig(dim=64, n_layers=2, n_heads=4, hidden_dim=128, vocab_size=100,
                                              max_position_embeddings=32), "DistilBertModel", IDS, None),
    "t5-encoder": (lambda: T.T5Config(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, vocab_size=100),
                   "T5EncoderModel", IDS, None),
    "t5": (lambda: T.T5Config(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, vocab_size=100),
           "T5ForConditionalGeneration", {"input_ids": IDS, "decoder_input_ids": IDS[:, :5]}, None),
    "bart": (lambda: T.BartConfig(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                                  decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=100,
                                  max_position_embeddings=32), "BartForConditionalGeneration", IDS, None),
    "vit": (lambda: T.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                image_size=32, patch_size=8), "ViTModel", PIXELS, None),
    "clip-vision": (lambda: T.CLIPVisionConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                               intermediate_size=128, image_size=32, patch_size=8),
                    "CLIPVisionModel", PIXELS, None),
    "clip-text": (lambda: T.CLIPTextConfig(**DEC), "CLIPTextModel", IDS, None),
}


def excite(model, seed=0):
    """Noise on every parameter (norm weights start at one and biases at zero), so no two units are
    equal and a wrong permutation shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def built():
    return {}


def get(built, name):
    if name not in built:
        make_config, cls, x, _ = MODELS[name]
        torch.manual_seed(0)
        model = excite(getattr(T, cls)(make_config()))
        built[name] = (model, x, rbt.infer_spec(model, x, warn=False))
    return built[name]


def outputs(model, x):
    with torch.no_grad():
        out = model(**x) if isinstance(x, dict) else model(x)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("name", list(MODELS))
def test_coverage_per_kind_with_a_reason_for_every_fixed_unit(built, name):
    model, x, spec = get(built, name)
    cov = rbt.spec_coverage(model, x)
    kinds = {k: f"{p}/{h}" for k, (p, h) in cov.by_kind.items()}
    print(f"\n| {name} | {len(spec.groups)} | {cov.permuted}/{cov.hidden} ({cov.share:.0%}) | {kinds.get('units')} | "
          f"{kinds.get('heads')} | {kinds.get('within-head')} | {MODELS[name][3] or '-'} |")
    units = cov.by_kind["units"]
    assert cov.hidden > 0 and units[0] == units[1] > 0, cov
    assert "heads" in cov.by_kind and "within-head" in cov.by_kind, cov.by_kind
    if MODELS[name][3] is None:
        assert cov.share == 1.0, cov.unpermuted
    else:
        assert 0.8 < cov.share < 1.0 and cov.unpermuted, cov


@pytest.mark.parametrize("name", ["gpt_neox", "phi", "falcon", "falcon-gqa"])
def test_fused_and_partially_rotary_heads_move_all_they_can(built, name):
    # GPT-NeoX fuses q/k/v head by head, Phi and GPT-NeoX rotate part of each q/k head, Falcon
    # puts its q heads and one k and one v head in one projection: every head moves, and of the
    # within-head units only those the rotation holds stay.
    model, x, spec = get(built, name)
    cov = rbt.spec_coverage(model, x)
    heads, units = cov.by_kind["heads"], cov.by_kind["units"]
    assert heads[0] == heads[1] > 0 and units[0] == units[1] > 0, cov.by_kind
    c = model.config
    head = c.hidden_size // c.num_attention_heads
    if name.startswith("falcon"):
        assert cov.by_kind["within-head"][0] == 0  # all rotated, v tied to them by the view
        return
    # transformers 5 keeps the share in rope_parameters; 4.x in rotary_pct (GPT-NeoX) or
    # partial_rotary_factor (Phi).
    share = (getattr(c, "rope_parameters", None) or {}).get("partial_rotary_factor")
    share = share or getattr(c, "rotary_pct", None) or c.partial_rotary_factor
    rotary = int(head * share)
    assert 0 < rotary < head
    # Per layer, q's and k's rotated units (the within-head tally counts q, k and v apart).
    assert cov.hidden - cov.permuted == c.num_hidden_layers * 2 * rotary, cov


@pytest.mark.parametrize("name", list(MODELS))
def test_random_permutations_keep_outputs(built, name):
    model, x, spec = get(built, name)
    scale = float(outputs(model, x).abs().max())
    assert scale > 1e-2
    for seed in (0, 1):
        assert rbt.check_equivalence(model, spec, x, seed=seed) < 1e-4 * max(1.0, scale)


@pytest.mark.parametrize("name", list(MODELS))
def test_a_permuted_copy_is_aligned_back_exactly(built, name):
    model, x, spec = get(built, name)
    rng = np.random.default_rng(4)
    planted = {g: rng.permutation(n) for g, n in spec.validate(model.state_dict()).items()}
    b = rbt.permute_model(model, spec, planted)
    assert torch.allclose(outputs(b, x), outputs(model, x), atol=1e-4)
    aligned, _ = rbt.align(model, b, x)  # the spec inferred again, through align, from defaults
    for k, v in model.state_dict().items():
        assert torch.equal(aligned.state_dict()[k], v), k


def test_the_users_model_and_config_are_left_as_they_were(built):
    model, x, _ = get(built, "llama")
    assert model.config.use_cache is True
    b = excite(T.LlamaForCausalLM(T.LlamaConfig(**DEC, num_key_value_heads=2)), seed=1)
    before = {k: v.clone() for k, v in b.state_dict().items()}
    aligned, _ = rbt.align(model, b, x)
    assert model.config.use_cache is True and b.config.use_cache is True and aligned.config.use_cache is True
    assert all(torch.equal(before[k], v) for k, v in b.state_dict().items())
    with torch.no_grad():
        out = aligned(IDS)
    assert out.past_key_values is not None, "the aligned model still caches by default"
    assert torch.allclose(out.logits, outputs(b, x), atol=1e-4)


def test_merge_and_interpolation_curve_run_on_a_default_decoder(built):
    model, x, spec = get(built, "gpt2")
    b = excite(T.GPT2LMHeadModel(T.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=32)), seed=3)
    aligned, _ = rbt.align(model, b, x)
    mid = rbt.merge(model, aligned, 0.5)
    assert torch.isfinite(outputs(mid, x)).all()

    def loss(m):
        with torch.no_grad():
            return float(m(IDS, labels=IDS).loss)

    curve = rbt.interpolation_curve(model, aligned, loss, alphas=3)
    (values,) = curve.metrics.values()
    assert len(values) == 3 and all(np.isfinite(values))
    assert values[0] == pytest.approx(loss(model)) and values[-1] == pytest.approx(loss(b), rel=1e-4)


def test_a_model_without_hidden_units_warns_and_reports_no_coverage():
    net = torch.nn.Sequential(torch.nn.Linear(4, 2))
    with pytest.warns(UserWarning, match="found no hidden units in Sequential"):
        spec = rbt.infer_spec(net, torch.randn(3, 4))
    assert not spec.groups
    cov = rbt.spec_coverage(net, torch.randn(3, 4))
    assert (cov.permuted, cov.hidden, cov.share) == (0, 0, 0.0)


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert"])
def test_activation_matching_recovers_a_permuted_copy(built, name):
    # Token batches as they come: tensors of several lengths, or dicts with an attention mask.
    model, x, spec = get(built, name)
    rng = np.random.default_rng(5)
    b = rbt.permute_model(model, spec, {g: rng.permutation(n) for g, n in spec.validate(model.state_dict()).items()})
    gen = torch.Generator().manual_seed(6)
    data = [torch.randint(0, 100, (4, 8), generator=gen), torch.randint(0, 100, (3, 6), generator=gen)]
    data += [{"input_ids": d, "attention_mask": torch.ones_like(d)} for d in data]
    aligned, _ = rbt.align(model, b, x, method="activation", data=data)
    for k, v in model.state_dict().items():
        assert torch.equal(aligned.state_dict()[k], v), k


def test_ste_runs_on_a_default_decoder(built):
    model, x, spec = get(built, "llama")
    b = excite(T.LlamaForCausalLM(T.LlamaConfig(**DEC, num_key_value_heads=2)), seed=2)
    gen = torch.Generator().manual_seed(7)
    data = [(d, d) for d in (torch.randint(0, 100, (4, 8), generator=gen) for _ in range(3))]

    def lm_loss(out, y):
        return torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), y[:, 1:].flatten())

    aligned, res = rbt.align(model, b, x, method="ste", data=data, loss_fn=lm_loss)
    assert set(res.perms) == set(spec.groups)
    assert torch.allclose(outputs(aligned, x), outputs(b, x), atol=1e-4)


def test_an_encoder_decoder_without_decoder_inputs_says_what_to_pass():
    model = T.T5ForConditionalGeneration(MODELS["t5"][0]())
    with pytest.raises(ValueError, match="needs decoder inputs too: pass example_inputs=.*decoder_input_ids"):
        rbt.infer_spec(model, IDS)
