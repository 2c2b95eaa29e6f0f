"""Hugging Face models for the ``rebasin`` command: the architecture from a folder's
``config.json``, built without allocating weights, and the weights it ties.

The module is built with its parameters on the meta device (no random initialisation of billions
of weights that the checkpoint replaces at once) and its buffers real: non-persistent buffers
such as rotary frequencies are computed in ``__init__`` and are not in any checkpoint. The
checkpoint's tensors are then assigned as they are (``load_state_dict(assign=True)``: no copy, the
stored dtype kept), and the weights the model ties (an LM head tied to the embedding, stored once)
are tied again to the tensor that was stored. transformers is optional and imported only here.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator

from rebasin_rs._errors import RebasinError

__all__ = ["build_empty", "checkpoint_names", "compare_configs", "has_config", "load_config", "retie", "stored_names",
           "tie_groups"]

CONFIG = "config.json"

# Entries of config.json that say how a model was saved or run, not what it computes: A and B may
# differ in them (a bfloat16 A and a float32 B are one architecture).
_RUN_ENTRIES = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache", "_commit_hash"}


def has_config(folder: Any) -> bool:
    """Whether ``folder`` is a folder holding ``config.json`` (a Hugging Face model folder)."""
    folder = os.fspath(folder)
    return os.path.isdir(folder) and os.path.isfile(os.path.join(folder, CONFIG))


def _transformers():
    try:
        import transformers
    except ImportError:
        raise RebasinError("a Hugging Face model folder needs transformers: pip install transformers") from None
    # Its warnings about the config (token ids outside a tiny vocabulary, ...) are not ours to print.
    transformers.logging.set_verbosity_error()
    return transformers


def load_config(folder: Any, overrides: dict | None = None) -> Any:
    """The ``transformers`` config of ``folder`` (from its ``config.json``, local files only: no
    network), with ``overrides`` for some of its entries.

    Raises:
        RebasinError: the folder or its config.json is missing, transformers is not installed or
            cannot read the config, or an override names no entry of it.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise RebasinError(f"{folder!r} is not a folder (a Hugging Face model folder holds config.json)")
    if not os.path.isfile(os.path.join(folder, CONFIG)):
        raise RebasinError(f"folder {folder!r} has no {CONFIG}, which names the architecture; save the model with "
                           "save_pretrained, or pass --model as an architecture or a spec file")
    transformers = _transformers()
    try:
        config, unused = transformers.AutoConfig.from_pretrained(
            folder, local_files_only=True, return_unused_kwargs=True, **(overrides or {}))
    except Exception as e:  # noqa: BLE001 - any reader error becomes one clear message
        raise RebasinError(f"{os.path.join(folder, CONFIG)!r} cannot be read by transformers "
                           f"{transformers.__version__}: {type(e).__name__}: {' '.join(str(e).split())[:300]}") from None
    if unused:
        raise RebasinError(f"--model-kwargs: {sorted(unused)[0]!r} is not an entry of {CONFIG} in {folder!r} "
                           "(for a hf: model they override config entries)")
    return config


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Every parameter registered inside the block goes to the meta device (as accelerate's
    ``init_empty_weights(include_buffers=False)`` does); buffers stay real."""
    import torch

    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        if param is not None and param.device.type != "meta":
            param = type(param)(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def build_empty(config: Any) -> Any:
    """The model ``config`` describes, parameters on the meta device, in eval mode: the class its
    ``architectures`` names (e.g. ``LlamaForCausalLM``), or ``AutoModel`` when it names none that
    transformers has."""
    transformers = _transformers()
    names = getattr(config, "architectures", None) or []
    cls = getattr(transformers, names[0], None) if names else None
    with _parameters_on_meta():
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            model = cls(config)
        else:
            model = transformers.AutoModel.from_config(config)
    return model.eval()


def tie_groups(model: Any) -> list[list[str]]:
    """Names that share one parameter (an LM head tied to the embedding), each group in the
    model's order; only groups of two or more."""
    by_param: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_param.setdefault(id(p), []).append(name)
    return [names for names in by_param.values() if len(names) > 1]


def retie(model: Any, groups: list[list[str]], state: dict, label: str) -> None:
    """Ties every group again to the parameter loaded from ``state``: after
    ``load_state_dict(assign=True)`` only the name that was stored holds the new tensor.

    Raises:
        RebasinError: ``state`` holds two names of one group with different values (the model
            ties weights that the checkpoint does not).
    """
    import torch

    for group in groups:
        stored = [n for n in group if n in state]
        if not stored:
            continue
        for other in stored[1:]:
            if not torch.equal(state[stored[0]], state[other]):
                raise RebasinError(f"checkpoint {label}: the model ties {stored[0]!r} and {other!r}, but the checkpoint "
                                   "holds different values for them; is the config's tie_word_embeddings right?")
        source = model.get_parameter(stored[0])
        for name in group:
            owner, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(owner), leaf, source)


def stored_names(spec: Any, groups: list[list[str]], names: dict[str, str] | None = None) -> Any:
    """``spec`` in the names a checkpoint stores: every tied name replaced by the first name of
    its group, the one that ``save_pretrained`` stores (the tracer may name the LM head where the
    folder holds the embedding), then ``names`` (model name -> stored name, see
    :func:`checkpoint_names`) applied."""
    from rebasin_rs._spec import PermutationSpec

    tied = {n: g[0] for g in groups for n in g[1:]}
    names = names or {}
    if not tied and not names:
        return spec

    def rename(n: str) -> str:
        n = tied.get(n, n)
        return names.get(n, n)

    return PermutationSpec(
        # A group that named both names of a tied weight keeps it once.
        groups={g: tuple(dict.fromkeys((rename(n), axis) for n, axis in ms)) for g, ms in spec.groups.items()},
        views={rename(n): v for n, v in spec.views.items()},
        pieces={rename(n): (rename(v[0]),) + tuple(v[1:]) for n, v in spec.pieces.items()},
    )


def compare_configs(folder_a: Any, folder_b: Any) -> None:
    """Checks that two model folders' ``config.json`` describe one architecture: every entry but
    those of how the model was saved or run (dtype, transformers version, use_cache) is equal. The
    same shapes can hide another function (4 heads of 16 units or 8 of 8).

    Raises:
        RebasinError: the first entry that differs, with both values.
    """
    configs = []
    for folder in (folder_a, folder_b):
        path = os.path.join(os.fspath(folder), CONFIG)
        try:
            with open(path, encoding="utf-8") as f:
                configs.append(json.load(f))
        except (OSError, ValueError) as e:
            raise RebasinError(f"{path!r} cannot be read: {' '.join(str(e).split())}") from None
    a, b = configs
    for key in list(a) + [k for k in b if k not in a]:
        if key in _RUN_ENTRIES or a.get(key) == b.get(key):
            continue
        value = lambda c: repr(c[key]) if key in c else "absent"  # noqa: E731
        raise RebasinError(f"the config.json of A and B differ in {key!r} ({value(a)} in A, {value(b)} in B); "
                           "A and B must be one architecture")


def checkpoint_names(model: Any, stored: Any) -> dict[str, str]:
    """Stored checkpoint name -> the name ``model`` uses, as ``from_pretrained`` renames them.

    transformers 5 renames some checkpoint entries on load and back on save (GPT-NeoX's
    ``embed_out`` is the model's ``lm_head``; legacy ``gamma``/``beta``), by the list of transforms
    that ``get_model_conversion_mapping`` returns (the function PEFT uses); transformers 4 stores
    the model's own names. A checkpoint whose tensors transformers *converts* on load (experts
    merged into one tensor, say) is refused: its stored tensors are not the model's."""
    own = model.state_dict()
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key
    except ImportError:  # transformers 4.x: no renaming on load
        return {k: k for k in stored}
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if not isinstance(t, WeightRenaming)]
    names = {}
    for key in stored:
        name, converted = rename_source_key(key, renamings, converters, getattr(model, "base_model_prefix", None), own)
        if converted is not None:
            raise RebasinError(
                f"checkpoint entry {key!r} is stored in a layout that transformers converts on load "
                f"({converted}); the rebasin command reads checkpoints that store the model's own "
                "tensors: load it with from_pretrained and align the models from Python")
        names[key] = name
    if len(set(names.values())) != len(names):
        raise RebasinError("two checkpoint entries are renamed to one name of the model; save the checkpoint "
                           "again with this transformers version's save_pretrained")
    return names
