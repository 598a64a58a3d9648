"""Pure codebook math: EMA, Laplace smoothing, chunked assignment, k-means, perplexity."""
from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from vqgnn.quantize import functional as F
from vqgnn.quantize.functional import (
    batch_statistics,
    ema_inplace,
    has_faiss,
    kmeans,
    kmeans_faiss,
    kmeans_torch,
    laplace_smoothing,
    nearest_codeword,
    perplexity,
)

NEEDS_FAISS = pytest.mark.skipif(not has_faiss(), reason="faiss is not installed")


def blobs(device: str = "cpu") -> torch.Tensor:
    """60 points in 3 well-separated 2-D Gaussian blobs (20 each, std 0.1, centres 10 apart)."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = centres.repeat_interleave(20, 0) + 0.1 * torch.randn(60, 2, generator=gen)
    return x.to(device)


def true_labels() -> torch.Tensor:
    return torch.arange(3).repeat_interleave(20)


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two labelings define the same partition (equal up to relabelling)."""
    pairs = torch.unique(torch.stack([a.cpu(), b.cpu()]), dim=1)
    return pairs.size(1) == torch.unique(a).numel() == torch.unique(b).numel()


# --- EMA, Laplace smoothing, batch statistics ---------------------------------------------


def test_ema_inplace_hand_case():
    buf = torch.tensor([2.0, 4.0])
    ema_inplace(buf, torch.tensor([4.0, 0.0]), decay=0.75)
    assert_close(buf, torch.tensor([2.5, 3.0]))  # 0.75 * b + 0.25 * n
    ema_inplace(buf, torch.tensor([1.0, 1.0]), decay=0.0)  # decay 0: the new value
    assert_close(buf, torch.tensor([1.0, 1.0]))


def test_laplace_smoothing_hand_case_keeps_total_and_is_positive():
    counts = torch.tensor([0.0, 3.0, 1.0])
    out = laplace_smoothing(counts, eps=0.1)
    # (N_k + eps) / (sum N + K eps) * sum N = (N_k + 0.1) / 4.3 * 4
    assert_close(out, torch.tensor([0.4, 12.4, 4.4]) / 4.3)
    assert_close(out.sum(), counts.sum())
    assert bool((out > 0).all())


def test_laplace_smoothing_small_eps_is_near_identity():
    counts = torch.tensor([5.0, 2.0, 1.0])
    assert_close(laplace_smoothing(counts, eps=1e-9), counts)


def test_batch_statistics_hand_case(device):
    codes = torch.tensor([0, 2, 0], device=device)
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], device=device)
    counts, sums = batch_statistics(codes, x.half(), num_codewords=3)
    assert counts.dtype == sums.dtype == torch.float32
    assert_close(counts, torch.tensor([2.0, 0.0, 1.0], device=device))
    assert_close(sums, torch.tensor([[6.0, 8.0], [0.0, 0.0], [3.0, 4.0]], device=device))


# --- nearest codeword -----------------------------------------------------------------------


def test_nearest_codeword_docstring_case():
    out = nearest_codeword(torch.tensor([[0.0], [9.0]]), torch.tensor([[1.0], [8.0]]))
    assert out.dtype == torch.int64
    assert out.tolist() == [0, 1]


@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
def test_nearest_codeword_chunked_equals_brute_force(device, chunk_size):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(20, 4, generator=gen).to(device)
    codewords = torch.randn(6, 4, generator=gen).to(device)
    expected = torch.cdist(x, codewords).argmin(dim=1)
    assert torch.equal(nearest_codeword(x, codewords, chunk_size=chunk_size), expected)


def test_nearest_codeword_chunks_by_distances_too(monkeypatch):
    # 10 distances per chunk with K = 6: one row per chunk, whatever chunk_size says.
    monkeypatch.setattr(F, "SEARCH_ENTRIES", 10)
    gen = torch.Generator().manual_seed(2)
    x, codewords = torch.randn(20, 4, generator=gen), torch.randn(6, 4, generator=gen)
    expected = torch.cdist(x, codewords).argmin(dim=1)
    calls = []
    argmin = torch.Tensor.argmin
    monkeypatch.setattr(torch.Tensor, "argmin",
                        lambda self, *a, **k: calls.append(self.shape) or argmin(self, *a, **k))
    out = nearest_codeword(x, codewords, chunk_size=1000)
    assert torch.equal(out, expected)
    assert calls == [torch.Size([1, 6])] * 20


def test_nearest_codeword_memory_is_bounded_by_the_distance_chunk():
    from vqgnn.train.meters import TensorMemoryMeter

    x, codewords = torch.randn(32768, 8), torch.randn(1024, 8)
    with TensorMemoryMeter() as meter:
        nearest_codeword(x, codewords)
    # Unchunked: a (32768, 1024) float32 matrix, 128 MiB. Now one chunk's 2^22 distances
    # (16 MiB) at a time, beside the (32768,) int64 output and the small argmins.
    assert meter.peak < 1.1 * (4 * F.SEARCH_ENTRIES + 32768 * 8)


@pytest.mark.parametrize("x_shape, v_shape", [((5,), (3, 5)), ((4, 2), (3, 5)), ((4, 2), (2,))])
def test_nearest_codeword_rejects_bad_shapes(x_shape, v_shape):
    with pytest.raises(ValueError, match=r"nearest_codeword expects x of shape \(N, D\)"):
        nearest_codeword(torch.zeros(x_shape), torch.zeros(v_shape))


@pytest.mark.parametrize("chunk_size", [0, -3])
def test_nearest_codeword_rejects_bad_chunk_size(chunk_size):
    with pytest.raises(ValueError, match=f"'chunk_size' must be >= 1, received {chunk_size}"):
        nearest_codeword(torch.zeros(2, 1), torch.zeros(1, 1), chunk_size=chunk_size)


# --- k-means --------------------------------------------------------------------------------


def test_kmeans_torch_recovers_blobs(device):
    x = blobs(device)
    # Lloyd's from random rows can settle in a local minimum (two seeds in one blob): about
    # 30 % of seeds here, for faiss as for torch. Seed 1 starts in a good basin for both.
    result = kmeans_torch(x, 3, num_iters=20, seed=1)
    assert same_partition(result.assignment, true_labels())
    assert result.counts.tolist() == [20.0, 20.0, 20.0]
    # Converged: the centroids are the means of their clusters.
    for k in range(3):
        assert_close(result.centroids[k], x[result.assignment == k].mean(0))


def test_kmeans_torch_is_deterministic_for_a_seed():
    x = torch.randn(30, 2, generator=torch.Generator().manual_seed(3))
    a, b = kmeans_torch(x, 4, seed=7), kmeans_torch(x, 4, seed=7)
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.assignment, b.assignment)


@NEEDS_FAISS
def test_faiss_and_torch_kmeans_agree_on_blobs():
    x = blobs()
    ft = kmeans_faiss(x, 3, num_iters=20, seed=1)  # seed: see test_kmeans_torch_recovers_blobs
    tt = kmeans_torch(x, 3, num_iters=20, seed=1)
    assert same_partition(ft.assignment, tt.assignment)
    assert same_partition(ft.assignment, true_labels())
    # Match labels through one member of each cluster, then compare centroids.
    perm = torch.empty(3, dtype=torch.long)
    for k in range(3):
        perm[k] = ft.assignment[tt.assignment == k][0]
    assert_close(ft.centroids[perm], tt.centroids, atol=1e-4, rtol=1e-4)
    assert_close(ft.counts[perm], tt.counts)


@pytest.mark.parametrize("backend", ["torch", pytest.param("faiss", marks=NEEDS_FAISS)])
def test_kmeans_with_fewer_points_than_codewords_repeats_rows(backend):
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    result = kmeans(x, 4, num_iters=5, backend=backend)
    assert result.centroids.shape == (4, 2)
    assert result.assignment.shape == (2,)
    # Every centroid is one of the input rows, and each row is its own centroid.
    assert bool((torch.cdist(result.centroids, x).min(dim=1).values < 1e-6).all())
    assert_close(result.centroids[result.assignment], x)
    assert result.counts.sum().item() == 2.0


def test_kmeans_auto_uses_faiss_exactly_when_available(monkeypatch):
    calls = []
    real_torch = F.kmeans_torch

    def fake_faiss(*args, **kwargs):
        calls.append("faiss")
        return real_torch(*args, **kwargs)

    monkeypatch.setattr(F, "kmeans_faiss", fake_faiss)
    x = blobs()
    F.kmeans(x, 3, backend="auto")
    assert calls == (["faiss"] if has_faiss() else [])
    before = len(calls)
    F.kmeans(x, 3, backend="torch")
    assert len(calls) == before
    # Without faiss, 'auto' falls back to torch.
    monkeypatch.setattr(F, "faiss", None)
    assert not F.has_faiss()
    F.kmeans(x, 3, backend="auto")
    assert len(calls) == before


def test_kmeans_faiss_without_faiss_raises_import_error(monkeypatch):
    monkeypatch.setattr(F, "faiss", None)
    with pytest.raises(ImportError, match="kmeans_faiss needs faiss"):
        F.kmeans(torch.zeros(4, 2), 2, backend="faiss")


def test_kmeans_rejects_bad_arguments():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="'backend' must be 'auto', 'faiss' or 'torch', "
                                         "received 'sklearn'"):
        kmeans(x, 2, backend="sklearn")
    with pytest.raises(ValueError, match="'num_codewords' must be >= 1, received 0"):
        kmeans_torch(x, 0)
    with pytest.raises(ValueError, match="'num_iters' must be >= 0, received -1"):
        kmeans_torch(x, 2, num_iters=-1)
    with pytest.raises(ValueError, match=r"kmeans expects x of shape \(N, D\) with N >= 1, "
                                         r"received \(0, 2\)"):
        kmeans_torch(torch.zeros(0, 2), 2)
    with pytest.raises(ValueError, match=r"received \(4,\)"):
        kmeans_torch(torch.zeros(4), 2)


# --- perplexity -----------------------------------------------------------------------------


def test_perplexity_uniform_is_k_and_one_hot_is_one():
    assert_close(perplexity(torch.full((5,), 3.0)), torch.tensor(5.0))
    assert_close(perplexity(torch.tensor([0.0, 7.0, 0.0, 0.0])), torch.tensor(1.0))
    # Two equal codewords out of four: exp(log 2) = 2.
    assert_close(perplexity(torch.tensor([2.0, 0.0, 2.0, 0.0])), torch.tensor(2.0))
