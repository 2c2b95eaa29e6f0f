"""Helpers every torch room shares: argument checks, devices, model inputs and data batches,
eval mode, progress bars. One version of each."""

from __future__ import annotations

import itertools
import sys
from typing import Any, Iterable, Iterator, Mapping

import torch
from torch import nn

from rebasin_rs._errors import RebasinError


def check_module(model: Any, label: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{label} must be a torch.nn.Module, got {type(model).__name__}")


def check_materialized(model: nn.Module, label: str, names: Iterable[str] | None = None) -> None:
    """RebasinError unless every parameter and buffer of ``model`` (or its state_dict entries
    ``names``) holds data: a meta tensor has none to read (torch says only "Cannot copy out of
    meta tensor"), and permuting one would permute nothing, its weights loaded later in their old
    order. Tracing a meta model is fine."""
    if names is None:
        entries: Iterable = itertools.chain(model.named_parameters(), model.named_buffers())
    else:
        state = model.state_dict(keep_vars=True)
        entries = ((n, state[n]) for n in names if n in state)
    for name, t in entries:
        if isinstance(t, torch.Tensor) and t.is_meta:
            raise RebasinError(
                f"{label} has parameters on the meta device ({name!r}); load its weights first "
                "(e.g. load_state_dict(..., assign=True) or to_empty)", param=name
            )


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without any)."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


def to_device(x: Any, device) -> Any:
    """Tensors inside ``x`` (nested lists, tuples, dicts) moved to ``device``; the rest as is."""
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # a namedtuple takes its fields one by one
        return type(x)(*(to_device(y, device) for y in x))
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(y, device) for y in x)
    if isinstance(x, dict):
        return {k: to_device(y, device) for k, y in x.items()}
    return x


def example_args(example_inputs: Any) -> tuple[tuple, dict]:
    """``example_inputs`` (a tensor, a tuple of positional inputs or a dict of keyword inputs)
    as the forward's ``(args, kwargs)``."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (list, tuple)):
        return tuple(example_inputs), {}
    raise TypeError(
        "example_inputs must be a tensor, a tuple of the forward's positional arguments or a dict "
        f"of its keyword arguments, got {type(example_inputs).__name__}"
    )


def without_cache(model: nn.Module, args: tuple, kwargs: dict) -> dict:
    """``kwargs`` with ``use_cache=False`` added when ``model.forward`` takes a ``use_cache``
    argument that the caller did not set.

    Hugging Face decoders default to ``use_cache=True`` (their ``from_pretrained`` configs say
    so) and then return cache objects that neither torch.fx nor torch.export traces, and that a
    forward pass over data only fills memory with. The forward's own argument is the public
    switch: the model and its config are left as they are."""
    if "use_cache" in kwargs:
        return kwargs
    import inspect

    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return kwargs
    names = [p.name for p in params]
    if "use_cache" not in names:
        return kwargs
    param = params[names.index("use_cache")]
    by_keyword = param.kind is param.KEYWORD_ONLY or (
        param.kind is param.POSITIONAL_OR_KEYWORD and names.index("use_cache") >= len(args))
    return {**kwargs, "use_cache": False} if by_keyword else kwargs


def batch_args(batch: Any) -> tuple[tuple, dict]:
    """The model inputs of one data batch as ``(args, kwargs)``: a dict is keyword inputs, a list
    or tuple is ``(inputs, targets, ...)`` (the first is the input), anything else the input."""
    if isinstance(batch, Mapping):
        return (), dict(batch)
    if isinstance(batch, (list, tuple)):
        return (batch[0],), {}
    return (batch,), {}


def batches(data: Iterable, num_batches: int | None) -> Iterator:
    """The batches of ``data``, at most ``num_batches`` of them."""
    for k, batch in enumerate(data):
        if num_batches is not None and k >= num_batches:
            return
        yield batch


def forward(model: nn.Module, batch: Any, device) -> Any:
    """Runs ``model`` on one data batch's inputs, moved to ``device``."""
    args, kwargs = batch_args(batch)
    return model(*to_device(args, device), **without_cache(model, args, to_device(kwargs, device)))


class eval_mode:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Eval mode and no grad inside, every module's training flag restored after (tracing and
    measuring must not update BatchNorm statistics)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self):
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        self.grad = torch.no_grad()
        self.grad.__enter__()

    def __exit__(self, *exc):
        self.grad.__exit__(*exc)
        for m, t in self.flags:
            m.training = t


def progress_bar(iterable: Iterable, total: int | None, desc: str, progress: bool | None) -> Iterable:
    """tqdm when stderr is a terminal (or ``progress=True`` forces it), else ``iterable`` as is."""
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False)
