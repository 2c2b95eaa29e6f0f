"""Coverage of inferred specs on timm's zoo, per family: the share of hidden units permuted, by
kind (units, heads, within-head, groups, within-group), why the others stay fixed, the relative
output change under random permutations (constant parameters drawn at random first), and whether
a randomly permuted copy is aligned back exactly.

Small configs, random inits, no downloads. Prints a markdown table:

    python benches/timm_coverage.py [family ...]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

import rebasin_rs.torch as rbt
from _machine import cpu_name

# family -> (timm name, config, input size)
FAMILIES = {
    "ResNet": ("resnet18", {}, 32),
    "ResNeXt": ("resnext26ts", {}, 64),
    "RegNetX": ("regnetx_002", {}, 32),
    "RegNetY (SE)": ("regnety_002", {}, 32),
    "ViT": ("vit_tiny_patch16_224", {"img_size": 32, "depth": 2}, 32),
    "DeiT (distilled)": ("deit_tiny_distilled_patch16_224", {"img_size": 32, "depth": 2}, 32),
    "Swin": ("swin_tiny_patch4_window7_224",
             {"img_size": 56, "depths": (2, 2), "num_heads": (2, 4), "embed_dim": 32}, 56),
    "ConvNeXt": ("convnext_atto", {}, 32),
    "EfficientNet": ("efficientnet_b0", {}, 32),
    "MobileNetV3": ("mobilenetv3_small_050", {}, 32),
    "PVT-v2": ("pvt_v2_b0", {}, 64),
    "EdgeNeXt": ("edgenext_xx_small", {}, 64),
    "MobileViT": ("mobilevit_xxs", {}, 64),
    "FastViT": ("fastvit_t8", {}, 64),
    "EfficientViT (MIT)": ("efficientvit_b0", {}, 64),
    "EVA-02": ("eva02_tiny_patch14_224", {"img_size": 28, "depth": 2}, 28),
    "CoAtNet": ("coatnet_nano_rw_224", {"img_size": 64}, 64),
    "LeViT": ("levit_128s", {"img_size": 64}, 64),
    "MaxViT": ("maxvit_nano_rw_256", {"img_size": 64}, 64),
    "EfficientFormer": ("efficientformer_l1", {}, 224),
}


def row(family: str) -> str:
    import timm

    name, config, size = FAMILIES[family]
    t = time.perf_counter()
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **config).eval()
    x = torch.randn(2, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = rbt.infer_spec(model, x)
    cov = rbt.spec_coverage(model, x)
    change = rbt.check_equivalence(model, spec, x)
    sizes = spec.validate(model.state_dict())
    rng = np.random.default_rng(1)
    b = rbt.permute_model(model, spec, {g: rng.permutation(n) for g, n in sizes.items()})
    aligned, _ = rbt.align(model, b, x, spec=spec)
    exact = all(torch.equal(aligned.state_dict()[k], v) for k, v in model.state_dict().items())
    kinds = ", ".join(f"{k} {p}/{h}" for k, (p, h) in cov.by_kind.items())
    why = "; ".join(f"{n}: {w}" for w, n in sorted(cov.unpermuted.items(), key=lambda kv: -kv[1])) or "-"
    return (f"| {family} | `{name}` | {cov.permuted}/{cov.hidden} ({cov.share:.1%}) | {kinds} | {change:.0e} | "
            f"{'yes' if exact else 'no'} | {time.perf_counter() - t:.1f} | {why} |")


def main() -> None:
    import timm

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("families", nargs="*", default=list(FAMILIES))
    args = ap.parse_args()
    print(f"Machine: {cpu_name()}, torch {torch.__version__}, timm {timm.__version__}")
    print("| family | model | hidden units permuted | by kind | output change | permuted copy recovered | s | why the others stay fixed |")
    print("|---|---|---|---|---|---|---|---|")
    for family in args.families:
        print(row(family), flush=True)


if __name__ == "__main__":
    main()
