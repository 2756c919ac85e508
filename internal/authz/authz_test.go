package authz

import "testing"

// A denial reads the same wherever keymint words it: the user, who they are
// to the object when that matters, what they may not do, and the rule.
func TestSentence(t *testing.T) {
	d := mintDenial("ns", "ci")
	tests := map[string]struct {
		role, want string
	}{
		"no role": {want: `user "alice" may not ` + d.What + `. A rule that grants it: ` + d.Rule},
		"a role":  {role: "who asked for this token", want: `user "alice", who asked for this token, may not ` + d.What + `. A rule that grants it: ` + d.Rule},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := d.Sentence("alice", tc.role); got != tc.want {
				t.Errorf("Sentence = %q, want %q", got, tc.want)
			}
		})
	}
}
