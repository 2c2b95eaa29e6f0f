"""`rebasin align` on checkpoint folders too large to load: time and peak RSS, a planted
permutation recovered exactly.

Model A is written as a sharded bfloat16 safetensors folder (config.json, index, shards of
``--shard`` GiB) tensor by tensor from a seeded generator, without ever building the model; model
B is A with a random permutation of every group of the spec (the spec the command traces, on the
meta device) applied, written the same way. Then ``rebasin align A B -o OUT`` runs in a child
process (wall time, and peak RSS from ``os.wait4``'s rusage of that child), and OUT is compared
with A tensor by tensor: aligning B back onto A must give A exactly.

Shapes: ``llama-7b`` (hidden 4096, MLP 11008, 32 layers, 32 heads, vocabulary 32000: 6.7B
parameters, 12.6 GiB per folder), ``llama-4096-4l`` (the same with 4 layers), ``small`` (hidden
256, 2 layers: seconds, checks the script).

Usage:
    python benches/bench_folders.py --shapes small
    python benches/bench_folders.py --shapes llama-7b --workdir /work/bench-7b --max-cost-memory 1
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
import zlib
from collections.abc import Mapping

SHAPES = {
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=8,
                  num_key_value_heads=2, vocab_size=1000),
    "llama-4096-4l": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=4, num_attention_heads=32,
                          num_key_value_heads=32, vocab_size=32000),
    "llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32000),
}


class _Random(Mapping):
    """Seeded random bfloat16 tensors of the given meta shapes, made when looked up."""

    def __init__(self, meta: dict, seed: int) -> None:
        self.meta, self.seed = meta, seed

    def __getitem__(self, name):
        import torch

        g = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{name}".encode()))
        m = self.meta[name]
        scale = 0.02 if m.dim() > 1 else 0.1
        t = torch.randn(m.shape, generator=g) * scale + (1.0 if m.dim() == 1 else 0.0)
        return t.to(m.dtype)

    def __contains__(self, name):
        return name in self.meta

    def __iter__(self):
        return iter(self.meta)

    def __len__(self):
        return len(self.meta)


def write_folders(shape: str, work: str, shard_gib: float) -> tuple[str, str, int]:
    """Folders A (random) and B (A permuted by a random permutation of every group); A's
    parameter count."""
    import numpy as np
    import torch
    import transformers

    import rebasin_rs.torch as rbt
    from rebasin_rs._cli_align import _Permuted
    from rebasin_rs._folder import INDEX, StoredState, _write_shard_streamed
    from rebasin_rs._hf import build_empty, stored_names, tie_groups

    config = transformers.LlamaConfig(**SHAPES[shape], max_position_embeddings=2048,
                                      architectures=["LlamaForCausalLM"])
    model = build_empty(config)
    meta = {k: torch.empty(v.shape, dtype=torch.bfloat16, device="meta") for k, v in model.state_dict().items()}
    a_dir, b_dir = os.path.join(work, "a"), os.path.join(work, "b")
    shards, size, total = [[]], 0, 0
    for name, m in meta.items():
        nbytes = m.numel() * 2
        if shards[-1] and size + nbytes > shard_gib * 2**30:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
        total += nbytes
    files = [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]

    def write(folder: str, state) -> None:
        os.makedirs(folder)
        config.save_pretrained(folder)
        for f, names in zip(files, shards):
            _write_shard_streamed(os.path.join(folder, f), names, state, {})
        index = {"metadata": {"total_size": total}, "weight_map": {n: f for f, ns in zip(files, shards) for n in ns}}
        with open(os.path.join(folder, INDEX), "w") as fh:
            json.dump(index, fh, indent=2, sort_keys=True)

    write(a_dir, _Random(meta, 0))
    spec = stored_names(rbt.infer_spec(model, torch.zeros(1, 8, dtype=torch.int64), warn=False), tie_groups(model), {})
    state_a = StoredState(a_dir)
    rng = np.random.default_rng(1)
    planted = {g: rng.permutation(n) for g, n in spec.validate(state_a.meta).items()}
    write(b_dir, _Permuted(spec, planted, state_a))
    return a_dir, b_dir, sum(m.numel() for m in meta.values())


def run_align(a: str, b: str, out: str, extra: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (GiB) and stderr of ``rebasin align a b -o out`` in a child."""
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "rebasin_rs", "align", a, b, "-o", out, *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    err = p.stderr.read() if p.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"rebasin align failed: {err.strip()[-2000:]}")
    return wall, usage.ru_maxrss / 2**20, err


def same_as(a: str, out: str) -> bool:
    """Whether every tensor of ``out`` equals A's (read one at a time)."""
    import torch

    from rebasin_rs._folder import StoredState

    sa, so = StoredState(a), StoredState(out)
    return list(sa) == list(so) and all(torch.equal(sa[k], so[k]) for k in sa)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["small"], choices=list(SHAPES))
    ap.add_argument("--workdir", help="where the folders go (default: a temporary folder); removed after")
    ap.add_argument("--shard", type=float, default=2.0, help="shard size in GiB (default 2)")
    ap.add_argument("--max-cost-memory", metavar="GIB", help="passed to rebasin align (default: no limit)")
    args = ap.parse_args()
    import torch

    print(f"Machine: {cpu_name()}, torch {torch.__version__}; bfloat16 folders, shards of "
          f"{args.shard} GiB" + (f"; --max-cost-memory {args.max_cost_memory}" if args.max_cost_memory else ""))
    print()
    print("| shape | parameters | one folder (GiB) | write A and B (s) | rebasin align (s) | peak RSS (GiB) | "
          "output == A |")
    print("|---|---|---|---|---|---|---|")
    for shape in args.shapes:
        work = tempfile.mkdtemp(prefix=f"rebasin-folders-{shape}-", dir=args.workdir)
        try:
            t = time.perf_counter()
            a, b, n = write_folders(shape, work, args.shard)
            wrote = time.perf_counter() - t
            extra = ["--quiet"] + (["--max-cost-memory", args.max_cost_memory] if args.max_cost_memory else [])
            wall, peak, _ = run_align(a, b, os.path.join(work, "out"), extra)
            ok = same_as(a, os.path.join(work, "out"))
            print(f"| {shape} | {n / 1e9:.2f}B | {n * 2 / 2**30:.2f} | {wrote:.0f} | {wall:.1f} | {peak:.2f} | "
                  f"{'yes' if ok else 'NO'} |", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
