"""Hypothesis profiles for the whole suite.

``default`` (``make test``): reproducible (derandomized: the same examples on every run), no
deadline (the machine may be busy), no example database. ``fuzz`` (``make fuzz``, or
``HYPOTHESIS_PROFILE=fuzz``): random examples, many more of them (``FUZZ_EXAMPLES`` per test,
10000 unless set), no deadline; a failure prints the ``@reproduce_failure`` blob and is kept in an
example database, so the next run tries it first.

Whatever hypothesis stores (that database, its caches) goes to ``HYPOTHESIS_STORAGE_DIRECTORY``,
by default ``taube-hypothesis`` under the temporary directory: never into the working tree.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.database import DirectoryBasedExampleDatabase

PROFILE_VARIABLE = "HYPOTHESIS_PROFILE"
STORAGE = Path(os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY")
               or Path(tempfile.gettempdir()) / "taube-hypothesis")
set_hypothesis_home_dir(STORAGE)

settings.register_profile(
    "default",
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "10000")),
    deadline=None,
    derandomize=False,
    database=DirectoryBasedExampleDatabase(STORAGE / "examples"),
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get(PROFILE_VARIABLE, "default"))
