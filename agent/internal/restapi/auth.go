package restapi

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/labstack/echo/v4"
	"github.com/livegate/livegate/agent/internal/httpapi"
)

// openPaths answer without a token: kubelet calls the probes without headers, and /metrics and
// the OpenAPI document reveal no session state or credentials.
var openPaths = map[string]bool{
	"/v1/streaming/startup": true,
	"/v1/streaming/ready":   true,
	"/metrics":              true,
	"/v1/openapi.json":      true,
}

// ReadToken reads a bearer token file: surrounding whitespace is dropped; an empty or unreadable
// file is an error that names the file but never shows its content.
func ReadToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("api token file %s: %w", path, err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("api token file %s: empty", path)
	}
	if strings.ContainsAny(tok, " \t\r\n") {
		return "", fmt.Errorf("api token file %s: the token has whitespace inside", path)
	}
	return tok, nil
}

// CheckTokenFileMode reports a token file that any user may read, or nil: such a
// token is no secret on a shared host.
func CheckTokenFileMode(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("api token file %s: %w", path, err)
	}
	if perm := fi.Mode().Perm(); perm&0o004 != 0 {
		return fmt.Errorf("api token file %s has mode %04o: want no access for others (chmod o-rwx %s)", path, perm, path)
	}
	return nil
}

// WithToken requires "Authorization: Bearer <token>" on every route but the open ones.
func WithToken(token string) Option {
	return func(a *api) {
		sum := sha256.Sum256([]byte(token))
		a.tokenSum = &sum
	}
}

// requireToken compares digests so the comparison time does not depend on the token's length
// or on how much of it a caller guessed.
func (a *api) requireToken(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if a.tokenSum == nil || openPaths[c.Request().URL.Path] {
			return next(c)
		}
		got, ok := bearer(c.Request().Header.Get(echo.HeaderAuthorization))
		sum := sha256.Sum256([]byte(got))
		if ok && subtle.ConstantTimeCompare(sum[:], a.tokenSum[:]) == 1 {
			return next(c)
		}
		c.Response().Header().Set(echo.HeaderWWWAuthenticate, `Bearer realm="livegate-agent"`)
		return httpapi.JSON(c, http.StatusUnauthorized, httpapi.Detail{Detail: "Not authenticated"})
	}
}

func bearer(h string) (string, bool) {
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}
