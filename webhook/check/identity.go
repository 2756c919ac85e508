package check

// identity.go: who a ServiceUser is to Kubernetes, and what a good token
// speaks for. Plain data: every other file may build on it.

import "k8s.io/apimachinery/pkg/types"

// GroupAll is the Kubernetes group of every keymint identity; each also gets
// GroupAll + ":" + its namespace.
const GroupAll = "keymint:serviceusers"

// Username is the Kubernetes user name of a ServiceUser.
func Username(namespace, name string) string {
	return "keymint:" + namespace + ":" + name
}

// Identity is who a good token speaks for and what it may do.
type Identity struct {
	Token    types.NamespacedName
	Username string
	UserUID  types.UID
	Groups   []string
	// Scopes are the token's effective scopes: what its user still grants.
	Scopes []string
	// Metadata are the ApiToken's spec.metadata, for the application
	// behind the check; nil when none.
	Metadata map[string]string
}
