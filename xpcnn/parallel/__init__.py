"""Data parallelism: one communicator interface, three ways to carry it.

========================  ==============================================================
:class:`LocalCommunicator`   one rank: every sum is the identity (every plain ``fit``)
:mod:`.threads`              threads of one process, one model replica each (``fit(threads=N)``)
:mod:`.mpi`                  MPI processes on CPUs or GPUs (NCCL), ``xpcnn train --distributed``
========================  ==============================================================
"""

from .base import LOCAL, Communicator, LocalCommunicator, shard_bounds

__all__ = ["LOCAL", "Communicator", "LocalCommunicator", "shard_bounds"]
