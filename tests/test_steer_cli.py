"""`vlmsae steer` on the shipped toy LLaVA: prints the answer without and with clamping."""

from __future__ import annotations

import re

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
