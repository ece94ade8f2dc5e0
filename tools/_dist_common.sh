# Shared by tools/dist_train.sh, tools/dist_train_load.sh and tools/dist_test.sh
# (sourced, not executed). Sets ROOT, PY and the torchrun settings, and defines
# `run_torchrun SCRIPT ARGS...`; tools/slurm_train.sh and tools/slurm_test.sh use
# `run_srun PARTITION JOB_NAME SCRIPT ARGS...` (see there for their knobs). All five
# read their arguments with `read_args`.
#
# Environment knobs:
#   GPUS         processes per node (default: visible CUDA GPUs, or 1 without CUDA)
#   NNODES       number of nodes (default 1)
#   NODE_RANK    rank of this node (default 0)
#   MASTER_ADDR  address of node 0 (default 127.0.0.1)
#   PORT         rendezvous port on node 0 (default 29500; 1..65535, checked free on node 0)
#   DTOP_RDZV_TIMEOUT  seconds the nodes wait for each other when NNODES > 1 (default
#                300); then one `error:` line says who did not come
#   PYTHON       interpreter (default: .venv/bin/python of the checkout, else python3)
# NNODES > 1 needs NODE_RANK and MASTER_ADDR set explicitly on every node.
# Without CUDA the processes run on CPU with the gloo backend (tools/train.py and
# tools/test.py set that up); with CUDA, mmengine uses NCCL and one GPU per process.
# The workers end themselves when torchrun dies, even by SIGKILL (parent-death
# signal + watchdog, dtop.utils.launch.die_with_parent), and a training holds a lock
# on WORK_DIR so a second one (e.g. --resume) cannot race it.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() {
  echo "$(basename "$0"): error: $*" >&2
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

# read_args TOOL NAME... -- "$@": the launcher's first arguments into the variables
# NAME... (e.g. CONFIG WORK_DIR), dying with the usage line ("... NAME...
# [TOOL options...]") when fewer are given; CONFIG must be a file. The launcher
# then drops them (`shift <number of NAMEs>`) and passes the rest to TOOL.
read_args() {
  local tool="$1" names=() name i=1
  shift
  while [[ "$1" != "--" ]]; do
    names+=("$1")
    shift
  done
  shift
  (( $# >= ${#names[@]} )) || die "usage: bash tools/$(basename "$0") ${names[*]}" \
    "[$tool options...]"
  for name in "${names[@]}"; do
    printf -v "$name" '%s' "${!i}"
    i=$((i + 1))
  done
  [[ -f "$CONFIG" ]] || die "config file not found: $CONFIG"
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

# PORT: an integer in 1..65535.
check_port_value() {
  local port="$1"
  if ! [[ "$port" =~ ^[0-9]+$ ]] || (( ${#port} > 5 || port < 1 || port > 65535 )); then
    die "PORT must be an integer in 1..65535, got '$port'; pick another PORT (e.g. PORT=29500)"
  fi
}

# PORT can be opened for listening on this host (what torchrun's TCPStore does on
# node 0). Prints nothing when it can; otherwise dies naming the port and the fix.
check_port_free() {
  local port="$1" answer
  # shellcheck disable=SC2016
  answer="$("$PY" -c '
import errno, socket, sys
port = int(sys.argv[1])
def try_bind(family, addr, p):
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, p))
        return None
    except OSError as e:
        return e
    finally:
        s.close()
err = try_bind(socket.AF_INET, "0.0.0.0", port)
if err is None and socket.has_ipv6:
    err = try_bind(socket.AF_INET6, "::", port)
    if err is not None and err.errno != errno.EADDRINUSE:
        err = None  # no IPv6 here: IPv4 decides
if err is None:
    sys.exit(0)
s = socket.socket(); s.bind(("127.0.0.1", 0)); free = s.getsockname()[1]; s.close()
kind = "busy" if err.errno == errno.EADDRINUSE else "denied"
print(kind, free, err.strerror)
' "$port" 2>/dev/null)" || return 0  # the check itself failed: let torchrun decide
  case "$answer" in
    busy\ *)
      die "PORT=$port is already in use on this host (another run or service listens" \
        "on it); pick another PORT, e.g. PORT=$(cut -d' ' -f2 <<<"$answer") (free now)" ;;
    denied\ *)
      die "PORT=$port cannot be opened on this host ($(cut -d' ' -f3- <<<"$answer");" \
        "ports below 1024 need root); pick another PORT, e.g." \
        "PORT=$(cut -d' ' -f2 <<<"$answer") (free now)" ;;
  esac
}

run_torchrun() {
  PY="$(pick_python)"
  if [[ -z "${GPUS:-}" ]]; then
    GPUS="$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null)" \
      || die "cannot import torch with $PY (set PYTHON or run 'bash tools/setup_env.sh')"
    (( GPUS > 0 )) || GPUS=1
  fi
  local rank_given="${NODE_RANK:+yes}" addr_given="${MASTER_ADDR:+yes}"
  NNODES="${NNODES:-1}"
  NODE_RANK="${NODE_RANK:-0}"
  MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
  PORT="${PORT:-29500}"
  check_int GPUS "$GPUS" 1
  check_int NNODES "$NNODES" 1
  check_int NODE_RANK "$NODE_RANK" 0
  check_port_value "$PORT"
  (( NODE_RANK < NNODES )) || die "NODE_RANK ($NODE_RANK) must be < NNODES ($NNODES)"
  local rdzv_args=()
  if (( NNODES > 1 )); then
    [[ -n "$rank_given" ]] || die "NNODES=$NNODES needs NODE_RANK set on every node" \
      "(NODE_RANK=0 on the node at MASTER_ADDR, $( (( NNODES == 2 )) && echo 1 ||
        echo "1..$((NNODES - 1))") on the others)"
    [[ -n "$addr_given" ]] || die "NNODES=$NNODES needs MASTER_ADDR set on every node" \
      "(the address of node 0 that the other nodes can reach), e.g. MASTER_ADDR=10.0.0.1"
    DTOP_RDZV_TIMEOUT="${DTOP_RDZV_TIMEOUT:-300}"
    check_int DTOP_RDZV_TIMEOUT "$DTOP_RDZV_TIMEOUT" 1
    rdzv_args=(--rdzv-conf "timeout=$DTOP_RDZV_TIMEOUT")
  fi
  # The port lives on node 0: only there can it be checked.
  (( NODE_RANK > 0 )) || check_port_free "$PORT"

  local script="$1"
  shift
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  echo "$(basename "$0"): torchrun nnodes=$NNODES node_rank=$NODE_RANK" \
    "nproc_per_node=$GPUS master=$MASTER_ADDR:$PORT python=$PY" >&2
  if (( NNODES > 1 && NODE_RANK == 0 )); then
    echo "$(basename "$0"): waiting for NNODES=$NNODES nodes at $MASTER_ADDR:$PORT" \
      "(this is node 0; gives up after DTOP_RDZV_TIMEOUT=$DTOP_RDZV_TIMEOUT s)" >&2
  elif (( NNODES > 1 )); then
    echo "$(basename "$0"): waiting for node 0 at $MASTER_ADDR:$PORT (this is node" \
      "$NODE_RANK of NNODES=$NNODES; gives up after DTOP_RDZV_TIMEOUT=$DTOP_RDZV_TIMEOUT s)" >&2
  fi
  # tools/_torchrun.py is `python -m torch.distributed.run` (torchrun) in the same
  # process, with one-line errors when the nodes do not meet.
  DTOP_LAUNCHER="$(basename "$0")" exec "$PY" "$ROOT/tools/_torchrun.py" \
    ${rdzv_args[@]+"${rdzv_args[@]}"} \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --master_port="$PORT" \
    --nproc_per_node="$GPUS" \
    "$script" "$@" --launcher pytorch
}

# srun -p PARTITION --job-name=JOB_NAME ... $SRUN_ARGS PY -u SCRIPT ARGS... --launcher slurm
# (mmseg's tools/slurm_*.sh). Knobs: GPUS (tasks in all), GPUS_PER_NODE,
# CPUS_PER_TASK, SRUN_ARGS (extra srun options, word-split), PORT (MASTER_PORT of
# the job, default 29500), PYTHON; SRUN (the srun command, default srun).
run_srun() {
  local partition="$1" job_name="$2" script="$3"
  shift 3
  PY="$(pick_python)"
  GPUS="${GPUS:-8}"
  GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
  CPUS_PER_TASK="${CPUS_PER_TASK:-5}"
  check_int GPUS "$GPUS" 1
  check_int GPUS_PER_NODE "$GPUS_PER_NODE" 1
  check_int CPUS_PER_TASK "$CPUS_PER_TASK" 1
  [[ -n "$partition" ]] || die "PARTITION is empty: name the Slurm partition (sinfo lists them)"
  [[ -n "$job_name" ]] || die "JOB_NAME is empty"
  local port="${PORT:-${MASTER_PORT:-29500}}"
  check_port_value "$port"
  # Fewer tasks than GPUs per node: one node with GPUS tasks and GPUs.
  local per_node=$(( GPUS < GPUS_PER_NODE ? GPUS : GPUS_PER_NODE ))
  local srun="${SRUN:-srun}"
  command -v "$srun" >/dev/null 2>&1 \
    || die "'$srun' not found: run on a Slurm login node (or set SRUN=/path/to/srun)"
  local srun_args=()
  # shellcheck disable=SC2206  # SRUN_ARGS is word-split on purpose (mmseg's interface)
  [[ -z "${SRUN_ARGS:-}" ]] || srun_args=(${SRUN_ARGS})
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  export MASTER_PORT="$port"
  echo "$(basename "$0"): srun partition=$partition job=$job_name tasks=$GPUS" \
    "tasks_per_node=$per_node master_port=$MASTER_PORT python=$PY" >&2
  exec "$srun" -p "$partition" \
    --job-name="$job_name" \
    --gres="gpu:$per_node" \
    --ntasks="$GPUS" \
    --ntasks-per-node="$per_node" \
    --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 \
    ${srun_args[@]+"${srun_args[@]}"} \
    "$PY" -u "$script" "$@" --launcher slurm
}
