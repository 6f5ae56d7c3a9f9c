"""The W&B logger decides online/offline by itself: no account, no network, a failing server."""

from __future__ import annotations

import http.server
import threading
import time

import pytest

from xai_lightning.errors import ConfigError
from xai_lightning.loggers import decide_wandb_mode


@pytest.fixture
def logged_out(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def test_offline_when_not_logged_in_and_an_error_when_online_is_demanded(logged_out, monkeypatch):
    mode, reason = decide_wandb_mode()
    assert mode == "offline" and "not logged in" in reason
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert decide_wandb_mode()[0] == "disabled"
    monkeypatch.setenv("WANDB_MODE", "online")
    with pytest.raises(ConfigError, match="WANDB_MODE=online, but not logged in to W&B: run `wandb login`"):
        decide_wandb_mode()


@pytest.mark.parametrize("status, mode", [(500, "offline"), (503, "offline"), (404, "online")])
def test_a_server_that_answers_with_errors_sends_the_run_offline_within_seconds(monkeypatch, status, mode):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.delenv("WANDB_MODE", raising=False)
        monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_port}")
        t0 = time.perf_counter()
        got, reason = decide_wandb_mode()
        assert got == mode and time.perf_counter() - t0 < 10  # seconds, not the 100 s of W&B's retries
        if mode == "offline":
            assert f"answered HTTP {status}" in reason
    finally:
        server.shutdown()
