#!/usr/bin/env bash
# Run t5x_like on a Cloud TPU pod slice (or several slices): create the TPU VMs, copy this
# checkout to every worker, install it, and run the same command on every worker at once.
#
#   launch/tpu_pod.sh --name my-v5e --zone us-west4-a --type v5litepod-256 \
#       --runtime v2-alpha-tpuv5-lite all -- t5x-like train --gin_file=runs/pretrain.gin ...
#   launch/tpu_pod.sh --name my-v5p --zone us-east5-a --type v5p-256 --runtime v2-alpha-tpuv5 \
#       --slices 2 all -- t5x-like train ...          # multi-slice: a queued resource of 2 nodes
#   launch/tpu_pod.sh ... --dry-run all -- t5x-like train   # print the exact commands only
#
# Stages: create | sync | install | run | all (= create sync install run) | delete.
# Every worker runs the command; JAX finds the other workers by itself (TPU metadata, and
# MEGASCALE_* set by the multi-slice queued resource), so the command is the single-host one.
# Relaunching `run` after a preemption resumes from MODEL_DIR's latest checkpoint: give MODEL_DIR
# (and DataConfig.data_dir) on storage every worker shares, e.g. a gcsfuse-mounted bucket.
set -euo pipefail

NAME="" ZONE="" TYPE="" RUNTIME="" PROJECT="" SLICES=1 DRY_RUN=0 STAGE=""
REMOTE_DIR="t5x_like"  # relative to each worker's home directory
COMMAND=()

usage() {
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

while (($#)); do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --type) TYPE="$2"; shift 2 ;;
    --runtime) RUNTIME="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --slices) SLICES="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; COMMAND=("$@"); break ;;
    create|sync|install|run|all|delete) STAGE="$1"; shift ;;
    *) echo "tpu_pod.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

[[ -n "$NAME" && -n "$ZONE" && -n "$STAGE" ]] || {
  echo "tpu_pod.sh: --name, --zone and a stage are required (see --help)" >&2; exit 2; }
[[ "$SLICES" =~ ^[1-9][0-9]*$ ]] || { echo "tpu_pod.sh: --slices must be >= 1" >&2; exit 2; }

# One word as the shell would need it written: bare when safe, else in single quotes.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

quote_all() {
  local word sep=""
  for word in "$@"; do printf '%s%s' "$sep" "$(quote "$word")"; sep=" "; done
}

# Print the command (dry run: shell-quoted, ready to paste) or run it.
run() {
  if ((DRY_RUN)); then
    quote_all "$@"
    echo
  else
    "$@"
  fi
}

GCLOUD_SCOPE=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && GCLOUD_SCOPE+=(--project="$PROJECT")

# One slice is one TPU VM resource named NAME; N slices are the nodes NAME-0..NAME-(N-1) of the
# queued resource NAME.
nodes() {
  if ((SLICES == 1)); then echo "$NAME"; else for ((i = 0; i < SLICES; i++)); do echo "$NAME-$i"; done; fi
}

on_every_worker() {  # on_every_worker REMOTE_COMMAND: every worker of every slice, in parallel
  local node pids=()
  for node in $(nodes); do
    if ((DRY_RUN)); then  # in order, so the printed plan reads the same every time
      run gcloud compute tpus tpu-vm ssh "$node" "${GCLOUD_SCOPE[@]}" --worker=all --command="$1"
      continue
    fi
    run gcloud compute tpus tpu-vm ssh "$node" "${GCLOUD_SCOPE[@]}" --worker=all \
      --command="$1" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
}

stage_create() {
  [[ -n "$TYPE" && -n "$RUNTIME" ]] || {
    echo "tpu_pod.sh create: give --type (e.g. v5litepod-256) and --runtime" >&2; exit 2; }
  if ((SLICES == 1)); then
    run gcloud compute tpus tpu-vm create "$NAME" "${GCLOUD_SCOPE[@]}" \
      --accelerator-type="$TYPE" --version="$RUNTIME"
  else
    # Multi-slice: one queued resource, so the slices are provisioned together and get the
    # MEGASCALE_* environment that lets JAX join them over DCN.
    run gcloud compute tpus queued-resources create "$NAME" "${GCLOUD_SCOPE[@]}" \
      --accelerator-type="$TYPE" --runtime-version="$RUNTIME" \
      --node-count="$SLICES" --node-prefix="$NAME"
  fi
}

stage_sync() {
  # The checkout as git sees it (tracked and new files, nothing ignored: no venv, no runs/).
  local archive="/tmp/$NAME-t5x_like.tar.gz" root
  root="$(cd "$(dirname "$0")/.." && pwd)"
  if ((DRY_RUN)); then
    echo "(cd $(quote "$root") && git ls-files -co --exclude-standard | tar -czf $(quote "$archive") -T -)"
  else
    (cd "$root" && git ls-files -co --exclude-standard | tar -czf "$archive" -T -)
  fi
  local node
  for node in $(nodes); do
    run gcloud compute tpus tpu-vm scp "$archive" "$node:~/" "${GCLOUD_SCOPE[@]}" --worker=all
  done
  on_every_worker "mkdir -p ~/$REMOTE_DIR && tar -xzf ~/$(basename "$archive") -C ~/$REMOTE_DIR"
}

stage_install() {
  on_every_worker "cd ~/$REMOTE_DIR && python3 -m pip install -q -U 'jax[tpu]' -e ."
}

stage_run() {
  ((${#COMMAND[@]})) || { echo "tpu_pod.sh run: give the command after --" >&2; exit 2; }
  on_every_worker "cd ~/$REMOTE_DIR && PATH=\$HOME/.local/bin:\$PATH $(quote_all "${COMMAND[@]}")"
}

stage_delete() {
  if ((SLICES == 1)); then
    run gcloud compute tpus tpu-vm delete "$NAME" "${GCLOUD_SCOPE[@]}" --quiet
  else
    run gcloud compute tpus queued-resources delete "$NAME" "${GCLOUD_SCOPE[@]}" --force --quiet
  fi
}

case "$STAGE" in
  all) stage_create; stage_sync; stage_install; stage_run ;;
  *) "stage_$STAGE" ;;
esac
