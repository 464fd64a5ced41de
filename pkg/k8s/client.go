package k8s

import (
	"fmt"
	"log/slog"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
)

// userAgent names flvcdn in the API server's audit log.
const userAgent = "flvcdn-origin-janitor"

// InClusterClient returns a clientset authenticated as the pod's
// ServiceAccount (the chart gives the origins one with just the janitor's
// rights).
func InClusterClient() (kubernetes.Interface, error) {
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("k8s: in-cluster config: %w", err)
	}
	return newClient(cfg)
}

// NewClient returns a clientset from a kubeconfig file, or the in-cluster
// configuration when kubeconfig is empty. A kubeconfig is for origins run
// outside the cluster (tests, host processes standing in for pods).
func NewClient(kubeconfig string) (kubernetes.Interface, error) {
	if kubeconfig == "" {
		return InClusterClient()
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("k8s: kubeconfig %s: %w", kubeconfig, err)
	}
	return newClient(cfg)
}

func newClient(cfg *rest.Config) (kubernetes.Interface, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = userAgent
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("k8s: clientset: %w", err)
	}
	return cs, nil
}

// LogKlogTo sends the log lines of client-go itself (leader election,
// reflectors: klog) to log, so that a binary logging JSON does not also
// print klog's text lines. It changes process-wide state: call it once from
// main, not from libraries or parallel tests.
func LogKlogTo(log *slog.Logger) {
	klog.SetSlogLogger(log.With("component", "client-go"))
}
