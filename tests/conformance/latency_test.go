//go:build latency

package conformance

// TestLatency is a benchmark, compiled only with -tags latency (scripts/conformance --latency):
// per-call latency of gpulet's device-plugin RPCs through the kubelet's own plugin client
// connection, the one the conformance suite uses. Results: benches/RESULTS.md, "Device plugin".

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	api "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// EnvLatencyCalls overrides the number of calls per caller (default 3,000 for one caller and
// 300 each for 16); the test command sets it small so that the benchmark cannot rot.
const EnvLatencyCalls = "GPULET_LATENCY_CALLS"

// latencyTarget is the goal for one caller's p99 (benches/RESULTS.md).
const latencyTarget = 2 * time.Millisecond

// latencyCall makes one call for caller k, call i (i = -1: the untimed warm-up call).
type latencyCall func(ctx context.Context, k, i int) error

type latencyCase struct {
	name string
	call latencyCall
}

type latencyResult struct {
	name           string
	callers, calls int
	p50, p99, mean time.Duration
	max            time.Duration
}

func TestLatency(t *testing.T) {
	h := newHarness(t)
	h.startKubelet()
	h.startGpulet()
	v := h.waitFor(t, "every expected resource to register and list its devices", startupTimeout, h.registeredAndListed)

	// The resource to measure: nvidia.com/gpu if expected, else the first expected resource.
	names := h.e.ResourceNames()
	resource := names[0]
	for _, n := range names {
		if n == "nvidia.com/gpu" {
			resource = n
		}
	}
	p := v.Current()[resource]
	ids := healthyIDs(p)
	n := len(ids)
	if n < 4 {
		t.Fatalf("%s: %d healthy devices; the benchmark needs at least 4", resource, n)
	}
	if !p.Options.GetGetPreferredAllocationAvailable() {
		t.Fatalf("%s does not offer GetPreferredAllocation", resource)
	}
	t.Logf("%s: %d devices, measured through the kubelet plugin client's connection to %s", resource, n, p.Socket)

	preferredCase := func(size int) latencyCase {
		return latencyCase{fmt.Sprintf("GetPreferredAllocation, size %d", size), func(ctx context.Context, k, i int) error {
			resp, err := p.API.GetPreferredAllocation(ctx, &api.PreferredAllocationRequest{
				ContainerRequests: []*api.ContainerPreferredAllocationRequest{{
					AvailableDeviceIDs:   ids,
					MustIncludeDeviceIDs: []string{ids[((k+i)%n+n)%n]},
					AllocationSize:       int32(size),
				}},
			})
			if err != nil {
				return err
			}
			if got := len(resp.GetContainerResponses()); got != 1 {
				return fmt.Errorf("%d container responses for 1 request", got)
			}
			if got := len(resp.GetContainerResponses()[0].GetDeviceIDs()); got != size {
				return fmt.Errorf("%d devices preferred, asked for %d", got, size)
			}
			return nil
		}}
	}
	cases := []latencyCase{
		{"GetDevicePluginOptions (baseline)", func(ctx context.Context, _, _ int) error {
			_, err := p.API.GetDevicePluginOptions(ctx, &api.Empty{})
			return err
		}},
		// Caller k, call i: one GPU, never the one this caller named last, so every call
		// records a new allocation (as benches/test_bench_deviceplugin.py does).
		{"Allocate", func(ctx context.Context, k, i int) error {
			resp, err := p.API.Allocate(ctx, &api.AllocateRequest{
				ContainerRequests: []*api.ContainerAllocateRequest{{DevicesIds: []string{ids[(k+(i+1)*3)%n]}}},
			})
			if err != nil {
				return err
			}
			if got := len(resp.GetContainerResponses()); got != 1 {
				return fmt.Errorf("%d container responses for 1 request", got)
			}
			return nil
		}},
		preferredCase(2),
		preferredCase(4),
	}

	override := 0
	if s := os.Getenv(EnvLatencyCalls); s != "" {
		c, err := strconv.Atoi(s)
		if err != nil || c <= 0 {
			t.Fatalf("%s=%q: want a positive number", EnvLatencyCalls, s)
		}
		override = c
	}
	var results []latencyResult
	for _, callers := range []int{1, 16} {
		calls := 3000
		if callers > 1 {
			calls = 300
		}
		if override > 0 {
			calls = override
		}
		for _, c := range cases {
			r, err := measureLatency(h, c, callers, calls)
			if err != nil {
				t.Fatalf("%s, %d callers: %v", c.name, callers, err)
			}
			t.Logf("%s, %d caller(s), %d calls: p50 %s, p99 %s, mean %s, max %s",
				r.name, r.callers, r.callers*r.calls, fmtDuration(r.p50), fmtDuration(r.p99), fmtDuration(r.mean), fmtDuration(r.max))
			results = append(results, r)
		}
	}

	var b strings.Builder
	b.WriteString("\n| RPC | callers | calls | p50 | p99 | mean |\n|---|---|---|---|---|---|\n")
	for _, r := range results {
		fmt.Fprintf(&b, "| %s | %d | %d | %s | %s | %s |\n",
			r.name, r.callers, r.callers*r.calls, fmtDuration(r.p50), fmtDuration(r.p99), fmtDuration(r.mean))
	}
	base, alloc := results[0], results[1]
	verdict := fmt.Sprintf("met, %s under", fmtDuration(latencyTarget-alloc.p99))
	if alloc.p99 > latencyTarget {
		verdict = fmt.Sprintf("NOT met, %s over", fmtDuration(alloc.p99-latencyTarget))
	}
	fmt.Fprintf(&b, "\nTarget p99 <= %s with one caller, Allocate: %s (p99 %s). Empty-RPC baseline, same run: p99 %s, p50 %s; Allocate minus baseline: p99 %s, p50 %s\n",
		fmtDuration(latencyTarget), verdict, fmtDuration(alloc.p99),
		fmtDuration(base.p99), fmtDuration(base.p50), fmtDuration(alloc.p99-base.p99), fmtDuration(alloc.p50-base.p50))
	fmt.Print(b.String())
}

// measureLatency runs callers goroutines on the kubelet's one connection, each making one
// untimed warm-up call, then (all released together) calls timed calls.
func measureLatency(h *harness, c latencyCase, callers, calls int) (latencyResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), h.s.Timeout(rpcTimeout)+time.Duration(calls)*h.s.Timeout(rpcTimeout)/10)
	defer cancel()
	samples := make([][]time.Duration, callers)
	errs := make([]error, callers)
	var ready, done sync.WaitGroup
	start := make(chan struct{})
	ready.Add(callers)
	done.Add(callers)
	for k := 0; k < callers; k++ {
		go func() {
			defer done.Done()
			err := c.call(ctx, k, -1)
			ready.Done()
			<-start
			if err != nil {
				errs[k] = fmt.Errorf("warm-up call: %w", err)
				return
			}
			out := make([]time.Duration, 0, calls)
			for i := 0; i < calls; i++ {
				t0 := time.Now()
				err := c.call(ctx, k, i)
				out = append(out, time.Since(t0))
				if err != nil {
					errs[k] = fmt.Errorf("caller %d, call %d: %w", k, i, err)
					return
				}
			}
			samples[k] = out
		}()
	}
	ready.Wait()
	close(start)
	done.Wait()
	var all []time.Duration
	for k := range samples {
		if errs[k] != nil {
			return latencyResult{}, errs[k]
		}
		all = append(all, samples[k]...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	var sum time.Duration
	for _, d := range all {
		sum += d
	}
	pct := func(q float64) time.Duration { return all[min(len(all)-1, int(q*float64(len(all))))] }
	return latencyResult{
		name: c.name, callers: callers, calls: calls,
		p50: pct(0.50), p99: pct(0.99), mean: sum / time.Duration(len(all)), max: all[len(all)-1],
	}, nil
}

// fmtDuration prints µs below 1 ms and ms with two decimals above.
func fmtDuration(d time.Duration) string {
	if d < 0 {
		return "-" + fmtDuration(-d)
	}
	if d < time.Millisecond {
		return fmt.Sprintf("%d µs", d.Microseconds())
	}
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}
