"""The version of fedsynth: the one place it is written.

pyproject.toml reads it (``[tool.setuptools.dynamic]``), ``fedsynth.__version__`` and
``fedsynth version`` re-export it, the container image installs the wheel built from it,
and tests/unit/test_version.py checks every copy a deployment file must spell out (Helm
chart, compose default image, documented image tags).
"""

__version__ = "0.1.0"
