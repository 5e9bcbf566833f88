package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livegate/livegate/e2e/internal/browser"
	"github.com/livegate/livegate/e2e/internal/netns"
)

// quickstartPrefix names the namespaces and veths of TestQuickstartOneHost.
const quickstartPrefix = "lgqs"

// quickstartBlocks are the sh blocks of docs/quickstart.md from "## Build" up to "## Several
// hosts", in order: the one-host commands exactly as a reader copies them.
func quickstartBlocks(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "docs", "quickstart.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	start, end := strings.Index(doc, "\n## Build"), strings.Index(doc, "\n## Several hosts")
	if start < 0 || end < start {
		t.Fatal("docs/quickstart.md: no \"## Build\" ... \"## Several hosts\" section")
	}
	var blocks []string
	for _, part := range strings.Split(doc[start:end], "```sh\n")[1:] {
		block, _, ok := strings.Cut(part, "```")
		if !ok {
			t.Fatal("docs/quickstart.md: an sh block is not closed")
		}
		blocks = append(blocks, block)
	}
	if len(blocks) < 5 {
		t.Fatalf("docs/quickstart.md: %d sh blocks in the one-host part, want the build, edge, app and agent, check, end and clean-up blocks", len(blocks))
	}
	return blocks
}

// quickstartPause is what the test adds after the block that prints the page: the script waits
// there, with the session ready, for the test's browser to play it (a line on file descriptor 3).
const quickstartPause = "echo " + quickstartPaused + "; read -r _ <&3\n"

const quickstartPaused = "quickstart-paused"

// quickstartScript is the blocks with quickstartPause after the one printing the page's URL.
func quickstartScript(t *testing.T) string {
	t.Helper()
	blocks := quickstartBlocks(t)
	var b strings.Builder
	paused := false
	for _, block := range blocks {
		b.WriteString(block)
		if !paused && strings.Contains(block, `echo "open http`) {
			b.WriteString(quickstartPause)
			paused = true
		}
	}
	if !paused {
		t.Fatal(`docs/quickstart.md: no one-host block prints the page to open (echo "open http...")`)
	}
	return b.String()
}

// pageURL is the last "open <url>" line of the quickstart's output.
var pageURL = regexp.MustCompile(`(?m)^open (http://\S+)$`)

// scriptOutput collects the script's output and says when the script has paused.
type scriptOutput struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	paused chan struct{}
	once   sync.Once
}

func (o *scriptOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf.Write(p)
	if strings.Contains(o.buf.String(), quickstartPaused+"\n") {
		o.once.Do(func() { close(o.paused) })
	}
	return len(p), nil
}

func (o *scriptOutput) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// TestQuickstartOneHost runs the quickstart's one-host commands as written, as root, in a network
// namespace of their own with private /usr/local/bin, /var/lib and /tmp (so the install, the state
// directory and the logs touch nothing of this host): build, install, edge, sample app, agent,
// probe, the page played in headless Chromium inside the namespace, end of session, clean-up. It
// passes when every command succeeds and the page plays, and leaves no process, no livegate
// nftables table and no LIVEGATE chain behind. So the quickstart cannot drift from what the
// binaries do.
func TestQuickstartOneHost(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces, nftables, iptables, HAProxy")
	}
	if _, err := browser.Find(); err != nil {
		t.Fatal(err)
	}
	script := quickstartScript(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := netns.Sweep(ctx, quickstartPrefix); err != nil {
		t.Fatal(err)
	}
	host, err := netns.Add(ctx, quickstartPrefix+"-host")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = host.Delete(context.Background()) })
	peer, err := netns.Add(ctx, quickstartPrefix+"-peer")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = peer.Delete(context.Background()) })
	// The host's address, which `hostname -I` finds first.
	if err := netns.Veth(ctx, host, quickstartPrefix+"0", netip.MustParsePrefix("198.18.231.1/24"),
		peer, quickstartPrefix+"1", netip.MustParsePrefix("198.18.231.2/24")); err != nil {
		t.Fatal(err)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	// `ip netns exec` runs in a mount namespace of its own whose mounts do not reach the host.
	// The checkout may itself lie under one of the private directories (CI clones into /tmp):
	// it is held by a bind mount outside them and mounted back at its own path, so that the
	// quickstart's commands, and go's look-up of go.work by path, find it where it was.
	holder, err := os.MkdirTemp("/run", quickstartPrefix+"-src-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(holder) })
	prologue := "set -euo pipefail\n" +
		"mount --bind " + root + " " + holder + "\n" +
		"for d in /usr/local/bin /var/lib /tmp; do mount -t tmpfs tmpfs \"$d\"; done\n" +
		"mkdir -p " + root + " && mount --bind " + holder + " " + root + "\n" +
		"cd " + root + "\n"
	resumeR, resumeW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	out := &scriptOutput{paused: make(chan struct{})}
	cmd := host.Command(ctx, "bash", "-c", prologue+script)
	cmd.Env = append(os.Environ(), "PATH=/usr/local/bin:/usr/local/go/bin:"+os.Getenv("PATH"))
	cmd.Stdout, cmd.Stderr = out, out
	cmd.ExtraFiles = []*os.File{resumeR}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	resumeR.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		t.Fatalf("the quickstart failed before its page was printed: %v\n--- script\n%s\n--- output\n%s", err, script, out)
	case <-out.paused:
	}
	// Whatever the browser saw, the script goes on, so that it ends the session and cleans up.
	br, playErr := playQuickstartPage(ctx, t, host, out.String())
	_, _ = resumeW.WriteString("\n")
	resumeW.Close()
	if playErr != nil {
		t.Error(playErr)
	}
	if br != nil {
		if playErr == nil {
			st, err := waitPage(ctx, br, func(st browser.State) bool { return st.WSState == "closed" })
			if err != nil || !strings.HasPrefix(st.WSCloseReason, "session ended") {
				t.Errorf("after endsession the page's websocket closed with %d %q (%v), want the app's session ended", st.WSCloseCode, st.WSCloseReason, err)
			}
		}
		// Chromium runs in the namespace, which must be left empty.
		br.Close()
	}
	if err := <-done; err != nil {
		t.Fatalf("the quickstart failed: %v\n--- script\n%s\n--- output\n%s", err, script, out)
	}
	for _, want := range []string{`"statusMessage":"Status: Ready for connection"`, "served", "all 1 checks passed", "open http://198.18.231.1:49100/?edge=", `{"sessionStatus":"COMPLETE"}`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// A child the edge left (its iptables-restore reading a closed pipe) may take a moment to go;
	// the bound is generous, it is a wait, not a timing assertion.
	var pids []int
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if pids, err = host.Pids(ctx); err != nil || len(pids) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Error(err)
	}
	for _, pid := range pids {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		t.Errorf("process %d left in the namespace after the clean-up: %s", pid, strings.ReplaceAll(string(cmdline), "\x00", " "))
	}
	rules, err := host.Output(ctx, "iptables-save")
	if err != nil || strings.Contains(rules, "LIVEGATE") {
		t.Errorf("LIVEGATE rules left after the clean-up (%v):\n%s", err, rules)
	}
	ruleset, err := host.Output(ctx, "nft", "list", "ruleset")
	if err != nil || strings.Contains(ruleset, "table ip livegate {") {
		t.Errorf("the livegate nftables table left after the clean-up (%v):\n%s", err, ruleset)
	}
}

// playQuickstartPage opens the page the quickstart printed in headless Chromium inside the
// quickstart's namespace, as a browser on that host would, and checks that the video plays: frames
// decoded, media through the session's public address, and the agent's session active.
func playQuickstartPage(ctx context.Context, t *testing.T, host *netns.Namespace, out string) (*browser.Browser, error) {
	m := pageURL.FindAllStringSubmatch(out, -1)
	if m == nil {
		return nil, fmt.Errorf("the quickstart printed no page to open:\n%s", out)
	}
	u, err := url.Parse(m[len(m)-1][1])
	if err != nil {
		return nil, fmt.Errorf("the printed page: %w", err)
	}
	q := u.Query()
	page := *u
	page.RawQuery = ""
	br, err := browser.Launch(ctx, host)
	if err != nil {
		return nil, err
	}
	if err := br.Open(ctx, page.String(), q.Get("edge"), q.Get("session"), nil); err != nil {
		return br, fmt.Errorf("open %s: %w", u, err)
	}
	st, err := waitPage(ctx, br, func(st browser.State) bool { return st.FramesDecoded >= 30 })
	if err != nil {
		return br, fmt.Errorf("waiting for 30 decoded frames on %s: page state %+v (%w)", u, st, err)
	}
	if rc := st.RemoteCandidate; rc == nil || rc.Address != "198.18.231.1" || rc.Protocol != "udp" {
		return br, fmt.Errorf("selected pair's remote candidate %s, want the host's 198.18.231.1 over udp", rc)
	}
	ready, err := host.Output(ctx, "curl", "-s", "localhost:8011/v1/streaming/ready")
	if err != nil || !strings.Contains(ready, "Streaming session active") {
		return br, fmt.Errorf("agent's ready while the page plays: %s (%v), want the session active", ready, err)
	}
	t.Logf("the quickstart's page plays: %d frames decoded, %.0f kbit/s, pair %s -> %s", st.FramesDecoded, st.BitrateKbps, st.LocalCandidate, st.RemoteCandidate)
	return br, nil
}

// waitPage polls the page until ok holds, for up to 30 s.
func waitPage(ctx context.Context, br *browser.Browser, ok func(browser.State) bool) (browser.State, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return br.WaitState(ctx, ok)
}
