// Package recordkeytest gives unit tests a record keyring of their own.
package recordkeytest

import (
	"testing"

	"github.com/keymint/keymint/internal/recordkey"
)

// Keyring returns a new keyring with one key, named name.
func Keyring(t testing.TB, name string) *recordkey.Keyring {
	t.Helper()
	ring, err := recordkey.Generate(name)
	if err != nil {
		t.Fatal(err)
	}
	return ring
}
