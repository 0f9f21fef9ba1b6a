"""A short scripted tour of gpulet on a simulated node (what ``make demo`` runs).

1. The simulated node as gpulet's NVML layer discovers it: GPUs, topology, MIG profiles.
2. The agent (``gpulet simulate``) in its own process, serving the kubelet device-plugin API on
   unix sockets under a temporary kubelet root, with ``/healthz`` and ``/readyz``.
3. A kubelet stand-in (:mod:`gpulet.testing.kubelet`) that accepts the registration, opens
   ListAndWatch, asks for preferred allocations and allocates.
4. An XID injected into the simulated GPU from outside, seen as an Unhealthy device on the
   stream.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from typing import TextIO

import grpc

import gpulet
from gpulet.sim import FakeLibraryNotFoundError, SpecError
from gpulet.testing.kubelet import KubeletStandin

__all__ = ["main", "run"]

RESOURCE = "nvidia.com/gpu"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _agent(spec: str, root: pathlib.Path, port: int, env: dict[str, str]) -> Iterator[None]:
    log = (root / "gpulet.log").open("w")
    cmd = [sys.executable, "-m", "gpulet", "simulate", "--spec", spec, "--root", str(root)]
    cmd += ["--metrics-port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return int(r.status), r.read().decode().strip()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode().strip()


def run(spec: str = "dgx-h100", out: TextIO = sys.stdout) -> None:
    """Run the tour on ``spec`` (a shipped node name or a spec path), printing to ``out``."""
    from gpulet.cli import mig_capability, render_text

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    with (
        gpulet.simulated(spec) as sim,
        tempfile.TemporaryDirectory(prefix="gpl-demo-", dir="/tmp") as tmp,
    ):
        root = pathlib.Path(tmp)
        node = gpulet.discover()
        render_text(node, mig_capability(node, None), out, f"Simulated node {spec}")
        uuid_index = {g.uuid: g.index for g in node.gpus}

        say(f"\n== The agent: gpulet simulate --spec {spec} --root {root}")
        port = _free_port()
        with KubeletStandin(root) as kubelet, _agent(spec, root, port, dict(sim.env)):
            reg = kubelet.wait_for_registrations([RESOURCE], timeout=60)[RESOURCE]
            say(f"registered {reg.resource} (API {reg.version}) on device-plugins/{reg.endpoint}")
            # Ready once the agent has seen the registration succeed (a moment after the
            # kubelet recorded it).
            url = f"http://127.0.0.1:{port}/readyz"
            deadline = time.monotonic() + 60
            status, body = _get(url)
            while status != 200 and time.monotonic() < deadline:
                time.sleep(0.05)
                status, body = _get(url)
            say(f"GET /readyz -> {status} {body}")

            with kubelet.plugin(RESOURCE) as plugin:
                watch = plugin.watch()
                devices = watch.next(timeout=60).devices
                numa: dict[int, int] = {}
                for d in devices:
                    for n in d.topology.nodes:
                        numa[n.ID] = numa.get(n.ID, 0) + 1
                say(
                    f"ListAndWatch: {len(devices)} devices, all {devices[0].health}; per NUMA node "
                    f"{dict(sorted(numa.items()))}"
                )

                ids = [d.ID for d in devices]
                say("\n== GetPreferredAllocation (the allocation core; topology cached)")
                for size in (n for n in (2, 4, 8) if n <= len(ids)):
                    chosen = plugin.preferred(ids, [], size)
                    say(f"size {size}: GPUs {sorted(uuid_index[i] for i in chosen)}")
                if len(ids) >= 2:
                    must = len(ids) - 1
                    chosen = plugin.preferred(ids, [ids[must]], 2)
                    say(
                        f"size 2 that must include GPU {uuid_index[ids[must]]}: "
                        f"GPUs {sorted(uuid_index[i] for i in chosen)}"
                    )

                say("\n== Allocate")
                pair = plugin.preferred(ids, [], min(2, len(ids)))
                resp = plugin.allocate(pair).container_responses[0]
                for k, v in sorted(resp.envs.items()):
                    say(f"env {k}={v}")
                for c in resp.cdi_devices:
                    say(f"CDI device {c.name}")
                say(f"{len(resp.devices)} device nodes")
                try:
                    plugin.allocate(["GPU-not-on-this-node"])
                except grpc.RpcError as e:  # printed as the kubelet would log it
                    if not isinstance(e, grpc.Call):
                        raise
                    say(f"Allocate of an unknown ID -> {e.code()}: {e.details()}")
                else:
                    raise RuntimeError("the agent accepted a device ID it does not have")

                say("\n== Health: XID 48 (double-bit ECC) injected into GPU 0 from outside")
                sim.control.inject_xid(0, 48)
                bad = watch.wait_for(
                    lambda r: any(d.health == "Unhealthy" for d in r.devices), timeout=60
                )
                for d in bad.devices:
                    if d.health == "Unhealthy":
                        say(f"ListAndWatch: GPU {uuid_index[d.ID]} ({d.ID}) is {d.health}")
                watch.close()
        say(f"\nagent stopped; its sockets are gone: {sorted(os.listdir(root / 'device-plugins'))}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpulet.demo", description=__doc__)
    parser.add_argument("--spec", default="dgx-h100", help="shipped node name or spec path")
    args = parser.parse_args(argv)
    try:
        run(args.spec)
    except (SpecError, FakeLibraryNotFoundError) as e:
        print(f"gpulet.demo: --spec {args.spec}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
