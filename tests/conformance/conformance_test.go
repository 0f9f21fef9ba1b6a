package conformance

import (
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	api "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// maxDeviceIDLen is the longest device ID the device-plugin API allows.
const maxDeviceIDLen = 63

// cdiName is a fully qualified CDI device name: vendor.com/class=name.
var cdiName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9.-]*/[a-zA-Z0-9][a-zA-Z0-9_.-]*=[a-zA-Z0-9_.:-]+$`)

// TestDevicePlugin is the kubelet's view of gpulet, in the order a node lives it: gpulet
// starts while the kubelet runs, registers, lists, allocates, loses a device and gets it
// back, and lives through kubelet restarts.
func TestDevicePlugin(t *testing.T) {
	h := newHarness(t)
	h.startKubelet()
	h.startGpulet()

	anyResource := func(pred func(*ResourceExpect) bool) bool {
		for _, name := range h.e.ResourceNames() {
			if pred(h.e.Resources[name]) {
				return true
			}
		}
		return false
	}
	steps := []struct {
		name string
		fn   func(*testing.T, *harness)
		gate bool // later steps make no sense if this one fails
		// why the step does not apply to this scenario ("" when it does); such a step is not
		// created at all, so a run shows only steps that checked something
		outOfScope string
	}{
		{"Registration", testRegistration, true, ""},
		{"ListAndWatch", testListAndWatch, true, ""},
		{"GetPreferredAllocation", testPreferredAllocation, false, unless(
			anyResource(func(r *ResourceExpect) bool { return r.PreferredAllocation }),
			"no resource offers GetPreferredAllocation (checked at registration)")},
		{"Allocate", testAllocate, false, ""},
		{"PreStartContainer", testPreStart, false, unless(
			anyResource(func(r *ResourceExpect) bool { return r.PreStartRequired }),
			"no resource asks for PreStartContainer (checked at registration)")},
		{"HealthChangeAndRecovery", testHealth, false, unless(
			h.e.Health != nil && !h.s.Skip["health"],
			"the scenario has no health check (no health section, or "+EnvSkip+" names it)")},
		{"KubeletRestart", testKubeletRestart, false, unless(
			!h.s.Skip["restart"], EnvSkip+" names restart")},
		{"Shutdown", testShutdown, false, ""},
	}
	for _, st := range steps {
		if st.outOfScope != "" {
			t.Logf("%s: not part of this scenario: %s", st.name, st.outOfScope)
			continue
		}
		if !t.Run(st.name, func(t *testing.T) { st.fn(t, h) }) && st.gate {
			t.Fatalf("%s failed; the later steps need it", st.name)
		}
	}
}

// unless returns why a step is out of scope when applies is false, and "" when it applies.
func unless(applies bool, why string) string {
	if applies {
		return ""
	}
	return why
}

// TestStartBeforeKubelet starts gpulet where no kubelet listens yet, then starts the kubelet
// (which, as a starting kubelet does, removes every socket in device-plugins/): gpulet must
// notice and register every resource.
func TestStartBeforeKubelet(t *testing.T) {
	h := newHarness(t)
	h.skipIfAsked(t, "start-before-kubelet")
	if err := os.MkdirAll(h.kubelet.Dir, 0o750); err != nil {
		t.Fatal(err)
	}
	h.startGpulet()
	// Give gpulet the chance to come up first: wait (bounded) until it serves a socket. A
	// plugin that waits for kubelet.sock before serving is allowed, so no socket is no failure.
	deadline := time.Now().Add(h.s.Timeout(preSocketWait))
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !hasSocket(h.kubelet.Dir) && time.Now().Before(deadline) {
		select {
		case <-h.gpulet.Done():
			_, how := h.gpulet.Exited()
			t.Fatalf("gpulet exited (%s) while no kubelet was running; it must wait for the kubelet", how)
		case <-tick.C:
		}
	}
	if hasSocket(h.kubelet.Dir) {
		t.Logf("gpulet serves a socket before the kubelet exists")
	} else {
		t.Logf("gpulet served no socket within %v without a kubelet; starting the kubelet anyway", h.s.Timeout(preSocketWait))
	}
	h.startKubelet()
	_, t0 := h.kubelet.Generation()
	v := h.waitFor(t, "every resource to register with a kubelet that started after gpulet", startupTimeout, h.registeredAndListed)
	for name, p := range v.Current() {
		t.Logf("%s registered %v after the kubelet started", name, p.ConnectedAt.Sub(t0).Round(time.Millisecond))
	}
	checkLists(t, h, v)
}

func hasSocket(dir string) bool {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range entries {
		if e.Type()&os.ModeSocket != 0 && e.Name() != filepath.Base(api.KubeletSocket) {
			return true
		}
	}
	return false
}

func testRegistration(t *testing.T, h *harness) {
	start := time.Now()
	v := h.waitFor(t, "every expected resource to register ("+strings.Join(h.e.ResourceNames(), ", ")+")", startupTimeout,
		func(v *View) bool {
			cur := v.Current()
			for _, name := range h.e.ResourceNames() {
				if _, ok := cur[name]; !ok {
					return false
				}
			}
			return true
		})
	t.Logf("every resource registered %v after gpulet started", time.Since(start).Round(time.Millisecond))
	for _, p := range v.Plugins {
		if _, ok := h.e.Resources[p.Resource]; !ok && !h.e.AllowExtraResources {
			t.Errorf("gpulet registered %s, which the expectations do not name (set allow_extra_resources to accept it)", p.Resource)
		}
	}
	for name, n := range v.Registrations() {
		if n > 1 {
			t.Errorf("%s registered %d times with one kubelet; once is enough", name, n)
		}
	}
	cur := v.Current()
	for _, name := range h.e.ResourceNames() {
		p, want := cur[name], h.e.Resources[name]
		if filepath.Dir(p.Socket) != h.kubelet.Dir {
			t.Errorf("%s: endpoint %s is not in %s", name, p.Socket, h.kubelet.Dir)
		}
		if st, err := os.Stat(p.Socket); err != nil || st.Mode()&os.ModeSocket == 0 {
			t.Errorf("%s: endpoint %s is not a socket (%v)", name, p.Socket, err)
		}
		if got := p.Options.GetGetPreferredAllocationAvailable(); got != want.PreferredAllocation {
			t.Errorf("%s: get_preferred_allocation_available = %v, want %v", name, got, want.PreferredAllocation)
		}
		if got := p.Options.GetPreStartRequired(); got != want.PreStartRequired {
			t.Errorf("%s: pre_start_required = %v, want %v", name, got, want.PreStartRequired)
		}
		t.Logf("%s registered at %s with options %v", name, filepath.Base(p.Socket), p.Options)
	}
}

func testListAndWatch(t *testing.T, h *harness) {
	v := h.waitFor(t, "a ListAndWatch list with the expected device count from every resource", startupTimeout, h.registeredAndListed)
	checkLists(t, h, v)
}

// checkLists checks every expected resource's last list: count, IDs, health, topology.
func checkLists(t *testing.T, h *harness, v *View) {
	t.Helper()
	cur := v.Current()
	for _, name := range h.e.ResourceNames() {
		p, want := cur[name], h.e.Resources[name]
		devs := p.DeviceList()
		if len(devs) != want.Count {
			t.Errorf("%s: ListAndWatch lists %d devices, want %d", name, len(devs), want.Count)
		}
		var idRe *regexp.Regexp
		if want.IDPattern != "" {
			idRe = regexp.MustCompile(want.IDPattern)
		}
		perNUMA := map[string]int{}
		for _, d := range devs {
			if d.ID == "" || len(d.ID) > maxDeviceIDLen {
				t.Errorf("%s: device ID %q is empty or longer than %d characters", name, d.ID, maxDeviceIDLen)
			}
			if idRe != nil && !idRe.MatchString(d.ID) {
				t.Errorf("%s: device ID %q does not match %s", name, d.ID, want.IDPattern)
			}
			if d.Health != api.Healthy {
				t.Errorf("%s: device %s is %q at start, want %q", name, d.ID, d.Health, api.Healthy)
			}
			if want.NUMA != nil {
				nodes := d.GetTopology().GetNodes()
				if len(nodes) != 1 {
					t.Errorf("%s: device %s has topology %v, want exactly one NUMA node", name, d.ID, d.GetTopology())
					continue
				}
				perNUMA[strconv.FormatInt(nodes[0].GetID(), 10)]++
			}
		}
		if ids := want.ExpectedIDs(); ids != nil {
			got := keys(p.Devices)
			if missing, extra := difference(ids, got), difference(got, ids); len(missing)+len(extra) > 0 {
				t.Errorf("%s: ListAndWatch lists other device IDs than expected: missing %v, unexpected %v", name, missing, extra)
			}
		}
		if want.NUMA != nil && !equalCounts(perNUMA, want.NUMA) {
			t.Errorf("%s: devices per NUMA node %v, want %v", name, perNUMA, want.NUMA)
		}
		t.Logf("%s: %d devices listed (%d lists so far), per NUMA node %v", name, len(devs), p.Updates, perNUMA)
	}
}

func equalCounts(a, b map[string]int) bool {
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	for k, v := range b {
		if a[k] != v {
			return false
		}
	}
	return true
}

func healthyIDs(p *Plugin) []string {
	var ids []string
	for _, d := range p.DeviceList() {
		if d.Health == api.Healthy {
			ids = append(ids, d.ID)
		}
	}
	return ids
}

func numaOf(p *Plugin, id string) (int64, bool) {
	d, ok := p.Devices[id]
	if !ok || len(d.GetTopology().GetNodes()) != 1 {
		return 0, false
	}
	return d.GetTopology().GetNodes()[0].GetID(), true
}

// preferred asks as the kubelet does (one container per call) and checks the answer's shape.
func preferred(t *testing.T, h *harness, p *Plugin, available, must []string, size int) []string {
	t.Helper()
	ctx, cancel := h.rpcContext()
	defer cancel()
	start := time.Now()
	resp, err := p.API.GetPreferredAllocation(ctx, &api.PreferredAllocationRequest{
		ContainerRequests: []*api.ContainerPreferredAllocationRequest{{
			AvailableDeviceIDs:   available,
			MustIncludeDeviceIDs: must,
			AllocationSize:       int32(size),
		}},
	})
	took := time.Since(start)
	if err != nil {
		t.Errorf("%s: GetPreferredAllocation(size %d, %d available, must %v): %v", p.Resource, size, len(available), must, err)
		return nil
	}
	if n := len(resp.GetContainerResponses()); n != 1 {
		t.Errorf("%s: GetPreferredAllocation answered %d container responses for 1 request", p.Resource, n)
		return nil
	}
	got := resp.GetContainerResponses()[0].GetDeviceIDs()
	t.Logf("%s: preferred(size %d, must %v) = %v in %v", p.Resource, size, must, got, took.Round(time.Microsecond))
	if len(got) != size {
		t.Errorf("%s: GetPreferredAllocation(size %d) returned %d devices: %v", p.Resource, size, len(got), got)
	}
	avail := set(available)
	seen := map[string]bool{}
	for _, id := range got {
		if !avail[id] {
			t.Errorf("%s: GetPreferredAllocation returned %s, which was not available", p.Resource, id)
		}
		if seen[id] {
			t.Errorf("%s: GetPreferredAllocation returned %s twice", p.Resource, id)
		}
		seen[id] = true
	}
	for _, id := range must {
		if !seen[id] {
			t.Errorf("%s: GetPreferredAllocation left out %s, which must be included", p.Resource, id)
		}
	}
	return got
}

func set(xs []string) map[string]bool {
	m := make(map[string]bool, len(xs))
	for _, x := range xs {
		m[x] = true
	}
	return m
}

func testPreferredAllocation(t *testing.T, h *harness) {
	cur := h.kubelet.Snapshot().Current()
	ran := false
	for _, name := range h.e.ResourceNames() {
		p, want := cur[name], h.e.Resources[name]
		if p == nil {
			t.Fatalf("%s is not registered", name)
		}
		if !want.PreferredAllocation || !p.Options.GetGetPreferredAllocationAvailable() {
			continue
		}
		ran = true
		avail := healthyIDs(p)
		for _, size := range want.Preferred.Sizes {
			if size > len(avail) {
				continue
			}
			got := preferred(t, h, p, avail, nil, size)
			if size <= want.Preferred.SameNUMAUpTo && len(got) == size {
				nodes := map[int64]bool{}
				for _, id := range got {
					if n, ok := numaOf(p, id); ok {
						nodes[n] = true
					}
				}
				if len(nodes) > 1 {
					t.Errorf("%s: preferred %d devices span NUMA nodes %v; want one node for sizes up to %d", name, size, nodes, want.Preferred.SameNUMAUpTo)
				}
			}
			if size <= want.Preferred.SpreadUpTo && len(got) == size {
				var physical []string
				for _, id := range got {
					physical = append(physical, strings.SplitN(id, "::", 2)[0])
				}
				if n := len(unique(physical)); n != size {
					t.Errorf("%s: preferred %d replicas %v are of %d devices; want %d distinct devices for sizes up to %d", name, size, got, n, size, want.Preferred.SpreadUpTo)
				}
			}
		}
		// A device that must be included, and a restricted available set.
		if len(avail) >= 2 {
			must := []string{avail[len(avail)-1]}
			preferred(t, h, p, avail, must, 2)
			preferred(t, h, p, avail, avail[:2], 2)
			odd := []string{}
			for i := 1; i < len(avail); i += 2 {
				odd = append(odd, avail[i])
			}
			preferred(t, h, p, odd, nil, 1)
		}
	}
	if !ran {
		t.Fatal("the expectations promise GetPreferredAllocation but no registered resource offers it")
	}
}

// allocate asks as the kubelet does (one container per call) and checks the answer.
func allocate(t *testing.T, h *harness, p *Plugin, want *ResourceExpect, ids []string) {
	t.Helper()
	ctx, cancel := h.rpcContext()
	defer cancel()
	start := time.Now()
	resp, err := p.API.Allocate(ctx, &api.AllocateRequest{
		ContainerRequests: []*api.ContainerAllocateRequest{{DevicesIds: ids}},
	})
	took := time.Since(start)
	if err != nil {
		t.Errorf("%s: Allocate(%v): %v", p.Resource, ids, err)
		return
	}
	if n := len(resp.GetContainerResponses()); n != 1 {
		t.Errorf("%s: Allocate answered %d container responses for 1 request", p.Resource, n)
		return
	}
	r := resp.GetContainerResponses()[0]
	var mounts []string
	for _, m := range r.GetMounts() {
		mounts = append(mounts, m.GetContainerPath()+" from "+m.GetHostPath())
	}
	t.Logf("%s: Allocate(%v) in %v: envs %v, cdi %v, %d device specs, mounts %v, annotations %v",
		p.Resource, ids, took.Round(time.Microsecond), r.GetEnvs(), r.GetCdiDevices(), len(r.GetDevices()), mounts, r.GetAnnotations())
	a := want.Allocate
	// What the container is told: the device IDs without replica suffixes, or their indices.
	var cids []string
	for _, id := range ids {
		cid, ok := h.e.ContainerID(a.IDStrategy, id)
		if !ok {
			t.Errorf("%s: the expectations' indices have no entry for %s", p.Resource, id)
			continue
		}
		cids = append(cids, cid)
	}
	cids = unique(cids)
	envs := r.GetEnvs()
	for _, name := range a.EnvIDs {
		v, ok := envs[name]
		if !ok {
			t.Errorf("%s: Allocate response has no env %s", p.Resource, name)
			continue
		}
		if got := unique(strings.Split(v, ",")); !sameSet(got, cids) {
			t.Errorf("%s: env %s=%q, want %v (the allocated devices' %s IDs, any order)", p.Resource, name, v, cids, a.IDStrategy)
		}
	}
	if m := a.MountsPerID; m != nil {
		var wantMounts []string
		for _, cid := range cids {
			wantMounts = append(wantMounts, strings.ReplaceAll(m.ContainerPath, "{id}", cid)+" from "+m.HostPath)
		}
		if got := unique(mounts); !sameSet(got, wantMounts) {
			t.Errorf("%s: mounts %v, want %v", p.Resource, got, wantMounts)
		}
	}
	for name, val := range a.Env {
		if got, ok := envs[name]; !ok || got != val {
			t.Errorf("%s: env %s=%q (set: %v), want %q", p.Resource, name, got, ok, val)
		}
	}
	for _, name := range a.EnvPresent {
		if envs[name] == "" {
			t.Errorf("%s: env %s is not set", p.Resource, name)
		}
	}
	var cdi []string
	for _, d := range r.GetCdiDevices() {
		cdi = append(cdi, d.GetName())
		if !cdiName.MatchString(d.GetName()) {
			t.Errorf("%s: CDI device name %q is not fully qualified (vendor.com/class=name)", p.Resource, d.GetName())
		}
	}
	if len(cdi) < a.MinCDIDevices {
		t.Errorf("%s: %d CDI devices, want at least %d", p.Resource, len(cdi), a.MinCDIDevices)
	}
	if a.CDIDevice != "" {
		var wantCDI []string
		for _, cid := range cids {
			wantCDI = append(wantCDI, strings.ReplaceAll(a.CDIDevice, "{id}", cid))
		}
		if !sameSet(unique(cdi), wantCDI) {
			t.Errorf("%s: CDI devices %v, want %v", p.Resource, cdi, wantCDI)
		}
	}
	if n := len(r.GetDevices()); n < a.MinDeviceSpecs {
		t.Errorf("%s: %d device specs, want at least %d", p.Resource, n, a.MinDeviceSpecs)
	}
	for _, d := range r.GetDevices() {
		if !filepath.IsAbs(d.GetContainerPath()) || !filepath.IsAbs(d.GetHostPath()) {
			t.Errorf("%s: device spec %v: paths must be absolute", p.Resource, d)
		}
		if perm := d.GetPermissions(); perm == "" || strings.Trim(perm, "rwm") != "" {
			t.Errorf("%s: device spec %v: permissions %q, want some of r, w, m", p.Resource, d, perm)
		}
	}
	for _, m := range r.GetMounts() {
		if !filepath.IsAbs(m.GetContainerPath()) || !filepath.IsAbs(m.GetHostPath()) {
			t.Errorf("%s: mount %v: paths must be absolute", p.Resource, m)
		}
	}
}

// unique returns xs without repeats, in first-seen order.
func unique(xs []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range xs {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

// difference returns the members of a not in b, sorted.
func difference(a, b []string) []string {
	in := set(b)
	var out []string
	for _, x := range a {
		if !in[x] {
			out = append(out, x)
		}
	}
	sort.Strings(out)
	return out
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	x, y := append([]string(nil), a...), append([]string(nil), b...)
	sort.Strings(x)
	sort.Strings(y)
	for i := range x {
		if x[i] != y[i] {
			return false
		}
	}
	return true
}

// allocationFor picks the devices the kubelet would: the plugin's preference where it has one.
func allocationFor(t *testing.T, h *harness, p *Plugin, want *ResourceExpect) []string {
	t.Helper()
	avail := healthyIDs(p)
	if len(avail) < want.Allocate.Size {
		t.Fatalf("%s: %d healthy devices, cannot allocate %d", p.Resource, len(avail), want.Allocate.Size)
	}
	if p.Options.GetGetPreferredAllocationAvailable() {
		if got := preferred(t, h, p, avail, nil, want.Allocate.Size); len(got) == want.Allocate.Size {
			return got
		}
	}
	return avail[:want.Allocate.Size]
}

func testAllocate(t *testing.T, h *harness) {
	cur := h.kubelet.Snapshot().Current()
	for _, name := range h.e.ResourceNames() {
		p, want := cur[name], h.e.Resources[name]
		if p == nil {
			t.Fatalf("%s is not registered", name)
		}
		ids := allocationFor(t, h, p, want)
		allocate(t, h, p, want, ids)
		// The kubelet may ask again for the same devices (init containers, restarts).
		allocate(t, h, p, want, ids)
		if want.Allocate.RejectUnknownIDs {
			ctx, cancel := h.rpcContext()
			_, err := p.API.Allocate(ctx, &api.AllocateRequest{
				ContainerRequests: []*api.ContainerAllocateRequest{{DevicesIds: []string{"gpulet-conformance-no-such-device"}}},
			})
			cancel()
			if err == nil {
				t.Errorf("%s: Allocate of a device ID that was never listed succeeded; it must fail", name)
			}
		}
		if n := want.Allocate.MaxRequestSize; n > 0 {
			avail := healthyIDs(p)
			if len(avail) <= n {
				t.Fatalf("%s: %d healthy devices, cannot ask for %d", name, len(avail), n+1)
			}
			over := avail[:n+1]
			ctx, cancel := h.rpcContext()
			_, err := p.API.Allocate(ctx, &api.AllocateRequest{
				ContainerRequests: []*api.ContainerAllocateRequest{{DevicesIds: over}},
			})
			cancel()
			if err == nil {
				t.Errorf("%s: Allocate of %d devices %v succeeded; more than %d must fail", name, n+1, over, n)
			} else {
				t.Logf("%s: Allocate of %d devices refused: %v", name, n+1, err)
			}
		}
	}
}

func testPreStart(t *testing.T, h *harness) {
	cur := h.kubelet.Snapshot().Current()
	ran := false
	for _, name := range h.e.ResourceNames() {
		p := cur[name]
		if p == nil || !p.Options.GetPreStartRequired() {
			continue
		}
		ran = true
		ids := healthyIDs(p)[:1]
		ctx, cancel := h.rpcContext()
		if _, err := p.API.PreStartContainer(ctx, &api.PreStartContainerRequest{DevicesIds: ids}); err != nil {
			t.Errorf("%s: PreStartContainer(%v): %v", name, ids, err)
		}
		cancel()
	}
	if !ran {
		t.Fatal("the expectations promise PreStartContainer but no registered resource asks for it")
	}
}

func countHealth(p *Plugin) (healthy, unhealthy []string) {
	for _, d := range p.DeviceList() {
		if d.Health == api.Healthy {
			healthy = append(healthy, d.ID)
		} else {
			unhealthy = append(unhealthy, d.ID)
		}
	}
	return healthy, unhealthy
}

func testHealth(t *testing.T, h *harness) {
	he := h.e.Health
	if h.s.Control == "" {
		t.Fatalf("%s is unset: the health scenario injects faults through it. Set it to the control "+
			"command prefix (see tests/conformance/README.md), or name \"health\" in %s to leave the scenario out deliberately", EnvControl, EnvSkip)
	}
	name, want := he.Resource, h.e.Resources[he.Resource]
	before := h.kubelet.Snapshot()
	p0 := before.Current()[name]
	if p0 == nil {
		t.Fatalf("%s is not registered", name)
	}
	regs0 := before.Registrations()[name]
	updates0 := p0.Updates

	for _, cmd := range he.Inject {
		h.control(t, cmd)
	}
	injected := time.Now()
	v := h.waitFor(t, name+" devices to turn Unhealthy on the ListAndWatch stream", unhealthyWait, func(v *View) bool {
		p := v.Current()[name]
		if p == nil {
			return false
		}
		_, bad := countHealth(p)
		return len(bad) >= he.UnhealthyCount
	})
	p := v.Current()[name]
	healthy, bad := countHealth(p)
	t.Logf("%s: %v Unhealthy %v after the fault (list #%d)", name, bad, time.Since(injected).Round(time.Millisecond), p.Updates)
	if len(bad) != he.UnhealthyCount {
		t.Errorf("%s: %d devices Unhealthy %v, want %d", name, len(bad), bad, he.UnhealthyCount)
	}
	if len(healthy)+len(bad) != want.Count {
		t.Errorf("%s: %d devices listed after the fault, want all %d (an unhealthy device stays listed)", name, len(healthy)+len(bad), want.Count)
	}
	if he.DeviceID != "" && !set(bad)[he.DeviceID] {
		t.Errorf("%s: %s did not turn Unhealthy (Unhealthy: %v)", name, he.DeviceID, bad)
	}
	if he.NUMA != nil {
		for _, id := range bad {
			if n, ok := numaOf(p, id); !ok || n != *he.NUMA {
				t.Errorf("%s: Unhealthy device %s is on NUMA node %d (known: %v), want %d", name, id, n, ok, *he.NUMA)
			}
		}
	}
	if p.Socket != p0.Socket || v.Registrations()[name] != regs0 || p.Updates <= updates0 {
		t.Errorf("%s: the health change must come as a new list on the open ListAndWatch stream, not a new registration", name)
	}

	for _, cmd := range he.Recover {
		h.control(t, cmd)
	}
	recovering := time.Now()
	v = h.waitFor(t, name+" devices to turn Healthy again", recoverWait, func(v *View) bool {
		p := v.Current()[name]
		if p == nil {
			return false
		}
		healthy, bad := countHealth(p)
		return len(bad) == 0 && len(healthy) == want.Count
	})
	p = v.Current()[name]
	t.Logf("%s: every device Healthy again %v after recovery (list #%d)", name, time.Since(recovering).Round(time.Millisecond), p.Updates)
	if !sameSet(healthyIDs(p), healthyIDs(p0)) {
		t.Errorf("%s: devices after recovery %v, before the fault %v", name, healthyIDs(p), healthyIDs(p0))
	}
}

func testKubeletRestart(t *testing.T, h *harness) {
	limit := time.Duration(h.e.KubeletRestart.MaxSeconds * float64(time.Second))
	for _, downtime := range []time.Duration{0, time.Duration(h.e.KubeletRestart.DowntimeMS) * time.Millisecond} {
		label := "immediate"
		if downtime > 0 {
			label = "after " + downtime.String() + " down"
		}
		t.Run(strings.ReplaceAll(label, " ", "_"), func(t *testing.T) {
			before := h.kubelet.Snapshot().Current()
			if err := h.kubelet.Stop(); err != nil {
				t.Fatalf("stopping the kubelet: %v", err)
			}
			if _, err := os.Stat(h.kubelet.Socket); !os.IsNotExist(err) {
				t.Fatalf("kubelet.sock still there after the kubelet stopped: %v", err)
			}
			if downtime > 0 {
				// The scenario itself: the kubelet is down for this long.
				select {
				case <-time.After(downtime):
				case <-h.gpulet.Done():
					_, how := h.gpulet.Exited()
					t.Fatalf("gpulet exited (%s) while the kubelet was down", how)
				}
			}
			h.startKubelet()
			gen, t0 := h.kubelet.Generation()
			v := h.waitFor(t, "every resource to re-register with the restarted kubelet", reregisterWait, h.registeredAndListed)
			if v.Generation != gen {
				t.Fatalf("kubelet generation %d, want %d", v.Generation, gen)
			}
			var slowest time.Duration
			for _, name := range h.e.ResourceNames() {
				p := v.Current()[name]
				reg, list := p.ConnectedAt.Sub(t0), p.FirstListAt.Sub(t0)
				slowest = max(slowest, reg)
				t.Logf("kubelet restart (%s): %s re-registered %v after kubelet.sock reappeared, first ListAndWatch list at %v",
					label, name, reg.Round(time.Millisecond), list.Round(time.Millisecond))
				if old := before[name]; old != nil && !sameSet(keys(p.Devices), keys(old.Devices)) {
					t.Errorf("%s: devices after the restart %v, before %v", name, keys(p.Devices), keys(old.Devices))
				}
			}
			t.Logf("kubelet restart (%s): re-registration took %v (limit %v)", label, slowest.Round(time.Millisecond), limit)
			if slowest > limit {
				t.Errorf("gpulet took %v to re-register after a kubelet restart (%s); the limit is %v", slowest.Round(time.Millisecond), label, limit)
			}
			for name, n := range v.Registrations() {
				if n > 1 {
					t.Logf("note: %s registered %d times with the restarted kubelet", name, n)
				}
			}
			checkLists(t, h, v)
			// The new connection serves allocations.
			for _, name := range h.e.ResourceNames() {
				p, want := v.Current()[name], h.e.Resources[name]
				allocate(t, h, p, want, allocationFor(t, h, p, want))
			}
		})
	}
}

func keys(m map[string]*api.Device) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func testShutdown(t *testing.T, h *harness) {
	start := time.Now()
	how, killed := h.gpulet.Stop(h.s.Timeout(stopGrace))
	if killed {
		t.Errorf("gpulet did not exit within %v of SIGTERM (%s)", h.s.Timeout(stopGrace), how)
		return
	}
	t.Logf("gpulet exited %v after SIGTERM: %s", time.Since(start).Round(time.Millisecond), how)
}
