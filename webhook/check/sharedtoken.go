package check

// sharedtoken.go: the token GitLab authenticates with, read from a file (a
// mounted Secret) and read again when the file changes, so a rotated
// Secret takes effect without a restart.

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// sharedTokenRecheck is how often, at most, the file is looked at again.
const sharedTokenRecheck = time.Second

// sharedToken holds the SHA-256 of the token in a file. Presented tokens
// are compared on their digests, in constant time, so neither the token
// nor its length shows in how long a comparison takes.
type sharedToken struct {
	path  string
	clock clock.PassiveClock

	mu      sync.Mutex
	digest  [sha256.Size]byte
	set     bool // false while the file holds no token: nothing matches
	checked time.Time
	modTime time.Time
	size    int64
}

// loadSharedToken reads the token in path; the file must exist and hold
// one.
func loadSharedToken(path string, clk clock.PassiveClock) (*sharedToken, error) {
	s := &sharedToken{path: path, clock: clk}
	info, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if err := s.read(info); err != nil {
		return nil, err
	}
	if !s.set {
		return nil, fmt.Errorf("%s holds no token", path)
	}
	s.checked = clk.Now()
	return s, nil
}

// read takes the token from the file, whose stat is info. Surrounding
// white space is not part of it (a Secret written with a trailing newline).
func (s *sharedToken) read(info os.FileInfo) error {
	raw, err := os.ReadFile(s.path)
	if err != nil {
		return err
	}
	tok := bytes.TrimSpace(raw)
	s.set = len(tok) > 0
	s.digest = sha256.Sum256(tok)
	s.modTime, s.size = info.ModTime(), info.Size()
	return nil
}

// refresh reads the file again if it changed, looking at most once per
// sharedTokenRecheck. A file that cannot be read keeps the token last read:
// a Secret volume being updated is briefly in between.
func (s *sharedToken) refresh() {
	now := s.clock.Now()
	if now.Sub(s.checked) < sharedTokenRecheck {
		return
	}
	s.checked = now
	info, err := os.Stat(s.path)
	if err != nil || (info.ModTime().Equal(s.modTime) && info.Size() == s.size) {
		return
	}
	_ = s.read(info)
}

// matches reports whether an Authorization header value carries the
// token: as the whole value (GitLab sends the token bare) or after
// "Bearer ".
func (s *sharedToken) matches(authorization string) bool {
	authorization = strings.TrimSpace(authorization)
	whole := sha256.Sum256([]byte(authorization))
	bearer := whole
	if tok, ok := bearerOf(authorization); ok {
		bearer = sha256.Sum256([]byte(tok))
	}
	s.mu.Lock()
	s.refresh()
	want, set := s.digest, s.set
	s.mu.Unlock()
	// set: the digest is of a token that is not empty, so "" never matches.
	match := subtle.ConstantTimeCompare(whole[:], want[:]) | subtle.ConstantTimeCompare(bearer[:], want[:])
	return set && match == 1
}
