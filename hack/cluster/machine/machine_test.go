package machine

import (
	"slices"
	"testing"
)

func TestUndoMarked(t *testing.T) {
	marks := []string{"KUBE-", "CNI-"}
	tests := map[string]struct {
		before, now map[string][]string
		want        string
	}{
		"nothing marked: nothing to undo": {
			now:  map[string][]string{"filter": {":INPUT ACCEPT", "-A INPUT -p tcp --dport 22 -j ACCEPT"}},
			want: "",
		},
		"the cluster's jumps deleted one by one and its chains flushed and removed; another program's rule and chain untouched": {
			now: map[string][]string{"nat": {
				":PREROUTING ACCEPT", ":POSTROUTING ACCEPT", ":KUBE-SERVICES -", ":DOCKER -",
				"-A PREROUTING -j KUBE-SERVICES", "-A PREROUTING -j DOCKER",
				"-A KUBE-SERVICES -d 10.96.0.1/32 -j KUBE-SVC-X",
				`-A POSTROUTING -s 10.244.0.2/32 -m comment --comment "name: keymint" -j CNI-abc`,
			}},
			want: "*nat\n-D PREROUTING -j KUBE-SERVICES\n" +
				`-D POSTROUTING -s 10.244.0.2/32 -m comment --comment "name: keymint" -j CNI-abc` + "\n" +
				"-F KUBE-SERVICES\n-X KUBE-SERVICES\nCOMMIT\n",
		},
		"a marked rule and chain that were there before the cluster stay": {
			before: map[string][]string{"filter": {":KUBE-FIREWALL -", "-A INPUT -j KUBE-FIREWALL"}},
			now:    map[string][]string{"filter": {":INPUT ACCEPT", ":KUBE-FIREWALL -", "-A INPUT -j KUBE-FIREWALL", ":KUBE-FORWARD -", "-A FORWARD -j KUBE-FORWARD"}},
			want:   "*filter\n-D FORWARD -j KUBE-FORWARD\n-F KUBE-FORWARD\n-X KUBE-FORWARD\nCOMMIT\n",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := undoMarked(tc.before, tc.now, marks); got != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

func TestOnlyBuiltinChains(t *testing.T) {
	for name, tc := range map[string]struct {
		lines []string
		want  bool
	}{
		"built-in chains that accept":         {[]string{":INPUT ACCEPT", ":OUTPUT ACCEPT"}, true},
		"a policy that drops is someone's":    {[]string{":INPUT DROP"}, false},
		"a rule":                              {[]string{":INPUT ACCEPT", "-A INPUT -j ACCEPT"}, false},
		"a table iptables-save does not show": {nil, false},
	} {
		if got := onlyBuiltinChains(tc.lines); got != tc.want {
			t.Errorf("%s: got %v, want %v", name, got, tc.want)
		}
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
