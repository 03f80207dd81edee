"""Shared fixtures: one tiny synthetic MURA tree per test session."""

import os

# Keep TensorFlow quiet and on the CPU threads we have; set before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from bonenet.synthetic import make_synthetic


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A read-only synthetic MURA-v1.1 folder with 8 train studies per part."""
    return make_synthetic(tmp_path_factory.mktemp("synthetic"), studies_per_part=8, seed=3, progress=False)
