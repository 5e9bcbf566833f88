package sessiontoken

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Algorithms a key signs with.
const (
	ES256 = "ES256"
	HS256 = "HS256"
)

// Key file names: <kid> and one of these extensions. The kid is the file's name without it.
const (
	// PublicExt is a PEM "PUBLIC KEY" of a P-256 key: what an edge verifies ES256 tokens with.
	PublicExt = ".pem"
	// PrivateExt is a PEM P-256 private key ("EC PRIVATE KEY" or PKCS #8 "PRIVATE KEY"): what an
	// orchestrator signs ES256 tokens with. It never belongs on an edge.
	PrivateExt = ".key"
	// SecretExt holds an HS256 secret as text: both sides need it.
	SecretExt = ".hs256"
)

// Limits of an HS256 secret. The secret is the file's text (trailing white space removed), used
// as it is, not decoded: HAProxy's jwt_verify takes the secret as a literal string, so the
// characters are restricted to those that are inert in its configuration.
const (
	MinSecretLen = 32
	MaxSecretLen = 512
	maxKeyIDLen  = 64
)

// Key is one signing or verification key.
type Key struct {
	// ID is the kid header of the tokens it signs.
	ID  string
	Alg string
	// Public verifies ES256; Private, when set, signs.
	Public  *ecdsa.PublicKey
	Private *ecdsa.PrivateKey
	// Secret signs and verifies HS256.
	Secret []byte
}

// CanSign says whether the key holds what signing needs.
func (k Key) CanSign() bool { return k.Private != nil || len(k.Secret) > 0 }

// ValidateKeyID reports why kid cannot name a key: 1 to 64 letters, digits, '-' or '_' (it is a
// file name and a word of the HAProxy configuration).
func ValidateKeyID(kid string) error {
	if kid == "" || len(kid) > maxKeyIDLen {
		return fmt.Errorf("key id %q: want 1 to %d characters", kid, maxKeyIDLen)
	}
	for i := 0; i < len(kid); i++ {
		if c := kid[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("key id %q: character %q is not a letter, digit, '-' or '_'", kid, c)
		}
	}
	return nil
}

func validateSecret(s string) error {
	if len(s) < MinSecretLen || len(s) > MaxSecretLen {
		return fmt.Errorf("HS256 secret is %d characters: want %d to %d", len(s), MinSecretLen, MaxSecretLen)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("+/=-_.~", c) >= 0) {
			return fmt.Errorf("HS256 secret has a character at offset %d outside A-Z a-z 0-9 + / = - _ . ~", i)
		}
	}
	return nil
}

// ParseKey reads a key from the contents of the file name (only its base name and extension
// matter). Errors never quote the contents.
func ParseKey(name string, data []byte) (Key, error) {
	base := filepath.Base(name)
	ext := filepath.Ext(base)
	k := Key{ID: strings.TrimSuffix(base, ext)}
	if err := ValidateKeyID(k.ID); err != nil {
		return Key{}, fmt.Errorf("key file %s: %w", name, err)
	}
	switch ext {
	case SecretExt:
		s := strings.TrimRight(string(data), " \t\r\n")
		if err := validateSecret(s); err != nil {
			return Key{}, fmt.Errorf("key file %s: %w", name, err)
		}
		k.Alg, k.Secret = HS256, []byte(s)
	case PublicExt, PrivateExt:
		blk, rest := pem.Decode(data)
		if blk == nil || len(strings.TrimSpace(string(rest))) > 0 {
			return Key{}, fmt.Errorf("key file %s: want exactly one PEM block", name)
		}
		k.Alg = ES256
		var err error
		if ext == PublicExt {
			k.Public, err = parsePublic(blk)
		} else if k.Private, err = parsePrivate(blk); err == nil {
			k.Public = &k.Private.PublicKey
		}
		if err != nil {
			return Key{}, fmt.Errorf("key file %s: %w", name, err)
		}
	default:
		return Key{}, fmt.Errorf("key file %s: want a name ending %s (ES256 public key), %s (ES256 private key) or %s (HS256 secret)", name, PublicExt, PrivateExt, SecretExt)
	}
	return k, nil
}

func parsePublic(blk *pem.Block) (*ecdsa.PublicKey, error) {
	if blk.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("PEM block %q: want PUBLIC KEY (a private key never goes to an edge)", blk.Type)
	}
	pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	ec, ok := pub.(*ecdsa.PublicKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, errors.New("public key: want a P-256 (ES256) key")
	}
	return ec, nil
}

func parsePrivate(blk *pem.Block) (*ecdsa.PrivateKey, error) {
	var key any
	var err error
	switch blk.Type {
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(blk.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q: want EC PRIVATE KEY or PRIVATE KEY", blk.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("private key: %w", err)
	}
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, errors.New("private key: want a P-256 (ES256) key")
	}
	return ec, nil
}

// LoadKey reads one key file.
func LoadKey(path string) (Key, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Key{}, fmt.Errorf("key file: %w", err)
	}
	return ParseKey(path, b)
}

// LoadVerificationKeys reads every key in dir, sorted by id: <kid>.pem and <kid>.hs256 files.
// Names starting with '.' are skipped (Kubernetes mounts keep their bookkeeping there); a
// private key or any other file is an error, so a misnamed key never goes unnoticed.
func LoadVerificationKeys(dir string) ([]Key, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("session token keys: %w", err)
	}
	var keys []Key
	var errs []error
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		if filepath.Ext(e.Name()) == PrivateExt {
			errs = append(errs, fmt.Errorf("key file %s: a private key does not belong where tokens are only verified; put its %s public key here", path, PublicExt))
			continue
		}
		k, err := LoadKey(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		keys = append(keys, k)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("session token keys: no %s or %s file in %s", PublicExt, SecretExt, dir)
	}
	slices.SortFunc(keys, func(a, b Key) int { return strings.Compare(a.ID, b.ID) })
	return keys, nil
}

// NewES256 generates a P-256 signing key.
func NewES256(kid string) (Key, error) {
	if err := ValidateKeyID(kid); err != nil {
		return Key{}, err
	}
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Key{}, fmt.Errorf("generate ES256 key: %w", err)
	}
	return Key{ID: kid, Alg: ES256, Private: priv, Public: &priv.PublicKey}, nil
}

// NewHS256 generates a 256-bit HS256 secret, written as 43 characters of unpadded base64url.
func NewHS256(kid string) (Key, error) {
	if err := ValidateKeyID(kid); err != nil {
		return Key{}, err
	}
	var b [32]byte
	_, _ = rand.Read(b[:])
	return Key{ID: kid, Alg: HS256, Secret: []byte(base64.RawURLEncoding.EncodeToString(b[:]))}, nil
}

// Files returns the files that hold k, by name: for ES256 the private key (when k has it) and
// the public key, for HS256 the secret.
func (k Key) Files() (map[string][]byte, error) {
	out := map[string][]byte{}
	switch k.Alg {
	case HS256:
		out[k.ID+SecretExt] = append(append([]byte{}, k.Secret...), '\n')
	case ES256:
		if k.Private != nil {
			der, err := x509.MarshalPKCS8PrivateKey(k.Private)
			if err != nil {
				return nil, fmt.Errorf("key %s: %w", k.ID, err)
			}
			out[k.ID+PrivateExt] = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
		}
		der, err := x509.MarshalPKIXPublicKey(k.Public)
		if err != nil {
			return nil, fmt.Errorf("key %s: %w", k.ID, err)
		}
		out[k.ID+PublicExt] = pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	default:
		return nil, fmt.Errorf("key %s: unknown algorithm %q", k.ID, k.Alg)
	}
	return out, nil
}
