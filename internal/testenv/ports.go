package testenv

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
)

// Listen returns a listener bound to a free loopback port, closed when the
// test ends. Hand the listener itself to the server that serves on it
// (check.Options.Listener), never its port number: a number is free only
// until the listener closes, and another process may bind it before the
// server does.
func Listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return ln
}

// portTries is how many sets of ports OnFreePorts tries.
const portTries = 3

// OnFreePorts calls start with n distinct loopback ports that were free a
// moment ago, for a child process, which cannot be handed a listener and
// binds the numbers itself. Some other process may bind one of them first:
// start then fails with an error that errors.Is syscall.EADDRINUSE (see
// AddrInUse), and OnFreePorts calls it again with new ports, three times
// in all, so that the race costs a retry, not a failed run. Any other
// error is returned at once.
func OnFreePorts(n int, start func(ports []int) error) error {
	var err error
	for range portTries {
		var ports []int
		if ports, err = freePorts(n); err != nil {
			return err
		}
		if err = start(ports); !errors.Is(err, syscall.EADDRINUSE) {
			return err
		}
	}
	return fmt.Errorf("ports taken by someone else %d times in a row: %w", portTries, err)
}

// freePorts returns n distinct ports free on 127.0.0.1 now: all n are held
// open together, so none is handed out twice.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer ln.Close()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// AddrInUse wraps err so that errors.Is(err, syscall.EADDRINUSE) holds when
// a child's log says it could not bind an address: what Go's, nginx's and
// redis-server's messages all say.
func AddrInUse(err error, log string) error {
	if err == nil || !strings.Contains(strings.ToLower(log), "address already in use") {
		return err
	}
	return fmt.Errorf("%w (%w)", err, syscall.EADDRINUSE)
}
