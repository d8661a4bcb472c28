"""The cluster launchers: valid shell (bash -n, shellcheck when installed), and --dry-run prints
the exact commands, which run as printed (checked by evaluating them with gcloud/srun replaced
by a function that records its arguments)."""

import os
import pathlib
import shutil
import string
import subprocess

import pytest
import yaml

LAUNCH = pathlib.Path(__file__).resolve().parents[2] / "launch"
SCRIPTS = ["tpu_pod.sh", "slurm_gpu.sbatch"]


def _run(script, *args, env=None):
    out = subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True,
                         timeout=30, env=os.environ | (env or {}))
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def _words(line: str, program: str) -> list[str]:
    """The argv a printed command line passes to `program` (the shell parses the quoting)."""
    shim = f'{program}() {{ printf "%s\\n" "$@"; }}; {line}'
    out = subprocess.run(["bash", "-c", shim], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script):
    subprocess.run(["bash", "-n", str(LAUNCH / script)], check=True, timeout=30)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_pass_shellcheck(script):
    out = subprocess.run(["shellcheck", str(LAUNCH / script)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout


def test_tpu_pod_dry_run_single_slice():
    lines = _run("tpu_pod.sh", "--name", "v5e", "--zone", "us-west4-a", "--type",
                 "v5litepod-256", "--runtime", "v2-alpha-tpuv5-lite", "--dry-run", "all", "--",
                 "t5x-like", "train", "--gin.MODEL_DIR='/mnt/b/run 1'")
    assert lines[0] == ("gcloud compute tpus tpu-vm create v5e --zone=us-west4-a "
                        "--accelerator-type=v5litepod-256 --version=v2-alpha-tpuv5-lite")
    assert "git ls-files -co --exclude-standard | tar -czf /tmp/v5e-t5x_like.tar.gz" in lines[1]
    assert lines[2] == ("gcloud compute tpus tpu-vm scp /tmp/v5e-t5x_like.tar.gz 'v5e:~/' "
                        "--zone=us-west4-a --worker=all")
    ssh = [_words(l, "gcloud") for l in lines[3:]]
    assert [w[:6] for w in ssh] == [["compute", "tpus", "tpu-vm", "ssh", "v5e",
                                     "--zone=us-west4-a"]] * 3
    assert all(w[6] == "--worker=all" for w in ssh)
    assert ssh[0][7] == "--command=mkdir -p ~/t5x_like && tar -xzf ~/v5e-t5x_like.tar.gz -C ~/t5x_like"
    assert ssh[1][7] == "--command=cd ~/t5x_like && python3 -m pip install -q -U 'jax[tpu]' -e ."
    remote = ssh[2][7].removeprefix("--command=")
    assert remote.startswith("cd ~/t5x_like && PATH=$HOME/.local/bin:$PATH t5x-like train ")
    # The remote shell sees the user's words unchanged.
    assert _words(remote.split("$PATH ", 1)[1], "t5x-like") == ["train", "--gin.MODEL_DIR='/mnt/b/run 1'"]


def test_tpu_pod_dry_run_two_slices():
    common = ["--name", "v5p", "--zone", "us-east5-a", "--type", "v5p-256", "--runtime",
              "v2-alpha-tpuv5", "--slices", "2", "--project", "proj", "--dry-run"]
    create = _run("tpu_pod.sh", *common, "create")
    assert create == ["gcloud compute tpus queued-resources create v5p --zone=us-east5-a "
                      "--project=proj --accelerator-type=v5p-256 "
                      "--runtime-version=v2-alpha-tpuv5 --node-count=2 --node-prefix=v5p"]
    run = _run("tpu_pod.sh", *common, "run", "--", "t5x-like", "train")
    assert [_words(l, "gcloud")[4] for l in run] == ["v5p-0", "v5p-1"]
    assert all(l.endswith("--worker=all '--command=cd ~/t5x_like && "
                          "PATH=$HOME/.local/bin:$PATH t5x-like train'") for l in run)
    delete = _run("tpu_pod.sh", *common, "delete")
    assert delete == ["gcloud compute tpus queued-resources delete v5p --zone=us-east5-a "
                      "--project=proj --force --quiet"]


def test_tpu_pod_refuses_missing_arguments():
    out = subprocess.run(["bash", str(LAUNCH / "tpu_pod.sh"), "--name", "x", "run"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--zone" in out.stderr


def test_slurm_dry_run_prints_the_srun_line():
    lines = _run("slurm_gpu.sbatch", "--dry-run", "--", "t5x-like", "train", "--gin.X='a b'",
                 env={"SLURM_JOB_NODELIST": "h100-a,h100-b", "SLURM_NNODES": "2",
                      "PATH": "/usr/bin:/bin"})  # no scontrol: the list is read as given
    assert len(lines) == 1
    words = _words(lines[0], "srun")
    assert words[:4] == ["--ntasks=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "--wait=60"]
    assert words[4:8] == ["env", "T5X_LIKE_COORDINATOR_ADDRESS=h100-a:29500",
                          "T5X_LIKE_NUM_PROCESSES=2", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9"]
    assert words[8:11] == ["bash", "-c", 'T5X_LIKE_PROCESS_ID="$SLURM_PROCID" exec "$@"']
    assert words[11:] == ["task", "t5x-like", "train", "--gin.X='a b'"]


def test_slurm_task_gets_its_rank():
    """The per-task wrapper really sets T5X_LIKE_PROCESS_ID from SLURM_PROCID."""
    out = subprocess.run(["bash", "-c", 'T5X_LIKE_PROCESS_ID="$SLURM_PROCID" exec "$@"', "task",
                          "bash", "-c", 'echo "$T5X_LIKE_PROCESS_ID"'], capture_output=True,
                         text=True, timeout=30, env=os.environ | {"SLURM_PROCID": "7"})
    assert out.stdout.strip() == "7"


def test_gke_jobset_template_renders_to_one_job_per_slice():
    text = (LAUNCH / "gke_tpu_jobset.yaml").read_text()
    fields = dict(NAME="t5x-v5p", SLICES="2", HOSTS_PER_SLICE="32", CHIPS_PER_HOST="4",
                  ACCELERATOR="tpu-v5p-slice", TOPOLOGY="4x8x8", IMAGE="img:1",
                  COMMAND="t5x-like train --gin.MODEL_DIR=gs://b/run")
    assert set(string.Template(text).get_identifiers()) == set(fields)
    doc = yaml.safe_load(string.Template(text).substitute(fields))
    job = doc["spec"]["replicatedJobs"][0]
    assert job["replicas"] == 2 and job["template"]["spec"]["parallelism"] == 32
    pod = job["template"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["bash", "-c", fields["COMMAND"]]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MEGASCALE_COORDINATOR_ADDRESS"] == "t5x-v5p-slice-0-0.t5x-v5p"
    assert container["resources"]["limits"]["google.com/tpu"] == 4
