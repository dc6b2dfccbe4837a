import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    """`vilg` commands called in-process set the thread count; keep the suite on one."""
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run directory trained with the `tiny` preset (a few seconds)."""
    from vilg.app.train.presets import get_preset
    from vilg.app.train.run import train_run

    out = tmp_path_factory.mktemp("run")
    train_run(get_preset("tiny"), out, progress=False, log=lambda *a: None)
    return out


@pytest.fixture(scope="module")
def small_data():
    """64 train / 16 val shapes scenes at 48 px, a text tokenizer and an untrained small VQ."""
    from small_trainer import make_small_data

    return make_small_data()
