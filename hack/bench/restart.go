package main

// restart.go: where a restarting replica's time goes. CPU profiles of the
// replica and of kube-apiserver, taken while the replica starts, and the
// opt-in restart section, which keeps its tokens between runs (-etcd-data)
// so a profile of a restart at 100,000 tokens does not cost an hour of
// issuing each time.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
)

// startProfile is a CPU profile of a replica from the moment its pprof
// server answers, and one of kube-apiserver over the same window (or why
// there is none: the bench measures on without it).
type startProfile struct {
	replica, apiserver []byte
	apiserverErr       error
	err                error
	done               chan struct{}
}

// profileStart begins profiling before the replica on pprofPort is started:
// kube-apiserver at once, the replica as soon as its pprof server accepts a
// connection (the first request that connects is the profile itself). Both
// run for window.
func (cl *cluster) profileStart(ctx context.Context, pprofPort int, window time.Duration) *startProfile {
	p := &startProfile{done: make(chan struct{})}
	secs := strconv.Itoa(int(window.Round(time.Second).Seconds()))
	apiDone := make(chan struct{})
	go func() {
		defer close(apiDone)
		hc, err := rest.HTTPClientFor(cl.cfg)
		if err != nil {
			p.err = err
			return
		}
		hc.Timeout = window + time.Minute
		p.apiserver, err = get(ctx, hc, strings.TrimSuffix(cl.cfg.Host, "/")+"/debug/pprof/profile?seconds="+secs)
		if err != nil {
			p.apiserverErr = err
		}
	}()
	go func() {
		defer close(p.done)
		defer func() { <-apiDone }()
		hc := &http.Client{Timeout: window + time.Minute}
		url := "http://127.0.0.1:" + strconv.Itoa(pprofPort) + "/debug/pprof/profile?seconds=" + secs
		for ctx.Err() == nil {
			body, err := get(ctx, hc, url)
			if errors.Is(err, syscall.ECONNREFUSED) {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if err != nil {
				p.err = fmt.Errorf("the replica's profile: %w", err)
			}
			p.replica = body
			return
		}
	}()
	return p
}

func get(ctx context.Context, hc *http.Client, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return body, err
}

// wait returns once both profiles are in.
func (p *startProfile) wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// restartProfileWindow is how long the CPU of a restarting replica is
// profiled: the follower's restart at 100,000 tokens took about 33 s.
const restartProfileWindow = 30 * time.Second

// cpuTop saves a CPU profile under bin/bench and returns its top entries by
// cumulative time, which shows the phases (decode, index, GC) rather than
// the leaf functions.
func cpuTop(ctx context.Context, e *env, profile []byte, name string) (string, error) {
	return pprofTable(ctx, e, profile, name, "-top", "-cum", "-nodecount=25")
}

// pprofTable saves profile under bin/bench as name and returns go tool
// pprof's table of it, from its header on.
func pprofTable(ctx context.Context, e *env, profile []byte, name string, args ...string) (string, error) {
	dir := filepath.Join(e.root, "bin", "bench")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, profile, 0o644); err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, "go", append(append([]string{"tool", "pprof"}, args...), path)...).Output()
	if err != nil {
		return "", fmt.Errorf("go tool pprof %s: %w", path, err)
	}
	text := string(out)
	if i := strings.Index(text, "      flat"); i >= 0 {
		text = text[i:]
	}
	return text, nil
}

// writeProfiles adds, for each restarted replica, where its CPU and
// kube-apiserver's went during its start.
func (rs *restartRun) writeProfiles(ctx context.Context, e *env, b *strings.Builder) error {
	for i, who := range []string{"leader", "follower"} {
		p := rs.profiles[i]
		if p == nil {
			continue
		}
		for _, side := range []struct {
			name, file string
			data       []byte
		}{
			{who, "cpu-restart-" + who + ".pprof", p.replica},
			{"kube-apiserver meanwhile", "cpu-restart-" + who + "-kube-apiserver.pprof", p.apiserver},
		} {
			if len(side.data) == 0 {
				if side.name != who && p.apiserverErr != nil {
					fmt.Fprintf(b, "(No profile of kube-apiserver during the %s's restart: %v.)\n\n", who, p.apiserverErr)
				}
				continue
			}
			top, err := cpuTop(ctx, e, side.data, side.file)
			if err != nil {
				return err
			}
			fmt.Fprintf(b, "<details><summary>CPU of the %s's restart at %s tokens: %s, the first %s after its pprof server answered (`go tool pprof -top -cum bin/bench/%s`)</summary>\n\n```\n%s```\n\n</details>\n\n",
				who, thousands(rs.tokens), side.name, seconds(restartProfileWindow), side.file, top)
		}
	}
	return nil
}

// runRestart is the opt-in restart section: at the largest -memory-tokens
// count (issued through keymint the first time, kept in -etcd-data for the
// next run), it restarts a follower and the leader and profiles both, and
// kube-apiserver, while they start.
func runRestart(ctx context.Context, e *env) (string, error) {
	cl, err := startCluster(ctx, e)
	if err != nil {
		return "", err
	}
	defer cl.stop()
	target := slices.Max(e.memoryTokens)
	if e.quick {
		target = 2_000
	}
	leader, err := cl.startReplica(ctx, "a", "--leader-elect")
	if err != nil {
		return "", err
	}
	defer func() { _ = leader.Stop() }()
	ns := fmt.Sprintf("bench-memory-%d", target)
	have, err := cl.countTokens(ctx)
	if err != nil {
		return "", err
	}
	if more := target - have; more > 0 {
		if err := cl.namespaceWithUser(ctx, ns); err != nil {
			return "", err
		}
		// Name on from what is there, so a run interrupted while issuing
		// goes on where it stopped.
		var inNS int
		if inNS, err = cl.countTokensIn(ctx, ns); err != nil {
			return "", err
		}
		e.log("restart: issuing %d more tokens (to %d)", more, target)
		start := time.Now()
		if _, err := cl.issueManyFrom(ctx, ns, inNS, more); err != nil {
			return "", err
		}
		e.log("restart: %d tokens issued in %s", more, time.Since(start).Round(time.Second))
		if have, err = cl.countTokens(ctx); err != nil {
			return "", err
		}
	}
	follower, err := cl.startReplica(ctx, "b", "--leader-elect")
	if err != nil {
		return "", err
	}
	defer func() { _ = follower.Stop() }()
	// No baseline row: both replicas first started with the tokens there.
	rs := restartRun{tokens: have, profile: true}
	if err := cl.restartBoth(ctx, e, &rs, leader, follower, ns); err != nil {
		return "", err
	}
	var b strings.Builder
	rs.write(&b)
	if err := rs.writeProfiles(ctx, e, &b); err != nil {
		return "", err
	}
	return b.String(), nil
}

// streamFloor is the least any client of kube-apiserver needs to see every
// ApiToken once: a watch that sends the existing ones first (WatchList, as
// keymint's index asks), read and thrown away undecoded, until the bookmark
// that ends the initial events. It returns the time from the request to
// that bookmark, and the bytes read.
func (cl *cluster) streamFloor(ctx context.Context) (time.Duration, int64, error) {
	hc, err := rest.HTTPClientFor(cl.cfg)
	if err != nil {
		return 0, 0, err
	}
	url := strings.TrimSuffix(cl.cfg.Host, "/") + "/apis/keymint.io/v1alpha1/apitokens?watch=1&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan"
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	resp, err := hc.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("watch: %s", resp.Status)
	}
	// kube-apiserver ends each JSON watch event with a newline.
	end := []byte(`"` + metav1.InitialEventsAnnotationKey + `":"true"`)
	r := bufio.NewReaderSize(resp.Body, 1<<20)
	var n int64
	for {
		line, err := r.ReadSlice('\n')
		n += int64(len(line))
		if errors.Is(err, bufio.ErrBufferFull) {
			continue // a long event: read on to its end
		}
		if err != nil {
			return 0, n, fmt.Errorf("watch ended before its initial events did: %w", err)
		}
		if bytes.Contains(line, end) {
			return time.Since(start), n, nil
		}
	}
}

// settle waits, up to 5 minutes, until the replicas use less than a tenth
// of a core each over 2 s.
func settle(ctx context.Context, e *env, replicas ...*replica) error {
	deadline := time.Now().Add(5 * time.Minute)
	for {
		var before []time.Duration
		for _, r := range replicas {
			cpu, err := procCPU(r.Pid())
			if err != nil {
				return err
			}
			before = append(before, cpu)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
		quiet := true
		for i, r := range replicas {
			cpu, err := procCPU(r.Pid())
			if err != nil {
				return err
			}
			quiet = quiet && cpu-before[i] < 200*time.Millisecond
		}
		if quiet {
			return nil
		}
		if time.Now().After(deadline) {
			e.log("restart: the replicas are still busy after 5 minutes; measuring anyway")
			return nil
		}
	}
}

// procCPU is the CPU time a process has used (user and system), from /proc.
func procCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command (in parentheses, which may hold spaces):
	// utime and stime are the 12th and 13th, in clock ticks (100 a second).
	_, rest, ok := strings.Cut(string(data), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, data)
	}
	user, err1 := strconv.ParseInt(f[11], 10, 64)
	sys, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(user+sys) * 10 * time.Millisecond, nil
}
