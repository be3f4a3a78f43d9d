"""Shared test fixtures. Tests read reference data only from tests/data (never ../shared)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


def load_json(name: str):
    """Load a JSON file from tests/data."""
    with open(DATA_DIR / name, encoding="utf-8") as handle:
        return json.load(handle)
