"""RunningStandardizer and FeatureGradientQuantizer: scales, assignments, dtypes, state, errors."""
from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from vqgnn.quantize.codebook import CodebookHealth
from vqgnn.quantize.quantizer import FeatureGradientQuantizer, RunningStandardizer


def make_quantizer(device="cpu", index_dtype=torch.int64, **kwargs) -> FeatureGradientQuantizer:
    """N=6 nodes, D_x=2, D_g=1, K=3, with running statistics of scale 1e3 (x) and 1e-6 (g)."""
    kwargs.setdefault("kmeans_backend", "torch")
    q = FeatureGradientQuantizer(6, 2, 1, 3, index_dtype=index_dtype, **kwargs).to(device)
    gen = torch.Generator().manual_seed(0)
    q.x_norm.update((1e3 * torch.randn(50, 2, generator=gen) + 500.0).to(device))
    q.g_norm.update((1e-6 * torch.randn(50, 1, generator=gen)).to(device))
    return q


# --- RunningStandardizer -------------------------------------------------------------------


def test_standardizer_first_update_sets_batch_statistics_then_moves_by_momentum():
    s = RunningStandardizer(1, momentum=0.25, eps=0.0)
    s.update(torch.tensor([[1.0], [3.0]]))  # mean 2, population variance 1
    assert_close(s.mean, torch.tensor([2.0]))
    assert_close(s.var, torch.tensor([1.0]))
    s.update(torch.tensor([[6.0], [6.0]]))  # mean 6, variance 0
    assert_close(s.mean, torch.tensor([0.75 * 2.0 + 0.25 * 6.0]))
    assert_close(s.var, torch.tensor([0.75]))
    assert_close(s(torch.tensor([[3.0]])), torch.tensor([[(3.0 - 3.0) / 0.75 ** 0.5]]))


def test_standardizer_inverse_round_trip_and_all_reduce_invariance():
    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(0)) * 100 + 7
    a, b = RunningStandardizer(3), RunningStandardizer(3)
    a.update(x)
    b.update(x, all_reduce_fn=lambda t: t.mul_(2))  # two identical workers: same statistics
    assert_close(a.mean, b.mean)
    assert_close(a.var, b.var)
    assert_close(a.inverse(a(x)), x)
    assert_close(a(x).mean(0), torch.zeros(3), atol=1e-5, rtol=0)


def test_standardizer_variance_is_accurate_with_a_large_offset():
    x = 1000.0 + 0.01 * torch.randn(1000, 1, generator=torch.Generator().manual_seed(0))
    s = RunningStandardizer(1, eps=1e-20)  # the gradient half's tiny epsilon
    s.update(x)
    assert_close(s.var.double(), x.double().var(0, unbiased=False), rtol=0.1, atol=0)
    assert s(x).std().item() == pytest.approx(1.0, rel=0.1)


def test_standardizer_rejects_bad_momentum_and_has_repr():
    with pytest.raises(ValueError, match=r"'RunningStandardizer': 'momentum' must be in "
                                         r"\(0, 1\], received 0.0"):
        RunningStandardizer(2, momentum=0.0)
    assert repr(RunningStandardizer(2)) == "RunningStandardizer(dim=2, momentum=0.1, eps=1e-05)"


# --- set_codewords, features, gradients ---------------------------------------------------


def test_set_codewords_round_trips_through_the_standardised_space(device):
    q = make_quantizer(device)
    feats = torch.tensor([[1000.0, -20.0], [3.0, 4e3], [-500.0, 0.5]], device=device)
    grads = torch.tensor([[1e-6], [-3e-6], [0.0]], device=device)
    assignment = torch.tensor([2, 0, 1, 1, 0, 2], device=device)
    q.set_codewords(feats, grads, assignment)
    assert q.initialized
    assert_close(q.features(), feats, rtol=1e-5, atol=1e-3)
    assert_close(q.gradients(), grads, rtol=1e-5, atol=1e-11)
    assert torch.equal(q.assignment, assignment)
    # The codebook itself lives in the standardised space (unit scale, not 1e3 / 1e-6).
    assert q.codebook.embed.abs().max() < 10
    assert q.codebook.embed[:, 2].abs().max() > 0.5


def test_set_codewords_without_assignment_keeps_it():
    q = make_quantizer()
    q.assignment.copy_(torch.tensor([0, 1, 2, 0, 1, 2]))
    q.set_codewords(torch.zeros(3, 2), torch.zeros(3, 1))
    assert q.assignment.tolist() == [0, 1, 2, 0, 1, 2]


# --- update and initialize ---------------------------------------------------------------------


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_update_refreshes_only_the_batch_assignment(index_dtype):
    q = make_quantizer(index_dtype=index_dtype, dead_threshold=0.0)
    feats = torch.tensor([[-1000.0, 0.0], [0.0, 0.0], [1000.0, 0.0]]) + 500.0
    q.set_codewords(feats, torch.zeros(3, 1), torch.full((6,), 1, dtype=torch.long))
    node_idx = torch.tensor([4, 0])
    codes = q.update(node_idx, feats[[2, 0]], torch.zeros(2, 1))
    assert codes.tolist() == [2, 0]
    assert q.assignment.dtype == index_dtype
    assert q.assignment.tolist() == [0, 1, 1, 1, 2, 1]


def test_update_without_search_adds_the_pairs_to_the_stored_codewords(monkeypatch):
    """``search=False``: no distances; each pair joins its node's stored codeword (here
    the far one, not the nearest), and the assignment stays."""
    q = make_quantizer(dead_threshold=0.0, decay=0.5)
    feats = torch.tensor([[-1000.0, 0.0], [0.0, 0.0], [1000.0, 0.0]]) + 500.0
    q.set_codewords(feats, torch.zeros(3, 1), torch.tensor([0, 1, 2, 0, 1, 2]))
    import vqgnn.quantize.codebook as codebook_module

    def no_search(*args, **kwargs):
        raise AssertionError("searched")

    monkeypatch.setattr(codebook_module, "nearest_codeword", no_search)
    node_idx = torch.tensor([2, 3])  # stored codewords 2 and 0
    x = feats[[0, 2]]  # each nearest to the other's codeword
    old = q.codebook.embed.clone()
    codes = q.update(node_idx, x, torch.zeros(2, 1), search=False)
    assert codes.tolist() == [2, 0]
    assert q.assignment.tolist() == [0, 1, 2, 0, 1, 2]
    # In the standardised space (the statistics the update used): decay 0.5 from counts
    # of 1 puts codeword 2 half way to its new pair x[0], codeword 0 half way to x[1],
    # and leaves codeword 1, which got none, where it was (Laplace smoothing aside).
    z = q._vectors(x, torch.zeros(2, 1))
    assert_close(q.codebook.embed[2], (old[2] + z[0]) / 2, rtol=1e-4, atol=1e-4)
    assert_close(q.codebook.embed[0], (old[0] + z[1]) / 2, rtol=1e-4, atol=1e-4)
    assert_close(q.codebook.embed[1], old[1], rtol=1e-4, atol=1e-4)
    monkeypatch.undo()
    codes = q.update(node_idx, x, torch.zeros(2, 1))  # the search again
    assert q.assignment[node_idx].tolist() == codes.tolist()


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_initialize_assigns_the_given_nodes(index_dtype):
    q = FeatureGradientQuantizer(8, 2, 1, 2, index_dtype=index_dtype, kmeans_backend="torch")
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 10.0], [10.0, 10.1]])
    node_idx = torch.tensor([7, 1, 5, 2])
    q.initialize(node_idx, x)  # no gradient yet: its half sits at its mean (zero)
    assert q.initialized
    assert bool(q.x_norm.initialized) and not bool(q.g_norm.initialized)
    a = q.assignment
    assert a.dtype == index_dtype
    assert a[7] == a[1] and a[5] == a[2] and a[7] != a[5]
    assert a[[0, 3, 4, 6]].tolist() == [0, 0, 0, 0]  # untouched
    assert_close(q.features()[a[[7, 5]].long()], torch.tensor([[0.05, 0.0], [10.0, 10.05]]))


def test_both_halves_decide_despite_very_different_scales():
    # Codewords differ by 1 in x (scale 1e3) and by 2e-6 in g (scale 1e-6). In raw space
    # x decides; standardised, the gradient half dominates and must decide.
    q = FeatureGradientQuantizer(4, 1, 1, 2, dead_threshold=0.0)
    q.x_norm.update(torch.tensor([[0.0], [2001.0]]))  # mean 1000.5, std 1000.5
    q.g_norm.update(torch.tensor([[-1e-6], [1e-6]]))  # mean 0, std 1e-6
    feats, grads = torch.tensor([[1000.0], [1001.0]]), torch.tensor([[1e-6], [-1e-6]])
    q.set_codewords(feats, grads)
    x = torch.tensor([[1001.0], [1000.0]])
    g = torch.tensor([[1e-6], [-1e-6]])
    raw = torch.cdist(torch.cat([x, g], 1), torch.cat([feats, grads], 1)).argmin(1)
    assert raw.tolist() == [1, 0]  # what an unstandardised search would give
    codes = q.update(torch.tensor([3, 1]), x, g)
    assert codes.tolist() == [0, 1]
    assert q.assignment[[3, 1]].tolist() == [0, 1]


def test_update_on_an_uninitialised_quantizer_initialises_it():
    q = FeatureGradientQuantizer(5, 1, 1, 2, kmeans_backend="torch")
    x = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
    g = torch.tensor([[1e-6], [1e-6], [-1e-6], [-1e-6]])
    codes = q.update(torch.tensor([0, 1, 2, 3]), x, g)
    assert q.initialized
    assert codes[0] == codes[1] and codes[2] == codes[3] and codes[0] != codes[2]
    assert q.assignment[:4].tolist() == codes.tolist()


# --- state and devices ----------------------------------------------------------------------


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_state_dict_round_trip_gives_identical_assignments(device, index_dtype):
    gen = torch.Generator().manual_seed(1)
    x, g = torch.randn(6, 2, generator=gen).to(device), torch.randn(6, 1, generator=gen).to(device)
    a = FeatureGradientQuantizer(6, 2, 1, 3, index_dtype=index_dtype,
                                 kmeans_backend="torch").to(device)
    a.initialize(torch.arange(6, device=device), x, g)
    a.update(torch.tensor([0, 2, 4], device=device), x[:3], g[:3])
    b = FeatureGradientQuantizer(6, 2, 1, 3, index_dtype=index_dtype).to(device)
    assert not b.initialized
    b.load_state_dict(a.state_dict())
    assert b.initialized
    assert torch.equal(a.assignment, b.assignment) and b.assignment.dtype == index_dtype
    assert_close(a.features(), b.features(), rtol=0, atol=0)
    assert_close(a.gradients(), b.gradients(), rtol=0, atol=0)
    torch.manual_seed(0)
    codes_a = a.update(torch.tensor([5, 1], device=device), x[3:5], g[3:5])
    torch.manual_seed(0)
    codes_b = b.update(torch.tensor([5, 1], device=device), x[3:5], g[3:5])
    assert torch.equal(codes_a, codes_b) and torch.equal(a.assignment, b.assignment)


def test_to_device_moves_every_buffer(device):
    q = make_quantizer().to(device)
    names = {name for name, _ in q.named_buffers()}
    assert {"assignment", "codebook.embed", "x_norm.mean", "g_norm.var"} <= names
    for name, buf in q.named_buffers():
        assert buf.device.type == device, name


def test_reset_parameters_health_and_repr():
    q = make_quantizer()
    q.set_codewords(torch.zeros(3, 2), torch.zeros(3, 1), torch.tensor([0, 1, 2, 0, 1, 2]))
    assert isinstance(q.health(), CodebookHealth) and q.health().usage == 1.0
    q.reset_parameters()
    assert not q.initialized
    assert q.assignment.abs().sum() == 0 and not bool(q.x_norm.initialized)
    assert "num_nodes=6, feature_dim=2, grad_dim=1, num_codewords=3" in repr(q)
    assert q.num_codewords == 3


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_health_reads_usage_and_perplexity_from_the_assignments(index_dtype):
    """A restarted codeword starts with an EMA count of 1, so the codebook's own usage
    reads 1.0; the layer's counts the codewords that nodes are assigned to."""
    q = make_quantizer(index_dtype=index_dtype, dead_threshold=0.5)
    q.set_codewords(torch.zeros(3, 2), torch.zeros(3, 1), torch.tensor([0, 0, 0, 0, 2, 2]))
    q.codebook.cluster_size.copy_(torch.tensor([4.0, 1.0, 2.0]))  # codeword 1: a restart's
    assert q.codebook.health().usage == 1.0
    health = q.health()
    assert health.usage == pytest.approx(2 / 3)  # codewords 0 and 2 hold nodes
    p = torch.tensor([4.0, 2.0]) / 6  # the nodes' spread: 4 and 2 of 6
    assert health.perplexity == pytest.approx(float((-(p * p.log()).sum()).exp()), rel=1e-6)
    q.assignment.fill_(1)  # every node on one codeword
    assert q.health().usage == pytest.approx(1 / 3) and q.health().perplexity == pytest.approx(1)
    kept = torch.tensor([3, 3, 0])  # counts a caller keeps: read as given
    assert q.health(kept).usage == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match=r"'counts' must have shape \(3,\), received \(4,\)"):
        q.health(torch.ones(4))


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_nodes=0), "'FeatureGradientQuantizer': 'num_nodes' must be an int >= 1, "
                        "received 0"),
    (dict(feature_dim=0), "'feature_dim' must be an int >= 1, received 0"),
    (dict(grad_dim=-1), "'grad_dim' must be an int >= 1, received -1"),
    (dict(index_dtype=torch.int16), "'index_dtype' must be torch.int64 or torch.int32, "
                                    "received torch.int16"),
    (dict(num_codewords=0), "'Codebook': 'num_codewords' must be an int >= 1"),
    (dict(decay=1.5), r"'decay' must be in \[0, 1\)"),
])
def test_constructor_rejects_bad_arguments(kwargs, match):
    args = dict(num_nodes=4, feature_dim=2, grad_dim=1, num_codewords=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        FeatureGradientQuantizer(**args)


@pytest.mark.parametrize("method", ["update", "initialize"])
@pytest.mark.parametrize("node_idx, x, g, match", [
    (torch.tensor([0, 1, 2]), torch.zeros(2, 2), torch.zeros(2, 1),
     r"'node_idx' must be 1-D with one entry per row of 'x' \(2\), received shape \(3,\)"),
    (torch.tensor([[0, 1]]), torch.zeros(2, 2), torch.zeros(2, 1),
     r"'node_idx' must be 1-D .* received shape \(1, 2\)"),
    (torch.tensor([0, 1]), torch.zeros(2, 3), torch.zeros(2, 1),
     r"'x' must have shape \(B, 2\), received \(2, 3\)"),
    (torch.tensor([0, 1]), torch.zeros(2, 2), torch.zeros(2, 2),
     r"'g' must have shape \(2, 1\), received \(2, 2\)"),
    (torch.tensor([0, 1]), torch.zeros(2, 2), torch.zeros(3, 1),
     r"'g' must have shape \(2, 1\), received \(3, 1\)"),
])
def test_bad_shapes_name_the_argument(method, node_idx, x, g, match):
    q = make_quantizer()
    with pytest.raises(ValueError, match=r"'FeatureGradientQuantizer': " + match):
        getattr(q, method)(node_idx, x, g)


def test_set_codewords_rejects_bad_shapes_and_assignments():
    q = make_quantizer()
    with pytest.raises(ValueError, match=r"expected features \(3, 2\) and gradients \(3, 1\), "
                                         r"received \(3, 1\) and \(3, 1\)"):
        q.set_codewords(torch.zeros(3, 1), torch.zeros(3, 1))
    with pytest.raises(ValueError, match=r"'assignment' must have shape \(6,\) with values in "
                                         r"\[0, 3\), received \(5,\)"):
        q.set_codewords(torch.zeros(3, 2), torch.zeros(3, 1), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"values in \[0, 3\), received \(6,\)"):
        q.set_codewords(torch.zeros(3, 2), torch.zeros(3, 1), torch.tensor([0, 1, 2, 3, 0, 0]))


def test_initialize_names_the_rows_that_are_not_finite():
    """NaN inputs used to reach faiss's k-means, which failed with its own error (or
    torch's k-means, which clustered NaN)."""
    q = FeatureGradientQuantizer(8, 2, 1, 2, kmeans_backend="torch")
    x = torch.randn(8, 2)
    x[5, 1] = float("nan")
    with pytest.raises(ValueError, match=r"'FeatureGradientQuantizer.initialize': the layer "
                                         r"inputs 'x' hold NaN or infinite values in 1 row\(s\) "
                                         r"\(first: \[5\]\)"):
        q.initialize(torch.arange(8), x)
    g = torch.zeros(8, 1)
    g[2, 0] = float("inf")
    with pytest.raises(ValueError, match=r"the gradients 'g' hold NaN or infinite values in 1 "
                                         r"row\(s\) \(first: \[2\]\)"):
        q.initialize(torch.arange(8), torch.randn(8, 2), g)
    assert not q.initialized
