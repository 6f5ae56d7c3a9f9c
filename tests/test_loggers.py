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


def test_a_resumed_offline_run_continues_the_step_count(tmp_path, monkeypatch):
    """Two processes' worth of one run id (a resume with XAI_WANDB_ID): the second offline folder's history
    steps continue the trainer's steps instead of restarting at 0, so `wandb sync` of both cannot collide."""
    from tests.helpers.wandb_records import history_steps, wait_for_records
    from xai_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for start in (0, 5):  # trainer steps 0-4, then (resumed) 5-9
        logger = WandbLogger(save_dir=str(tmp_path), id="resumed", project="p")
        for step in range(start, start + 5):
            logger.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
        logger.experiment.finish()
    first, second = sorted(tmp_path.glob("wandb/offline-run-*/run-resumed.wandb"), key=lambda p: p.parent.name)
    for path in (first, second):  # the service may still be writing the last records
        wait_for_records(path, lambda data, p=path: len(history_steps(p)) >= 5)
    assert history_steps(first) == [0, 1, 2, 3, 4]
    assert history_steps(second) == [5, 6, 7, 8, 9]


def test_no_deprecated_anonymous_setting_reaches_wandb(tmp_path, monkeypatch):
    """W&B warns "The anonymous setting has no effect" whenever ``anonymous`` is passed to ``wandb.init``."""
    from xai_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    assert "anonymous" not in WandbLogger(save_dir=str(tmp_path), project="p")._wandb_init
