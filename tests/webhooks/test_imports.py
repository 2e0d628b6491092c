"""Reading settings loads no HTTP library: the webhooks file format lives apart from the sender."""

from __future__ import annotations

import subprocess
import sys


def test_importing_settings_does_not_import_requests() -> None:
    code = (
        "import sys, sidecar.config, sidecar.webhooks.config, sidecar.webhooks.events; "
        "assert 'requests' not in sys.modules, 'requests was imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
