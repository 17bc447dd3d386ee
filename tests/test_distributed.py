"""fmlab.distributed: the ring all-reduce, data parallelism by hand and ZeRO-1, each checked
against torch.distributed (gloo, processes forked by launch)."""
import socket
import threading
import time

import pytest
import torch
import torch.distributed as dist
from torch import nn

from fmlab import distributed as fd

# Each rank is forked from this process: what this process imported, the ranks need not import
# again (an optimizer's first construction imports torch._dynamo, about a second).
torch.optim.SGD([torch.zeros(1, requires_grad=True)])
import torch.distributed.optim  # noqa: E402,F401


def mlp(seed=0, width=8):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                         nn.Linear(width, 3))


def batches(steps, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, batch, 6, generator=g)
    return x, torch.randint(0, 3, (steps, batch), generator=g)


def train(rank, world, sync, steps=4, global_batch=8, optimizer="sgd"):
    """``steps`` steps on a batch of ``global_batch`` examples, this rank's share of it; the
    final weights."""
    x, y = batches(steps, global_batch)
    batch = global_batch // world
    model = mlp(seed=rank)  # different on each rank until broadcast
    if sync == "ddp":
        model = nn.parallel.DistributedDataParallel(mlp(seed=0))
    else:
        fd.broadcast_parameters(model)
    bucketed = fd.BucketedGradSync(model, bucket_bytes=64) if sync == "bucketed" else None
    params = list(model.parameters())
    opt = {"sgd": lambda: torch.optim.SGD(params, lr=0.5),
           "adam": lambda: torch.optim.Adam(params, lr=0.05),
           "zero1": lambda: fd.ShardedOptimizer(params, torch.optim.Adam, lr=0.05),
           "torch_zero": lambda: torch.distributed.optim.ZeroRedundancyOptimizer(
               params, torch.optim.Adam, lr=0.05)}[optimizer]()
    for t in range(steps):
        mine = slice(rank * batch, (rank + 1) * batch)
        nn.functional.cross_entropy(model(x[t, mine]), y[t, mine]).backward()
        if sync == "tensor":
            fd.all_reduce_gradients(model)
        elif bucketed is not None:
            bucketed.wait()
        opt.step()
        opt.zero_grad()
    state = {"weights": torch.cat([p.detach().reshape(-1) for p in model.parameters()])}
    if optimizer in ("zero1", "adam"):
        state["state_bytes"] = fd.optimizer_state_bytes(opt)
    if bucketed is not None:
        state["buckets"], state["launched"] = len(bucketed.buckets), bucketed.launched
    return state


@pytest.mark.parametrize("world", [2, 3])
def test_ring_all_reduce_equals_all_reduce_and_sends_what_the_cost_model_says(world):
    def work(rank, world):
        out = []
        for n in (1, 2, 5, 7, 1000):  # fewer values than ranks, odd sizes
            x = torch.arange(n, dtype=torch.float64).reshape(-1, 1) * (rank + 1) + rank
            ref = x.clone()
            sent = fd.ring_all_reduce(x)
            dist.all_reduce(ref)
            out.append((torch.equal(x, ref), sent))
        return out
    results = fd.launch(work, world_size=world)
    for i, n in enumerate((1, 2, 5, 7, 1000)):
        assert all(r[i][0] for r in results), n
        # over the ranks: 2(p-1)/p N values each, on average, whatever N
        assert sum(r[i][1] for r in results) == 2 * (world - 1) * n * 8, n


def test_ring_counts_the_bytes_the_kernel_counts_not_the_parents_traffic():
    """The ranks inherit this process's sockets; what it sends on them meanwhile (a notebook
    kernel's messages, here a thread's) is not theirs."""
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    stop = threading.Event()

    def chatter():
        while not stop.is_set():
            client.sendall(b"x" * 65536)

    def drain():
        while peer.recv(1 << 20):
            pass

    threads = [threading.Thread(target=f, daemon=True) for f in (chatter, drain)]
    for t in threads:
        t.start()

    def work(rank, world):
        x = torch.ones(50_000)
        dist.barrier()
        before = fd.tcp_bytes_sent()
        sent = fd.ring_all_reduce(x)
        time.sleep(0.2)  # the parent's thread sends meanwhile
        dist.barrier()
        measured = fd.tcp_bytes_sent_since(before)
        dist.barrier()  # no rank leaves (gloo would close its connection) before all have read
        return sent, measured, x[0].item()
    try:
        results = fd.launch(work)
    finally:
        stop.set()
        threads[0].join()
        client.close()  # the drain thread reads the end of the stream and returns
        threads[1].join()
        peer.close()
        server.close()
    for sent, measured, value in results:
        assert value == 2.0 and sent == 50_000 * 4
        assert sent <= measured < sent + 2_000, (sent, measured)  # message headers, a barrier


def test_ring_all_reduce_refuses_a_non_contiguous_tensor():
    def work(rank, world):
        fd.ring_all_reduce(torch.zeros(4, 4).t())
    with pytest.raises(fd.RankFailed, match="contiguous"):
        fd.launch(work)


def test_data_parallel_equals_one_process_with_the_whole_batch_and_ddp():
    one = fd.launch(train, "tensor", world_size=1)[0]["weights"]
    for sync in ("tensor", "bucketed", "ddp"):
        results = fd.launch(train, sync)
        assert torch.equal(results[0]["weights"], results[1]["weights"]), sync
        assert (results[0]["weights"] - one).abs().max() < 1e-6, sync
    bucketed = fd.launch(train, "bucketed")[0]
    # three buckets of two tensors (last layer first), each launched inside the backward pass
    assert bucketed["buckets"] == 3 and bucketed["launched"] == [(0, 2), (1, 4), (2, 6)]


def test_without_synchronisation_the_ranks_drift_apart():
    results = fd.launch(train, "none")
    assert (results[0]["weights"] - results[1]["weights"]).abs().max() > 1e-2


@pytest.mark.parametrize("world", [2, 3])
def test_zero1_equals_adam_and_zero_redundancy_optimizer_with_1_over_p_of_the_state(world):
    adam, zero, torch_zero = (fd.launch(train, "tensor", 4, 6, opt, world_size=world)
                              for opt in ("adam", "zero1", "torch_zero"))
    for ours, theirs in ((zero, adam), (zero, torch_zero)):
        for a, b in zip(ours, theirs):
            assert (a["weights"] - b["weights"]).abs().max() < 1e-6
    n = adam[0]["weights"].numel()  # 155: slices of 78 and 77, or 52, 52 and 51
    assert adam[0]["state_bytes"] == 2 * n * 4 + 6 * 4  # two moments, a step count per tensor
    size = -(-n // world)
    slices = [min(size, n - r * size) for r in range(world)]
    assert [z["state_bytes"] for z in zero] == [2 * k * 4 + 4 for k in slices]


def test_bad_input_gets_a_clear_error():
    def unused(rank, world):
        model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        sync = fd.BucketedGradSync(model, bucket_bytes=8)  # buckets for both layers
        # a loss that uses only the first
        model[0](torch.ones(1, 2)).sum().backward()
        sync.wait()
    with pytest.raises(fd.RankFailed, match="did not get all their gradients"):
        fd.launch(unused)

    def twice(rank, world):
        model = nn.Linear(2, 1)
        fd.BucketedGradSync(model)
        model(torch.ones(1, 2)).sum().backward()
        model(torch.ones(1, 2)).sum().backward()
    with pytest.raises(fd.RankFailed, match="second backward pass before wait"):
        fd.launch(twice)

    def no_grad(rank, world):
        model = nn.Linear(2, 1)
        fd.ShardedOptimizer(model.parameters()).step()
    with pytest.raises(fd.RankFailed, match="have no gradient"):
        fd.launch(no_grad)
