// Package selfsigned writes a throwaway CA and a serving certificate it
// signs, for local runs and tests where cert-manager does not provide one.
package selfsigned

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Files names what Write puts in its directory.
type Files struct {
	CAFile, CertFile, KeyFile string
}

// Write creates dir/ca.crt, dir/tls.crt and dir/tls.key: a CA valid for a
// year and a serving certificate for hosts (DNS names or IP addresses),
// signed by it. The key file is readable by its owner only.
func Write(dir string, hosts ...string) (Files, error) {
	ca, err := NewCA(dir, "keymint local CA")
	if err != nil {
		return Files{}, err
	}
	files := Files{CAFile: ca.File, CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key")}
	return files, ca.Issue(dir, "tls", pkix.Name{CommonName: "keymint"}, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, hosts...)
}

// CA is a certificate authority valid for a year whose key stays in memory
// and whose certificate is in File.
type CA struct {
	Cert *x509.Certificate
	File string
	key  *ecdsa.PrivateKey
}

// NewCA creates a CA named commonName and writes its certificate to
// dir/ca.crt.
func NewCA(dir, commonName string) (*CA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	ca := &CA{Cert: cert, File: filepath.Join(dir, "ca.crt"), key: key}
	return ca, writePEM(ca.File, "CERTIFICATE", der, 0o644)
}

// Issue writes dir/name.crt and dir/name.key (readable by its owner only):
// a certificate for subject with the given uses, naming hosts (DNS names or
// IP addresses), signed by ca.
func (ca *CA) Issue(dir, name string, subject pkix.Name, uses []x509.ExtKeyUsage, hosts ...string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      subject,
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  uses,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(dir, name+".key"), "EC PRIVATE KEY", keyDER, 0o600); err != nil {
		return err
	}
	return writePEM(filepath.Join(dir, name+".crt"), "CERTIFICATE", der, 0o644)
}

func writePEM(path, blockType string, der []byte, mode os.FileMode) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: blockType, Bytes: der}), mode)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return n
}
