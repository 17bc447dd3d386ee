"""Plausible wrong answers to the distributed lab; each keeps at most half its question's points.

Each entry is Python source appended as a last cell to labs/08_distributed.ipynb; it redefines
one exercise wrongly (the namespace already holds ``torch`` and ``dist``, torch.distributed).
"""

# q1: a ring that sends chunk (rank - step + shift) and receives into (rank - step - 1 + shift)
_RING = '''
def ring_all_reduce(tensor):
    rank, world = dist.get_rank(), dist.get_world_size()
    chunks = tensor.view(-1).tensor_split(world)
    right, left = (rank + 1) % world, (rank - 1) % world
    for phase in {phases}:
        shift = 0 if phase == "reduce-scatter" else {gather_shift}
        for step in range(world - 1):
            outgoing = chunks[(rank - step + shift) % world]
            into = chunks[(rank - step - 1 + shift) % world]
            incoming = torch.empty_like(into)
            request = dist.isend(outgoing, right)
            dist.recv(incoming, left)
            request.wait()
            if phase == "reduce-scatter":
                into += incoming
            else:
                into.copy_(incoming)
    {end}
    return tensor
'''


def _ring(phases='("reduce-scatter", "all-gather")', gather_shift="1", end="pass"):
    return _RING.format(phases=phases, gather_shift=gather_shift, end=end)


# Every rank sends its whole tensor to every other one: the right sum, but (p-1) N values sent
# by each rank instead of the ring's 2(p-1)/p N, and to every rank, not just the next one.
_EVERYONE = '''
def ring_all_reduce(tensor):
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = tensor.clone()
    requests = [dist.isend(mine, other) for other in range(world) if other != rank]
    for other in range(world):
        if other != rank:
            incoming = torch.empty_like(tensor)
            dist.recv(incoming, other)
            tensor += incoming
    for request in requests:
        request.wait()
    return tensor
'''

_DELEGATED_RING = '''
def ring_all_reduce(tensor):
    dist.all_reduce(tensor)
    return tensor
'''

# q2: the master's GradSync with one piece changed
_SYNC = '''
class GradSync:
    def __init__(self, model, bucket_elems):
        self.world = dist.get_world_size()
        with torch.no_grad():
            for p in model.parameters():
                {broadcast}
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.buckets, current, size = [], [], 0
        for p in reversed(trainable):
            current.append(p)
            size += p.numel()
            if size >= bucket_elems:
                self.buckets.append(current)
                current, size = [], 0
        if current:
            self.buckets.append(current)
        self.bucket_of = {{id(p): i for i, bucket in enumerate(self.buckets) for p in bucket}}
        self.ready = [0] * len(self.buckets)
        self.pending = []
        for p in trainable:
            {register}

    def _accumulated(self, p):
        {launch}

    def _launch(self, i):
        flat = torch.cat([q.grad.reshape(-1) for q in self.buckets[i]])
        self.pending.append((i, flat, dist.all_reduce(flat, async_op=True)))

    def finish(self):
        {before_wait}
        for i, flat, work in self.pending:
            work.wait()
            {average}
            offset = 0
            for q in self.buckets[i]:
                q.grad.copy_(flat[offset:offset + q.numel()].view_as(q.grad))
                offset += q.numel()
        self.pending = []
        self.ready = [0] * len(self.buckets)
'''
_LAUNCH_WHEN_FULL = '''i = self.bucket_of[id(p)]
        self.ready[i] += 1
        if self.ready[i] == len(self.buckets[i]):
            self._launch(i)'''


def _sync(broadcast="dist.broadcast(p, src=0)",
          register="p.register_post_accumulate_grad_hook(self._accumulated)",
          launch=_LAUNCH_WHEN_FULL, before_wait="pass", average="flat /= self.world"):
    return _SYNC.format(broadcast=broadcast, register=register, launch=launch,
                        before_wait=before_wait, average=average)


# A hook on the gradient tensor fires before autograd adds it to p.grad: p.grad is still empty
# (None) then, or last step's value.
_TENSOR_HOOK = "p.register_hook(lambda grad, p=p: self._accumulated(p))"
# Everything all-reduced in finish(), after the backward pass: right values, no overlap.
_AT_THE_END = (
    "for i in range(len(self.buckets)):\n"
    "            self._launch(i)")

# q3: the master's ZeroAdam with one piece changed
_ZERO = '''
class ZeroAdam:
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.params = list(params)
        self.lr, self.betas, self.eps = lr, betas, eps
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.n = sum(p.numel() for p in self.params)
        {size}
        {bounds}
        like = self.params[0]
        self.exp_avg = torch.zeros(self.hi - self.lo, dtype=like.dtype)
        self.exp_avg_sq = torch.zeros_like(self.exp_avg)
        self.t = 0

    @torch.no_grad()
    def step(self):
        self.t += 1
        b1, b2 = self.betas
        grad = torch.cat([p.grad.reshape(-1) for p in self.params])
        dist.all_reduce(grad)
        g = grad[self.lo:self.hi] / {divide}
        self.exp_avg.mul_(b1).add_(g, alpha=1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)
        m_hat = self.exp_avg / (1 - b1**self.t)
        v_hat = self.exp_avg_sq / (1 - b2**self.t)
        flat = torch.cat([p.reshape(-1) for p in self.params])
        mine = flat[self.lo:self.hi] - self.lr * m_hat / (v_hat.sqrt() + self.eps)
        {gather}
        offset = 0
        for p in self.params:
            p.copy_(new[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
'''
_CEIL = "self.size = -(-self.n // self.world)"
_BOUNDS = ("self.lo = min(self.rank * self.size, self.n)\n"
           "        self.hi = min((self.rank + 1) * self.size, self.n)")
_ALL_GATHER = '''padded = torch.zeros(self.size, dtype=flat.dtype)
        padded[: self.hi - self.lo] = mine
        shards = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(shards, padded)
        new = torch.cat(shards)[: self.n]'''


def _zero(size=_CEIL, bounds=_BOUNDS, divide="self.world", gather=_ALL_GATHER):
    return _ZERO.format(size=size, bounds=bounds, divide=divide, gather=gather)


WRONG = {
    "q1": {
        # the all-gather phase starts one chunk early: it passes on a chunk not yet summed
        "all-gather chunk index off by one": _ring(gather_shift="0"),
        # stops after the reduce-scatter: each rank holds only one chunk of the sum
        "reduce-scatter without the all-gather": _ring(phases='("reduce-scatter",)'),
        "every rank sends its whole tensor to every other": _EVERYONE,
        "delegates to dist.all_reduce": _DELEGATED_RING,
    },
    "q2": {
        "sums the gradients instead of averaging them": _sync(average="pass"),
        "does not broadcast the initial weights": _sync(broadcast="pass"),
        "a tensor hook: reads p.grad before it is accumulated": _sync(register=_TENSOR_HOOK),
        "all-reduces after the backward pass, in finish()": _sync(launch="pass",
                                                                    before_wait=_AT_THE_END),
    },
    "q3": {
        # ceil(n / p) written as n // p + 1: one too many when p divides n
        "shard size n // p + 1": _zero(size="self.size = self.n // self.world + 1"),
        # every rank keeps the whole state and updates every parameter: no sharding
        "no sharding: the whole state on every rank": _zero(
            bounds="self.lo, self.hi = 0, self.n",
            gather="new = flat.clone()\n        new[:] = mine"),
        "sums the gradients instead of averaging them": _zero(divide="1"),
        # each rank updates its own shard and never receives the others' updates
        "forgets to gather the updated shards": _zero(
            gather="new = flat.clone()\n        new[self.lo:self.hi] = mine"),
    },
}
