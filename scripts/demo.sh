#!/usr/bin/env bash
# demo.sh: set up, build, and run the tiny model expert-parallel on 4 ranks (cpu backend).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build
# Open MPI refuses root without these, and this 2-core machine needs --oversubscribe for 4 ranks.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
exec mpirun --oversubscribe -np 4 build/launch/moerun infer -c configs/tiny.yaml "$@"
