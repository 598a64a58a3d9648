"""Shared test settings: one torch thread, and every ``device`` argument run on CPU and CUDA."""
import os

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


@pytest.fixture(autouse=True, scope="session")
def _data_home(tmp_path_factory):
    """Caches the library writes by default (METIS partitions) go to a temporary folder,
    not the user's ``~/.cache``, unless ``VQGNN_DATA`` says where."""
    if "VQGNN_DATA" in os.environ:
        yield
        return
    os.environ["VQGNN_DATA"] = str(tmp_path_factory.mktemp("vqgnn_data"))
    yield
    del os.environ["VQGNN_DATA"]
