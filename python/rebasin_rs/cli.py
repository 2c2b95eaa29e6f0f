"""The ``rebasin`` command: align, merge and measure barriers of checkpoints; run the demo.

    rebasin align A B --model torchvision:resnet50 -o B_aligned.safetensors
    rebasin merge A B --alpha 0.5 --align --model torchvision:resnet50 -o merged.safetensors
    rebasin barrier A B --model torchvision:resnet18 --data val.safetensors --align --plot curves.png
    rebasin spec --model torchvision:resnet50 -o resnet50.spec.json
    rebasin demo

MODEL is ``torchvision:NAME`` (``--model-kwargs '{"num_classes": 10}'`` for its arguments),
``package.module:factory`` (a callable returning the module), or a spec file written by
``rebasin spec`` / ``PermutationSpec.save`` (then no module is built and the checkpoints are
aligned as state dicts). Checkpoints are ``.safetensors`` (preferred) or torch files loaded with
``weights_only=True``. Outputs are written atomically and never over an input.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

__all__ = ["main"]


class CliError(Exception):
    """A bad input, reported as one line without a traceback."""


def _torch():
    try:
        import torch
    except ImportError:
        raise CliError("this command needs PyTorch: pip install 'rebasin-rs[torch]'") from None
    return torch


def _factory(model: str, kwargs: dict):
    if ":" not in model:
        raise CliError(f"--model {model!r}: expected torchvision:NAME, package.module:factory or a spec .json file")
    mod, name = model.split(":", 1)
    if mod == "torchvision":
        try:
            import torchvision
        except ImportError:
            raise CliError("--model torchvision:...: torchvision is not installed (pip install torchvision)") from None
        try:
            return lambda: torchvision.models.get_model(name, weights=None, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise CliError(f"--model {model!r}: {e}") from None
    try:
        fn = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as e:
        raise CliError(f"--model {model!r}: cannot import it ({e})") from None
    if not callable(fn):
        raise CliError(f"--model {model!r} is not callable")
    return lambda: fn(**kwargs)


def _build(args, sd: dict, label: str):
    """The module named by --model with the checkpoint ``sd`` loaded (strictly)."""
    torch = _torch()
    try:
        kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    except json.JSONDecodeError as e:
        raise CliError(f"--model-kwargs is not JSON: {e}") from None
    try:
        model = _factory(args.model, kwargs)()
    except CliError:
        raise
    except Exception as e:  # noqa: BLE001
        raise CliError(f"--model {args.model!r} could not be built: {type(e).__name__}: {e}") from None
    if not isinstance(model, torch.nn.Module):
        raise CliError(f"--model {args.model!r} did not return a torch.nn.Module")
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = " ".join(str(e).split())[:300]
        raise CliError(f"checkpoint {label} does not fit --model {args.model} (architecture arguments go in "
                       f"--model-kwargs, e.g. '{{\"num_classes\": 10}}'): {first}") from None
    return model.eval()


def _example_input(args):
    torch = _torch()
    try:
        shape = tuple(int(d) for d in args.input_shape.split(","))
    except ValueError:
        raise CliError(f"--input-shape {args.input_shape!r}: expected sizes separated by commas, e.g. 1,3,224,224") from None
    if args.input_dtype == "int64":
        return torch.zeros(shape, dtype=torch.int64)
    return torch.randn(shape)


def _is_spec_file(model: str | None) -> bool:
    return bool(model) and model.endswith(".json")


def _load(path: str, label: str) -> dict:
    from rebasin_rs._io import load_checkpoint

    try:
        return load_checkpoint(path)
    except ValueError as e:
        raise CliError(f"{label}: {e}") from None


def _align_state_dicts(args, sd_a: dict, sd_b: dict) -> dict:
    """B's state dict aligned to A's, through a module or a spec file."""
    import numpy as np

    import rebasin_rs as rb

    if _is_spec_file(args.model):
        try:
            spec = rb.PermutationSpec.load(args.model)
            sizes = spec.validate(sd_a, sd_b)
        except ValueError as e:
            raise CliError(f"--model {args.model}: {e}") from None
        # Statistics move with their units but do not weigh in the matching.
        learn = [n for n in spec.real_params() if not n.rsplit(".", 1)[-1].startswith(("running_", "num_batches"))]
        mspec = spec.restrict(learn)
        res = rb.weight_matching(mspec, sd_a, sd_b, seed=args.seed, max_iter=args.max_iter, init="forward")
        perms = {g: res.perms.get(g, np.arange(n)) for g, n in sizes.items()}
        _say(args, f"weight matching: {len(res.perms)} permutations, {res.sweeps} sweeps, objective {res.objective:.6g}")
        return rb.apply_permutation(spec, perms, sd_b)
    if not args.model:
        raise CliError("--model is needed to align (an architecture or a spec file)")
    import rebasin_rs.torch as rbt

    a, b = _build(args, sd_a, "A"), _build(args, sd_b, "B")
    try:
        spec = rbt.infer_spec(a, _example_input(args), warn=not args.quiet)
    except (ValueError, TypeError) as e:
        raise CliError(f"{e} (check --input-shape / --input-dtype, or pass a spec file as --model)") from None
    aligned, res = rbt.align(a, b, spec=spec, seed=args.seed, max_iter=args.max_iter)
    _say(args, f"weight matching: {len(res.perms)} permutations, {res.sweeps} sweeps, objective {res.objective:.6g}")
    return aligned.state_dict()


def _say(args, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr, flush=True)


def _save(args, sd: dict, inputs) -> None:
    from rebasin_rs._io import save_checkpoint

    save_checkpoint(sd, args.output, inputs)  # a ValueError is reported by main() in one line
    _say(args, f"wrote {args.output}")


def cmd_align(args) -> None:
    from rebasin_rs._io import check_output_path

    _check_out(args, check_output_path)
    sd_a, sd_b = _load(args.a, "A"), _load(args.b, "B")
    _save(args, _align_state_dicts(args, sd_a, sd_b), [args.a, args.b])


def _check_out(args, check):
    check(args.output, [args.a, args.b])


def cmd_merge(args) -> None:
    import rebasin_rs as rb
    from rebasin_rs._io import check_output_path

    _check_out(args, check_output_path)
    sd_a, sd_b = _load(args.a, "A"), _load(args.b, "B")
    if args.align:
        sd_b = _align_state_dicts(args, sd_a, sd_b)
    elif args.model and not _is_spec_file(args.model):
        _build(args, sd_a, "A"), _build(args, sd_b, "B")  # checks both fit the architecture
    try:
        merged = rb.interpolate(sd_a, sd_b, args.alpha)
    except ValueError as e:
        raise CliError(f"cannot merge A and B: {e}") from None
    _save(args, merged, [args.a, args.b])


def cmd_barrier(args) -> None:
    torch = _torch()
    import torch.nn.functional as F

    import rebasin_rs.torch as rbt

    if not args.model or _is_spec_file(args.model):
        raise CliError("barrier needs --model as an architecture (torchvision:NAME or package.module:factory)")
    data = _load(args.data, "--data")
    if "x" not in data or "y" not in data:
        raise CliError(f"--data {args.data}: expected tensors named 'x' (inputs) and 'y' (class labels)")
    x, y = data["x"], data["y"].long()
    sd_a, sd_b = _load(args.a, "A"), _load(args.b, "B")
    a = _build(args, sd_a, "A")
    b = _build(args, sd_b, "B")
    batches = [(x[k:k + args.batch_size], y[k:k + args.batch_size]) for k in range(0, len(x), args.batch_size)]
    if not batches:
        raise CliError(f"--data {args.data}: no examples")

    def evaluate(m):
        if args.reset_bn:
            m = rbt.reset_bn_stats(m, batches, inplace=True, progress=False)
        loss = correct = 0.0
        with torch.no_grad():
            for xb, yb in batches:
                out = m(xb)
                loss += float(F.cross_entropy(out, yb, reduction="sum"))
                correct += float((out.argmax(1) == yb).sum())
        return {"loss": loss / len(x), "accuracy": correct / len(x)}

    progress = False if args.quiet else None
    curves = {"naive": rbt.interpolation_curve(a, b, evaluate, alphas=args.alphas, progress=progress)}
    if args.align:
        b_al = _build(args, _align_state_dicts(args, sd_a, sd_b), "B aligned")
        curves["weight matching"] = rbt.interpolation_curve(a, b_al, evaluate, alphas=args.alphas, progress=progress)
    print(f"{'':20s}" + "".join(f"{k:>18s}" for k in curves))
    for metric in ("loss", "accuracy"):
        print(f"{metric + ' barrier':20s}" + "".join(f"{c.barriers[metric]:18.4f}" for c in curves.values()))
    if args.plot:
        from rebasin_rs._io import check_output_path

        check_output_path(args.plot, [args.a, args.b, args.data])
        rbt.plot_curves(curves, args.plot)
        _say(args, f"wrote {args.plot}")


def cmd_spec(args) -> None:
    import rebasin_rs.torch as rbt
    from rebasin_rs._io import check_output_path

    if not args.model or _is_spec_file(args.model):
        raise CliError("spec needs --model as an architecture (torchvision:NAME or package.module:factory)")
    check_output_path(args.output)
    try:
        kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    except json.JSONDecodeError as e:
        raise CliError(f"--model-kwargs is not JSON: {e}") from None
    model = _factory(args.model, kwargs)().eval()
    try:
        x = _example_input(args)
        spec = rbt.infer_spec(model, x, warn=not args.quiet)
        cov = rbt.spec_coverage(model, x)
    except (ValueError, TypeError) as e:
        raise CliError(f"{e} (check --input-shape / --input-dtype)") from None
    spec.save(args.output)
    _say(args, f"wrote {args.output}: {len(spec.groups)} groups, {cov.permuted}/{cov.hidden} hidden units permuted")


def cmd_demo(args) -> None:
    from rebasin_rs.demo import run_demo

    if args.output:
        from rebasin_rs._io import check_output_path

        check_output_path(args.output)
    run_demo(args.output, epochs=args.epochs, width=args.width, quiet=args.quiet)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rebasin", description="Git Re-Basin: align and merge models through "
                                 "their permutation symmetries (rebasin-rs).",
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 2)[1])
    from rebasin_rs import __version__

    ap.add_argument("--version", action="version", version=f"rebasin-rs {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p, *, model_required=False, output=True):
        p.add_argument("--model", required=model_required, help="torchvision:NAME, package.module:factory, or a spec .json")
        p.add_argument("--model-kwargs", default="", help='JSON keyword arguments for the factory, e.g. \'{"num_classes": 10}\'')
        p.add_argument("--input-shape", default="1,3,224,224", help="example input to trace the model with (default 1,3,224,224)")
        p.add_argument("--input-dtype", default="float32", choices=["float32", "int64"])
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--max-iter", type=int, default=100)
        p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or messages")
        if output:
            p.add_argument("-o", "--output", required=True, help=".safetensors (preferred) or .pt")

    p = sub.add_parser("align", help="write B permuted to match A")
    p.add_argument("a")
    p.add_argument("b")
    common(p, model_required=True)
    p.set_defaults(func=cmd_align)
    p = sub.add_parser("merge", help="write (1 - alpha) A + alpha B, aligning B first with --align")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--align", action="store_true", help="align B to A first (needs --model)")
    common(p)
    p.set_defaults(func=cmd_merge)
    p = sub.add_parser("barrier", help="loss and accuracy barriers on labelled data (x, y)")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--data", required=True, help="a .safetensors or .pt file with tensors 'x' and 'y'")
    p.add_argument("--align", action="store_true", help="also measure after aligning B to A")
    p.add_argument("--alphas", type=int, default=11)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--reset-bn", action="store_true", help="re-estimate BatchNorm statistics at each alpha on --data")
    p.add_argument("--plot", help="write the curves to this PNG")
    common(p, model_required=True, output=False)
    p.set_defaults(func=cmd_barrier)
    p = sub.add_parser("spec", help="write the permutation spec inferred for --model (JSON)")
    common(p, model_required=True)
    p.set_defaults(func=cmd_spec)
    p = sub.add_parser("demo", help="train two MLPs on MNIST-1D, merge them naively and aligned (about 30 s)")
    p.add_argument("-o", "--output", default="rebasin-demo.png", help="the PNG of both curves")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.func(args)
    except CliError as e:
        print(f"rebasin: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError, ImportError) as e:
        print(f"rebasin: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rebasin: interrupted", file=sys.stderr)
        return 130
    return 0

