"""Public tests of the distributed lab (labs/08_distributed.ipynb).

Every case runs the student's code in ``world_size`` processes joined in a gloo group on
127.0.0.1 (:func:`fmlab.distributed.launch`, which forks them from the process that runs the
case: the grading child, or the student's own kernel for ``check()``). Each rank builds its
inputs from the case (a seed and sizes the parent chose) and hands back plain data: its tensors
and a log of what it sent. The parent computes every reference with single-process torch and
grades:

* q1 ``ring_all_reduce(tensor)``: the sum of the ranks' tensors, in place; every message goes to
  the right-hand neighbour, and a rank sends 2(p-1)/p of the tensor (to within a chunk's
  rounding), which tells a ring from every rank sending its whole tensor to every other one;
* q2 ``GradSync(model, bucket_elems)``: after a few SGD steps each rank holds the weights that
  one process gets by training rank 0's initial weights on the whole batch; one all-reduce per
  bucket, of the bucket's size, each launched during the backward pass;
* q3 ``ZeroAdam(params, ...)``: after a few steps the weights equal ``torch.optim.Adam``'s on the
  whole batch, and each rank's Adam state is exactly its own shard of the reference's state.

The ranks log their messages by wrapping ``torch.distributed.ProcessGroup``'s ``send`` and
``allreduce`` in their own (forked) process: every point-to-point and all-reduce call of
``torch.distributed`` reaches the process group through them.
"""
from __future__ import annotations

import copy
import types

import torch
import torch.distributed as dist

import fmlab.distributed as fmlab_distributed
from fmlab.distributed import launch
from fmlab.grading import Question, Result, expect_close
from fmlab.grading.forbid import expand
from fmlab.grading.messages import describe_error

# The master notebooks beside this folder: out of a graded answer's reach.
PRIVATE = ("../*.ipynb",)
# The cases start processes that talk to each other over 127.0.0.1 (the grader allows that only
# behind a kernel boundary: book/instructors.md).
PROCESSES = True

RANK_TIMEOUT = 20  # seconds a rank waits for a message (gloo's timeout) before it gives up
ATOL, RTOL = 1e-10, 1e-9  # the networks are float64: only the order of additions differs


def _launch_machinery() -> set[str]:
    """The names of fmlab.distributed that :func:`launch` uses (itself included): the grader
    needs them, so they stay on while an answer runs."""
    names, todo = {"launch"}, [launch.__code__]
    while todo:
        code = todo.pop()
        todo += [c for c in code.co_consts if isinstance(c, types.CodeType)]
        for name in code.co_names:
            value = vars(fmlab_distributed).get(name)
            if value is not None and name not in names and callable(value):
                names.add(name)
                if isinstance(value, types.FunctionType):
                    todo.append(value.__code__)
    return names


# fmlab's own collectives, gradient syncs and sharded optimizer: every public function and
# class of fmlab.distributed but the launcher.
FMLAB_OWN = tuple(n for n in expand(["fmlab.distributed.*"])
                  if n.rsplit(".", 1)[1] not in _launch_machinery())


# ---------------------------------------------------------------------------------------------
# Running a case's ranks, logging their messages
# ---------------------------------------------------------------------------------------------

def _on_ranks(case: dict, rank_fn, *args) -> dict:
    """``rank_fn(rank, world, *args)`` on every rank of the case: ``{"ranks": [...]}`` with what
    each returned, or ``{"error": message}`` when the student's code raised on a rank."""

    def guarded(rank, world, *a):
        # Every rank has joined the group before any may leave it: a rank whose answer fails at
        # once would otherwise close the group under a rank that is still connecting.
        dist.barrier()
        try:
            return {"value": rank_fn(rank, world, *a)}
        except BaseException as err:  # noqa: BLE001 - the student's code failed: say how and where
            return {"error": describe_error(err)}

    results = launch(guarded, *args, world_size=case["world_size"], timeout=RANK_TIMEOUT)
    errors = [(r, out["error"]) for r, out in enumerate(results) if "error" in out]
    if errors:
        # A rank whose partner failed first sees its connection close: name the first cause
        rank, message = min(errors, key=lambda e: "gloo" in e[1])
        if "Timed out" in message:
            message += (" (a rank waited for a message that never came: every send needs a "
                        "matching receive on the other rank)")
        return {"error": f"rank {rank} of {case['world_size']}: {message}"}
    return {"ranks": [out["value"] for out in results]}


def _log_calls(method: str, log: list, phase: list | None = None) -> None:
    """In this rank's process: log each ``ProcessGroup.<method>`` call as [peer, elements] (for
    ``send``) or [phase..., elements] (for ``allreduce``)."""
    original = getattr(dist.ProcessGroup, method)

    def logged(self, tensors, *args, **kwargs):
        listed = tensors if isinstance(tensors, (list, tuple)) else [tensors]
        if method == "send":
            where = [int(args[0] if args else kwargs.get("dstRank", -1))]
        else:
            where = list(phase or [])
        log.append(where + [sum(t.numel() for t in listed)])
        return original(self, tensors, *args, **kwargs)

    setattr(dist.ProcessGroup, method, logged)


def _failed(got) -> Result | None:
    if isinstance(got, dict) and isinstance(got.get("error"), str):
        return Result.fail(got["error"])
    if not isinstance(got, dict) or not isinstance(got.get("ranks"), list):
        return Result.fail("the ranks' results did not come back")
    return None


# ---------------------------------------------------------------------------------------------
# q1: ring all-reduce
# ---------------------------------------------------------------------------------------------

def rank_tensor(case: dict, rank: int) -> torch.Tensor:
    """Rank ``rank``'s input of a q1 case."""
    gen = torch.Generator().manual_seed(1000 * case["seed"] + rank)
    dtype = getattr(torch, case.get("dtype", "float64"))
    if dtype.is_floating_point:
        return torch.randn(case["shape"], generator=gen, dtype=dtype)
    return torch.randint(-50, 50, case["shape"], generator=gen, dtype=dtype)


def _ring_rank(rank, world, ring_all_reduce, case):
    sent: list = []
    _log_calls("send", sent)
    tensor = rank_tensor(case, rank)
    returned = ring_all_reduce(tensor)
    returned = returned if isinstance(returned, torch.Tensor) else None
    return {"tensor": tensor, "returned": returned, "sent": sent}


def run_q1(ns, case):
    return _on_ranks(case, _ring_rank, ns["ring_all_reduce"], case)


def grade_q1(case, got):
    failed = _failed(got)
    if failed:
        return failed
    world = case["world_size"]
    expected = sum(rank_tensor(case, r) for r in range(world))
    n = expected.numel()
    low, high = 2 * (world - 1) * (n // world), 2 * (world - 1) * -(-n // world)
    # the ring adds in another order than sum(): float32 differs in its last bits
    atol, rtol = (ATOL, RTOL) if expected.dtype != torch.float32 else (1e-5, 1e-5)
    for rank, out in enumerate(got["ranks"]):
        r = expect_close(out.get("tensor"), expected, atol=atol, rtol=rtol, check_dtype=True,
                         what=f"rank {rank}'s tensor after the call")
        if not r.passed:
            if expect_close(out.get("returned"), expected, atol=atol, rtol=rtol).passed:
                r.message = (f"rank {rank} returned the sum in a new tensor, but the tensor it "
                             f"was given must hold it: write the sum into it, in place")
            return r
        sent = out.get("sent") or []
        strays = sorted({peer for peer, _ in sent if peer != (rank + 1) % world})
        if strays:
            return Result.fail(f"rank {rank} sent to rank(s) {strays}; in a ring, rank {rank} "
                               f"sends only to its right-hand neighbour, rank {(rank + 1) % world}")
        total = sum(elements for _, elements in sent)
        if not low <= total <= high:
            return Result.fail(
                f"rank {rank} sent {total} elements of a {n}-element tensor in {len(sent)} "
                f"message(s); a ring all-reduce over {world} ranks sends 2(p-1)/p of the tensor, "
                f"between {low} and {high} elements (sum with sends and receives, chunk by chunk)")
    return Result.ok()


# ---------------------------------------------------------------------------------------------
# q2 and q3: data-parallel training of a small float64 MLP
# ---------------------------------------------------------------------------------------------

def make_model(case: dict, seed: int) -> torch.nn.Module:
    """The case's MLP (``widths``, tanh between layers), float64, initialised from ``seed``;
    the parameters ``case["frozen"]`` names do not train."""
    torch.manual_seed(seed)
    widths, layers = case["widths"], []
    for i in range(len(widths) - 1):
        layers += [torch.nn.Linear(widths[i], widths[i + 1]).double(), torch.nn.Tanh()]
    model = torch.nn.Sequential(*layers[:-1])
    for name, p in model.named_parameters():
        p.requires_grad_(name not in case.get("frozen", ()))
    return model


def batch(case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole batch of a case: ``world_size * per_rank`` rows; rank r trains on rows
    ``r * per_rank`` to ``(r + 1) * per_rank``."""
    gen = torch.Generator().manual_seed(case["seed"] + 7)
    rows = case["world_size"] * case["per_rank"]
    x = torch.randn(rows, case["widths"][0], generator=gen, dtype=torch.float64)
    y = torch.randn(rows, case["widths"][-1], generator=gen, dtype=torch.float64)
    return x, y


def _rows(case: dict, rank: int | None):
    x, y = batch(case)
    if rank is None:
        return x, y
    lo, hi = rank * case["per_rank"], (rank + 1) * case["per_rank"]
    return x[lo:hi], y[lo:hi]


def _loss(model, x, y):
    return ((model(x) - y) ** 2).mean()


def _trained(case: dict, make_optimizer) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
    """The reference: one process, rank 0's initial weights, the whole batch every step."""
    model = make_model(case, case["seed"])
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad])
    x, y = _rows(case, None)
    for _ in range(case["steps"]):
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.step()
    return [p.detach() for p in model.parameters()], opt


def _compare_weights(got, case, expected, rank) -> Result:
    names = [n for n, _ in make_model(case, 0).named_parameters()]
    if not isinstance(got, list) or len(got) != len(expected):
        return Result.fail(f"rank {rank} returned {type(got).__name__} for the weights")
    for name, g, e in zip(names, got, expected):
        r = expect_close(g, e, atol=ATOL, rtol=RTOL,
                         what=f"rank {rank}'s {name} after {case['steps']} step(s)")
        if not r.passed:
            return r
    return Result.ok()


def _same_weights(ranks: list) -> bool:
    first = ranks[0].get("weights")
    try:
        return all(torch.equal(a, b) for out in ranks[1:]
                   for a, b in zip(first, out.get("weights")))
    except (TypeError, RuntimeError):
        return False


def bucket_sizes(case: dict) -> list[int]:
    """The buckets of q2's rule: the trainable parameters in reverse order, a bucket closed once
    it holds ``bucket_elems`` elements or more."""
    sizes, current = [], 0
    for p in reversed([p for p in make_model(case, 0).parameters() if p.requires_grad]):
        current += p.numel()
        if current >= case["bucket_elems"]:
            sizes.append(current)
            current = 0
    return sizes + ([current] if current else [])


def _sync_rank(rank, world, GradSync, case):
    model = make_model(case, case["seed"] + 100 * rank)  # each rank starts from its own weights
    x, y = _rows(case, rank)
    calls, phase = [], ["__init__", -1]
    _log_calls("allreduce", calls, phase)
    sync = GradSync(model, case["bucket_elems"])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=case["lr"])
    for step in range(case["steps"]):
        opt.zero_grad()
        loss = _loss(model, x, y)
        phase[:] = ["backward", step]
        loss.backward()
        phase[:] = ["finish", step]
        sync.finish()
        phase[:] = ["optimizer", step]
        opt.step()
    return {"weights": [p.detach() for p in model.parameters()], "calls": calls}


def run_q2(ns, case):
    return _on_ranks(case, _sync_rank, ns["GradSync"], case)


def grade_q2(case, got):
    failed = _failed(got)
    if failed:
        return failed
    expected, _ = _trained(case, lambda params: torch.optim.SGD(params, lr=case["lr"]))
    buckets = sorted(bucket_sizes(case))
    for rank, out in enumerate(got["ranks"]):
        r = _compare_weights(out.get("weights"), case, expected, rank)
        if not r.passed:
            if rank == 0 and not _same_weights(got["ranks"]):
                r.message += ("; the ranks also ended with different weights from each other: do "
                              "they all start from rank 0's weights?")
            return r
        calls = [c for c in out.get("calls", []) if c[0] != "__init__"]
        for step in range(case["steps"]):
            during = sorted(c[2] for c in calls if c[:2] == ["backward", step])
            after = sorted(c[2] for c in calls if c[1] == step and c[0] != "backward")
            if during != buckets or after:
                return Result.fail(
                    f"rank {rank}, step {step + 1}: expected one all_reduce per bucket, launched "
                    f"during the backward pass, of {buckets} elements (bucket_elems="
                    f"{case['bucket_elems']}); got all_reduce calls of {during} elements during "
                    f"the backward pass and {after} in finish() or later")
    return Result.ok()


# ---------------------------------------------------------------------------------------------
# q3: ZeRO-1 Adam
# ---------------------------------------------------------------------------------------------

def shard(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s elements [lo, hi) of a flat vector of ``n``: ceil(n / world) each, the
    last ranks' shards shorter or empty."""
    size = -(-n // world)
    return min(rank * size, n), min((rank + 1) * size, n)


def _adam_options(case: dict) -> dict:
    return {"lr": case["lr"], "betas": tuple(case.get("betas", (0.9, 0.999))),
            "eps": case.get("eps", 1e-8)}


def _zero_rank(rank, world, ZeroAdam, case):
    model = make_model(case, case["seed"])  # the same weights on every rank
    x, y = _rows(case, rank)
    opt = ZeroAdam([p for p in model.parameters() if p.requires_grad], **_adam_options(case))
    for _ in range(case["steps"]):
        for p in model.parameters():
            p.grad = None
        _loss(model, x, y).backward()
        opt.step()
    return {"weights": [p.detach() for p in model.parameters()],
            "exp_avg": opt.exp_avg, "exp_avg_sq": opt.exp_avg_sq}


def run_q3(ns, case):
    return _on_ranks(case, _zero_rank, ns["ZeroAdam"], case)


def grade_q3(case, got):
    failed = _failed(got)
    if failed:
        return failed
    expected, opt = _trained(case, lambda params: torch.optim.Adam(params, **_adam_options(case)))
    trained = [p for g in opt.param_groups for p in g["params"]]
    state = {k: torch.cat([opt.state[p][k].reshape(-1) for p in trained])
             for k in ("exp_avg", "exp_avg_sq")}
    n, world = state["exp_avg"].numel(), case["world_size"]
    for rank, out in enumerate(got["ranks"]):
        r = _compare_weights(out.get("weights"), case, expected, rank)
        if not r.passed:
            return r
        lo, hi = shard(n, rank, world)
        for key, full in state.items():
            r = expect_close(out.get(key), full[lo:hi], atol=ATOL, rtol=RTOL,
                             what=f"rank {rank}'s {key} (its shard: elements {lo} to {hi} of {n})")
            if not r.passed:
                return r
    return Result.ok()


# ---------------------------------------------------------------------------------------------
# The questions
# ---------------------------------------------------------------------------------------------

MLP = [6, 8, 8, 3]  # 6*8+8 + 8*8+8 + 8*3+3 = 155 parameters

RING_CASES = [
    {"name": "2 ranks, 10 values", "world_size": 2, "seed": 0, "shape": [10]},
    {"name": "3 ranks, 11 values (chunks of unequal size)", "world_size": 3, "seed": 1,
     "shape": [11]},
    {"name": "3 ranks, a 4x5 matrix", "world_size": 3, "seed": 2, "shape": [4, 5]},
]
SYNC_CASES = [
    {"name": "2 ranks, 3 steps, buckets of >= 40 elements", "world_size": 2, "seed": 3,
     "widths": MLP, "per_rank": 4, "steps": 3, "lr": 0.1, "bucket_elems": 40},
    {"name": "2 ranks, one bucket per parameter", "world_size": 2, "seed": 4, "widths": MLP,
     "per_rank": 3, "steps": 2, "lr": 0.1, "bucket_elems": 1},
]
ZERO_CASES = [
    {"name": "2 ranks, 3 steps", "world_size": 2, "seed": 5, "widths": MLP, "per_rank": 4,
     "steps": 3, "lr": 0.01},
    {"name": "3 ranks, 155 parameters (the last shard shorter)", "world_size": 3, "seed": 6,
     "widths": MLP, "per_rank": 2, "steps": 2, "lr": 0.05, "betas": [0.8, 0.99]},
]

RING_FORBID = tuple(f"torch.distributed.{name}" for name in (
    "all_reduce", "all_reduce_coalesced", "reduce", "reduce_scatter", "reduce_scatter_tensor",
    "all_gather", "all_gather_into_tensor", "all_gather_coalesced", "all_gather_object",
    "broadcast", "broadcast_object_list", "all_to_all", "all_to_all_single", "gather", "scatter",
    "gather_object", "scatter_object_list")) + (
    "torch.distributed._functional_collectives.*", "torch.distributed.nn.functional.*") + FMLAB_OWN

QUESTIONS = [
    Question(id="q1", points=3, title="A ring all-reduce from sends and receives",
             requires=("ring_all_reduce",), run=run_q1, grade=grade_q1,
             cases=lambda: copy.deepcopy(RING_CASES), timeout=20, forbid=RING_FORBID),
    Question(id="q2", points=4, title="Bucketed gradient synchronisation by hooks",
             requires=("GradSync",), run=run_q2, grade=grade_q2,
             cases=lambda: copy.deepcopy(SYNC_CASES), timeout=20,
             forbid=("torch.nn.parallel.DistributedDataParallel",
                     "torch.distributed.algorithms.*", *FMLAB_OWN)),
    Question(id="q3", points=3, title="A ZeRO-1 Adam step", requires=("ZeroAdam",), run=run_q3,
             grade=grade_q3, cases=lambda: copy.deepcopy(ZERO_CASES), timeout=20,
             forbid=("torch.distributed.optim.ZeroRedundancyOptimizer",
                     "torch.distributed.optim.*", *FMLAB_OWN)),
]
