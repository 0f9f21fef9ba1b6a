"""The device plugin's life with the kubelet: restarts, sockets, PodResources, probes, the CLI.

Re-registration after a kubelet restart is driven by inotify; the tests wait for the
registration event (30 s limit) and print how long it took, without asserting on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request

import grpc
import pytest
from agents import make_agent, wait_until

import gpulet
from gpulet import config
from gpulet.agent import Agent, AgentOptions
from gpulet.alloc import ContainerOwner
from gpulet.deviceplugin.server import SocketPathError
from gpulet.testing.kubelet import WAIT, AgentThread, KubeletStandin, pod

pytestmark = pytest.mark.usefixtures("fake_library")

GPU = "nvidia.com/gpu"


def test_kubelet_restart_re_registers_from_the_event(root: pathlib.Path) -> None:
    with gpulet.simulated("dgx-h100"), KubeletStandin(root) as kubelet:
        agent = make_agent(root)
        with AgentThread(agent):
            kubelet.wait_for_registrations([GPU])
            with kubelet.plugin(GPU) as p:
                before = [d.ID for d in p.devices()]
            took = []
            for downtime in (False, True):
                if downtime:
                    kubelet.stop()  # the kubelet is down; gpulet waits for it
                    kubelet.start(cleanup=True)
                else:
                    kubelet.restart()
                start = kubelet.starts
                reg = kubelet.wait_for_registrations([GPU], server_start=start)[GPU]
                took.append(reg.at - kubelet.listening_since)
                with kubelet.plugin(GPU) as p:
                    assert [d.ID for d in p.devices()] == before
                    assert p.allocate([before[0]]).container_responses
            print(
                f"re-registration after a kubelet restart: {[f'{t * 1000:.1f} ms' for t in took]}"
            )
            assert agent.stats.kubelet_restarts >= 2
            assert agent.stats.server_restarts >= 2


def test_a_removed_socket_is_served_again(root: pathlib.Path) -> None:
    with gpulet.simulated("single-t4"), KubeletStandin(root) as kubelet:
        agent = make_agent(root)
        with AgentThread(agent):
            first = kubelet.wait_for_registrations([GPU])[GPU]
            socket = root / "device-plugins" / first.endpoint
            unlinked_at = time.monotonic()
            socket.unlink()

            def registered_again() -> bool:
                return any(r.resource == GPU and r.at > unlinked_at for r in kubelet.registrations)

            # Only a registration after the unlink counts: a late one from start-up would not
            # prove the socket was served again.
            kubelet.wait_until(registered_again)
            # The agent serves before it registers, so the new socket is there.
            assert stat.S_ISSOCK(socket.stat().st_mode)
            with kubelet.plugin(GPU) as p:
                assert len(p.devices()) == 1


def test_gpulet_waits_for_a_kubelet_that_starts_later(root: pathlib.Path) -> None:
    with gpulet.simulated("single-t4"):
        agent = make_agent(root)
        with AgentThread(agent):
            socket = root / "device-plugins" / "gpulet-gpu.sock"
            assert socket.exists()
            assert not agent.registered.is_set()
            with KubeletStandin(root) as kubelet:  # removes gpulet's socket as it starts
                kubelet.wait_for_registrations([GPU])
                with kubelet.plugin(GPU) as p:
                    assert len(p.devices()) == 1


def test_sockets_are_owner_only_and_removed_on_exit(root: pathlib.Path) -> None:
    doc = {"flags": {"migStrategy": "mixed"}}
    with gpulet.simulated("hgx-h200"), KubeletStandin(root) as kubelet:
        agent = make_agent(root, doc)
        with AgentThread(agent):
            regs = kubelet.wait_for_registrations(
                [GPU, "nvidia.com/mig-3g.71gb", "nvidia.com/mig-2g.35gb"]
            )
            sockets = [root / "device-plugins" / r.endpoint for r in regs.values()]
            for s in sockets:
                mode = s.stat().st_mode
                assert stat.S_ISSOCK(mode)
                assert stat.S_IMODE(mode) == 0o600
                assert not mode & stat.S_IWOTH
                assert len(os.fsencode(str(s))) < 108
            assert (root / "cdi" / "k8s.device-plugin.nvidia.com-gpu.json").exists()
        for s in sockets:
            assert not s.exists()
        assert (root / "device-plugins" / "kubelet.sock").exists()  # the kubelet's stays


def test_a_socket_path_too_long_is_refused(tmp_path: pathlib.Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    with gpulet.simulated("single-t4"):
        agent = make_agent(deep)
        thread = AgentThread(agent)
        with pytest.raises(SocketPathError, match="at most 105 bytes"):
            thread.start()
        thread.stop()


def test_pod_resources_attribution_and_release(root: pathlib.Path) -> None:
    with gpulet.simulated("dgx-h100"), KubeletStandin(root) as kubelet:
        agent = make_agent(root, reconcile_delay=0.0)
        with AgentThread(agent) as thread:
            kubelet.wait_for_registrations([GPU])
            state = agent.state
            assert state is not None
            with kubelet.plugin(GPU) as p:
                ids = [d.ID for d in p.devices()]
                calls = kubelet.list_calls
                p.allocate([ids[0], ids[1]])
                p.allocate([ids[4]])
            # Allocate makes the agent ask PodResources soon after.
            kubelet.wait_until(lambda: kubelet.list_calls > calls)
            kubelet.set_pods(
                [
                    pod(
                        "ml",
                        "trainer-0",
                        {"main": {GPU: [ids[0], ids[1]], "example.com/nic": ["x"]}},
                    )
                ]
            )
            report = thread.call(agent.reconcile())
            assert report is not None
            owner = ContainerOwner("ml", "trainer-0", "main")
            assert thread.run(lambda: state.holder(ids[0])) == owner
            assert thread.run(lambda: state.ledger.holder_of(ids[1])) == owner
            assert thread.run(lambda: state.holder(ids[4])) is None  # not listed: released
            kubelet.set_pods([])
            report = thread.call(agent.reconcile())
            assert report is not None
            assert report.released == 1
            assert thread.run(state.assignments) == []
            assert thread.run(lambda: state.ledger.utilisation().gpus_held_whole) == 0


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=WAIT) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_readyz_reports_not_ready_without_nvml_then_ready(root: pathlib.Path) -> None:
    cfg = config.parse(
        {
            "version": "v1",
            "flags": {"failOnInitError": False},
            "gpulet": {"kubeletRoot": str(root), "metricsPort": 0},
        }
    )
    options = AgentOptions.from_config(cfg, cdi_root=None, http_port=0, http_host="127.0.0.1")
    agent = Agent(
        cfg,
        options,
        discover=lambda: gpulet.discover("/nonexistent/libnvidia-ml.so.1"),
        health=None,
    )
    thread = AgentThread(agent)
    thread._thread.start()
    thread._started = True
    starting = asyncio.run_coroutine_threadsafe(agent.start(), thread.loop)
    try:
        wait_until(lambda: agent.http_port is not None, "the probe endpoint")
        port = agent.http_port
        assert port is not None
        assert http_get(port, "/healthz") == (200, "ok\n")
        wait_until(lambda: "not found" in http_get(port, "/readyz")[1], "the NotReady reason")
        status, body = http_get(port, "/readyz")
        assert status == 503
        assert "/nonexistent/libnvidia-ml.so.1" in body
        assert http_get(port, "/metrics")[0] == 404
    finally:
        starting.cancel()
        thread.stop()


def test_readyz_ready_when_serving(root: pathlib.Path) -> None:
    with gpulet.simulated("single-t4"), KubeletStandin(root):
        agent = make_agent(root, http_port=0, http_host="127.0.0.1")
        with AgentThread(agent):
            port = agent.http_port
            assert port is not None
            # Ready once registered with the kubelet (registration runs after start returns).
            wait_until(lambda: http_get(port, "/readyz")[0] == 200, "ready")
            status, body = http_get(port, "/readyz")
            assert status == 200
            assert "nvidia.com/gpu (1)" in body


def test_restart_plugins_registers_again(root: pathlib.Path) -> None:
    with gpulet.simulated("single-t4"), KubeletStandin(root) as kubelet:
        agent = make_agent(root)
        with AgentThread(agent) as thread:
            kubelet.wait_for_registrations([GPU])
            count = len(kubelet.registrations)
            thread.call(agent.restart_plugins())
            kubelet.wait_until(lambda: len(kubelet.registrations) > count)


def test_gpulet_simulate_serves_registers_and_cleans_up(root: pathlib.Path) -> None:
    """The CLI end to end: a process, a kubelet stand-in, SIGTERM."""
    with gpulet.simulated("single-t4") as s, KubeletStandin(root) as kubelet:
        env = {**s.env, "PYTHONPATH": os.pathsep.join(sys.path)}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gpulet",
                "simulate",
                "--spec",
                "single-t4",
                "--root",
                str(root),
                "--metrics-port",
                "0",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            reg = kubelet.wait_for_registrations([GPU], timeout=60)[GPU]
            socket = root / "device-plugins" / reg.endpoint
            with kubelet.plugin(GPU) as p:
                (device,) = p.devices()
                r = p.allocate([device.ID]).container_responses[0]
                # gpulet simulate without a config shows every output at once.
                assert r.envs["NVIDIA_VISIBLE_DEVICES"] == device.ID
                assert [c.name for c in r.cdi_devices] == [
                    f"k8s.device-plugin.nvidia.com/gpu={device.ID}"
                ]
                assert {d.container_path for d in r.devices} >= {"/dev/nvidiactl", "/dev/nvidia0"}
                assert all(d.host_path.startswith(str(root)) for d in r.devices)
                with pytest.raises(grpc.RpcError) as info:
                    p.allocate(["GPU-nope"])
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=WAIT) == 0
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            stderr = proc.communicate(timeout=WAIT)[1]
        assert not socket.exists(), stderr
        assert "registered nvidia.com/gpu" in stderr
