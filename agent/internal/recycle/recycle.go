// Package recycle carries out --on-session-ended when the instance is to be recycled: signal the
// app's process named by a PID file, or run a command. The default, exit, is the caller's own
// shutdown and does not come here.
package recycle

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"github.com/livegate/livegate/agent/internal/settings"
)

// Run carries out a signal or exec action for the session that ended. An exec command gets
// LIVEGATE_SESSION_ID and LIVEGATE_END_REASON in its environment and inherits stdout and stderr.
func Run(ctx context.Context, a settings.Action, sessionID, reason string) error {
	switch a.Kind {
	case settings.ActionSignal:
		b, err := os.ReadFile(a.PIDFile)
		if err != nil {
			return fmt.Errorf("on-session-ended: read pid file: %w", err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 1 {
			return fmt.Errorf("on-session-ended: pid file %s does not hold a process id above 1", a.PIDFile)
		}
		if err := syscall.Kill(pid, a.Signal); err != nil {
			return fmt.Errorf("on-session-ended: signal %s to pid %d: %w", a.Signal, pid, err)
		}
		return nil
	case settings.ActionExec:
		cmd := exec.CommandContext(ctx, "/bin/sh", "-c", a.Command)
		cmd.Env = append(os.Environ(), "LIVEGATE_SESSION_ID="+sessionID, "LIVEGATE_END_REASON="+reason)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("on-session-ended: command: %w", err)
		}
		return nil
	}
	return fmt.Errorf("on-session-ended: action %d is not run here", a.Kind)
}
