package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"os"
	"path/filepath"

	"github.com/keymint/keymint/internal/selfsigned"
)

// pki is the cluster's certificate authority and where its files live. One CA
// signs every certificate: a throwaway cluster needs no separate front-proxy
// or etcd CA.
type pki struct {
	dir string
	ca  *selfsigned.CA
}

// newPKI creates a CA, and the service account signing key, in dir.
func newPKI(dir string) (*pki, error) {
	ca, err := selfsigned.NewCA(dir, "keymint-cluster-ca")
	if err != nil {
		return nil, err
	}
	p := &pki{dir: dir, ca: ca}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(p.path("sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o600); err != nil {
		return nil, err
	}
	der, err := x509.MarshalECPrivateKey(saKey)
	if err != nil {
		return nil, err
	}
	return p, os.WriteFile(p.path("sa.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
}

func (p *pki) path(name string) string { return filepath.Join(p.dir, name) }

// issue writes name.crt and name.key: a client certificate for user in
// groups, and a server certificate too for the hosts (names and addresses)
// if any.
func (p *pki) issue(name, user string, groups []string, hosts ...string) error {
	uses := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if len(hosts) > 0 {
		uses = append(uses, x509.ExtKeyUsageServerAuth)
	}
	return p.ca.Issue(p.dir, name, pkix.Name{CommonName: user, Organization: groups}, uses, hosts...)
}
