"""The ``rebasin`` command: align, merge and measure barriers of checkpoints; run the demo.

    rebasin align A B --model torchvision:resnet50 -o B_aligned.safetensors
    rebasin merge A B --alpha 0.5 --align --model torchvision:resnet50 -o merged.safetensors
    rebasin barrier A B --model torchvision:resnet18 --data val.safetensors --align --plot curves.png
    rebasin spec --model torchvision:resnet50 -o resnet50.spec.json
    rebasin align llama-a/ llama-b/ -o llama-b-aligned       # Hugging Face folders
    rebasin demo

MODEL is torchvision:NAME (--model-kwargs '{"num_classes": 10}' for its arguments),
package.module:factory (a callable returning the module), hf:FOLDER (the architecture of a
Hugging Face folder's config.json, built with transformers without allocating weights; implied
when A is a folder holding config.json), or a spec .json file written by `rebasin spec` /
PermutationSpec.save (then no module is built and the checkpoints are aligned as state dicts).
Checkpoints are safetensors (preferred), torch files loaded with weights_only=True (no pickled
code runs), or folders as save_pretrained writes them (model.safetensors, or shards and
model.safetensors.index.json), read in their stored dtype.

Outputs: the format follows the extension (.safetensors, or .pt / .pth for torch.save; no
extension: a folder with A's shard layout, config and tokenizer files; .json for a spec; .png for
a plot); every output path is checked before any work. A file is written to a temporary file and
renamed over the target (atomic; Ctrl-C or SIGTERM leave no temporary file), keeps the
permissions of the file it replaces (a new one: 0666 less the umask), and never replaces an input
or a read-only file; a folder is written whole into a temporary folder and renamed to a new name
(an existing one is refused). Bad input gives one line `rebasin: error: ...` and exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys

from rebasin_rs._cli_align import align_folders, align_state_dicts, check_device, load_spec, merge_state_dicts
from rebasin_rs._cli_models import (
    _build, _check_model, CliError, _DEFAULT_SHAPE, _example_input, _examples, _hf_config, _imply_hf_model,
    _is_hf, _is_spec_file, _line, _make_model, _need_model, _say, _TOKEN_SHAPE, _torch,
)
from rebasin_rs._cli_types import _alpha, _gib, _int_range, _kwargs, _shape

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse with the command's one error format: one line and exit status 1 (argparse's own
    is the usage and status 2)."""

    def error(self, message: str):  # type: ignore[override]
        print(f"rebasin: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        sys.exit(1)


# ---- files ---------------------------------------------------------------------------------------

def _load(path: str, what: str) -> dict:
    """A state dict of finite tensors (NaN or infinite weights would give a NaN output), from a
    file or a checkpoint folder (in the stored dtypes)."""
    torch = _torch()
    from rebasin_rs._folder import load_folder
    from rebasin_rs._io import load_checkpoint

    sd = load_folder(path, what) if os.path.isdir(path) else load_checkpoint(path, what=what)
    for k, v in sd.items():
        if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all()):
            raise CliError(f"{what} {path!r}: {k!r} holds NaN or infinite values")
    return sd


def _model_names(args, stored) -> dict[str, str]:
    """For a hf: model, stored checkpoint name -> the model's name (transformers renames a few on
    load and back on save, GPT-NeoX's ``embed_out`` for ``lm_head``); otherwise the same names."""
    if not _is_hf(args.model):
        return {k: k for k in stored}
    from rebasin_rs._hf import build_empty, checkpoint_names

    try:
        return checkpoint_names(build_empty(_hf_config(args)), stored)
    except ValueError as e:
        raise CliError(_line(e)) from None


def _load_pair(args) -> tuple[dict, dict]:
    """Checkpoints A and B under the model's names; ``_save`` writes A's stored names back."""
    sd_a, sd_b = _load(args.a, "checkpoint A"), _load(args.b, "checkpoint B")
    names = _model_names(args, list(sd_a) + [k for k in sd_b if k not in sd_a])
    args.stored_names = {v: k for k, v in names.items() if k in sd_a}
    return {names[k]: v for k, v in sd_a.items()}, {names[k]: v for k, v in sd_b.items()}


def _check_checkpoint(path: str, what: str) -> None:
    """A readable checkpoint file, or a folder whose index and shards agree (headers only)."""
    from rebasin_rs._folder import read_layout
    from rebasin_rs._io import check_input_file

    if os.path.isdir(path):
        read_layout(path, what)
    else:
        check_input_file(path, what)


def _check_inputs(args) -> None:
    """A, B (and a spec file) name readable checkpoints, A and B are two of them, and two
    Hugging Face folders have one config (checked before any work)."""
    from rebasin_rs._hf import compare_configs, has_config
    from rebasin_rs._io import check_input_file

    _check_checkpoint(args.a, "checkpoint A")
    _check_checkpoint(args.b, "checkpoint B")
    if os.path.samefile(args.a, args.b):
        raise CliError(f"A and B are the same file ({args.a!r}, {args.b!r}); pass two checkpoints")
    if _is_spec_file(args.model):
        check_input_file(args.model, "spec file (--model)")
    if has_config(args.a) and has_config(args.b):
        compare_configs(args.a, args.b)


def _check_output(path: str, inputs, suffixes) -> None:
    from rebasin_rs._io import check_output_path

    check_output_path(path, [p for p in inputs if p], suffixes=suffixes)


def _check_checkpoint_output(args) -> None:
    """-o names a new folder, or a checkpoint file that may be written (before any work)."""
    from rebasin_rs._folder import check_output_folder, is_folder_output
    from rebasin_rs._io import CHECKPOINT_SUFFIXES

    if is_folder_output(args.output):
        check_output_folder(args.output)
    else:
        _check_output(args.output, [args.a, args.b, _is_spec_file(args.model) and args.model], CHECKPOINT_SUFFIXES)


def _save(args, sd: dict) -> None:
    """-o as a file, or as a folder: with A's layout and files when A is a folder."""
    from rebasin_rs._folder import is_folder_output, save_folder
    from rebasin_rs._io import save_checkpoint

    stored = getattr(args, "stored_names", None) or {}
    sd = {stored.get(k, k): v for k, v in sd.items()}
    if is_folder_output(args.output):
        save_folder(sd, args.output, like=args.a if os.path.isdir(args.a) else None)
    else:
        save_checkpoint(sd, args.output, [args.a, args.b])
    _say(args, f"wrote {args.output}")


# ---- commands ------------------------------------------------------------------------------------

def cmd_align(args) -> None:
    _imply_hf_model(args)
    _need_model(args, "align")
    check_device(args)
    _check_inputs(args)
    _check_checkpoint_output(args)
    _check_model(args)
    from rebasin_rs._folder import is_folder_output

    if (os.path.isdir(args.a) and os.path.isdir(args.b) and is_folder_output(args.output)
            and (_is_hf(args.model) or _is_spec_file(args.model))):
        # Two checkpoint folders: read and written tensor by tensor, never loaded whole.
        if align_folders(args, lambda msg: _say(args, msg)):
            return
    sd_a, sd_b = _load_pair(args)
    _save(args, align_state_dicts(args, sd_a, sd_b, inplace=True))


def cmd_merge(args) -> None:
    import rebasin_rs as rb

    _imply_hf_model(args)
    if args.method is None:
        args.method = "mergemany" if args.more else "interpolate"
    if args.method != "interpolate":
        _merge_several(args)
        return
    if args.more:
        raise CliError(f"--method interpolate merges two checkpoints, got {2 + len(args.more)}; use --method "
                       "mergemany or cycle for more")
    if args.align and not args.model:
        raise CliError("--align needs --model (an architecture or a spec file), unless A is a Hugging Face folder "
                       "with config.json")
    _check_inputs(args)
    _check_checkpoint_output(args)
    _check_model(args)
    sd_a, sd_b = _load_pair(args)
    if args.alpha is None:
        args.alpha = 0.5
    if args.align:
        sd_b = align_state_dicts(args, sd_a, sd_b, inplace=True)
    elif _is_spec_file(args.model):
        load_spec(args, sd_a, sd_b)  # checks that both fit the spec
    elif args.model:
        _build(args, sd_a, "A"), _build(args, sd_b, "B")  # checks that both fit the architecture
    try:
        merged = rb.interpolate(sd_a, sd_b, args.alpha)
    except ValueError as e:
        raise CliError(f"cannot merge A and B: {_line(e)}") from None
    _save(args, merged)


def _merge_several(args) -> None:
    """``merge A B C ... --method mergemany|cycle|zipit``: aligned to one frame and averaged, or zipped."""
    if args.method == "zipit" and (not args.data or _is_spec_file(args.model)):
        raise CliError("--method zipit needs --data (a file with the inputs 'x' and labels 'y') and an "
                       "architecture as --model, not a spec file")
    if not args.model:
        raise CliError(f"--method {args.method} needs --model (an architecture or a spec file), unless A is a "
                       "Hugging Face folder with config.json")
    if args.alpha is not None or args.align:
        raise CliError(f"--method {args.method} aligns every checkpoint and averages them: drop "
                       f"{'--alpha' if args.alpha is not None else '--align'}")
    _check_inputs(args)
    paths = [args.a, args.b, *args.more]
    for k, path in enumerate(args.more, 3):
        _check_checkpoint(path, f"checkpoint {k}")
        for j, other in enumerate(paths[:k - 1], 1):
            if os.path.samefile(path, other):
                raise CliError(f"checkpoints {j} and {k} are the same file ({other!r}, {path!r}); pass "
                               "different checkpoints")
    _check_checkpoint_output(args)
    _check_model(args)
    sds = list(_load_pair(args))
    names = _model_names(args, list(sds[0]))
    sds += [{names.get(k, k): v for k, v in _load(path, f"checkpoint {k}").items()}
            for k, path in enumerate(args.more, 3)]
    data = None
    if args.method == "zipit":
        x = _load_data(args)[0]
        data = [x[k:k + 256] for k in range(0, len(x), 256)]
    _save(args, merge_state_dicts(args, sds, data))


def _load_data(args):
    """(x, y) from --data: x finite, y integer class labels, one per example."""
    torch = _torch()
    data = _load(args.data, "data file (--data)")
    if "x" not in data or "y" not in data:
        raise CliError(f"--data {args.data}: expected tensors named 'x' (inputs) and 'y' (integer class labels); "
                       f"it holds {_examples(list(data))}")
    x, y = data["x"], data["y"]
    where = f"--data {args.data}"
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise CliError(f"{where}: y has dtype {str(y.dtype).replace('torch.', '')}; it must hold integer class labels "
                       "(the targets of cross-entropy), e.g. y.long() if they are whole numbers")
    if y.ndim != 1:
        raise CliError(f"{where}: y has shape {tuple(y.shape)}; it must be 1-D, one class label per example")
    if x.ndim < 1 or len(x) != len(y):
        raise CliError(f"{where}: x has shape {tuple(x.shape)} but y has {len(y)} labels; the first axis of x must "
                       "be the examples, one per label")
    if len(y) == 0:
        raise CliError(f"{where}: no examples (x and y are empty)")
    if x.dtype == torch.bool or x.is_complex():
        raise CliError(f"{where}: x has dtype {str(x.dtype).replace('torch.', '')}; expected floating point inputs "
                       "(or integer token ids)")
    if int(y.min()) < 0:
        raise CliError(f"{where}: y holds the label {int(y.min())}; class labels are 0, 1, ..., classes - 1")
    return x, y.long()


def _logits(out):
    """A model's logits: the output itself, or its ``logits`` (a Hugging Face model's output)."""
    logits = getattr(out, "logits", None)
    return out if logits is None else logits


def _check_forward(args, model, x, y) -> None:
    """Model A runs on the first batch and gives logits that fit the labels."""
    torch = _torch()
    xb = x[:args.batch_size]
    try:
        with torch.no_grad():
            out = _logits(model(xb))
    except Exception as e:  # noqa: BLE001 - the user's model may raise anything
        raise CliError(f"model A fails on --data x (shape {tuple(x.shape)}, {str(x.dtype).replace('torch.', '')}): "
                       f"{type(e).__name__}: {_line(e)}") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or len(out) != len(xb):
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        per_token = isinstance(out, torch.Tensor) and out.ndim == 3
        lm = (" (a language model's logits, one row per token: barrier measures classification on --data, "
              "so it needs a model that gives one row per example)") if per_token else ""
        raise CliError(f"on --data x, --model {args.model} gives {got}; barrier needs logits of shape "
                       f"(examples, classes) for cross-entropy{lm}")
    classes, top = out.shape[1], int(y.max())
    if top >= classes:
        raise CliError(f"--data {args.data}: y holds the label {top} but the model has {classes} classes; class "
                       f"labels are 0, 1, ..., {classes - 1}")


def _endpoint_notes(curves) -> list[str]:
    """Why a barrier is only A's and B's own difference: the curve's worst point is A or B."""
    notes = []
    for metric, worst, word in (("loss", max, "highest"), ("accuracy", min, "lowest")):
        at_end = [name for name, c in curves.items()
                  if worst(c.metrics[metric]) in (c.metrics[metric][0], c.metrics[metric][-1])]
        if not at_end:
            continue
        note = (f"note: on the {' and '.join(at_end)} curve{'s' if len(at_end) > 1 else ''} the {metric} is {word} "
                f"at an endpoint (A or B itself), not between them: the {metric} barrier is just half the gap "
                f"between A's and B's {metric}")
        if len(at_end) > 1:
            note += ", which alignment does not change"
        notes.append(note)
    return notes


def cmd_barrier(args) -> None:
    _imply_hf_model(args)
    _need_model(args, "barrier")
    if _is_spec_file(args.model):
        raise CliError("barrier needs --model as an architecture (torchvision:NAME, package.module:factory or "
                       "hf:FOLDER), not a spec file: it runs the models")
    _check_inputs(args)
    from rebasin_rs._io import check_input_file

    check_input_file(args.data, "data file (--data)")
    if args.plot:
        _check_output(args.plot, [args.a, args.b, args.data], (".png",))
    _check_model(args)
    torch = _torch()
    import torch.nn.functional as F

    import rebasin_rs.torch as rbt

    x, y = _load_data(args)
    sd_a, sd_b = _load_pair(args)
    a, b = _build(args, sd_a, "A"), _build(args, sd_b, "B")
    if x.is_floating_point():  # e.g. float64 data for a float32 model
        dtype = next((p.dtype for p in a.parameters() if p.is_floating_point()), torch.float32)
        x = x.to(dtype)
    _check_forward(args, a, x, y)
    if args.reset_bn and not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats
                                 for m in a.modules()):
        raise CliError(f"--reset-bn: --model {args.model} has no BatchNorm with running statistics to re-estimate")
    batches = [(x[k:k + args.batch_size], y[k:k + args.batch_size]) for k in range(0, len(x), args.batch_size)]

    def evaluate(m):
        if args.reset_bn:
            m = rbt.reset_bn_stats(m, batches, inplace=True, progress=False)
        loss = correct = 0.0
        with torch.no_grad():
            for xb, yb in batches:
                out = _logits(m(xb)).float()
                loss += float(F.cross_entropy(out, yb, reduction="sum"))
                correct += float((out.argmax(1) == yb).sum())
        return {"loss": loss / len(x), "accuracy": correct / len(x)}

    progress = False if args.quiet else None
    curves = {"naive": rbt.interpolation_curve(a, b, evaluate, alphas=args.alphas, progress=progress)}
    if args.align:
        example = _example_input(args, a) if args.input_shape else x[:1]
        b_al = _build(args, align_state_dicts(args, sd_a, sd_b, (a, b), example), "B aligned")
        curves["weight matching"] = rbt.interpolation_curve(a, b_al, evaluate, alphas=args.alphas, progress=progress)
    print(f"{'':20s}" + "".join(f"{k:>18s}" for k in curves))
    for metric in ("loss", "accuracy"):
        print(f"{metric + ' barrier':20s}" + "".join(f"{c.barriers[metric]:18.4f}" for c in curves.values()))
    for note in _endpoint_notes(curves):
        print(note)
    if args.plot:
        rbt.plot_curves(curves, args.plot)
        _say(args, f"wrote {args.plot}")


def _spec_model(args):
    """The model to infer a spec from: for hf:FOLDER holding weights, with them (older
    transformers cannot run a model whose parameters are on the meta device: their rotary
    embeddings open an autocast region on the parameters' device); otherwise from --model."""
    from rebasin_rs._folder import INDEX, SINGLE

    folder = args.model[len("hf:"):] if _is_hf(args.model) else None
    if folder is None or not any(os.path.exists(os.path.join(folder, f)) for f in (INDEX, SINGLE)):
        return _make_model(args)
    sd = _load(folder, "--model")
    names = _model_names(args, list(sd))
    return _build(args, {names[k]: v for k, v in sd.items()}, "--model")


def cmd_spec(args) -> None:
    import rebasin_rs.torch as rbt
    from rebasin_rs._hf import stored_names, tie_groups

    if _is_spec_file(args.model):
        raise CliError("spec needs --model as an architecture (torchvision:NAME, package.module:factory or "
                       "hf:FOLDER)")
    _check_output(args.output, [], (".json",))
    model = _spec_model(args)
    try:
        x = _example_input(args, model)
        spec = rbt.infer_spec(model, x, warn=not args.quiet)
        cov = rbt.spec_coverage(model, x)
    except (ValueError, TypeError) as e:
        raise CliError(f"{_line(e)} (check --input-shape / --input-dtype)") from None
    # In the names a checkpoint stores, so that the spec aligns saved state dicts.
    back = {}
    if _is_hf(args.model):
        from rebasin_rs._folder import read_layout

        folder = args.model[len("hf:"):]
        back = {v: k for k, v in _model_names(args, list(read_layout(folder, "--model").weight_map)).items()}
    spec = stored_names(spec, tie_groups(model), back)
    spec.save(args.output)
    _say(args, f"wrote {args.output}: {len(spec.groups)} groups, {cov.permuted}/{cov.hidden} hidden units permuted")


def cmd_demo(args) -> None:
    from rebasin_rs.demo import run_demo

    _check_output(args.output, [], (".png",))
    run_demo(args.output, epochs=args.epochs, width=args.width, quiet=args.quiet)


# ---- the parser ------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="rebasin", description="Git Re-Basin: align and merge models through "
                 "their permutation symmetries (rebasin-rs).", formatter_class=argparse.RawDescriptionHelpFormatter,
                 epilog="\n\n".join(__doc__.split("\n\n")[1:4]))
    from rebasin_rs import __version__

    ap.add_argument("--version", action="version", version=f"rebasin-rs {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    pair = ("checkpoint of model A (.safetensors, a torch file, or a Hugging Face folder)",
            "checkpoint of model B, of the same architecture as A")
    arch = ("torchvision:NAME, package.module:factory (a callable returning the torch.nn.Module) or hf:FOLDER (the "
            "config.json of a Hugging Face folder; the default when A is such a folder)")

    def add(name, help, func):
        p = sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".")
        p.set_defaults(func=func)
        return p

    def model(p, *, required, spec_file, shape_default=f"{_DEFAULT_SHAPE}; token ids "
              f"{','.join(map(str, _TOKEN_SHAPE))} for a hf: language model", shape_help="example input shape to trace "
              "the model with, sizes separated by commas"):
        g = p.add_argument_group("model")
        g.add_argument("--model", required=required,
                       help=arch + (", or a spec .json written by 'rebasin spec' (no module is built)" if spec_file
                                    else ""))
        g.add_argument("--model-kwargs", type=_kwargs, default="", metavar="JSON",
                       help='keyword arguments for the factory, e.g. \'{"num_classes": 10}\', or for hf: entries '
                            'of config.json to override (default: none)')
        g.add_argument("--input-shape", type=_shape, default=None, metavar="N,C,...",
                       help=shape_help + (f" (default: {shape_default})" if shape_default else ""))
        g.add_argument("--input-dtype", default=None, choices=["float32", "int64"],
                       help="dtype of the traced input (default: float32), int64 for token ids (the default for a "
                            "hf: language model)")

    def matching(p, when=""):
        g = p.add_argument_group("weight matching" + when)
        g.add_argument("--seed", type=int, default=0,
                       help="seed of the order the permutations are visited in; any integer (default: %(default)s)")
        g.add_argument("--max-iter", type=_int_range(1, 2**63), default=100, metavar="N",
                       help="at most this many sweeps over the permutations, >= 1 (default: %(default)s)")
        g.add_argument("--max-cost-memory", type=_gib, default=None, metavar="GIB",
                       help="GiB of cost matrices the matching may keep between visits (4 n^2 bytes per "
                            "permutation of n units); the others are recomputed at each visit: less memory on "
                            "large models, more time (default: no limit)")

    def quiet(p):
        p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or messages")

    ckpt_out = ("the output checkpoint: .safetensors (preferred), .pt / .pth for torch.save, or a new folder (a name "
                "without these extensions) with A's shard layout and, when A is a folder, its other files")

    p = add("align", "write B permuted to match A", cmd_align)
    p.add_argument("a", metavar="A", help=pair[0])
    p.add_argument("b", metavar="B", help=pair[1])
    p.add_argument("-o", "--output", required=True, help=ckpt_out)
    quiet(p)
    model(p, required=False, spec_file=True)
    matching(p)
    p.add_argument("--device", default="cpu",
                   help="where the weights go and the cost products run, e.g. cuda (torch computes them there; "
                        "two folders are still read one tensor at a time); default: %(default)s")

    p = add("merge", "write (1 - alpha) A + alpha B, aligning B to A first with --align; or the merge of "
            "several checkpoints (--method)", cmd_merge)
    p.add_argument("a", metavar="A", help=pair[0])
    p.add_argument("b", metavar="B", help=pair[1])
    p.add_argument("more", metavar="C", nargs="*", help="more checkpoints of the same model (with --method "
                   "mergemany or cycle)")
    p.add_argument("-o", "--output", required=True, help=ckpt_out)
    p.add_argument("--method", choices=["interpolate", "mergemany", "cycle", "zipit"],
                   help="interpolate: (1 - alpha) A + alpha B (default for two); mergemany: MergeMany (default for "
                        "more); cycle: Frank-Wolfe to one frame (C2M3); zipit: ZipIt! on --data; all need --model")
    p.add_argument("--data", metavar="FILE", help="with --method zipit: a .safetensors or torch file with the "
                   "inputs 'x' (and labels 'y') whose features are correlated")
    p.add_argument("--alpha", type=_alpha, default=None,
                   help="weight of B, in [0, 1]: 0 gives A, 1 gives B (default: 0.5)")
    p.add_argument("--align", action="store_true", help="align B to A first (needs --model, or A a Hugging Face "
                   "folder)")
    quiet(p)
    model(p, required=False, spec_file=True)
    matching(p, " (with --align)")

    p = add("barrier", "print the loss and accuracy barriers of the line from A to B on labelled data", cmd_barrier)
    p.add_argument("a", metavar="A", help=pair[0])
    p.add_argument("b", metavar="B", help=pair[1])
    p.add_argument("--data", required=True, metavar="FILE",
                   help="a .safetensors or torch file with tensors 'x' (inputs, one example per row) and 'y' "
                        "(integer class labels 0 .. classes - 1, the targets of cross-entropy)")
    p.add_argument("--align", action="store_true", help="also measure the line from A to B aligned to A")
    p.add_argument("--alphas", type=_int_range(2, 10_001), default=11, metavar="N",
                   help="number of evenly spaced alphas from 0 to 1, >= 2 (default: %(default)s)")
    p.add_argument("--batch-size", type=_int_range(1), default=256, metavar="N",
                   help="examples per forward pass, >= 1 (default: %(default)s)")
    p.add_argument("--reset-bn", action="store_true",
                   help="re-estimate BatchNorm statistics on --data at each alpha")
    p.add_argument("--plot", metavar="PNG", help="also draw the curves into this .png file")
    quiet(p)
    model(p, required=False, spec_file=False, shape_default=None,
          shape_help="with --align: example input shape to trace the model with (default: one example of --data)")
    matching(p, " (with --align)")

    p = add("spec", "write the permutation spec inferred for --model, as JSON", cmd_spec)
    p.add_argument("-o", "--output", required=True, help="the spec file (.json), to pass later as --model")
    quiet(p)
    model(p, required=True, spec_file=False)

    p = add("demo", "train two MLPs on MNIST-1D, merge them naively and aligned (about 30 s)", cmd_demo)
    p.add_argument("-o", "--output", default="rebasin-demo.png", help="the .png of both curves (default: %(default)s)")
    p.add_argument("--epochs", type=_int_range(1), default=60, metavar="N",
                   help="training epochs of each model, >= 1 (default: %(default)s)")
    p.add_argument("--width", type=_int_range(1), default=512, metavar="N",
                   help="hidden units per layer, >= 1 (default: %(default)s)")
    quiet(p)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.func(args)
    except (CliError, ValueError, TypeError, OSError, ImportError) as e:
        print(f"rebasin: error: {_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rebasin: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one-line promise holds for failures nobody foresaw too
        if os.environ.get("REBASIN_TRACEBACK"):
            raise
        print(f"rebasin: error: unexpected {type(e).__name__}: {_line(e)} (a bug? rerun with REBASIN_TRACEBACK=1 "
              "for the traceback and report it)", file=sys.stderr)
        return 1
    return 0
