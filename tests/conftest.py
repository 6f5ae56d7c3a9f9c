import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _fresh_master_port(request, monkeypatch):
    """Each 2-process test gets its own free MASTER_PORT. Lightning's spawn launcher writes the port it picked
    into this process's environment, so without this every later DDP test would reuse the first test's port,
    which another socket may hold by then."""
    if request.node.get_closest_marker("ddp") is not None:
        from tests.helpers.trainers import free_port

        monkeypatch.setenv("MASTER_PORT", str(free_port()))
    yield
