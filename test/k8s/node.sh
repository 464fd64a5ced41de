#!/usr/bin/env bash
# node.sh runs the chart on a real Kubernetes node made of plain processes on
# this machine, and the user stories of issue 9 against it:
#
#   control plane  etcd, kube-apiserver (on the node's bridge address),
#                  kube-controller-manager, kube-scheduler      (tools.sh)
#   node           containerd + runc (Debian packages), CNI bridge, host-local,
#                  portmap, loopback (Debian), kubelet and kube-proxy (iptables
#                  mode) built from the pinned k8s.io/kubernetes module, CoreDNS
#                  (tools/k8s/coredns) as the cluster DNS
#   images         origin and edge from `make image` (tools/image/build.sh);
#                  NATS and Redis assembled by tools/image from the nats-server,
#                  redis-server and redis-cli the e2e tests use (Debian
#                  packages, with their shared libraries); the pod sandbox
#                  from tools/k8s/pause; all imported with `ctr images import`
#
# Then: helm install --wait (every container checked running in containerd),
# and the Go test TestNode (node_test.go, tag k8s_node): ffmpeg publishing
# through the origin Service, viewers through the edge Service (ClusterIP via
# kube-proxy, NodePort, LoadBalancer address), kubectl scale, deletion of the
# origin pod holding the stream, helm upgrade rolling the edges. Then
# metrics-server (tools.sh) on the host, registered as an APIService, and the Go
# test TestNodeHPA: viewer load until the chart's HPA adds an edge
# (FLVCDN_NODE_HPA=0 skips this step).
#
# Its last line starts with "real node:" and gives the figures.
#
# Needs root. Network: one bridge (flvcdn0, 10.244.0.0/24) whose address is
# the node's, the route of the Service range onto it, iptables rules from
# kube-proxy and the bridge plugin, pod network namespaces; nothing leaves the
# machine (forwarding is enabled on the bridge only, and FORWARD drops what
# would go from it elsewhere). Every process is stopped by PID on exit, and the
# links, routes, iptables chains, cgroups, mounts and sysctls it changed are
# put back. State lives in a temp dir (kept on failure or with K8S_KEEP=1).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/test/k8s
CHART=$ROOT/deploy/helm/flvcdn
NS=flvcdn
RELEASE=flvcdn
NODE=flvcdn-node
CI=${CI:-false}
BRIDGE=flvcdn0
POD_CIDR=10.244.0.0/24
NODE_IP=10.244.0.1
LB_IP=10.244.0.254 # handed out by this script's stand-in LoadBalancer controller
SVC_CIDR=10.96.0.0/16
CGROUP_ROOT=/flvcdn-node

T0=$SECONDS
log() { printf '[node %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() {
	log "FAIL: $*"
	exit 1
}
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }

[[ $(id -u) == 0 ]] || fail "needs root (containerd, kubelet, bridge and iptables)"

# --- tools ---------------------------------------------------------------------
need=(containerd ctr runc iptables ip conntrack nats-server redis-server redis-cli ffmpeg ffprobe openssl curl python3 go)
pkg_of() {
	case $1 in
	ctr) echo containerd ;; ip) echo iproute2 ;; redis-cli) echo redis-tools ;; ffprobe) echo ffmpeg ;;
	*) echo "$1" ;;
	esac
}
missing=()
for t in "${need[@]}"; do command -v "$t" >/dev/null || missing+=("$(pkg_of "$t")"); done
[[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
if ((${#missing[@]})); then
	log "installing ${missing[*]} (Debian packages)"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
for t in "${need[@]}"; do command -v "$t" >/dev/null || fail "missing tool: $t"; done
for p in bridge host-local portmap loopback; do [[ -x /usr/lib/cni/$p ]] || fail "missing CNI plugin $p"; done

t=$SECONDS
BIN=$(bash "$HERE/tools.sh" | tail -n 1)
tools_s=$((SECONDS - t))
export PATH=$BIN:$PATH
for tool in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy coredns pause metrics-server helm kubectl; do
	command -v "$tool" >/dev/null || fail "missing tool: $tool (tools.sh)"
done

WORK=$(mktemp -d /tmp/flvcdn-node.XXXXXX)
chmod 755 "$WORK"

# --- images --------------------------------------------------------------------
t=$SECONDS
# The image tool's own test: build, push to a loopback registry, pull, compare.
(cd "$ROOT/tools/image" && go test -count=1 . >"$WORK/image-tool-test.log" 2>&1) ||
	{ cat "$WORK/image-tool-test.log"; fail "tools/image test"; }
IMAGES=$WORK/images
IMAGE_DIR=$IMAGES bash "$ROOT/tools/image/build.sh" >"$WORK/images.txt"
TOOL=$IMAGES/bin/image-tool
nats_version=$(nats-server --version | grep -o '[0-9][0-9.]*' | head -n 1)
redis_version=$(redis-server --version | grep -o 'v=[0-9.]*' | cut -d= -f2)
NATS_IMAGE=flvcdn.local/nats-server:$nats_version
REDIS_IMAGE=flvcdn.local/redis-server:$redis_version
PAUSE_IMAGE=flvcdn.local/pause:1
# NATS: the Debian nats-server (dynamically linked to glibc) with its libraries.
"$TOOL" --ref "$NATS_IMAGE" --layout "$IMAGES/oci" --file "$(command -v nats-server)=/usr/bin/nats-server:0755" \
	--with-libs --account nats:65532 --user 65532:65532 --entrypoint /usr/bin/nats-server --port 4222 --port 6222 --port 8222 >>"$WORK/images.txt"
# Redis: redis-server and redis-cli with their libraries, plus sh and grep for
# the chart's readiness probe (`sh -c "redis-cli ping | grep -q PONG"`); the
# chart's args start with "redis-server", found on PATH.
"$TOOL" --ref "$REDIS_IMAGE" --layout "$IMAGES/oci" --with-libs \
	--file "$(command -v redis-server)=/usr/bin/redis-server:0755" --file "$(command -v redis-cli)=/usr/bin/redis-cli:0755" \
	--file "$(readlink -f /bin/sh)=/bin/sh:0755" --file "$(command -v grep)=/bin/grep:0755" \
	--account redis:999 --user 999:999 --env PATH=/usr/bin:/bin --port 6379 >>"$WORK/images.txt"
"$TOOL" --ref "$PAUSE_IMAGE" --layout "$IMAGES/oci" --file "$(readlink -f "$BIN/pause")=/pause:0755" --require-static \
	--user 65535:65535 --entrypoint /pause >>"$WORK/images.txt"
tar -C "$IMAGES/oci" -cf "$IMAGES/all.oci.tar" .
images_s=$((SECONDS - t))
log "images built in ${images_s}s:"
sed 's/^/    /' "$WORK/images.txt" >&2

# --- teardown ------------------------------------------------------------------------
declare -a PIDS=() NAMES=()
SYSCTLS=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys kernel/keys/root_maxbytes net/bridge/bridge-nf-call-iptables)
declare -A SYSCTL_WAS=()
for s in "${SYSCTLS[@]}"; do SYSCTL_WAS[$s]=$(cat "/proc/sys/$s"); done
chains_before=$WORK/chains.before
for tbl in filter nat mangle; do iptables -t "$tbl" -S | awk -v t="$tbl" '$1=="-N"{print t, $2}'; done | sort >"$chains_before"
netns_before=$(ip netns list 2>/dev/null | awk '{print $1}' | sort)
# Host directories the kubelet, containerd and CNI create at fixed places
# (children before parents); those that are new are removed at the end.
HOST_DIRS=(/var/lib/kubelet/device-plugins /var/lib/kubelet /var/log/containers /var/lib/cni/results /var/lib/cni /var/run/netns)
declare -A HOST_DIR_WAS=()
for d in "${HOST_DIRS[@]}"; do [[ -e $d ]] && HOST_DIR_WAS[$d]=1; done
SOCK=$WORK/containerd/containerd.sock

stop_pid() { # stop_pid <pid>: TERM, up to 10 s, then KILL
	local pid=$1
	kill "$pid" 2>/dev/null || return 0
	for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	kill -9 "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}
cleanup() {
	local rc=$? i
	set +e
	trap - EXIT
	log "teardown"
	if [[ -n ${KUBECONFIG:-} ]] && kubectl get ns "$NS" >/dev/null 2>&1 && [[ -n ${KUBELET_PID:-} ]] && kill -0 "$KUBELET_PID" 2>/dev/null; then
		if [[ $rc -ne 0 || ${K8S_KEEP:-} == 1 ]]; then
			mkdir -p "$WORK/pods"
			kubectl get pods,svc,endpointslices -n "$NS" -o wide >"$WORK/pods/list.txt" 2>&1
			for pod in $(kubectl get pods -n "$NS" -o jsonpath='{.items[*].metadata.name}'); do
				kubectl logs -n "$NS" "$pod" --all-containers >"$WORK/pods/$pod.log" 2>&1
				kubectl logs -n "$NS" "$pod" --all-containers --previous >"$WORK/pods/$pod.previous.log" 2>&1
			done
		fi
		# Let the kubelet stop the pods through the CRI: that also removes
		# their network namespaces, veths and IP allocations.
		kubectl delete ns "$NS" --wait=false >/dev/null 2>&1
		kubectl delete pods -n "$NS" --all --force --grace-period=0 >/dev/null 2>&1
		for _ in $(seq 150); do
			[[ -z $(ctr -a "$SOCK" -n k8s.io tasks ls -q 2>/dev/null) ]] && break
			sleep 0.2
		done
	fi
	# Last started, first stopped.
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done
	# containerd's shims outlive it: end those of this containerd (their
	# command line names its socket, which is under $WORK).
	for p in /proc/[0-9]*; do
		if tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qF -- "$SOCK"; then
			kill -9 "${p#/proc/}" 2>/dev/null
		fi
	done
	sleep 0.5
	# Mounts under $WORK (overlay rootfs, secrets, emptyDirs, shm), deepest first.
	findmnt -rn -o TARGET | grep -F "$WORK/" | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
	# iptables: kube-proxy's own cleanup, then any KUBE-/CNI- chain this run added.
	[[ -n ${PROXY_CONFIG:-} ]] && kube-proxy --cleanup --config "$PROXY_CONFIG" >"$WORK/kube-proxy-cleanup.log" 2>&1
	for tbl in filter nat mangle; do iptables -t "$tbl" -S | awk -v t="$tbl" '$1=="-N"{print t, $2}'; done | sort >"$WORK/chains.after"
	comm -13 "$chains_before" "$WORK/chains.after" | grep -E ' (KUBE-|CNI-)' | while read -r tbl chain; do
		iptables -t "$tbl" -S | grep -- "-j $chain\( \|$\)" | grep -v "^-A $chain " | sed 's/^-A /-D /' |
			while read -r rule; do eval "iptables -t $tbl $rule"; done
		iptables -t "$tbl" -F "$chain" 2>/dev/null
	done
	comm -13 "$chains_before" "$WORK/chains.after" | grep -E ' (KUBE-|CNI-)' | while read -r tbl chain; do
		iptables -t "$tbl" -X "$chain" 2>/dev/null
	done
	iptables -D FORWARD -i "$BRIDGE" ! -o "$BRIDGE" -j DROP 2>/dev/null
	iptables -D FORWARD ! -i "$BRIDGE" -o "$BRIDGE" -j DROP 2>/dev/null
	# Pod network namespaces the CRI left behind (containerd names them cni-*).
	comm -13 <(echo "$netns_before") <(ip netns list 2>/dev/null | awk '{print $1}' | sort) | grep '^cni-' |
		while read -r n; do ip netns delete "$n" 2>/dev/null; done
	# The kubelet's links to container logs (it may stop before removing them).
	find /var/log/containers -maxdepth 1 -type l -lname "$WORK/*" -delete 2>/dev/null
	for d in "${HOST_DIRS[@]}"; do
		[[ -n ${HOST_DIR_WAS[$d]:-} ]] && continue
		[[ $d == /var/lib/kubelet/device-plugins ]] && rm -f "$d/kubelet.sock"
		rmdir "$d" 2>/dev/null
	done
	# The shims' socket directory (containerd's default place), when empty.
	rmdir /run/containerd/s /run/containerd 2>/dev/null
	ip route del "$SVC_CIDR" dev "$BRIDGE" 2>/dev/null
	ip link del "$BRIDGE" 2>/dev/null
	for s in "${SYSCTLS[@]}"; do
		[[ $(cat "/proc/sys/$s") == "${SYSCTL_WAS[$s]}" ]] || echo "${SYSCTL_WAS[$s]}" >"/proc/sys/$s"
	done
	# The kubelet's cgroups, deepest first.
	for _ in 1 2 3 4 5 6 7 8 9 10; do
		for c in /sys/fs/cgroup/*"$CGROUP_ROOT"; do
			[[ -d $c ]] && find "$c" -depth -type d -exec rmdir {} + 2>/dev/null
		done
		compgen -G "/sys/fs/cgroup/*$CGROUP_ROOT" >/dev/null || break
		sleep 0.5
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

free_port() { # free_port [ip]
	python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1]); s.close()' "${1:-127.0.0.1}"
}
start() { # start <name> <command...>: in the background, logs to $WORK/<name>.log
	local name=$1
	shift
	"$@" >"$WORK/$name.log" 2>&1 &
	PIDS+=($!)
	NAMES+=("$name")
}
wait_until() { # wait_until <seconds> <what> <command...>
	local limit=$1 what=$2
	shift 2
	local deadline=$((SECONDS + limit)) t
	t=$(date +%s%N)
	until "$@" >/dev/null 2>&1; do
		check_alive
		((SECONDS < deadline)) || fail "timed out after ${limit}s waiting for $what"
		sleep 0.2
	done
	log "   $what after $(ms_since "$t") ms"
}
check_alive() {
	local i
	for i in "${!PIDS[@]}"; do
		kill -0 "${PIDS[i]}" 2>/dev/null || { tail -20 "$WORK/${NAMES[i]}.log" >&2; fail "${NAMES[i]} died; see $WORK/${NAMES[i]}.log"; }
	done
}

# --- network ---------------------------------------------------------------------------
# The bridge exists before anything binds to the node address; the CNI bridge
# plugin attaches pods to it. The Service range is routed onto it, so that a
# ClusterIP packet never takes the default route, even before kube-proxy's
# rules exist. Forwarding is enabled for this bridge only.
if ip link show "$BRIDGE" >/dev/null 2>&1; then
	# Only this script makes it: a run killed before its teardown left it.
	log "removing $BRIDGE left by an earlier run"
	ip route del "$SVC_CIDR" dev "$BRIDGE" 2>/dev/null || true
	ip link del "$BRIDGE"
fi
ip link add "$BRIDGE" type bridge
ip addr add "$NODE_IP/24" dev "$BRIDGE"
ip link set "$BRIDGE" up
ip route add "$SVC_CIDR" dev "$BRIDGE" src "$NODE_IP"
echo 1 >"/proc/sys/net/ipv4/conf/$BRIDGE/forwarding"
echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
iptables -I FORWARD -i "$BRIDGE" ! -o "$BRIDGE" -j DROP
iptables -I FORWARD ! -i "$BRIDGE" -o "$BRIDGE" -j DROP

# --- control plane ----------------------------------------------------------------------
t0=$(date +%s%N)
ETCD_PORT=$(free_port)
ETCD_PEER=$(free_port)
start etcd etcd --name node-test --data-dir "$WORK/etcd" --unsafe-no-fsync \
	--listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
	--listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
	--initial-cluster "node-test=http://127.0.0.1:$ETCD_PEER" --log-level warn
wait_until 30 etcd curl -sf "http://127.0.0.1:$ETCD_PORT/health"

openssl genrsa -out "$WORK/sa.key" 2048 2>/dev/null
openssl rsa -in "$WORK/sa.key" -pubout -out "$WORK/sa.pub" 2>/dev/null
ADMIN_TOKEN=$(openssl rand -hex 24)
NODE_TOKEN=$(openssl rand -hex 24)
PROXY_TOKEN=$(openssl rand -hex 24)
{
	echo "$ADMIN_TOKEN,admin,admin,system:masters"
	echo "$NODE_TOKEN,system:node:$NODE,node,system:nodes"
	echo "$PROXY_TOKEN,system:kube-proxy,kube-proxy"
} >"$WORK/tokens.csv"
# The aggregation layer (for metrics-server): a front-proxy CA and the API
# server's client certificate signed by it.
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/front-proxy-ca.key" -out "$WORK/front-proxy-ca.crt" \
	-subj /CN=flvcdn-front-proxy-ca -days 1 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout "$WORK/front-proxy.key" -out "$WORK/front-proxy.csr" -subj /CN=front-proxy-client 2>/dev/null
openssl x509 -req -in "$WORK/front-proxy.csr" -CA "$WORK/front-proxy-ca.crt" -CAkey "$WORK/front-proxy-ca.key" \
	-CAcreateserial -out "$WORK/front-proxy.crt" -days 1 2>/dev/null
# The API server listens on the node's bridge address: pods reach it through
# the kubernetes Service (10.96.0.1), which kube-proxy maps to this address.
API_PORT=$(free_port "$NODE_IP")
API=https://$NODE_IP:$API_PORT
start kube-apiserver kube-apiserver --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
	--bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$API_PORT" --cert-dir "$WORK/certs" \
	--service-account-key-file "$WORK/sa.pub" --service-account-signing-key-file "$WORK/sa.key" \
	--service-account-issuer https://kubernetes.default.svc.cluster.local \
	--token-auth-file "$WORK/tokens.csv" --authorization-mode Node,RBAC \
	--service-cluster-ip-range "$SVC_CIDR" --enable-priority-and-fairness=false \
	--kubelet-preferred-address-types InternalIP \
	--requestheader-client-ca-file "$WORK/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
	--requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
	--requestheader-extra-headers-prefix X-Remote-Extra- --proxy-client-cert-file "$WORK/front-proxy.crt" \
	--proxy-client-key-file "$WORK/front-proxy.key" --enable-aggregator-routing=true
wait_until 60 kube-apiserver curl -skf -H "Authorization: Bearer $ADMIN_TOKEN" "$API/readyz"

kubeconfig() { # kubeconfig <file> <user> <token>
	KUBECONFIG=$1 kubectl config set-cluster node-test --server "$API" --certificate-authority "$WORK/certs/apiserver.crt" --embed-certs >/dev/null
	KUBECONFIG=$1 kubectl config set-credentials "$2" --token "$3" >/dev/null
	KUBECONFIG=$1 kubectl config set-context node-test --cluster node-test --user "$2" >/dev/null
	KUBECONFIG=$1 kubectl config use-context node-test >/dev/null
}
kubeconfig "$WORK/admin.kubeconfig" admin "$ADMIN_TOKEN"
kubeconfig "$WORK/kubelet.kubeconfig" "system:node:$NODE" "$NODE_TOKEN"
kubeconfig "$WORK/kube-proxy.kubeconfig" kube-proxy "$PROXY_TOKEN"
export KUBECONFIG=$WORK/admin.kubeconfig
kubectl create clusterrolebinding flvcdn-node-kube-proxy --clusterrole system:node-proxier --user system:kube-proxy >/dev/null

start kube-controller-manager kube-controller-manager --kubeconfig "$KUBECONFIG" \
	--authentication-kubeconfig "$KUBECONFIG" --authorization-kubeconfig "$KUBECONFIG" \
	--leader-elect=false --bind-address 127.0.0.1 --secure-port "$(free_port)" \
	--controllers '*,-nodeipam' --service-account-private-key-file "$WORK/sa.key" \
	--root-ca-file "$WORK/certs/apiserver.crt" --use-service-account-credentials=false
start kube-scheduler kube-scheduler --kubeconfig "$KUBECONFIG" \
	--authentication-kubeconfig "$KUBECONFIG" --authorization-kubeconfig "$KUBECONFIG" \
	--leader-elect=false --bind-address 127.0.0.1 --secure-port "$(free_port)"
controlplane_ms=$(ms_since "$t0")

# --- containerd -------------------------------------------------------------------------
t0=$(date +%s%N)
mkdir -p "$WORK/containerd" "$WORK/cni/net.d" "$WORK/cni/ipam"
cat >"$WORK/containerd/config.toml" <<EOF
version = 2
root = "$WORK/containerd/root"
state = "$WORK/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = "$SOCK.debug"
[plugins."io.containerd.internal.v1.opt"]
  path = "$WORK/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # No CAP_SYS_RESOURCE in this VM: a negative oom_score_adj (-998 for pod
  # sandboxes) is refused, so keep every adjustment at or above containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$WORK/runc"
        BinaryName = "${FLVCDN_NODE_RUNC:-runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$WORK/cni/net.d"
    max_conf_num = 1
EOF
cat >"$WORK/cni/net.d/10-flvcdn.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "flvcdn-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$WORK/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "rangeStart": "10.244.0.10", "rangeEnd": "10.244.0.200", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
start containerd containerd --config "$WORK/containerd/config.toml"
wait_until 30 containerd ctr -a "$SOCK" version
ctr -a "$SOCK" -n k8s.io images import "$IMAGES/all.oci.tar" >"$WORK/import.log" 2>&1 || { cat "$WORK/import.log"; fail "ctr images import"; }
ctr -a "$SOCK" -n k8s.io images ls -q | sed 's/^/    imported /' >&2
containerd_version=$(containerd --version | awk '{print $3}')

# --- cluster DNS ------------------------------------------------------------------------
DNS_HEALTH=$(free_port)
DNS_READY=$(free_port)
cat >"$WORK/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    health 127.0.0.1:$DNS_HEALTH
    ready 127.0.0.1:$DNS_READY
    cache 5
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $KUBECONFIG node-test
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
}
EOF
start coredns coredns -conf "$WORK/Corefile"
wait_until 30 coredns curl -sf "http://127.0.0.1:$DNS_READY/ready"

# --- kubelet ---------------------------------------------------------------------------------
for c in /sys/fs/cgroup/{cpu,cpuacct,cpuset,memory,pids,blkio,devices,freezer,systemd}; do
	[[ -d $c ]] && mkdir -p "$c$CGROUP_ROOT"
done
: >"$WORK/resolv.conf"
KUBELET_HEALTH=$(free_port)
KUBELET_PORT=$(free_port "$NODE_IP")
cat >"$WORK/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
failCgroupV1: false
containerRuntimeEndpoint: unix://$SOCK
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTH
# The kubelet API listens on the bridge address only (logs, exec for kubectl).
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
clusterDNS: [$NODE_IP]
clusterDomain: cluster.local
resolvConf: $WORK/resolv.conf
failSwapOn: false
podLogsDir: $WORK/pod-logs
volumePluginDir: $WORK/kubelet-plugins
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
serializeImagePulls: false
registerNode: true
oomScoreAdj: 0 # the default -999 needs CAP_SYS_RESOURCE, which this VM withholds
EOF
start kubelet kubelet --config "$WORK/kubelet.yaml" --kubeconfig "$WORK/kubelet.kubeconfig" \
	--root-dir "$WORK/kubelet" --cert-dir "$WORK/kubelet/pki" --hostname-override "$NODE" --node-ip "$NODE_IP" --v 1
KUBELET_PID=${PIDS[-1]}

PROXY_CONFIG=$WORK/kube-proxy.yaml
cat >"$PROXY_CONFIG" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: $WORK/kube-proxy.kubeconfig
hostnameOverride: $NODE
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:$(free_port)
metricsBindAddress: 127.0.0.1:$(free_port)
clusterCIDR: $POD_CIDR
nodePortAddresses: [$NODE_IP/32]
iptables:
  localhostNodePorts: false
  masqueradeAll: false
oomScoreAdj: 0
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
start kube-proxy kube-proxy --config "$PROXY_CONFIG"

wait_until 90 "node $NODE Ready" bash -c "[[ \$(kubectl get node $NODE -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}') == True ]]"
node_ms=$(ms_since "$t0")
kubelet_version=$(kubectl get node "$NODE" -o jsonpath='{.status.nodeInfo.kubeletVersion}')
runtime_version=$(kubectl get node "$NODE" -o jsonpath='{.status.nodeInfo.containerRuntimeVersion}')
kubectl get node "$NODE" -o wide >&2

# --- stand-in LoadBalancer controller ------------------------------------------------------
# No cloud here: give LoadBalancer Services an address on the node's own
# bridge subnet (not assigned to any interface); kube-proxy programs it.
fake_lb() {
	while true; do
		for svc in $(kubectl get svc -n "$NS" -o jsonpath='{range .items[?(@.spec.type=="LoadBalancer")]}{.metadata.name}{" "}{.status.loadBalancer.ingress}{"\n"}{end}' 2>/dev/null | awk 'NF==1{print $1}'); do
			kubectl patch svc "$svc" -n "$NS" --subresource=status --type=merge \
				-p "{\"status\":{\"loadBalancer\":{\"ingress\":[{\"ip\":\"$LB_IP\"}]}}}" >/dev/null 2>&1 || true
		done
		sleep 0.5
	done
}
fake_lb &
PIDS+=($!)
NAMES+=(fake-lb)

# --- helm install --------------------------------------------------------------------------------
kubectl create namespace "$NS" >/dev/null
kubectl label namespace "$NS" pod-security.kubernetes.io/enforce=restricted \
	pod-security.kubernetes.io/enforce-version=latest >/dev/null
wait_until 60 "the default ServiceAccount" kubectl get serviceaccount default -n "$NS"
VALUES=$WORK/values-node.yaml
cat >"$VALUES" <<EOF
# Only what this node needs: images that exist here, and CPU requests that fit
# 3 edges plus a rolling surge on a 2-CPU node (the defaults reserve 1.9 CPUs
# for the default release alone).
origin: {resources: {requests: {cpu: 50m}}}
edge: {resources: {requests: {cpu: 50m}}}
nats:
  image: {repository: ${NATS_IMAGE%:*}, tag: "${NATS_IMAGE##*:}"}
  resources: {requests: {cpu: 50m}}
redis:
  image: {repository: ${REDIS_IMAGE%:*}, tag: "${REDIS_IMAGE##*:}"}
  resources: {requests: {cpu: 50m}}
EOF
t0=$(date +%s%N)
helm install "$RELEASE" "$CHART" -n "$NS" -f "$VALUES" --wait --timeout 5m >"$WORK/install.log" 2>&1 || {
	cat "$WORK/install.log"
	kubectl get pods,svc,endpointslices -n "$NS" -o wide
	kubectl describe pods -n "$NS" | tail -80
	fail "helm install"
}
install_ms=$(ms_since "$t0")
# With autoscaling on (the default) the edge Deployment has no replicas field:
# it starts with 1 pod, which is all `helm install --wait` waits for, and the
# HPA raises it to minReplicas (2) on its next sync.
ready_edges() { kubectl get pods -n "$NS" -l app.kubernetes.io/component=edge \
	-o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True; }
edges_at_install=$(ready_edges || true)
wait_until 90 "2 ready edges (the HPA's minReplicas)" bash -c "[[ \$($(declare -f ready_edges); NS=$NS ready_edges) -eq 2 ]]"
hpa_ms=$(ms_since "$t0")
kubectl get pods -n "$NS" -o wide >&2

# Every container of every pod is a running task in containerd.
running_tasks=$(ctr -a "$SOCK" -n k8s.io tasks ls | awk '$3=="RUNNING"{print $1}' | sort)
want=$(kubectl get pods -n "$NS" -o jsonpath='{range .items[*]}{range .status.containerStatuses[*]}{.containerID}{"\n"}{end}{end}' | sed 's|^containerd://||' | sort)
nwant=$(grep -c . <<<"$want")
nspec=$(kubectl get pods -n "$NS" -o jsonpath='{range .items[*]}{range .spec.containers[*]}{.name}{"\n"}{end}{end}' | grep -c .)
((nwant == nspec && nwant >= 8)) || fail "$nwant container IDs for $nspec containers in the release's pods"
missing_tasks=$(comm -23 <(echo "$want") <(echo "$running_tasks"))
[[ -z $missing_tasks ]] || fail "containers not running in containerd: $missing_tasks"
sandboxes=$(($(grep -c . <<<"$running_tasks") - nwant))
restarts=$(kubectl get pods -n "$NS" -o jsonpath='{range .items[*]}{range .status.containerStatuses[*]}{.restartCount}{"\n"}{end}{end}' | awk '{s+=$1} END {print s+0}')
log "containerd runs all $nwant containers of the release (+ $sandboxes pod sandboxes); $restarts container restarts during the install"
not_ready=$(kubectl get pods -n "$NS" -o jsonpath='{range .items[*]}{range .status.containerStatuses[?(@.ready!=true)]}{.name}{"\n"}{end}{end}')
[[ -z $not_ready ]] || fail "containers not ready: $not_ready"

# --- the user stories (Go) ------------------------------------------------------------------------
log "TestNode: publish, play (ClusterIP, NodePort, LoadBalancer), scale, origin pod deletion, helm upgrade"
out=$WORK/go-node.log
(cd "$ROOT" && KUBECONFIG=$KUBECONFIG FLVCDN_NODE_NAMESPACE=$NS FLVCDN_NODE_RELEASE=$RELEASE \
	FLVCDN_NODE_CHART=$CHART FLVCDN_NODE_VALUES=$VALUES FLVCDN_NODE_IP=$NODE_IP FLVCDN_NODE_LB_IP=$LB_IP \
	go test -tags k8s_node -count=1 -v -timeout 15m -run '^TestNode$' ./test/k8s/ >"$out" 2>&1) ||
	{ grep -v '^time=' "$out" | tail -80; kubectl get pods -n "$NS" -o wide; fail "TestNode"; }
grep 'FIGURE' "$out" | sed 's/^ */    /' >&2
check_alive
figures=$(grep -o 'FIGURE .*' "$out" | sed 's/^FIGURE //' | paste -sd '|' - | sed 's/|/; /g')

# --- HPA for real: metrics-server, viewer load, a new edge ------------------------------------------
# Started only now: with metrics the HPA owns the edge count, and the steps
# above (kubectl scale to 3) would be undone by its scale-down.
if [[ ${FLVCDN_NODE_HPA:-1} == 1 ]]; then
	MS_PORT=$(free_port "$NODE_IP")
	start metrics-server metrics-server --secure-port "$MS_PORT" --bind-address "$NODE_IP" --cert-dir "$WORK/metrics-server" \
		--kubeconfig "$KUBECONFIG" --authentication-kubeconfig "$KUBECONFIG" --authorization-kubeconfig "$KUBECONFIG" \
		--kubelet-insecure-tls --kubelet-preferred-address-types InternalIP --metric-resolution 10s --kubelet-request-timeout 5s --kubelet-use-node-status-port
	kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata: {name: metrics-server, namespace: kube-system}
spec:
  ports: [{port: 443, targetPort: $MS_PORT, protocol: TCP}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: metrics-server, namespace: kube-system}
subsets:
  - addresses: [{ip: $NODE_IP}]
    ports: [{port: $MS_PORT, protocol: TCP}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.metrics.k8s.io}
spec:
  service: {name: metrics-server, namespace: kube-system, port: 443}
  group: metrics.k8s.io
  version: v1beta1
  insecureSkipTLSVerify: true
  groupPriorityMinimum: 100
  versionPriority: 100
EOF
	t0=$(date +%s%N)
	wait_until 120 "pod metrics of the edges (metrics-server)" bash -c "kubectl top pods -n $NS -l app.kubernetes.io/component=edge --no-headers | grep -q edge"
	metrics_ms=$(ms_since "$t0")
	out=$WORK/go-node-hpa.log
	(cd "$ROOT" && KUBECONFIG=$KUBECONFIG FLVCDN_NODE_NAMESPACE=$NS FLVCDN_NODE_RELEASE=$RELEASE \
		FLVCDN_NODE_CHART=$CHART FLVCDN_NODE_VALUES=$VALUES FLVCDN_NODE_IP=$NODE_IP FLVCDN_NODE_LB_IP=$LB_IP \
		go test -tags k8s_node -count=1 -v -timeout 10m -run '^TestNodeHPA$' ./test/k8s/ >"$out" 2>&1) ||
		{ grep -v '^time=' "$out" | tail -60; kubectl get hpa,pods -n "$NS" -o wide; fail "TestNodeHPA"; }
	grep 'FIGURE' "$out" | sed 's/^ */    /' >&2
	check_alive
	hpa_figure="metrics API up ${metrics_ms} ms after metrics-server started; $(grep -o 'FIGURE .*' "$out" | sed 's/^FIGURE //' | paste -sd '|' - | sed 's/|/; /g')"
else
	hpa_figure="HPA step skipped (FLVCDN_NODE_HPA=0)"
fi
containers_now=$(ctr -a "$SOCK" -n k8s.io tasks ls | awk '$3=="RUNNING"' | grep -c . || true)

printf '\n' >&2
log "durations: tools ${tools_s}s, images ${images_s}s, control plane ${controlplane_ms} ms, node Ready ${node_ms} ms, helm install --wait ${install_ms} ms, total $((SECONDS - T0))s"
echo "real node: kubelet $kubelet_version, containerd $containerd_version ($runtime_version), $nwant containers running ($edges_at_install edge ready when helm install --wait returned after ${install_ms} ms, 2 after ${hpa_ms} ms; $restarts restarts while NATS/Redis came up; $containers_now tasks incl. sandboxes at the end); $figures; $hpa_figure"
