"""benchmarks/gpu.py and the real-size model set it uses: the CPU check runs, the arithmetic is nnU-Net's,
the real-size networks are the sizes they claim and the designed semantic rule holds at real size."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("spineps")

import torch  # noqa: E402

from tests.spineps_models import REAL, _semantic_network, bare_networks  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.spineps


def _gpu_module():
    spec = importlib.util.spec_from_file_location("batchseg_gpu_benchmark", REPO / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module            # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_tiles_are_where_nnunet_puts_them() -> None:
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    gpu = _gpu_module()
    for image, patch in (((27, 350, 350), (32, 224, 192)), ((40, 512, 300), (32, 224, 192)), ((25, 98, 98), (16, 128, 128))):
        padded = [max(i, p) for i, p in zip(image, patch)]
        assert [gpu.sliding_window_starts(i, p) for i, p in zip(padded, patch)] == \
            [list(s) for s in compute_steps_for_sliding_window(padded, patch, 0.5)]
    # a 20 x 512 x 512 series at 0.59 mm and 4.5 mm slices, at 0.86 x 0.86 x 3.3 mm
    assert gpu.semantic_volume((20, 512, 512), (0.59, 4.5), REAL) == (27, 352, 352)


def test_real_size_networks_have_the_released_sizes_and_run() -> None:
    nets = bare_networks(REAL)
    millions = {name: sum(p.numel() for p in net.parameters()) / 1e6 for name, net in nets.items()}
    # nnU-Net's 6-stage 3d_fullres U-Net is ~31 M parameters; DenseNet-169 (3-D, 1 channel) ~18.6 M
    assert 30 < millions["semantic"] < 32 and 18 < millions["labeling"] < 19.5 and millions["instance"] > 1
    with torch.inference_mode():       # small inputs: the shapes, not the cost
        assert nets["semantic"](torch.zeros(1, 1, 16, 64, 64)).shape == (1, 17, 16, 64, 64)
        assert nets["instance"](torch.zeros(2, 11, 16, 16, 16)).shape == (2, 4, 16, 16, 16)
        assert nets["labeling"](torch.zeros(1, 1, 64, 64, 32)).shape == (1, 29)


def test_the_designed_rule_holds_in_the_real_size_semantic_net() -> None:
    """Intensities after SPINEPS's [0, 1500] rescaling, as nnU-Net's CT normalisation hands them over (/100)."""
    net = _semantic_network(REAL, 17).eval()
    body = 1 + REAL.semantic_labels.index("Vertebra_Corpus_border")
    disc = 1 + REAL.semantic_labels.index("Vertebra_Disc")
    image = torch.zeros(1, 1, 16, 64, 64)                   # (R, I, P), as nnU-Net gets it
    for index, intensity in enumerate((180, 315, 580, 830, 1080, 1400)):   # soft, canal, 3 body tiers, disc
        image[..., index * 10:(index + 1) * 10, :] = intensity / 100.0
    with torch.inference_mode():
        classes = net(image)[0].argmax(0)
    expected = [0, 0, body, body, body, disc]
    assert [int(classes[8, index * 10 + 5, 32]) for index in range(6)] == expected


def test_the_small_setting_runs_on_the_cpu_and_prints_its_tables() -> None:
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "small"], capture_output=True,
                         text=True, timeout=1500, env={**os.environ, "SPINEPS_NO_CITATION_REMINDER": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    for heading in ("## pipeline (measured)", "## networks alone (measured)", "## workers per GPU (derived)"):
        assert heading in out
    assert "| studies done | 2/2 | 2/2 |" in out
    assert "| GPU busy (sampled) | n/a (no GPU) | n/a (no GPU) |" in out
    assert "suggested: " in out and "SMALL SETTING on the CPU" in out
