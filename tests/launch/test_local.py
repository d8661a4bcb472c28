"""launch/local.py: the exact per-process commands, output prefixes, failure propagation and
signal forwarding (plain Python children here; tests/test_distributed.py runs JAX through it)."""

import os
import pathlib
import signal
import subprocess
import sys

import pytest

LOCAL = pathlib.Path(__file__).resolve().parents[2] / "launch" / "local.py"
TIMEOUT_S = 60


def _launch(*args, **kwargs):
    return subprocess.run([sys.executable, str(LOCAL), *args], capture_output=True, text=True,
                          timeout=TIMEOUT_S, **kwargs)


def test_dry_run_prints_each_process_command():
    env = os.environ | {"XLA_FLAGS": "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=8"}
    out = _launch("-n", "2", "-d", "4", "--port", "4242", "--dry-run", "--",
                  "python", "-m", "t5x_like.cli", "train", "--gin.MODEL_DIR='/tmp/a b'", env=env)
    assert out.returncode == 0, out.stderr
    common = ("T5X_LIKE_COORDINATOR_ADDRESS=127.0.0.1:4242 T5X_LIKE_NUM_PROCESSES=2 "
              "T5X_LIKE_PROCESS_ID={} JAX_PLATFORMS=cpu PYTHONUNBUFFERED=1 "
              "XLA_FLAGS='--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=4' "
              "python -m t5x_like.cli train '--gin.MODEL_DIR='\"'\"'/tmp/a b'\"'\"''")
    assert out.stdout.splitlines() == [common.format(0), common.format(1)]


def test_output_is_prefixed_by_process():
    out = _launch("-n", "3", "-d", "2", "--", sys.executable, "-c",
                  "import os; print('rank', os.environ['T5X_LIKE_PROCESS_ID'], "
                  "os.environ['XLA_FLAGS'])")
    assert out.returncode == 0, out.stdout
    for i in range(3):
        assert f"[p{i}] rank {i} --xla_force_host_platform_device_count=2" in out.stdout
        assert f"[launch] process {i}: exit code 0" in out.stdout


def test_a_failure_is_the_job_status_and_stops_the_rest_after_the_grace_period():
    script = ("import os, sys, time\n"
              "if os.environ['T5X_LIKE_PROCESS_ID'] == '1': sys.exit(3)\n"
              "time.sleep(600)\n")
    out = _launch("-n", "2", "--grace", "1", "--", sys.executable, "-c", script)
    assert out.returncode == 3, out.stdout
    assert "[launch] process 1 failed (exit code 3)" in out.stdout
    assert "grace period over" in out.stdout
    assert "[launch] process 0: killed by SIGTERM" in out.stdout


def test_sigterm_is_forwarded_to_every_process():
    script = ("import signal, sys, time\n"
              "signal.signal(signal.SIGTERM, lambda *_: (print('got SIGTERM', flush=True), "
              "sys.exit(0)))\n"
              "print('ready', flush=True)\n"
              "time.sleep(600)\n")
    job = subprocess.Popen([sys.executable, str(LOCAL), "-n", "2", "--", sys.executable, "-c",
                            script], stdout=subprocess.PIPE, text=True)
    try:
        ready = 0
        for line in job.stdout:
            ready += line.rstrip().endswith("] ready")
            if ready == 2:
                break
        job.send_signal(signal.SIGTERM)
        out = job.communicate(timeout=TIMEOUT_S)[0]
    finally:
        job.kill()
    assert job.returncode == 0, out
    assert "[p0] got SIGTERM" in out and "[p1] got SIGTERM" in out


def test_timeout_stops_everything_with_status_124():
    out = _launch("-n", "2", "--timeout", "1", "--grace", "1", "--", sys.executable, "-c",
                  "import time; time.sleep(600)")
    assert out.returncode == 124 and "timeout after 1 s" in out.stdout


@pytest.mark.parametrize("args", [["--"], ["-n", "0", "--", "true"]])
def test_bad_invocations_are_refused(args):
    assert _launch(*args).returncode == 2
