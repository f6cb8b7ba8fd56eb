#!/usr/bin/env bash
# multihost_netns.sh MOERUN NPY_COMPARE CONFIG TRACE
# moerun across hosts for real: two network namespaces made here stand for two hosts, joined by a veth
# link of their own (addresses only on that link) and a host name each (UTS namespaces), named in an
# Open MPI hostfile; mpirun runs in the first and starts the second's daemon through a launch agent
# that enters its namespaces (the plm_rsh_agent in place of ssh). `moerun infer` on 2 hosts x 2 ranks over TCP must find the two
# nodes itself (run.dispatch: auto becomes hierarchical), give the output of a single-host run of the
# same 4 ranks within 1e-5, and count the intra- and inter-node copies per layer that
# `moerun place --evaluate` replays for the same trace, plan and tokens. Everything it makes
# (namespaces, links, files, processes inside the namespaces) is removed at the end; each run is
# bounded by `timeout`. Exit 77 (skipped) with the reason where namespaces cannot be made (not root,
# no iproute2, no CAP_SYS_ADMIN / CAP_NET_ADMIN in a container).
set -uo pipefail
moerun=$(readlink -f "$1") compare=$(readlink -f "$2") config=$(readlink -f "$3") trace=$(readlink -f "$4")
multinode=$(readlink -f "$(dirname "$0")/../../scripts/run_multinode.sh")
skip() { echo "skipped: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "making network namespaces needs root"
command -v ip >/dev/null || skip "no iproute2 (the ip command)"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
tag=moe$$                       # names of our own: namespaces moeNNNa/b, links moeNNN1/2
ns1=${tag}a ns2=${tag}b net=10.211.77
dir=$(mktemp -d)
made=()
cleanup() {
    for ns in "${made[@]}"; do # processes left inside our namespaces (a run that timed out), then the namespace
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
    [ -n "${KEEP:-}" ] && echo "kept $dir" || rm -rf "$dir"
}
trap cleanup EXIT
err=$(ip netns add "$ns1" 2>&1) || skip "cannot make a network namespace here: $err"
made+=("$ns1")
ip netns add "$ns2" || exit 1
made+=("$ns2")
set -e
ip link add "${tag}1" netns "$ns1" type veth peer name "${tag}2" netns "$ns2"
ip -n "$ns1" addr add "$net.1/24" dev "${tag}1"
ip -n "$ns2" addr add "$net.2/24" dev "${tag}2"
for ns in "$ns1" "$ns2"; do ip -n "$ns" link set lo up; done
ip -n "$ns1" link set "${tag}1" up
ip -n "$ns2" link set "${tag}2" up

printf '%s slots=2\n%s slots=2\n' "$net.1" "$net.2" >"$dir/hostfile"
cat >"$dir/agent.sh" <<AGENT
#!/bin/sh
# Open MPI's launch agent in place of ssh: "agent [options] HOST COMMAND...", COMMAND run in HOST's namespace.
while [ \$# -gt 0 ]; do case "\$1" in -*) shift ;; *) break ;; esac; done
host=\$1; shift
case "\$host" in
    $net.1) ns=$ns1 ;;
    $net.2) ns=$ns2 ;;
    *) echo "agent: unknown host \$host" >&2; exit 1 ;;
esac
# a host of its own: its network namespace and, in a UTS namespace, its own host name (Open MPI names
# nodes, session directories and shared-memory segments by it)
exec ip netns exec "\$ns" unshare --uts /bin/sh -c 'hostname "\$0" && eval "\$1"' "\$ns" "\$*"
AGENT
chmod +x "$dir/agent.sh"

tpr=32 batches=2 np=4
tokens=$((np * tpr * batches))
"$moerun" place --trace "$trace@0:$tokens" --ranks $np --ranks-per-node 2 --replicas $np --solver greedy \
    --hierarchical --tokens-per-rank $tpr --no-baselines -o "$dir/plan.yaml" >/dev/null
"$moerun" place --evaluate --plan "$dir/plan.yaml" --trace "$trace@0:$tokens" --tokens-per-rank $tpr \
    --json >"$dir/eval.json"
common=(infer -c "$config" --set placement.plan="$dir/plan.yaml" --set run.tokens_per_rank=$tpr
        --set run.batches=$batches --set run.chunks=2 --set run.timeout=60)
# one host, 4 ranks, flat
timeout 300 mpirun --oversubscribe -np $np "$moerun" "${common[@]}" --set run.dispatch=flat \
    --output "$dir/single.npy" >/dev/null
# two hosts x 2 ranks over TCP on the veth link; the nodes and the dispatch are found, not set
set +e
# (through scripts/run_multinode.sh, as a user would launch it: hostfile, 2 ranks per node, MOE_NET)
timeout 300 ip netns exec "$ns1" unshare --uts /bin/sh -c 'hostname "$0" && exec "$@"' "$ns1" \
    env MOERUN="$moerun" MOE_NET="$net.0/24" \
    MPIRUN_ARGS="--mca plm_rsh_agent $dir/agent.sh --mca plm_rsh_no_tree_spawn 1" \
    "$multinode" "$dir/hostfile" 2 "${common[@]:2}" --log-level info --output "$dir/multi.npy" \
    --metrics "$dir/multi.jsonl" >"$dir/multi.log" 2>&1
rc=$?
set -e
grep -E "node [0-9]+ of|dispatch" "$dir/multi.log" | sort | uniq | head -8 || true
if [ $rc -ne 0 ]; then
    echo "FAIL: the two-host run exited $rc"; tail -20 "$dir/multi.log"; exit 1
fi
printf 'two hosts vs one: '
"$compare" "$dir/multi.npy" "$dir/single.npy" 1e-5
python3 - "$dir/multi.jsonl" "$dir/eval.json" <<'PY'
import json, sys
summary = [json.loads(l) for l in open(sys.argv[1]) if '"summary"' in l][0]
replay = json.load(open(sys.argv[2]))["scored"][0]["replayed"]
assert summary["dispatch"] == "hierarchical", "run.dispatch auto did not find two nodes: " + summary["dispatch"]
for kind in ("inter", "intra"):
    counted = summary[f"copies_{kind}_per_layer_all_batches"]
    predicted = [round(x) for x in replay[f"per_layer_{kind}_hier"]]
    assert counted == predicted, f"{kind}-node copies counted {counted}, replayed {predicted}"
print(f"two hosts: hierarchical, copies inter {sum(summary['copies_inter_per_layer_all_batches'])} "
      f"(flat would send {round(replay['inter'])}), intra {sum(summary['copies_intra_per_layer_all_batches'])}: "
      "equal to the replay's, every layer")
PY
