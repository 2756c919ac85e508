package check_test

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/keymint/keymint/webhook/check"
)

// garbage returns one hostile request: a random bearer value, a token with
// a typo, an oversized header, a broken or hostile TokenReview body.
func garbage(r *rand.Rand, good string) *http.Request {
	randomBytes := func(n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.IntN(256))
		}
		return string(b)
	}
	switch r.IntN(8) {
	case 0:
		req, _ := http.NewRequest(http.MethodGet, checkURL+check.CheckPath, nil)
		req.Header["Authorization"] = []string{"Bearer " + base64.StdEncoding.EncodeToString([]byte(randomBytes(r.IntN(80))))}
		return req
	case 1:
		const alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
		typo := []byte(good)
		i := 3 + r.IntN(len(typo)-3)
		for c := typo[i]; typo[i] == c; {
			typo[i] = alphabet[r.IntN(len(alphabet))]
		}
		req, _ := http.NewRequest(http.MethodGet, checkURL+check.CheckPath+"?scope=deploy:write", nil)
		req.Header.Set("Authorization", "Bearer "+string(typo))
		return req
	case 2:
		req, _ := http.NewRequest(http.MethodPost, checkURL+check.CheckPath+"/"+strings.Repeat("a/", r.IntN(50)), nil)
		req.Header.Set("Authorization", "Bearer "+strings.Repeat("km_", 1+r.IntN(3000)))
		return req
	case 3:
		req, _ := http.NewRequest(http.MethodGet, checkURL+check.CheckPath+"?scope="+strings.Repeat("%", r.IntN(5))+"&audience=%zz&rate_limit_status=x", nil)
		req.Header.Set("Authorization", "Bearer "+good)
		return req
	case 4:
		req, _ := http.NewRequest(http.MethodPost, checkURL+check.TokenReviewV1, strings.NewReader(randomBytes(r.IntN(2000))))
		return req
	case 5:
		body := fmt.Sprintf(`{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":%q,"audiences":[%q]}}`,
			randomBytes(r.IntN(60)), randomBytes(r.IntN(20)))
		req, _ := http.NewRequest(http.MethodPost, checkURL+check.TokenReviewV1, strings.NewReader(body))
		return req
	case 6:
		req, _ := http.NewRequest(http.MethodPost, checkURL+check.TokenReviewV1beta, bytes.NewReader(bytes.Repeat([]byte("["), 100_000)))
		return req
	default:
		req, _ := http.NewRequest(http.MethodPut, checkURL+check.TokenReviewV1, strings.NewReader(`{"kind":"TokenReview","spec":{"token":{"nested":[1,2,3]}}}`))
		return req
	}
}

var _ = Describe("Hostile input at 1,000 requests a second for 10 s", func() {
	It("gets no 5xx and never disturbs the answer for a good token", func() {
		good := issue("garbage", "steady")
		var sent, server5xx, dropped, goodChecks, goodOK, goodFailures atomic.Int64
		var firstFailure atomic.Value
		stop := time.Now().Add(10 * time.Second)
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer GinkgoRecover()
				defer wg.Done()
				r := rand.New(rand.NewPCG(uint64(w), 42))
				tick := time.NewTicker(4 * time.Millisecond) // 4 workers × 250/s
				defer tick.Stop()
				for i := 0; time.Now().Before(stop); i++ {
					<-tick.C
					req := garbage(r, good)
					if i%10 == 0 {
						req, _ = http.NewRequest(http.MethodGet, checkURL+check.CheckPath+"?scope=deploy:write", nil)
						req.Header.Set("Authorization", "Bearer "+good)
						goodChecks.Add(1)
					}
					resp, err := httpClient.Do(req)
					sent.Add(1)
					if err != nil {
						// A handler that panics has its connection dropped by
						// net/http: that is a failure too.
						dropped.Add(1)
						firstFailure.CompareAndSwap(nil, err.Error())
						continue
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode >= 500 {
						server5xx.Add(1)
					}
					if i%10 == 0 && resp.StatusCode == http.StatusOK {
						goodOK.Add(1)
					}
					if i%10 == 0 && resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusTooManyRequests {
						goodFailures.Add(1)
						firstFailure.CompareAndSwap(nil, resp.Status)
					}
				}
			}()
		}
		wg.Wait()
		GinkgoWriter.Printf("sent %d requests (%d good-token checks)\n", sent.Load(), goodChecks.Load())
		// A busy machine falls behind the 1,000 a second (4,016 sent once
		// beside a benchmark); under 2,000 the test would have shown little.
		Expect(sent.Load()).To(BeNumerically(">", 2000), "the load ran")
		Expect(server5xx.Load()).To(BeZero())
		Expect(dropped.Load()).To(BeZero(), "connections dropped; first: %v", firstFailure.Load())
		Expect(goodOK.Load()).To(BeNumerically(">=", 400), "the good token passed until its rate of 500 a minute was used")
		Expect(goodFailures.Load()).To(BeZero(), "first failure: %v", firstFailure.Load())
		status, _ := get(good)
		Expect(status).To(BeElementOf(http.StatusOK, http.StatusTooManyRequests), "the server still answers")
	})
})
