"""Build the optional C extension (exact warm-started LAP); everything else is in
pyproject.toml. Without a compiler the package still works: the solver falls back to scipy."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("weightspace.canonicalize._lapjv",
                             ["weightspace/canonicalize/_lapjv.c"],
                             extra_compile_args=["-O3", "-ffp-contract=off"], optional=True)])
