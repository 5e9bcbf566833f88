package cli

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/livegate/livegate/pkg/sessiontoken"
	settingsload "github.com/livegate/livegate/pkg/settings"
)

// TokenCommand is `livegate-edgeproxy token keygen|mint|verify`: session token keys and tokens
// for operators and tests. The token commands read the token from stdin when it is not an
// argument, so it need not show in the process list.
func TokenCommand(stdin io.Reader) Command {
	return func(_ context.Context, args []string, stdout, stderr io.Writer) int {
		const help = "usage: livegate-edgeproxy token keygen|mint|verify [flags]; 'token <command> -h' lists a command's flags"
		switch {
		case len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help"):
			fmt.Fprintln(stdout, help)
			return 0
		case len(args) == 0 || strings.HasPrefix(args[0], "-"):
			fmt.Fprintln(stderr, help)
			return 2
		}
		sub, args := args[0], args[1:]
		var err error
		switch sub {
		case "keygen":
			err = tokenKeygen(args, stdout, stderr)
		case "mint":
			err = tokenMint(args, stdout, stderr)
		case "verify":
			err = tokenVerify(args, stdin, stdout, stderr)
		default:
			fmt.Fprintf(stderr, "livegate-edgeproxy token: unknown command %q (keygen, mint, verify)\n", sub)
			return 2
		}
		var usage usageError
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		case errors.Is(err, settingsload.ErrUsage):
			settingsload.Report(stderr, "livegate-edgeproxy token "+sub, err)
			return 2
		case errors.As(err, &usage):
			fmt.Fprintf(stderr, "livegate-edgeproxy token %s: %s\n", sub, usage.msg)
			return 2
		}
		fmt.Fprintf(stderr, "livegate-edgeproxy token %s: %v\n", sub, err)
		return 1
	}
}

// usageError is a command line the command cannot run, for a reason beyond its flags' own.
type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

func tokenFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("livegate-edgeproxy token "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parseTokenFlags reads a token command's flags and at most maxArgs arguments, from the command
// line only: they describe one key or token, not the edge. The flags named in required must be
// given a value.
func parseTokenFlags(fs *flag.FlagSet, args []string, maxArgs int, required ...string) error {
	l := settingsload.Loader{Args: maxArgs}
	fs.Usage = l.Usage(fs, fs.Name()+" [flags]", "")
	if _, err := l.Load(fs, args, nil); err != nil {
		return err
	}
	for _, name := range required {
		if fs.Lookup(name).Value.String() == "" {
			return usageError{"--" + strings.Join(required, " and --") + " are required"}
		}
	}
	return nil
}

func tokenKeygen(args []string, stdout, stderr io.Writer) error {
	fs := tokenFlagSet("keygen", stderr)
	alg := fs.String("alg", sessiontoken.ES256, "ES256 (writes <kid>.key, private, for the orchestrator, and <kid>.pem, public, for the edges) or HS256 (writes <kid>.hs256, for both)")
	kid := fs.String("kid", "", "key id: 1 to 64 letters, digits, '-' or '_' (e.g. the date: 2026-12)")
	dir := fs.String("out", ".", "directory to write the key files to; existing files are never replaced")
	if err := parseTokenFlags(fs, args, 0); err != nil {
		return err
	}
	gen := map[string]func(string) (sessiontoken.Key, error){sessiontoken.ES256: sessiontoken.NewES256, sessiontoken.HS256: sessiontoken.NewHS256}[*alg]
	if gen == nil {
		return usageError{fmt.Sprintf("--alg %q: want ES256 or HS256", *alg)}
	}
	k, err := gen(*kid)
	if err != nil {
		return usageError{"--kid: " + err.Error()}
	}
	files, err := k.Files()
	if err != nil {
		return err
	}
	for name := range files {
		if _, err := os.Lstat(filepath.Join(*dir, name)); err == nil {
			return fmt.Errorf("%s exists: choose another --kid", filepath.Join(*dir, name))
		}
	}
	for name, b := range files {
		mode := os.FileMode(0o600)
		if strings.HasSuffix(name, sessiontoken.PublicExt) {
			mode = 0o644
		}
		path := filepath.Join(*dir, name)
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
		if err != nil {
			return err
		}
		_, err = f.Write(b)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		fmt.Fprintln(stdout, path)
	}
	return nil
}

func tokenMint(args []string, stdout, stderr io.Writer) error {
	fs := tokenFlagSet("mint", stderr)
	keyFile := fs.String("key", "", "signing key file: <kid>.key (ES256 private key) or <kid>.hs256")
	sid := fs.String("session", "", "session id the token is for")
	ttl := fs.Duration("ttl", 2*time.Minute, "how long the token is valid from now (it is only needed to open the websocket)")
	aud := fs.String("audience", "", "pool:<pool> or edge:<edge id> to limit the token to; empty: any edge")
	proto := fs.Bool("subprotocol", false, "print the Sec-WebSocket-Protocol entry (x-nv-token.<jwt>) instead of the bare token")
	if err := parseTokenFlags(fs, args, 0, "key", "session"); err != nil {
		return err
	}
	k, err := sessiontoken.LoadKey(*keyFile)
	if err != nil {
		return err
	}
	c := sessiontoken.NewClaims(*sid, time.Now(), *ttl)
	c.Audience = *aud
	token, err := sessiontoken.Mint(k, c)
	if err != nil {
		return err
	}
	if *proto {
		token = sessiontoken.Subprotocol(token)
	}
	fmt.Fprintln(stdout, token)
	return nil
}

func tokenVerify(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := tokenFlagSet("verify", stderr)
	keys := fs.String("keys", "", "directory of verification keys, as --session-token-keys")
	sid := fs.String("session", "", "session id the token must be for")
	var auds []string
	fs.Func("audience", "an accepted audience (pool:<pool>, edge:<edge id>); repeat for more", func(s string) error {
		if err := sessiontoken.ValidateAudience(s); err != nil || s == "" {
			return errors.New("want pool:<pool> or edge:<edge id>")
		}
		auds = append(auds, s)
		return nil
	})
	leeway := fs.Duration("leeway", sessiontoken.DefaultLeeway, "clock skew allowed on nbf and exp")
	if err := parseTokenFlags(fs, args, 1, "keys", "session"); err != nil {
		return err
	}
	ks, err := sessiontoken.LoadVerificationKeys(*keys)
	if err != nil {
		return err
	}
	token := fs.Arg(0)
	if token == "" || token == "-" {
		line, err := bufio.NewReader(io.LimitReader(stdin, 1<<16)).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read token from stdin: %w", err)
		}
		token = strings.TrimSpace(line)
	}
	if t, ok := sessiontoken.FromSubprotocols(token); ok {
		token = t
	}
	c, err := sessiontoken.Verifier{Keys: ks, Audiences: auds, Leeway: *leeway}.Verify(token, *sid)
	if err != nil {
		return err
	}
	aud := c.Audience
	if aud == "" {
		aud = "any"
	}
	fmt.Fprintf(stdout, "valid: session %s, audience %s, not before %s, expires %s\n", c.SessionID, aud,
		c.NotBefore.UTC().Format(time.RFC3339), c.Expiry.UTC().Format(time.RFC3339))
	return nil
}
