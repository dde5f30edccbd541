"""Warnings that matter reach the user; the host's known TE/Apex fallbacks are one summary line.

Each case runs in a fresh interpreter (warning filters are process-wide, and pytest installs its own), the
way our commands start: the CLI and the launch modules both call ``host_warnings.command_output`` before
they import the host, then the real host modules and our real code raise what they raise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from nemotron3_super.host_compat import warning_filters as host_warnings
from nemotron3_super.host_compat import have_transformer_engine

REPO = Path(__file__).resolve().parents[2]
HOST_FALLBACK = "UserWarning: Transformer Engine and Apex are not installed. Falling back to Torch optimizers"
SCRIPT = """
import argparse, logging, warnings
from nemotron3_super.cli import _host_output
_host_output(argparse.Namespace(verbose={verbose}))
import megatron.core.optimizer  # the host: warns that TE and Apex are absent
warnings.warn("Transformer Engine and Apex are not installed. Falling back to a user's own path")  # not the host
logging.getLogger("some_plugin").warning("a plugin reports something")
from nemotron3_super.provider import tiny_super_provider
tiny_super_provider(precision="nvfp4").finalize()  # ours: PrecisionFallbackWarning on a CPU box
from nemotron3_super.plugins.host import install_into_host
install_into_host()  # ours: logs that our bridge replaces the host's NemotronHBridge
"""

pytestmark = pytest.mark.skipif(have_transformer_engine(), reason="the fallback warnings appear without TE only")


def _python(code: str) -> str:
    """stdout and stderr together, as a terminal shows them (the host's log handler writes to stdout)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "MEGATRON_BRIDGE_PLUGINS_BRIDGE_POLICY")}
    proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env, timeout=1200, cwd=tempfile.gettempdir())
    assert proc.returncode == 0, proc.stdout[-3000:]
    return proc.stdout


def test_our_warnings_reach_the_user_and_host_fallbacks_are_one_line() -> None:
    err = _python(SCRIPT.format(verbose=False))
    assert err.count(host_warnings.summary()) == 1
    assert HOST_FALLBACK not in err and "Falling back to Torch Norm" not in err
    assert "Falling back to a user's own path" in err  # same words, not the host's module: shown
    assert "a plugin reports something" in err
    assert "PrecisionFallbackWarning: precision='nvfp4' cannot run here" in err
    assert "replaces host bridge" in err and "NemotronHBridge" in err


def test_verbose_shows_the_host_fallbacks() -> None:
    err = _python(SCRIPT.format(verbose=True))
    assert HOST_FALLBACK in err and host_warnings.summary() not in err
    assert "PrecisionFallbackWarning" in err and "replaces host bridge" in err


def test_dry_run_output_starts_with_the_plan() -> None:
    """stdout and stderr together, as a terminal shows them: at most the summary line before the plan."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    proc = subprocess.run([sys.executable, "-m", "nemotron3_super.pretrain", "--dry-run"], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:]
    lines = proc.stdout.splitlines()
    start = 1 if lines[0] == host_warnings.summary() else 0
    assert lines[start].startswith("recipe nemotron3_super_pretrain_config"), "\n".join(lines[:10])
    # the bridge replacement is stated once, in the plan, not logged before it
    assert "replaces host bridge" not in proc.stdout
    assert ("bridge: NemotronHForCausalLM -> nemotron3_super.bridge.SuperBridge (replaces the host's "
            "megatron.bridge.models.nemotronh.nemotron_h_bridge.NemotronHBridge; policy 'plugin')") in lines
