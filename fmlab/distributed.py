"""Training across processes: collectives, data parallelism and a sharded optimizer, from
scratch and checked against ``torch.distributed``.

Explained in book/08_distributed.ipynb. :func:`launch` runs a function in ``world_size``
processes joined in one process group (gloo on a CPU, NCCL where each process has a GPU) and
returns what each rank returned, in rank order; it forks, so a function defined in a notebook
runs as it is. ``torchrun`` starts the same processes from a script instead. Inside them:

* :func:`ring_all_reduce`: the sum over ranks from sends and receives alone, each rank sending
  2(p-1)/p of the tensor (Patarasuk and Yuan 2009); :func:`tcp_bytes_sent_since` counts what
  a process really sent;
* :func:`broadcast_parameters` and :func:`all_reduce_gradients`: data parallelism by hand, one
  all-reduce per gradient; :class:`BucketedGradSync` launches them in buckets from gradient
  hooks while the backward pass goes on, as ``DistributedDataParallel`` does (Li et al. 2020);
* :class:`ShardedOptimizer`: ZeRO stage 1 (Rajbhandari et al. 2020), each rank keeping the
  optimizer state of a p-th of the parameters; :func:`optimizer_state_bytes` measures it.
"""
from __future__ import annotations

import datetime
import os
import pickle
import socket
import struct
import traceback
import warnings
from typing import Callable

import torch
import torch.distributed as dist

# Sizes of book/08_distributed.ipynb (read with ``profile().pick(SIZES)``): the MLP of the
# data-parallel runs, its per-rank batch and steps, the all-reduce whose bytes are counted, and
# the wider MLP whose step is timed (in the full profile, on every GPU there is).
SIZES = {
    "quick": {"hidden": 32, "batch": 16, "steps": 10, "bytes_n": 1 << 20, "epochs": 3,
              "timing_width": 256, "timing_depth": 4, "timing_batch": 128, "timing_steps": 20},
    "full": {"hidden": 256, "batch": 64, "steps": 20, "bytes_n": 1 << 24, "epochs": 3,
             "timing_width": 4096, "timing_depth": 8, "timing_batch": 512, "timing_steps": 50},
    "smoke": {"hidden": 32, "batch": 16, "steps": 3, "bytes_n": 1 << 16, "timing_width": 64,
              "timing_steps": 2},
}


# Seconds the other ranks get to answer once one has failed.
GRACE = 10.0


class RankFailed(RuntimeError):
    """A rank of :func:`launch` raised: the message holds that rank's traceback."""


def default_backend() -> str:
    """NCCL where CUDA and NCCL are there (one GPU per rank), else gloo."""
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def _rank_main(rank, world_size, store_file, backend, timeout, threads, fn, args, conn) -> None:
    status = 1
    try:
        torch.set_num_threads(threads)
        if backend == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        wait = datetime.timedelta(seconds=timeout)
        store = dist.FileStore(store_file, world_size)
        store.set_timeout(wait)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                                timeout=wait)
        # Every rank connected before any runs fn: a rank whose fn returns at once would
        # otherwise leave the group while another is still connecting to it.
        dist.barrier()
        try:
            out = fn(rank, world_size, *args)
        finally:
            dist.destroy_process_group()
        payload = ("ok", out)
        status = 0
    except BaseException:  # noqa: BLE001 - every failure goes back to the parent as text
        payload = ("error", traceback.format_exc())
    try:
        # The standard pickler: a tensor travels as a copy, not as a shared-memory handle.
        conn.send_bytes(pickle.dumps(payload))
    except Exception:  # noqa: BLE001 - a result that does not pickle
        conn.send_bytes(pickle.dumps(("error", f"rank {rank}'s result could not be sent back:\n"
                                               f"{traceback.format_exc()}")))
    finally:
        conn.close()
        os._exit(status)  # not the parent's exit handlers (a notebook kernel's, for example)


def launch(fn: Callable, *args, world_size: int = 2, backend: str | None = None,
           timeout: float = 120.0, threads: int = 1) -> list:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` processes; their results by rank.

    Each process joins a process group (``backend``: gloo by default on a CPU) before ``fn``
    runs and leaves it after, so ``fn`` may call any collective. The processes are forked from
    this one, so ``fn`` may be defined anywhere, a notebook included; each uses ``threads``
    torch threads. A rank that raises makes :class:`RankFailed` with its traceback; a rank
    that has not answered after ``timeout`` seconds is stopped and :class:`TimeoutError` says
    which. Results come back pickled (tensors as copies).
    """
    import multiprocessing as mp

    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    backend = backend or default_backend()
    if backend == "nccl" and torch.cuda.is_initialized():
        raise RuntimeError("this process has used CUDA already, and a forked process cannot use "
                           "it again: call launch before any CUDA work, or start the ranks with "
                           "torchrun")
    # The rendezvous: a file in a new folder (a store served over TCP needs a port that
    # another process may take first, or a server thread in this process, and a process with
    # such a thread now and then forked a rank that never joined: 3 launches in 300).
    import shutil
    import tempfile

    rendezvous = tempfile.mkdtemp(prefix="fmlab-launch-")
    store_file = os.path.join(rendezvous, "store")
    ctx = mp.get_context("fork")
    procs, conns = [], []
    with warnings.catch_warnings():
        # Python 3.12+ warns (with a process id) when a process with threads forks; the
        # ranks only compute and talk to each other, then leave with os._exit.
        warnings.simplefilter("ignore", DeprecationWarning)
        for rank in range(world_size):
            recv, send = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_rank_main, daemon=True,
                            args=(rank, world_size, store_file, backend, timeout, threads, fn, args,
                                  send))
            p.start()
            send.close()
            procs.append(p)
            conns.append(recv)
    results, failures = [None] * world_size, {}
    try:
        _collect(procs, conns, results, failures, timeout)
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
        for c in conns:
            c.close()
        shutil.rmtree(rendezvous, ignore_errors=True)
    if failures:
        raise RankFailed(_failure_message(failures, world_size))
    return results


def _failure_message(failures: dict[int, str], world_size: int) -> str:
    """The first line names a cause (a report that shows one line shows what went wrong),
    then every failing rank's traceback."""
    rank = min(failures)
    last = failures[rank].strip().splitlines()[-1]
    return (f"{len(failures)} of {world_size} ranks failed; rank {rank}: {last}\n"
            + "\n".join(f"--- rank {r} ---\n{failures[r]}" for r in sorted(failures)))


def _collect(procs, conns, results: list, failures: dict, timeout: float) -> None:
    """Read each rank's answer as it comes. Once a rank has failed, the others get
    :data:`GRACE` seconds more (they may be waiting for it in a collective), then are stopped."""
    import time
    from multiprocessing.connection import wait

    world_size = len(conns)
    waiting = dict(enumerate(conns))
    deadline = time.monotonic() + timeout + 10
    while waiting:
        left = deadline - time.monotonic()
        if failures:
            left = min(left, GRACE)
        ready = wait(list(waiting.values()), timeout=max(left, 0))
        if not ready:
            silent = sorted(waiting)
            if failures:
                for r in silent:
                    failures[r] = (f"stopped: no answer {GRACE:g} s after another rank failed "
                                   f"(waiting for it in a collective?)")
                return
            raise TimeoutError(
                f"rank{'s' if len(silent) > 1 else ''} {', '.join(map(str, silent))} of "
                f"{world_size} gave no result within {timeout:g} s (a collective that another "
                f"rank never joined waits forever: check that every rank calls the same "
                f"collectives in the same order)")
        for rank in [r for r, c in waiting.items() if c in ready]:
            try:
                kind, value = pickle.loads(waiting.pop(rank).recv_bytes())
            except EOFError:
                kind, value = "error", (f"rank {rank} died without a result (exit code "
                                        f"{procs[rank].exitcode})")
            if kind == "ok":
                results[rank] = value
            else:
                failures[rank] = value


def rank_device() -> torch.device:
    """Where this rank computes: its own GPU under NCCL, else the CPU (gloo)."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# --- collectives from point-to-point messages ------------------------------------------------

def ring_all_reduce(tensor: torch.Tensor) -> int:
    """Replace ``tensor`` by its sum over all ranks, by passing chunks round a ring; return the
    bytes this rank sent.

    The p ranks stand in a ring (rank r sends to r+1 and receives from r-1) and the tensor is
    cut into p chunks. *Reduce-scatter*: in step s = 0..p-2 rank r sends chunk (r-s) mod p and
    adds the chunk (r-s-1) mod p it receives to its own, so that after p-1 steps it holds the
    finished sum of chunk (r+1) mod p. *All-gather*: in p-1 more steps every finished chunk is
    passed on round the ring and copied. Each rank sends 2(p-1) chunks, 2(p-1)/p N values on
    average over the ranks for N values, whatever p (Patarasuk and Yuan 2009).
    """
    if not tensor.is_contiguous():
        raise ValueError("ring_all_reduce sums a tensor in place through a flat view of it; "
                         "pass a contiguous tensor (call .contiguous() and copy back)")
    world, rank = dist.get_world_size(), dist.get_rank()
    if world == 1:
        return 0
    chunks = tensor.view(-1).tensor_split(world)  # p contiguous views, sizes differ by <= 1
    right, left = (rank + 1) % world, (rank - 1) % world
    sent = 0
    for gathering in (False, True):
        for s in range(world - 1):
            out = chunks[(rank - s + gathering) % world]
            into = chunks[(rank - s - 1 + gathering) % world]
            incoming = torch.empty_like(into)
            # sent and received together (one group): NCCL would deadlock on two blocking sends
            for req in dist.batch_isend_irecv([dist.P2POp(dist.isend, out, right),
                                               dist.P2POp(dist.irecv, incoming, left)]):
                req.wait()
            if gathering:
                into.copy_(incoming)
            else:
                into.add_(incoming)
            sent += out.numel() * out.element_size()
    return sent


def _sockets(pid: int | str) -> dict[str, int]:
    """The sockets a process holds open: {"socket:[inode]": one of its descriptors}."""
    found = {}
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:  # closed meanwhile (listdir's own descriptor, for one)
                continue
            if link.startswith("socket:"):
                found.setdefault(link, int(fd))
    except OSError:
        pass
    return found


def tcp_bytes_sent() -> dict[str, int] | None:
    """The bytes this process has sent so far on each of its open TCP connections, as the
    kernel counts them (``TCP_INFO``'s ``tcpi_bytes_sent`` less ``tcpi_bytes_retrans``, Linux
    4.19 and later), by socket; None where that cannot be read. See :func:`tcp_bytes_sent_since`.

    gloo carries every collective over TCP (to 127.0.0.1 here). The counts are payload only,
    without TCP/IP headers, and none of another process's traffic. Segments sent again count
    once (on a busy machine TCP resends one now and then, even over loopback). A forked process
    shares the sockets it inherited with its parent (a notebook kernel's, for one), whose counts
    include what the parent sends; those are left out. NCCL between GPUs does not use these
    sockets.
    """
    if not os.path.isdir("/proc/self/fd") or not hasattr(socket, "TCP_INFO"):
        return None
    inherited = _sockets(os.getppid())
    counts = {}
    for link, fd in _sockets("self").items():
        if link in inherited:
            continue
        try:
            s = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        with s:
            if s.family not in (socket.AF_INET, socket.AF_INET6) or s.type != socket.SOCK_STREAM:
                continue
            info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
            if len(info) < 216:  # a kernel before 4.19 has neither count
                return None
            sent, resent = struct.unpack_from("QQ", info, 200)  # tcpi_bytes_sent, _retrans
            counts[link] = sent - resent
    return counts


def tcp_bytes_sent_since(before: dict[str, int] | None) -> int | None:
    """The bytes this process sent over TCP since ``before`` (a :func:`tcp_bytes_sent`): on the
    connections open at both readings, and on those opened since.

    A connection closed in between drops out, its bytes uncounted. gloo closes its connection
    to a rank that has left the group, so read the count before any rank may leave: put a
    barrier after this call, not only before it."""
    now = tcp_bytes_sent()
    if before is None or now is None:
        return None
    return sum(n - before.get(link, 0) for link, n in now.items())


# --- data parallelism ---------------------------------------------------------------------------

@torch.no_grad()
def broadcast_parameters(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s parameters and buffers, so that all start equal."""
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t, src)


@torch.no_grad()
def all_reduce_gradients(module: torch.nn.Module) -> int:
    """Average each gradient over the ranks, one all-reduce per tensor (a sum, divided by p:
    gloo has no average); return how many all-reduces ran."""
    world, calls = dist.get_world_size(), 0
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world
            calls += 1
    return calls


class BucketedGradSync:
    """Average gradients over the ranks in buckets, each all-reduced as soon as the backward
    pass has produced all its gradients, while the pass goes on (Li et al. 2020).

    The backward pass produces gradients roughly from the last layer to the first, so buckets
    are filled in reverse order of ``module.parameters()``, each closed once it holds
    ``bucket_bytes``. A hook (``register_post_accumulate_grad_hook``) counts each parameter's
    gradient in; when its bucket is complete, the bucket's gradients are copied into one flat
    tensor and an asynchronous all-reduce starts. Call :meth:`wait` after ``backward()`` and
    before the optimizer's step: it waits for every bucket and writes the averages back. Every
    rank's autograd runs the same graph, so the buckets start in the same order everywhere, as
    collectives must. ``launched`` lists (bucket, gradients ready by then) for each bucket.
    """

    def __init__(self, module: torch.nn.Module, bucket_bytes: int = 25 * 2**20):
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the module has no parameter that requires a gradient")
        if bucket_bytes <= 0:
            raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
        self.buckets: list[list[torch.Tensor]] = [[]]
        size = 0
        for p in reversed(params):
            if size >= bucket_bytes:
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(p)
            size += p.numel() * p.element_size()
        self._bucket_of = {p: i for i, b in enumerate(self.buckets) for p in b}
        self._hooks = [p.register_post_accumulate_grad_hook(self._ready) for p in params]
        self.launched: list[tuple[int, int]] = []  # in the last backward pass
        self._reset()

    def _reset(self) -> None:
        self._count = [0] * len(self.buckets)
        self._work: dict[int, tuple] = {}

    def _ready(self, p: torch.Tensor) -> None:
        if not any(self._count):  # a new backward pass
            self.launched = []
        i = self._bucket_of[p]
        self._count[i] += 1
        if self._count[i] > len(self.buckets[i]):
            raise RuntimeError("a second backward pass before wait(): call wait() after each "
                               "backward (to accumulate gradients, sum the losses first)")
        if self._count[i] == len(self.buckets[i]):
            flat = torch.cat([q.grad.reshape(-1) for q in self.buckets[i]])
            self._work[i] = (dist.all_reduce(flat, async_op=True), flat)
            self.launched.append((i, sum(self._count)))

    @torch.no_grad()
    def wait(self) -> None:
        """Wait for every bucket's all-reduce and put the averaged gradients in place."""
        missing = [i for i in range(len(self.buckets)) if i not in self._work]
        if missing:
            raise RuntimeError(f"bucket(s) {missing} did not get all their gradients in this "
                               f"backward pass: a parameter the loss does not use never fires "
                               f"its hook; freeze it (requires_grad_(False)) or leave it out")
        world = dist.get_world_size()
        for i, (work, flat) in sorted(self._work.items()):
            work.wait()
            flat /= world
            for q, g in zip(self.buckets[i], flat.split([q.numel() for q in self.buckets[i]])):
                q.grad.copy_(g.view_as(q.grad))
        self._reset()

    def remove(self) -> None:
        """Take the hooks off the parameters."""
        for h in self._hooks:
            h.remove()


# --- a sharded optimizer --------------------------------------------------------------------

class ShardedOptimizer:
    """ZeRO stage 1 (Rajbhandari et al. 2020): each rank keeps the optimizer state of one
    p-th of the parameters only.

    The parameters, laid end to end, make one vector of N values, cut into p slices of
    ceil(N/p) (the last one shorter). Rank r's optimizer (``optimizer_class(..., **options)``,
    Adam by default) holds slice r alone, so its moments take 1/p of the memory. :meth:`step`
    expects gradients already averaged over the ranks (:func:`all_reduce_gradients`, or DDP);
    it updates this rank's slice and all-gathers the slices into every rank's parameters. That
    equals the unsharded optimizer for any optimizer that updates value by value (SGD, Adam,
    AdamW), not for one that uses a whole tensor's norm (LAMB, LARS).
    """

    def __init__(self, params, optimizer_class=torch.optim.Adam, **options):
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("ShardedOptimizer got no parameter that requires a gradient")
        if len({(p.dtype, p.device) for p in self.params}) > 1:
            raise ValueError("the parameters are laid end to end in one vector: give them one "
                             "dtype and one device (or make one ShardedOptimizer per kind)")
        self.world, rank = dist.get_world_size(), dist.get_rank()
        self.numel = sum(p.numel() for p in self.params)
        self.shard_size = -(-self.numel // self.world)
        self.start = min(rank * self.shard_size, self.numel)
        self.stop = min(self.start + self.shard_size, self.numel)
        with torch.no_grad():
            flat = torch.cat([p.reshape(-1) for p in self.params])
        self.shard = torch.nn.Parameter(flat[self.start:self.stop].clone())
        self.optimizer = optimizer_class([self.shard], **options)

    @property
    def state(self):
        """This rank's optimizer state: its slice's moments only."""
        return self.optimizer.state

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        missing = [i for i, p in enumerate(self.params) if p.grad is None]
        if missing:
            raise RuntimeError(f"parameters {missing} have no gradient: an unsharded optimizer "
                               f"would skip them, a slice cannot; freeze them "
                               f"(requires_grad_(False)) before making the optimizer")
        grad = torch.cat([p.grad.reshape(-1) for p in self.params])
        self.shard.grad = grad[self.start:self.stop].clone()
        self.optimizer.step()
        mine = torch.zeros(self.shard_size, dtype=grad.dtype, device=grad.device)
        mine[: self.stop - self.start] = self.shard
        slices = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(slices, mine)
        flat = torch.cat(slices)[: self.numel]
        for p, new in zip(self.params, flat.split([p.numel() for p in self.params])):
            p.copy_(new.view_as(p))


def optimizer_state_bytes(optimizer) -> int:
    """The bytes this process holds in ``optimizer.state`` (Adam: two moments per parameter
    value and a step count per parameter tensor); of a sharded tensor (FSDP's DTensor), the
    local shard. For torch's ``ZeroRedundancyOptimizer`` pass its local optimizer, ``.optim``."""
    local = [getattr(t, "to_local", lambda t=t: t)() for state in optimizer.state.values()
             for t in state.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in local)


__all__ = ["SIZES", "RankFailed", "launch", "default_backend",
           "rank_device", "ring_all_reduce", "tcp_bytes_sent", "tcp_bytes_sent_since",
           "broadcast_parameters", "all_reduce_gradients", "BucketedGradSync",
           "ShardedOptimizer", "optimizer_state_bytes"]
