"""Billion-parameter alignment: peak memory added by `rbt.align` against one model's bytes, and time.

Two random Llama-shaped models (seeds 0 and 1) are built in a child process directly in their dtype
(bfloat16 by default, as checkpoints are stored), on the CPU or on a CUDA device; then
``rbt.align(a, b, ids)`` runs. The child reports the models' bytes, its resident memory before the
call, the peak during it (``VmHWM`` of ``/proc/self/status``, reset just before the call), the
wall time and the objective. Each shape runs in its own process so that one's peak does not hide
another's.

Shapes: ``llama-4l`` (hidden 2048, MLP 5632, 4 layers, 32 query heads on 4 key/value heads,
vocabulary 32000: issue 14's 0.58 GiB model), ``llama-4096-4l`` (hidden 4096, MLP 11008, 4
layers, 32 heads: 0.97B parameters), ``small`` (hidden 256) checks the script itself.

Usage:
    python benches/bench_large.py                              # llama-4l, bfloat16, CPU
    python benches/bench_large.py --shapes small llama-4l --dtype float16
    python benches/bench_large.py --device cuda --shapes llama-4l llama-4096-4l
    python benches/bench_large.py --inplace                    # the matching's own memory
    python benches/bench_large.py --inplace --max-cost-memory 0.1   # costs kept within 0.1 GiB
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

SHAPES = {
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=8,
                  num_key_value_heads=2, vocab_size=1000),
    "llama-4l": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=4, num_attention_heads=32,
                     num_key_value_heads=4, vocab_size=32000),
    "llama-4096-4l": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=4, num_attention_heads=32,
                          num_key_value_heads=32, vocab_size=32000),
}


def _status(key: str) -> int:
    """A ``/proc/self/status`` entry in bytes (VmRSS: now; VmHWM: peak since the last reset)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def child(shape: str, dtype: str, device: str, threads: int | None, inplace: bool, cap: int | None) -> dict:
    import time

    import torch
    import transformers

    import rebasin_rs.torch as rbt

    if threads:
        torch.set_num_threads(threads)
    config = transformers.LlamaConfig(**SHAPES[shape], max_position_embeddings=2048)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(transformers.LlamaForCausalLM._from_config(config, dtype=getattr(torch, dtype)).to(device).eval())
    a, b = models
    nbytes = sum(p.numel() * p.element_size() for p in a.parameters())
    ids = torch.randint(0, config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(2)).to(device)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = _status("VmRSS")
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    aligned, res = rbt.align(a, b, ids, inplace=inplace, max_cost_memory=cap)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    out = dict(shape=shape, dtype=dtype, device=device, params=sum(p.numel() for p in a.parameters()),
               model_bytes=nbytes, rss_before=before, peak=_status("VmHWM"), seconds=wall,
               objective=res.objective, sweeps=res.sweeps)
    if device.startswith("cuda"):
        out["cuda_peak"] = torch.cuda.max_memory_allocated()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["llama-4l"], choices=list(SHAPES))
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in the child (default: torch's)")
    ap.add_argument("--inplace", action="store_true",
                    help="align(inplace=True): B permuted in place, so the peak is the matching's own memory "
                         "(by default align returns a permuted copy of B, one model more)")
    ap.add_argument("--max-cost-memory", type=float, default=None, metavar="GIB",
                    help="align(max_cost_memory=...): GiB of cost matrices the engine keeps (default: no limit)")
    ap.add_argument("--child", nargs=6, metavar=("SHAPE", "DTYPE", "DEVICE", "THREADS", "INPLACE", "CAP"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        shape, dtype, device, threads, inplace, cap = args.child
        cap = None if cap == "-" else int(cap)
        print("RESULT " + json.dumps(child(shape, dtype, device, int(threads) or None, inplace == "1", cap)),
              flush=True)
        return
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; device {args.device}; "
          f"align(inplace={args.inplace}, max_cost_memory={args.max_cost_memory} GiB)")
    print("| shape | parameters | dtype | one model (GiB) | RSS added by align (GiB) | x one model | time (s) |")
    print("|---|---|---|---|---|---|---|")
    for shape in args.shapes:
        cmd = [sys.executable, __file__, "--child", shape, args.dtype, args.device, str(args.threads or 0),
               str(int(args.inplace)),
               "-" if args.max_cost_memory is None else str(int(args.max_cost_memory * (1 << 30)))]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            print(f"| {shape} | failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]} |")
            continue
        r = json.loads(line[7:])
        gib = 1 << 30
        added = r["peak"] - r["rss_before"]
        print(f"| {shape} | {r['params'] / 1e9:.2f}B | {r['dtype']} | {r['model_bytes'] / gib:.2f} | "
              f"{added / gib:.2f} | {added / r['model_bytes']:.2f} | {r['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
