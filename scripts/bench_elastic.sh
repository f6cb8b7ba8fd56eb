#!/usr/bin/env bash
# bench_elastic.sh: elastic scaling against stop-and-relaunch. One `moerun elastic` run on a schedule
# of serving sizes (timeline, events and plans into OUTDIR), then, for each event's target size, the
# wall time of a fresh `moerun infer` of one batch at that size (launch, weights built or read, first
# batch, exit): what a service that stops and relaunches to change size is unavailable for. Prints a
# markdown table, one row per event, and writes it to OUTDIR/report.md; draws OUTDIR/timeline.png
# with plot_timeline.py when matplotlib is importable.
#
#   scripts/bench_elastic.sh [MOERUN] [OUTDIR]
#     MOERUN  the binary (default build/launch/moerun); OUTDIR (default bench-out/elastic)
#     CONFIG    model and run configuration (default configs/bench-mid.yaml)
#     NMAX      ranks launched for the elastic run (default 4)
#     SCHEDULE  serving ranks over batches, or seconds with an s (default 0:2,6:4,14:2)
#     BATCHES   batches of the elastic run (default 22)
#     REPEATS   relaunches per size, the median is reported (default 3)
#     EXTRA_SETS  more settings for every run, space-separated KEY=VALUE (e.g. "run.chunks=4"); with
#               run.transport=nccl the GPU-to-GPU point-to-point rate (`moerun bench a2a`'s last line) is
#               measured in the same run and the transfer rates are given against it
#     PYTHON    interpreter for the table and the plot (default python3; stdlib, plus matplotlib for
#               the plot)
#
# The columns: latency_s (decision to switch done), switch_s (the switch itself: the only time
# serving stops), longest_gap_s (the longest time between two finished batches from the decision to
# the first batch after the switch), batch_time_s (median time between batches before the decision),
# gap/batch (longest_gap / batch_time: 1 means no visible stall), stall/batch ((longest_gap -
# batch_time) / batch_time: the delay beyond a normal batch), relaunch_s (median relaunch wall time
# at to_ranks, itself including a first batch), relaunch/gap (relaunch_s / longest_gap_s: how many
# times longer a relaunch keeps the service from finishing a batch), relaunch/stall ((relaunch_s -
# batch_time) / (longest_gap - batch_time): the time without output beyond a normal batch, relaunch
# against elastic: the unavailability ratio),
# moved/min (bytes received / new hosts x expert bytes: 1 means nothing was sent twice), GB/s (bytes
# received / transfer time), of p2p (GB/s / the point-to-point rate, GPU runs over NCCL). One OpenBLAS thread per rank, so that ranks do not fight over cores.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
M=${1:-$ROOT/build/launch/moerun}
OUT=${2:-bench-out/elastic}
CONFIG=${CONFIG:-$ROOT/configs/bench-mid.yaml}
NMAX=${NMAX:-4}
SCHEDULE=${SCHEDULE:-0:2,6:4,14:2}
BATCHES=${BATCHES:-22}
REPEATS=${REPEATS:-3}
PYTHON=${PYTHON:-python3}
[ -x "$M" ] || { echo "bench_elastic.sh: no moerun at $M (build it: scripts/setup.sh build)" >&2; exit 1; }
[ -r "$CONFIG" ] || { echo "bench_elastic.sh: cannot read CONFIG $CONFIG" >&2; exit 1; }
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1 NCCL_NVLS_ENABLE=0

sets=(--set outputs.progress=false)
for kv in ${EXTRA_SETS:-}; do sets+=(--set "$kv"); done

run() { # log, command...: the command's output into log; on failure, its tail and exit
    log=$1
    shift
    if ! "$@" >"$log" 2>&1; then
        echo "bench_elastic.sh: failed: $*" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
}

# ---- the elastic run
echo "== elastic: $NMAX ranks launched, schedule $SCHEDULE, $BATCHES batches" >&2
rm -f "$OUT/timeline.csv" "$OUT/events.csv" "$OUT/timeline.png" "$OUT"/relaunch-*.txt "$OUT"/plans/plan-*.yaml
run "$OUT/elastic.log" mpirun --oversubscribe -np "$NMAX" "$M" elastic -c "$CONFIG" \
    --schedule "$SCHEDULE" "${sets[@]}" --set run.batches="$BATCHES" \
    --timeline "$OUT/timeline.csv" --events "$OUT/events.csv" --plans "$OUT/plans" \
    --metrics "$OUT/elastic.jsonl"
for f in timeline.csv events.csv; do
    [ -s "$OUT/$f" ] || { echo "bench_elastic.sh: the elastic run wrote no $OUT/$f" >&2; exit 1; }
done

# ---- stop-and-relaunch: one fresh one-batch run per target size
# (not for a re-balance that moved nothing: there is nothing to relaunch for)
sizes=$(awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) { if ($i == "to_ranks") c = i; if ($i == "kind") k = i }
                           next }
                 c && k && $c != "" && $k != "rebalance-kept" { print $c }' "$OUT/events.csv" | sort -un)
for np in $sizes; do
    : >"$OUT/relaunch-$np.txt"
    for r in $(seq "$REPEATS"); do
        echo "== relaunch at $np ranks ($r/$REPEATS)" >&2
        start=$(date +%s.%N)
        run "$OUT/relaunch-$np-$r.log" mpirun --oversubscribe -np "$np" "$M" infer -c "$CONFIG" \
            "${sets[@]}" --set run.batches=1 --set run.warmup_batches=0
        end=$(date +%s.%N)
        echo "$start $end" | awk '{ printf "%.4f\n", $2 - $1 }' >>"$OUT/relaunch-$np.txt"
    done
done

# ---- the point-to-point rate beside it (GPU to GPU over NCCL)
p2p=""
if [[ " ${EXTRA_SETS:-} " == *" run.transport=nccl "* ]] && [ "$NMAX" -ge 2 ]; then
    echo "== p2p rate" >&2
    run "$OUT/p2p.log" mpirun --oversubscribe -np 2 "$M" bench a2a --rows 128 --iters 3
    p2p=$(awk '/^# p2p/ {for (i = 1; i <= NF; i++) if ($(i + 1) == "GB/s") print $i}' "$OUT/p2p.log")
fi

# ---- the table
{
    echo "# Elastic scaling vs stop-and-relaunch"
    echo
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
    echo "config: $CONFIG${EXTRA_SETS:+ (+ $EXTRA_SETS)}; $NMAX ranks launched; schedule $SCHEDULE;" \
        "$BATCHES batches; relaunch: median of $REPEATS"
    [ -n "$p2p" ] && echo "point-to-point rate rank 0 -> 1 in the same run (moerun bench a2a): $p2p GB/s"
    echo
    "$PYTHON" - "$OUT" "$p2p" <<'PY'
import csv, math, os, statistics, sys
out = sys.argv[1]
p2p = float(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] else math.nan

def num(row, key):
    try:
        v = float(row.get(key) or "nan")
    except ValueError:
        sys.exit(f"bench_elastic.sh: {out}/events.csv: {key} is {row[key]!r}, not a number")
    return v

def fmt(v, spec):
    return "-" if math.isnan(v) or math.isinf(v) else format(v, spec)

def ratio(a, b):
    return a / b if b > 0 else math.nan

with open(os.path.join(out, "events.csv"), newline="") as f:
    events = list(csv.DictReader(f))
relaunch = {}
for e in events:
    to = e["to_ranks"]
    path = os.path.join(out, f"relaunch-{to}.txt")
    if to not in relaunch and os.path.exists(path):
        with open(path) as f:
            times = [float(x) for x in f.read().split()]
        relaunch[to] = statistics.median(times) if times else math.nan
print("| event | kind | ranks | latency_s | switch_s | longest_gap_s | batch_time_s | gap/batch "
      "| stall/batch | relaunch_s | relaunch/gap | relaunch/stall | moved/min | GB/s | of p2p |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for e in events:
    gap, batch = num(e, "longest_gap_s"), num(e, "batch_time_s")
    rel = math.nan if e["kind"] == "rebalance-kept" else relaunch.get(e["to_ranks"], math.nan)
    moved = ratio(num(e, "bytes_moved"), num(e, "bytes_min"))
    print(f"| {e['event']} | {e['kind']} | {e['from_ranks']}->{e['to_ranks']} "
          f"| {fmt(num(e, 'latency_s'), '.3f')} | {fmt(num(e, 'switch_s'), '.3f')} | {fmt(gap, '.3f')} "
          f"| {fmt(batch, '.3f')} | {fmt(ratio(gap, batch), '.2f')} | {fmt(ratio(gap - batch, batch), '.2f')} "
          f"| {fmt(rel, '.2f')} | {fmt(ratio(rel, gap), '.1f')} "
          f"| {fmt(ratio(rel - batch, gap - batch), '.1f')} "
          f"| {fmt(moved, '.3f')} | {fmt(num(e, 'transfer_gbps'), '.2f')} "
          f"| {fmt(ratio(num(e, 'transfer_gbps'), p2p), '.2f')} |")
if not events:
    print("| - | no events | - | - | - | - | - | - | - | - | - | - | - | - | - |")
PY
} >"$OUT/report.md.tmp"
mv "$OUT/report.md.tmp" "$OUT/report.md"
cat "$OUT/report.md"

# ---- the picture
if "$PYTHON" -c 'import matplotlib' 2>/dev/null; then
    "$PYTHON" "$ROOT/scripts/plot_timeline.py" "$OUT/timeline.csv" --events "$OUT/events.csv" \
        -o "$OUT/timeline.png" --title "$(basename "$CONFIG" .yaml): schedule $SCHEDULE" >&2
else
    echo "bench_elastic.sh: skipped $OUT/timeline.png: matplotlib is not importable by $PYTHON" \
        "(pip install matplotlib)" >&2
fi
