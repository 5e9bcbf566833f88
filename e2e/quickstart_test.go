package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/livegate/livegate/e2e/internal/netns"
)

// quickstartPrefix names the namespaces and veths of TestQuickstartOneHost.
const quickstartPrefix = "lgqs"

// quickstartScript is every sh block of docs/quickstart.md from "## Build" up to "## Several
// hosts", in order: the one-host commands exactly as a reader copies them.
func quickstartScript(t *testing.T) string {
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
	return strings.Join(blocks, "")
}

// TestQuickstartOneHost runs the quickstart's one-host commands as written, as root, in a network
// namespace of their own with private /usr/local/bin, /var/lib and /tmp (so the install, the state
// directory and the logs touch nothing of this host): build, install, edge, sample app, agent,
// probe, end of session, clean-up. It passes when every command succeeds, and leaves no process
// and no LIVEGATE chain behind. So the quickstart cannot drift from what the binaries do.
func TestQuickstartOneHost(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces, iptables, HAProxy")
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
	// The working directory is taken first: it stays valid under a tmpfs mounted over /tmp.
	prologue := "set -euo pipefail\n" +
		"cd " + root + "\n" +
		"for d in /usr/local/bin /var/lib /tmp; do mount -t tmpfs tmpfs \"$d\"; done\n"
	cmd := host.Command(ctx, "bash", "-c", prologue+script)
	cmd.Env = append(os.Environ(), "PATH=/usr/local/bin:/usr/local/go/bin:"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the quickstart failed: %v\n--- script\n%s\n--- output\n%s", err, script, out)
	}
	for _, want := range []string{`"statusMessage":"Status: Ready for connection"`, "served", "all 2 checks passed", `{"sessionStatus":"COMPLETE"}`} {
		if !strings.Contains(string(out), want) {
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
}
