# Shared by tools/dist_train.sh, tools/dist_train_load.sh and tools/dist_test.sh
# (sourced, not executed). Sets ROOT, PY and the torchrun settings, and defines
# `run_torchrun SCRIPT ARGS...`.
#
# Environment knobs:
#   GPUS         processes per node (default: visible CUDA GPUs, or 1 without CUDA)
#   NNODES       number of nodes (default 1)
#   NODE_RANK    rank of this node (default 0)
#   MASTER_ADDR  address of node 0 (default 127.0.0.1)
#   PORT         rendezvous port on node 0 (default 29500)
#   PYTHON       interpreter (default: .venv/bin/python of the checkout, else python3)
# Without CUDA the processes run on CPU with the gloo backend (tools/train.py and
# tools/test.py set that up); with CUDA, mmengine uses NCCL and one GPU per process.
# The workers end themselves when torchrun dies, even by SIGKILL (parent-death
# signal + watchdog, dtop.utils.launch.die_with_parent), and a training holds a lock
# on WORK_DIR so a second one (e.g. --resume) cannot race it.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

pick_python() {
  if [[ -n "${PYTHON:-}" ]]; then
    command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON=$PYTHON is not an executable"
    echo "$PYTHON"
  elif [[ -x "$ROOT/.venv/bin/python" ]]; then
    echo "$ROOT/.venv/bin/python"
  elif command -v python3 >/dev/null 2>&1; then
    echo python3
  elif command -v python >/dev/null 2>&1; then
    echo python
  else
    die "no Python found: run 'bash tools/setup_env.sh' or set PYTHON=/path/to/python"
  fi
}

# A local checkpoint must exist; URLs are passed through.
check_checkpoint() {
  local ckpt="$1"
  if [[ "$ckpt" != *"://"* && ! -f "$ckpt" ]]; then
    die "checkpoint not found: $ckpt"
  fi
}

check_int() {
  local name="$1" value="$2" min="$3"
  if ! [[ "$value" =~ ^[0-9]+$ ]] || (( value < min )); then
    die "$name must be an integer >= $min, got '$value'"
  fi
}

run_torchrun() {
  PY="$(pick_python)"
  if [[ -z "${GPUS:-}" ]]; then
    GPUS="$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null)" \
      || die "cannot import torch with $PY (set PYTHON or run 'bash tools/setup_env.sh')"
    (( GPUS > 0 )) || GPUS=1
  fi
  NNODES="${NNODES:-1}"
  NODE_RANK="${NODE_RANK:-0}"
  MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
  PORT="${PORT:-29500}"
  check_int GPUS "$GPUS" 1
  check_int NNODES "$NNODES" 1
  check_int NODE_RANK "$NODE_RANK" 0
  check_int PORT "$PORT" 1
  (( NODE_RANK < NNODES )) || die "NODE_RANK ($NODE_RANK) must be < NNODES ($NNODES)"

  local script="$1"
  shift
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  echo "$(basename "$0"): torchrun nnodes=$NNODES node_rank=$NODE_RANK" \
    "nproc_per_node=$GPUS master=$MASTER_ADDR:$PORT python=$PY" >&2
  # `python -m torch.distributed.run` is torchrun, run by the chosen interpreter.
  exec "$PY" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --master_port="$PORT" \
    --nproc_per_node="$GPUS" \
    "$script" "$@" --launcher pytorch
}
