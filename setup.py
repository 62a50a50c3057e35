"""Build script: the C core becomes the cffi extension pydarknet._core."""
import os
import sys

from setuptools import setup

# cffi's builder module lives inside the package; make it importable from a
# source checkout during the build.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

setup(cffi_modules=["pydarknet/_build_ffi.py:ffibuilder"])
