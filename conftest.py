"""pytest configuration shared by the package's doctests and the test suite."""

import normflows as nf
import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace: dict) -> None:
    # The docstring examples use these without importing them, as the modules they sit in do.
    doctest_namespace.update(torch=torch, np=np, nf=nf)
