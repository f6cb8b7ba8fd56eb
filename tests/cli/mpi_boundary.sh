#!/usr/bin/env bash
# mpi_boundary.sh SRCDIR BUILDDIR: MPI is spoken in comm/ (the transports, the watch, the control
# plane) and launch/ (the command, the launcher, the device choice) alone.
#   - sources: no MPI_ identifier in a .c/.cu file outside comm/, launch/ and tests/;
#   - headers: no <mpi.h> outside comm/ and launch/;
#   - objects: no MPI symbol (MPI_*, PMPI_*, Open MPI's ompi_*) among the undefined symbols of the
#     libraries below them (common, io, kernels, placement, runtime with model/ and elastic/), checked with nm on this build.
# Each check first finds what it looks for where it belongs (comm/), so that a pattern or a tool
# that finds nothing cannot pass everything.
set -uo pipefail
src=$(realpath "$1") build=$(realpath "$2")
failures=0
fail() { echo "FAIL $*"; failures=$((failures + 1)); }
ok() { echo "ok   $*"; }
mpi_identifier='\bP?MPI_[A-Za-z_]+'
mpi_include='#include\s*<mpi\.h>'
mpi_symbol='^(P?MPI_|ompi_)'

cd "$src"
grep -qE "$mpi_identifier" comm/ctl.c || fail "the sources' pattern finds no MPI in comm/ctl.c"
grep -qE "$mpi_include" comm/comm.h || fail "the headers' pattern finds no <mpi.h> in comm/comm.h"
mapfile -t sources < <(git ls-files '*.c' '*.cu' '*.cpp' 2>/dev/null || find . -name '*.c' -o -name '*.cu' | sed 's|^\./||')
for f in "${sources[@]}"; do
    case $f in comm/* | launch/* | tests/* | third_party/* | build*/*) continue ;; esac
    grep -qE "$mpi_identifier" "$f" && fail "$f calls MPI: $(grep -nE "$mpi_identifier" "$f" | head -2 | tr '\n' ' ')"
done
mapfile -t headers < <(git ls-files '*.h' '*.cuh' 2>/dev/null || find . -name '*.h' | sed 's|^\./||')
for f in "${headers[@]}"; do
    case $f in comm/* | launch/* | tests/* | third_party/*) continue ;; esac
    grep -qE "$mpi_include" "$f" && fail "$f includes <mpi.h>"
done
[ $failures -eq 0 ] && ok "sources and headers: MPI in comm/ and launch/ only (${#sources[@]} sources, ${#headers[@]} headers)"

n=$(nm -u "$build/comm/libmoe_comm.a" 2>/dev/null | awk -v re="$mpi_symbol" '$2 ~ re {n++} END {print n + 0}')
[ "$n" -gt 0 ] || fail "nm finds no MPI symbol in $build/comm/libmoe_comm.a"
n_objects=0
for lib in common/libmoe_common.a io/libmoe_io.a kernels/libmoe_kernels.a placement/libmoe_placement.a \
           runtime/model/libmoe_config.a runtime/model/libmoe_model.a runtime/elastic/libmoe_elastic.a \
           runtime/libmoe_runtime.a; do
    [ -f "$build/$lib" ] || { fail "$build/$lib: not built"; continue; }
    while read -r member; do
        n_objects=$((n_objects + 1))
        syms=$(nm -u "$build/$lib" 2>/dev/null | awk -v m="$member:" -v re="$mpi_symbol" '$0 == m {on = 1; next} /:$/ {on = 0} on && $2 ~ re {print $2}' | sort -u | head -3 | tr '\n' ' ')
        [ -n "$syms" ] && fail "$lib($(basename "$member")) uses MPI: $syms"
    done < <(ar t "$build/$lib" | grep '\.o$')
done
[ $n_objects -gt 10 ] || fail "only $n_objects objects looked at"
[ $failures -eq 0 ] && ok "objects: no MPI symbol below comm/ and launch/"
echo "mpi-boundary: $failures failures ($n_objects objects looked at)"
[ $failures -eq 0 ]
