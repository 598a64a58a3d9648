"""Shared test settings: one torch thread, and every ``device`` argument run on CPU and CUDA."""
import pytest
import torch


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise each test that takes ``device`` over 'cpu' and 'cuda'.

    The CUDA case is skipped, saying why, on a machine without a GPU.
    """
    if "device" in metafunc.fixturenames:
        cuda = pytest.param("cuda", marks=pytest.mark.skipif(
            not torch.cuda.is_available(), reason="CUDA is not available on this machine"))
        metafunc.parametrize("device", ["cpu", cuda])


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests use tiny tensors: one thread avoids thread-pool overhead on a shared 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
