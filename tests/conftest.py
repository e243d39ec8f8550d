"""Shared test settings and fixtures. Under CI the property-based tests replay one fixed sequence of examples
(a red CI then always means the same failing input); locally each run explores new ones."""

import os
from pathlib import Path

import pytest
from hypothesis import settings
from serving_helpers import tiny_checkpoint

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory) -> Path:
    """A tiny random LIBERO-shaped checkpoint (two cameras, proprio, chunk 2), built once per session."""
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny_policy"))
