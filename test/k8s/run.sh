#!/usr/bin/env bash
# run.sh proves the chart and the janitor against a real Kubernetes control
# plane run as plain processes on loopback: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and kwok (fake kubelets that make
# scheduled pods Running/Ready). No containers run; pods are API objects.
#
#   bash test/k8s/run.sh            (make test-k8s)
#
# Steps: helm lint; helm template | kubectl apply --dry-run=server (default
# external and relay values); bad values rejected by the schema; helm install
# --wait; scale the edges to 5 and back to 2 (pods + EndpointSlices); RBAC of
# the chart's ServiceAccount (can-i and a real 403); the janitor Go test
# against the API server with a real Redis registry.
#
# Everything it starts is killed by PID on exit; state lives in a temp dir
# (kept when K8S_KEEP=1). Under CI=true a missing tool fails the run.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/test/k8s
CHART=$ROOT/deploy/helm/flvcdn
NS=flvcdn
RELEASE=flvcdn
CI=${CI:-false}

T0=$SECONDS
declare -a SUMMARY=()
step_start=0
log() { printf '[k8s %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() {
	log "FAIL: $*"
	exit 1
}
begin() {
	step_name=$1
	step_start=$(date +%s%N)
	log "== $step_name"
}
end() {
	local ms=$((($(date +%s%N) - step_start) / 1000000))
	SUMMARY+=("$(printf '%-58s %6d ms  %s' "$step_name" "$ms" "${1:-ok}")")
}

# --- tools ---------------------------------------------------------------
begin "tools (build or reuse the cache, see tools.sh)"
tools_t=$SECONDS
BIN=$(bash "$HERE/tools.sh" | tail -n 1)
tools_state=$([[ $((SECONDS - tools_t)) -gt 5 ]] && echo cold || echo warm)
end "$tools_state"
export PATH=$BIN:$PATH
for tool in etcd kube-apiserver kube-controller-manager kube-scheduler kwok helm kubectl openssl curl python3 go; do
	command -v "$tool" >/dev/null || fail "missing tool: $tool"
done

# --- processes -----------------------------------------------------------
WORK=$(mktemp -d /tmp/flvcdn-k8s.XXXXXX)
declare -a PIDS=()
cleanup() {
	local rc=$?
	# Last started, first stopped, each given time to exit cleanly: kwok and
	# the controllers before the API server, the API server before etcd.
	local i pid
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		pid=${PIDS[i]}
		kill "$pid" 2>/dev/null || continue
		for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	if [[ $rc -ne 0 || ${K8S_KEEP:-} == 1 ]]; then
		log "logs and state kept in $WORK"
	else
		rm -rf "$WORK"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
# start <name> <command...>: runs it in the background, logs to $WORK/<name>.log.
start() {
	local name=$1
	shift
	"$@" >"$WORK/$name.log" 2>&1 &
	PIDS+=($!)
}
# wait_until <seconds> <what> <command...>: polls the command until it succeeds.
wait_until() {
	local limit=$1 what=$2
	shift 2
	local deadline=$((SECONDS + limit)) t
	t=$(date +%s%N)
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || fail "timed out after ${limit}s waiting for $what"
		sleep 0.2
	done
	log "   $what after $((($(date +%s%N) - t) / 1000000)) ms"
}
alive() { kill -0 "$1" 2>/dev/null; }

begin "control plane up (etcd, apiserver, controller-manager, scheduler, kwok)"
ETCD_PORT=$(free_port)
ETCD_PEER=$(free_port)
start etcd etcd --name k8s-test --data-dir "$WORK/etcd" --unsafe-no-fsync \
	--listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
	--listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
	--initial-cluster "k8s-test=http://127.0.0.1:$ETCD_PEER" --log-level warn
wait_until 30 etcd curl -sf "http://127.0.0.1:$ETCD_PORT/health"

openssl genrsa -out "$WORK/sa.key" 2048 2>/dev/null
openssl rsa -in "$WORK/sa.key" -pubout -out "$WORK/sa.pub" 2>/dev/null
ADMIN_TOKEN=$(openssl rand -hex 24)
echo "$ADMIN_TOKEN,admin,admin,system:masters" >"$WORK/tokens.csv"
API_PORT=$(free_port)
API=https://127.0.0.1:$API_PORT
start kube-apiserver kube-apiserver --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
	--bind-address 127.0.0.1 --secure-port "$API_PORT" --cert-dir "$WORK/certs" \
	--service-account-key-file "$WORK/sa.pub" --service-account-signing-key-file "$WORK/sa.key" \
	--service-account-issuer https://kubernetes.default.svc.cluster.local \
	--token-auth-file "$WORK/tokens.csv" --authorization-mode Node,RBAC \
	--service-cluster-ip-range 10.96.0.0/16 --enable-priority-and-fairness=false
wait_until 60 kube-apiserver curl -skf -H "Authorization: Bearer $ADMIN_TOKEN" "$API/readyz"

export KUBECONFIG=$WORK/admin.kubeconfig
kubectl config set-cluster k8s-test --server "$API" --insecure-skip-tls-verify=true >/dev/null
kubectl config set-credentials admin --token "$ADMIN_TOKEN" >/dev/null
kubectl config set-context k8s-test --cluster k8s-test --user admin >/dev/null
kubectl config use-context k8s-test >/dev/null

start kube-controller-manager kube-controller-manager --kubeconfig "$KUBECONFIG" \
	--authentication-kubeconfig "$KUBECONFIG" --authorization-kubeconfig "$KUBECONFIG" \
	--leader-elect=false --bind-address 127.0.0.1 --secure-port "$(free_port)" \
	--controllers '*,-nodeipam' --service-account-private-key-file "$WORK/sa.key" \
	--root-ca-file "$WORK/certs/apiserver.crt" --use-service-account-credentials=false
start kube-scheduler kube-scheduler --kubeconfig "$KUBECONFIG" \
	--authentication-kubeconfig "$KUBECONFIG" --authorization-kubeconfig "$KUBECONFIG" \
	--leader-elect=false --bind-address 127.0.0.1 --secure-port "$(free_port)"
start kwok kwok --kubeconfig "$KUBECONFIG" --manage-all-nodes=true --cidr 10.244.0.1/16 \
	--server-address "127.0.0.1:$(free_port)"

for i in 0 1 2; do
	kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "110"}
  capacity: {cpu: "32", memory: 256Gi, pods: "110"}
EOF
done
# The release namespace enforces the "restricted" Pod Security Standard: the
# chart's pods must pass it (non-root, no capabilities, seccomp, no escalation).
kubectl create namespace "$NS" >/dev/null
kubectl label namespace "$NS" pod-security.kubernetes.io/enforce=restricted \
	pod-security.kubernetes.io/enforce-version=latest >/dev/null
wait_until 60 "nodes Ready" bash -c "[[ \$(kubectl get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}' | grep -c True) -eq 3 ]]"
wait_until 60 "the default ServiceAccount" kubectl get serviceaccount default -n "$NS"
for p in "${PIDS[@]}"; do alive "$p" || fail "a control-plane process died; see $WORK/*.log"; done
end "$(kubectl version -o json | python3 -c 'import json,sys; print("server", json.load(sys.stdin)["serverVersion"]["gitVersion"])')"

# --- chart: static checks ----------------------------------------------------
begin "helm lint --strict (default + external values)"
helm lint --strict "$CHART" >"$WORK/lint.log" 2>&1 || { cat "$WORK/lint.log"; fail "helm lint"; }
helm lint --strict "$CHART" -f "$HERE/values-external.yaml" >>"$WORK/lint.log" 2>&1 || { cat "$WORK/lint.log"; fail "helm lint (external)"; }
end

for values in default "$HERE/values-external.yaml" "$HERE/values-relay.yaml"; do
	args=()
	[[ $values != default ]] && args=(-f "$values")
	begin "helm template | kubectl apply --dry-run=server ($(basename "$values"))"
	helm template "$RELEASE" "$CHART" -n "$NS" "${args[@]}" >"$WORK/rendered.yaml"
	if ! kubectl apply --dry-run=server --validate=strict -n "$NS" -f "$WORK/rendered.yaml" >"$WORK/dry-run.log" 2>&1; then
		cat "$WORK/dry-run.log"
		fail "the API server rejected the rendered chart ($values)"
	fi
	grep -qi warning "$WORK/dry-run.log" && { cat "$WORK/dry-run.log"; fail "warnings from the API server"; }
	end "$(grep -c . "$WORK/dry-run.log") objects accepted"
done

begin "bad values rejected by values.schema.json"
n=0
for bad in "$HERE"/bad-values/*.yaml; do
	want=$(sed -n 's/^# expect: //p' "$bad")
	[[ -n $want ]] || fail "$bad has no '# expect:' line"
	if helm template "$RELEASE" "$CHART" -f "$bad" >/dev/null 2>"$WORK/bad.log"; then
		fail "$(basename "$bad") was accepted"
	fi
	grep -qF -- "$want" "$WORK/bad.log" || { cat "$WORK/bad.log"; fail "$(basename "$bad") failed without '$want'"; }
	n=$((n + 1))
done
end "$n files rejected"

# --- chart: install and scale -------------------------------------------------
# No cloud here: stand in for a cloud controller and give LoadBalancer
# Services an address, as helm --wait requires.
fake_lb() {
	while true; do
		for svc in $(kubectl get svc -n "$NS" -o jsonpath='{range .items[?(@.spec.type=="LoadBalancer")]}{.metadata.name}{" "}{.status.loadBalancer.ingress}{"\n"}{end}' 2>/dev/null | awk 'NF==1{print $1}'); do
			kubectl patch svc "$svc" -n "$NS" --subresource=status --type=merge \
				-p '{"status":{"loadBalancer":{"ingress":[{"ip":"192.0.2.10"}]}}}' >/dev/null 2>&1 || true
		done
		sleep 0.5
	done
}
fake_lb &
PIDS+=($!)

begin "helm install --wait"
helm install "$RELEASE" "$CHART" -n "$NS" --wait --timeout 5m >"$WORK/install.log" 2>&1 ||
	{ cat "$WORK/install.log"; kubectl get pods,svc -n "$NS" -o wide; fail "helm install"; }
if ! grep -q "rtmp://" "$WORK/install.log" || ! grep -q "\.flv" "$WORK/install.log"; then
	cat "$WORK/install.log"
	fail "NOTES.txt printed no publish or playback URL"
fi
end "$(kubectl get pods -n "$NS" --no-headers | grep -c Running) pods Running"
sed -n '/^NOTES:/,$p' "$WORK/install.log" | sed 's/^/    /' >&2

edge_pods() { kubectl get pods -n "$NS" -l app.kubernetes.io/component=edge,app.kubernetes.io/instance=$RELEASE \
	-o jsonpath='{range .items[?(@.status.phase=="Running")]}{.metadata.name}{" "}{.metadata.deletionTimestamp}{"\n"}{end}' | awk 'NF==1' | grep -c . || true; }
edge_endpoints() { kubectl get endpointslices -n "$NS" -l kubernetes.io/service-name=$RELEASE-edge \
	-o jsonpath='{range .items[*].endpoints[*]}{.conditions.ready}{"\n"}{end}' | grep -c true || true; }
scale_to() {
	local n=$1
	begin "kubectl scale deploy/$RELEASE-edge --replicas=$n"
	kubectl scale -n "$NS" "deploy/$RELEASE-edge" --replicas="$n" >/dev/null
	wait_until 90 "$n Running edge pods" bash -c "[[ \$($(declare -f edge_pods); NS=$NS RELEASE=$RELEASE edge_pods) -eq $n ]]"
	wait_until 90 "$n ready edge endpoints" bash -c "[[ \$($(declare -f edge_endpoints); NS=$NS RELEASE=$RELEASE edge_endpoints) -eq $n ]]"
	end "$(NS=$NS RELEASE=$RELEASE edge_pods) pods Running, $(NS=$NS RELEASE=$RELEASE edge_endpoints) ready endpoints"
}
scale_to 5
scale_to 2

# --- RBAC of the chart's ServiceAccount --------------------------------------------
begin "RBAC: the origin ServiceAccount can do the janitor's work and nothing else"
SA=$RELEASE-origin
SA_TOKEN=$(kubectl create token "$SA" -n "$NS" --duration=30m)
SA_KUBECONFIG=$WORK/sa.kubeconfig
KUBECONFIG=$SA_KUBECONFIG kubectl config set-cluster k8s-test --server "$API" --insecure-skip-tls-verify=true >/dev/null
KUBECONFIG=$SA_KUBECONFIG kubectl config set-credentials sa --token "$SA_TOKEN" >/dev/null
KUBECONFIG=$SA_KUBECONFIG kubectl config set-context sa --cluster k8s-test --user sa --namespace "$NS" >/dev/null
KUBECONFIG=$SA_KUBECONFIG kubectl config use-context sa >/dev/null
LEASE=$RELEASE-origin-janitor
can() { [[ $(KUBECONFIG=$SA_KUBECONFIG kubectl auth can-i -n "$NS" "$@" 2>/dev/null) == yes ]]; }
for ok in "get pods" "list pods" "watch pods" "create leases.coordination.k8s.io" \
	"get leases.coordination.k8s.io/$LEASE" "update leases.coordination.k8s.io/$LEASE"; do
	# shellcheck disable=SC2086
	can $ok || fail "the ServiceAccount cannot: $ok"
done
for no in "list secrets" "get secrets" "delete pods" "create pods" "update pods" "patch pods" \
	"get configmaps" "update leases.coordination.k8s.io/someone-else" "delete leases.coordination.k8s.io/$LEASE" \
	"list pods -n default" "list nodes"; do
	# shellcheck disable=SC2086
	can $no && fail "the ServiceAccount may: $no"
done
code=$(curl -sk -o "$WORK/403.json" -w '%{http_code}' -H "Authorization: Bearer $SA_TOKEN" "$API/api/v1/namespaces/$NS/secrets")
[[ $code == 403 ]] || { cat "$WORK/403.json"; fail "listing secrets with the SA token gave HTTP $code, want 403"; }
code=$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $SA_TOKEN" "$API/api/v1/namespaces/$NS/pods?labelSelector=app.kubernetes.io/component=origin")
[[ $code == 200 ]] || fail "listing pods with the SA token gave HTTP $code, want 200"
KUBECONFIG=$SA_KUBECONFIG kubectl get secrets -n "$NS" >/dev/null 2>"$WORK/forbidden.log" && fail "kubectl get secrets succeeded with the SA token"
grep -q Forbidden "$WORK/forbidden.log" || { cat "$WORK/forbidden.log"; fail "kubectl get secrets failed, but not with Forbidden"; }
end "secrets: HTTP 403; pods: HTTP 200"

# --- the janitor against the API server ---------------------------------------------
# go_e2e <title> <test regexp> <tools...>: runs Go tests of test/k8s built with
# the k8s_e2e tag against this cluster and reports their FIGURE lines.
go_e2e() {
	local title=$1 run=$2
	shift 2
	local tool missing=()
	for tool in "$@"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
	if ((${#missing[@]})); then
		[[ $CI == true ]] && fail "$title needs: ${missing[*]}"
		log "$title skipped: missing ${missing[*]} (a failure under CI=true)"
		SUMMARY+=("$(printf '%-58s %6s     %s' "$title" "-" "SKIPPED: no ${missing[*]}")")
		return 0
	fi
	begin "$title"
	local out=$WORK/go-$run.log
	(cd "$ROOT" && KUBECONFIG=$KUBECONFIG FLVCDN_K8S_NAMESPACE=$NS FLVCDN_K8S_LEASE=$LEASE \
		FLVCDN_K8S_JANITOR_KUBECONFIG=$SA_KUBECONFIG \
		go test -tags k8s_e2e -count=1 -v -timeout 10m -run "$run" ./test/k8s/ >"$out" 2>&1) ||
		{ grep -v '^time=' "$out" | tail -80; fail "$title"; }
	grep -q 'no tests to run' "$out" && { tail -20 "$out"; fail "$title: no tests to run for -run '$run'"; }
	local figures
	figures=$(grep -o 'FIGURE .*' "$out" | sed 's/^FIGURE //' | paste -sd ';' -)
	end "${figures:-ok}"
	grep 'FIGURE' "$out" | sed 's/^ */    /' >&2
}
go_e2e "janitor Go test (real API server, real Redis, chart SA token)" '^TestJanitor' redis-server
go_e2e "failover: origin pod deleted, edge resumes (ffmpeg, processes)" '^TestFailover' redis-server nats-server ffmpeg

for p in "${PIDS[@]}"; do alive "$p" || fail "a control-plane process died during the run; see $WORK/*.log"; done

printf '\n%s\n' "test-k8s summary (tools: $tools_state, total $((SECONDS - T0))s)" >&2
printf '  %s\n' "${SUMMARY[@]}" >&2
log "PASS"
