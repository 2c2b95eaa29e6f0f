"""The ``rebasin`` command's models: the module that ``--model`` names (torchvision:NAME,
package.module:factory, hf:FOLDER) built and loaded with a checkpoint, and the input it is traced
with; and the command's one-line error. Split from cli.py (the parser and the commands), which
imports these."""

from __future__ import annotations

import importlib
import sys

# One example of the data (barrier) or this shape (align, merge, spec) is traced to infer the spec;
# a Hugging Face model that reads token ids is traced with token ids of _TOKEN_SHAPE.
_DEFAULT_SHAPE = "1,3,224,224"
_TOKEN_SHAPE = (1, 8)


class CliError(Exception):
    """A bad input, reported as one line without a traceback."""


def _line(e: BaseException, limit: int = 1000) -> str:
    """An error message on one line (messages from torch span several)."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + " ..."


# ---- models ------------------------------------------------------------------------------------

def _torch():
    try:
        import torch
    except ImportError:
        raise CliError("this command needs PyTorch: pip install torch safetensors "
                       "(or '.[torch]' from a clone of rebasin-rs)") from None
    return torch


def _is_spec_file(model: str | None) -> bool:
    return bool(model) and model.lower().endswith(".json")


def _is_hf(model: str | None) -> bool:
    return bool(model) and model.startswith("hf:")


def _imply_hf_model(args) -> None:
    """No --model and A a Hugging Face folder (with config.json): the architecture is A's config."""
    from rebasin_rs._hf import has_config

    if not args.model and has_config(args.a):
        args.model = f"hf:{args.a}"


def _need_model(args, command: str) -> None:
    if not args.model:
        raise CliError(f"{command} needs --model (an architecture or a spec file), unless A is a Hugging Face "
                       "folder with config.json")


def _hf_config(args):
    """The transformers config of --model hf:FOLDER (--model-kwargs override its entries)."""
    from rebasin_rs._hf import load_config

    try:
        return load_config(args.model[3:], args.model_kwargs)
    except ValueError as e:
        raise CliError(f"--model {args.model}: {e}") from None


def _check_model(args) -> None:
    """--model names something that exists (a module, a folder's config), checked before the
    checkpoints are read; a spec file is checked with the inputs."""
    if _is_hf(args.model):
        _hf_config(args)
    elif args.model and not _is_spec_file(args.model):
        _factory(args.model)


def _factory(model: str):
    if ":" not in model:
        raise CliError(f"--model {model!r}: expected torchvision:NAME, package.module:factory or a spec .json file")
    mod, name = model.split(":", 1)
    if mod == "torchvision":
        try:
            import torchvision
        except ImportError:
            raise CliError("--model torchvision:...: torchvision is not installed (pip install torchvision)") from None
        if name not in torchvision.models.list_models():
            raise CliError(f"--model {model!r}: torchvision has no model {name!r} (torchvision.models.list_models() "
                           "lists them)")
        return lambda **kw: torchvision.models.get_model(name, weights=None, **kw)
    try:
        fn = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as e:
        raise CliError(f"--model {model!r}: cannot import it ({e})") from None
    if not callable(fn):
        raise CliError(f"--model {model!r} is not callable")
    return fn


def _make_model(args):
    """A fresh module from --model and --model-kwargs, in eval mode (for hf:, its parameters on
    the meta device until a checkpoint is assigned to them)."""
    torch = _torch()
    if _is_hf(args.model):
        from rebasin_rs._hf import build_empty

        config = _hf_config(args)
        try:
            return build_empty(config)
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - transformers may raise anything for an odd config
            raise CliError(f"--model {args.model} could not be built: {type(e).__name__}: {_line(e)}") from None
    factory = _factory(args.model)
    try:
        model = factory(**args.model_kwargs)
    except Exception as e:  # noqa: BLE001 - the user's factory may raise anything
        raise CliError(f"--model {args.model!r} could not be built: {type(e).__name__}: {_line(e)}") from None
    if not isinstance(model, torch.nn.Module):
        raise CliError(f"--model {args.model!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def _examples(names, n: int = 3) -> str:
    return ", ".join(repr(k) for k in names[:n]) + (", ..." if len(names) > n else "")


def _build(args, sd: dict, label: str):
    """The module named by --model with the checkpoint ``sd`` loaded: every entry of the model
    must be in ``sd`` but those the model ties to one that is (an LM head stored once, as its
    embedding), and ``sd`` must hold nothing else. A hf: model takes the tensors themselves
    (assigned, in their stored dtype)."""
    from rebasin_rs._hf import retie, tie_groups

    model = _make_model(args)
    ties = tie_groups(model)
    own = model.state_dict()
    tied_to_stored = {k for g in ties if any(n in sd for n in g) for k in g}
    missing = [k for k in own if k not in sd and k not in tied_to_stored]
    extra = [k for k in sd if k not in own]
    shapes = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    why = []
    if missing:
        why.append(f"{len(missing)} entries of the model are missing ({_examples(missing)})")
    if extra:
        why.append(f"{len(extra)} entries are not in the model ({_examples(extra)})")
    if shapes:
        k = shapes[0]
        why.append(f"{len(shapes)} entries have another shape ({k!r}: {tuple(sd[k].shape)} in the checkpoint, "
                   f"{tuple(own[k].shape)} in the model)")
    if why:
        hint = ("architecture arguments go in --model-kwargs, e.g. '{\"num_classes\": 10}'" if not missing + extra
                else "is --model the architecture it was saved from?")
        raise CliError(f"checkpoint {label} does not fit --model {args.model}: {'; '.join(why)}; {hint}")
    try:
        model.load_state_dict(sd, strict=not ties, assign=_is_hf(args.model))
    except RuntimeError as e:
        raise CliError(f"checkpoint {label} does not fit --model {args.model}: {_line(e)}") from None
    try:
        retie(model, ties, sd, label)
    except ValueError as e:
        raise CliError(str(e)) from None
    return model.eval()


def _example_input(args, model):
    """The input the spec is inferred from: --input-shape and --input-dtype, whose defaults are
    token ids of shape 1,8 for a hf: model that reads token ids and an image batch otherwise."""
    torch = _torch()
    tokens = _is_hf(args.model) and getattr(model, "main_input_name", None) == "input_ids"
    shape = args.input_shape or (_TOKEN_SHAPE if tokens else tuple(int(d) for d in _DEFAULT_SHAPE.split(",")))
    device = next((p.device for p in model.parameters() if not p.is_meta), None)
    if (args.input_dtype or ("int64" if tokens else "float32")) == "int64":
        return torch.zeros(shape, dtype=torch.int64, device=device)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return torch.randn(shape, dtype=dtype, device=device)


def _say(args, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr, flush=True)
