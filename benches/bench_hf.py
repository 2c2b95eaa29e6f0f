"""Aligning Hugging Face checkpoint folders with the `rebasin` command: time and peak memory.

Two random models of one shape (seeds 0 and 1) are written as sharded safetensors folders in their
stored dtype (as ``save_pretrained`` writes them), then ``rebasin align A B -o OUT`` runs on the
folders in a child process; its wall time and peak RSS (``os.wait4``'s rusage of that child) are
reported, and the written folder is checked: its shard names and index are A's, and the aligned
model computes B's logits on random tokens.

Shapes: ``pythia-410m`` (GPT-NeoX: hidden 1024, 24 layers, 16 heads, MLP 4096, vocabulary 50304)
and ``llama-1b`` (hidden 2048, MLP 5632, 16 layers, 32 query heads on 4 key/value heads,
vocabulary 32000, as TinyLlama-1.1B); ``small`` (hidden 256, 4 layers) checks the script itself.

Usage:
    python benches/bench_hf.py                      # pythia-410m and llama-1b, bfloat16
    python benches/bench_hf.py --models small       # seconds
    python benches/bench_hf.py --models llama-1b --dtype float32 --workdir /tmp/hf-bench
    python benches/bench_hf.py --models llama-1b --max-cost-memory 0.25   # costs kept within 0.25 GiB
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from _machine import cpu_name

SHAPES = {
    "small": ("LlamaForCausalLM", "LlamaConfig", dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                                      num_attention_heads=8, num_key_value_heads=2, vocab_size=1000)),
    "pythia-410m": ("GPTNeoXForCausalLM", "GPTNeoXConfig",
                    dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                         vocab_size=50304, max_position_embeddings=2048, rotary_pct=0.25)),
    "llama-1b": ("LlamaForCausalLM", "LlamaConfig",
                 dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=32,
                      num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)),
}


def write_model(shape: str, seed: int, dtype: str, folder: str, shard: str) -> int:
    """A random model of ``shape`` saved to ``folder`` (sharded at ``shard``); its parameter count."""
    import torch
    import transformers

    cls_name, cfg_name, kwargs = SHAPES[shape]
    config = getattr(transformers, cfg_name)(**kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)._from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(folder, max_shard_size=shard)
    return sum(p.numel() for p in model.parameters())


def count_params(folder: str) -> int:
    """Tensor elements stored in ``folder``'s safetensors files (read from their headers)."""
    import math

    from safetensors import safe_open

    n = 0
    for f in os.listdir(folder):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(folder, f), "pt") as st:
                n += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
    return n


def run_align(a: str, b: str, out: str, extra: list[str] = ()) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (GiB) and stderr of ``rebasin align a b -o out [extra]`` in a child."""
    t = time.perf_counter()
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    p = subprocess.Popen([sys.executable, "-m", "rebasin_rs", "align", a, b, "-o", out, *extra], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read() if p.stderr else ""
    if p.returncode != 0:
        raise SystemExit(f"rebasin align failed ({p.returncode}): {err.strip()[-2000:]}")
    return wall, usage.ru_maxrss / 2**20, err  # ru_maxrss is in KiB on Linux


def check_output(a: str, b: str, out: str) -> tuple[float, float]:
    """Largest |logit difference| between the aligned model and B (both run in float32) on random
    tokens, and B's largest |logit|, after checking that the output folder has A's shard files and
    index."""
    import torch
    import transformers

    weights = sorted(f for f in os.listdir(a) if f.endswith(".safetensors"))
    assert sorted(f for f in os.listdir(out) if f.endswith(".safetensors")) == weights, "shard files differ"
    index = "model.safetensors.index.json"
    if os.path.exists(os.path.join(a, index)):
        with open(os.path.join(a, index)) as fa, open(os.path.join(out, index)) as fo:
            assert json.load(fa)["weight_map"] == json.load(fo)["weight_map"], "index differs"
    ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(0))
    diffs = []
    with torch.no_grad():
        logits = []
        for folder in (b, out):
            # In float32: a permutation is exact, so the two must agree to float32 rounding (in
            # bfloat16 the reordered sums alone differ by ~1e-2).
            model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True,
                                                                      dtype=torch.float32).eval()
            logits.append(model(ids).logits.float())
            del model
        diffs.append(float((logits[0] - logits[1]).abs().max()))
    return max(diffs), float(logits[0].abs().max())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["pythia-410m", "llama-1b"], choices=list(SHAPES))
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--shard", help="max_shard_size of the written folders (default 500MB; 2MB for small)")
    ap.add_argument("--workdir", help="where the folders go (default: a temporary folder, removed after)")
    ap.add_argument("--max-cost-memory", metavar="GIB", help="passed to rebasin align (default: no limit)")
    args = ap.parse_args(argv)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    work = args.workdir or tempfile.mkdtemp(prefix="rebasin-bench-hf-")
    os.makedirs(work, exist_ok=True)
    import torch

    print(f"Machine: {cpu_name()}; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; dtype {args.dtype}"
          + (f"; --max-cost-memory {args.max_cost_memory}" if args.max_cost_memory else "") + ".")
    print()
    print("| model | parameters | shards | write both (s) | rebasin align (s) | peak RSS (GiB) | "
          "max logit change vs B / max logit |")
    print("|---|---|---|---|---|---|---|")
    try:
        for shape in args.models:
            base = os.path.join(work, f"{shape}-{args.dtype}")
            a, b, out = (os.path.join(base, x) for x in ("a", "b", "out"))
            t = time.perf_counter()
            for seed, folder in ((0, a), (1, b)):
                if not os.path.exists(os.path.join(folder, "config.json")):
                    write_model(shape, seed, args.dtype, folder, args.shard or ("2MB" if shape == "small" else "500MB"))
            n = count_params(a)
            written = time.perf_counter() - t
            shutil.rmtree(out, ignore_errors=True)
            extra = ["--max-cost-memory", args.max_cost_memory] if args.max_cost_memory else []
            wall, rss, _ = run_align(a, b, out, extra)
            diff, scale = check_output(a, b, out)
            shards = len([f for f in os.listdir(a) if f.endswith(".safetensors")])
            print(f"| {shape} | {n / 1e6:.0f}M | {shards} | {written:.1f} | {wall:.1f} | {rss:.2f} | {diff:.2e} / {scale:.2f} |",
                  flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
