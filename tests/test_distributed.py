"""t5x_like.distributed, and real multi-process runs: launch/local.py starts N processes that
meet through jax.distributed on 127.0.0.1 (no runtime mocks). The worker is
tests/multiprocess_worker.py: the trainer on fixed global batches, so runs with different
process counts see the same data."""

import json
import os
import pathlib
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from conftest import MICRO_MODEL, losses_of, partitioner_for
from multiprocess_worker import GlobalBatches, config_from_dict, make_inputs
from t5x_like import distributed, trainer
from t5x_like.config import ConfigError, DistributedConfig
from t5x_like.metrics import read_metrics

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 12
JOB_TIMEOUT_S = 240  # a hang fails the test here, not the CI job


def _parts(model_dir, steps=STEPS, heartbeat_s=100):
    return {"model": MICRO_MODEL.to_dict(), "data": {"task_feature_lengths": {"targets": 32}},
            "optimizer": {"warmup_steps": 2, "learning_rate": 3e-3, "schedule_steps": STEPS},
            "train": {"model_dir": str(model_dir), "train_steps": steps, "batch_size": 8,
                      "log_every": 1, "eval_every": 0, "eval_batches": 2, "checkpoint_every": 4,
                      "progress_bar": False},
            "distributed": {"heartbeat_timeout_s": heartbeat_s}}


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent XLA cache the jobs share: every job compiles the same programs."""
    return tmp_path_factory.mktemp("xla_cache")


class Job:
    """launch/local.py running the worker on 2 processes x 4 devices; output collected live."""

    def __init__(self, parts, cache_dir, delay_s=0.0, grace_s=30, cli_args=None, processes=2,
                 devices=4, **worker):
        """The worker on `parts` (a RunConfig as dicts) and `worker` options (evaluate,
        stuck_process, stuck_at_batch), or `t5x-like CLI_ARGS...`, on `processes` x `devices`."""
        spec = json.dumps({"config": parts, "delay_s": delay_s, **worker})
        program = ([str(REPO / "tests" / "multiprocess_worker.py"), spec] if cli_args is None
                   else ["-m", "t5x_like.cli", *cli_args])
        command = [sys.executable, str(REPO / "launch" / "local.py"), "-n", str(processes),
                   "-d", str(devices),
                   f"--grace={grace_s}", f"--timeout={JOB_TIMEOUT_S}", "--",
                   sys.executable, *program]
        env = os.environ | {"PYTHONPATH": str(REPO), "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
                            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
        self.proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            self._queue.put(line)

    def wait_for(self, pattern: str) -> re.Match:
        """The first output line matching `pattern` (fails if the job ends or stalls first)."""
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=1)
            except queue.Empty:
                assert self.proc.poll() is None, f"job ended before {pattern!r}:\n{self.output}"
                continue
            if m := re.search(pattern, line):
                return m
        pytest.fail(f"no {pattern!r} within {JOB_TIMEOUT_S} s:\n{self.output}")

    def pid(self, process: int) -> int:
        return int(next(re.search(rf"\[launch\] process {process}: pid (\d+)", l)[1]
                        for l in self.lines if f"process {process}: pid" in l))

    def finish(self) -> int:
        try:
            return self.proc.wait(timeout=JOB_TIMEOUT_S + 30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()

    @property
    def output(self) -> str:
        return "".join(self.lines)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, compile_cache):
    """12 steps on 2 processes x 4 devices (mesh data=2 x fsdp=4: DCN data parallel)."""
    model_dir = tmp_path_factory.mktemp("two_process")
    job = Job(_parts(model_dir), compile_cache)
    assert job.finish() == 0, job.output
    assert "mesh data=2 fsdp=4 tensor=1 (8 cpu devices)" in job.output
    return model_dir, read_metrics(str(model_dir))


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    """The same 12 steps in this process on its 8 devices (mesh fsdp=8)."""
    model_dir = tmp_path_factory.mktemp("one_process")
    cfg = config_from_dict(_parts(model_dir))
    return model_dir, trainer.train(cfg, make_inputs(cfg, 0, 1))


def test_two_processes_match_one_process(two_process_run, one_process_run):
    one = losses_of(one_process_run[1])
    two = losses_of(two_process_run[1])
    assert sorted(two) == sorted(one) == list(range(1, STEPS + 1))
    assert two[1] == pytest.approx(one[1], rel=1e-6)  # same parameters, reduction order differs
    np.testing.assert_allclose([two[s] for s in one], list(one.values()), rtol=1e-4)


def test_sigterm_checkpoints_at_the_next_step_and_the_relaunch_resumes(two_process_run,
                                                                        compile_cache, tmp_path):
    job = Job(_parts(tmp_path), compile_cache, delay_s=0.25)  # the signal lands mid-run
    job.wait_for(r"\[p0\] .* step 3: ")
    os.kill(job.pid(1), signal.SIGTERM)  # one host's notice; JAX tells the other
    assert job.finish() == 0, job.output
    agreed = re.findall(r"\[p(\d)\] .*preempted: saved a checkpoint at step (\d+)", job.output)
    assert sorted(p for p, _ in agreed) == ["0", "1"] and len({s for _, s in agreed}) == 1
    saved = int(agreed[0][1])
    assert 3 < saved < STEPS and (tmp_path / "checkpoints" / str(saved)).is_dir()

    relaunch = Job(_parts(tmp_path), compile_cache)
    assert relaunch.finish() == 0, relaunch.output
    assert f"resumed at step {saved}" in relaunch.output
    resumed = losses_of(read_metrics(str(tmp_path)))
    assert resumed == losses_of(two_process_run[1])  # exact: same processes, mesh and data


def _cli_flags(data_dir, model_dir, steps):
    return [f"--gin.MODEL_DIR={model_dir}", f"--gin.TRAIN_STEPS={steps}",
            "--gin.SCHEDULE_STEPS=20", "--gin.TASK_FEATURE_LENGTHS={'targets': 64}",
            "--gin.ModelConfig.num_layers=2", "--gin.ModelConfig.d_model=64",
            "--gin.ModelConfig.mlp_dim=128", "--gin.OptimizerConfig.warmup_steps=5",
            "--gin.TrainConfig.log_every=1", f"--gin.DataConfig.data_dir={data_dir}",
            "--gin.DistributedConfig.heartbeat_timeout_s=5"]


def test_cli_refuses_unprepared_data_in_a_multi_process_run(stdlib_data, compile_cache, tmp_path):
    # The corpus and tokenizer, but nothing prepared.
    shutil.copytree(stdlib_data.data_dir, tmp_path / "data",
                    ignore=shutil.ignore_patterns("prepared"))
    job = Job(None, compile_cache, cli_args=["train", *_cli_flags(tmp_path / "data",
                                                                   tmp_path / "run", 4)])
    assert job.finish() != 0, job.output
    for p in (0, 1):
        own = re.search(rf"\[p{p}\] .*\[process {p}/2\] CRITICAL fatal error, exiting: "
                        r"FileNotFoundError: .* prepare first", job.output)
        # Process 0 hosts the coordination service: when it exits first, JAX ends the other
        # process before that one reaches its own error.
        peer_gone = p == 1 and re.search(r"\[p1\] .*another task died", job.output)
        assert own or peer_gone, job.output
    assert "[launch] process 1: exit code 0" not in job.output


def test_the_cli_trains_the_same_batches_on_1_2_and_4_processes(stdlib_data, compile_cache,
                                                                tmp_path):
    """Through the CLI's own data path (prepared plans, the grain iterator), global batch s is
    the same for any process count: from the same parameters, the first step's loss and
    gradient norm agree to float tolerance, and the losses stay together. Process p used to
    shuffle the rows [p::P] on its own: step 1's gradient norm differed by 5%."""
    from t5x_like import cli
    flags = _cli_flags(stdlib_data.data_dir, tmp_path / "one", 6)
    assert cli.main(["prepare", *flags]) == 0
    assert cli.main(["train", *flags]) == 0  # this process's 8 devices: fsdp=8
    runs = {1: read_metrics(str(tmp_path / "one"))}
    for processes, devices, mesh in ((2, 4, "data=2 fsdp=4"), (4, 2, "data=4 fsdp=2")):
        model_dir = tmp_path / f"p{processes}"
        job = Job(None, compile_cache, processes=processes, devices=devices,
                  cli_args=["train", *_cli_flags(stdlib_data.data_dir, model_dir, 6)])
        assert job.finish() == 0, job.output
        assert f"mesh {mesh} tensor=1" in job.output
        runs[processes] = read_metrics(str(model_dir))
    first = {p: next(r for r in rows if r.get("step") == 1) for p, rows in runs.items()}
    for p in (2, 4):
        assert first[p]["grad_norm"] == pytest.approx(first[1]["grad_norm"], rel=1e-5)
        assert first[p]["loss"] == pytest.approx(first[1]["loss"], rel=1e-6)
        one, many = losses_of(runs[1]), losses_of(runs[p])
        assert sorted(many) == sorted(one) == list(range(1, 7))
        np.testing.assert_allclose([many[s] for s in one], list(one.values()), rtol=1e-4)


def test_a_dead_peer_makes_the_survivor_fail_instead_of_hanging(stdlib_data, compile_cache,
                                                                 tmp_path):
    from t5x_like import cli
    flags = _cli_flags(stdlib_data.data_dir, tmp_path, 400)
    assert cli.main(["prepare", *flags]) == 0  # multi-process runs read prepared data only
    job = Job(None, compile_cache, grace_s=120, cli_args=["train", *flags])
    job.wait_for(r"\[p0\] .* step 2: ")
    os.kill(job.pid(1), signal.SIGKILL)
    code = job.finish()
    assert code != 0, job.output
    # Either a collective fails at once (the survivor reports it, tagged with its process id),
    # or JAX's heartbeat declares the peer dead and ends the survivor.
    survivor = "".join(l for l in job.lines if l.startswith("[p0]"))
    assert ("[process 0/2] CRITICAL fatal error, exiting" in survivor
            or "another task died" in survivor), job.output
    # The survivor exited by itself (its collective or the heartbeat), not by the launcher.
    assert "grace period over" not in job.output
    assert re.search(r"\[launch\] process 0: (exit code [1-9]|killed by SIGABRT)", job.output)


def test_a_stuck_peer_ends_the_job_through_the_step_watchdog(compile_cache, tmp_path):
    parts = _parts(tmp_path, steps=400)
    parts["distributed"]["step_timeout_s"] = 10  # heartbeats keep flowing: 100 s default
    job = Job(parts, compile_cache, grace_s=120, stuck_process=1, stuck_at_batch=3)
    assert job.finish() != 0, job.output
    # The stuck process's watchdog usually fires first; the waiting one's may win the race.
    # Whichever exits first, the other then fails too (its collective or JAX's coordinator).
    assert re.search(r"\[p(\d)\] .*\[process \1/2\] CRITICAL fatal error, exiting: no "
                     r"training step finished in \d+ s", job.output), job.output
    assert "grace period over" not in job.output  # both processes ended by themselves
    assert "exit code 0" not in job.output


def test_two_process_checkpoint_restores_in_one_process_on_another_mesh(two_process_run):
    model_dir, rows = two_process_run
    cfg = config_from_dict(_parts(model_dir))
    params, graphdef, step, partitioner = trainer.load_trained(
        cfg, partitioner=partitioner_for((2, 2, 2)))
    assert step == STEPS and len(params["layers"]["mlp"]["gate"].sharding.device_set) == 8
    batches = make_inputs(cfg, 0, 1).eval_batches
    eval_step = trainer.compile_eval_step(graphdef, params, partitioner, batches[0], 8)
    metrics = trainer.evaluate(eval_step, params, batches, partitioner)
    logged = [r for r in rows if "eval_loss" in r][-1]
    assert logged["step"] == STEPS
    assert metrics["eval_loss"] == pytest.approx(logged["eval_loss"], rel=1e-6)


def test_one_process_checkpoint_restores_in_two_processes(one_process_run, compile_cache):
    model_dir, rows = one_process_run
    job = Job(_parts(model_dir), compile_cache, evaluate=True)
    assert job.finish() == 0, job.output
    got = json.loads(job.wait_for(r"EVAL (\{.*\})")[1])
    logged = [r for r in rows if "eval_loss" in r][-1]
    assert got["step"] == logged["step"] == STEPS
    assert got["eval_loss"] == pytest.approx(logged["eval_loss"], rel=1e-6)


# ---------------------------------------------------------------------------------------------
# One process: configuration, detection, the SIGTERM path of the loop.
# ---------------------------------------------------------------------------------------------
def test_environment_fills_only_what_the_config_leaves_empty():
    env = {distributed.ENV_COORDINATOR: "10.0.0.2:1234", distributed.ENV_NUM_PROCESSES: "4",
           distributed.ENV_PROCESS_ID: "3"}
    got = distributed.from_environment(DistributedConfig(), env)
    assert (got.coordinator_address, got.num_processes, got.process_id) == ("10.0.0.2:1234", 4, 3)
    pinned = distributed.from_environment(DistributedConfig(num_processes=8), env)
    assert pinned.num_processes == 8
    with pytest.raises(ConfigError, match="T5X_LIKE_PROCESS_ID='x'"):
        distributed.from_environment(DistributedConfig(), {distributed.ENV_PROCESS_ID: "x"})
    with pytest.raises(ConfigError, match="process_id = 4: must be below num_processes=4"):
        distributed.from_environment(DistributedConfig(), env | {distributed.ENV_PROCESS_ID: "4"})


@pytest.mark.parametrize("kwargs, message", [
    (dict(coordinator_address="10.0.0.2"), "expected host:port"),
    (dict(num_processes=-1), "must be >= 0"),
    (dict(heartbeat_timeout_s=0), "must be positive"),
    (dict(step_timeout_s=-1), "must be >= 0"),
    (dict(num_processes=2, process_id=2), "must be below num_processes=2"),
])
def test_bad_distributed_config_is_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DistributedConfig(**kwargs)


def test_coordinator_without_ranks_is_refused_before_jax_is_asked():
    with pytest.raises(ConfigError, match="needs num_processes .* and process_id"):
        distributed.initialize(DistributedConfig(coordinator_address="127.0.0.1:1"), environ={})


@pytest.mark.parametrize("env, cluster", [
    ({"TPU_WORKER_HOSTNAMES": "t1v-0,t1v-1"}, "tpu"),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),  # one TPU VM: nothing to join
    ({"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.2"}, "tpu"),
    ({"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2"}, "slurm"),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "2"}, None),  # the batch script itself
    ({"OMPI_COMM_WORLD_SIZE": "16"}, "mpi"),
    ({}, None),
])
def test_cluster_detection(env, cluster):
    assert distributed.detect_cluster(env) == cluster
    assert distributed.initialize(DistributedConfig(), environ={}) == "single process"


class _SignalsItself(GlobalBatches):
    """Sends this process a real SIGTERM while fetching the batch of step `at`."""

    at = 2  # batch b is fetched at the end of step b: the signal lands after step 2

    def __next__(self):
        if self.next_batch == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().__next__()


def test_sigterm_in_one_process_saves_at_the_next_step_and_resumes_exactly(one_process_run,
                                                                           tmp_path):
    cfg = config_from_dict(_parts(tmp_path))
    before = signal.getsignal(signal.SIGTERM)
    first = trainer.train(cfg, make_inputs(cfg, 0, 1, batches=_SignalsItself))
    assert signal.getsignal(signal.SIGTERM) == before
    assert max(losses_of(first)) == 3
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [3]
    trainer.train(cfg, make_inputs(cfg, 0, 1))
    assert losses_of(read_metrics(str(tmp_path))) == losses_of(one_process_run[1])


def test_sigterm_before_the_loop_exits_0_with_a_message_and_saves_nothing(stdlib_data,
                                                                          tmp_path):
    """Preempted while it starts (prepare, restore, compile), `t5x-like train` says so and
    exits 0 on its own, rather than dying silently: there is no step to save yet."""
    flags = _cli_flags(stdlib_data.data_dir, tmp_path / "run", 4)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])  # a child inherits the mask
    unblocked = ("import runpy, signal; signal.pthread_sigmask(signal.SIG_SETMASK, []); "
                 "runpy.run_module('t5x_like.cli', run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", unblocked, "train", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=os.environ | {"PYTHONPATH": str(REPO)})
    lines = []
    for line in proc.stdout:  # the first line it prints, before reading data or compiling
        lines.append(line)
        if line.startswith("MODEL_DIR:"):
            proc.send_signal(signal.SIGTERM)
            break
    output = "".join(lines) + proc.stdout.read()
    assert proc.wait(timeout=JOB_TIMEOUT_S) == 0, output
    assert "SIGTERM before the training loop started: nothing to save yet" in output, (
        f"signals blocked in the test process: {blocked}\n{output}")
    assert "step 1:" not in output and not (tmp_path / "run" / "checkpoints").exists()


class _SignalsInAFinalizer:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs, and raises, inside __del__
        for _ in range(1000):  # bytecodes for Python to run the handler on
            pass


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the drop itself
def test_a_start_up_sigterm_dropped_in_a_finalizer_still_stops_the_run_at_the_loop():
    """Python drops an exception raised inside __del__; the flag the handler sets is still
    seen when the loop would take the signal over."""
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(distributed.StartupInterrupted):
        with distributed.sigterm_exits_until_the_loop():
            _SignalsInAFinalizer()  # dropped at once: the exception dies with the finalizer
            distributed.PreemptionGuard()
    assert signal.getsignal(signal.SIGTERM) == before


def test_infer_on_two_processes_writes_the_predictions_of_one(stdlib_data, compile_cache,
                                                              tmp_path):
    """Decoding is SPMD over a mesh that spans processes: 2 processes x 4 devices decode the
    same predictions.jsonl as this process's 8 devices (process 0 writes)."""
    from t5x_like import cli
    words = "alpha beta gamma delta open close read write".split()
    rng = np.random.default_rng(0)
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"q": " ".join(rng.choice(words, 5)),
                                      "a": " ".join(rng.choice(words, 2))}) + "\n"
                          for _ in range(11)))
    flags = [*_cli_flags(stdlib_data.data_dir, tmp_path / "run", 2),
             f"--gin.MIXTURE_OR_TASK_NAME='{qa}'", f"--gin.DataConfig.eval_files='{qa}'",
             "--gin.DataConfig.inputs_field='q'", "--gin.DataConfig.targets_field='a'",
             "--gin.ObjectiveConfig.name='supervised'", "--gin.OptimizerConfig.warmup_steps=1",
             "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 12}",
             "--gin.TrainConfig.batch_size=8", "--gin.InferConfig.batch_size=4",
             "--gin.InferConfig.shard_size=5", "--gin.InferConfig.max_new_tokens=6"]
    assert cli.main(["prepare", *flags]) == 0 and cli.main(["train", *flags]) == 0
    assert cli.main(["infer", *flags, f"--gin.InferConfig.output_dir='{tmp_path / 'one'}'"]) == 0
    job = Job(None, compile_cache, cli_args=[
        "infer", *flags, f"--gin.InferConfig.output_dir='{tmp_path / 'two'}'"])
    assert job.finish() == 0, job.output
    assert "mesh data=2 fsdp=4 tensor=1 (8 cpu devices)" in job.output
    one, two = ([json.loads(line) for line in next((tmp_path / d).glob("*/predictions.jsonl"))
                 .read_text().splitlines()] for d in ("one", "two"))
    assert [r["prediction"] for r in two] == [r["prediction"] for r in one]
    assert len(one) == 11 and [r["index"] for r in two] == list(range(11))
    np.testing.assert_allclose([r["score"] for r in two], [r["score"] for r in one], rtol=1e-4)
