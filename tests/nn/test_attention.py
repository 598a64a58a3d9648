"""GlobalAttention: exact modes, the oracle codebook, merged vs per-node, memory, errors."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor

from vqgnn import VQGraph
from vqgnn.errors import ConfigError
from vqgnn.nn import GlobalAttention
from vqgnn.train.meters import SavedTensorMeter

N, D_IN, D_OUT, HEADS = 60, 6, 8, 2


def ring(n: int) -> VQGraph:
    """The graph's edges play no part in global attention; a ring keeps VQGraph valid."""
    src = torch.arange(n)
    return VQGraph(torch.stack([src, (src + 1) % n]), n)


def reference(layer: GlobalAttention, x: Tensor) -> Tensor:
    """Multi-head attention over every row, written out with an explicit softmax."""
    h, d = layer.heads, layer.out_channels // layer.heads
    q = layer.lin_q(x).view(-1, h, d).transpose(0, 1)
    k = layer.lin_k(x).view(-1, h, d).transpose(0, 1)
    v = layer.lin_v(x).view(-1, h, d).transpose(0, 1)
    att = torch.softmax(q @ k.transpose(1, 2) / d ** 0.5, dim=-1)
    return layer.lin_out((att @ v).transpose(0, 1).reshape(x.size(0), -1))


def make_layer(num_codewords: int = N, seed: int = 0, **kwargs) -> GlobalAttention:
    torch.manual_seed(seed)
    return GlobalAttention(D_IN, D_OUT, HEADS, num_nodes=N, num_codewords=num_codewords,
                           **kwargs).double()


def full_gradients(layer: GlobalAttention, x: Tensor, weight: Tensor,
                   nodes: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Full-graph training with the loss sum_{i in nodes} <out_i, weight_i>: the gradient at
    the inputs, at the aggregated outputs, and of every parameter."""
    x = x.clone().requires_grad_()
    out, agg = layer._full(x)
    agg.retain_grad()
    (out[nodes] * weight[nodes]).sum().backward()
    grads = {name: p.grad.clone() for name, p in layer.named_parameters()}
    layer.zero_grad()
    assert x.grad is not None and agg.grad is not None
    return x.grad, agg.grad, grads


def oracle(layer: GlobalAttention, x: Tensor, agg_grad: Tensor) -> None:
    """K = N: every node its own codeword, holding its exact input and gradient."""
    layer.set_codewords(x.detach(), agg_grad, torch.arange(N))


def test_exact_modes_equal_the_explicit_softmax():
    layer = make_layer(chunk_size=7)  # chunks of query rows that do not divide N
    x = torch.randn(N, D_IN, dtype=torch.float64)
    expected = reference(layer, x)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer(x, ring(N)), expected)
    torch.testing.assert_close(layer.inference_all(x, ring(N), chunk_size=11), expected)
    with pytest.raises(ValueError, match=rf"'GlobalAttention.inference_all': 'x' must have "
                                         rf"shape \({N}, {D_IN}\) \(every node's inputs\), "
                                         rf"received \({N}, 3\)"):
        layer.inference_all(x[:, :3])
    with pytest.raises(ValueError, match=rf"received \(10, {D_IN}\)"):
        layer.inference_all(x[:10])  # every node's inputs, as the layer's forward takes


def test_oracle_batch_outputs_equal_full_attention_in_training_and_eval():
    layer = make_layer()
    x = torch.randn(N, D_IN, dtype=torch.float64)
    oracle(layer, x, torch.randn(N, D_OUT, dtype=torch.float64))
    batch = torch.randperm(N)[:17]
    graph = ring(N)
    expected = reference(layer, x)[batch]
    torch.testing.assert_close(layer(x[batch], graph, batch), expected)
    layer.take_captured()
    layer.eval()
    torch.testing.assert_close(layer(x[batch], graph, batch), expected)


@pytest.mark.parametrize("merge", [True, False])
def test_oracle_gradients_equal_full_graph_training(merge: bool):
    """The batch nodes' input gradients equal full-graph training's; the captured gradient
    is the full graph's at the aggregated output; parameter gradients of a partition of the
    nodes into batches add up to the full graph's."""
    layer = make_layer(merge=merge)
    graph = ring(N)
    x = torch.randn(N, D_IN, dtype=torch.float64)
    weight = torch.randn(N, D_OUT, dtype=torch.float64)
    loss_nodes = torch.arange(N)
    x_grad, agg_grad, param_grads = full_gradients(layer, x, weight, loss_nodes)
    oracle(layer, x, agg_grad)
    summed = {name: torch.zeros_like(p) for name, p in layer.named_parameters()}
    for batch in torch.randperm(N).split(13):
        xb = x[batch].clone().requires_grad_()
        (layer(xb, graph, batch) * weight[batch]).sum().backward()
        torch.testing.assert_close(xb.grad, x_grad[batch])
        captured = layer.take_captured()
        assert captured is not None
        torch.testing.assert_close(captured.grad, agg_grad[batch])
        for name, p in layer.named_parameters():
            summed[name] += p.grad
        layer.zero_grad()
    for name, grad in param_grads.items():
        torch.testing.assert_close(summed[name], grad, msg=name)


def test_control_without_the_backward_term_the_gradients_differ():
    layer = make_layer(backward_approx=False)
    graph = ring(N)
    x = torch.randn(N, D_IN, dtype=torch.float64)
    weight = torch.randn(N, D_OUT, dtype=torch.float64)
    x_grad, agg_grad, _ = full_gradients(layer, x, weight, torch.arange(N))
    oracle(layer, x, agg_grad)
    batch = torch.randperm(N)[:20]
    xb = x[batch].clone().requires_grad_()
    (layer(xb, graph, batch) * weight[batch]).sum().backward()
    assert xb.grad is not None
    assert (xb.grad - x_grad[batch]).abs().max() > 1e-2 * x_grad[batch].abs().max()


def test_gradient_nodes_oracle_with_a_loss_on_some_nodes():
    """With a loss on some nodes only, declaring them (set_gradient_nodes) keeps the batch
    gradients exact although the codewords' gradient halves of the others are not zero."""
    layer = make_layer()
    graph = ring(N)
    x = torch.randn(N, D_IN, dtype=torch.float64)
    weight = torch.randn(N, D_OUT, dtype=torch.float64)
    mask = torch.rand(N) < 0.4
    x_grad, agg_grad, _ = full_gradients(layer, x, weight, mask.nonzero().squeeze(1))
    noisy = agg_grad + (~mask).unsqueeze(1) * torch.randn_like(agg_grad)
    oracle(layer, x, noisy)
    layer.set_gradient_nodes(mask)
    batch = torch.randperm(N)[:20]
    xb = x[batch].clone().requires_grad_()
    (layer(xb, graph, batch) * weight[batch] * mask[batch].unsqueeze(1)).sum().backward()
    torch.testing.assert_close(xb.grad, x_grad[batch])


@pytest.mark.parametrize("with_mask", [False, True])
def test_merged_codewords_equal_one_key_per_node_with_repeated_codewords(with_mask: bool):
    """K < N: attention over K codewords with log-multiplicities equals attention over one
    key per out-of-batch node holding its codeword (outputs, input and parameter grads)."""
    merged = make_layer(num_codewords=9)
    x = torch.randn(N, D_IN, dtype=torch.float64)
    merged.set_codewords(torch.randn(9, D_IN, dtype=torch.float64),
                         torch.randn(9, D_OUT, dtype=torch.float64), torch.randint(0, 9, (N,)))
    per_node = copy.deepcopy(merged)
    per_node.merge = False
    if with_mask:
        mask = torch.rand(N) < 0.5
        merged.set_gradient_nodes(mask)
        per_node.set_gradient_nodes(mask)
    graph, batch = ring(N), torch.randperm(N)[:15]
    weight = torch.randn(15, D_OUT, dtype=torch.float64)
    grads = []
    for layer in (merged, per_node):
        xb = x[batch].clone().requires_grad_()
        out = layer(xb, graph, batch)
        (out * weight).sum().backward()
        grads.append((out.detach(), xb.grad, [p.grad.clone() for p in layer.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
    for a, b in zip(grads[0][2], grads[1][2]):
        torch.testing.assert_close(a, b)


def test_codeword_counts_follow_the_assignment_through_updates():
    layer = GlobalAttention(D_IN, D_OUT, HEADS, num_nodes=N, num_codewords=8)
    graph = ring(N)
    x = torch.randn(N, D_IN)
    layer.init_codebook(x)
    mask = torch.rand(N) < 0.5
    layer.set_gradient_nodes(mask)
    for _ in range(4):
        batch = torch.randperm(N)[:16]
        layer(x[batch], graph, batch).pow(2).sum().backward()
        assert layer.update_codebook()
        counts, grad_counts = layer._codeword_counts()
        codes = layer.quantizer.assignment.long()
        assert torch.equal(counts, torch.bincount(codes, minlength=8))
        assert torch.equal(grad_counts, torch.bincount(codes[mask], minlength=8))
        # the health's usage and perplexity come from the kept counts: as a recount's
        assert layer.health() == layer.quantizer.health()
    layer.set_assignment(torch.zeros(N, dtype=torch.long))  # changed outside an update
    assert layer._codeword_counts()[0][0] == N
    assert layer.health().usage == 1 / 8 and layer.health().perplexity == 1.0


def _step_bytes(num_nodes: int, vq: bool, batch_size: int = 256) -> int:
    torch.manual_seed(0)
    layer = GlobalAttention(32, 32, 4, num_nodes=num_nodes, num_codewords=64)
    if vq:
        layer.set_codewords(torch.randn(64, 32), torch.randn(64, 32),
                            torch.randint(0, 64, (num_nodes,)))
        batch = torch.randperm(num_nodes)[:batch_size]
        x = torch.randn(batch_size, 32, requires_grad=True)
        with SavedTensorMeter() as meter:
            meter.add(x)
            out = layer(x, ring(num_nodes), batch)
    else:
        x = torch.randn(num_nodes, 32, requires_grad=True)
        with SavedTensorMeter() as meter:
            meter.add(x)
            out = layer(x)
    out.sum().backward()
    return meter.bytes


def test_step_memory_is_flat_in_n_for_vq_and_grows_for_exact_attention():
    vq = [_step_bytes(n, vq=True) for n in (10**4, 10**5, 10**6)]
    assert max(vq) <= 1.1 * min(vq), vq
    exact = [_step_bytes(n, vq=False) for n in (10**3, 10**4)]
    assert exact[1] > 8 * exact[0], exact
    assert exact[1] > 2 * vq[0]


def test_errors_name_the_argument():
    with pytest.raises(ConfigError, match="'out_channels' \\(10\\) must be divisible by 'heads'"):
        GlobalAttention(4, 10, heads=3, num_nodes=5)
    with pytest.raises(ConfigError, match="'num_nodes' must be an int >= 1, received 0"):
        GlobalAttention(4, num_nodes=0)
    layer = GlobalAttention(4, heads=2, num_nodes=5, num_codewords=2)
    with pytest.raises(ConfigError, match="'x' must have shape \\(n, 4\\)"):
        layer(torch.randn(5, 3))
    with pytest.raises(ConfigError, match="codebook is not initialised"):
        layer(torch.randn(2, 4), ring(5), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="'batch' needs the full graph as a VQGraph"):
        layer(torch.randn(2, 4), None, torch.tensor([0, 1]))


def test_a_vq_attention_step_makes_no_device_sync():
    """Forward, backward and codebook update of a merged VQ attention step: no
    item/bool/int, nonzero, unique, bincount (the codeword counts follow by index_add)."""
    from benchmarks.host_syncs import count_syncs

    layer = GlobalAttention(D_IN, D_OUT, HEADS, num_nodes=N, num_codewords=8)
    graph = ring(N)
    x = torch.randn(N, D_IN)
    layer.init_codebook(x)

    def step() -> None:
        batch = torch.randperm(N)[:16]
        layer(x[batch], graph, batch).pow(2).sum().backward()
        layer.update_codebook()

    step()  # the first step counts the codewords once
    counts = count_syncs(step)
    assert sum(counts.values()) == 0, counts


def test_message_error_of_global_attention():
    layer = make_layer()
    x = torch.randn(N, D_IN, dtype=torch.float64)
    oracle(layer, x, torch.zeros(N, D_OUT, dtype=torch.float64))
    batch = torch.randperm(N)[:17]
    assert layer.message_error(x, ring(N), batch) < 1e-6  # codewords are stored in fp32
    coarse = make_layer(num_codewords=2)
    coarse.init_codebook(x)
    assert coarse.message_error(x, ring(N), batch) > 1e-3


def test_message_error_and_all_reduce_reject_bad_input():
    layer = make_layer(num_codewords=4)
    x = torch.randn(N, D_IN, dtype=torch.float64)
    layer.init_codebook(x)
    with pytest.raises(ConfigError, match=r"'x' must have shape \(60, 6\), received \(5, 6\)"):
        layer.message_error(x[:5], ring(N), torch.arange(3))
    with pytest.raises(ConfigError, match="'fn' must be a callable or None, received int"):
        layer.set_all_reduce(3)  # type: ignore[arg-type]


def test_update_without_search_keeps_assignments_and_counts(monkeypatch):
    """``update_codebook(search=False)`` (``VQOptions.search_every``): no nearest-codeword
    search, the assignments stay, and the cached codeword counts still equal a recount
    of the assignment table (steps 0 and 3 of 6 search)."""
    import vqgnn.quantize.codebook as codebook_module

    torch.manual_seed(0)
    n, d, k = 200, 8, 16
    attn = GlobalAttention(d, heads=2, num_nodes=n, num_codewords=k)
    h = torch.randn(n, d)
    attn.init_codebook(h)
    graph = VQGraph(torch.randint(n, (2, 800)), n)
    attn.train()
    calls = []
    nearest = codebook_module.nearest_codeword
    monkeypatch.setattr(codebook_module, "nearest_codeword",
                        lambda *a, **kw: (calls.append(1), nearest(*a, **kw))[1])
    for step in range(6):
        batch = torch.randperm(n)[:40]
        before = attn.quantizer.assignment.clone()
        attn(h[batch].clone().requires_grad_(), graph, batch).pow(2).sum().backward()
        search = step % 3 == 0
        assert attn.update_codebook(search=search)
        if not search:
            assert torch.equal(before, attn.quantizer.assignment)
        counts, _ = attn._counts
        assert torch.equal(counts, torch.bincount(attn.quantizer.assignment.long(),
                                                  minlength=k))
    assert len(calls) == 2
