#!/usr/bin/env bash
# limits.sh MOERUN SRCDIR: hostile inputs (tests/data/hostile, made by scripts/make_hostile_inputs.py,
# and large text files made here) are refused with a message naming the file and what is wrong,
# quickly and within a memory bound (1 GiB of address space, where the build allows one: sanitizer
# builds and CUDA builds reserve more than that up front); numbers out of range are refused, not wrapped; wrong
# values that used to run (NaN weights, repeated keys) are refused; the expert router takes 65536
# experts on a 256 KB stack; an injected model name cannot add keys to a plan.
set -uo pipefail
moerun=$(realpath "$1") src=$(realpath "$2")
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
data="$src/tests/data/hostile" tiny="$src/configs/tiny.yaml"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
failures=0 cases=0
memory=1048576 # KiB
# (a CUDA build's libraries spin at start-up without their address space: the probe has a timeout)
if ! (ulimit -v $memory && timeout 10 "$moerun" stats --help > /dev/null 2>&1); then
    memory=unlimited
    echo "note: this build cannot run under a 1 GiB address-space limit; checking without it"
fi

# expect WHAT RC EXPECTED COMMAND...: COMMAND (run under the memory limit and a 30 s timeout)
# exits with RC ("nz": any non-zero) and prints every '|'-separated EXPECTED substring.
expect() {
    local what=$1 want_rc=$2 expected=$3
    shift 3
    cases=$((cases + 1))
    local out rc
    out=$(ulimit -v $memory; timeout 30 bash -c '"$@"' expect "$@" 2>&1); rc=$?
    if [ $rc -eq 124 ]; then echo "FAIL $what: took over 30 s"; failures=$((failures + 1)); return; fi
    if [ $rc -ge 128 ]; then echo "FAIL $what: died of signal $((rc - 128))"; failures=$((failures + 1)); return; fi
    if { [ "$want_rc" = nz ] && [ $rc -eq 0 ]; } || { [ "$want_rc" != nz ] && [ $rc -ne "$want_rc" ]; }; then
        echo "FAIL $what: exit $rc, expected $want_rc"; echo "$out" | head -3; failures=$((failures + 1)); return
    fi
    local IFS='|'
    for want in $expected; do
        if ! grep -qF -- "$want" <<<"$out"; then
            echo "FAIL $what: message lacks '$want':"; echo "$out" | head -3; failures=$((failures + 1)); return
        fi
    done
    echo "ok   $what (exit $rc): $(grep -m1 -E 'error|moerun' <<<"$out" | cut -c1-200)"
}
place_eval() { "$moerun" place --evaluate --plan "$1" --trace "$data/trace_tiny_ids.npy"; }
place_from() { "$moerun" place "$@" --ranks 2 --ranks-per-node 1 -o "$dir/p.yaml" --no-baselines; }
export -f place_eval place_from
export moerun data dir tiny

# ---- amplifiers: a few bytes asking for gigabytes
expect "trace of 144 bytes with id 10000 (stats)" nz "trace_id_10000.npy|implies 10001 experts|--experts" \
    "$moerun" stats --trace "$data/trace_id_10000.npy" -o "$dir/s.safetensors"
expect "trace with id 10000 (place)" nz "trace_id_10000.npy|implies 10008 experts|--experts" \
    place_from --trace "$data/trace_id_10000.npy"
expect "plan of 79 bytes for 4096 x 65536 experts" nz "plan_huge_table.yaml:3|4096 x 65536|13 values" \
    place_eval "$data/plan_huge_table.yaml"
expect "plan whose aliases stand for 10^6 nodes" nz "plan_aliases.yaml:|aliases" place_eval "$data/plan_aliases.yaml"
expect "statistics whose metadata says 20000 experts" nz "stats_20000_experts.safetensors|loads|[1, 20000]" \
    place_from --stats "$data/stats_20000_experts.safetensors"
printf 'model:\n  name: ' > "$dir/deep.yaml"
printf '[%.0s' $(seq 200000) >> "$dir/deep.yaml"; printf ']%.0s' $(seq 200000) >> "$dir/deep.yaml"; echo >> "$dir/deep.yaml"
expect "config nested 200000 deep (400 KB)" nz "deep.yaml:2|nested deeper than" "$moerun" infer -c "$dir/deep.yaml" --print-config
cp "$dir/deep.yaml" "$dir/deep_plan.yaml"
expect "plan nested 200000 deep" nz "deep_plan.yaml:2|nested deeper than" place_eval "$dir/deep_plan.yaml"
{ printf 'Layer,label,'; seq -f 'Expert_%.0f' 0 199999 | paste -sd,; printf '0,x,'; yes 0 | head -200000 | paste -sd,; } > "$dir/wide.csv"
expect "CSV of 200000 expert columns" nz "wide.csv:1|200000 expert columns" place_from --tokens 100 --loads-csv "$dir/wide.csv"
{ printf 'Layer,label,'; seq -f 'Expert_%.0f' 0 59999 | paste -sd,; printf '4095,x,'; yes 0 | head -60000 | paste -sd,; } > "$dir/far.csv"
expect "CSV of one row at layer 4095" nz "far.csv:2|'4095' is not a layer" place_from --tokens 100 --loads-csv "$dir/far.csv"
expect "model.experts 930000 (the router's stack)" nz "model.experts|<= 65536" \
    "$moerun" infer -c "$tiny" --reference --set model.experts=930000
# 65536 experts' router scratch on a 256 KB stack: it lives on the heap now
(ulimit -s 256; "$moerun" infer -c "$tiny" --reference --set model.experts=65536 --set model.layers=1 \
    --set model.d_model=8 --set model.d_ff=1 --set run.tokens_per_rank=16 --set run.batches=1 > "$dir/router.log" 2>&1)
rc=$?; cases=$((cases + 1))
if [ $rc -ne 0 ]; then echo "FAIL 65536 experts on a 256 KB stack: exit $rc"; failures=$((failures + 1))
else echo "ok   65536 experts routed on a 256 KB stack"; fi

# ---- numbers: out of range is refused, not wrapped
expect "place --ranks 4294967298" 2 "--ranks' 4294967298" place_from --stats "$data/stats_wrong_loads.safetensors" --ranks 4294967298
expect "stats --experts abc" 2 "--experts 'abc'" "$moerun" stats --trace "$data/trace_tiny_ids.npy" --experts abc -o "$dir/s.safetensors"
expect "stats of id 2^31-1" nz "trace_id_int_max.npy|layer 1, token 1|2147483647 out of range" \
    "$moerun" stats --trace "$data/trace_id_int_max.npy" -o "$dir/s.safetensors"
expect "place of id 2^31-1" nz "trace_id_int_max.npy|2147483647" place_from --trace "$data/trace_id_int_max.npy"
traces=()
for _ in $(seq 20); do traces+=(--trace "$data/trace_tiny_ids.npy" --score "$data/trace_tiny_ids.npy"); done
expect "place --evaluate with 40 traces (a 32-entry array)" 2 "at most 32 traces" \
    "$moerun" place --evaluate --plan "$src/tests/data/placement/tiny_plan.yaml" "${traces[@]}"

# ---- wrong values that used to be accepted
expect "plan with a key given twice" nz "plan_duplicate_key.yaml:6|'experts' given twice (first on line 3)" \
    place_eval "$data/plan_duplicate_key.yaml"
expect "plan with a key given twice in a rank entry" nz "plan_duplicate_inner_key.yaml:9|'rank' given twice" \
    place_eval "$data/plan_duplicate_inner_key.yaml"
run_trace() { mpirun --oversubscribe -np 2 "$moerun" infer -c "$tiny" --set routing.source=trace \
    --set "routing.trace_ids=$data/trace_tiny_ids.npy" --set run.batches=0 --set run.tokens_per_rank=32 "$@"; }
export -f run_trace
expect "the trace weights' own ids run" 0 "tokens/s" run_trace
for w in "nan|layer 2, token 17, choice 1: weight nan" "inf|layer 0, token 2, choice 1: weight inf" \
         "negative|layer 3, token 63, choice 0: weight -0.25"; do
    expect "routing weights with a ${w%%|*}" nz "routing.trace_weights|weights_${w%%|*}.npy|${w#*|}" \
        run_trace --set "routing.trace_weights=$data/weights_${w%%|*}.npy"
done
expect "input with an inf" nz "input.path|input_inf.npy|token 100, element 7 is inf" \
    mpirun --oversubscribe -np 2 "$moerun" infer -c "$tiny" --set input.kind=npy \
    --set "input.path=$data/input_inf.npy" --set run.batches=0
expect "statistics of the wrong shape" nz "stats_wrong_loads.safetensors|loads|shape [4, 8]|I64 [4, 80]" \
    place_from --stats "$data/stats_wrong_loads.safetensors"

# ---- a directory is named as one
expect "a directory as trace" nz "hostile: is a directory" "$moerun" stats --trace "$data" -o "$dir/s.safetensors"
expect "a directory as plan" nz "hostile: is a directory" place_eval "$data"
expect "a directory as config" nz "hostile: is a directory" "$moerun" infer -c "$data"
expect "a directory as statistics" nz "hostile: is a directory" place_from --stats "$data"
expect "a directory as CSV" nz "hostile: is a directory" place_from --tokens 10 --loads-csv "$data"

# ---- a model name cannot inject keys into a plan
"$moerun" stats --trace "$data/trace_tiny_ids.npy" -o "$dir/tiny.safetensors" > /dev/null || echo "FAIL stats"
evil=$'tiny"\nlayers: 9\nranks: "7\\'
cases=$((cases + 1))
if ! "$moerun" place --stats "$dir/tiny.safetensors" --ranks 2 --ranks-per-node 1 --solver greedy \
        --model "$evil" -o "$dir/evil.yaml" > /dev/null 2>&1; then
    echo "FAIL place --model with quotes and newlines"; failures=$((failures + 1))
elif [ "$(grep -c '^layers:' "$dir/evil.yaml")" != 1 ] ||
     ! "$moerun" place --evaluate --plan "$dir/evil.yaml" --model "$evil" --trace "$data/trace_tiny_ids.npy" > /dev/null; then
    echo "FAIL an injected --model changed the plan or did not read back"; failures=$((failures + 1))
else
    echo "ok   --model with a quote and newlines is written escaped and reads back the same"
fi

echo "limits: $((cases - failures)) of $cases cases ok"
[ $failures -eq 0 ]
