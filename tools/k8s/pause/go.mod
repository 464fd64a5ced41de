// Module pause builds the pod sandbox ("pause") program of the test node in
// test/k8s: no registry is reachable here, so registry.k8s.io/pause cannot be
// pulled. Standard library only.
module github.com/flvcdn/flvcdn/tools/k8s/pause

go 1.26.0
