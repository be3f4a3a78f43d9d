"""One local Spark session for the whole test process (few jobs, 2 cores: CI's budget).

Skips with the reason when pyspark (the ``[spark]`` extra) or a Java runtime (``.ci/run``
installs Debian's ``default-jre-headless``) is missing.
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest

_SESSION: dict[str, Any] = {}


def spark_session() -> Any:
    """The process's local[2] Spark session (created once, stopped at exit by pyspark)."""
    if "spark" not in _SESSION:
        pytest.importorskip("pyspark", reason="pyspark is the [spark] extra")
        if shutil.which("java") is None:
            pytest.skip("no Java runtime: .ci/run installs default-jre-headless")
        from site_agent.connectors.spark import get_session

        _SESSION["spark"] = get_session({"master": "local[2]", "app_name": "fedsynth-tests"})
    return _SESSION["spark"]
