"""Shared test settings. Under CI the property-based tests replay one fixed sequence of examples
(a red CI then always means the same failing input); locally each run explores new ones."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
