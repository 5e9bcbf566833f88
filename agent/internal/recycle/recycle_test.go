package recycle

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/livegate/livegate/agent/internal/settings"
)

func TestExec(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	a, err := settings.ParseAction(`exec:echo "$LIVEGATE_SESSION_ID $LIVEGATE_END_REASON" > ` + out)
	if err != nil {
		t.Fatal(err)
	}
	if err := Run(context.Background(), a, "s1", "graceful"); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	if strings.TrimSpace(string(b)) != "s1 graceful" {
		t.Errorf("command saw %q", b)
	}
	a, _ = settings.ParseAction("exec:exit 3")
	if err := Run(context.Background(), a, "s1", "graceful"); err == nil {
		t.Error("failing command reported no error")
	}
}

func TestSignal(t *testing.T) {
	child := exec.Command("sleep", "30")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = child.Process.Kill() })
	pidFile := filepath.Join(t.TempDir(), "app.pid")
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(child.Process.Pid)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := settings.ParseAction("signal:" + pidFile + ":TERM")
	if err != nil {
		t.Fatal(err)
	}
	if err := Run(context.Background(), a, "s1", "graceful"); err != nil {
		t.Fatal(err)
	}
	err = child.Wait()
	ws, ok := child.ProcessState.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Errorf("child ended with %v, want SIGTERM", err)
	}
	a.PIDFile = filepath.Join(t.TempDir(), "missing.pid")
	if err := Run(context.Background(), a, "s1", "graceful"); err == nil {
		t.Error("missing pid file reported no error")
	}
}
