"""Multi-process runs: joining the job, process-aware logging, preemption, fatal errors.

JAX's multi-controller runtime runs the same program in one process per host; the processes meet
at a coordination service hosted by process 0 (`jax.distributed.initialize`), which also carries
heartbeats (a dead peer makes every survivor exit instead of hanging in a collective) and the
preemption notices (`multihost_utils.reached_preemption_sync_point`).

Where the coordinator comes from, first match wins:
1. `DistributedConfig.coordinator_address/num_processes/process_id`, filled where empty from
   T5X_LIKE_COORDINATOR_ADDRESS / T5X_LIKE_NUM_PROCESSES / T5X_LIKE_PROCESS_ID (launch/local.py
   and any launcher that knows the ranks);
2. a detected TPU pod, multi-slice job, Slurm job step or Open MPI job: JAX reads the arguments
   from the environment (`jax.distributed.initialize()` without arguments);
3. otherwise a single process, no coordination service.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from typing import Mapping

import jax

from t5x_like.config import ConfigError, DistributedConfig

log = logging.getLogger(__name__)

ENV_COORDINATOR = "T5X_LIKE_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "T5X_LIKE_NUM_PROCESSES"
ENV_PROCESS_ID = "T5X_LIKE_PROCESS_ID"
# Libraries that log every checkpoint and compile at INFO: warnings only.
NOISY_LOGGERS = ("absl", "jax._src.xla_bridge", "orbax", "tensorflow")


def from_environment(cfg: DistributedConfig,
                     environ: Mapping[str, str] | None = None) -> DistributedConfig:
    """`cfg` with its empty coordinator fields taken from the T5X_LIKE_* variables."""
    environ = os.environ if environ is None else environ
    updates = {}
    if not cfg.coordinator_address and environ.get(ENV_COORDINATOR):
        updates["coordinator_address"] = environ[ENV_COORDINATOR]
    for field, var, unset in (("num_processes", ENV_NUM_PROCESSES, 0),
                              ("process_id", ENV_PROCESS_ID, -1)):
        if getattr(cfg, field) == unset and environ.get(var):
            try:
                updates[field] = int(environ[var])
            except ValueError:
                raise ConfigError(f"environment variable {var}={environ[var]!r}: expected an "
                                  "integer") from None
    return dataclasses.replace(cfg, **updates) if updates else cfg


def detect_cluster(environ: Mapping[str, str] | None = None) -> str | None:
    """'tpu', 'slurm' or 'mpi' when this process is one of several JAX can find by itself."""
    environ = os.environ if environ is None else environ

    def more_than_one(var: str) -> bool:
        value = environ.get(var, "")
        return value.isdigit() and int(value) > 1

    # Cloud TPU VMs (and GKE TPU pods) list every worker of the slice; multi-slice adds MEGASCALE.
    if "," in environ.get("TPU_WORKER_HOSTNAMES", "") or environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu"
    # Inside `srun` (a job step) with several tasks; sbatch's own shell is not a JAX process.
    if environ.get("SLURM_STEP_ID") is not None and more_than_one("SLURM_STEP_NUM_TASKS"):
        return "slurm"
    if more_than_one("OMPI_COMM_WORLD_SIZE"):
        return "mpi"
    return None


def initialize(cfg: DistributedConfig, environ: Mapping[str, str] | None = None) -> str:
    """Join the multi-process run `cfg` (and the environment) describe; return how, for the log.

    Call before any other JAX call. A no-op when JAX is already initialized or there is nothing
    to join.
    """
    if jax.distributed.is_initialized():
        return f"already initialized: process {jax.process_index()} of {jax.process_count()}"
    cfg = from_environment(cfg, environ)
    timeouts = dict(initialization_timeout=cfg.initialization_timeout_s,
                    heartbeat_timeout_seconds=cfg.heartbeat_timeout_s,
                    shutdown_timeout_seconds=cfg.shutdown_timeout_s)
    if cfg.explicit:
        if cfg.num_processes < 1 or cfg.process_id < 0:
            raise ConfigError(
                f"DistributedConfig.coordinator_address = {cfg.coordinator_address!r} needs "
                f"num_processes (got {cfg.num_processes}) and process_id (got {cfg.process_id}); "
                f"set them in gin or in {ENV_NUM_PROCESSES} / {ENV_PROCESS_ID}")
        if cfg.process_id >= cfg.num_processes:
            raise ConfigError(f"process_id {cfg.process_id} must be below num_processes "
                              f"{cfg.num_processes}")
        jax.distributed.initialize(cfg.coordinator_address, cfg.num_processes, cfg.process_id,
                                   **timeouts)
        how = f"coordinator {cfg.coordinator_address}"
    elif cfg.auto_detect and (cluster := detect_cluster(environ)):
        jax.distributed.initialize(**timeouts)
        how = f"{cluster} job (detected)"
    else:
        return "single process"
    return f"{how}: process {jax.process_index()} of {jax.process_count()}"


def process_tag() -> str:
    """'[process 1/4] ' in a multi-process run, '' otherwise (prefixes log lines)."""
    if jax.process_count() == 1:
        return ""
    return f"[process {jax.process_index()}/{jax.process_count()}] "


def configure_logging(level: int = logging.INFO) -> None:
    """Process 0 logs at `level`; the others only warnings and errors; lines carry the process.

    Call after `initialize`. Metrics are process 0's alone already (MetricsWriter); this keeps
    N copies of every log line out of the job's output while every process still reports what
    went wrong on it.
    """
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if jax.process_count() == 1:
        return  # one process: leave the caller's logging (and pytest's capture) alone
    primary = jax.process_index() == 0
    logging.basicConfig(level=level if primary else logging.WARNING, force=True,
                        format=f"%(asctime)s {process_tag()}%(levelname)s %(message)s",
                        datefmt="%H:%M:%S")


def report_fatal(error: BaseException) -> None:
    """Log `error` with its traceback on whichever process it happened (tagged with the id)."""
    hint = ""
    if jax.process_count() > 1 and isinstance(error, jax.errors.JaxRuntimeError):
        hint = (" (a failed collective in a multi-process run usually means that another "
                "process died: see the other processes' logs)")
    log.critical("fatal error, exiting: %s: %s%s", type(error).__name__, error, hint,
                 exc_info=error)


def exit_after_fatal(code: int = 1) -> None:
    """End a multi-process run's process now: the normal exit would wait (up to
    DistributedConfig.shutdown_timeout_s) for peers that may be stuck in a collective with this
    process, while a quick exit lets the heartbeats tell them at once."""
    if jax.process_count() > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class StartupInterrupted(BaseException):
    """SIGTERM before the training loop began: no step ran, so there is nothing to save.

    A BaseException, so that no `except Exception` on the way (prepare, compile) swallows it.
    """


_STARTUP_SIGTERM = threading.Event()


def _startup_sigterm(signum, frame) -> None:
    # The flag outlives the exception: raised inside a finalizer (__del__, a weakref callback),
    # Python would print and drop it, and the PreemptionGuard checks the flag instead.
    del signum, frame
    _STARTUP_SIGTERM.set()
    raise StartupInterrupted


@contextlib.contextmanager
def sigterm_exits_until_the_loop():
    """Within this block a SIGTERM raises StartupInterrupted, until PreemptionGuard takes the
    signal over at the training loop: a job preempted while it prepares data or compiles exits
    with a message instead of dying silently. Main thread only (where Python gets signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _STARTUP_SIGTERM.clear()
    previous = signal.signal(signal.SIGTERM, _startup_sigterm)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is _startup_sigterm:
            signal.signal(signal.SIGTERM, previous)
        _STARTUP_SIGTERM.clear()


class PreemptionGuard:
    """Tells the loop at which step boundary to save a checkpoint and stop, on every process.

    Multi-process: JAX's preemption service catches SIGTERM on any process and all processes
    agree on the same step (`reached_preemption_sync_point`, called once per step everywhere).
    Single process: a SIGTERM handler sets a flag read at the next step; a second SIGTERM kills
    the process as usual.
    """

    def __init__(self):
        if _STARTUP_SIGTERM.is_set():  # a start-up SIGTERM whose exception was dropped
            raise StartupInterrupted
        self._use_jax = jax.distributed.is_initialized()
        if self._use_jax and not jax.config.jax_enable_preemption_service:
            raise ConfigError("jax_enable_preemption_service is off: a multi-process run "
                              "cannot agree on a preemption checkpoint; turn it back on")
        self._signalled = False
        self._previous = None
        # Python delivers signals to the main thread only; elsewhere SIGTERM keeps its default.
        if not self._use_jax and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            if self._previous is _startup_sigterm:  # the loop is past start-up
                self._previous = signal.SIG_DFL

    def _on_sigterm(self, signum, frame) -> None:
        del frame
        self._signalled = True
        signal.signal(signum, self._previous or signal.SIG_DFL)

    def reached(self, step: int) -> bool:
        """Whether to checkpoint after `step` and stop (call exactly once per step)."""
        if self._use_jax:
            from jax.experimental import multihost_utils
            return multihost_utils.reached_preemption_sync_point(step)
        return self._signalled

    def close(self) -> None:
        """Put the previous SIGTERM handler back."""
        if not self._use_jax and self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class StepWatchdog:
    """Ends this process when the loop finishes no step for `timeout_s` seconds (0: off).

    JAX's heartbeats catch a dead process, not a stuck one: a peer blocked in its input
    pipeline keeps heartbeating while everyone else waits in a collective for it. The loop reads
    step N-1's metrics before dispatching further, so a beat per iteration means the devices
    are progressing too.
    """

    def __init__(self, timeout_s: int):
        self._timeout_s = timeout_s
        self._last = time.monotonic()
        self._done = threading.Event()
        if timeout_s:
            threading.Thread(target=self._watch, name="step-watchdog", daemon=True).start()

    def beat(self) -> None:
        """A step finished."""
        self._last = time.monotonic()

    def _watch(self) -> None:
        while not self._done.wait(min(self._timeout_s / 4, 5.0)):
            idle = time.monotonic() - self._last
            if idle > self._timeout_s:
                log.critical("fatal error, exiting: no training step finished in %.0f s "
                             "(DistributedConfig.step_timeout_s = %d); this process or a peer "
                             "is stuck (see the other processes' logs)", idle, self._timeout_s)
                logging.shutdown()
                os._exit(1)  # the main thread may be blocked in a collective forever

    def close(self) -> None:
        """Stop watching (the loop is over)."""
        self._done.set()
