"""Meters: bytes saved for backward, wall-clock time, peak RSS."""
from __future__ import annotations

import math
import mmap
import os
import time

import pytest
import torch

from vqgnn.train.meters import SavedTensorMeter, Timer, peak_rss_bytes, reset_peak_rss


def test_counts_tensors_saved_for_backward(device):
    resident = torch.zeros(1 << 20, device=device)  # 4 MB allocated before the block
    x = torch.randn(100, device=device, requires_grad=True)
    w = torch.randn(100, device=device, requires_grad=True)
    with SavedTensorMeter(device) as meter:
        y = x * w  # mul saves both factors
        z = torch.ones(1 << 18, device=device)  # 1 MB made inside the block
    assert meter.bytes == 2 * x.nbytes == 800
    y.sum().backward()  # the saved tensors still unpack
    torch.testing.assert_close(x.grad, w)
    if device == "cuda":
        # the peak the block adds: y and z, not what was resident at its start
        assert meter.cuda_peak is not None
        assert z.nbytes + y.nbytes <= meter.cuda_peak < resident.nbytes
    else:
        assert meter.cuda_peak is None


def test_only_what_requires_saving():
    x = torch.randn(100, requires_grad=True)
    w = torch.randn(100)  # no gradient: x need not be saved, only w
    with SavedTensorMeter() as meter:
        x * w
    assert meter.bytes == w.nbytes
    with SavedTensorMeter() as meter:
        (x + w).sum()  # addition saves nothing
    assert meter.bytes == 0


def test_views_of_one_storage_count_once():
    base = torch.randn(200, requires_grad=True)
    with SavedTensorMeter() as meter:
        y = base[:100] * base[100:]  # two views of one storage, both saved
    assert meter.bytes == base.nbytes == 800
    y.sum().backward()


def test_add_counts_inputs_once():
    x = torch.randn(10, 4)
    idx = torch.arange(10)
    with SavedTensorMeter() as meter:
        meter.add(x, idx)
        meter.add(x[:5])  # a view of a counted storage
    assert meter.bytes == x.nbytes + idx.nbytes


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_add_counts_sparse_parts():
    dense = torch.eye(4)
    sparse = dense.to_sparse_coo()
    with SavedTensorMeter() as meter:
        meter.add(sparse)
    assert meter.bytes == sparse._indices().nbytes + sparse._values().nbytes
    parts = (torch.arange(5), torch.arange(4), torch.ones(4))  # crow, col, values
    csr = torch.sparse_csr_tensor(*parts, size=(4, 4), check_invariants=True)
    with SavedTensorMeter() as meter:
        meter.add(csr)
    assert meter.bytes == sum(p.nbytes for p in parts) == 88


def test_nothing_counted_outside_the_block_and_reentry_resets():
    x = torch.randn(50, requires_grad=True)
    w = torch.randn(50, requires_grad=True)
    meter = SavedTensorMeter()
    with meter:
        x * w
    counted = meter.bytes
    x * w * 2  # outside the block
    assert meter.bytes == counted == 400
    with meter:
        pass
    assert meter.bytes == 0


def test_timer_measures_a_sleep(device):
    timer = Timer(device)
    assert math.isnan(timer.seconds)
    with timer:
        time.sleep(0.05)
    assert 0.05 <= timer.seconds < 1.0


def test_peak_rss_bytes():
    peak = peak_rss_bytes()
    assert isinstance(peak, int) and peak > 10 * 2**20  # Python with torch: > 10 MiB
    assert peak_rss_bytes() >= peak  # a peak never decreases


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK),
                    reason="resetting the peak RSS needs a writable /proc/self/clear_refs "
                           "(Linux)")
def test_reset_peak_rss():
    size = 64 * 2**20
    assert reset_peak_rss()
    before = peak_rss_bytes()
    # A fresh anonymous mapping, every page written: new resident memory for sure (an
    # allocator could hand back memory that is already resident).
    block = mmap.mmap(-1, size)
    for offset in range(0, size, mmap.PAGESIZE):
        block[offset] = 1
    raised = peak_rss_bytes()
    assert raised >= before + 48 * 2**20
    block.close()
    assert reset_peak_rss()
    assert peak_rss_bytes() < raised - 32 * 2**20  # the peak starts again from now


def test_tensor_memory_meter_counts_live_storages_created_inside(device):
    from vqgnn.train.meters import TensorMemoryMeter

    x = torch.randn(1000, 100, device=device)  # from before: not counted
    with TensorMemoryMeter() as meter:
        y = x * 2  # 400 KB
        z = y + 1  # 400 KB: peak 800 KB
        del y
        view = z.view(-1)  # a view: no new storage
        x.add_(1)  # in place on a tensor from before: nothing new
        small = z[:10].clone()  # 4 KB
    assert meter.peak == 800_000
    assert meter.live == 404_000
    del view, small
