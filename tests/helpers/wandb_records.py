"""Reads the history steps of an offline W&B run file (``run-<id>.wandb``): W&B's record log is LevelDB's log
format (32 KiB blocks; each chunk has a 7-byte header: crc32, length, type) after a 7-byte ``:W&B`` file header,
and each record is a ``wandb_internal_pb2.Record``."""

from __future__ import annotations

import struct
from pathlib import Path

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _chunks(data: bytes):
    pos = 7  # the file header
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        yield kind, data[pos : pos + length]
        pos += length


def history_steps(path: str | Path) -> list[int]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B record log"
    steps, buf = [], b""
    for kind, chunk in _chunks(data):
        buf += chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            if record.WhichOneof("record_type") == "history":
                steps.append(record.history.step.num)
    return steps


def wait_for_records(path: str | Path, ready, timeout: float = 30.0) -> bytes:
    """The bytes of the record log once ``ready(bytes)`` holds, or as they are after ``timeout`` seconds.

    W&B's service process writes the record log; on a loaded machine its last records can land just after
    ``run.finish()`` returns (seen in full test runs), so tests that read the log wait for what they expect."""
    import time

    deadline = time.monotonic() + timeout
    data = Path(path).read_bytes()
    while not ready(data) and time.monotonic() < deadline:
        time.sleep(0.5)
        data = Path(path).read_bytes()
    return data
