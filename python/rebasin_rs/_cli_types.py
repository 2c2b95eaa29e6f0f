"""The ``rebasin`` command's option types: numbers, shapes and JSON checked when argparse parses
them, before any file is read (each error names what was expected)."""

from __future__ import annotations

import argparse
import json


def _int_range(low: int, high: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value >= high):
            bound = f">= {low}" if high is None else f"from {low} to {high - 1}"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {text}")
        return value

    return parse


def _gib(text: str) -> int:
    """A size in GiB (a non-negative number) as bytes."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of GiB, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of GiB >= 0, got {text}")
    return int(value * (1 << 30))


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise argparse.ArgumentTypeError(
            f"must be in [0, 1] (0 gives A, 1 gives B), got {text}; to extrapolate, call "
            "rebasin_rs.interpolate from Python")
    return value


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes separated by commas, e.g. 1,3,224,224, "
                                         f"got {text!r}") from None
    if any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(f"every size must be at least 1, got {text!r}")
    return shape


def _kwargs(text: str) -> dict:
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object of keyword arguments, e.g. "
                                         f"'{{\"num_classes\": 10}}', got {text!r}")
    return value
