#!/usr/bin/env bash
# run_multinode.sh HOSTFILE RANKS_PER_NODE CONFIG [moerun infer options...]
# An example multi-node launch: one rank per GPU (or per socket on the cpu backend), ranks filled
# node by node so that consecutive ranks share a node (placement.ranks_per_node must match), bound
# to cores. moerun reads its local rank from OMPI_COMM_WORLD_LOCAL_RANK (or SLURM_LOCALID under srun).
# Hostfile lines look like `node01 slots=8`.
set -euo pipefail
hostfile=$1 per_node=$2 config=$3
shift 3
nodes=$(grep -cv '^\s*\(#\|$\)' "$hostfile")
np=$((nodes * per_node))
exec mpirun -np "$np" --hostfile "$hostfile" --map-by "ppr:${per_node}:node" --bind-to core \
    -x LD_LIBRARY_PATH -x OMPI_MCA_btl \
    "$(dirname "$0")/../build/launch/moerun" infer -c "$config" \
    --set "placement.ranks_per_node=$per_node" "$@"
