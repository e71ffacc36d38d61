"""`hpsearch serve` and `hpsearch ui` stopped with Ctrl-C end quietly, and start without a
library's warning. They serve the session's study (conftest.study_dir), whose champion is
registered in the default stores of its folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import clean_env, free_port, needs_fashion_mnist, port_closes, wait_until_ready
from observations import record

pytestmark = [pytest.mark.slow, needs_fashion_mnist]


def ctrl_c(cwd: Path, *args: str, port: int, ready_path: str) -> tuple[int, str]:
    """Start ``hpsearch ARGS`` in a process group of its own, as a shell starts a job,
    wait until it answers on ``port``, then send SIGINT to the group (what Ctrl-C in its
    terminal does). Returns the exit code and everything it printed."""
    exe = Path(sys.executable).with_name("hpsearch")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "hpsearch.cli"]
    server = subprocess.Popen(cmd + list(args), cwd=cwd, env=clean_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        wait_until_ready(port, server, path=ready_path)
        os.killpg(server.pid, signal.SIGINT)
        output, _ = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    return server.returncode, output


def test_ctrl_c_ends_serve_quietly_with_exit_code_130(study_dir):
    port = free_port()
    code, output = ctrl_c(study_dir, "serve", "--port", str(port), port=port,
                          ready_path="/ping")
    assert code == 130, output
    assert "Aborted!" not in output and "Traceback" not in output, output
    assert "Finished server process" in output.splitlines()[-1], output
    assert port_closes(port)
    record("Ctrl-C on `hpsearch serve`",
           "exit code 130 after the server's own shutdown lines; no \"Aborted!\" (before: "
           "exit code 1 and \"Aborted!\")", "the port is free again")


def test_ui_starts_without_a_library_warning(study_dir):
    port = free_port()
    _, output = ctrl_c(study_dir, "ui", "--port", str(port), port=port, ready_path="/health")
    assert "Warning" not in output, output
    assert port_closes(port)
    record("`hpsearch ui` started, then Ctrl-C",
           "no StarletteDeprecationWarning (nor any other warning) printed",
           "the port is free again")
