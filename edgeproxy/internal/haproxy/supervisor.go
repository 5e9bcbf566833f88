package haproxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/livegate/livegate/edgeproxy/internal/atomicfile"
	"github.com/rs/zerolog"
)

// Supervisor runs HAProxy in master-worker mode and starts it again when it dies. It records the
// master's pid, so an edge that restarts adopts the HAProxy still running instead of starting a
// second one: established websockets survive a restart of the edge.
type Supervisor struct {
	binary, config, pidFile string
	client                  *Client
	log, outputLog          zerolog.Logger
	onReady                 func()
	stopOnExit              bool
	reload                  bool
	minBackoff, maxBackoff  time.Duration
	readyTimeout            time.Duration
}

// SupervisorOption changes a Supervisor's defaults.
type SupervisorOption func(*Supervisor)

// OnReady is called each time a started or adopted HAProxy answers on its runtime socket; the
// reconciler re-applies the map then.
func OnReady(f func()) SupervisorOption { return func(s *Supervisor) { s.onReady = f } }

// StopOnExit makes Run stop HAProxy when its context ends; by default HAProxy keeps running for
// the next edge process to adopt.
func StopOnExit(stop bool) SupervisorOption { return func(s *Supervisor) { s.stopOnExit = stop } }

// ReloadAdopted makes an adopted HAProxy reload once (the configuration file changed while the
// edge was away). Old workers keep their connections until hard-stop-after.
func ReloadAdopted(reload bool) SupervisorOption { return func(s *Supervisor) { s.reload = reload } }

// OutputLog is where HAProxy's own output goes, one entry a line; by default the supervisor's log.
// It is a logger of its own so that the lines carry their own component, once.
func OutputLog(log zerolog.Logger) SupervisorOption { return func(s *Supervisor) { s.outputLog = log } }

// Backoff bounds the pause before a dead HAProxy is started again.
func Backoff(minimum, maximum time.Duration) SupervisorOption {
	return func(s *Supervisor) { s.minBackoff, s.maxBackoff = minimum, maximum }
}

// NewSupervisor runs binary with the configuration file config; pidFile keeps the master's pid
// and client reaches the runtime socket the configuration declares.
func NewSupervisor(binary, config, pidFile string, client *Client, log zerolog.Logger, opts ...SupervisorOption) *Supervisor {
	s := &Supervisor{
		binary: binary, config: config, pidFile: pidFile, client: client, log: log, outputLog: log,
		onReady:    func() {},
		minBackoff: 500 * time.Millisecond, maxBackoff: 10 * time.Second,
		readyTimeout: 15 * time.Second,
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Run keeps HAProxy running until ctx ends.
func (s *Supervisor) Run(ctx context.Context) error {
	backoff := s.minBackoff
	for {
		started := time.Now()
		err := s.runOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(started) > time.Minute {
			backoff = s.minBackoff
		}
		s.log.Warn().Err(err).Dur("restart_in", backoff).Msg("haproxy stopped; starting it again")
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, s.maxBackoff)
	}
}

// Pid is the pid of the HAProxy master recorded in the pid file, or 0.
func (s *Supervisor) Pid() int {
	pid, _ := s.livePid()
	return pid
}

func (s *Supervisor) runOnce(ctx context.Context) error {
	if pid, ok := s.livePid(); ok {
		return s.adopt(ctx, pid)
	}
	// An edge killed between starting HAProxy and writing the pid file left a master that holds
	// the ports: another started beside it would share them (SO_REUSEPORT), the old one serving
	// stale routes, so it is found and adopted.
	if masters := s.findMasters(); len(masters) > 0 {
		pid := masters[0]
		if err := atomicfile.Write(s.pidFile, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
			return err
		}
		s.log.Warn().Int("pid", pid).Str("pid_file", s.pidFile).Msg("haproxy running our configuration found without its pid file")
		for _, extra := range masters[1:] {
			s.log.Warn().Int("pid", extra).Int("adopted_pid", pid).Msg("stopping a second haproxy running our configuration")
			stopPid(extra, nil)
		}
		return s.adopt(ctx, pid)
	}
	return s.start(ctx)
}

// livePid reads the pid file and checks that the process is a HAProxy master running our
// configuration.
func (s *Supervisor) livePid() (int, bool) {
	b, err := os.ReadFile(s.pidFile)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, false
	}
	return pid, s.runsConfig(pid) && !zombie(pid)
}

// runsConfig reports whether pid runs in master-worker mode (-W, not a -c check) with our
// configuration file, so that a process that only names the file (a tail -f) is not taken
// for our HAProxy. The file is compared through the process's root, since the same path seen
// from another root is another file (a process of another container).
func (s *Supervisor) runsConfig(pid int) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	config, master := false, false
	for i, a := range args {
		switch {
		case a == "-f" && i+1 < len(args) && args[i+1] == s.config:
			config = true
		case a == "-W":
			master = true
		case a == "-c":
			return false
		}
	}
	if !config || !master {
		return false
	}
	theirs, err := os.Stat(fmt.Sprintf("/proc/%d/root%s", pid, s.config))
	if err != nil {
		return false
	}
	ours, err := os.Stat(s.config)
	return err == nil && os.SameFile(theirs, ours)
}

// isHAProxy reports whether pid's executable is the binary we run, by name: the kernel names a
// file replaced by a package upgrade "<path> (deleted)", and the binary may be a link.
func (s *Supervisor) isHAProxy(pid int) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return false
	}
	bin := s.binary
	if p, err := exec.LookPath(bin); err == nil {
		bin = p
	}
	if p, err := filepath.EvalSymlinks(bin); err == nil {
		bin = p
	}
	return filepath.Base(strings.TrimSuffix(exe, " (deleted)")) == filepath.Base(bin)
}

// findMasters looks through /proc for the live HAProxy masters running our configuration: the
// workers are forks of a master, with its command line, so a master is one whose parent does
// not run it and that has a worker (an orphaned worker has none), lowest pid first.
func (s *Supervisor) findMasters() []int {
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	parent := map[int]int{}
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid <= 1 || zombie(pid) || !s.runsConfig(pid) || !s.isHAProxy(pid) {
			continue
		}
		parent[pid] = parentPid(pid)
	}
	hasWorker := map[int]bool{}
	for _, ppid := range parent {
		hasWorker[ppid] = true
	}
	var masters []int
	for pid, ppid := range parent {
		if _, worker := parent[ppid]; !worker && hasWorker[pid] {
			masters = append(masters, pid)
		}
	}
	slices.Sort(masters)
	return masters
}

// parentPid is pid's parent from /proc/<pid>/stat, or 0.
func parentPid(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command name (in parentheses, which may hold spaces): state, ppid.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the command name, which is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z'
}

func (s *Supervisor) adopt(ctx context.Context, pid int) error {
	log := s.log.With().Int("pid", pid).Logger()
	if s.reload {
		s.reload = false
		log.Info().Msg("haproxy configuration changed; reloading the adopted haproxy")
		if err := syscall.Kill(pid, syscall.SIGUSR2); err != nil {
			return fmt.Errorf("reload haproxy %d: %w", pid, err)
		}
	}
	if err := s.waitReady(ctx); err != nil {
		if ctx.Err() != nil && s.stopOnExit {
			stopPid(pid, nil)
		}
		return err
	}
	log.Info().Msg("adopted running haproxy")
	s.onReady()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if s.stopOnExit {
				stopPid(pid, nil)
			}
			return nil
		case <-t.C:
			if _, ok := s.livePid(); !ok {
				return fmt.Errorf("adopted haproxy %d exited", pid)
			}
		}
	}
}

func (s *Supervisor) start(ctx context.Context) error {
	// Started outside ctx: HAProxy may outlive this process on purpose.
	cmd := exec.Command(s.binary, "-W", "-db", "-f", s.config)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("start haproxy: %w", err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start haproxy: %w", err)
	}
	pid := cmd.Process.Pid
	log := s.log.With().Int("pid", pid).Logger()
	go s.pipeLog(out)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	if err := atomicfile.Write(s.pidFile, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		stopPid(pid, done)
		return err
	}
	log.Info().Str("config", s.config).Msg("haproxy started")
	readyCtx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-done:
			cancel()
			done <- errors.New("exited before it was ready")
		case <-readyCtx.Done():
		}
	}()
	err = s.waitReady(readyCtx)
	cancel()
	if err != nil {
		// The edge stopping (or restarting) while HAProxy comes up is no failure of HAProxy: it
		// keeps running for the next edge process to adopt, as a ready one does.
		if ctx.Err() != nil && !s.stopOnExit {
			return nil
		}
		stopPid(pid, done)
		return err
	}
	s.onReady()
	select {
	case err := <-done:
		return fmt.Errorf("haproxy %d: %w", pid, exitError(err))
	case <-ctx.Done():
		if s.stopOnExit {
			stopPid(pid, done)
		}
		return nil
	}
}

func exitError(err error) error {
	if err == nil {
		return errors.New("exited with status 0")
	}
	return err
}

func (s *Supervisor) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.readyTimeout)
	defer cancel()
	ping, _ := NewCommand("show", "info")
	for {
		if _, err := s.client.Exec(ctx, ping); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("haproxy runtime socket %s not answering: %w", s.client.Addr(), ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stopPid asks the master to stop (SIGTERM stops master and workers) and kills it after 5 s.
// done, when not nil, is the exit of our own child.
func stopPid(pid int, done <-chan error) {
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.After(5 * time.Second)
	for {
		if done != nil {
			select {
			case <-done:
				return
			case <-deadline:
				_ = syscall.Kill(pid, syscall.SIGKILL)
				<-done
				return
			}
		}
		if syscall.Kill(pid, 0) != nil || zombie(pid) {
			return
		}
		select {
		case <-deadline:
			_ = syscall.Kill(pid, syscall.SIGKILL)
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *Supervisor) pipeLog(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		s.outputLog.Info().Msg(sc.Text())
	}
}
