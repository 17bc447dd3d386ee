"""Training across processes: collectives, data parallelism and a sharded optimizer, from
scratch and checked against ``torch.distributed``.

Explained in book/08_distributed.ipynb. :func:`launch` runs a function in ``world_size``
processes joined in one process group (gloo on a CPU, NCCL where each process has a GPU) and
returns what each rank returned, in rank order; it forks, so a function defined in a notebook
runs as it is. ``torchrun`` starts the same processes from a script instead.
"""
from __future__ import annotations

import datetime
import os
import pickle
import socket
import traceback
import warnings
from typing import Callable

import torch
import torch.distributed as dist


class RankFailed(RuntimeError):
    """A rank of :func:`launch` raised: the message holds that rank's traceback."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the process group's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_up() -> bool:
    """Bring the loopback interface up, as a fresh network namespace leaves it down.

    True when it is up afterwards. Inside such a namespace the processes reach each other on
    127.0.0.1 and nothing else; outside one the interface is already up and nothing changes.
    """
    import fcntl
    import struct

    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sh", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sh", b"lo", 0)))[1]
        if flags & IFF_UP:
            return True
        try:
            fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP))
        except OSError:
            return False
        return True


def default_backend() -> str:
    """NCCL where CUDA and NCCL are there (one GPU per rank), else gloo."""
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def _rank_main(rank, world_size, port, backend, timeout, threads, fn, args, conn) -> None:
    status = 1
    try:
        torch.set_num_threads(threads)
        if backend == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout))
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
    port = free_port()
    ctx = mp.get_context("fork")
    procs, conns = [], []
    with warnings.catch_warnings():
        # Python 3.12+ warns (with a process id) when a process with threads forks; the
        # ranks only compute and talk to each other, then leave with os._exit.
        warnings.simplefilter("ignore", DeprecationWarning)
        for rank in range(world_size):
            recv, send = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_rank_main, daemon=True,
                            args=(rank, world_size, port, backend, timeout, threads, fn, args, send))
            p.start()
            send.close()
            procs.append(p)
            conns.append(recv)
    results, failures = [None] * world_size, []
    try:
        import time

        deadline = time.monotonic() + timeout + 10
        for rank, conn in enumerate(conns):
            left = deadline - time.monotonic()
            if not conn.poll(max(left, 0)):
                raise TimeoutError(
                    f"rank {rank} of {world_size} gave no result within {timeout:g} s (a "
                    f"collective that another rank never joined waits forever: check that every "
                    f"rank calls the same collectives in the same order)")
            try:
                kind, value = pickle.loads(conn.recv_bytes())
            except EOFError:
                kind, value = "error", f"rank {rank} died without a result (exit code " \
                                       f"{procs[rank].exitcode})"
            if kind == "ok":
                results[rank] = value
            else:
                failures.append(f"--- rank {rank} ---\n{value}")
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
        for c in conns:
            c.close()
    if failures:
        raise RankFailed(f"{len(failures)} of {world_size} ranks raised:\n" + "\n".join(failures))
    return results
