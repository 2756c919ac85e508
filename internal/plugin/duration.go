package plugin

import (
	"fmt"
	"time"
)

// shortDuration renders d in its two largest units, rounded down: "6d3h",
// "5h12m", "4m30s", "9s". Two units are enough to act on and stay narrow in
// a table.
func shortDuration(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	day := 24 * time.Hour
	switch {
	case d >= day:
		days, hours := d/day, (d%day)/time.Hour
		if hours == 0 {
			return fmt.Sprintf("%dd", days)
		}
		return fmt.Sprintf("%dd%dh", days, hours)
	case d >= time.Hour:
		hours, mins := d/time.Hour, (d%time.Hour)/time.Minute
		if mins == 0 {
			return fmt.Sprintf("%dh", hours)
		}
		return fmt.Sprintf("%dh%dm", hours, mins)
	case d >= time.Minute:
		mins, secs := d/time.Minute, (d%time.Minute)/time.Second
		if secs == 0 {
			return fmt.Sprintf("%dm", mins)
		}
		return fmt.Sprintf("%dm%ds", mins, secs)
	}
	return fmt.Sprintf("%ds", d/time.Second)
}

// until says when t comes, seen from now: "in 6d3h", or "<past> 2h ago"
// once it has passed.
func until(t, now time.Time, past string) string {
	if now.Before(t) {
		return "in " + shortDuration(t.Sub(now))
	}
	return past + " " + shortDuration(now.Sub(t)) + " ago"
}

// ago says how long ago t was: "3m ago", "just now" under a second (a clock
// a little ahead of the server's reads as now, not as the future).
func ago(t, now time.Time) string {
	if d := now.Sub(t); d >= time.Second {
		return shortDuration(d) + " ago"
	}
	return "just now"
}
