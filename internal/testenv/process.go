package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// BuildKeymint builds cmd/keymint into dir and returns the binary's path.
func BuildKeymint(ctx context.Context, dir string) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "keymint")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/keymint")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/keymint: %w\n%s", err, out)
	}
	return bin, nil
}

// KeymintPorts are the loopback ports a keymint process listens on. In
// KeymintOptions, 0 picks a free port; Metrics and Pprof are off unless
// their servers are asked for.
type KeymintPorts struct{ Check, Probe, Webhook, Metrics, Pprof int }

// KeymintOptions say how to run a keymint binary.
type KeymintOptions struct {
	// Binary is the keymint binary (BuildKeymint).
	Binary string
	// Kubeconfig is the cluster it runs against (KUBECONFIG).
	Kubeconfig string
	// Args are flags besides the bind addresses, which StartKeymint sets.
	Args []string
	// Env is added to the environment it inherits.
	Env []string
	// Ports are where it listens: a port told to someone in advance (a
	// kube-apiserver's token webhook), or every port of a replica started
	// again; 0 picks one.
	Ports KeymintPorts
	// Metrics and Pprof turn on its metrics (plain HTTP: on loopback, only
	// this machine reaches them) and /debug/pprof servers.
	Metrics, Pprof bool
	// Log receives its stdout and stderr, if set: a file, a terminal.
	Log io.Writer
	// ReadyWithin bounds the wait for /readyz; 2 minutes if unset.
	ReadyWithin time.Duration
}

// Keymint is a running keymint process.
type Keymint struct {
	// Ports are the ports it listens on; Metrics and Pprof are 0 when off.
	Ports  KeymintPorts
	cmd    *exec.Cmd
	tail   *tailBuffer
	exited chan struct{}
	err    error // the process's exit, once exited is closed
}

// stopGrace is how long Stop waits after SIGTERM before it kills.
const stopGrace = 30 * time.Second

// StartKeymint starts keymint and returns once its /readyz answers 200: the
// controllers run and the check server's index has synced. It fails if the
// process exits first, or is not ready within o.ReadyWithin or before ctx
// ends (the process is then stopped).
//
// A child process cannot be handed a bound listener, so the ports it binds
// are numbers that were free a moment before it started: if one of them was
// taken meanwhile and keymint exits saying "address already in use", it is
// started again on new ports (OnFreePorts), so the race costs a retry. Ports
// given in o.Ports are kept in every try.
func StartKeymint(ctx context.Context, o KeymintOptions) (*Keymint, error) {
	var k *Keymint
	err := OnFreePorts(5, func(free []int) error {
		p := o.Ports
		for i, f := range []*int{&p.Check, &p.Probe, &p.Webhook, &p.Metrics, &p.Pprof} {
			if *f == 0 {
				*f = free[i]
			}
		}
		if !o.Metrics {
			p.Metrics = 0
		}
		if !o.Pprof {
			p.Pprof = 0
		}
		var err error
		k, err = startKeymint(ctx, o, p)
		return err
	})
	return k, err
}

func startKeymint(ctx context.Context, o KeymintOptions, p KeymintPorts) (*Keymint, error) {
	addr := func(port int) string {
		if port == 0 {
			return "0"
		}
		return "127.0.0.1:" + strconv.Itoa(port)
	}
	args := append([]string{
		"--check-bind-address", addr(p.Check),
		"--health-probe-bind-address", addr(p.Probe),
		"--webhook-bind-address", addr(p.Webhook),
		"--metrics-bind-address", addr(p.Metrics), "--metrics-secure=false",
		"--pprof-bind-address", addr(p.Pprof),
	}, o.Args...)
	k := &Keymint{Ports: p, tail: &tailBuffer{}, exited: make(chan struct{})}
	k.cmd = exec.Command(o.Binary, args...)
	k.cmd.Env = append(append(os.Environ(), "KUBECONFIG="+o.Kubeconfig), o.Env...)
	var out io.Writer = k.tail
	if o.Log != nil {
		out = io.MultiWriter(k.tail, o.Log)
	}
	k.cmd.Stdout, k.cmd.Stderr = out, out
	if err := k.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting keymint: %w", err)
	}
	go func() { k.err = k.cmd.Wait(); close(k.exited) }()

	within := o.ReadyWithin
	if within == 0 {
		within = 2 * time.Minute
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/readyz", p.Probe)
	hc := &http.Client{Timeout: time.Second}
	err := Poll(ctx, within, "keymint to be ready ("+url+")", func(ctx context.Context) error {
		select {
		case <-k.exited:
			return Permanent(AddrInUse(fmt.Errorf("keymint exited before it was ready (%v)", k.err), k.tail.String()))
		default:
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return Permanent(err)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/readyz: %s", resp.Status)
		}
		return nil
	})
	if err != nil {
		_ = k.Stop()
		return nil, fmt.Errorf("%w; its log ends:\n%s", err, k.tail.String())
	}
	return k, nil
}

// Stop stops keymint as a Deployment does, SIGTERM, and kills it if it has
// not exited 30 s later. It returns once the process is gone.
func (k *Keymint) Stop() error {
	if err := k.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-k.exited:
		return nil
	case <-time.After(stopGrace):
		return k.Kill()
	}
}

// Kill kills keymint with SIGKILL, as a crash or the loss of its node
// would, and returns once the process is gone.
func (k *Keymint) Kill() error {
	if err := k.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	<-k.exited
	return nil
}

// Exited is closed when the process has exited, whoever stopped it.
func (k *Keymint) Exited() <-chan struct{} { return k.exited }

// Err is how the process exited, once Exited is closed.
func (k *Keymint) Err() error {
	<-k.exited
	return k.err
}

// Pid is the process's id.
func (k *Keymint) Pid() int { return k.cmd.Process.Pid }

// LogTail is the end of what the process wrote, for error messages.
func (k *Keymint) LogTail() string { return k.tail.String() }

// tailBuffer keeps the last tailBytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

const tailBytes = 16 << 10

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - tailBytes; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(p), nil
}

// String is the last lines kept, whole lines only.
func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := string(b.buf)
	if len(b.buf) == tailBytes {
		if _, rest, ok := strings.Cut(s, "\n"); ok {
			s = rest
		}
	}
	return strings.TrimSpace(s)
}
