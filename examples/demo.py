"""The package's main job, as `rebasin demo` runs it: two MLPs trained from different seeds on
MNIST-1D (generated locally), interpolated naively and after weight matching; prints both
barriers and draws the curves.

    python examples/demo.py [--out docs/gallery/demo.png]

Run time on a 2-core AMD EPYC (torch 2.15 CPU): about 30 s.
"""

from __future__ import annotations

import argparse
import pathlib

from rebasin_rs.demo import run_demo

HERE = pathlib.Path(__file__).resolve().parent

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=pathlib.Path, default=HERE.parent / "docs" / "gallery" / "demo.png")
    ap.add_argument("--epochs", type=int, default=60)
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    run_demo(str(args.out), epochs=args.epochs)
