"""Build configuration that pyproject.toml cannot express: the optional C extension.

Everything else (metadata, dependencies, packages) lives in pyproject.toml.
``pclasses._skim`` is a speed-up only: ``optional=True`` makes setuptools
warn and carry on when it cannot be compiled (no compiler, no Python
headers), and ``pclasses.skim`` then falls back to its pure-Python twin.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pclasses._skim",
            sources=["src/pclasses/_skim.c"],
            optional=True,
        )
    ],
)
