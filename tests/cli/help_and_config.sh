#!/usr/bin/env bash
# help_and_config.sh MOERUN SRCDIR: the help texts exist and exit 0; --print-config gives a YAML that
# reads back to the same effective configuration (overrides included; the first line names the
# source file); bad usage exits 2.
set -euo pipefail
moerun=$(realpath "$1") src=$(realpath "$2")
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
"$moerun" --help | grep "elastic" >/dev/null  # grep -q would close the pipe early (SIGPIPE)
"$moerun" infer --help | grep "rebalance.every" >/dev/null
"$moerun" elastic --help | grep -- "--schedule" >/dev/null
"$moerun" stats --help | grep -- "--trace" >/dev/null
set +e; "$moerun" bogus >/dev/null 2>&1; rc=$?; set -e
[ $rc -eq 2 ] || { echo "unknown command exited $rc, expected 2"; exit 1; }
for cfg in "$src"/configs/*.yaml; do
    (cd "$dir" && "$moerun" infer -c "$cfg" --set run.chunks=3 --set model.top_k=1 --print-config > a.yaml)
    (cd "$dir" && "$moerun" infer -c a.yaml --print-config > b.yaml)
    diff <(tail -n +2 "$dir/a.yaml") <(tail -n +2 "$dir/b.yaml") >/dev/null || { echo "$cfg: --print-config does not read back"; exit 1; }
    grep -q "chunks: 3" "$dir/a.yaml" && grep -q "top_k: 1" "$dir/a.yaml"
done
echo "help_and_config: ok"
