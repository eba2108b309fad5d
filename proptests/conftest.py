"""Hypothesis profiles: ``ci`` (bounded, the default) and ``deep`` (long).

Choose with ``PCLASSES_HYPOTHESIS_PROFILE=deep``.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "deep",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("PCLASSES_HYPOTHESIS_PROFILE", "ci"))
