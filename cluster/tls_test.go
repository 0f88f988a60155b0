package cluster_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeSelfSigned writes a self-signed certificate for 127.0.0.1, good for a server and a
// client and as its own CA, and its key; it returns their paths and the TLS certificate.
func writeSelfSigned(t *testing.T) (certPath, keyPath string, cert tls.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "relayd-test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	if err := os.WriteFile(certPath, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err = tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath, cert
}

// A NATS server that requires TLS with client certificates: relayd and relay-echo reach it
// with --nats-tls-cert, --nats-tls-key and --nats-tls-ca, and not without.
func TestTLS(t *testing.T) {
	certPath, keyPath, cert := writeSelfSigned(t)
	pool := x509.NewCertPool()
	pool.AddCert(cert.Leaf)
	opts := serverOptions(t, "tls", false)
	opts.TLS, opts.TLSVerify = true, true
	opts.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}
	s := runServer(t, opts)
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	url := strings.Replace(s.ClientURL(), "nats://", "tls://", 1)
	tlsFlags := []string{"--nats-tls-cert", certPath, "--nats-tls-key", keyPath, "--nats-tls-ca", certPath}

	startNode(t, "secure", url, append(tlsFlags, "--worker-arg=--delay=0s")...)
	out, errOut, code := runEcho(t, "", append([]string{"--nats", url, "hello"}, tlsFlags...)...)
	if code != 0 || out != "HELLO\n" {
		t.Errorf("echo over TLS: %q, exit %d (stderr %q), want HELLO", out, code, errOut)
	}
	_, errOut, code = runEcho(t, "", "--nats", url, "--nats-tls-ca", certPath, "hello")
	if code != 3 {
		t.Errorf("echo without a client certificate: exit %d (stderr %q), want 3", code, errOut)
	}
}
