package main

import (
	"strings"
	"testing"
	"time"
)

func TestMemoryTarget(t *testing.T) {
	for _, c := range []struct {
		leader, follower float64
		want             string
	}{
		{2000, 900, "leader < 3 KB: met; follower < 1 KB: met"},
		{2000, 1100, "leader < 3 KB: met; follower < 1 KB: **missed**"},
		{3072, 100, "leader < 3 KB: **missed**; follower < 1 KB: met"},
	} {
		if got := memoryTarget(c.leader, c.follower); got != c.want {
			t.Errorf("memoryTarget(%v, %v) = %q, want %q", c.leader, c.follower, got, c.want)
		}
	}
}

func TestExtrapolate(t *testing.T) {
	s := time.Second
	for _, c := range []struct {
		tn    time.Duration
		n, at int
		want  time.Duration
	}{
		{6 * s, 100_000, 1_000_000, 60 * s},
		{1 * s, 2_000, 1_000_000, 500 * s},
		{3 * s, 0, 1_000_000, 3 * s}, // no tokens: nothing to go by
	} {
		if got := extrapolate(c.tn, c.n, c.at); got != c.want {
			t.Errorf("extrapolate(%v, %d, %d) = %v, want %v", c.tn, c.n, c.at, got, c.want)
		}
	}
}

func TestRestartWrite(t *testing.T) {
	judged := restartRun{tokens: 100_350, first: [2]time.Duration{1500 * time.Millisecond, time.Second},
		again: [2]time.Duration{12 * time.Second, 4 * time.Second}}
	var b strings.Builder
	judged.write(&b)
	for _, want := range []string{
		"**Restart at 100,350 tokens**: time from process start to ready (index synced), leader and follower",
		"| baseline: first start | 0 | 1.5 s | 1 s | |",
		"| restart | 100350 | 12 s | 4 s | < 10 s at 100,000: leader **missed**; follower met |",
		"Leader: about 119.6 s at 1,000,000 if it grows linearly with the tokens; follower: about 39.9 s",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("restart block lacks %q:\n%s", want, b.String())
		}
	}

	quick := restartRun{tokens: 2_121, first: [2]time.Duration{time.Second, time.Second},
		again: [2]time.Duration{time.Second, time.Second}}
	b.Reset()
	quick.write(&b)
	if want := "< 10 s at 100,000: for the record |"; !strings.Contains(b.String(), want) {
		t.Errorf("restart block below 100,000 tokens lacks %q:\n%s", want, b.String())
	}
}
