"""Running the ``taube`` command in tests: a configuration file, and taube as a separate process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TAUBE = [sys.executable, "-m", "taube"]


def write_config(tmp_path: Path) -> Path:
    """``<tmp>/etc/taube.toml`` with ``data_dir = "var"``: the data lives in ``<tmp>/etc/var``."""
    path = tmp_path / "etc" / "taube.toml"
    path.parent.mkdir()
    path.write_text('hostname = "mail.example.test"\ndata_dir = "var"\ndomains = ["example.test"]\n')
    return path


def run(config: Path | None, *args: str, stdin: str = "", env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``taube ARGS --config CONFIG`` in another working directory (so relative paths must come
    from the config file), without TAUBE_CONFIG unless ``env`` sets it."""
    environment = {k: v for k, v in os.environ.items() if k != "TAUBE_CONFIG"} | (env or {})
    command = [*TAUBE, *args, *(["--config", str(config)] if config else [])]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=30,
                          env=environment, cwd=cwd or Path("/"))
