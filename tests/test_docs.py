"""The examples in the docstrings run and print what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["rebasin_rs._lap", "rebasin_rs._spec", "rebasin_rs._matching", "rebasin_rs.specs", "rebasin_rs._merge",
           "rebasin_rs._errors"]
TORCH_MODULES = ["rebasin_rs.torch", "rebasin_rs.torch._apply", "rebasin_rs.torch._align", "rebasin_rs.torch._merge",
                 "rebasin_rs.torch.infer._infer", "rebasin_rs.torch.infer._registry"]


@pytest.mark.parametrize("name", MODULES + TORCH_MODULES)
def test_docstring_examples(name):
    if name in TORCH_MODULES:
        pytest.importorskip("torch")
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0, f"{name} has no example"
