"""The communicator interface every ``fit`` trains through, and its one-process implementation.

Data parallelism, whatever carries it (MPI processes, threads of one process, NCCL between GPUs),
is the same five operations on the same model replicas. Each *rank* holds a whole replica, takes
its contiguous shard of every global batch (:meth:`Communicator.shard`), computes the gradient of
its shard's mean loss scaled by shard/global size, and joins one sum over the ranks
(:meth:`Communicator.allreduce_gradients`); rank 0's initial weights are given to every rank first
(:meth:`Communicator.broadcast_parameters`), so every rank applies the same update to the same
weights. With shard ``r`` of ``B_r`` out of ``B`` samples and ``L_r`` its mean loss::

    L = (1/B) Σ_i ℓ_i = Σ_r (B_r/B) · L_r      ⇒      ∂L/∂θ = Σ_r (B_r/B) · ∂L_r/∂θ

so batch size and learning rate mean what they mean in one process.

:class:`LocalCommunicator` is the one-rank case every plain ``fit`` uses: rank 0 of 1, the shard
is the whole batch, and every sum is the identity, so the training loop has no ``if parallel``
branch. :mod:`xpcnn.parallel.threads` (threads of one process) and :mod:`xpcnn.parallel.mpi`
(processes, on CPUs or GPUs) implement the same interface.

Every method except :meth:`~Communicator.shard` is collective: all ranks call it, in the same
order.

Examples
--------
>>> from xpcnn.parallel import LocalCommunicator, shard_bounds
>>> [shard_bounds(10, r, 3) for r in range(3)]
[(0, 3), (3, 6), (6, 10)]
>>> comm = LocalCommunicator()
>>> comm.rank, comm.size, comm.shard(10), comm.allreduce_sum([1.5, 2.0]).tolist()
(0, 1, (0, 10), [1.5, 2.0])
"""

from __future__ import annotations

import math

import numpy as np
from array_api_compat import array_namespace, device

from ..backend import to_numpy
from ..errors import InputError


def shard_bounds(n, rank, size):
    """``(lo, hi)``: rank ``rank``'s contiguous, balanced slice of ``n`` items over ``size`` ranks."""
    return n * rank // size, n * (rank + 1) // size


class Communicator:
    """The ranks of one data-parallel job (see the module docstring for the contract).

    A subclass sets ``rank`` and ``size`` and gives :meth:`_sum_flat` (the sum over the ranks of
    one flat device array), :meth:`_sum_host` (of a float64 host array) and :meth:`_broadcast_host`.
    """

    rank = 0
    size = 1
    backend = None  # the Backend the ranks compute on, when the communicator chose it (MPI on GPUs)

    @property
    def is_main(self):
        """Whether this rank is rank 0, the one that prints and writes files."""
        return self.rank == 0

    def shard(self, n):
        """``(lo, hi)``: this rank's contiguous slice of ``n`` items (sizes differ by at most one)."""
        return shard_bounds(n, self.rank, self.size)

    def allreduce_gradients(self, layers, scale):
        """Sum ``scale * grad`` over the ranks, in place of every ``layer.grads[key]``.

        One flat buffer (layers in order, keys in ``layer.params`` order), one sum.
        """
        pairs = [(layer, key) for layer in layers for key in layer.params]
        if not pairs:
            return
        grads = [layer.grads[key] for layer, key in pairs]
        if len({str(g.dtype) for g in grads}) > 1:
            raise InputError(f"All gradients must share one dtype. Received {sorted({str(g.dtype) for g in grads})}.")
        xp = array_namespace(*grads)
        flat = xp.concat([xp.reshape(g, (-1,)) for g in grads])
        if scale != 1:
            flat = flat * scale  # one multiply on the flat buffer: the same rounding as per tensor
        flat = self._sum_flat(flat)
        start = 0
        for (layer, key), g in zip(pairs, grads):
            size = math.prod(g.shape)
            layer.grads[key] = xp.reshape(flat[start : start + size], tuple(g.shape))
            start += size

    def allreduce_sum(self, values):
        """Elementwise sum over the ranks of host numbers (float64); used for metrics."""
        return self._sum_host(np.array(values, dtype=np.float64, copy=True))

    def broadcast_parameters(self, layers):
        """Give every rank rank 0's parameters (one flat host buffer, one broadcast)."""
        params = [(layer, key, p) for layer in layers for key, p in layer.params.items()]
        if not params:
            return
        host = self._broadcast_host(np.concatenate([np.ravel(to_numpy(p)) for _, _, p in params]))
        start = 0
        for layer, key, p in params:
            size = math.prod(p.shape)
            piece = host[start : start + size].reshape(tuple(p.shape))
            layer.params[key] = array_namespace(p).asarray(piece, dtype=p.dtype, device=device(p), copy=True)
            start += size

    def broadcast_host(self, values):
        """Rank 0's host numbers (float64) on every rank."""
        return self._broadcast_host(np.array(values, dtype=np.float64, copy=True))

    def check_same(self, value, what):
        """Raise the same InputError on every rank when the ranks hold different numbers ``value``."""
        low, high = (-v for v in self.allreduce_max([-value, value]))
        if low != -high:
            raise InputError(f"The {self.size} ranks disagree on {what} (from {high:g} to {-low:g}). "
                             "Every rank must read the same files: use a shared filesystem.")

    def allreduce_max(self, values):
        """Elementwise maximum over the ranks of host numbers (float64)."""
        return np.array(values, dtype=np.float64)

    def agree(self, failure):
        """Make one rank's refusal everyone's: returns the exception to raise on every rank (or None).

        ``failure`` is this rank's exception or None; when any rank has one, every rank gets an
        InputError (its own, or one saying another rank refused)."""
        if float(self.allreduce_sum([float(failure is not None)])[0]) == 0:
            return None
        return failure or InputError("Another rank refused its inputs or outputs (its message says why).")

    def barrier(self):
        """Wait until every rank gets here."""

    def close(self):
        """Release what the communicator holds (a no-op for one rank)."""

    def _sum_flat(self, flat):
        raise NotImplementedError

    def _sum_host(self, buf):
        raise NotImplementedError

    def _broadcast_host(self, buf):
        raise NotImplementedError


class LocalCommunicator(Communicator):
    """One rank: every sum and broadcast is the identity (what a plain ``fit`` trains through)."""

    def allreduce_gradients(self, layers, scale):
        if scale != 1:  # a shard smaller than the batch: only a caller's mistake gets here
            super().allreduce_gradients(layers, scale)

    def broadcast_parameters(self, layers):
        pass  # one rank: its parameters are already rank 0's

    def _sum_flat(self, flat):
        return flat

    def _sum_host(self, buf):
        return buf

    def _broadcast_host(self, buf):
        return buf

    def __repr__(self):
        return "LocalCommunicator()"


LOCAL = LocalCommunicator()  # stateless: one instance serves every plain fit
