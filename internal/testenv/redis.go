package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Redis is a redis-server the tests start on a loopback port of their own,
// with no persistence, and can stop and start again on the same port.
type Redis struct {
	// Addr is host:port.
	Addr string
	// Password, when set, is required of every client (requirepass).
	Password string
	dir      string
	cmd      *exec.Cmd
	// exited is closed when the process started last exits.
	exited chan struct{}
}

// RedisServerPath finds redis-server: on PATH, or where Debian installs it.
func RedisServerPath() (string, error) {
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("redis-server is not installed; `make test-deps` installs it (Debian/Ubuntu: apt-get install redis-server)")
}

// StartRedis starts a redis-server on a free loopback port, writing its
// files under dir.
func StartRedis(dir string) (*Redis, error) {
	return StartRedisWithPassword(dir, "")
}

// StartRedisWithPassword is StartRedis with a password every client must
// give (none when empty).
func StartRedisWithPassword(dir, password string) (*Redis, error) {
	var r *Redis
	err := OnFreePorts(1, func(ports []int) error {
		r = &Redis{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])), Password: password, dir: dir}
		return r.Start()
	})
	return r, err
}

// URL is the redis:// URL of the server, password included.
func (r *Redis) URL() string {
	if r.Password != "" {
		// User "default", as redis-cli -u needs it spelled out.
		return "redis://default:" + r.Password + "@" + r.Addr + "/0"
	}
	return "redis://" + r.Addr + "/0"
}

// Start starts the server (again) on its port and waits until it answers.
func (r *Redis) Start() error {
	path, err := RedisServerPath()
	if err != nil {
		return err
	}
	_, port, err := net.SplitHostPort(r.Addr)
	if err != nil {
		return err
	}
	args := []string{"--bind", "127.0.0.1", "--port", port, "--save", "", "--appendonly", "no",
		"--dir", r.dir, "--pidfile", filepath.Join(r.dir, "redis-"+port+".pid")}
	r.cmd = exec.Command(path, args...)
	if r.Password != "" {
		// On stdin, as a config file: not in the process's arguments.
		r.cmd.Args = append([]string{path, "-"}, args...)
		r.cmd.Stdin = strings.NewReader("requirepass " + r.Password + "\n")
	}
	// A log of this start's own: an earlier run's "Ready to accept
	// connections" must not pass for this one's.
	log := &LogBuffer{}
	r.cmd.Stdout, r.cmd.Stderr = log, log
	if err := r.cmd.Start(); err != nil {
		return fmt.Errorf("starting redis-server: %w", err)
	}
	exited, cmd := make(chan struct{}), r.cmd
	r.exited = exited
	go func() { _ = cmd.Wait(); close(exited) }()
	// Ready once it says so: something else answering on its port is not
	// it (OnFreePorts then tries another port).
	err = Poll(context.Background(), 10*time.Second, "redis-server to answer on "+r.Addr, func(ctx context.Context) error {
		select {
		case <-exited:
			return Permanent(AddrInUse(errors.New("redis-server exited: "+log.String()), log.String()))
		default:
		}
		if !strings.Contains(log.String(), "Ready to accept connections") {
			return errors.New("not ready yet")
		}
		d := net.Dialer{Timeout: 100 * time.Millisecond}
		c, err := d.DialContext(ctx, "tcp", r.Addr)
		if err != nil {
			return err
		}
		return c.Close()
	})
	if err != nil {
		_ = r.Stop()
		return err
	}
	return nil
}

// Stop stops the server (SIGKILL: as a crash, keeping nothing) and waits
// for it to exit.
func (r *Redis) Stop() error {
	if r.cmd == nil || r.cmd.Process == nil {
		return nil
	}
	err := r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.exited
	r.cmd = nil
	return err
}

// Exited is closed when the server started last exits, whoever stopped it.
func (r *Redis) Exited() <-chan struct{} { return r.exited }

// Port returns the server's port.
func (r *Redis) Port() int {
	_, port, _ := net.SplitHostPort(r.Addr)
	n, _ := strconv.Atoi(port)
	return n
}
