#!/usr/bin/env bash
# bad_inputs.sh MOERUN SRCDIR
# Broken configs and data files: each run under mpirun (3 ranks) exits non-zero within the timeout
# (no rank hangs) and its message names the file and the key or line.
set -uo pipefail
moerun=$1 src=$2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
failures=0 cases=0
# description, expected substrings separated by '|', command (which runs under `timeout 60`)...
expect_failure() {
    local what=$1 expected=$2
    shift 2
    cases=$((cases + 1))
    local out rc
    out=$("$@" 2>&1); rc=$?
    if [ $rc -eq 124 ]; then
        echo "FAIL $what: timed out (a rank hung)"; failures=$((failures + 1)); return
    fi
    if [ $rc -eq 0 ]; then
        echo "FAIL $what: exited 0"; failures=$((failures + 1)); return
    fi
    local IFS='|'
    for want in $expected; do
        if ! grep -qF -- "$want" <<<"$out"; then
            echo "FAIL $what: message lacks '$want':"; echo "$out" | head -5; failures=$((failures + 1)); return
        fi
    done
    echo "ok   $what (exit $rc): $(grep -m1 -E 'error|moerun' <<<"$out")"
}
run3() { timeout 60 mpirun --oversubscribe -np 3 "$moerun" infer "$@"; }  # configs: 3 ranks
run2() { timeout 60 mpirun --oversubscribe -np 2 "$moerun" infer "$@"; }  # data files

for f in "$src"/tests/data/bad_configs/*.yaml; do
    name=$(basename "$f")
    line_key=$(grep -m1 -oE '^# expect: .*' "$f" | sed 's/^# expect: //')
    expect_failure "config $name" "$name${line_key:+|$line_key}" run3 -c "$f"
done
expect_failure "missing config" "no_such.yaml" run3 -c "$src/tests/data/bad_configs/no_such.yaml"
expect_failure "unknown flag" "--bogus" run3 -c "$src/configs/tiny.yaml" --bogus
expect_failure "bad --set" "--set model.top_k" run3 -c "$src/configs/tiny.yaml" --set model.top_k=nine
# hierarchical dispatch: an unknown word, simulated nodes that do not divide the ranks, a run that cannot
expect_failure "bad run.dispatch" "run.dispatch|nodal" run3 -c "$src/configs/tiny.yaml" --set run.dispatch=nodal
expect_failure "ranks_per_node not dividing" "run.ranks_per_node|does not divide" run3 -c "$src/configs/tiny.yaml" \
    --set run.ranks_per_node=2 --set model.experts=6
expect_failure "hierarchical with CUDA graphs" "run.dispatch|CUDA graphs" run3 -c "$src/configs/tiny.yaml" \
    --set run.dispatch=hierarchical --set run.graphs=on
expect_failure "hierarchical with fixed buffers" "run.dispatch|counted buffers" run3 -c "$src/configs/tiny.yaml" \
    --set run.dispatch=hierarchical --set run.buffers=fixed
expect_failure "hierarchical in an elastic run" "run.dispatch|elastic" run2 -c "$src/configs/tiny.yaml" \
    --set run.dispatch=hierarchical --set rebalance.every=2

data="$src/tests/data/bad_inputs"
trace() { run2 -c "$src/configs/tiny.yaml" --set routing.source=trace --set "routing.trace_ids=$1" "${@:2}"; }
expect_failure "trace with 3 layers" "trace_wrong_layers.npy|routing.trace_ids|3 layers" trace "$data/trace_wrong_layers.npy"
expect_failure "trace ids out of range" "trace_ids_out_of_range.npy|routing.trace_ids|layer 2, token 17" trace "$data/trace_ids_out_of_range.npy"
expect_failure "trace with a repeated id" "trace_duplicate_ids.npy|layer 1, token 5" trace "$data/trace_duplicate_ids.npy"
expect_failure "truncated trace" "trace_truncated.npy" trace "$data/trace_truncated.npy"
expect_failure "trace of float ids" "trace_float_ids.npy|integer array" trace "$data/trace_float_ids.npy"
expect_failure "trace that is not npy" "not_npy.npy" trace "$data/not_npy.npy"
expect_failure "trace shorter than the run" "trace_ok_short.npy|routing.trace_ids|holds 64 tokens" trace "$data/trace_ok_short.npy"
expect_failure "trace weights of another shape" "routing.trace_weights|trace_wrong_layers.npy" \
    trace "$data/trace_ok_short.npy" --set run.batches=0 --set run.tokens_per_rank=32 \
    --set "routing.trace_weights=$data/trace_wrong_layers.npy"
inp() { run2 -c "$src/configs/tiny.yaml" --set input.kind=npy --set "input.path=$1"; }
expect_failure "input of the wrong width" "input_wrong_width.npy|input.path" inp "$data/input_wrong_width.npy"
expect_failure "truncated input" "input_truncated.npy" inp "$data/input_truncated.npy"
expect_failure "missing input" "absent.npy" inp "$data/absent.npy"
# Only rank 0 writes outputs: its failure alone must still end every rank.
expect_failure "output in a missing folder" "no_such_dir/out.npy" run2 -c "$src/configs/tiny.yaml" --output /tmp/no_such_dir/out.npy
expect_failure "metrics in a missing folder" "no_such_dir/m.jsonl" run2 -c "$src/configs/tiny.yaml" --metrics /tmp/no_such_dir/m.jsonl
expect_failure "stats in a missing folder" "no_such_dir/s.safetensors" run2 -c "$src/configs/tiny.yaml" --stats /tmp/no_such_dir/s.safetensors
expect_failure "plan for another world size" "tiny_4ranks_replicas.yaml|4 ranks|2 ranks" \
    run2 -c "$src/configs/tiny.yaml" --plan "$src/tests/data/plans/tiny_4ranks_replicas.yaml"
expect_failure "plan for another model" "tiny_4ranks_replicas.yaml|8 experts|16 experts" \
    timeout 60 mpirun --oversubscribe -np 4 "$moerun" infer -c "$src/configs/tiny.yaml" --set model.experts=16 \
    --plan "$src/tests/data/plans/tiny_4ranks_replicas.yaml"
expect_failure "plan file missing" "absent_plan.yaml" run2 -c "$src/configs/tiny.yaml" --plan "$data/absent_plan.yaml"
expect_failure "stats of a missing trace" "absent.npy" timeout 60 "$moerun" stats --trace "$data/absent.npy" -o /tmp/unused.safetensors
expect_failure "stats of a truncated trace" "trace_truncated.npy" timeout 60 "$moerun" stats --trace "$data/trace_truncated.npy" -o /tmp/unused.safetensors

# Elastic schedules, at 4 ranks: refused before anything starts, naming the entry.
el4() { timeout 60 mpirun --oversubscribe -np 4 "$moerun" elastic -c "$src/configs/tiny.yaml" "$@"; }
expect_failure "schedule beyond the world" "--schedule|'4:8'|asks for 8 ranks|job has 4" el4 --schedule 0:2,4:8
expect_failure "schedule of zero ranks" "--schedule|'3:0'|at least one" el4 --schedule 0:4,3:0
expect_failure "schedule not starting at 0" "--schedule|'5:2'|must be at 0" el4 --schedule 5:2
expect_failure "schedule out of order" "--schedule|'2:3'|not after" el4 --schedule 0:2,4:4,2:3
expect_failure "schedule mixing units" "--schedule|mixes batches and seconds" el4 --schedule 0:2,3s:4
expect_failure "malformed schedule" "--schedule|'four'|POSITION:RANKS" el4 --schedule 0:2,four
expect_failure "missing schedule" "missing --schedule" el4
expect_failure "plans folder that cannot be made" "--plans|no_such_dir/plans" \
    el4 --schedule 0:2,2:4 --plans /tmp/no_such_dir/plans

echo "bad_inputs: $((cases - failures)) of $cases cases ok"
[ $failures -eq 0 ]
