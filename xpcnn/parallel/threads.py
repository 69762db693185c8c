"""Data parallelism inside one process: one thread per rank, one model replica per thread.

NumPy releases the GIL inside BLAS and inside its loops over large arrays, so replicas that
each run forward and backward on their shard of a batch do run at the same time; BLAS is
limited to one thread per worker meanwhile (threadpoolctl), so the threads do not fight over
cores. Each :class:`ThreadCommunicator` is one rank of a :class:`ThreadGroup`; the sums run in
a fixed order (rank 0's array, plus rank 1's, plus ...), so results are bit-identical run to run
for a given number of threads, and agree with one thread to float rounding.

A group may sit on a parent communicator (an MPI rank): its global rank is
``parent.rank * threads + local rank``, and local rank 0 carries the group's sums to the parent,
so MPI processes × threads compose.

Examples
--------
>>> import numpy as np
>>> from xpcnn.parallel.threads import ThreadGroup, run_ranks
>>> group = ThreadGroup(2)
>>> run_ranks(group, [lambda c=c: c.allreduce_sum([c.rank + 1.0]).tolist() for c in group.communicators()])
[[3.0], [3.0]]
"""

from __future__ import annotations

import os
import threading

import numpy as np
from threadpoolctl import threadpool_limits

from .base import LOCAL, Communicator


def usable_cores():
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class ThreadGroup:
    """What the threads of one group share: a barrier and one slot per rank.

    Parameters
    ----------
    size : int
        Threads (ranks) in the group.
    parent : Communicator
        The communicator the group sits on (default: none, one process).
    """

    def __init__(self, size, parent=LOCAL):
        self.size, self.parent = size, parent
        self._barrier = threading.Barrier(size)
        self._slots = [None] * size
        self._result = None
        self.failure = None  # the first exception a rank raised: the others stop with it

    def communicators(self):
        """One communicator per rank, rank 0 first."""
        return [ThreadCommunicator(self, r) for r in range(self.size)]

    def wait(self):
        try:
            self._barrier.wait()
        except threading.BrokenBarrierError:
            raise self.failure or RuntimeError("another thread of the group stopped") from None

    def abort(self, exc):
        if self.failure is None:
            self.failure = exc
        self._barrier.abort()

    def combine(self, rank, value, reduce, carry):
        """Every rank's ``value`` combined: rank 0 folds them in rank order with ``reduce`` and
        hands the result to ``carry`` (the parent's collective); every rank gets that result."""
        self._slots[rank] = value
        self.wait()
        if rank == 0:
            total = self._slots[0]
            for other in self._slots[1:]:
                total = reduce(total, other)
            self._result = carry(total)
        self.wait()
        # No third barrier: rank 0 has read the slots before the barrier above, and it writes the
        # next result only after the next collective's first barrier, which every rank reaches
        # only once it has read this one.
        return self._result


class ThreadCommunicator(Communicator):
    """Rank ``local_rank`` of a :class:`ThreadGroup` (see :class:`xpcnn.parallel.Communicator`)."""

    def __init__(self, group, local_rank):
        self.group, self.local_rank = group, local_rank
        parent = group.parent
        self.rank = parent.rank * group.size + local_rank
        self.size = parent.size * group.size
        self.backend = parent.backend

    def __repr__(self):
        return f"ThreadCommunicator(rank={self.rank}, size={self.size}, threads={self.group.size})"

    def _sum_flat(self, flat):
        return self.group.combine(self.local_rank, flat, _add, self.group.parent._sum_flat)

    def _sum_host(self, buf):
        return self.group.combine(self.local_rank, buf, _add, self.group.parent._sum_host).copy()

    def allreduce_max(self, values):
        buf = np.array(values, dtype=np.float64)
        return self.group.combine(self.local_rank, buf, np.maximum, self.group.parent.allreduce_max).copy()

    def _broadcast_host(self, buf):
        return self.group.combine(self.local_rank, buf, _first, self.group.parent._broadcast_host).copy()

    def barrier(self):
        self.group.combine(self.local_rank, None, _first, lambda _: self.group.parent.barrier())


def _add(a, b):
    return a + b


def _first(a, _):
    return a


def run_ranks(group, functions):
    """Call ``functions[r]()`` for every rank of ``group`` at once: rank 0 in this thread, the
    others in threads of their own, BLAS limited to one thread each. Returns their results in
    rank order; the first exception any rank raises (Ctrl-C included) stops the others and is
    raised here."""
    results = [None] * len(functions)

    def call(r):
        try:
            results[r] = functions[r]()
        except BaseException as exc:  # noqa: BLE001  (every rank waiting in a collective wakes with it)
            group.abort(exc)
            if r == 0:
                raise

    with threadpool_limits(limits=1):
        workers = [threading.Thread(target=call, args=(r,), name=f"xpcnn-rank-{r}", daemon=True)
                   for r in range(1, len(functions))]
        for w in workers:
            w.start()
        try:
            call(0)
        finally:
            for w in workers:
                w.join()
    if group.failure is not None:
        raise group.failure
    return results
