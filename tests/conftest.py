import pytest
import torch


def _cuda_ready() -> bool:
    if not torch.cuda.is_available():
        return False
    import vilg

    return bool(vilg.build_info()["cuda"])


def pytest_collection_modifyitems(config, items):
    if _cuda_ready():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU and vilg built with CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def gen():
    """A fresh, seeded generator per test: random inputs, reproducible failures."""
    return torch.Generator().manual_seed(1234)
