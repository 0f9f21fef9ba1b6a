"""The health monitor against the fake libnvidia-ml.so.1 when an NVML call hangs (a delay
injected through the fake's control interface).

Each scenario runs in a child process: the call left hanging holds the process's NVML session
until its delay ends, and a later test in this process would otherwise be answered from that
session's node. The child waits for conditions with limits (well below the injected delay),
never sleeps to let time pass, and reports what it saw as one JSON line; no test asserts how
long anything took.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

from gpulet import sim

DELAY = 60.0  # seconds the hung NVML call takes
LIMIT = 20.0  # seconds the child waits for a condition (well below DELAY)

CHILD = r"""
import json, os, sys, threading

import gpulet
from gpulet._core import probe
from gpulet.config import HealthPolicy
from gpulet.health import HealthMonitor

scenario, delay, limit = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
out = {}
cond = threading.Condition()
changes = []
entered = {}


def on_change(device, healthy, reason):
    with cond:
        changes.append([device, healthy, reason])
        cond.notify_all()


def saw(device, healthy):
    with cond:
        return cond.wait_for(
            lambda: any(c[0] == device and c[1] == healthy for c in changes), timeout=limit
        )


def probing(gpu):
    with cond:
        entered[gpu] = entered.get(gpu, 0) + 1
        cond.notify_all()
    probe(gpu)


with gpulet.simulated("dgx-h100") as s:
    node = gpulet.discover()
    uuids = [g.uuid for g in node.gpus]
    if scenario == "probe":
        # _core.probe asks for the handle, the UUID, memory, temperature, power: hang the
        # temperature of GPU 1.
        s.control.delay("nvmlDeviceGetTemperature", delay, gpu=1)
    else:
        s.control.delay("nvmlEventSetWait", delay)
    m = HealthMonitor(
        HealthPolicy(), node, on_change=on_change, probe=probing, wait_timeout=0.1,
        probe_interval=0.05, probe_timeout=1.0, recovery_period=300,
    )
    m.start()
    if scenario == "probe":
        with cond:
            out["gpu1_probing"] = cond.wait_for(lambda: entered.get(1, 0) >= 1, timeout=limit)
        s.control.inject_xid(0, 48)  # while GPU 1's probe hangs
        out["gpu0_down"] = saw(uuids[0], False)
        out["gpu1_down"] = saw(uuids[1], False)
        with cond:
            out["gpu2_probed_since"] = cond.wait_for(
                lambda: entered.get(2, 0) >= 5, timeout=limit
            )
            out["gpu1_probes"] = entered.get(1, 0)
    else:
        s.control.fall_off_bus(2)  # its XID 79 stays behind the hung wait; a probe finds it
        out["gpu2_down"] = saw(uuids[2], False)
    stopper = threading.Thread(target=m.stop, daemon=True)
    stopper.start()
    stopper.join(limit)
    out["stopped"] = not stopper.is_alive()
    out["left"] = sorted(
        t.name for t in threading.enumerate() if t.name.startswith("gpulet-health")
    )
    with cond:
        out["changes"] = list(changes)
    out["uuids"] = uuids
print(json.dumps(out), flush=True)
os._exit(0)  # threads still inside the fake's delay are not waited for
"""


def run_child(scenario: str, fake_library: pathlib.Path) -> dict[str, Any]:
    env = {**os.environ, sim.ENV_FAKE_LIBRARY: os.fspath(fake_library)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, scenario, str(DELAY), str(LIMIT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=10 * LIMIT,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr
    result: dict[str, Any] = json.loads(lines[-1])
    result["stderr"] = proc.stderr
    return result


def test_a_hung_probe_does_not_delay_another_gpus_xid(fake_library: pathlib.Path) -> None:
    r = run_child("probe", fake_library)
    why = r["stderr"]
    assert r["gpu1_probing"], why
    assert r["gpu0_down"], f"GPU 0's XID 48 was not handled while GPU 1's probe hung: {why}"
    assert r["gpu1_down"], why
    assert r["gpu2_probed_since"], why
    assert r["gpu1_probes"] == 1, why  # no second probe while the first hangs
    gpu0, gpu1 = r["uuids"][0], r["uuids"][1]
    reasons = {(d, h): why for d, h, why in r["changes"]}
    assert reasons[(gpu0, False)] == "XID 48 (Double Bit ECC Error)"
    assert reasons[(gpu1, False)] == "NVML probe of GPU 1 has not returned after 1s"
    assert r["stopped"], f"stop() did not return while the probe hung: {why}"
    assert "gpulet-health-probe-1" in r["left"]  # abandoned inside the fake's delay
    assert "leaving behind threads still inside NVML" in why
    assert "gpulet-health-probe-1" in why


def test_a_hung_event_wait_neither_stops_probes_nor_stop(fake_library: pathlib.Path) -> None:
    r = run_child("wait", fake_library)
    why = r["stderr"]
    assert r["gpu2_down"], f"a probe did not find GPU 2 lost while the wait hung: {why}"
    gpu2 = r["uuids"][2]
    [(device, healthy, reason)] = r["changes"]
    assert (device, healthy) == (gpu2, False)
    assert reason.startswith("GPU fell off the bus")
    # The watcher's close must not wait for the hung nvmlEventSetWait.
    assert r["stopped"], f"stop() did not return while the event wait hung: {why}"
    assert "gpulet-health-events" in r["left"]
