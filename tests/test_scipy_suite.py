"""scipy's own tests of ``linear_sum_assignment``, run against ``rebasin_rs.linear_sum_assignment``.

Drop-in means scipy's test file passes with only its import replaced. The file is read at test
time from the installed scipy (``scipy/optimize/tests/test_linear_assignment.py``; it is never
copied here), its one import of ``linear_sum_assignment`` is replaced by ours, and the patched
source is compiled under the original file name (line numbers unchanged, so tracebacks show
scipy's lines) and executed as a module. Its test functions, with their parametrize marks, are
then collected here under their own names: each scipy test passes or fails on its own.

When scipy's tests are not installed the suite is skipped with the reason, except where
``REBASIN_REQUIRE_SCIPY_SUITE=1`` (set by ``.ci/run``): there a missing file is a failure.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import types
from pathlib import Path

import pytest

import rebasin_rs

_IMPORT = re.compile(r"^from scipy\.optimize import linear_sum_assignment[ \t]*$", re.MULTILINE)
_OURS = "from rebasin_rs import linear_sum_assignment"
_REQUIRED = os.environ.get("REBASIN_REQUIRE_SCIPY_SUITE") == "1"


def _find() -> tuple[Path | None, str]:
    """The installed scipy test file, or None and why not."""
    spec = importlib.util.find_spec("scipy")
    if spec is None or spec.origin is None:
        return None, "scipy is not installed (pip install scipy)"
    path = Path(spec.origin).parent / "optimize" / "tests" / "test_linear_assignment.py"
    if not path.is_file():
        return None, (
            f"the installed scipy does not ship its tests ({path} is missing); "
            "install a scipy wheel that includes them (the PyPI wheels do)"
        )
    return path, ""


def _load(path: Path) -> types.ModuleType:
    """scipy's test module, with our ``linear_sum_assignment`` in place of scipy's."""
    source = path.read_text(encoding="utf-8")
    patched, count = _IMPORT.subn(_OURS, source)
    if count != 1:
        raise RuntimeError(
            f"{path}: expected exactly one line 'from scipy.optimize import "
            f"linear_sum_assignment', found {count}; scipy's test file changed, update "
            "tests/test_scipy_suite.py"
        )
    # scipy parametrizes one test with an `itertools.product` from its csgraph tests, which
    # pytest deprecates (a one-shot iterator); hand it a list of the same cases instead.
    try:
        from scipy.sparse.csgraph.tests import test_matching as cases
    except ImportError:
        pass  # the exec below reports it
    else:
        if not isinstance(cases.linear_sum_assignment_test_cases, (list, tuple)):
            cases.linear_sum_assignment_test_cases = list(cases.linear_sum_assignment_test_cases)
    name = "_scipy_test_linear_assignment_on_rebasin_rs"
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module
    exec(compile(patched, str(path), "exec"), module.__dict__)
    if module.linear_sum_assignment is not rebasin_rs.linear_sum_assignment:
        raise RuntimeError(f"{path}: the patched module does not use rebasin_rs")
    return module


_PATH, _WHY = _find()
_SCIPY_TESTS: list[str] = []

if _PATH is not None:
    _module = _load(_PATH)
    for _name, _obj in vars(_module).items():
        if _name.startswith("test") and callable(_obj):
            # Collected here under scipy's own name, parametrize marks and all.
            globals()[_name] = _obj
            _SCIPY_TESTS.append(_name)


def test_scipy_suite_is_present():
    """The harness found scipy's tests and collected them (a skip says why not)."""
    if _PATH is None:
        if _REQUIRED:
            pytest.fail(f"REBASIN_REQUIRE_SCIPY_SUITE=1 but {_WHY}")
        pytest.skip(_WHY)
    # scipy 1.17 has 10 test functions (22 tests with their parameters); fewer would mean the
    # harness lost some.
    assert len(_SCIPY_TESTS) >= 8, _SCIPY_TESTS
