package conformance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// lineLog is a thread-safe log file that also keeps its lines for failure reports.
type lineLog struct {
	mu    sync.Mutex
	f     *os.File
	lines []string
}

func newLineLog(path string) (*lineLog, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	return &lineLog{f: f}, nil
}

// Printf appends one timestamped line.
func (l *lineLog) Printf(format string, args ...any) {
	line := time.Now().Format("15:04:05.000 ") + strings.TrimRight(fmt.Sprintf(format, args...), "\n")
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, line)
	if l.f != nil {
		fmt.Fprintln(l.f, line)
	}
}

// Tail returns the last n lines.
func (l *lineLog) Tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	start := max(0, len(l.lines)-n)
	return strings.Join(l.lines[start:], "\n")
}

func (l *lineLog) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
}

// lineWriter feeds a process's output, line by line, into a lineLog.
type lineWriter struct {
	prefix string
	log    *lineLog
	mu     sync.Mutex
	buf    []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.log.Printf("%s%s", w.prefix, w.buf[:i])
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}

func (w *lineWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.log.Printf("%s%s", w.prefix, w.buf)
		w.buf = nil
	}
}

// shellQuote quotes s for POSIX sh.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r == '/' || r == '.' || r == '-' || r == '_' || r == ':' || r == '=' || r == ',' ||
			(r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9'))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'"'"'`) + "'"
}

// expand replaces {root} in a command line with the shell-quoted root directory.
func expand(cmdline, root string) string {
	return strings.ReplaceAll(cmdline, "{root}", shellQuote(root))
}

// Gpulet is the gpulet process under test, started through sh.
type Gpulet struct {
	Cmdline string
	cmd     *exec.Cmd
	out     *lineWriter
	done    chan struct{}
	err     error // Wait's result, valid once done is closed
}

// StartGpulet starts cmdline (already expanded) with sh in its own process group, its output
// going to log.
func StartGpulet(cmdline, workdir string, log *lineLog) (*Gpulet, error) {
	g := &Gpulet{Cmdline: cmdline, done: make(chan struct{}), out: &lineWriter{prefix: "gpulet: ", log: log}}
	// No "exec" prefix, so the command line may start with variable assignments; the process
	// group holds sh and everything it starts.
	g.cmd = exec.Command("/bin/sh", "-c", cmdline)
	g.cmd.Dir = workdir
	g.cmd.Stdout = g.out
	g.cmd.Stderr = g.out
	g.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	log.Printf("starting gpulet (cwd %s): %s", workdir, cmdline)
	if err := g.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting gpulet %q: %w", cmdline, err)
	}
	go func() {
		g.err = g.cmd.Wait()
		g.out.flush()
		log.Printf("gpulet exited: %v", g.exitText())
		close(g.done)
	}()
	return g, nil
}

// Done is closed when the process has exited.
func (g *Gpulet) Done() <-chan struct{} { return g.done }

// Exited reports whether the process has exited, and how.
func (g *Gpulet) Exited() (bool, string) {
	select {
	case <-g.done:
		return true, g.exitText()
	default:
		return false, ""
	}
}

func (g *Gpulet) exitText() string {
	if g.err == nil {
		return "exit status 0"
	}
	return g.err.Error()
}

// Stop sends SIGTERM to the process group and waits up to grace for every process in it to
// exit, then kills what is left. It returns how the started process ended and whether anything
// had to be killed.
func (g *Gpulet) Stop(grace time.Duration) (string, bool) {
	pgid := g.cmd.Process.Pid
	if exited, how := g.Exited(); exited && !groupAlive(pgid) {
		return how, false
	}
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	select {
	case <-g.done:
	case <-time.After(grace):
	}
	// sh may have exited before what it started: wait for the whole group.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for groupAlive(pgid) && time.Now().Before(deadline) {
		<-tick.C
	}
	killed := false
	if groupAlive(pgid) {
		killed = true
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
	<-g.done
	return g.exitText(), killed
}

// groupAlive reports whether any live process of the group is left. Zombies do not count:
// when sh does not exec, gpulet is orphaned once sh exits and its zombie waits for init.
func groupAlive(pgid int) bool {
	if syscall.Kill(-pgid, 0) != nil {
		return false
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return true
	}
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
		rest := string(data[bytes.LastIndexByte(data, ')')+1:])
		f := strings.Fields(rest)
		if len(f) < 3 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		if pg, err := strconv.Atoi(f[2]); err == nil && pg == pgid {
			return true
		}
	}
	return false
}

// RunControl runs one control command: the GPULET_CONFORMANCE_CONTROL prefix (already
// expanded) followed by args, each shell-quoted, through sh in workdir.
func RunControl(ctx context.Context, prefix string, args []string, workdir string, log *lineLog) error {
	if prefix == "" {
		return errors.New(EnvControl + " is unset")
	}
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = shellQuote(a)
	}
	line := prefix + " " + strings.Join(quoted, " ")
	log.Printf("control: %s", line)
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", line)
	cmd.Dir = workdir
	out, err := cmd.CombinedOutput()
	for _, l := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		if l != "" {
			log.Printf("control: | %s", l)
		}
	}
	if err != nil {
		return fmt.Errorf("control command %q failed: %v; output:\n%s", line, err, out)
	}
	return nil
}
