// Package machine records what a one-node cluster changes on the host it runs
// on (iptables rules, network links and namespaces, mounts, sysctls, cgroups,
// well-known directories) and puts it back, so that stopping `make cluster`
// leaves the machine as it was found.
package machine

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Sysctls are the kernel settings the kubelet, kube-proxy and the CNI bridge
// change; each is put back to its recorded value.
var Sysctls = []string{
	"net/ipv4/ip_forward",
	"net/ipv6/conf/all/forwarding",
	"net/ipv4/conf/all/route_localnet",
	"net/bridge/bridge-nf-call-iptables",
	"net/bridge/bridge-nf-call-ip6tables",
	"vm/overcommit_memory",
	"vm/panic_on_oom",
	"kernel/panic",
	"kernel/panic_on_oops",
	"kernel/keys/root_maxkeys",
	"kernel/keys/root_maxbytes",
}

// Paths are directories that Kubernetes components, containerd or CNI
// create outside the cluster's own directories (some are fixed in their code).
var Paths = []string{
	"/var/lib/cni", "/var/log/containers", "/var/log/pods", "/var/lib/kubelet",
	"/run/containerd", "/var/lib/containerd", "/opt/containerd", "/run/netns",
	"/etc/kubernetes", "/var/run/kubernetes", "/run/runc", "/run/calico",
}

// State is what the cluster may change, as read at one moment.
type State struct {
	// IPTables maps iptables and ip6tables to their rules (iptables-save
	// without counters), by table.
	IPTables map[string]map[string][]string `json:"iptables"`
	// NFTables lists nftables tables ("family name").
	NFTables []string `json:"nftables"`
	Links    []string `json:"links"`
	NetNS    []string `json:"netns"`
	// Mounts lists mount points.
	Mounts  []string          `json:"mounts"`
	Sysctls map[string]string `json:"sysctls"`
	// Cgroups lists the first-level cgroups of each hierarchy.
	Cgroups []string `json:"cgroups"`
	// Paths lists which of Paths exist.
	Paths []string `json:"paths"`
}

// Read reads the machine's state.
func Read() (*State, error) {
	s := &State{IPTables: map[string]map[string][]string{}, Sysctls: map[string]string{}}
	for _, cmd := range []string{"iptables", "ip6tables"} {
		tables, err := iptablesSave(cmd)
		if err != nil {
			return nil, err
		}
		s.IPTables[cmd] = tables
	}
	if out, err := exec.Command("nft", "list", "tables").Output(); err == nil {
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if t := strings.TrimPrefix(line, "table "); t != line {
				s.NFTables = append(s.NFTables, t)
			}
		}
	}
	links, err := os.ReadDir("/sys/class/net")
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		s.Links = append(s.Links, l.Name())
	}
	if entries, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range entries {
			s.NetNS = append(s.NetNS, e.Name())
		}
	}
	if s.Mounts, err = mountPoints(); err != nil {
		return nil, err
	}
	for _, name := range Sysctls {
		if b, err := os.ReadFile(filepath.Join("/proc/sys", name)); err == nil {
			s.Sysctls[name] = strings.TrimSpace(string(b))
		}
	}
	s.Cgroups = cgroups()
	for _, p := range Paths {
		if _, err := os.Lstat(p); err == nil {
			s.Paths = append(s.Paths, p)
		}
	}
	for _, l := range [][]string{s.NFTables, s.Links, s.NetNS, s.Mounts, s.Cgroups, s.Paths} {
		sort.Strings(l)
	}
	return s, nil
}

// Save writes s to path as JSON.
func (s *State) Save(path string) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// Load reads a State that Save wrote.
func Load(path string) (*State, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s := &State{}
	return s, json.Unmarshal(b, s)
}

// Diff lists, one line each, what differs in after from s.
func (s *State) Diff(after *State) []string {
	var d []string
	for _, cmd := range []string{"iptables", "ip6tables"} {
		tables := map[string]bool{}
		for t := range s.IPTables[cmd] {
			tables[t] = true
		}
		for t := range after.IPTables[cmd] {
			tables[t] = true
		}
		for t := range tables {
			for _, r := range added(s.IPTables[cmd][t], after.IPTables[cmd][t]) {
				d = append(d, fmt.Sprintf("%s -t %s: added %s", cmd, t, r))
			}
			for _, r := range added(after.IPTables[cmd][t], s.IPTables[cmd][t]) {
				d = append(d, fmt.Sprintf("%s -t %s: removed %s", cmd, t, r))
			}
		}
	}
	list := func(what string, before, now []string) {
		for _, x := range added(before, now) {
			d = append(d, what+": added "+x)
		}
		for _, x := range added(now, before) {
			d = append(d, what+": removed "+x)
		}
	}
	list("nftables table", s.NFTables, after.NFTables)
	list("link", s.Links, after.Links)
	list("network namespace", s.NetNS, after.NetNS)
	list("mount", s.Mounts, after.Mounts)
	list("cgroup", s.Cgroups, after.Cgroups)
	list("path", s.Paths, after.Paths)
	for name, v := range s.Sysctls {
		if after.Sysctls[name] != v {
			d = append(d, fmt.Sprintf("sysctl %s: %s, was %s", name, after.Sysctls[name], v))
		}
	}
	sort.Strings(d)
	return d
}

// added returns the elements of b that a lacks.
func added(a, b []string) []string {
	var out []string
	for _, x := range b {
		if !slices.Contains(a, x) {
			out = append(out, x)
		}
	}
	return out
}

// Scope names what belongs to the cluster, so that Restore undoes the
// cluster's changes and never another program's made meanwhile (a VPN's
// link, a container engine's rules).
type Scope struct {
	// MountPrefixes: mounts under these paths; MountPoints: these mounts.
	MountPrefixes, MountPoints []string
	// Bridge is the cluster's bridge: it and the veths attached to it go.
	Bridge string
	// NetNSPrefixes: network namespaces named so. CgroupPrefixes: cgroups
	// with a path element starting so (kubepods).
	NetNSPrefixes, CgroupPrefixes []string
	// PrunePaths: those of Paths that did not exist before are emptied of
	// what Own says is the cluster's, then removed if nothing else is left.
	PrunePaths []string
	Own        func(path string) bool
	// RuleMarks: iptables chains and rules whose text contains one of these
	// ("KUBE-", a CNI network's comment).
	RuleMarks []string
	// Sysctls: the values the cluster sets; a setting is put back only while
	// it still holds the cluster's value (another program may have set it
	// since, and rely on it).
	Sysctls map[string]string
}

func hasPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// hasElementPrefix reports whether an element of path starts with one of
// prefixes.
func hasElementPrefix(path string, prefixes []string) bool {
	for _, e := range strings.Split(path, "/") {
		if hasPrefix(e, prefixes) {
			return true
		}
	}
	return false
}

func marked(s string, marks []string) bool {
	for _, m := range marks {
		if strings.Contains(s, m) {
			return true
		}
	}
	return false
}

// Restore undoes what changed since s was read and falls in scope: it
// unmounts and removes mounts, network namespaces, links and cgroups that
// were not there, removes the marked iptables chains and rules (and a
// table iptables-nft created, once empty), puts sysctls back and removes
// the directories of Paths that did not exist. It returns what it could not
// undo.
func (s *State) Restore(scope Scope) error {
	var errs []error
	now, err := Read()
	if err != nil {
		return err
	}
	// Mounts first, deepest first: network namespaces and pod volumes are
	// mounts, and a busy mount keeps a directory.
	var mounts []string
	for _, m := range added(s.Mounts, now.Mounts) {
		if hasPrefix(m, scope.MountPrefixes) {
			mounts = append(mounts, m)
		}
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	for _, m := range mounts {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
		}
	}
	for _, ns := range added(s.NetNS, now.NetNS) {
		if !hasPrefix(ns, scope.NetNSPrefixes) {
			continue
		}
		p := filepath.Join("/run/netns", ns)
		_ = syscall.Unmount(p, syscall.MNT_DETACH)
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	// A namespace directory that became a mount of its own goes only once no
	// namespace of anyone's is left in it.
	for _, m := range added(s.Mounts, now.Mounts) {
		if entries, err := os.ReadDir(m); slices.Contains(scope.MountPoints, m) && err == nil && len(entries) == 0 {
			if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
				errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
			}
		}
	}
	// The veths attached to the bridge first (read while it exists), then it.
	var links []string
	for _, l := range added(s.Links, now.Links) {
		master, _ := os.Readlink(filepath.Join("/sys/class/net", l, "master"))
		if scope.Bridge != "" && l != scope.Bridge && filepath.Base(master) == scope.Bridge {
			links = append(links, l)
		}
	}
	if scope.Bridge != "" && slices.Contains(added(s.Links, now.Links), scope.Bridge) {
		links = append(links, scope.Bridge)
	}
	for _, l := range links {
		if out, err := exec.Command("ip", "link", "delete", l).CombinedOutput(); err != nil {
			// A veth goes with its peer: it may be gone already.
			if _, statErr := os.Stat(filepath.Join("/sys/class/net", l)); statErr == nil {
				errs = append(errs, fmt.Errorf("ip link delete %s: %v: %s", l, err, out))
			}
		}
	}
	for _, cmd := range []string{"iptables", "ip6tables"} {
		if err := removeMarkedRules(cmd, s.IPTables[cmd], now.IPTables[cmd], scope.RuleMarks); err != nil {
			errs = append(errs, err)
		}
	}
	if err := s.removeNewTables(now); err != nil {
		errs = append(errs, err)
	}
	for name, v := range s.Sysctls {
		// Only the settings this package reads (the file is data, not a
		// list of paths to write as root), and only while the cluster's.
		clusters, ok := scope.Sysctls[name]
		if !slices.Contains(Sysctls, name) || !ok {
			continue
		}
		if now.Sysctls[name] != v && now.Sysctls[name] == clusters {
			if err := os.WriteFile(filepath.Join("/proc/sys", name), []byte(v), 0o644); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, c := range added(s.Cgroups, now.Cgroups) {
		if !hasElementPrefix(c, scope.CgroupPrefixes) {
			continue
		}
		if err := removeCgroup(c); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range added(s.Paths, now.Paths) {
		if slices.Contains(scope.PrunePaths, p) && scope.Own != nil {
			if err := prune(p, scope.Own); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// prune removes what own says is the cluster's under dir, then every
// directory left empty, dir included, deepest first.
func prune(dir string, own func(string) bool) error {
	var files, dirs []string
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
		case d.IsDir():
			dirs = append(dirs, p)
		case own(p):
			files = append(files, p)
		}
		return nil
	})
	var errs []error
	for _, f := range files {
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if entries, err := os.ReadDir(dirs[i]); err == nil && len(entries) == 0 {
			_ = os.Remove(dirs[i])
		}
	}
	return errors.Join(errs...)
}

// iptablesTables are the tables iptables-nft makes as nftables tables of
// the same name, in families ip and ip6.
var iptablesTables = []string{"filter", "nat", "mangle", "raw", "security"}

// removeNewTables deletes the nftables tables that iptables-nft made for the
// cluster's rules and that were not there before, once they hold only
// built-in chains that accept: another program's table is never touched.
func (s *State) removeNewTables(now *State) error {
	var errs []error
	for _, t := range added(s.NFTables, now.NFTables) {
		family, name, _ := strings.Cut(t, " ")
		cmd := map[string]string{"ip": "iptables", "ip6": "ip6tables"}[family]
		if cmd == "" || !slices.Contains(iptablesTables, name) {
			continue
		}
		tables, err := iptablesSave(cmd)
		if err != nil {
			return err
		}
		if !onlyBuiltinChains(tables[name]) {
			continue
		}
		if out, err := exec.Command("nft", "delete", "table", family, name).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("nft delete table %s: %v: %s", t, err, out))
		}
	}
	return errors.Join(errs...)
}

// onlyBuiltinChains reports whether a table holds built-in chains that
// accept, and nothing else (a table iptables-save does not list holds
// something it cannot show).
func onlyBuiltinChains(lines []string) bool {
	if lines == nil {
		return false
	}
	for _, l := range lines {
		if f := strings.Fields(l); !strings.HasPrefix(l, ":") || len(f) != 2 || f[1] != "ACCEPT" {
			return false
		}
	}
	return true
}

// iptablesSave returns each table's chains and rules, without counters.
func iptablesSave(cmd string) (map[string][]string, error) {
	out, err := exec.Command(cmd + "-save").Output()
	if err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return nil, nil
		}
		return nil, fmt.Errorf("%s-save: %w", cmd, err)
	}
	tables := map[string][]string{}
	table := ""
	scan := bufio.NewScanner(bytes.NewReader(out))
	for scan.Scan() {
		line := scan.Text()
		switch {
		case strings.HasPrefix(line, "#"), line == "COMMIT", line == "":
		case strings.HasPrefix(line, "*"):
			table = line[1:]
			tables[table] = []string{}
		case strings.HasPrefix(line, ":"):
			// ":CHAIN POLICY [packets:bytes]"
			f := strings.Fields(line)
			tables[table] = append(tables[table], strings.Join(f[:min(2, len(f))], " "))
		default:
			tables[table] = append(tables[table], line)
		}
	}
	return tables, nil
}

// removeMarkedRules deletes, rule by rule and chain by chain, the marked
// rules and chains that were not there before (iptables-restore --noflush):
// every other rule stays as it is, whoever added it and whenever.
func removeMarkedRules(cmd string, before, now map[string][]string, marks []string) error {
	in := undoMarked(before, now, marks)
	if in == "" {
		return nil
	}
	c := exec.Command(cmd+"-restore", "--noflush", "--wait")
	c.Stdin = strings.NewReader(in)
	if out, err := c.CombinedOutput(); err != nil {
		return fmt.Errorf("%s-restore: %v: %s", cmd, err, out)
	}
	return nil
}

// undoMarked is the iptables-restore --noflush input that deletes the
// marked rules and chains of now that before lacks: rules in other chains
// one by one (-D), then the new marked chains (-F, -X); "" if none.
func undoMarked(before, now map[string][]string, marks []string) string {
	var in strings.Builder
	tables := make([]string, 0, len(now))
	for t := range now {
		tables = append(tables, t)
	}
	sort.Strings(tables)
	for _, table := range tables {
		newChains := map[string]bool{}
		var chains, deletes []string
		for _, l := range now[table] {
			if f := strings.Fields(l); strings.HasPrefix(l, ":") && len(f) == 2 && f[1] == "-" && marked(l, marks) && !slices.Contains(before[table], l) {
				newChains[f[0][1:]] = true
				chains = append(chains, f[0][1:])
			}
		}
		for _, l := range now[table] {
			f := strings.Fields(l)
			if len(f) < 2 || f[0] != "-A" || !marked(l, marks) || slices.Contains(before[table], l) || newChains[f[1]] {
				continue
			}
			deletes = append(deletes, "-D"+strings.TrimPrefix(l, "-A"))
		}
		if len(chains)+len(deletes) == 0 {
			continue
		}
		in.WriteString("*" + table + "\n")
		for _, d := range deletes {
			in.WriteString(d + "\n")
		}
		for _, c := range chains {
			in.WriteString("-F " + c + "\n")
		}
		for _, c := range chains {
			in.WriteString("-X " + c + "\n")
		}
		in.WriteString("COMMIT\n")
	}
	return in.String()
}

// mountPoints lists the mount points of this process's mount namespace.
func mountPoints() ([]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		// "id parent major:minor root mountpoint options ..."
		if f := strings.Fields(line); len(f) > 4 {
			out = append(out, unescape(f[4]))
		}
	}
	return out, nil
}

// unescape decodes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &c); err == nil {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// cgroupRoot holds one directory per cgroup v1 hierarchy, and unified.
const cgroupRoot = "/sys/fs/cgroup"

// cgroups lists the first-level cgroups of every hierarchy.
func cgroups() []string {
	var out []string
	hierarchies, _ := os.ReadDir(cgroupRoot)
	for _, h := range hierarchies {
		if !h.IsDir() {
			continue
		}
		entries, _ := os.ReadDir(filepath.Join(cgroupRoot, h.Name()))
		for _, e := range entries {
			if e.IsDir() {
				out = append(out, filepath.Join(cgroupRoot, h.Name(), e.Name()))
			}
		}
	}
	return out
}

// removeCgroup removes a cgroup and those below it, deepest first; a cgroup
// is a directory that rmdir removes once it holds no process, so a process
// still in one (a container nothing stopped) is killed first.
func removeCgroup(path string) error {
	var dirs []string
	_ = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	killed := false
	for _, d := range dirs {
		procs, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		for _, f := range strings.Fields(string(procs)) {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				killed = true
			}
		}
	}
	if killed {
		time.Sleep(time.Second)
	}
	var errs []error
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := syscall.Rmdir(dirs[i]); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("rmdir %s: %w", dirs[i], err))
		}
	}
	return errors.Join(errs...)
}
