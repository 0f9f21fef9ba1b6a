"""The README's first command ends in gpulet.demo: it must keep telling the truth."""

from __future__ import annotations

import io

import pytest

from gpulet import demo


def test_demo_tour_on_dgx_h100() -> None:
    out = io.StringIO()
    demo.run("dgx-h100", out)
    text = out.getvalue()
    assert "Simulated node dgx-h100: 8 GPUs" in text
    assert "registered nvidia.com/gpu (API v1beta1)" in text
    assert "GET /readyz -> 200" in text
    assert "ListAndWatch: 8 devices, all Healthy; per NUMA node {0: 4, 1: 4}" in text
    assert "size 8: GPUs [0, 1, 2, 3, 4, 5, 6, 7]" in text
    assert "size 2 that must include GPU 7: GPUs [" in text
    assert "env NVIDIA_VISIBLE_DEVICES=GPU-" in text
    assert "Allocate of an unknown ID -> StatusCode.INVALID_ARGUMENT" in text
    assert "ListAndWatch: GPU 0 (GPU-" in text
    assert "is Unhealthy" in text
    assert text.rstrip().endswith("its sockets are gone: []")


def test_demo_tour_on_a_single_gpu_node() -> None:
    out = io.StringIO()
    demo.run("single-t4", out)
    text = out.getvalue()
    assert "ListAndWatch: 1 devices, all Healthy" in text
    assert "size 2" not in text
    assert "env NVIDIA_VISIBLE_DEVICES=GPU-" in text
    assert "is Unhealthy" in text


def test_demo_names_a_bad_spec(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--spec", "no-such-node"]) == 2
    err = capsys.readouterr().err
    assert "--spec no-such-node" in err
    assert "dgx-h100" in err  # the shipped specs are listed
