"""The gallery's examples run (on tiny settings) and draw their figures."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_width_trend_runs_and_caches_its_models(tmp_path):
    pytest.importorskip("mnist1d")
    example = load("width_trend")
    args = ["--widths", "16", "32", "--seeds", "2", "--epochs", "1", "--cache", str(tmp_path / "cache"),
            "--out", str(tmp_path / "trend.png")]
    rows = example.main(args)
    assert set(rows) == {16, 32} and (tmp_path / "trend.png").stat().st_size > 0
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 4 and all(p.endswith(".pt") for p in cached)
    again = example.main(args)  # from the cache: the same models, the same barriers
    assert repr(again) == repr(rows)  # (repr: the end-point row holds a NaN)
    for row in rows.values():
        # the aligned loss barrier is never above the naive one on these models
        assert row["weight matching"][0] <= row["naive"][0] + 1e-9


def test_zipit_digits_runs(tmp_path):
    pytest.importorskip("sklearn")
    acc = load("zipit_digits").main(["--width", "32", "--epochs", "5", "--out", str(tmp_path / "z.png")])
    assert (tmp_path / "z.png").stat().st_size > 0
    assert acc["zipit"] > acc["weight matching"]
