import pytest
import torch

# The tests use small tensors, for which a second intra-op thread buys little, while on a shared
# 2-core machine two OpenMP threads per process spin against each other and slow runs manyfold.
torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="torch device for the tests (default: cpu)")
    parser.addoption("--dtype", default="float64", choices=["float32", "float64"], help="default float64")


@pytest.fixture
def device(request) -> torch.device:
    return torch.device(request.config.getoption("--device"))


@pytest.fixture
def dtype(request) -> torch.dtype:
    return getattr(torch, request.config.getoption("--dtype"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
