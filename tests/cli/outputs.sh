#!/usr/bin/env bash
# outputs.sh MOERUN NPY_COMPARE SRCDIR: outputs cannot be redirected, fail early, are not lost late
# and leave no temporary behind (io/atomic_file.c).
#   - symlinks planted for every predictable temporary name do not make `moerun stats -o` write
#     outside the output folder, and an output path that is a symlink is replaced, not followed;
#   - an output folder that does not exist (--stats, --timeline, --events) or an output path that is
#     a directory fails before the first batch (the run asks for 10^8 batches);
#   - a failure after the last batch (--stats turned into a directory mid-run) keeps the finished
#     --output, equal to a clean run's;
#   - SIGINT or SIGTERM to mpirun and SIGTERM to rank 0 leave no temporary (mpirun may follow its
#     SIGTERM with SIGKILL within a second, which only an unnamed temporary survives cleanly).
set -uo pipefail
moerun=$(realpath "$1") compare=$(realpath "$2") src=$(realpath "$3")
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
dir=$(mktemp -d)
job=
trap '[ -n "$job" ] && kill -KILL $job 2>/dev/null; rm -rf "$dir"' EXIT
failures=0
fail() { echo "FAIL $*"; failures=$((failures + 1)); }
ok() { echo "ok   $*"; }
tiny="$src/configs/tiny.yaml"
trace="$src/tests/data/bad_inputs/trace_ok_short.npy"
leftovers() { find "$1" -name '*.tmp.*' | head -3; }
# until rank 0 has made the engine (its outputs open): its last line at create
started() { for _ in $(seq 600); do grep -q "moerun\[0\] info.*bytes of weights" "$1" && return 0; sleep 0.05; done; return 1; }

# ---- symlinks
mkdir "$dir/out"
echo precious > "$dir/victim"
pid_max=$(cat /proc/sys/kernel/pid_max)
# every pid the next process may get (perl-base is part of every Debian system)
perl -e 'symlink($ARGV[0], "$ARGV[1].$_") or die "symlink: $!" for 1 .. $ARGV[2]' \
    "$dir/victim" "$dir/out/s.safetensors.tmp" "$pid_max" || fail "could not plant the links"
"$moerun" stats --trace "$trace" -o "$dir/out/s.safetensors" > "$dir/stats.log" 2>&1 || fail "stats with planted links failed: $(cat "$dir/stats.log")"
if [ "$(cat "$dir/victim")" != precious ]; then fail "stats -o wrote through a planted symlink"
elif [ ! -f "$dir/out/s.safetensors" ] || [ -L "$dir/out/s.safetensors" ]; then fail "stats -o: no regular output"
else ok "symlinks planted for every pid (1..$pid_max): the file outside is untouched"; fi
find "$dir/out" -name 's.safetensors.tmp.*' -type l -delete
[ -z "$(find "$dir/out" -name 's.safetensors.tmp.*')" ] || fail "stats -o left a temporary"
ln -s "$dir/victim" "$dir/out/link.safetensors"
"$moerun" stats --trace "$trace" -o "$dir/out/link.safetensors" > /dev/null 2>&1 || fail "stats onto a symlink failed"
if [ "$(cat "$dir/victim")" != precious ] || [ -L "$dir/out/link.safetensors" ]; then
    fail "an output path that is a symlink was followed"
else ok "an output path that is a symlink is replaced by the file, its target untouched"; fi

# ---- early failures: 10^8 batches would not end within the 60 s the case is given
expect_early() { # what, expected text, flags...
    local what=$1 want=$2 out rc
    shift 2
    out=$(timeout 60 mpirun --oversubscribe -np 2 "$moerun" "$@" 2>&1); rc=$?
    if [ $rc -eq 124 ]; then fail "$what: not refused before the batches (ran into the timeout)"
    elif [ $rc -eq 0 ]; then fail "$what: exited 0"
    elif ! grep -qF -- "$want" <<<"$out"; then fail "$what: message lacks '$want'"; echo "$out" | head -3
    else ok "$what: refused at start: $(grep -m1 -F -- "$want" <<<"$out" | cut -c1-160)"; fi
}
long=(-c "$tiny" --set run.batches=100000000 --set outputs.progress=false)
expect_early "--stats in a missing folder" "no_such_dir/s.safetensors" infer "${long[@]}" --stats "$dir/no_such_dir/s.safetensors"
expect_early "--timeline in a missing folder" "no_such_dir/t.csv" infer "${long[@]}" --timeline "$dir/no_such_dir/t.csv"
expect_early "--events in a missing folder" "no_such_dir/e.csv" elastic "${long[@]}" --schedule 0:2 --events "$dir/no_such_dir/e.csv"
expect_early "--output that is a directory" "is a directory" infer "${long[@]}" --output "$dir/out"
expect_early "--metrics that is a directory" "is a directory" infer "${long[@]}" --metrics "$dir/out"
[ -z "$(leftovers "$dir")" ] || fail "early failures left temporaries: $(leftovers "$dir")"

# ---- a late failure keeps the output
run=(-c "$tiny" --set run.batches=1500 --set run.tokens_per_rank=16 --set outputs.progress=false)
mpirun --oversubscribe -np 2 "$moerun" infer "${run[@]}" --output "$dir/clean.npy" > /dev/null 2>&1 || fail "clean run failed"
mkdir "$dir/late"
mpirun --oversubscribe -np 2 "$moerun" infer "${run[@]}" --output "$dir/late/o.npy" \
    --stats "$dir/late/s.safetensors" --log-level info > "$dir/late.log" 2>&1 &
job=$!
started "$dir/late.log"
mkdir "$dir/late/s.safetensors"   # the statistics cannot be written any more
wait $job; rc=$?; job=
if [ $rc -eq 0 ]; then fail "late failure: exited 0"
elif ! grep -q "s.safetensors: is a directory" "$dir/late.log"; then fail "late failure: no message naming the statistics"; tail -3 "$dir/late.log"
elif ! "$compare" "$dir/late/o.npy" "$dir/clean.npy" 0 > /dev/null; then fail "late failure: the output is missing or differs"
else ok "stats failing after the last batch: exit $rc, the output kept, equal to a clean run's"; fi
[ -z "$(leftovers "$dir/late")" ] || fail "the late failure left temporaries: $(leftovers "$dir/late")"

# ---- signals remove the temporaries
signal_case() { # what, signal, target (mpirun | rank0)
    local what=$1 sig=$2 target=$3 d="$dir/sig_$2_$3"
    mkdir "$d"
    mpirun --oversubscribe -np 2 "$moerun" infer -c "$tiny" --set run.batches=100000000 \
        --set outputs.progress=false --output "$d/o.npy" --metrics "$d/m.jsonl" --log-level info > "$d/log" 2>&1 &
    job=$!
    started "$d/log" || { fail "$what: the run never started"; kill -KILL $job; job=; return; }
    sleep 0.5
    if [ "$target" = mpirun ]; then kill "-$sig" $job
    else
        for c in $(pgrep -P $job); do
            tr '\0' '\n' < "/proc/$c/environ" 2>/dev/null | grep -qx OMPI_COMM_WORLD_RANK=0 && kill "-$sig" "$c"
        done
    fi
    for _ in $(seq 300); do kill -0 $job 2>/dev/null || break; sleep 0.1; done
    if kill -0 $job 2>/dev/null; then fail "$what: the job did not end"; kill -KILL $job; fi
    wait $job; job=
    local left
    left=$(leftovers "$d")
    if [ -n "$left" ]; then fail "$what: temporaries left: $left"
    elif [ -e "$d/o.npy" ]; then fail "$what: a partial output appeared under the real name"
    else ok "$what: no temporary left, no partial output"; fi
}
signal_case "SIGINT to mpirun" INT mpirun
signal_case "SIGTERM to mpirun" TERM mpirun
signal_case "SIGTERM to rank 0" TERM rank0

echo "outputs: $failures failures"
[ $failures -eq 0 ]
