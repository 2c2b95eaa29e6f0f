"""The paper's three alignment methods side by side on the demo's setting: two MLPs 40-512x3-10
trained on MNIST-1D from seeds 0 and 1; the train-loss barrier after naive merging, weight
matching, activation matching and the straight-through estimator; the share of an STE step spent
in weight matching.

    python benches/bench_methods.py            # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import rebasin_rs.torch as rbt
from rebasin_rs.demo import load_mnist1d, mlp, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=60, help="training epochs of each model")
    ap.add_argument("--ste-epochs", type=int, default=3)
    args = ap.parse_args()
    x, y, xt, yt = load_mnist1d()
    models = []
    for s in (0, 1):
        torch.manual_seed(s)
        models.append(train(mlp(args.width), x, y, epochs=args.epochs, seed=s))
    a, b = models

    def evaluate(m):
        with torch.no_grad():
            out = m(x)
        return {"loss": float(F.cross_entropy(out, y)), "acc": float((out.argmax(1) == y).float().mean())}

    full = [(x[k:k + 500], y[k:k + 500]) for k in range(0, len(x), 500)]
    batches = [(x[k:k + 128], y[k:k + 128]) for k in range(0, len(x), 128)]
    rows = [("naive", 0.0, b)]
    for method, kw in (("weight matching", dict(method="weight")),
                       ("activation matching", dict(method="activation", data=full)),
                       ("STE", dict(method="ste", data=batches, epochs=args.ste_epochs))):
        t = time.perf_counter()
        aligned, result = rbt.align(a, b, x[:1], progress=False, **kw)
        rows.append((method, time.perf_counter() - t, aligned))
        if method == "STE":
            tm = result.timings
    print(f"MLP 40-{args.width}x3-10 on MNIST-1D (4000 training sequences), 11 alphas")
    print(f"{'method':22s} {'time (s)':>9s} {'loss barrier':>13s} {'acc barrier':>12s} {'acc at 0.5':>11s}")
    for name, t, m in rows:
        c = rbt.interpolation_curve(a, m, evaluate, alphas=11, progress=False)
        print(f"{name:22s} {t:9.2f} {c.barriers['loss']:13.3f} {c.barriers['acc']:12.3f} {c.metrics['acc'][5]:11.1%}")
    print(f"STE: {int(tm['steps'])} steps, {tm['step'] / tm['steps'] * 1e3:.1f} ms per step, of which weight "
          f"matching {tm['matching'] / tm['steps'] * 1e3:.1f} ms ({tm['matching'] / tm['step']:.0%})")


if __name__ == "__main__":
    main()
