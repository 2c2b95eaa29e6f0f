"""Files: atomic writes that never replace an input, and checkpoints (safetensors or ``.pt``
loaded with ``weights_only=True``)."""

from __future__ import annotations

import os
import tempfile
from typing import Any, Iterable

from rebasin_rs._errors import RebasinError

__all__ = ["atomic_write", "check_output_path", "load_checkpoint", "save_checkpoint"]


def check_output_path(out: Any, inputs: Iterable[Any] = ()) -> str:
    """``out`` as a string, refusing a path that is one of ``inputs`` (the same file by any name)."""
    out = os.fspath(out)
    for path in inputs:
        path = os.fspath(path)
        if os.path.abspath(out) == os.path.abspath(path) or (
            os.path.exists(out) and os.path.exists(path) and os.path.samefile(out, path)
        ):
            raise RebasinError(f"output {out!r} is also an input; write to another file")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise RebasinError(f"output {out!r}: directory {parent!r} does not exist")
    return out


def atomic_write(path: Any, data: bytes) -> None:
    """Writes ``data`` to a temporary file next to ``path`` and renames it over ``path``, so a
    reader never sees half a file and an interrupted write leaves the old file intact."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".rebasin-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load_checkpoint(path: Any) -> dict:
    """A state dict from a ``.safetensors`` file, or from a torch checkpoint loaded with
    ``weights_only=True`` (no pickled code runs). A checkpoint holding ``{"state_dict": ...}`` or
    ``{"model": ...}`` is unwrapped.

    Raises:
        ValueError: the file is missing, unreadable, or holds no state dict.
    """
    import torch

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise RebasinError(f"checkpoint {path!r} does not exist")
    import pickle
    import warnings

    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(path)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise RebasinError(f"checkpoint {path!r} could not be read: it holds objects other than tensors, and "
                         "loading them would run pickled code (refused); save a state dict or use safetensors") from None
    except Exception as e:  # noqa: BLE001 - any reader error becomes one clear message
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise RebasinError(f"checkpoint {path!r} could not be read: {type(e).__name__}: {text[:200]}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise RebasinError(f"checkpoint {path!r} does not hold a state dict of tensors")
    return dict(sd)


def save_checkpoint(sd: dict, path: Any, inputs: Iterable[Any] = ()) -> None:
    """Writes a state dict atomically: safetensors for a ``.safetensors`` path, else ``torch.save``.
    Refuses to write over any of ``inputs``."""
    import io

    import torch

    path = check_output_path(path, inputs)
    tensors = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    if path.endswith(".safetensors"):
        from safetensors.torch import save

        # safetensors refuses tensors that share memory; tied weights are saved once each.
        data = save({k: v.clone() for k, v in tensors.items()})
    else:
        buf = io.BytesIO()
        torch.save(tensors, buf)
        data = buf.getvalue()
    atomic_write(path, data)
