"""Hypothesis settings for thinktune's property tests: bounded and repeatable in CI.

Import this module from a property-test module. The ``ci`` profile (the default) runs a fixed number of
examples per test with a derandomized seed and no example database, so CI is deterministic and writes no
``.hypothesis/`` folder. Explore harder locally with ``THINKTUNE_HYPOTHESIS=thorough make test``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "thorough",
    max_examples=2000,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("THINKTUNE_HYPOTHESIS", "ci"))
