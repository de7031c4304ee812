#!/usr/bin/env bash
# Runs mirl_jax on every worker of a Cloud TPU pod slice (one process per host).
#
#   launch/tpu_pod.sh setup TPU_NAME ZONE              # install on all workers
#   launch/tpu_pod.sh run TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]
#
# WORKDIR must be a filesystem every worker mounts at the same path (NFS,
# Filestore, a gcsfuse mount): tickets, checkpoints and logs are written there,
# and a preempted run resumes from it when the same command is run again.
set -euo pipefail
cmd=$1 tpu=$2 zone=$3
shift 3
ssh_all() { gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$1"; }
case "$cmd" in
  setup)
    ssh_all "test -d mirl_jax || git clone ${MIRL_JAX_REPO:?set MIRL_JAX_REPO to the repository URL} mirl_jax;
             cd mirl_jax && python3 -m venv .venv && . .venv/bin/activate &&
             pip install -q -e . 'jax[tpu]'" ;;
  run)
    config=$1 workdir=$2
    shift 2
    ssh_all "cd mirl_jax && . .venv/bin/activate &&
             python -m mirl_jax.main --distributed --config $config --workdir $workdir $*" ;;
  *) echo "usage: $0 setup|run TPU_NAME ZONE [CONFIG WORKDIR [overrides]]" >&2; exit 2 ;;
esac
