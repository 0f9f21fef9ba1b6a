package conformance

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Environment variables the suite reads (README.md describes each).
const (
	EnvCmd          = "GPULET_CONFORMANCE_CMD"
	EnvControl      = "GPULET_CONFORMANCE_CONTROL"
	EnvExpect       = "GPULET_CONFORMANCE_EXPECT"
	EnvSkip         = "GPULET_CONFORMANCE_SKIP"
	EnvTimeoutScale = "GPULET_CONFORMANCE_TIMEOUT_SCALE"
	EnvTmpDir       = "GPULET_CONFORMANCE_TMPDIR"
	EnvWorkDir      = "GPULET_CONFORMANCE_WORKDIR"
	EnvKeep         = "GPULET_CONFORMANCE_KEEP"
)

// DefaultExpectFile is used when GPULET_CONFORMANCE_EXPECT is unset (relative to this package).
const DefaultExpectFile = "testdata/dgx-h100.json"

// Expectations say what gpulet must serve for one node spec and config.
type Expectations struct {
	// Resources maps each resource name gpulet must register to what it must serve.
	Resources map[string]*ResourceExpect `json:"resources"`
	// AllowExtraResources accepts registrations of resources not named in Resources.
	AllowExtraResources bool `json:"allow_extra_resources"`
	// Health is the health-change scenario; null disables it (then it is reported as skipped).
	Health *HealthExpect `json:"health"`
	// KubeletRestart is the kubelet-restart scenario.
	KubeletRestart RestartExpect `json:"kubelet_restart"`
	// Indices maps a GPU or MIG UUID to NVIDIA's index for it ("3", "3:1"), for
	// allocate.id_strategy "index".
	Indices map[string]string `json:"indices"`
}

// ResourceExpect is what one registered resource must serve.
type ResourceExpect struct {
	// Count is the number of devices ListAndWatch must list.
	Count int `json:"count"`
	// IDPattern, if set, is a regular expression every device ID must match.
	IDPattern string `json:"id_pattern"`
	// IDs, if set, are the device IDs ListAndWatch must list (exactly these), or with Replicas
	// the devices whose replicas it must list.
	IDs []string `json:"ids"`
	// Replicas, if set, makes every entry of IDs stand for the replica IDs "<id>::0" to
	// "<id>::<replicas-1>" (NVIDIA's annotated IDs for time-slicing and MPS).
	Replicas int `json:"replicas"`
	// NUMA, if set, maps a NUMA node ID (as a string) to the number of devices on it. Every
	// device must then carry exactly one NUMA node in its topology.
	NUMA map[string]int `json:"numa"`
	// PreferredAllocation is the expected get_preferred_allocation_available option.
	PreferredAllocation bool `json:"preferred_allocation"`
	// PreStartRequired is the expected pre_start_required option.
	PreStartRequired bool `json:"pre_start_required"`
	// Preferred drives GetPreferredAllocation (only when PreferredAllocation).
	Preferred PreferredExpect `json:"preferred"`
	// Allocate drives Allocate.
	Allocate AllocateExpect `json:"allocate"`
}

// PreferredExpect drives GetPreferredAllocation.
type PreferredExpect struct {
	// Sizes are the allocation sizes asked for (default: 1, 2 and the device count).
	Sizes []int `json:"sizes"`
	// SameNUMAUpTo: for any size up to this, with nothing that must be included, every
	// preferred device must sit on one NUMA node. 0 disables the check.
	SameNUMAUpTo int `json:"same_numa_up_to"`
	// SpreadUpTo: for any size up to this, with nothing that must be included, the preferred
	// replicas must be of distinct devices (NVIDIA's "distributed" policy on a node with nothing
	// allocated). 0 disables the check.
	SpreadUpTo int `json:"spread_up_to"`
}

// AllocateExpect drives Allocate and says what its response must hold.
type AllocateExpect struct {
	// Size is how many devices one container asks for (default 1).
	Size int `json:"size"`
	// EnvIDs names env vars whose value must be the IDs the container is told, comma-separated,
	// in any order (repeats count once): each allocated device ID without its replica suffix
	// ("::<n>"), mapped through the top-level indices under IDStrategy "index".
	EnvIDs []string `json:"env_ids"`
	// IDStrategy is NVIDIA's deviceIDStrategy the container IDs follow: "uuid" (default) or
	// "index".
	IDStrategy string `json:"id_strategy"`
	// MountsPerID, if set, says the response's mounts must be exactly one per container ID
	// (as for EnvIDs): ContainerPath with "{id}" replaced by the ID, from HostPath.
	MountsPerID *MountExpect `json:"mounts_per_id"`
	// Env maps env var names to their exact expected values.
	Env map[string]string `json:"env"`
	// EnvPresent names env vars that must be set to something non-empty.
	EnvPresent []string `json:"env_present"`
	// CDIDevice, if set, is a template ("nvidia.com/gpu={id}") every container ID (as for
	// EnvIDs) expands to; the response's CDI device names must be exactly that set.
	CDIDevice string `json:"cdi_device"`
	// MinCDIDevices is the least number of CDI devices in the response.
	MinCDIDevices int `json:"min_cdi_devices"`
	// MinDeviceSpecs is the least number of DeviceSpecs in the response.
	MinDeviceSpecs int `json:"min_device_specs"`
	// RejectUnknownIDs: Allocate of a device ID that was never listed must fail.
	RejectUnknownIDs bool `json:"reject_unknown_ids"`
	// MaxRequestSize, if set, is the most devices one container may ask for: Allocate of one
	// more (distinct, listed, healthy) must fail (NVIDIA's failRequestsGreaterThanOne: 1).
	MaxRequestSize int `json:"max_request_size"`
}

// MountExpect is one mount per container ID.
type MountExpect struct {
	// ContainerPath is a template: "{id}" is replaced by the container ID.
	ContainerPath string `json:"container_path"`
	// HostPath is the host path of every such mount.
	HostPath string `json:"host_path"`
}

// HealthExpect is the health-change scenario, driven through GPULET_CONFORMANCE_CONTROL.
type HealthExpect struct {
	// Resource is the resource whose devices are watched (default: the only resource, or
	// nvidia.com/gpu).
	Resource string `json:"resource"`
	// Inject are control commands (argument lists appended to GPULET_CONFORMANCE_CONTROL)
	// that make a device unhealthy.
	Inject [][]string `json:"inject"`
	// Recover are control commands that make it healthy again.
	Recover [][]string `json:"recover"`
	// DeviceID, if set, is the device that must turn Unhealthy.
	DeviceID string `json:"device_id"`
	// NUMA, if set, is the NUMA node of the device that must turn Unhealthy.
	NUMA *int64 `json:"numa"`
	// UnhealthyCount is how many devices must turn Unhealthy (default 1).
	UnhealthyCount int `json:"unhealthy_count"`
}

// RestartExpect is the kubelet-restart scenario.
type RestartExpect struct {
	// MaxSeconds is the longest gpulet may take to re-register every resource after the new
	// kubelet socket appears (default 5).
	MaxSeconds float64 `json:"max_seconds"`
	// DowntimeMS is how long the second restart leaves the kubelet down (default 1000);
	// the first restart is immediate.
	DowntimeMS int `json:"downtime_ms"`
}

// LoadExpectations reads and checks an expectations file and fills in defaults.
func LoadExpectations(path string) (*Expectations, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("expectations file: %w", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	var e Expectations
	if err := dec.Decode(&e); err != nil {
		return nil, fmt.Errorf("expectations file %s: %w", path, err)
	}
	if len(e.Resources) == 0 {
		return nil, fmt.Errorf("expectations file %s: \"resources\" must name at least one resource", path)
	}
	for name, r := range e.Resources {
		if r == nil {
			return nil, fmt.Errorf("expectations file %s: resource %q is null", path, name)
		}
		if r.Count <= 0 {
			return nil, fmt.Errorf("expectations file %s: resource %q: \"count\" must be > 0", path, name)
		}
		if r.IDPattern != "" {
			if _, err := regexp.Compile(r.IDPattern); err != nil {
				return nil, fmt.Errorf("expectations file %s: resource %q: id_pattern: %w", path, name, err)
			}
		}
		for k, v := range r.NUMA {
			if _, err := strconv.ParseInt(k, 10, 64); err != nil || v < 0 {
				return nil, fmt.Errorf("expectations file %s: resource %q: numa keys must be NUMA node IDs and values counts, got %q: %d", path, name, k, v)
			}
		}
		if r.Replicas < 0 || (r.Replicas > 0 && len(r.IDs) == 0) {
			return nil, fmt.Errorf("expectations file %s: resource %q: \"replicas\" needs \"ids\" and must be > 0", path, name)
		}
		if len(r.IDs) > 0 && len(r.ExpectedIDs()) != r.Count {
			return nil, fmt.Errorf("expectations file %s: resource %q: \"ids\" name %d devices, \"count\" says %d", path, name, len(r.ExpectedIDs()), r.Count)
		}
		if len(r.Preferred.Sizes) == 0 {
			r.Preferred.Sizes = uniqueSorted([]int{1, min(2, r.Count), r.Count})
		}
		for _, s := range r.Preferred.Sizes {
			if s <= 0 || s > r.Count {
				return nil, fmt.Errorf("expectations file %s: resource %q: preferred size %d outside 1..%d", path, name, s, r.Count)
			}
		}
		if r.Allocate.Size == 0 {
			r.Allocate.Size = 1
		}
		if r.Allocate.Size > r.Count {
			return nil, fmt.Errorf("expectations file %s: resource %q: allocate size %d > count %d", path, name, r.Allocate.Size, r.Count)
		}
		switch r.Allocate.IDStrategy {
		case "":
			r.Allocate.IDStrategy = "uuid"
		case "uuid":
		case "index":
			if len(e.Indices) == 0 {
				return nil, fmt.Errorf("expectations file %s: resource %q: id_strategy \"index\" needs the top-level \"indices\"", path, name)
			}
		default:
			return nil, fmt.Errorf("expectations file %s: resource %q: id_strategy must be \"uuid\" or \"index\", got %q", path, name, r.Allocate.IDStrategy)
		}
		if m := r.Allocate.MountsPerID; m != nil && (!strings.Contains(m.ContainerPath, "{id}") || m.HostPath == "") {
			return nil, fmt.Errorf("expectations file %s: resource %q: mounts_per_id needs a container_path with {id} and a host_path", path, name)
		}
		if n := r.Allocate.MaxRequestSize; n < 0 || (n > 0 && (n >= r.Count || r.Allocate.Size > n)) {
			return nil, fmt.Errorf("expectations file %s: resource %q: max_request_size %d must be in 1..count-1 and at least the allocate size %d", path, name, n, r.Allocate.Size)
		}
	}
	if h := e.Health; h != nil {
		if h.Resource == "" {
			if len(e.Resources) == 1 {
				for name := range e.Resources {
					h.Resource = name
				}
			} else {
				h.Resource = "nvidia.com/gpu"
			}
		}
		if _, ok := e.Resources[h.Resource]; !ok {
			return nil, fmt.Errorf("expectations file %s: health.resource %q is not in resources", path, h.Resource)
		}
		if len(h.Inject) == 0 || len(h.Recover) == 0 {
			return nil, fmt.Errorf("expectations file %s: health needs \"inject\" and \"recover\" command lists", path)
		}
		if h.UnhealthyCount == 0 {
			h.UnhealthyCount = 1
		}
	}
	if e.KubeletRestart.MaxSeconds == 0 {
		e.KubeletRestart.MaxSeconds = 5
	}
	if e.KubeletRestart.DowntimeMS == 0 {
		e.KubeletRestart.DowntimeMS = 1000
	}
	return &e, nil
}

// ExpectedIDs is the exact set of device IDs to list (nil: not checked).
func (r *ResourceExpect) ExpectedIDs() []string {
	if r.Replicas == 0 {
		return r.IDs
	}
	var out []string
	for _, id := range r.IDs {
		for n := 0; n < r.Replicas; n++ {
			out = append(out, id+"::"+strconv.Itoa(n))
		}
	}
	return out
}

// ContainerID is what the container is told for an allocated device ID under NVIDIA's
// deviceIDStrategy: the ID without its replica suffix, or that device's index.
func (e *Expectations) ContainerID(strategy, id string) (string, bool) {
	if i := strings.Index(id, "::"); i >= 0 {
		id = id[:i]
	}
	if strategy != "index" {
		return id, true
	}
	idx, ok := e.Indices[id]
	return idx, ok
}

// ResourceNames returns the expected resource names, sorted.
func (e *Expectations) ResourceNames() []string {
	names := make([]string, 0, len(e.Resources))
	for n := range e.Resources {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func uniqueSorted(xs []int) []int {
	sort.Ints(xs)
	out := xs[:0]
	for i, x := range xs {
		if i == 0 || x != xs[i-1] {
			out = append(out, x)
		}
	}
	return out
}

// Settings are the suite's environment, read once.
type Settings struct {
	Cmd          string
	Control      string
	ExpectPath   string
	Skip         map[string]bool
	TimeoutScale float64
	TmpDir       string
	WorkDir      string
	Keep         bool
}

// LoadSettings reads the environment. A missing GPULET_CONFORMANCE_CMD is an error: the suite
// must never pass without talking to gpulet.
func LoadSettings() (*Settings, error) {
	s := &Settings{
		Cmd:          strings.TrimSpace(os.Getenv(EnvCmd)),
		Control:      strings.TrimSpace(os.Getenv(EnvControl)),
		ExpectPath:   os.Getenv(EnvExpect),
		Skip:         map[string]bool{},
		TimeoutScale: 1,
		TmpDir:       os.Getenv(EnvTmpDir),
		WorkDir:      os.Getenv(EnvWorkDir),
		Keep:         os.Getenv(EnvKeep) != "" && os.Getenv(EnvKeep) != "0",
	}
	if s.Cmd == "" {
		return nil, fmt.Errorf("%s is unset: set it to the command line that starts gpulet, with {root} "+
			"where the kubelet root directory goes, e.g. %s='.venv/bin/gpulet simulate --spec dgx-h100 --root {root}' "+
			"(scripts/conformance sets it)", EnvCmd, EnvCmd)
	}
	if !strings.Contains(s.Cmd, "{root}") {
		return nil, fmt.Errorf("%s=%q has no {root} placeholder: gpulet must be told the kubelet root directory", EnvCmd, s.Cmd)
	}
	if s.ExpectPath == "" {
		s.ExpectPath = DefaultExpectFile
	}
	for _, name := range strings.Split(os.Getenv(EnvSkip), ",") {
		if name = strings.TrimSpace(name); name != "" {
			s.Skip[name] = true
		}
	}
	if v := os.Getenv(EnvTimeoutScale); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f <= 0 {
			return nil, fmt.Errorf("%s=%q: want a positive number", EnvTimeoutScale, v)
		}
		s.TimeoutScale = f
	}
	if s.TmpDir == "" {
		s.TmpDir = "/tmp"
	}
	if s.WorkDir == "" {
		// go test runs in tests/conformance; commands run from the repository root.
		s.WorkDir = filepath.Join("..", "..")
	}
	wd, err := filepath.Abs(s.WorkDir)
	if err != nil {
		return nil, err
	}
	s.WorkDir = wd
	return s, nil
}

// Timeout scales a base duration by GPULET_CONFORMANCE_TIMEOUT_SCALE.
func (s *Settings) Timeout(base time.Duration) time.Duration {
	return time.Duration(float64(base) * s.TimeoutScale)
}
