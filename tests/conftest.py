"""Shared test setup. ``scripts/build-dist.sh`` runs this suite against the wheel it installed
into a fresh environment and sets ``REBASIN_EXPECT_INSTALLED`` to that environment: the suite
then refuses to run on any other copy of the package (the source tree, an editable install)."""

from __future__ import annotations

import os


def pytest_configure(config):
    expected = os.environ.get("REBASIN_EXPECT_INSTALLED")
    if expected:
        import rebasin_rs

        where = os.path.realpath(rebasin_rs.__file__)
        if not where.startswith(os.path.realpath(expected)):
            raise RuntimeError(f"REBASIN_EXPECT_INSTALLED={expected} but rebasin_rs is imported from {where}")
