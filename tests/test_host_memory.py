"""host_memory: XLA:CPU's large per-run buffers keep their pages from one run to the next.

Each check runs in a fresh process: malloc's settings are process-wide, and the arena limit only
takes effect before a second thread allocates.
"""

import json
import os
import platform
import subprocess
import sys

import pytest

from t5x_like import cli, host_memory

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="needs glibc")

# A jitted function with a 72 MB temporary and a 36 MB output (both above glibc's largest
# mmap threshold, 32 MB, and the temporary above a thread arena's 64 MB heap), called 60 times
# from a worker thread as XLA's own threads would allocate. Prints the minor page faults of the
# last 24 calls and the buffer pages one call touches.
_PROBE = """
import json, resource, sys, threading
if sys.argv[1] == "retain":
    from t5x_like import host_memory
    assert host_memory.retain_freed_memory()
import jax, jax.numpy as jnp

x = jnp.ones((3000, 3000), jnp.float32)
f = jax.jit(lambda x: jnp.cumsum(jnp.cumsum(x * 2.0 + 1.0, axis=0)[::-1], axis=1))
compiled = f.lower(x).compile()
buffer_pages = (compiled.memory_analysis().temp_size_in_bytes + x.nbytes) // 4096
faults = []

def run():
    for _ in range(60):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        y = f(x)
        y.block_until_ready()
        del y
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

thread = threading.Thread(target=run)
thread.start()
thread.join()
print(json.dumps({"faults": faults[-24:], "buffer_pages": buffer_pages}))
"""


def _probe(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != host_memory.DISABLE_ENV}
    env["XLA_FLAGS"] = ""  # one CPU device, as a plain `t5x-like` process has
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], env=env, check=True,
                         capture_output=True, text=True, timeout=300).stdout
    return json.loads(out.strip().splitlines()[-1])


@glibc_only
def test_retained_buffers_are_not_faulted_in_again():
    system, retained = _probe("system"), _probe("retain")
    pages = system["buffer_pages"]
    assert pages > 20_000
    # glibc as shipped: every call maps its buffers afresh and the kernel zeroes them again.
    assert min(system["faults"]) > pages // 2, system
    # Retained: most calls touch no new page. The heap still grows now and then (the temporary
    # finds no free block that fits and lands on fresh pages) until its free blocks settle,
    # mostly over the first ~10 calls; runs here saw 0-4 such calls among calls 24-39.
    regrowths = sum(f > pages // 10 for f in retained["faults"])
    assert sorted(retained["faults"])[12] < pages // 100, retained  # the median call
    assert regrowths <= 6, retained


def test_opt_out_leaves_malloc_alone(monkeypatch):
    monkeypatch.setenv(host_memory.DISABLE_ENV, "1")
    assert host_memory.retain_freed_memory() is False


@pytest.mark.parametrize("argv,retains", [(["train", "--gin.TRAIN_STEPS=1"], True),
                                          (["generate", "x"], True),
                                          (["convert", "--help"], False), ([], False)])
def test_entry_retains_for_step_commands_only(monkeypatch, argv, retains):
    calls = []
    monkeypatch.setattr(host_memory, "retain_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(cli, "main", lambda: 0)
    monkeypatch.setattr(sys, "argv", ["t5x-like", *argv])
    assert cli.entry() == 0
    assert bool(calls) == retains
