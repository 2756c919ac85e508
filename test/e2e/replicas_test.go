package e2e

// Two keymint replicas sharing rate-limit budgets in Redis, started as
// `make run REPLICAS=2 RATE_LIMIT_BACKEND=redis` starts them, on a control
// plane of their own.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
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
		run     *devRun
		urls    []string
		clients []*http.Client
	)
	rkubectl := func(args ...string) string {
		GinkgoHelper()
		return run.kubectl(args...)
	}
	// limitedToken applies a ServiceUser and an ApiToken limited to rate a
	// minute (and more spec fields, if given), and returns the token once
	// both replicas accept it (asked through TokenReview, which spends no
	// rate budget; a quota's use, once per replica).
	limitedToken := func(name string, rate int, spec ...string) string {
		GinkgoHelper()
		manifest := fmt.Sprintf(`apiVersion: keymint.io/v1alpha1
kind: ServiceUser
metadata: {name: %[1]s, namespace: default}
spec: {permissions: ["links:read"]}
---
apiVersion: keymint.io/v1alpha1
kind: ApiToken
metadata: {name: %[1]s, namespace: default}
spec: {serviceUser: %[1]s, requestsPerMinute: %[2]d%[3]s}
`, name, rate, strings.Join(append([]string{""}, spec...), ", "))
		path := filepath.Join(run.dir, name+".yaml")
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
		By("starting keymint as make run REPLICAS=2 RATE_LIMIT_BACKEND=redis does")
		run = startRun(filepath.Join(binDir, "dev-replicas"), "-replicas", "2", "-rate-limit-backend", "redis")
		urls = run.list("KEYMINT_CHECK_URLS")
		Expect(urls).To(HaveLen(2))
		Expect(urls[0]).To(Equal(run.env["KEYMINT_CHECK_URL"]), "KEYMINT_CHECK_URL stays the first replica's")
		Expect(run.env).To(HaveKey("KEYMINT_REDIS_URL"))
		for range urls {
			clients = append(clients, run.httpsClient())
		}
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

	It("holds a quota of 100 uses exactly across both replicas: the 101st is refused with 429 quota_exceeded, and the status counts it", func() {
		tok := limitedToken("quota", 100000, "quota: {uses: 100, refill: {every: 24h}}")
		// Each replica's TokenReview above took one use: 98 are left.
		passed, refused := 0, 0
		for i := range 110 {
			r := i % len(urls)
			req, err := http.NewRequest(http.MethodGet, urls[r]+"/check?scope=links:read", nil)
			Expect(err).NotTo(HaveOccurred())
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := clients[r].Do(req)
			Expect(err).NotTo(HaveOccurred())
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			switch resp.StatusCode {
			case http.StatusOK:
				passed++
				Expect(refused).To(BeZero(), "a check passed after one was refused for the quota")
			case http.StatusTooManyRequests:
				refused++
				Expect(string(body)).To(ContainSubstring(`"error":"quota_exceeded"`))
				Expect(resp.Header.Get("X-Quota-Remaining")).To(Equal("0"))
				Expect(resp.Header.Get("Retry-After")).NotTo(BeEmpty())
			default:
				Fail(fmt.Sprintf("check %d: %d %s", i+1, resp.StatusCode, body))
			}
		}
		GinkgoWriter.Printf("a quota of 100 across 2 replicas: 2 TokenReviews, %d checks passed, %d refused\n", passed, refused)
		Expect(passed).To(Equal(98), "100 uses less the two TokenReviews")
		Expect(refused).To(Equal(12))
		// The status follows within a flush (10 s); later counts at most
		// once a minute.
		Eventually(func(g Gomega) {
			out := rkubectl("get", "apitoken", "quota", "-o", "jsonpath={.status.quota.remaining}/{.status.quota.uses}")
			var remaining, uses int
			_, err := fmt.Sscanf(out, "%d/%d", &remaining, &uses)
			g.Expect(err).NotTo(HaveOccurred(), "status.quota: %q", out)
			g.Expect(uses).To(Equal(100))
			g.Expect(remaining).To(BeNumerically("<", 100))
		}, 30*time.Second, time.Second).Should(Succeed())
	})

	It("keeps the count when a replica is restarted midway", func() {
		tok := limitedToken("restarted", 60)
		start := time.Now()
		first := send(tok, 30)
		Expect(first[200]).To(Equal(30))

		By("killing replica 2; make run starts it again")
		pids := run.list("KEYMINT_PIDS")
		Expect(pids).To(HaveLen(2))
		pid, err := strconv.Atoi(pids[1])
		Expect(err).NotTo(HaveOccurred())
		Expect(syscall.Kill(pid, syscall.SIGKILL)).To(Succeed())
		Eventually(func() string { return strings.Trim(readEnv(run.envFile())["KEYMINT_PIDS"], `"`) }, 2*time.Minute).ShouldNot(ContainSubstring(pids[1]))
		run.env = readEnv(run.envFile())
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
		metricsURLs := run.list("KEYMINT_METRICS_URLS")
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
		opts, err := redis.ParseURL(run.env["KEYMINT_REDIS_URL"])
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
		Expect(run.log.String()).To(ContainSubstring("redis-server exited"))
		Expect(run.log.String()).To(ContainSubstring("Rate-limit store unreachable"))
		Expect(run.log.String()).To(ContainSubstring("Rate-limit store answers again"))
		GinkgoWriter.Printf("checks under load while redis-server went down and came back: %v (%d answered 200 by the time both replicas saw it down)\n", counts, during)
		Expect(counts).To(HaveKey("200"))
		Expect(counts).To(HaveLen(1), "fail open: every check answered 200, none failed or was refused")
	})
})
