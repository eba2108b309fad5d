"""Build configuration that pyproject.toml cannot express: the optional C extension.

Everything else (metadata, dependencies, packages) lives in pyproject.toml.
``pclasses.record._skim`` is a speed-up only: ``optional=True`` makes setuptools
warn and carry on when it cannot be compiled (no compiler, no Python
headers), and ``pclasses.record.analyze`` then falls back to its pure-Python twin.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pclasses.record._skim",
            sources=["src/pclasses/record/_skim.c"],
            optional=True,
        )
    ],
)
