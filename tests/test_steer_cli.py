"""`vlmsae steer` on the shipped toy LLaVA: prints the answer without and with clamping."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from vlmsae.cli import app
from vlmsae.sae import SAE, SAEConfig
from vlmsae.toyworld import llava_path, make_world


def test_steer_prints_both_answers(tmp_path):
    images, _ = make_world("test", 1)
    images[0].save(tmp_path / "img.png")
    sae = SAE(SAEConfig(d_in=128, expansion=2, sparsity="topk", k=4, layer=4))
    sae.save(tmp_path / "sae")
    args = [
        "steer",
        "--model",
        str(llava_path()),
        "--sae",
        str(tmp_path / "sae"),
        "--image",
        str(tmp_path / "img.png"),
        "--prompt",
        "What color is the object?",
        "--neuron",
        "3",
        "--alpha",
        "50",
        "--max-new-tokens",
        "3",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert re.search(r"without steering: \S", result.output)
    assert "with {3: 50.0} at block 4:" in result.output
    bad = CliRunner().invoke(app, [*args[:-4], "--alpha", "1", "--alpha", "2"])
    assert bad.exit_code != 0 and "alphas" in bad.output


def _steer_process(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "vlmsae", "steer", *args], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """An image, SAEs of the toy LLaVA's width trained on every token and on the CLS token,
    and a folder with the toy LLaVA's config.json but no weights: a request checked before
    the model loads fails with its own message there, never with a loading error."""
    root = tmp_path_factory.mktemp("steer")
    images, _ = make_world("test", 1)
    images[0].save(root / "img.png")
    SAE(SAEConfig(d_in=128, expansion=2, sparsity="topk", k=4, layer=2, tokens="all")).save(
        root / "sae"
    )
    SAE(SAEConfig(d_in=128, expansion=2, sparsity="topk", k=4, layer=2, tokens="cls")).save(
        root / "cls"
    )
    (root / "config-only").mkdir()
    shutil.copy(llava_path() / "config.json", root / "config-only" / "config.json")
    return root


def _args(root, model, sae="sae", *extra: str) -> list[str]:
    return ["--model", str(model), "--sae", str(root / sae), "--image", str(root / "img.png"),
            "--prompt", "What color is the object?", "--alpha", "50", "--max-new-tokens", "2",
            *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--neuron", "256"],
            "Error: --neuron 256 is out of range: the SAE has 256 neurons (0..255)",
        ),
        (["--neuron", "-1"], "Error: --neuron -1 is out of range"),
        (["--neuron", "3", "--layer", "40"], "Error: --layer 40 is out of range: the vision tower"),
        (["--neuron", "3", "--layer", "-1"], "Error: cannot steer at vision block"),
    ],
)
def test_a_bad_neuron_or_layer_is_one_error_line_before_the_model_loads(setup, extra, message):
    result = _steer_process(_args(setup, setup / "config-only", "sae", *extra))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert "Traceback" not in result.stderr


def test_an_sae_of_the_cls_token_is_refused_unless_allowed(setup):
    refused = _steer_process(_args(setup, setup / "config-only", "cls", "--neuron", "3"))
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "Error: the SAE was trained on the CLS token only (tokens=cls) but steering clamps its "
        "neurons on every image token of block 2; give an SAE trained on every token (cache "
        "with --tokens all or random:N), or pass --allow-mismatch to steer with it anyway"
    ]
    allowed = _steer_process(_args(setup, llava_path(), "cls", "--neuron", "3",
                                   "--allow-mismatch"))  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr
    warnings = [line for line in allowed.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "trained on the CLS token only (tokens=cls)" in warnings[0]
    assert "with {3: 50.0} at block 2:" in allowed.stdout
    assert "\r" not in allowed.stderr and "Loading weights" not in allowed.stderr  # no bars
