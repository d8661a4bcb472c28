#!/usr/bin/env python3
"""Run N local processes x M fake CPU devices each: a multi-host JAX job on one machine.

    python launch/local.py -n 2 -d 4 -- python -m t5x_like.cli train --gin.TRAIN_STEPS=20
    python launch/local.py -n 2 -d 4 --dry-run -- python -m t5x_like.cli train

Every process runs the same command with T5X_LIKE_COORDINATOR_ADDRESS (127.0.0.1 and a free
port), T5X_LIKE_NUM_PROCESSES and T5X_LIKE_PROCESS_ID set, JAX_PLATFORMS=cpu and
--xla_force_host_platform_device_count=M in XLA_FLAGS. Output lines are prefixed `[pI]`.
SIGTERM/SIGINT to the launcher are forwarded to every process (as Slurm and Kubernetes do on
preemption). When a process fails, the others get --grace seconds to notice by themselves
(JAX's heartbeats) before the launcher stops them; the exit status is the first failure's
(128 + signal for a signal), 124 on --timeout. Standard library only: no JAX in the launcher.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(base: dict[str, str], index: int, count: int, devices: int,
                port: int) -> dict[str, str]:
    """The variables process `index` of `count` gets on top of `base` (only those)."""
    xla_flags = [f for f in base.get("XLA_FLAGS", "").split()
                 if not f.startswith(DEVICE_COUNT_FLAG)]  # the parent's count must not leak
    return {"T5X_LIKE_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
            "T5X_LIKE_NUM_PROCESSES": str(count), "T5X_LIKE_PROCESS_ID": str(index),
            "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1",
            "XLA_FLAGS": " ".join(xla_flags + [f"{DEVICE_COUNT_FLAG}={devices}"])}


def command_line(env: dict[str, str], command: list[str]) -> str:
    """The shell line that starts one process (what --dry-run prints)."""
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return f"{assignments} {shlex.join(command)}"


def _pump(index: int, stream, lock: threading.Lock) -> None:
    for line in iter(stream.readline, b""):
        with lock:
            sys.stdout.write(f"[p{index}] {line.decode(errors='replace')}")
            sys.stdout.flush()


def _say(lock: threading.Lock, text: str) -> None:
    with lock:
        print(f"[launch] {text}", flush=True)


def _describe(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    if code > 128 and code - 128 in signal.valid_signals():
        return f"exit code {code} ({signal.Signals(code - 128).name})"
    return f"exit code {code}"


def _stop(procs: list[subprocess.Popen], sig: int) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)  # the process and anything it started
            except ProcessLookupError:
                pass  # exited since the poll


def run(command: list[str], num_processes: int, devices: int, port: int, grace: float,
        timeout: float) -> int:
    """Start the processes, stream their output, wait; return the job's exit status."""
    lock = threading.Lock()
    procs, pumps = [], []

    def forward(signum, frame):
        del frame
        _say(lock, f"{signal.Signals(signum).name}: forwarding to every process")
        _stop(procs, signum)

    for sig in (signal.SIGTERM, signal.SIGINT):  # before any child exists: none is orphaned
        signal.signal(sig, forward)
    for i in range(num_processes):
        env = os.environ | process_env(dict(os.environ), i, num_processes, devices, port)
        # A session of its own: a terminal's Ctrl-C reaches the launcher, which forwards it.
        p = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
        _say(lock, f"process {i}: pid {p.pid}")
        procs.append(p)
        pumps.append(threading.Thread(target=_pump, args=(i, p.stdout, lock), daemon=True))
        pumps[-1].start()
    deadline, stop_at, first_failure = time.monotonic() + timeout, None, None
    while any(p.poll() is None for p in procs):
        time.sleep(0.05)
        for i, p in enumerate(procs):
            if first_failure is None and p.poll() not in (None, 0):
                first_failure = i
                stop_at = time.monotonic() + grace
                _say(lock, f"process {i} failed ({_describe(p.returncode)}); the others have "
                           f"{grace:g} s to exit")
        now = time.monotonic()
        if now > deadline or (stop_at is not None and now > stop_at):
            if now > deadline:
                _say(lock, f"timeout after {timeout:g} s: stopping every process")
                first_failure = -1
            else:
                _say(lock, "grace period over: stopping the remaining processes")
            _stop(procs, signal.SIGTERM)
            give_up = time.monotonic() + 5  # then SIGKILL whatever ignores SIGTERM
            while any(p.poll() is None for p in procs) and time.monotonic() < give_up:
                time.sleep(0.05)
            _stop(procs, signal.SIGKILL)
            break
    for p in procs:
        p.wait()
    for t in pumps:
        t.join(timeout=5)
    for i, p in enumerate(procs):
        _say(lock, f"process {i}: {_describe(p.returncode)}")
    if first_failure == -1:
        return 124
    if first_failure is None:
        return 0
    code = procs[first_failure].returncode
    return 128 - code if code < 0 else code


def main(argv: list[str] | None = None) -> int:
    """Parse the launcher's flags; everything after `--` is the command every process runs."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--num_processes", type=int, default=2)
    parser.add_argument("-d", "--devices_per_process", type=int, default=4)
    parser.add_argument("--port", type=int, default=0, help="coordinator port; 0 = a free one")
    parser.add_argument("--grace", type=float, default=30.0,
                        help="seconds the others get to exit by themselves after a failure")
    parser.add_argument("--timeout", type=float, default=24 * 3600.0,
                        help="stop everything after this many seconds (exit status 124)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print each process's command line and exit")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --, e.g. -- python -m t5x_like.cli train")
    if args.num_processes < 1 or args.devices_per_process < 1:
        parser.error("--num_processes and --devices_per_process must be positive")
    port = args.port or free_port()
    if args.dry_run:
        for i in range(args.num_processes):
            print(command_line(process_env(dict(os.environ), i, args.num_processes,
                                           args.devices_per_process, port), command))
        return 0
    return run(command, args.num_processes, args.devices_per_process, port, args.grace,
               args.timeout)


if __name__ == "__main__":
    sys.exit(main())
