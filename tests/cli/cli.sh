#!/usr/bin/env bash
# cli.sh MOERUN SRCDIR: the command line every command shares (launch/cli.c) and what it promises.
#   - `--opt=value` gives what `--opt value` gives (infer, place, stats, config), -c FILE too;
#     an unknown option and a missing value exit 2 with one message;
#   - `--version` (top level and per command) says meson's version and the git commit built;
#   - `infer --dry-run` per rank equals what the run then reports: weight bytes exactly, checkpoint
#     bytes read exactly, host memory (the peak resident set) within 5%; a model far beyond this
#     machine's memory (Mixtral-8x7B on 2 ranks, 84 GiB of float32 each) is sized without being allocated;
#   - every `--json` output (infer, elastic, the dry run, place, place --evaluate, stats, config) and
#     every line of a metrics log parses as JSON, each line with a type and a time, the log opening
#     with the run header;
#   - the progress line is absent from a log that mpirun's output is redirected into, present when
#     mpirun's output is a terminal (script(1) gives it one) and when outputs.progress is on;
#   - an error every rank meets alike (a missing plan, a bad option, bench without CUDA) is printed
#     once: one line from moerun for the whole job.
set -uo pipefail
moerun=$(realpath "$1") src=$(realpath "$2")
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
failures=0
fail() { echo "FAIL $*"; failures=$((failures + 1)); }
ok() { echo "ok   $*"; }
tiny="$src/configs/tiny.yaml"
trace="$src/tests/data/bad_inputs/trace_ok_short.npy"
run() { mpirun --oversubscribe -np "$@"; }

# ---- --opt=value and --opt value
"$moerun" infer --config="$tiny" --set=run.batches=2 --print-config > "$dir/eq.yaml" 2>&1 || fail "infer --config=FILE: exit $?"
"$moerun" infer -c "$tiny" --set run.batches=2 --print-config > "$dir/sp.yaml" 2>&1 || fail "infer -c FILE: exit $?"
if cmp -s "$dir/eq.yaml" "$dir/sp.yaml" && grep -q "batches: 2" "$dir/eq.yaml"; then ok "infer --config=FILE --set=K=V equals -c FILE --set K=V"
else fail "infer --config=FILE --set=K=V differs from -c FILE --set K=V"; fi
"$moerun" stats --trace="$trace" --output="$dir/s1.safetensors" > /dev/null || fail "stats --trace=T --output=S"
"$moerun" stats --trace "$trace" -o "$dir/s2.safetensors" > /dev/null || fail "stats --trace T -o S"
cmp -s "$dir/s1.safetensors" "$dir/s2.safetensors" && ok "stats --trace=T --output=S equals --trace T -o S" ||
    fail "stats: the two forms differ"
"$moerun" place --stats="$dir/s1.safetensors" --ranks=4 --ranks-per-node=2 --solver=greedy --output="$dir/p1.yaml" > /dev/null ||
    fail "place --ranks=4 ... --output=P"
"$moerun" place --stats "$dir/s1.safetensors" --ranks 4 --ranks-per-node 2 --solver greedy -o "$dir/p2.yaml" > /dev/null ||
    fail "place --ranks 4 ... -o P"
cmp -s "$dir/p1.yaml" "$dir/p2.yaml" && ok "place --ranks=4 (and the rest =) equals --ranks 4" || fail "place: the two forms differ"
hf="$src/tests/data/hf/olmoe_fp16"
"$moerun" config --from-hf="$hf" > "$dir/c1.yaml" 2>/dev/null || fail "config --from-hf=DIR"
"$moerun" config --from-hf "$hf/config.json" > "$dir/c2.yaml" 2>/dev/null || fail "config --from-hf DIR/config.json"
if diff <(grep -v '^#' "$dir/c1.yaml") <(grep -v '^#' "$dir/c2.yaml") > /dev/null && grep -q "checkpoint: /" "$dir/c1.yaml"; then
    ok "config --from-hf=DIR equals --from-hf DIR/config.json"
else fail "config --from-hf DIR differs from DIR/config.json"; fi
for bad in "--bogus" "--plan"; do
    out=$("$moerun" place --ranks 4 $bad 2>&1); rc=$?
    [ $rc -eq 2 ] && [ "$(grep -c '^moerun place' <<<"$out")" -eq 1 ] && ok "place $bad: exit 2, one message" ||
        fail "place $bad: exit $rc, $(head -1 <<<"$out")"
done

# ---- --version
want_commit=unknown
git -C "$src" rev-parse --git-dir > /dev/null 2>&1 && want_commit=$(git -C "$src" describe --always --dirty --abbrev=12)
version=$(sed -n "s/^ *version: '\([^']*\)'.*/\1/p" "$src/meson.build" | head -1)
for cmd in "" infer place stats config bench; do
    got=$("$moerun" $cmd --version 2>&1)
    # the tree may have become dirty or clean since the build: compare the commit itself
    if [[ "$got" == "moerun $version (commit ${want_commit%-dirty}"* ]]; then ok "moerun $cmd --version: $got"
    else fail "moerun $cmd --version: '$got', wanted 'moerun $version (commit $want_commit)'"; fi
done

# ---- --dry-run against the run: weights and checkpoint bytes exactly, the host figure within 5%
# where the weights are ~100 MB (the tiny checkpoint fixture, 150 KB of weights in a 15 MB process,
# checks the bytes only: there the pages MPI and OpenBLAS touch on first use, which the dry run
# cannot see, are a few percent and vary with the load)
json_field() { # FILE TYPE FIELD: the field of every line of that type, one value a line
    python3 -c '
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("type") == sys.argv[2]:
        v = r[sys.argv[3]]
        print("\n".join(map(str, v)) if isinstance(v, list) else v)' "$@"
}
dry_vs_run() { # what, ranks, host (check the host figure: 1 or 0), flags...
    local what=$1 np=$2 host=$3
    shift 3
    run "$np" "$moerun" infer "$@" --dry-run --json > "$dir/dry.jsonl" 2> "$dir/dry.err" || { fail "$what: dry run exit $?: $(head -2 "$dir/dry.err")"; return; }
    run "$np" "$moerun" infer "$@" --metrics "$dir/run.jsonl" > /dev/null 2> "$dir/run.err" || { fail "$what: run exit $?: $(head -2 "$dir/run.err")"; return; }
    python3 - "$dir/dry.jsonl" "$dir/run.jsonl" "$host" <<'EOF' && ok "$what: $(cat "$dir/verdict")" || { fail "$what: $(cat "$dir/verdict")"; }
import json, sys, os
dry = [json.loads(l) for l in open(sys.argv[1])]
run = [json.loads(l) for l in open(sys.argv[2])]
summary = [r for r in run if r["type"] == "summary"][0]
bad, notes = [], []
for d in sorted(dry, key=lambda r: r["rank"]):
    p = d["rank"]
    if d["weight_bytes"] != summary["weight_bytes"][p]:
        bad.append(f"rank {p}: weights {d['weight_bytes']} vs run {summary['weight_bytes'][p]}")
    host, got = d["host_bytes"], summary["host_rss_peak_bytes"][p]
    if sys.argv[3] == "1" and abs(host - got) > 0.05 * got:
        bad.append(f"rank {p}: host {host} vs run's peak RSS {got}")
    if "checkpoint_bytes_read" in summary and (d["checkpoint_bytes"] != summary["checkpoint_bytes_read"][p] or
            d["checkpoint_expert_bytes"] != summary["checkpoint_expert_bytes_read"][p]):
        bad.append(f"rank {p}: checkpoint {d['checkpoint_bytes']} vs run {summary['checkpoint_bytes_read'][p]}")
    notes.append(f"{d['weight_bytes']} B, host {host / got - 1:+.1%}")
open(os.path.join(os.path.dirname(sys.argv[1]), "verdict"), "w").write("; ".join(bad or notes))
sys.exit(1 if bad else 0)
EOF
}
# A sanitizer build's resident set is not the program's (ASan keeps freed memory in quarantine, up
# to 256 MB, and maps shadow memory): there the host figure is not compared, the bytes still are.
host_check=1
if ldd "$moerun" 2>/dev/null | grep -qE 'libasan|libubsan'; then
    host_check=0
    echo "note: a sanitizer build: the dry run's host figure is not compared with the run's resident set"
fi
mid=(-c "$tiny" --set model.d_model=256 --set model.d_ff=2048 --set outputs.progress=off)
dry_vs_run "dry run = run, 2 ranks (weights exact$([ $host_check = 1 ] && echo ', host within 5%'))" 2 $host_check "${mid[@]}"
dry_vs_run "dry run = run, 3 ranks, 12 experts, one chunk" 3 $host_check "${mid[@]}" --set model.experts=12 --set run.chunks=1
"$moerun" config --from-hf "$src/tests/data/hf/mixtral" -o "$dir/mixtral.yaml" 2>/dev/null
dry_vs_run "dry run = run, a checkpoint on 2 ranks (bytes read exact)" 2 0 -c "$dir/mixtral.yaml" --set outputs.progress=off
# (sanitizer and CUDA builds reserve more address space than that up front: without the limit there)
limit=4000000
(ulimit -v $limit && timeout 10 "$moerun" stats --help > /dev/null 2>&1) || limit=unlimited
out=$( (ulimit -v $limit; run 2 "$moerun" infer -c "$src/configs/mixtral-8x7b.yaml" --dry-run 2>&1) ); rc=$?
if [ $rc -eq 0 ] && grep -qE "^ +1 +[0-9]+ +[0-9]{2,}\.[0-9]+" <<<"$out"; then ok "Mixtral-8x7B on 2 ranks sized (address space limit: $limit KiB): $(grep -E '^ +0 ' <<<"$out" | tr -s ' ')"
else fail "Mixtral dry run (address space limit: $limit KiB): exit $rc: $(tail -3 <<<"$out")"; fi

# ---- every --json output parses
check_json() { # what, file, [first type]
    if python3 - "$2" "${3:-}" <<'EOF'; then ok "$1: every line JSON with a type and a time"; else fail "$1: $(head -c 300 "$2")"; fi
import json, sys
lines = open(sys.argv[1]).read().splitlines()
assert lines, "no output"
for line in lines:
    r = json.loads(line)
    assert isinstance(r.get("type"), str) and isinstance(r.get("time"), str), line[:80]
if sys.argv[2]:
    first = json.loads(lines[0])
    assert first["type"] == sys.argv[2], first["type"]
    if first["type"] == "run":
        for key in ("version", "commit", "world", "hosts", "devices", "config"):
            assert key in first, key
EOF
}
run 2 "$moerun" infer -c "$tiny" --json --metrics "$dir/m.jsonl" > "$dir/infer.json" 2>/dev/null || fail "infer --json: exit $?"
check_json "infer --json" "$dir/infer.json" run
check_json "the metrics log" "$dir/m.jsonl" run
grep -q '"type":"summary"' "$dir/infer.json" || fail "infer --json: no summary line"
run 4 "$moerun" elastic -c "$tiny" --schedule 0:2,2:4 --set run.batches=6 --json > "$dir/elastic.json" 2>/dev/null || fail "elastic --json: exit $?"
check_json "elastic --json" "$dir/elastic.json" run
grep -q '"type":"event"' "$dir/elastic.json" && grep -q '"command":"elastic"' "$dir/elastic.json" || fail "elastic --json: no event or not titled elastic"
run 2 "$moerun" infer -c "$tiny" --dry-run --json > "$dir/dry.json" 2>/dev/null || fail "infer --dry-run --json: exit $?"
check_json "infer --dry-run --json" "$dir/dry.json" dry_run
"$moerun" place --stats "$dir/s1.safetensors" --ranks 4 --ranks-per-node 2 -o "$dir/p3.yaml" --json --time-limit 5 > "$dir/place.json" 2>/dev/null || fail "place --json: exit $?"
check_json "place --json" "$dir/place.json" place
"$moerun" place --evaluate --plan "$dir/p1.yaml" --trace "$trace" --json > "$dir/eval.json" 2>/dev/null || fail "place --evaluate --json: exit $?"
check_json "place --evaluate --json" "$dir/eval.json" place
"$moerun" stats --trace "$trace" -o "$dir/s3.safetensors" --json > "$dir/stats.json" || fail "stats --json: exit $?"
check_json "stats --json" "$dir/stats.json" stats
"$moerun" config --from-hf "$hf" --json > "$dir/config.json" 2>/dev/null || fail "config --json: exit $?"
check_json "config --json" "$dir/config.json" config
# the Chrome trace, gathered over the control plane (comm/ctl.c): every rank's spans
run 4 "$moerun" infer -c "$tiny" --trace-events "$dir/trace.json" > /dev/null 2>&1 || fail "--trace-events: exit $?"
python3 -c 'import json, sys; ev = json.load(open(sys.argv[1]))["traceEvents"]; sys.exit(sorted({e["pid"] for e in ev if "pid" in e}) != [0, 1, 2, 3])' \
    "$dir/trace.json" && ok "--trace-events: JSON with the spans of all 4 ranks" || fail "--trace-events: not every rank's spans"
python3 -m json.tool "$dir/place.json" > /dev/null && python3 -m json.tool "$dir/config.json" > /dev/null ||
    fail "python3 -m json.tool refuses a --json output"

# ---- progress only where a person reads it
long=(-c "$tiny" --set run.batches=40)
has_progress() { grep -q $'\r  batch [0-9]' "$1"; }
run 2 "$moerun" infer "${long[@]}" > "$dir/redirected.log" 2>&1 || fail "redirected run: exit $?"
has_progress "$dir/redirected.log" && fail "progress in a redirected log (outputs.progress auto)" ||
    ok "no progress line in a redirected log (auto)"
run 2 "$moerun" infer "${long[@]}" --set outputs.progress=on > "$dir/on.log" 2>&1 || fail "progress on: exit $?"
has_progress "$dir/on.log" && ok "outputs.progress on: the line is written even so" || fail "outputs.progress on: no progress line"
if command -v script > /dev/null; then
    script -qec "mpirun --oversubscribe -np 2 $moerun infer ${long[*]}" /dev/null > "$dir/tty.log" 2>&1
    has_progress "$dir/tty.log" && ok "progress when mpirun's output is a terminal (auto)" ||
        fail "no progress line when mpirun's output is a terminal"
    script -qec "mpirun --oversubscribe -np 2 $moerun infer ${long[*]} --set outputs.progress=off" /dev/null > "$dir/off.log" 2>&1
    has_progress "$dir/off.log" && fail "outputs.progress off: progress on a terminal" || ok "outputs.progress off: none on a terminal"
fi

# ---- one error line for an error every rank meets
one_line() { # what, command...
    local what=$1 out rc n
    shift
    out=$("$@" 2>&1); rc=$?
    n=$(grep -c '^moerun' <<<"$out")
    if [ $rc -ne 0 ] && [ "$n" -eq 1 ]; then ok "$what: exit $rc, one line: $(grep '^moerun' <<<"$out")"
    else fail "$what: exit $rc, $n lines from moerun:"; grep '^moerun' <<<"$out" | head -5; fi
}
one_line "a missing plan on 3 ranks" run 3 "$moerun" infer -c "$tiny" --plan "$dir/no_such_plan.yaml"
one_line "a plan for another world on 3 ranks" run 3 "$moerun" infer -c "$tiny" --plan "$dir/p1.yaml"
one_line "an unknown option on 3 ranks" run 3 "$moerun" infer -c "$tiny" --bogus
one_line "a bad setting on 3 ranks" run 3 "$moerun" infer -c "$tiny" --set run.chunks=0
if ! grep -q "MOE_HAVE_CUDA 1" "$(dirname "$moerun")/../moe_build_config.h" 2>/dev/null; then
    one_line "bench a2a without CUDA on 3 ranks" run 3 "$moerun" bench a2a --rows 4
fi

echo "cli: $failures failures"
[ $failures -eq 0 ]
