package conformance

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr/funcr"
	"k8s.io/klog/v2"
	api "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	plugin "k8s.io/kubernetes/pkg/kubelet/cm/devicemanager/plugin/v1beta1"
)

// checkpointFile is the device manager's checkpoint in the device-plugins directory, the one
// file a starting kubelet keeps there (kubeletDeviceManagerCheckpoint in devicemanager/types.go).
const checkpointFile = "kubelet_internal_checkpoint"

// maxSocketPath is the AF_UNIX sun_path limit, terminating NUL included.
const maxSocketPath = 108

// Plugin is what the kubelet knows about one registered device plugin endpoint.
type Plugin struct {
	Resource string
	Socket   string
	Options  *api.DevicePluginOptions
	// API is the kubelet plugin client's connection to the plugin.
	API api.DevicePluginClient
	// Generation is the kubelet instance (0 for the first, +1 per restart) it registered with.
	Generation   int
	ConnectedAt  time.Time
	Disconnected bool
	// Devices is the last ListAndWatch list, by device ID; nil before the first one.
	Devices map[string]*api.Device
	// Updates counts ListAndWatch responses; FirstListAt is when the first arrived.
	Updates     int
	FirstListAt time.Time
}

// DeviceList returns the plugin's last device list, sorted by ID.
func (p *Plugin) DeviceList() []*api.Device {
	out := make([]*api.Device, 0, len(p.Devices))
	for _, d := range p.Devices {
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Kubelet stands in for the kubelet's device manager: it runs the kubelet's own registration
// server (devicemanager/plugin/v1beta1.NewServer), whose plugin client dials every registered
// plugin and runs ListAndWatch, and it implements the two handler interfaces that server calls,
// as devicemanager.ManagerImpl does, recording what it sees.
type Kubelet struct {
	Root   string // the kubelet root directory
	Dir    string // Root/device-plugins
	Socket string // Dir/kubelet.sock

	logger klog.Logger
	log    *lineLog

	mu         sync.Mutex
	changed    chan struct{}
	server     plugin.Server
	generation int
	startedAt  time.Time
	plugins    []*Plugin // every registration, oldest first
	events     []string
}

// currentLog receives what the kubelet code logs through klog's global logger (the
// registration server's Register handler logs with klog.FromContext of the gRPC context).
var (
	currentLog     atomic.Pointer[lineLog]
	globalLogSetup sync.Once
)

func newLogger(log *lineLog) klog.Logger {
	return funcr.New(func(prefix, args string) {
		log.Printf("kubelet: %s %s", prefix, args)
	}, funcr.Options{Verbosity: 4})
}

// NewKubelet prepares a kubelet stand-in for root; Start starts it.
func NewKubelet(root string, log *lineLog) (*Kubelet, error) {
	dir := filepath.Join(root, "device-plugins")
	sock := filepath.Join(dir, filepath.Base(api.KubeletSocket))
	if len(sock) >= maxSocketPath {
		return nil, fmt.Errorf("kubelet socket path %q is %d bytes; AF_UNIX allows %d: use a shorter %s", sock, len(sock), maxSocketPath-1, EnvTmpDir)
	}
	k := &Kubelet{
		Root:       root,
		Dir:        dir,
		Socket:     sock,
		log:        log,
		changed:    make(chan struct{}),
		generation: -1,
	}
	k.logger = newLogger(log)
	currentLog.Store(log)
	globalLogSetup.Do(func() {
		klog.SetLogger(funcr.New(func(prefix, args string) {
			if l := currentLog.Load(); l != nil {
				l.Printf("kubelet: %s %s", prefix, args)
			}
		}, funcr.Options{Verbosity: 4}))
	})
	return k, nil
}

// Start starts a new kubelet instance: a fresh registration server. Like the kubelet, the
// server first removes every socket in the device-plugins directory (through
// CleanupPluginDirectory below), then listens on kubelet.sock.
func (k *Kubelet) Start() error {
	srv, err := plugin.NewServer(k.logger, k.Socket, k, k)
	if err != nil {
		return err
	}
	k.mu.Lock()
	if k.server != nil {
		k.mu.Unlock()
		return errors.New("kubelet already running")
	}
	k.generation++
	gen := k.generation
	// Plugins may register as soon as Start listens, before it returns.
	k.startedAt = time.Now()
	k.mu.Unlock()
	if err := srv.Start(k.logger); err != nil {
		return fmt.Errorf("registration server: %w", err)
	}
	k.mu.Lock()
	k.server = srv
	k.eventLocked("kubelet generation %d serving %s", gen, k.Socket)
	k.mu.Unlock()
	return nil
}

// Stop stops the running kubelet instance: the server disconnects every plugin client and
// stops serving; kubelet.sock goes away with its listener.
func (k *Kubelet) Stop() error {
	k.mu.Lock()
	srv := k.server
	k.server = nil
	k.mu.Unlock()
	if srv == nil {
		return nil
	}
	err := srv.Stop(k.logger)
	// A dead kubelet leaves no socket behind to dial.
	if rmErr := os.Remove(k.Socket); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) && err == nil {
		err = rmErr
	}
	k.mu.Lock()
	k.eventLocked("kubelet generation %d stopped", k.generation)
	k.mu.Unlock()
	return err
}

// Generation is the current kubelet instance number and when it started serving.
func (k *Kubelet) Generation() (int, time.Time) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.generation, k.startedAt
}

// CleanupPluginDirectory implements plugin.RegistrationHandler as the kubelet's device manager
// does: remove every socket in dir except the checkpoint file.
func (k *Kubelet) CleanupPluginDirectory(logger klog.Logger, dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		if e.Name() == checkpointFile {
			continue
		}
		st, err := os.Stat(path)
		if err != nil {
			logger.Error(err, "Failed to stat file", "path", path)
			continue
		}
		if st.IsDir() || st.Mode()&os.ModeSocket == 0 {
			continue
		}
		if err := os.RemoveAll(path); err != nil {
			errs = append(errs, err)
			continue
		}
		k.mu.Lock()
		k.eventLocked("cleanup removed %s", e.Name())
		k.mu.Unlock()
	}
	return errors.Join(errs...)
}

// PluginConnected implements plugin.ClientHandler as the kubelet's device manager does: it
// asks the plugin for its options (the kubelet always does this before any optional RPC) and
// refuses a second connection on one socket.
func (k *Kubelet) PluginConnected(ctx context.Context, resource string, p plugin.DevicePlugin) error {
	options, err := p.API().GetDevicePluginOptions(ctx, &api.Empty{})
	if err != nil {
		k.mu.Lock()
		k.eventLocked("GetDevicePluginOptions failed for %s at %s: %v", resource, p.SocketPath(), err)
		k.mu.Unlock()
		return fmt.Errorf("failed to get device plugin options: %v", err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, old := range k.plugins {
		if !old.Disconnected && old.Resource == resource && old.Socket == p.SocketPath() {
			return fmt.Errorf("device plugin already connected: %s", p.SocketPath())
		}
	}
	k.plugins = append(k.plugins, &Plugin{
		Resource:    resource,
		Socket:      p.SocketPath(),
		Options:     options,
		API:         p.API(),
		Generation:  k.generation,
		ConnectedAt: time.Now(),
	})
	k.eventLocked("registered %s at %s (options %v)", resource, filepath.Base(p.SocketPath()), options)
	return nil
}

// PluginDisconnected implements plugin.ClientHandler.
func (k *Kubelet) PluginDisconnected(_ klog.Logger, resource, socket string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, p := range k.plugins {
		if !p.Disconnected && p.Resource == resource && p.Socket == socket {
			p.Disconnected = true
			k.eventLocked("disconnected %s at %s", resource, filepath.Base(socket))
		}
	}
}

// PluginListAndWatchReceiver implements plugin.ClientHandler: it keeps the latest list.
func (k *Kubelet) PluginListAndWatchReceiver(_ klog.Logger, resource string, resp *api.ListAndWatchResponse) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var p *Plugin
	for i := len(k.plugins) - 1; i >= 0; i-- {
		if c := k.plugins[i]; c.Resource == resource && !c.Disconnected {
			p = c
			break
		}
	}
	if p == nil {
		k.eventLocked("ListAndWatch response for %s with no connected plugin", resource)
		return
	}
	devs := make(map[string]*api.Device, len(resp.Devices))
	healthy := 0
	for _, d := range resp.Devices {
		devs[d.ID] = d
		if d.Health == api.Healthy {
			healthy++
		}
	}
	if p.Updates == 0 {
		p.FirstListAt = time.Now()
	}
	p.Updates++
	p.Devices = devs
	k.eventLocked("ListAndWatch %s #%d: %d devices, %d healthy", resource, p.Updates, len(resp.Devices), healthy)
	if len(devs) != len(resp.Devices) {
		k.eventLocked("ListAndWatch %s #%d: duplicate device IDs in one list", resource, p.Updates)
	}
}

// eventLocked records an event and wakes every waiter. k.mu must be held.
func (k *Kubelet) eventLocked(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	k.events = append(k.events, time.Now().Format("15:04:05.000")+" "+msg)
	k.log.Printf("kubelet event: %s", msg)
	close(k.changed)
	k.changed = make(chan struct{})
}

// Events returns what the kubelet saw, in order.
func (k *Kubelet) Events() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.events...)
}

// View is a consistent copy of the kubelet's state for a condition to look at.
type View struct {
	Generation int
	StartedAt  time.Time
	Plugins    []Plugin // every registration, oldest first (copies; Devices maps shared read-only)
}

// Current returns, per resource, the newest connected plugin of the current generation.
func (v *View) Current() map[string]*Plugin {
	out := map[string]*Plugin{}
	for i := range v.Plugins {
		p := &v.Plugins[i]
		if p.Generation == v.Generation && !p.Disconnected {
			out[p.Resource] = p
		}
	}
	return out
}

// Registrations counts the registrations of each resource in the current generation.
func (v *View) Registrations() map[string]int {
	out := map[string]int{}
	for i := range v.Plugins {
		if v.Plugins[i].Generation == v.Generation {
			out[v.Plugins[i].Resource]++
		}
	}
	return out
}

func (k *Kubelet) viewLocked() *View {
	v := &View{Generation: k.generation, StartedAt: k.startedAt, Plugins: make([]Plugin, len(k.plugins))}
	for i, p := range k.plugins {
		v.Plugins[i] = *p
	}
	return v
}

// Snapshot returns the kubelet's state now.
func (k *Kubelet) Snapshot() *View {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.viewLocked()
}

// WaitFor waits until cond holds for the kubelet's state, the context ends, or abort (if not
// nil) says to stop (the plugin process died). It wakes on every change, never on a timer.
func (k *Kubelet) WaitFor(ctx context.Context, abort <-chan struct{}, cond func(*View) bool) (*View, error) {
	for {
		k.mu.Lock()
		v := k.viewLocked()
		ch := k.changed
		k.mu.Unlock()
		if cond(v) {
			return v, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return v, ctx.Err()
		case <-abort:
			return v, errors.New("gpulet exited")
		}
	}
}
