"""Codebook: EMA k-means by hand, consistent init, dead restarts, all-reduce, dtypes, state."""
from __future__ import annotations

import math
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch.testing import assert_close

from vqgnn.quantize.codebook import Codebook, CodebookHealth, noop_all_reduce
from vqgnn.quantize.functional import has_faiss, laplace_smoothing, nearest_codeword

BACKENDS = ["torch", pytest.param("faiss", marks=pytest.mark.skipif(
    not has_faiss(), reason="faiss is not installed"))]


def hand_codebook(counts=(2.0, 2.0), **kwargs) -> Codebook:
    """K=2, D=1, codewords 0 and 10 with the given EMA counts (so S = [0, 10 * N_1])."""
    cb = Codebook(2, 1, **kwargs)
    cb.set_codewords(torch.tensor([[0.0], [10.0]]), torch.tensor(counts))
    return cb


def blobs() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    return centres.repeat_interleave(20, 0) + 0.1 * torch.randn(60, 2, generator=gen)


def reference_step(n_ema, s_ema, codewords, x, decay, eps):
    """One EMA k-means step in float64 with plain tensor code (no restarts)."""
    codes = torch.cdist(x, codewords).argmin(1)
    k = codewords.size(0)
    n = torch.zeros(k, dtype=torch.float64).index_add_(0, codes, torch.ones(len(x)).double())
    s = torch.zeros(k, x.size(1), dtype=torch.float64).index_add_(0, codes, x)
    n_ema = decay * n_ema + (1 - decay) * n
    s_ema = decay * s_ema + (1 - decay) * s
    total = n_ema.sum()
    smoothed = (n_ema + eps) / (total + k * eps) * total
    return n_ema, s_ema, s_ema / smoothed[:, None], codes


# --- EMA update, Laplace smoothing, restarts by hand ------------------------------------------


def test_update_matches_hand_computation():
    cb = hand_codebook(decay=0.5, eps=0.5, dead_threshold=0.0)
    codes = cb.update(torch.tensor([[1.0], [2.0], [9.0]]))
    assert codes.tolist() == [0, 0, 1]
    # n = [2, 1], s = [3, 9]; N = 0.5 [2, 2] + 0.5 [2, 1]; S = 0.5 [0, 20] + 0.5 [3, 9]
    assert_close(cb.cluster_size, torch.tensor([2.0, 1.5]))
    assert_close(cb.embed_sum, torch.tensor([[1.5], [14.5]]))
    # N_hat = (N + 0.5) / (3.5 + 2 * 0.5) * 3.5 = [2.5, 2.0] * 3.5 / 4.5
    # v = S / N_hat = [1.5 * 4.5 / 8.75, 14.5 * 4.5 / 7] = [27/35, 261/28]
    assert_close(cb.embed, torch.tensor([[27 / 35], [261 / 28]]))
    # Relative error of the batch against the codewords it was assigned to (before the step).
    assert_close(cb.last_error, torch.tensor((1.0 + 4.0 + 1.0) / (1.0 + 4.0 + 81.0)))


def test_several_updates_match_float64_reference():
    gen = torch.Generator().manual_seed(0)
    init = torch.randn(4, 3, generator=gen)
    counts = torch.tensor([1.0, 2.0, 3.0, 4.0])
    cb = Codebook(4, 3, decay=0.8, eps=1e-3, dead_threshold=0.0)
    cb.set_codewords(init, counts)
    n_ema, s_ema, v = counts.double(), (init * counts[:, None]).double(), init.double()
    for _ in range(3):
        x = torch.randn(10, 3, generator=gen)
        n_ema, s_ema, v, codes = reference_step(n_ema, s_ema, v, x.double(), 0.8, 1e-3)
        assert torch.equal(cb.update(x), codes)
        assert_close(cb.cluster_size, n_ema.float())
        assert_close(cb.embed_sum, s_ema.float())
        assert_close(cb.embed, v.float())


def test_update_with_precomputed_codes_equals_update_without():
    x = torch.tensor([[1.0], [2.0], [9.0]])
    a, b = hand_codebook(), hand_codebook()
    codes = a.assign(x)
    assert torch.equal(a.update(x, codes), b.update(x))
    assert torch.equal(a.embed, b.embed) and torch.equal(a.cluster_size, b.cluster_size)


def test_dead_codeword_restarts_from_a_batch_vector_with_fresh_statistics():
    eps = 1e-5
    cb = hand_codebook(counts=(2.0, 0.6), decay=0.5, eps=eps, dead_threshold=0.5)
    x = torch.tensor([[1.0], [2.0], [3.0]])  # all nearest to codeword 0
    torch.manual_seed(0)
    pick = int(torch.randint(3, (2,))[1])  # every codeword draws a candidate; 1 takes its own
    torch.manual_seed(0)
    codes = cb.update(x)
    assert codes.tolist() == [0, 0, 0]  # returned codes are those before the restart
    # Codeword 1: N = 0.5 * 0.6 = 0.3 < 0.5, so it restarts from x[pick] with N = 1, S = x.
    assert_close(cb.embed[1], x[pick])
    assert_close(cb.cluster_size[1], torch.tensor(1.0))
    assert_close(cb.embed_sum[1], x[pick])
    assert bool((cb.embed[1:] == x).any())
    # Codeword 0 follows the EMA (its smoothing used the total before the restart, 2.8).
    n0, s0, total = 0.5 * 2.0 + 0.5 * 3.0, 0.5 * 6.0, 2.8
    assert_close(cb.cluster_size[0], torch.tensor(n0))
    assert_close(cb.embed_sum[0], torch.tensor([s0]))
    assert_close(cb.embed[0], torch.tensor([s0 / ((n0 + eps) / (total + 2 * eps) * total)]))


def test_restart_picks_batch_rows_for_every_dead_codeword():
    cb = Codebook(4, 2, decay=0.5, dead_threshold=0.9)
    cb.set_codewords(torch.tensor([[0.0, 0.0], [50.0, 50.0], [60.0, 60.0], [70.0, 70.0]]),
                     torch.tensor([4.0, 1.0, 1.0, 1.0]))
    x = torch.tensor([[0.1, 0.0], [0.0, 0.2], [0.3, 0.3]])
    torch.manual_seed(3)
    cb.update(x)
    # Codewords 1-3 fell to N = 0.5 < 0.9: each is now one of the batch rows.
    for k in (1, 2, 3):
        assert bool((cb.embed[k] == x).all(dim=1).any()), k
    assert_close(cb.cluster_size[1:], torch.ones(3))
    assert_close(cb.embed_sum, cb.embed * cb.cluster_size[:, None])


def test_dead_threshold_zero_disables_restarts_and_zero_counts_stay_finite():
    cb = hand_codebook(decay=0.5, dead_threshold=0.0)
    cb.cluster_size[1] = 0.0  # a codeword with no mass at all (the research code raised here)
    cb.embed_sum[1] = 0.0
    cb.update(torch.tensor([[1.0], [2.0]]))
    assert cb.cluster_size[1].item() == 0.0  # not restarted
    assert bool(torch.isfinite(cb.embed).all())
    assert cb.embed[1].item() == 0.0


def test_laplace_smoothed_counts_used_by_update_keep_total():
    cb = hand_codebook(counts=(3.0, 0.0001), eps=0.1, dead_threshold=0.0)
    smoothed = laplace_smoothing(cb.cluster_size, cb.eps)
    assert_close(smoothed.sum(), cb.cluster_size.sum())
    assert bool((smoothed > 0).all())


# --- consistent initialisation ----------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_init_is_consistent_and_codewords_are_cluster_means(backend):
    x = blobs()
    cb = Codebook(3, 2, kmeans_backend=backend)
    assert not bool(cb.initialized)
    codes = cb.init_(x, seed=1)
    assert bool(cb.initialized)
    assert_close(cb.embed_sum, cb.embed * cb.cluster_size[:, None])
    assert bool((cb.cluster_size > 0).all())
    for k in range(3):
        members = codes == k
        assert cb.cluster_size[k].item() == members.sum().item()
        assert_close(cb.embed[k], x[members].mean(0), atol=1e-5, rtol=1e-5)
    assert torch.equal(codes, cb.assign(x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_init_with_fewer_vectors_than_codewords_gives_positive_counts(backend):
    cb = Codebook(4, 2, kmeans_backend=backend)
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    cb.init_(x)
    assert bool((cb.cluster_size > 0).all())  # empty clusters get N0 = 1
    assert_close(cb.embed_sum, cb.embed * cb.cluster_size[:, None])
    assert_close(cb.embed[cb.assign(x)], x)


def test_first_update_initialises_by_kmeans():
    x = blobs()
    a = Codebook(3, 2, kmeans_backend="torch", dead_threshold=0.0)
    b = Codebook(3, 2, kmeans_backend="torch")
    codes = a.update(x)
    assert bool(a.initialized)
    assert torch.equal(codes, b.init_(x))


def test_set_codewords_defaults_to_unit_counts():
    cb = Codebook(2, 2)
    v = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    cb.set_codewords(v)
    assert_close(cb.cluster_size, torch.ones(2))
    assert_close(cb.embed_sum, v)
    assert bool(cb.initialized)


# --- all-reduce injection -----------------------------------------------------------------------


class Recorder:
    """An all-reduce of two identical workers: records shapes and doubles in place."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, tensor: torch.Tensor) -> None:
        self.shapes.append(tuple(tensor.shape))
        tensor.mul_(2)


def test_default_all_reduce_is_a_noop():
    cb = Codebook(2, 1)
    assert cb.all_reduce_fn is noop_all_reduce
    t = torch.tensor([1.0, 2.0])
    assert noop_all_reduce(t) is None
    assert t.tolist() == [1.0, 2.0]


def test_all_reduce_of_two_identical_workers_equals_one_worker_on_both_batches():
    # Two workers with batch x each hold the statistics of [x; x] after the all-reduce: the
    # codebook must equal a single worker's fed [x; x], not one fed x (N0 and S0 are not
    # doubled, so the EMA of doubled statistics is a different, heavier step).
    x = torch.tensor([[1.0], [2.0], [9.0]])
    recorder = Recorder()
    two = hand_codebook(decay=0.5, eps=0.5, dead_threshold=0.0, all_reduce_fn=recorder)
    one = hand_codebook(decay=0.5, eps=0.5, dead_threshold=0.0)
    single = hand_codebook(decay=0.5, eps=0.5, dead_threshold=0.0)
    two.update(x)
    one.update(torch.cat([x, x]))
    single.update(x)
    assert recorder.shapes == [(2,), (2, 1), (2,)]  # counts, sums, error terms
    for name in ("cluster_size", "embed_sum", "embed", "last_error"):
        assert_close(getattr(two, name), getattr(one, name))
    assert_close(two.cluster_size, torch.tensor([0.5 * 2 + 0.5 * 4, 0.5 * 2 + 0.5 * 2]))
    assert not torch.allclose(two.embed, single.embed)
    assert_close(two.last_error, single.last_error)  # a ratio: the doubling cancels


def test_all_reduce_averages_restart_picks():
    recorder = Recorder()
    cb = hand_codebook(counts=(2.0, 0.6), decay=0.5, dead_threshold=0.5,
                       all_reduce_fn=recorder)
    x = torch.tensor([[1.0], [2.0], [3.0]])
    torch.manual_seed(0)
    pick = int(torch.randint(3, (2,))[1])  # every codeword draws a candidate; 1 takes its own
    torch.manual_seed(0)
    cb.update(x)
    # Summed picks over the summed ones: identical workers restart to their own pick.
    # Every codeword's candidate is reduced (a fixed shape: no device sync on the count).
    assert recorder.shapes[-2:] == [(2, 1), (2, 1)]
    assert_close(cb.embed[1], x[pick])
    assert_close(cb.cluster_size[1], torch.tensor(1.0))


class ThreadAllReduce:
    """A real in-place sum across ``world`` threads, standing in for dist.all_reduce."""

    def __init__(self, world: int = 2) -> None:
        self.barrier = threading.Barrier(world, timeout=5)
        self.slots: list = [None] * world

    def for_rank(self, rank: int):
        def all_reduce(tensor: torch.Tensor) -> None:
            self.slots[rank] = tensor.clone()
            self.barrier.wait()
            total = sum(self.slots)
            self.barrier.wait()
            tensor.copy_(total)
        return all_reduce


def run_workers(fn, world: int = 2):
    with ThreadPoolExecutor(world) as pool:
        return [f.result() for f in [pool.submit(fn, r) for r in range(world)]]


def test_workers_with_different_batches_keep_the_same_codebook():
    comm = ThreadAllReduce()
    gen = torch.Generator().manual_seed(0)
    batches = torch.randn(2, 3, 12, 2, generator=gen)  # (worker, step, B, D)
    init = torch.randn(4, 2, generator=gen)
    books = []
    for rank in range(2):
        cb = Codebook(4, 2, decay=0.7, dead_threshold=0.3, all_reduce_fn=comm.for_rank(rank))
        cb.set_codewords(init)
        books.append(cb)

    def work(rank):
        for step in range(3):
            books[rank].update(batches[rank, step])

    run_workers(work)
    for name in ("cluster_size", "embed_sum", "embed", "last_error"):
        assert_close(getattr(books[0], name), getattr(books[1], name))


def test_workers_self_initialising_in_update_agree():
    comm = ThreadAllReduce()
    gen = torch.Generator().manual_seed(0)
    batches = torch.randn(2, 12, 2, generator=gen)
    books = [Codebook(3, 2, kmeans_backend="torch", dead_threshold=0.0,
                      all_reduce_fn=comm.for_rank(r)) for r in range(2)]
    run_workers(lambda rank: books[rank].update(batches[rank]))
    assert_close(books[0].embed, books[1].embed)


# --- dtypes and devices -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_keep_fp32_buffers(device, dtype):
    x = torch.tensor([[1.0], [2.0], [9.0]], device=device).to(dtype)
    cb = hand_codebook(decay=0.5, eps=0.5).to(device)
    ref = hand_codebook(decay=0.5, eps=0.5).to(device)
    cb.update(x)
    ref.update(x.float())
    for name in ("cluster_size", "embed_sum", "embed", "last_error"):
        assert getattr(cb, name).dtype == torch.float32, name
        assert_close(getattr(cb, name), getattr(ref, name))


def test_update_under_autocast_keeps_fp32_buffers(device):
    dtype = torch.bfloat16
    cb = Codebook(3, 4).to(device)
    cb.init_(torch.randn(30, 4, generator=torch.Generator().manual_seed(0)).to(device))
    lin = torch.nn.Linear(4, 4).to(device)
    with torch.autocast(device_type=device, dtype=dtype):
        h = lin(torch.randn(8, 4, device=device))
        assert h.dtype == dtype
        cb.update(h)
    for name in ("cluster_size", "embed_sum", "embed", "last_error"):
        assert getattr(cb, name).dtype == torch.float32, name
    assert_close(cb.embed_sum, cb.embed * laplace_smoothing(cb.cluster_size, cb.eps)[:, None])


# --- state ---------------------------------------------------------------------------------------


def test_state_dict_round_trip_gives_identical_assignments(device):
    x = blobs().to(device)
    a = Codebook(3, 2, kmeans_backend="torch").to(device)
    a.init_(x, seed=1)
    a.update(x[::2])
    b = Codebook(3, 2).to(device)
    assert not bool(b.initialized)
    b.load_state_dict(a.state_dict())
    assert bool(b.initialized)
    assert torch.equal(a.assign(x), b.assign(x))
    for name, buf in a.named_buffers():
        assert_close(getattr(b, name), buf, rtol=0, atol=0, equal_nan=True)
    assert set(a.state_dict()) == {"initialized", "cluster_size", "embed_sum", "embed",
                                   "last_error"}


def test_to_device_moves_every_buffer(device):
    cb = hand_codebook().to(device)
    for name, buf in cb.named_buffers():
        assert buf.device.type == device, name
    assert cb.update(torch.tensor([[1.0]], device=device)).device.type == device


def test_reset_parameters_forgets_everything_and_repr():
    cb = hand_codebook(decay=0.5)
    cb.update(torch.tensor([[1.0]]))
    cb.reset_parameters()
    assert not bool(cb.initialized)
    assert cb.cluster_size.abs().sum() == 0 and cb.embed.abs().sum() == 0
    assert math.isnan(cb.health().quantization_error)
    assert repr(cb) == ("Codebook(num_codewords=2, dim=1, decay=0.5, dead_threshold=0.01)")


# --- health --------------------------------------------------------------------------------------


def test_health_hand_case():
    cb = hand_codebook(decay=0.5, eps=0.5)
    health = cb.health()
    assert isinstance(health, CodebookHealth)
    assert math.isnan(health.quantization_error)  # no update yet
    assert health.usage == 1.0
    assert health.perplexity == pytest.approx(2.0)  # uniform counts: K
    cb.update(torch.tensor([[1.0], [2.0], [9.0]]))
    health = cb.health()
    assert health.quantization_error == pytest.approx(6 / 86)
    p = torch.tensor([2.0, 1.5]) / 3.5  # counts after the hand-computed update
    assert health.perplexity == pytest.approx(math.exp(float(-(p * p.log()).sum())), rel=1e-6)


def test_health_after_the_kmeans_initialisation_reports_its_error():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(20, 2) + 5, torch.randn(20, 2) - 5])
    cb = Codebook(2, 2)
    codes = cb.init_(x)
    want = (x - cb.embed[codes]).pow(2).sum() / x.pow(2).sum()
    error = cb.health().quantization_error
    assert error == pytest.approx(float(want), rel=1e-5) and 0 < error < 0.2


def test_health_usage_and_one_hot_perplexity():
    cb = Codebook(4, 1, dead_threshold=0.01)
    cb.cluster_size.copy_(torch.tensor([5.0, 0.001, 0.0, 0.0]))
    health = cb.health()
    assert health.usage == 0.25  # only count 5 is above the threshold 0.01
    cb.cluster_size.copy_(torch.tensor([0.0, 5.0, 0.0, 0.0]))
    assert cb.health().perplexity == pytest.approx(1.0)  # one-hot
    cb.cluster_size.copy_(torch.full((4,), 3.0))
    assert cb.health().perplexity == pytest.approx(4.0)
    assert cb.health().usage == 1.0


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_codewords=0, dim=2), "'Codebook': 'num_codewords' must be an int >= 1, received 0"),
    (dict(num_codewords=2.0, dim=2), "'num_codewords' must be an int >= 1, received 2.0"),
    (dict(num_codewords=2, dim=0), "'Codebook': 'dim' must be an int >= 1, received 0"),
    (dict(num_codewords=2, dim=2, decay=1.0), r"'decay' must be in \[0, 1\), received 1.0"),
    (dict(num_codewords=2, dim=2, decay=-0.1), r"'decay' must be in \[0, 1\), received -0.1"),
    (dict(num_codewords=2, dim=2, eps=0.0), "'eps' must be > 0, received 0.0"),
    (dict(num_codewords=2, dim=2, dead_threshold=1.0),
     r"'dead_threshold' must be in \[0, 1\), received 1.0"),
    (dict(num_codewords=2, dim=2, dead_threshold=-0.5),
     r"'dead_threshold' must be in \[0, 1\), received -0.5"),
    (dict(num_codewords=2, dim=2, kmeans_backend="sklearn"),
     "'kmeans_backend' must be 'auto', 'faiss' or 'torch', received 'sklearn'"),
])
def test_constructor_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Codebook(**kwargs)


@pytest.mark.parametrize("method", ["update", "assign", "init_"])
@pytest.mark.parametrize("shape", [(3, 3), (3,), (2, 2, 2)])
def test_wrong_vector_width_is_rejected(method, shape):
    cb = hand_codebook() if method != "init_" else Codebook(2, 2)
    message = f"'Codebook' expects 'x' of shape (N, {cb.dim}), received {shape}"
    with pytest.raises(ValueError, match=re.escape(message)):
        getattr(cb, method)(torch.zeros(shape))


def test_set_codewords_rejects_bad_shapes_and_counts():
    cb = Codebook(2, 2)
    with pytest.raises(ValueError, match=r"'codewords' must have shape \(2, 2\), "
                                         r"received \(3, 2\)"):
        cb.set_codewords(torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"'counts' must be positive with shape \(2,\)"):
        cb.set_codewords(torch.zeros(2, 2), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"received \(3,\)"):
        cb.set_codewords(torch.zeros(2, 2), torch.ones(3))
    assert not bool(cb.initialized)


def test_codebook_math_is_fp32_under_autocast():
    torch.manual_seed(0)
    x = torch.randn(64, 8) * 3
    plain = Codebook(16, 8, kmeans_backend="torch")
    plain.init_(x)
    auto = Codebook(16, 8, kmeans_backend="torch")
    auto.load_state_dict(plain.state_dict())
    batch = torch.randn(32, 8) * 3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (batch @ batch.t()).dtype == torch.bfloat16  # autocast is really on
        codes_auto = auto.update(batch)
    codes_plain = plain.update(batch)
    assert torch.equal(codes_auto, codes_plain)
    for name in ("cluster_size", "embed_sum", "embed"):
        assert getattr(auto, name).dtype == torch.float32
        assert torch.equal(getattr(auto, name), getattr(plain, name))


def test_nearest_codeword_is_exact_under_autocast():
    # In bfloat16 the product x . v rounds 1.003 to 1.0 and picks the wrong codeword.
    x = torch.tensor([[1.0]])
    codewords = torch.tensor([[1.003], [0.996]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert nearest_codeword(x, codewords).tolist() == [0]
