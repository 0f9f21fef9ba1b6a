package conformance

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Base timeouts, scaled by GPULET_CONFORMANCE_TIMEOUT_SCALE. They are limits on waits for a
// condition, never sleeps.
const (
	startupTimeout  = 120 * time.Second // gpulet start to every resource registered and listed
	rpcTimeout      = 15 * time.Second  // one RPC through the kubelet's client
	unhealthyWait   = 60 * time.Second  // fault injected to device Unhealthy on the stream
	recoverWait     = 120 * time.Second // recovery commands to every device Healthy again
	reregisterWait  = 60 * time.Second  // new kubelet socket to every resource registered again
	controlTimeout  = 60 * time.Second  // one control command
	stopGrace       = 15 * time.Second  // SIGTERM to exit
	preSocketWait   = 20 * time.Second  // start-before-kubelet: for gpulet's first socket
	failureLogLines = 200
)

// harness is one kubelet stand-in and one gpulet process in a fresh kubelet root.
type harness struct {
	t       *testing.T
	s       *Settings
	e       *Expectations
	root    string
	log     *lineLog
	kubelet *Kubelet
	gpulet  *Gpulet
}

// setup reads the environment and expectations; it fails the test (never skips it) when
// GPULET_CONFORMANCE_CMD is unset, so the suite cannot pass without talking to gpulet.
func setup(t *testing.T) (*Settings, *Expectations) {
	t.Helper()
	s, err := LoadSettings()
	if err != nil {
		t.Fatalf("conformance suite not configured: %v", err)
	}
	e, err := LoadExpectations(s.ExpectPath)
	if err != nil {
		t.Fatalf("conformance suite not configured: %v", err)
	}
	return s, e
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	s, e := setup(t)
	if err := os.MkdirAll(s.TmpDir, 0o755); err != nil {
		t.Fatalf("%s: %v", EnvTmpDir, err)
	}
	root, err := os.MkdirTemp(s.TmpDir, "gpc-")
	if err != nil {
		t.Fatalf("kubelet root: %v", err)
	}
	log, err := newLineLog(filepath.Join(root, "conformance.log"))
	if err != nil {
		t.Fatalf("log: %v", err)
	}
	k, err := NewKubelet(root, log)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, s: s, e: e, root: root, log: log, kubelet: k}
	t.Logf("kubelet root %s, expectations %s", root, s.ExpectPath)
	t.Cleanup(h.cleanup)
	return h
}

func (h *harness) cleanup() {
	t := h.t
	if h.gpulet != nil {
		how, killed := h.gpulet.Stop(h.s.Timeout(stopGrace))
		if killed {
			t.Logf("gpulet did not exit within %v of SIGTERM and was killed (%s)", h.s.Timeout(stopGrace), how)
		}
	}
	if err := h.kubelet.Stop(); err != nil {
		t.Logf("stopping kubelet: %v", err)
	}
	if t.Failed() {
		t.Logf("kubelet events:\n  %s", strings.Join(h.kubelet.Events(), "\n  "))
		t.Logf("last %d log lines (kubelet, gpulet, control):\n%s", failureLogLines, h.log.Tail(failureLogLines))
	}
	h.log.Close()
	if h.s.Keep || t.Failed() {
		t.Logf("kept kubelet root and log: %s", h.root)
		return
	}
	_ = os.RemoveAll(h.root)
}

func (h *harness) startKubelet() {
	h.t.Helper()
	if err := h.kubelet.Start(); err != nil {
		h.t.Fatalf("starting the kubelet registration server: %v", err)
	}
}

func (h *harness) startGpulet() {
	h.t.Helper()
	g, err := StartGpulet(expand(h.s.Cmd, h.root), h.s.WorkDir, h.log)
	if err != nil {
		h.t.Fatal(err)
	}
	h.gpulet = g
}

func (h *harness) abort() <-chan struct{} {
	if h.gpulet == nil {
		return nil
	}
	return h.gpulet.Done()
}

// waitFor waits for cond on the kubelet's state; on timeout or a gpulet exit it fails the test
// with what was awaited and what was seen.
func (h *harness) waitFor(t *testing.T, what string, limit time.Duration, cond func(*View) bool) *View {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), h.s.Timeout(limit))
	defer cancel()
	start := time.Now()
	v, err := h.kubelet.WaitFor(ctx, h.abort(), cond)
	if err != nil {
		if exited, how := h.gpulet.Exited(); exited {
			t.Fatalf("waiting for %s: gpulet exited (%s) after %v", what, how, time.Since(start).Round(time.Millisecond))
		}
		t.Fatalf("waiting for %s: nothing after %v (%v); kubelet state: %s", what, h.s.Timeout(limit), err, describe(v))
	}
	return v
}

// registeredAndListed is the condition "every expected resource has a connected plugin in
// this kubelet generation whose last ListAndWatch list has the expected number of devices"
// (a plugin may send a partial list first).
func (h *harness) registeredAndListed(v *View) bool {
	cur := v.Current()
	for _, name := range h.e.ResourceNames() {
		p, ok := cur[name]
		if !ok || p.Updates == 0 || len(p.Devices) != h.e.Resources[name].Count {
			return false
		}
	}
	return true
}

func (h *harness) rpcContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), h.s.Timeout(rpcTimeout))
}

func (h *harness) control(t *testing.T, args []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), h.s.Timeout(controlTimeout))
	defer cancel()
	if err := RunControl(ctx, expand(h.s.Control, h.root), args, h.s.WorkDir, h.log); err != nil {
		t.Fatal(err)
	}
}

// skipIfAsked skips a scenario named in GPULET_CONFORMANCE_SKIP.
func (h *harness) skipIfAsked(t *testing.T, name string) {
	t.Helper()
	if h.s.Skip[name] {
		t.Skipf("%s is skipped because %s names it", name, EnvSkip)
	}
}

func describe(v *View) string {
	if v == nil {
		return "none"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "generation %d", v.Generation)
	if len(v.Plugins) == 0 {
		b.WriteString(", no registrations")
	}
	for _, p := range v.Plugins {
		healthy := 0
		for _, d := range p.Devices {
			if d.Health == "Healthy" {
				healthy++
			}
		}
		state := "connected"
		if p.Disconnected {
			state = "disconnected"
		}
		fmt.Fprintf(&b, "; %s (gen %d, %s, %s): %d lists, %d devices, %d healthy",
			p.Resource, p.Generation, filepath.Base(p.Socket), state, p.Updates, len(p.Devices), healthy)
	}
	return b.String()
}
