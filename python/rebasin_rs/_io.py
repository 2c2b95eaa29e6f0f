"""Files: atomic writes that never replace an input or a read-only file, and checkpoints
(safetensors or torch files loaded with ``weights_only=True``).

Outputs are written to a temporary file next to the target and renamed over it. The file gets
the permissions of the file it replaces, or for a new file those of ``open()``: ``0666`` less the
umask (a bare ``tempfile.mkstemp`` would leave every output ``0600``). A symbolic link is followed:
the file it points to is replaced, the link stays.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import tempfile
import threading
from typing import Any, Callable, Iterable, Iterator, Sequence

from rebasin_rs._errors import RebasinError

__all__ = ["CHECKPOINT_SUFFIXES", "atomic_write", "check_input_file", "check_output_path", "load_checkpoint",
           "save_checkpoint"]

#: Extensions :func:`save_checkpoint` writes: safetensors, or ``torch.save``'s zip format.
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")


def check_input_file(path: Any, what: str = "checkpoint") -> str:
    """``path`` as a string if it names a readable, non-empty regular file; otherwise a
    :class:`RebasinError` that says what it is instead (missing, a directory, a device, ...)."""
    path = os.fspath(path)
    if not os.path.lexists(path):
        raise RebasinError(f"{what} {path!r} does not exist")
    if not os.path.exists(path):
        raise RebasinError(f"{what} {path!r} is a broken symbolic link (to {os.readlink(path)!r})")
    if os.path.isdir(path):
        raise RebasinError(f"{what} {path!r} is a directory, not a file")
    if not os.path.isfile(path):
        raise RebasinError(f"{what} {path!r} is not a regular file (a device, a pipe or a socket)")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise RebasinError(f"{what} {path!r} cannot be opened: {e.strerror or e}") from None
    if os.path.getsize(path) == 0:
        raise RebasinError(f"{what} {path!r} is empty")
    return path


def check_output_path(out: Any, inputs: Iterable[Any] = (), *, suffixes: Sequence[str] | None = None) -> str:
    """``out`` as a string if a file can be written there, checked before any work is done.

    Refused: a path that is one of ``inputs`` (the same file by any name), an existing directory
    or non-regular file, a missing or unwritable folder, an existing read-only file (its read-only
    mode is taken as "keep this file"), and, when ``suffixes`` is given, another extension.
    """
    out = os.fspath(out)
    if not out:
        raise RebasinError("the output path is empty")
    target = os.path.realpath(out)
    if os.path.isdir(target):
        raise RebasinError(f"output {out!r} is a directory; name a file inside it")
    if suffixes is not None and not out.lower().endswith(tuple(suffixes)):
        ext = os.path.splitext(out)[1]
        raise RebasinError(f"output {out!r}: {'extension ' + repr(ext) if ext else 'no extension'}; "
                           f"name it {' or '.join(suffixes)} (the format follows the extension)")
    for path in inputs:
        path = os.fspath(path)
        if os.path.abspath(out) == os.path.abspath(path) or target == os.path.realpath(path) or (
            os.path.exists(out) and os.path.exists(path) and os.path.samefile(out, path)
        ):
            raise RebasinError(f"output {out!r} is also an input; write to another file")
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        raise RebasinError(f"output {out!r}: directory {os.path.dirname(os.path.abspath(out))!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RebasinError(f"output {out!r}: directory {parent!r} is not writable")
    if os.path.exists(target):
        st = os.stat(target)
        if not stat.S_ISREG(st.st_mode):
            raise RebasinError(f"output {out!r} exists and is not a regular file (a device, a pipe or a socket)")
        _refuse_read_only(out, target)
    return out


def _refuse_read_only(out: str, target: str) -> None:
    # The mode bits as well as access(): root may write anything, yet a file marked read-only is
    # one its owner meant to keep (the rename would replace it without a word).
    if not os.stat(target).st_mode & 0o222 or not os.access(target, os.W_OK):
        raise RebasinError(f"output {out!r} is read-only and is not replaced; make it writable (chmod u+w) "
                           "or write to another file")


def new_file_mode(*, folder: bool = False) -> int:
    """The mode ``open()`` (or ``mkdir``) gives a new file (folder): ``0666`` (``0777``) less the
    umask, for outputs first made by ``mkstemp`` / ``mkdtemp`` (which give ``0600`` / ``0700``)."""
    return (0o777 if folder else 0o666) & ~_umask()


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:  # Linux: read without changing it
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it
    os.umask(mask)
    return mask


class _Terminated(BaseException):
    """SIGTERM or SIGHUP arrived during :func:`atomic_write`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def removed_on_failure(remove: Callable[[], None]) -> Iterator[None]:
    """Runs the block so that a failure or an interruption inside it calls ``remove`` (which
    deletes a temporary file or folder) before it goes on.

    Ctrl-C arrives as ``KeyboardInterrupt``; SIGTERM and SIGHUP, when the main thread runs the
    block and they have no handler, are caught for its duration and, after ``remove``, end the
    process as they would have (their default action), so no temporary output outlives a kill.
    """
    caught = []

    def on_signal(signum, frame):
        raise _Terminated(signum)

    if threading.current_thread() is threading.main_thread():
        for name in ("SIGTERM", "SIGHUP"):
            signum = getattr(signal, name, None)
            if signum is not None and signal.getsignal(signum) == signal.SIG_DFL:
                signal.signal(signum, on_signal)
                caught.append(signum)
    try:
        yield
    except BaseException as e:
        remove()
        for signum in caught:
            signal.signal(signum, signal.SIG_DFL)
        caught = []
        if isinstance(e, _Terminated):
            signal.raise_signal(e.signum)  # the default action: the process ends by this signal
        raise
    finally:
        for signum in caught:
            signal.signal(signum, signal.SIG_DFL)


def atomic_write(path: Any, data: bytes) -> None:
    """Writes ``data`` to a temporary file next to ``path`` and renames it over ``path``, so a
    reader never sees half a file and an interrupted write leaves the old file intact.

    The file gets the mode of the file it replaces, or ``0666`` less the umask for a new one; a
    read-only file is not replaced (:class:`RebasinError`).
    Ctrl-C, SIGTERM and SIGHUP during the write remove the temporary file; the two signals then
    end the process as they would have (when the main thread writes and they had no handler).
    """
    path = os.path.realpath(os.fspath(path))
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = new_file_mode()
    else:
        _refuse_read_only(path, path)
    tmp = []

    def remove() -> None:
        for name in tmp:
            try:
                os.unlink(name)
            except OSError:
                pass

    with removed_on_failure(remove):
        fd, name = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".rebasin-", suffix=".tmp")
        tmp.append(name)
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            else:
                os.chmod(name, mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(name, path)


def _format(path: str) -> str:
    """'safetensors' or 'torch' from the first bytes (the extension may lie)."""
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: the header's length (8 bytes, little-endian), then the header, a JSON object.
    # A length past the end is a truncated file, which the reader names.
    if head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 0:
        return "safetensors"
    # torch.save writes a zip archive; before torch 1.6, a pickle (protocol 2 or later).
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"
    return ""


def load_checkpoint(path: Any, *, what: str = "checkpoint") -> dict:
    """A state dict from a safetensors file, or from a torch checkpoint loaded with
    ``weights_only=True`` (no pickled code runs); the format is read from the file's first bytes.
    A checkpoint holding ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped.

    Args:
        path: The file.
        what: How messages name the file (e.g. ``"checkpoint"``, ``"data file"``).

    Raises:
        RebasinError: (a ``ValueError``) the file is missing, not a regular file, unreadable, in
            another format, or holds no state dict of tensors.
    """
    import pickle
    import warnings

    import torch

    path = check_input_file(path, what)
    fmt = _format(path)
    if not fmt:
        raise RebasinError(f"{what} {path!r} is neither a safetensors file nor a torch checkpoint (its first bytes "
                           "are neither's); save it with safetensors.torch.save_file or torch.save")
    try:
        if fmt == "safetensors":
            from safetensors.torch import load_file

            sd = load_file(path)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise RebasinError(f"{what} {path!r} could not be read: it holds objects other than tensors, and "
                           "loading them would run pickled code (refused); save a state dict or use "
                           "safetensors") from None
    except Exception as e:  # noqa: BLE001 - any reader error becomes one clear message
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise RebasinError(f"{what} {path!r} could not be read as a {fmt} file (truncated or corrupt?): "
                           f"{type(e).__name__}: {text[:200]}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise RebasinError(f"{what} {path!r} does not hold a state dict of tensors")
    if not sd:
        raise RebasinError(f"{what} {path!r} holds no tensors")
    return dict(sd)


def save_checkpoint(sd: dict, path: Any, inputs: Iterable[Any] = ()) -> None:
    """Writes a state dict atomically, in the format the extension names: safetensors for
    ``.safetensors``, ``torch.save`` for ``.pt`` / ``.pth``; another extension is refused.
    Refuses to write over any of ``inputs`` or over a read-only file."""
    import io

    import torch

    path = check_output_path(path, inputs, suffixes=CHECKPOINT_SUFFIXES)
    tensors = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    if path.lower().endswith(".safetensors"):
        from safetensors.torch import save

        # safetensors refuses tensors that share memory; tied weights are saved once each.
        data = save({k: v.clone() for k, v in tensors.items()})
    else:
        buf = io.BytesIO()
        torch.save(tensors, buf)
        data = buf.getvalue()
    atomic_write(path, data)
