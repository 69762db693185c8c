"""keep_freed_host_memory: glibc stops handing freed temporaries back to the kernel, so repeated
training-step-sized allocations stop page-faulting; the opt-outs are respected."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt tuning applies to glibc only")

# Three 10 MB temporaries per "step", freed together: the pattern of an im2col training step.
STEPS = """
import resource, sys
import numpy as np
from xpcnn.backend.hostmem import keep_freed_host_memory
tuned = keep_freed_host_memory() if sys.argv[1] == "tune" else None
def step():
    a, b, c = (np.ones(2_500_000, np.float32) for _ in range(3))
    return float(a[-1] + b[-1] + c[-1])
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(30):
    step()
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _run(mode, **env):
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True,
                         env={**{k: v for k, v in os.environ.items()
                                 if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}, **env})
    tuned, faults = out.stdout.split()
    return tuned, int(faults)


def test_tuned_malloc_stops_refaulting_step_temporaries():
    _, plain = _run("plain")
    tuned, faults = _run("tune")
    assert tuned == "True"
    if plain < 5_000:  # glibc's defaults vary by version and tunables; here ~50,000 pages
        pytest.skip(f"this glibc kept the memory by itself ({plain} faults): nothing to compare")
    assert faults < plain / 20, (faults, plain)


@pytest.mark.parametrize("env", [{"XPCNN_KEEP_HOST_MEMORY": "0"}, {"MALLOC_TRIM_THRESHOLD_": "131072"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}])
def test_the_user_can_keep_malloc_as_it_is(env):
    tuned, _ = _run("tune", **env)
    assert tuned == "False"
