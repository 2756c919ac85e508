package machine

import (
	"slices"
	"testing"
)

func TestWithoutMarked(t *testing.T) {
	marks := []string{"KUBE-", "CNI-"}
	tests := map[string]struct {
		before, now map[string][]string
		want        string
	}{
		"nothing marked: nothing to restore": {
			now:  map[string][]string{"filter": {":INPUT ACCEPT", "-A INPUT -p tcp --dport 22 -j ACCEPT"}},
			want: "",
		},
		"the cluster's chains and jumps go, another program's rule added meanwhile stays": {
			now: map[string][]string{"nat": {
				":PREROUTING ACCEPT", ":POSTROUTING ACCEPT", ":KUBE-SERVICES -", ":DOCKER -",
				"-A PREROUTING -j KUBE-SERVICES", "-A PREROUTING -j DOCKER",
				`-A POSTROUTING -s 10.244.0.2/32 -m comment --comment "name: keymint" -j CNI-abc`,
			}},
			want: "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n-A PREROUTING -j DOCKER\nCOMMIT\n",
		},
		"a marked rule that was there before the cluster stays": {
			before: map[string][]string{"filter": {":KUBE-FIREWALL -", "-A INPUT -j KUBE-FIREWALL"}},
			now:    map[string][]string{"filter": {":INPUT ACCEPT", ":KUBE-FIREWALL -", "-A INPUT -j KUBE-FIREWALL", ":KUBE-FORWARD -"}},
			want:   "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-FIREWALL - [0:0]\n-A INPUT -j KUBE-FIREWALL\nCOMMIT\n",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := withoutMarked(tc.before, tc.now, marks); got != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

func TestDiff(t *testing.T) {
	before := &State{
		IPTables: map[string]map[string][]string{"iptables": {"filter": {":INPUT ACCEPT"}}},
		Links:    []string{"eth0", "lo"},
		Mounts:   []string{"/"},
		Sysctls:  map[string]string{"net/ipv4/ip_forward": "0"},
	}
	after := &State{
		IPTables: map[string]map[string][]string{"iptables": {"filter": {":INPUT ACCEPT", ":KUBE-FIREWALL -"}, "nat": {":PREROUTING ACCEPT"}}},
		Links:    []string{"eth0", "keymint0", "lo"},
		Mounts:   []string{"/"},
		Sysctls:  map[string]string{"net/ipv4/ip_forward": "1"},
	}
	want := []string{
		"iptables -t filter: added :KUBE-FIREWALL -",
		"iptables -t nat: added :PREROUTING ACCEPT",
		"link: added keymint0",
		"sysctl net/ipv4/ip_forward: 1, was 0",
	}
	if got := before.Diff(after); !slices.Equal(got, want) {
		t.Errorf("Diff = %q, want %q", got, want)
	}
	if got := before.Diff(before); len(got) != 0 {
		t.Errorf("a state differs from itself: %q", got)
	}
}

func TestHasElementPrefix(t *testing.T) {
	for path, want := range map[string]bool{
		"/sys/fs/cgroup/cpu/kubepods":                true,
		"/sys/fs/cgroup/kubepods/burstable":          true, // cgroup v2: a level down
		"/sys/fs/cgroup/system.slice/docker.service": false,
	} {
		if got := hasElementPrefix(path, []string{"kubepods"}); got != want {
			t.Errorf("hasElementPrefix(%q) = %v, want %v", path, got, want)
		}
	}
}
