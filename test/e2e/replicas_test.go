package e2e

// Two keymint replicas sharing rate-limit budgets in Redis, started as
// `make run REPLICAS=2 RATE_LIMIT_BACKEND=redis` starts them, on a control
// plane of their own.

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
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

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/redis/go-redis/v9"

	"github.com/keymint/keymint/internal/token"
)

var _ = Describe("Two replicas sharing rate limits in Redis", Ordered, func() {
	var (
		dir     string
		cmd     *exec.Cmd
		log     *bytes.Buffer
		done    chan error
		renv    map[string]string
		urls    []string
		clients []*http.Client
	)
	envFile := func() string { return filepath.Join(dir, "keymint.env") }
	unquoted := func(v string) string { return strings.Trim(v, `"`) }
	rkubectl := func(args ...string) string {
		GinkgoHelper()
		c := exec.Command("kubectl", args...)
		c.Dir = root
		c.Env = append(withoutKubeconfig(os.Environ()), "KUBECONFIG="+renv["KUBECONFIG"], "HOME="+dir)
		out, err := c.CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), "kubectl %s: %s", redact(args), out)
		return string(out)
	}
	// limitedToken applies a ServiceUser and an ApiToken limited to rate a
	// minute, and returns the token once both replicas accept it (asked
	// through TokenReview, which spends no budget).
	limitedToken := func(name string, rate int) string {
		GinkgoHelper()
		manifest := fmt.Sprintf(`apiVersion: keymint.io/v1alpha1
kind: ServiceUser
metadata: {name: %[1]s, namespace: default}
spec: {permissions: ["links:read"]}
---
apiVersion: keymint.io/v1alpha1
kind: ApiToken
metadata: {name: %[1]s, namespace: default}
spec: {serviceUser: %[1]s, requestsPerMinute: %[2]d}
`, name, rate)
		path := filepath.Join(dir, name+".yaml")
		Expect(os.WriteFile(path, []byte(manifest), 0o600)).To(Succeed())
		rkubectl("apply", "-f", path)
		rkubectl("wait", "--for=condition=Ready", "apitoken/"+name, "--timeout=60s")
		b64 := rkubectl("get", "secret", name, "-o", "jsonpath={.data.token}")
		raw, err := base64.StdEncoding.DecodeString(b64)
		Expect(err).NotTo(HaveOccurred())
		tok := string(raw)
		for i, u := range urls {
			Eventually(func(g Gomega) {
				body := fmt.Sprintf(`{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":%q}}`, tok)
				resp, err := clients[i].Post(u+"/apis/authentication.k8s.io/v1/tokenreviews", "application/json", strings.NewReader(body))
				g.Expect(err).NotTo(HaveOccurred())
				defer resp.Body.Close()
				var review struct {
					Status struct{ Authenticated bool } `json:"status"`
				}
				g.Expect(json.NewDecoder(resp.Body).Decode(&review)).To(Succeed())
				g.Expect(review.Status.Authenticated).To(BeTrue(), "replica %d does not accept %s… yet", i+1, token.Display(tok))
			}).Should(Succeed())
		}
		return tok
	}
	// send sends n /check requests, alternating between the replicas, and
	// counts the answers by status; every 429 must carry Retry-After.
	send := func(tok string, n int) map[int]int {
		GinkgoHelper()
		counts := map[int]int{}
		for i := range n {
			r := i % len(urls)
			req, err := http.NewRequest(http.MethodGet, urls[r]+"/check?scope=links:read", nil)
			Expect(err).NotTo(HaveOccurred())
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := clients[r].Do(req)
			Expect(err).NotTo(HaveOccurred())
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			counts[resp.StatusCode]++
			if resp.StatusCode == http.StatusTooManyRequests {
				retry, err := strconv.Atoi(resp.Header.Get("Retry-After"))
				Expect(err).NotTo(HaveOccurred(), "a 429 without Retry-After")
				Expect(retry).To(BeNumerically(">=", 1))
				Expect(resp.Header.Get("X-RateLimit-Remaining")).To(Equal("0"))
			}
		}
		return counts
	}
	// metric reads an unlabelled series from a replica's metrics; -1 when
	// it cannot.
	metric := func(url, name string) float64 {
		resp, err := http.Get(url)
		if err != nil {
			return -1
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, name+" "); ok {
				if f, err := strconv.ParseFloat(v, 64); err == nil {
					return f
				}
			}
		}
		return -1
	}

	BeforeAll(func() {
		dir = filepath.Join(binDir, "dev-replicas")
		log = &bytes.Buffer{}
		By("starting keymint as make run REPLICAS=2 RATE_LIMIT_BACKEND=redis does")
		cmd = exec.Command(filepath.Join(binDir, "keymint-run"), "-dir", dir, "-keymint", filepath.Join(binDir, "keymint"), "-check-port", "0",
			"-replicas", "2", "-rate-limit-backend", "redis")
		cmd.Dir = root
		cmd.Env = append(withoutKubeconfig(os.Environ()), "HOME="+binDir)
		cmd.Stdout = io.MultiWriter(log, GinkgoWriter)
		cmd.Stderr = cmd.Stdout
		Expect(cmd.Start()).To(Succeed())
		done = make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		Eventually(func() error {
			select {
			case err := <-done:
				done <- err
				StopTrying(fmt.Sprintf("make run exited before it was ready: %v\n%s", err, log)).Now()
			default:
			}
			_, err := os.Stat(envFile())
			return err
		}, 3*time.Minute).Should(Succeed())
		renv = readEnv(envFile())
		urls = strings.Fields(unquoted(renv["KEYMINT_CHECK_URLS"]))
		Expect(urls).To(HaveLen(2))
		Expect(urls[0]).To(Equal(renv["KEYMINT_CHECK_URL"]), "KEYMINT_CHECK_URL stays the first replica's")
		Expect(renv).To(HaveKey("KEYMINT_REDIS_URL"))
		ca, err := os.ReadFile(renv["KEYMINT_CA_FILE"])
		Expect(err).NotTo(HaveOccurred())
		pool := x509.NewCertPool()
		Expect(pool.AppendCertsFromPEM(ca)).To(BeTrue())
		for range urls {
			clients = append(clients, &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}})
		}
	})

	AfterAll(func() {
		if cmd == nil || cmd.Process == nil {
			return
		}
		Expect(cmd.Process.Signal(syscall.SIGINT)).To(Succeed())
		Eventually(done, time.Minute).Should(Receive(BeNil()))
		Expect(processesUsing(dir)).To(BeEmpty(), "processes left behind after Ctrl-C (keymint replicas, redis-server, kube-apiserver, etcd)")
	})

	It("lets a token limited to 60 a minute through 60 times across both replicas, then answers 429 with Retry-After", func() {
		tok := limitedToken("sixty", 60)
		start := time.Now()
		counts := send(tok, 120)
		elapsed := time.Since(start)
		// A budget of 60 gives 60 at once, then one a second: only what came
		// back while the requests went out is slack (none, under a second).
		refill := int(elapsed / time.Second)
		GinkgoWriter.Printf("120 checks alternating between 2 replicas in %v: %d accepted, %d refused with 429\n", elapsed, counts[200], counts[429])
		Expect(counts[200]).To(BeNumerically(">=", 60))
		Expect(counts[200]).To(BeNumerically("<=", 60+refill), "in %v", elapsed)
		Expect(counts[200] + counts[429]).To(Equal(120))
	})

	It("keeps the count when a replica is restarted midway", func() {
		tok := limitedToken("restarted", 60)
		start := time.Now()
		first := send(tok, 30)
		Expect(first[200]).To(Equal(30))

		By("killing replica 2; make run starts it again")
		pids := strings.Fields(unquoted(renv["KEYMINT_PIDS"]))
		Expect(pids).To(HaveLen(2))
		pid, err := strconv.Atoi(pids[1])
		Expect(err).NotTo(HaveOccurred())
		Expect(syscall.Kill(pid, syscall.SIGKILL)).To(Succeed())
		Eventually(func() string { return unquoted(readEnv(envFile())["KEYMINT_PIDS"]) }, 2*time.Minute).ShouldNot(ContainSubstring(pids[1]))
		renv = readEnv(envFile())
		clients[1].CloseIdleConnections() // they went with the killed process

		second := send(tok, 90)
		elapsed := time.Since(start)
		refill := int(elapsed / time.Second)
		accepted := first[200] + second[200]
		GinkgoWriter.Printf("%d of 120 checks accepted across 2 replicas over %v with replica 2 restarted (a budget of 60 plus %d refilled; in-process budgets would have let the restarted replica pass 60 more)\n",
			accepted, elapsed, refill)
		Expect(accepted).To(BeNumerically(">=", 60))
		Expect(accepted).To(BeNumerically("<=", 60+refill))
		Expect(second[429]).To(BeNumerically(">", 0))
	})

	It("fails open while redis-server is down, under load, and shares budgets again once it is back", func() {
		tok := limitedToken("load", 1_000_000)
		metricsURLs := strings.Fields(unquoted(renv["KEYMINT_METRICS_URLS"]))
		Expect(metricsURLs).To(HaveLen(2))

		ctx, stop := context.WithCancel(context.Background())
		var mu sync.Mutex
		counts := map[string]int{}
		var wg sync.WaitGroup
		for i := range urls {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					req, _ := http.NewRequest(http.MethodGet, urls[i]+"/check?scope=links:read", nil)
					req.Header.Set("Authorization", "Bearer "+tok)
					resp, err := clients[i].Do(req)
					what := "error"
					if err == nil {
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						what = strconv.Itoa(resp.StatusCode)
					}
					mu.Lock()
					counts[what]++
					mu.Unlock()
				}
			}()
		}
		defer func() { stop(); wg.Wait() }()

		By("shutting redis-server down")
		opts, err := redis.ParseURL(renv["KEYMINT_REDIS_URL"])
		Expect(err).NotTo(HaveOccurred())
		rdb := redis.NewClient(opts)
		defer rdb.Close()
		Expect(rdb.Ping(ctx).Err()).To(Succeed())
		_ = rdb.ShutdownNoSave(ctx).Err() // the connection drops as it goes
		for _, u := range metricsURLs {
			Eventually(func() float64 { return metric(u, "keymint_rate_limit_backend_up") }, 10*time.Second, 50*time.Millisecond).
				Should(BeEquivalentTo(0), "replica at %s", u)
		}
		mu.Lock()
		during := counts["200"]
		mu.Unlock()

		By("make run starts it again; every replica goes back to it")
		for _, u := range metricsURLs {
			Eventually(func() float64 { return metric(u, "keymint_rate_limit_backend_up") }, 30*time.Second, 100*time.Millisecond).
				Should(BeEquivalentTo(1), "replica at %s", u)
		}
		stop()
		wg.Wait()
		Expect(log.String()).To(ContainSubstring("redis-server exited"))
		Expect(log.String()).To(ContainSubstring("Rate-limit store unreachable"))
		Expect(log.String()).To(ContainSubstring("Rate-limit store answers again"))
		GinkgoWriter.Printf("checks under load while redis-server went down and came back: %v (%d answered 200 by the time both replicas saw it down)\n", counts, during)
		Expect(counts).To(HaveKey("200"))
		Expect(counts).To(HaveLen(1), "fail open: every check answered 200, none failed or was refused")
	})
})
