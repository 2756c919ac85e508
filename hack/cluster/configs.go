package main

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
)

// Addresses of the cluster's networks; none is routed beyond this machine.
const (
	serviceCIDR   = "10.96.0.0/16"
	kubernetesIP  = "10.96.0.1"  // the first address: Service kubernetes
	dnsIP         = "10.96.0.10" // Service kube-dns, as kubeadm numbers it
	podCIDR       = "10.244.0.0/24"
	bridgeName    = "keymint0"
	clusterDomain = "cluster.local"
	nodeName      = "keymint-node"
	apiserverPort = 6443
	etcdPort      = 22379 // not etcd's 2379: a developer's own etcd may hold that
	etcdPeerPort  = 22380
)

// containerdConfig keeps every file containerd writes under the cluster's
// directories, so that stopping leaves nothing behind. restrict_oom_score_adj
// is needed where root lacks CAP_SYS_RESOURCE: runc may not lower a
// sandbox's oom_score_adj there and fails every pod otherwise.
func (c *cluster) containerdConfig() string {
	return fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = %[7]q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %[8]q
`, c.path("containerd"), filepath.Join(c.run, "containerd"), c.containerdSocket(), c.containerdSocket()+".ttrpc",
		c.path("containerd-opt"), pauseImage, filepath.Join(c.run, "runc"), c.path("cni"))
}

func (c *cluster) containerdSocket() string { return filepath.Join(c.run, "containerd.sock") }

// cniConfig is one bridge for every pod, with hairpin mode so that a pod
// reaches itself through a Service, and masquerading for traffic that leaves
// the bridge.
func (c *cluster) cniConfig() string {
	return fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "keymint",
  "plugins": [
    {
      "type": "bridge",
      "bridge": %[1]q,
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": %[2]q}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": %[3]q
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, bridgeName, podCIDR, c.path("cni-ipam"))
}

// kubeletConfig: cgroupfs and cgroup v1 (this machine's hierarchy), no
// swap check, and an image garbage collector that never runs: every image is
// built here and none could be pulled again.
func (c *cluster) kubeletConfig() string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %[1]q}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://%[2]s
imageServiceEndpoint: unix://%[2]s
clusterDNS: [%[3]q]
clusterDomain: %[4]q
podLogsDir: %[5]q
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {"memory.available": "100Mi", "nodefs.available": "1%%", "imagefs.available": "1%%", "nodefs.inodesFree": "1%%"}
serializeImagePulls: false
rotateCertificates: false
serverTLSBootstrap: false
`, c.pki.path("ca.crt"), c.containerdSocket(), dnsIP, clusterDomain, c.path("pod-logs"))
}

// kubeProxyConfig: iptables mode, leaving conntrack sysctls and localhost
// node ports alone (nothing here needs them, and each is one more change to
// the host).
func (c *cluster) kubeProxyConfig() string {
	return fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: %[1]q}
mode: iptables
clusterCIDR: %[2]q
hostnameOverride: %[3]q
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
`, c.path("kube-proxy.kubeconfig"), podCIDR, nodeName)
}

// kubeconfig writes name.kubeconfig, for the client certificate
// pki/name.crt; "token" has no credentials, for kubectl --token
// (kube-apiserver prefers a client certificate to a token).
func (c *cluster) kubeconfig(name string) error {
	user, mode := "{}", os.FileMode(0o644)
	if name != "token" {
		user, mode = fmt.Sprintf("{client-certificate: %q, client-key: %q}", c.pki.path(name+".crt"), c.pki.path(name+".key")), 0o600
	}
	return os.WriteFile(c.path(name+".kubeconfig"), []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: keymint-cluster
  cluster:
    server: https://127.0.0.1:%[1]d
    certificate-authority: %[2]q
users:
- name: %[3]s
  user: %[4]s
contexts:
- name: keymint-cluster
  context: {cluster: keymint-cluster, user: %[3]s}
current-context: keymint-cluster
`, apiserverPort, c.pki.ca.File, name, user)), mode)
}

// tokenWebhookConfig is the kubeconfig kube-apiserver reads to ask keymint's
// TokenReview endpoint about bearer tokens: keymint's Service by its
// ClusterIP (kube-apiserver does not use cluster DNS), checked against the
// name on keymint's serving certificate.
func tokenWebhookConfig(clusterIP, serverName string, ca []byte) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: keymint
  cluster:
    server: https://%[1]s:443/apis/authentication.k8s.io/v1/tokenreviews
    tls-server-name: %[2]s
    certificate-authority-data: %[3]s
users:
- name: kube-apiserver
contexts:
- name: keymint
  context: {cluster: keymint, user: kube-apiserver}
current-context: keymint
`, clusterIP, serverName, base64.StdEncoding.EncodeToString(ca))
}
