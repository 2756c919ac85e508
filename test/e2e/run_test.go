package e2e

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

// devRun is a make run of a spec group's own: keymint-run (the suite
// builds it) with its own control plane, in its own directory.
type devRun struct {
	dir  string
	env  map[string]string
	cmd  *exec.Cmd
	log  *bytes.Buffer
	done chan error
}

// startRun starts keymint-run in dir with args, as `make run RUN_ARGS=...`
// does, with no kubeconfig around, and returns once it has written
// keymint.env. It is stopped with SIGINT, as Ctrl-C does, when the calling
// node ends (BeforeAll: after the group's last spec), and nothing of it
// may be left running.
func startRun(dir string, args ...string) *devRun {
	GinkgoHelper()
	r := &devRun{dir: dir, log: &bytes.Buffer{}, done: make(chan error, 1)}
	r.cmd = exec.Command(filepath.Join(binDir, "keymint-run"), append([]string{"-dir", dir, "-keymint", filepath.Join(binDir, "keymint"), "-check-port", "0"}, args...)...)
	r.cmd.Dir = root
	r.cmd.Env = append(withoutKubeconfig(os.Environ()), "HOME="+binDir)
	r.cmd.Stdout = io.MultiWriter(r.log, GinkgoWriter)
	r.cmd.Stderr = r.cmd.Stdout
	Expect(r.cmd.Start()).To(Succeed())
	go func() { r.done <- r.cmd.Wait() }()
	DeferCleanup(func() {
		Expect(r.cmd.Process.Signal(syscall.SIGINT)).To(Succeed())
		Eventually(r.done, time.Minute).Should(Receive(BeNil()))
		Expect(processesUsing(dir)).To(BeEmpty(), "processes left behind after Ctrl-C")
	})
	Eventually(func() error {
		select {
		case err := <-r.done:
			r.done <- err
			StopTrying(fmt.Sprintf("make run exited before it was ready: %v\n%s", err, r.log)).Now()
		default:
		}
		_, err := os.Stat(r.envFile())
		return err
	}, 3*time.Minute).Should(Succeed())
	r.env = readEnv(r.envFile())
	return r
}

func (r *devRun) envFile() string { return filepath.Join(r.dir, "keymint.env") }

// list is a keymint.env value holding one entry per replica.
func (r *devRun) list(key string) []string { return strings.Fields(strings.Trim(r.env[key], `"`)) }

// kubectl runs kubectl against the run's control plane, as its admin.
func (r *devRun) kubectl(args ...string) string {
	GinkgoHelper()
	c := exec.Command("kubectl", args...)
	c.Dir = root
	c.Env = append(withoutKubeconfig(os.Environ()), "KUBECONFIG="+r.env["KUBECONFIG"], "HOME="+r.dir)
	out, err := c.CombinedOutput()
	Expect(err).NotTo(HaveOccurred(), "kubectl %s: %s", redact(args), out)
	return string(out)
}

// httpsClient trusts the run's CA, as its check servers' clients do.
func (r *devRun) httpsClient() *http.Client {
	GinkgoHelper()
	ca, err := os.ReadFile(r.env["KEYMINT_CA_FILE"])
	Expect(err).NotTo(HaveOccurred())
	pool := x509.NewCertPool()
	Expect(pool.AppendCertsFromPEM(ca)).To(BeTrue())
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
}
