package haproxy

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Reload has the running master load the configuration file again: it starts a new worker,
// which takes over the listeners (and the runtime socket), while the old one keeps its
// established websockets until they close or hard-stop-after ends them. The configuration is
// checked first, so a bad one leaves HAProxy as it was. onReady runs once the new worker answers.
func (s *Supervisor) Reload(ctx context.Context) error {
	pid, ok := s.livePid()
	if !ok {
		return errors.New("reload haproxy: not running")
	}
	if out, err := exec.CommandContext(ctx, s.binary, "-c", "-q", "-f", s.config).CombinedOutput(); err != nil {
		return fmt.Errorf("reload haproxy: configuration refused: %w: %s", err, strings.TrimSpace(string(out)))
	}
	before, err := s.workerPid(ctx)
	if err != nil {
		return fmt.Errorf("reload haproxy: %w", err)
	}
	if err := syscall.Kill(pid, syscall.SIGUSR2); err != nil {
		return fmt.Errorf("reload haproxy %d: %w", pid, err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.readyTimeout)
	defer cancel()
	for {
		if now, err := s.workerPid(ctx); err == nil && now != before {
			s.log.Info().Int("pid", pid).Int("worker", now).Msg("haproxy reloaded")
			s.onReady()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("reload haproxy %d: no new worker answering: %w", pid, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// workerPid is the pid of the worker answering on the runtime socket.
func (s *Supervisor) workerPid(ctx context.Context) (int, error) {
	cmd, _ := NewCommand("show", "info")
	out, err := s.client.Exec(ctx, cmd)
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(out, "\n") {
		if v, ok := strings.CutPrefix(line, "Pid: "); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, errors.New("show info: no Pid")
}
