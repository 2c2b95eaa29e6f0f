"""The ``rebasin`` command on Hugging Face checkpoint folders (issue 13), run in subprocesses.

Tiny random Llama (grouped-query attention, rotary embeddings) and GPT-2 (LM head tied to the
embedding, stored once) models are saved with ``save_pretrained``, sharded and not, in float32
and bfloat16. The written folders must have A's shard layout and files, B's dtypes, and compute
B's function; bad folders give one line and leave nothing behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from test_cli import HERE, one_line_error  # noqa: E402

import rebasin_rs as rb  # noqa: E402
import rebasin_rs.torch as rbt  # noqa: E402

ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
           PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
INDEX = "model.safetensors.index.json"


def rebasin(*args, cwd, check_rc=0, env=None):
    p = subprocess.run([sys.executable, "-m", "rebasin_rs", *map(str, args)], cwd=cwd, env=env or ENV,
                       capture_output=True, text=True, timeout=600)
    if check_rc is not None:
        assert p.returncode == check_rc, p.stderr
    return p


def one_line_errors(cases, cwd):
    """Runs each ``(args, pattern)``, two at a time, and checks that it fails with one line
    matching ``pattern``."""
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda c: rebasin(*c[0], cwd=cwd, check_rc=None), cases))
    for (args, pattern), p in zip(cases, runs):
        try:
            one_line_error(p, pattern)
        except AssertionError as e:
            raise AssertionError(f"rebasin {' '.join(map(str, args))}: {e}") from None


def llama(seed: int):
    cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=128, vocab_size=100, max_position_embeddings=32)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


def gpt2(seed: int):
    cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=32)
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(cfg).eval()


def gpt_neox(seed: int):
    # transformers 5 stores its LM head as ``embed_out`` and names it ``lm_head`` in the model.
    cfg = transformers.GPTNeoXConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, vocab_size=100, max_position_embeddings=32)
    torch.manual_seed(seed)
    return transformers.GPTNeoXForCausalLM(cfg).eval()


MAKERS = {"llama": llama, "gpt2": gpt2, "gpt_neox": gpt_neox}


def save(model, folder, *, shard=True, dtype=torch.float32):
    """``model`` saved by save_pretrained, in ``dtype``, sharded at 50 KB (several shards) or not."""
    model = model.to(dtype)
    model.save_pretrained(str(folder), max_shard_size="50KB" if shard else "1GB")
    shards = [f for f in os.listdir(folder) if f.endswith(".safetensors")]
    assert (len(shards) > 1) == shard and os.path.exists(folder / INDEX) == shard, shards
    return folder


def tensors(folder):
    """Every tensor stored in a folder, by name, and the file it is in."""
    out, where = {}, {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            with safe_open(str(folder / f), "pt") as st:
                for k in st.keys():
                    out[k], where[k] = st.get_tensor(k), f
    return out, where


def logits(folder, ids):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()
    with torch.no_grad():
        return model(ids).logits.float()


def distance(x, y):
    return sum(float((x[k].float() - y[k].float()).pow(2).sum()) for k in x)


def leftovers(d):
    return [f for f in os.listdir(d) if f.startswith(".rebasin-")]


def permuted_copy(model, seed=3):
    """``model`` with every permutation of its inferred spec drawn at random: the same function."""
    ids = torch.randint(0, 100, (1, 8))
    spec = rbt.infer_spec(model, ids, warn=False)
    rng = np.random.default_rng(seed)
    perms = {g: rng.permutation(n) for g, n in spec.validate(model.state_dict()).items()}
    return rbt.permute_model(model, spec, perms)


IDS = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name,shard,dtype", [("llama", True, torch.float32), ("gpt2", True, torch.float32),
                                              ("llama", False, torch.bfloat16), ("gpt_neox", True, torch.bfloat16)])
def test_align_writes_a_folder_like_a_with_b_s_function(tmp_path, name, shard, dtype):
    a = save(MAKERS[name](0), tmp_path / "a", shard=shard, dtype=dtype)
    b = save(MAKERS[name](1), tmp_path / "b", shard=shard, dtype=dtype)
    p = rebasin("align", "a", "b", "-o", "out", cwd=tmp_path)
    assert "wrote out" in p.stderr
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == sorted(os.listdir(a))
    assert (out / "config.json").read_bytes() == (a / "config.json").read_bytes()
    assert (out / "generation_config.json").read_bytes() == (a / "generation_config.json").read_bytes()
    got, where = tensors(out)
    ta, where_a = tensors(a)
    tb, _ = tensors(b)
    assert where == where_a, "a tensor moved to another shard"
    if shard:
        index_a, index = (json.loads((f / INDEX).read_text()) for f in (a, out))
        assert index["weight_map"] == index_a["weight_map"]
        assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in got.values())
    for k, t in got.items():
        assert t.dtype == tb[k].dtype == dtype, k
    assert distance(ta, got) < distance(ta, tb), "aligned B is not closer to A than B"
    atol = 1e-2 if dtype == torch.bfloat16 else 1e-4
    assert torch.allclose(logits(out, IDS), logits(b, IDS), atol=atol, rtol=0)
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("name", ["llama", "gpt2", "gpt_neox"])
def test_align_recovers_a_permuted_copy_and_merge_gives_it_back(tmp_path, name):
    model = MAKERS[name](0)
    save(model, tmp_path / "a")
    save(permuted_copy(model), tmp_path / "b")
    ta, _ = tensors(tmp_path / "a")
    tb, _ = tensors(tmp_path / "b")
    assert any(not torch.equal(ta[k], tb[k]) for k in ta), "the copy is not permuted"
    rebasin("align", "a", "b", "-o", "out", "-q", cwd=tmp_path)
    rebasin("merge", "a", "b", "--align", "--alpha", "0.5", "-o", "merged", "-q", cwd=tmp_path)
    for folder in ("out", "merged"):
        got, _ = tensors(tmp_path / folder)
        assert set(got) == set(ta)
        for k, v in ta.items():
            assert torch.equal(got[k], v), (folder, k)


def test_plain_merge_file_outputs_and_file_inputs(tmp_path):
    a, b = llama(0), llama(1)
    save(a, tmp_path / "a", dtype=torch.bfloat16)
    save(b, tmp_path / "b", dtype=torch.bfloat16)
    rebasin("merge", "a", "b", "--alpha", "0.25", "-o", "m", "-q", cwd=tmp_path)
    ta, tb = tensors(tmp_path / "a")[0], tensors(tmp_path / "b")[0]
    got, _ = tensors(tmp_path / "m")
    for k in ta:
        assert got[k].dtype == torch.bfloat16
        assert torch.allclose(got[k].float(), 0.75 * ta[k].float() + 0.25 * tb[k].float(), atol=1e-2), k
    # A folder to one file, and two files to a folder of one model.safetensors.
    rebasin("merge", "a", "b", "-o", "m.safetensors", "-q", cwd=tmp_path)
    save_file(ta, str(tmp_path / "a.safetensors"))
    save_file(tb, str(tmp_path / "b.safetensors"))
    rebasin("merge", "a.safetensors", "b.safetensors", "-o", "from_files", "-q", cwd=tmp_path)
    assert os.listdir(tmp_path / "from_files") == ["model.safetensors"]
    one_file = tensors(tmp_path / "from_files")[0]
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as st:
        for k in ta:
            assert torch.equal(st.get_tensor(k), one_file[k]), k


@pytest.mark.parametrize("name", ["gpt2", "gpt_neox"])
def test_spec_of_a_folder_aligns_its_checkpoints_as_state_dicts(tmp_path, name):
    # GPT-2 ties its LM head to the embedding: the folder stores the embedding, and the spec must
    # name that (the tracer names the head). GPT-NeoX's folder names its head ``embed_out``.
    model = MAKERS[name](0)
    save(model, tmp_path / "a")
    save(permuted_copy(model), tmp_path / "b")
    p = rebasin("spec", "--model", "hf:a", "-o", "spec.json", cwd=tmp_path)
    assert "wrote spec.json" in p.stderr
    spec = json.loads((tmp_path / "spec.json").read_text())
    names = {m for ms in spec["groups"].values() for m, _ in ms}
    real = set(rb.PermutationSpec.load(tmp_path / "spec.json").real_params())
    assert real <= set(tensors(tmp_path / "a")[0]), real - set(tensors(tmp_path / "a")[0])
    if name == "gpt2":
        assert "transformer.wte.weight" in names and "lm_head.weight" not in names
    rebasin("align", "a", "b", "--model", "spec.json", "-o", "out", "-q", cwd=tmp_path)
    ta, got = tensors(tmp_path / "a")[0], tensors(tmp_path / "out")[0]
    for k, v in ta.items():
        assert torch.equal(got[k], v), k


def _break(folder, how):
    """Damages a sharded folder in one way."""
    index = json.loads((folder / INDEX).read_text())
    wm = index["weight_map"]
    first = sorted(set(wm.values()))[0]
    if how == "missing shard":
        os.remove(folder / first)
    elif how == "tensor the shard lacks":
        wm["model.extra.weight"] = first
        (folder / INDEX).write_text(json.dumps(index))
    elif how == "tensor the index lacks":
        k = next(k for k, s in wm.items() if s == first)
        del wm[k]
        (folder / INDEX).write_text(json.dumps(index))
    elif how == "truncated shard":
        data = (folder / first).read_bytes()
        (folder / first).write_bytes(data[:len(data) // 2])


def test_bad_folders_give_one_line_errors_and_leave_nothing(tmp_path):
    d = tmp_path
    save(llama(0), d / "a")
    save(llama(1), d / "b")
    for how in ("missing shard", "tensor the shard lacks", "tensor the index lacks", "truncated shard"):
        save(llama(1), d / how.replace(" ", "_"))
        _break(d / how.replace(" ", "_"), how)
    os.mkdir(d / "no_weights")
    (d / "no_weights" / "config.json").write_bytes((d / "a" / "config.json").read_bytes())
    save(llama(1), d / "no_config")
    os.remove(d / "no_config" / "config.json")
    # One more head of half the width: the same hidden size, another architecture.
    cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                                   intermediate_size=128, vocab_size=100, max_position_embeddings=32)
    save(transformers.LlamaForCausalLM(cfg), d / "heads8")
    # A's config over the weights of a wider MLP (the config says nothing: the tensors do).
    wide = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
        vocab_size=100, max_position_embeddings=32))
    save(wide, d / "wide")
    (d / "wide" / "config.json").write_bytes((d / "a" / "config.json").read_bytes())
    os.mkdir(d / "taken")
    (d / "taken" / "keep.txt").write_text("mine")
    cases = [
        (("align", "no_config", "b", "--model", "hf:no_config", "-o", "o1"), r"'no_config' has no config.json"),
        (("align", "a", "no_weights", "-o", "o2"),
         r"checkpoint B 'no_weights' is a folder without weights: it holds neither model.safetensors nor"),
        (("align", "a", "missing_shard", "-o", "o3"), r"puts '.*' in shard 'model-00001-of-\d+.safetensors', "
                                                      r"which is missing"),
        (("align", "a", "tensor_the_shard_lacks", "-o", "o4"), r"puts 'model.extra.weight' in shard .*which lacks it"),
        (("merge", "a", "tensor_the_index_lacks", "-o", "o5"), r"shard '.*' holds '.*', which .* does not put there"),
        (("align", "a", "truncated_shard", "-o", "o6"), r"could not be read as a safetensors file"),
        (("align", "a", "heads8", "-o", "o7"),
         r"the config.json of A and B differ in '(num_attention_heads' \(4 in A, 8|head_dim' \(16 in A, 8) in B\)"),
        (("align", "a", "wide", "-o", "o8"), r"checkpoint B does not fit --model hf:a: .*another shape"),
        (("merge", "a", "b", "-o", "taken"), r"output 'taken' is a directory that exists"),
        (("spec", "--model", "hf:no_config", "-o", "s.json"), r"'no_config' has no config.json"),
        (("align", "a", "b", "--model-kwargs", '{"num_heads_typo": 2}', "-o", "o9"),
         r"--model-kwargs: 'num_heads_typo' is not an entry of config.json"),
    ]
    one_line_errors(cases, d)
    names = set(os.listdir(d))
    assert not {f"o{k}" for k in range(1, 10)} & names and "s.json" not in names
    assert os.listdir(d / "taken") == ["keep.txt"]
    assert not leftovers(d)


def test_weight_only_folders_of_other_shapes_do_not_merge(tmp_path):
    a, wide = llama(0), transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
        vocab_size=100, max_position_embeddings=32))
    for model, folder in ((a, "a"), (wide, "b")):
        save(model, tmp_path / folder)
        os.remove(tmp_path / folder / "config.json")  # no architecture: merged as state dicts
    p = rebasin("merge", "a", "b", "-o", "m", cwd=tmp_path, check_rc=None)
    one_line_error(p, r"cannot merge A and B: parameter 'model.layers.0.mlp.down_proj.weight' has shape \(64, 128\) "
                      r"in params_a but \(64, 96\) in params_b")
    assert not (tmp_path / "m").exists() and not leftovers(tmp_path)


def test_missing_transformers_is_one_line(tmp_path):
    save(llama(0), tmp_path / "a")
    save(llama(1), tmp_path / "b")
    fake = tmp_path / "fake"
    os.makedirs(fake / "transformers")
    (fake / "transformers" / "__init__.py").write_text("raise ImportError('No module named transformers')\n")
    env = dict(ENV, PYTHONPATH=str(fake) + os.pathsep + ENV["PYTHONPATH"])
    p = rebasin("align", "a", "b", "-o", "out", cwd=tmp_path, check_rc=None, env=env)
    one_line_error(p, r"needs transformers: pip install transformers")
    assert not (tmp_path / "out").exists()


def test_barrier_on_a_language_model_says_why_it_does_not_fit(tmp_path):
    save(llama(0), tmp_path / "a")
    save(llama(1), tmp_path / "b")
    save_file({"x": torch.randint(0, 100, (6, 8)), "y": torch.randint(0, 3, (6,))}, str(tmp_path / "d.safetensors"))
    p = rebasin("barrier", "a", "b", "--data", "d.safetensors", cwd=tmp_path, check_rc=None)
    one_line_error(p, r"gives shape \(6, 8, 100\); barrier needs logits of shape \(examples, classes\).*one row per "
                      r"token")


def test_barrier_runs_a_sequence_classifier_folder(tmp_path):
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                                  vocab_size=100, max_position_embeddings=32, num_labels=3)
    for s in (0, 1):
        torch.manual_seed(s)
        save(transformers.BertForSequenceClassification(cfg).eval(), tmp_path / f"m{s}", shard=False)
    save_file({"x": torch.randint(0, 100, (6, 8)), "y": torch.randint(0, 3, (6,))}, str(tmp_path / "d.safetensors"))
    p = rebasin("barrier", "m0", "m1", "--data", "d.safetensors", "--align", "--alphas", "3", "-q", cwd=tmp_path)
    assert "loss barrier" in p.stdout and "accuracy barrier" in p.stdout, p.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_folder_write_leaves_no_temporary_folder(tmp_path, sig):
    save(llama(0), tmp_path / "a")
    save(llama(1), tmp_path / "b")
    # The real command, with fsync slowed down so that the signal lands while the temporary
    # folder exists.
    # Ctrl-C as in a terminal: a job started in the background of a non-interactive shell (as CI
    # may start the suite) inherits SIGINT ignored, and Python then raises no KeyboardInterrupt.
    code = ("import os, signal, sys, time\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "def slow(fd):\n"
            "    print('writing', flush=True)\n"
            "    time.sleep(60)\n"
            "os.fsync = slow\n"
            "from rebasin_rs.cli import main\n"
            "sys.exit(main(['merge', 'a', 'b', '-o', 'out']))\n")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "writing\n", p.stderr.read()
        assert leftovers(tmp_path), "no temporary folder while writing"
        t = time.monotonic()
        p.send_signal(sig)
        rc = p.wait(timeout=30)
    finally:
        p.kill()
    assert time.monotonic() - t < 20, "the signal did not interrupt the write"
    err = p.stderr.read()
    assert "Traceback" not in err, err
    assert rc == (-signal.SIGTERM if sig == signal.SIGTERM else 130), (rc, err)
    assert not leftovers(tmp_path), "temporary folder left behind"
    assert not (tmp_path / "out").exists()


def _align_in_process(tmp_path, out, monkeypatch, *, stream: bool):
    """``rebasin align a b -o out`` in this process: streamed (loading a folder whole refused) or
    through the loading path (streaming refused)."""
    import rebasin_rs.cli as stream_mod
    import rebasin_rs._folder as folder_mod
    from rebasin_rs import cli

    with monkeypatch.context() as m:
        if stream:
            def no_load(*a, **k):
                raise AssertionError("a folder was loaded whole")
            m.setattr(folder_mod, "load_folder", no_load)
        else:
            m.setattr(stream_mod, "align_folders", lambda args, say: False)
        m.chdir(tmp_path)
        assert cli.main(["align", "a", "b", "-o", out, "-q"]) == 0


@pytest.mark.parametrize("name,dtype", [("llama", torch.bfloat16), ("gpt2", torch.float32),
                                        ("gpt_neox", torch.bfloat16)])
def test_align_of_folders_streams_tensor_by_tensor_with_the_loaded_result(tmp_path, monkeypatch, name, dtype):
    # Issue 14: two folders are read one tensor at a time (never loaded whole: load_folder is
    # refused here), matched by torch products, and written tensor by tensor; the result is the
    # loading path's, file for file.
    save(MAKERS[name](0), tmp_path / "a", dtype=dtype)
    save(MAKERS[name](1), tmp_path / "b", dtype=dtype)
    from rebasin_rs._hf import build_empty

    try:
        rbt.infer_spec(build_empty(MAKERS[name](0).config), torch.zeros(1, 8, dtype=torch.int64), warn=False)
    except Exception as e:  # noqa: BLE001 - older transformers (4.45's rotary autocast)
        pytest.skip(f"transformers {transformers.__version__} does not run {name} on the meta device: "
                    f"{type(e).__name__} (the command loads the weights then)")
    _align_in_process(tmp_path, "streamed", monkeypatch, stream=True)
    _align_in_process(tmp_path, "loaded", monkeypatch, stream=False)
    got, where = tensors(tmp_path / "streamed")
    want, want_where = tensors(tmp_path / "loaded")
    assert where == want_where and set(got) == set(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
    with open(tmp_path / "streamed" / INDEX) as f, open(tmp_path / "loaded" / INDEX) as g:
        assert json.load(f) == json.load(g)
    assert sorted(os.listdir(tmp_path / "streamed")) == sorted(os.listdir(tmp_path / "loaded"))
    with safe_open(str(tmp_path / "streamed" / where[next(iter(where))]), "pt") as st:
        assert st.metadata()["format"] == "pt"
    assert not leftovers(tmp_path)


def test_a_model_that_does_not_trace_on_meta_falls_back_to_loading(tmp_path, monkeypatch, capsys):
    save(MAKERS["llama"](0), tmp_path / "a")
    save(permuted_copy(MAKERS["llama"](0)), tmp_path / "b")
    real = rbt.infer_spec

    def no_meta(model, *args, **kwargs):
        if any(p.is_meta for p in model.parameters()):
            raise RuntimeError("cannot run on meta tensors")
        return real(model, *args, **kwargs)

    monkeypatch.setattr(rbt, "infer_spec", no_meta)
    from rebasin_rs import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["align", "a", "b", "-o", "out"]) == 0
    assert "does not trace on the meta device" in capsys.readouterr().err
    ta, _ = tensors(tmp_path / "a")
    got, _ = tensors(tmp_path / "out")
    for k, v in ta.items():
        assert torch.equal(got[k], v), k


def test_a_streamed_shard_is_a_safetensors_file_or_nothing(tmp_path):
    from rebasin_rs._folder import SINGLE, StoredState, save_folder

    t = {"w": torch.randn(3, 5).to(torch.bfloat16), "b": torch.arange(4, dtype=torch.int64),
         "h": torch.randn(7, dtype=torch.float16)}
    (tmp_path / "src").mkdir()
    save_file(t, str(tmp_path / "src" / SINGLE), metadata={"format": "pt", "note": "kept"})
    state = StoredState(tmp_path / "src")
    assert {k: (m.shape, m.dtype) for k, m in state.meta.items()} == {k: (v.shape, v.dtype) for k, v in t.items()}
    save_folder(state, tmp_path / "copy", like=tmp_path / "src")
    with safe_open(str(tmp_path / "copy" / SINGLE), "pt") as st:
        assert st.metadata() == {"format": "pt", "note": "kept"}
        for k, v in t.items():
            assert torch.equal(st.get_tensor(k), v), k

    class Wrong(dict):
        meta = state.meta

    bad = Wrong({k: state[k] for k in state}, w=torch.zeros(3, 5))  # float32, not bfloat16
    with pytest.raises(rb.RebasinError, match="'w' is torch.float32 \\(3, 5\\), not the torch.bfloat16"):
        save_folder(bad, tmp_path / "bad", like=tmp_path / "src")
    assert not (tmp_path / "bad").exists() and not leftovers(tmp_path)


def test_align_device_is_checked_and_cpu_is_the_default(tmp_path):
    save(MAKERS["llama"](0), tmp_path / "a")
    save(permuted_copy(MAKERS["llama"](0)), tmp_path / "b")
    cases = [(("align", "a", "b", "-o", "x", "--device", "foo"), r"--device 'foo' is not a torch device"),
             (("align", "a", "b", "-o", "x", "--device", "meta"), r"--device meta: only cpu and cuda")]
    if not torch.cuda.is_available():
        cases.append((("align", "a", "b", "-o", "x", "--device", "cuda"), r"torch sees no CUDA device here"))
    one_line_errors(cases, tmp_path)
    assert not (tmp_path / "x").exists()
    rebasin("align", "a", "b", "-o", "out", "--device", "cpu", "-q", cwd=tmp_path)
    ta, _ = tensors(tmp_path / "a")
    got, _ = tensors(tmp_path / "out")
    assert all(torch.equal(got[k], v) for k, v in ta.items())
