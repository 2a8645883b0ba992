"""Shared test settings and the tiny steering fixtures used by several test files."""

from __future__ import annotations

import pytest
import torch

# Tests that need system packages skip without them; the summary says how to get them.
APT_PACKAGES = "chromium chromium-driver fonts-noto-color-emoji unicode-data"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One closing line on skipped tests: how many, and the one command that enables them."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    needs_apt = sum(
        1 for r in skipped if any(w in str(r.longrepr) for w in ("chromium", "Noto", "emoji-test"))
    )
    line = f"{len(skipped)} tests skipped"
    if needs_apt:
        line += (
            f"; {needs_apt} of them need Debian packages: sudo apt-get install -y "
            f"--no-install-recommends {APT_PACKAGES} (bash .ci/run installs them, then runs "
            "make test)"
        )
    terminalreporter.write_line(line, yellow=True)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The tests use tiny matrices: one torch thread avoids the synchronisation cost of
    spinning threads, which dominates (and makes timings erratic) on a 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_llava():
    """A tiny random LLaVA (4 CLIP blocks + Llama) that reads block 2
    (``vision_feature_layer = -2``). Tests attach hooks only inside ``with`` blocks."""
    from tiny_models import make_llava
    from vlmsae.steer.llava import wrap_llava

    model, processor = make_llava(n_layers=4)
    return wrap_llava(model, processor, "tiny-llava")


@pytest.fixture(scope="session")
def tiny_sae():
    """A ReLU SAE on the tiny LLaVA's width whose neuron 3 is constant (code 2.0 on every
    token) and neuron 5 dead."""
    from vlmsae import SAE, SAEConfig

    torch.manual_seed(1)
    sae = SAE(SAEConfig(d_in=32, d_sae=64, sparsity="relu", k=None)).eval()
    with torch.no_grad():
        sae.b_dec.zero_()
        sae.W_enc[:, 3] = 0.0
        sae.b_enc[3] = 2.0
        sae.W_enc[:, 5] = 0.0
        sae.b_enc[5] = -1.0
    return sae
