#!/usr/bin/env bash
# run_multinode.sh HOSTFILE RANKS_PER_NODE CONFIG [moerun infer options...]
# A multi-node `moerun infer` under Open MPI's mpirun (docs/multinode.md): RANKS_PER_NODE ranks on
# every host of HOSTFILE (one per GPU with the cuda backend), filled node by node so that consecutive
# ranks share a node, bound to cores; moerun finds the nodes itself (run.dispatch: auto is then
# hierarchical) and placement.ranks_per_node is set to match for the default plan.
#   HOSTFILE lines: `node01 slots=8` (a name or address per host, slots = ranks it may take)
# Environment:
#   MOE_NET      the network for MPI's TCP traffic and Open MPI's own, e.g. 10.0.0.0/24 or ib0 (else
#                Open MPI picks among all interfaces, and may pick one the other hosts cannot reach)
#   MOE_UCX=1    use UCX (InfiniBand / RoCE) for MPI's transfers instead of TCP: --mca pml ucx
#   MOERUN       the moerun binary (default: build/launch/moerun next to this script), the same path
#                on every host
#   MPIRUN_ARGS  more mpirun options (e.g. "--mca plm_rsh_agent /path/agent" or "-x NCCL_IB_HCA")
# Under Slurm use srun instead (moerun reads SLURM_NODEID / SLURM_LOCALID itself):
#   srun --nodes=2 --ntasks-per-node=8 --cpu-bind=cores build/launch/moerun infer -c CONFIG
set -euo pipefail
if [ $# -lt 3 ]; then
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
hostfile=$1 per_node=$2 config=$3
shift 3
nodes=$(grep -cv '^\s*\(#\|$\)' "$hostfile")
np=$((nodes * per_node))
moerun=${MOERUN:-$(cd "$(dirname "$0")/.." && pwd)/build/launch/moerun}
net=()
if [ -n "${MOE_NET:-}" ]; then
    net=(--mca btl_tcp_if_include "$MOE_NET" --mca oob_tcp_if_include "$MOE_NET")
fi
transport=(--mca btl tcp,vader,self)
if [ "${MOE_UCX:-0}" = 1 ]; then
    transport=(--mca pml ucx)
fi
# shellcheck disable=SC2086
exec mpirun -np "$np" --hostfile "$hostfile" --map-by "ppr:${per_node}:node" --bind-to core \
    "${transport[@]}" "${net[@]}" -x LD_LIBRARY_PATH -x PATH ${MPIRUN_ARGS:-} \
    "$moerun" infer -c "$config" --set "placement.ranks_per_node=$per_node" "$@"
