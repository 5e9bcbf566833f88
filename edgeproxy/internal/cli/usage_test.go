package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/livegate/livegate/edgeproxy/internal/haproxy/haproxytest"
	"github.com/rs/zerolog"
)

// TestBadFlagValueIsOneLine: a value a flag refuses is reported as the environment reports it,
// with the form wanted and a pointer to -h, not with the whole usage.
func TestBadFlagValueIsOneLine(t *testing.T) {
	for args, want := range map[string]string{
		"--resync soon":           `flag --resync: value "soon": want a duration such as 30s, 1m30s or 500ms`,
		"--max-routes many":       `flag --max-routes: value "many": want an integer`,
		"--snat=maybe":            `flag --snat: value "maybe": want true or false`,
		"--nats-embedded=nowhere": `flag --nats-embedded: value "nowhere": want true, false or ADDR:PORT`,
	} {
		var out, errOut bytes.Buffer
		code := RunCommand(Hooks{})(context.Background(), strings.Fields(args), &out, &errOut)
		text := errOut.String()
		if code != 2 || !strings.Contains(text, want) || !strings.Contains(text, "-h` lists the flags") || strings.Contains(text, "-tunnel-timeout") {
			t.Errorf("%s: exit %d, output:\n%s\nwant one line with %q", args, code, text, want)
		}
	}
}

// TestEmbeddedReadsBooleansLikeTheOthers: --nats-embedded takes what every boolean flag takes.
func TestEmbeddedReadsBooleansLikeTheOthers(t *testing.T) {
	for in, want := range map[string]string{"1": DefaultEmbeddedNATS, "t": DefaultEmbeddedNATS, "TRUE": DefaultEmbeddedNATS, "0": "", "F": ""} {
		var f embeddedFlag
		if err := f.Set(in); err != nil || f.addr != want {
			t.Errorf("Set(%q) = %q, %v; want %q", in, f.addr, err, want)
		}
	}
}

// TestHelpSaysEachDefaultOnce: the host name defaults are described, not printed a second time
// as this machine's name.
func TestHelpSaysEachDefaultOnce(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := RunCommand(Hooks{})(context.Background(), []string{"-h"}, &out, &errOut); code != 0 {
		t.Fatalf("-h: exit %d", code)
	}
	help := errOut.String()
	for _, flag := range []string{"-edge-id", "-public-host"} {
		i := strings.Index(help, "  "+flag+" ")
		if i < 0 {
			t.Fatalf("%s not in the help", flag)
		}
		entry, _, _ := strings.Cut(help[i+3:], "\n  -")
		if strings.Count(entry, "default") != 1 {
			t.Errorf("%s: the default is said %d times:\n%s", flag, strings.Count(entry, "default"), entry)
		}
	}
	if !strings.Contains(help, "--public-ip (when set) and localhost") {
		t.Error("--tls-self-signed's help does not say the certificate also names localhost")
	}
}

// TestCheckConfigNamesEveryMissingFile: the unedited example names a certificate and a key that
// do not exist; check-config names both, and a missing HAProxy too.
func TestCheckConfigNamesEveryMissingFile(t *testing.T) {
	dir := t.TempDir()
	args := []string{"--state-dir", dir, "--media=off", "--public-host", "edge.example.test",
		"--tls-cert", filepath.Join(dir, "fullchain.pem"), "--tls-key", filepath.Join(dir, "privkey.pem"),
		"--nats-creds", filepath.Join(dir, "edge.creds"), "--haproxy-binary", filepath.Join(dir, "no-haproxy")}
	var out, errOut bytes.Buffer
	code := CheckConfigCommand(Hooks{})(context.Background(), args, &out, &errOut)
	for _, want := range []string{"--tls-cert: open " + dir + "/fullchain.pem", "--tls-key: open " + dir + "/privkey.pem", "--nats-creds: open", "--haproxy-binary:"} {
		if code != 1 || !strings.Contains(errOut.String(), want) {
			t.Errorf("exit %d, output %q lacks %q", code, errOut.String(), want)
		}
	}
	// With the files present, the same settings pass.
	bin := haproxytest.Binary(t)
	out.Reset()
	errOut.Reset()
	if code := CheckConfigCommand(Hooks{})(context.Background(), []string{"--state-dir", dir, "--media=off", "--public-host", "edge.example.test", "--tls-self-signed", "--haproxy-binary", bin}, &out, &errOut); code != 0 {
		t.Errorf("valid settings: exit %d, %s", code, errOut.String())
	}
}

// TestBannerSaysWhereTheEdgeServes: the start-up line names the URL browsers use, the certificate,
// the media range and the admin API, and never a NATS password.
func TestBannerSaysWhereTheEdgeServes(t *testing.T) {
	fs, f := newFlagSet("run", io.Discard, nil)
	if err := f.parse(fs, []string{"--state-dir", t.TempDir(), "--tls-self-signed", "--public-host", "edge.example.test", "--public-ip", "198.18.0.1", "--media-ports", "10500-10600"}); err != nil {
		t.Fatal(err)
	}
	s, err := f.settings(nil)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	banner(zerolog.New(&buf), s, []string{"nats://user:secret@127.0.0.1:4222"}).Msg("edge proxy running")
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatal(err)
	}
	if line["signaling_url"] != "wss://edge.example.test:48322/sign_in" || line["media_ports"] != "10500-10600/udp" ||
		!strings.HasPrefix(fmt.Sprint(line["certificate"]), "self-signed for edge.example.test and localhost") || line["admin_url"] != "http://127.0.0.1:9470" {
		t.Errorf("banner %s", buf.String())
	}
	if strings.Contains(buf.String(), "secret") {
		t.Errorf("banner shows the NATS password: %s", buf.String())
	}
}
