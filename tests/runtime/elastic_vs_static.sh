#!/usr/bin/env bash
# elastic_vs_static.sh MOERUN NPY_COMPARE STATS_COMPARE PLAN_DIFF NPY_CONCAT CONFIG INPUT SCHEDULE
# An elastic run at -np 4 that follows SCHEDULE (e.g. 0:2,4:4,12:2) against a static run on 4 ranks
# over the same tokens (INPUT four times over, a .npy of hidden states; the run covers all of it, and
# goes on long after the last entry, however long the events take):
# - the outputs are equal for every token, before, during and after each event (1e-5 relative: the
#   sum of a token's expert outputs may be added in another order), and every token is written once;
# - the routing statistics are equal exactly (no token lost or counted twice);
# - every scale event of the schedule completed, and the bytes moved equal the minimum the two plans
#   imply: new (layer, expert, rank) hosts (counted by plan_diff from the plans put in service) x the
#   bytes of one expert, nothing resent;
# - the timeline covers every token once and shows the sizes the schedule asks for.
set -euo pipefail
moerun=$1 compare=$2 stats_compare=$3 plan_diff=$4 concat=$5 config=$6 input=$7 schedule=$8
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
"$concat" 0 "$dir/input.npy" "$input" "$input" "$input" "$input"
sets=(--set input.kind=npy --set input.path="$dir/input.npy" --set run.batches=0 --set run.tokens_per_rank=4
      --set routing.source=synthetic --set rebalance.window=2)
timeout 120 mpirun --oversubscribe -np 4 "$moerun" infer -c "$config" "${sets[@]}" \
    --output "$dir/static.npy" --stats "$dir/static.safetensors" >"$dir/static.txt"
static_tokens=$(awk '$1 == "tokens" {print $2; exit}' "$dir/static.txt")
timeout 300 mpirun --oversubscribe -np 4 "$moerun" elastic -c "$config" "${sets[@]}" \
    --schedule "$schedule" --output "$dir/elastic.npy" --stats "$dir/elastic.safetensors" \
    --timeline "$dir/timeline.csv" --events "$dir/events.csv" --plans "$dir/plans" | tail -n 6

"$compare" "$dir/elastic.npy" "$dir/static.npy" 1e-5
"$stats_compare" "$dir/elastic.safetensors" "$dir/static.safetensors"

# d_ff x d_model x 3 matrices x 4 bytes
expert_bytes=$("$moerun" infer -c "$config" "${sets[@]}" --print-config |
    awk '$1 == "d_model:" {d = $2} $1 == "d_ff:" {f = $2} END {print 3 * d * f * 4}')
events=$(($(echo "$schedule" | tr ',' '\n' | wc -l) - 1))
cat "$dir/events.csv"
test "$(tail -n +2 "$dir/events.csv" | awk -F, '$2 == "scale" && $6 >= 0' | wc -l)" -eq "$events" ||
    { echo "FAIL: $events scale events should have switched"; exit 1; }
status=0
tail -n +2 "$dir/events.csv" | while IFS=, read -r ev kind from to dec sw _ _ _ _ _ _ _ moved bytes min _; do
    hosts=$("$plan_diff" "$dir/plans/plan-$ev.yaml" "$dir/plans/plan-$((ev + 1)).yaml" | awk '{print $2}')
    echo "event $ev ($from -> $to): $moved experts moved, $bytes bytes received; plans imply $hosts new hosts"
    test "$hosts" -eq "$moved" && test "$bytes" -eq $((hosts * expert_bytes)) && test "$min" -eq "$bytes" ||
        { echo "FAIL: event $ev moved $bytes bytes, the minimum is $((hosts * expert_bytes))"; exit 1; }
done || status=1

tokens=$(awk -F, 'NR > 1 {s += $3} END {print s}' "$dir/timeline.csv")
sizes=$(awk -F, 'NR > 1 {print $5}' "$dir/timeline.csv" | uniq | tr '\n' ' ')
echo "timeline: $tokens tokens (static run: $static_tokens), serving sizes in order: $sizes"
test "$tokens" -eq "$static_tokens" || { echo "FAIL: the timeline counts $tokens tokens"; status=1; }
expected=$(echo "$schedule" | tr ',' '\n' | cut -d: -f2 | tr '\n' ' ')
test "$sizes" = "$expected" || { echo "FAIL: sizes $sizes, schedule $expected"; status=1; }
exit $status
