"""Read logged values back from an offline W&B run folder (no account, no network).

A ``run-<id>.wandb`` file is a LevelDB-style log of protobuf ``Record`` messages: a 7-byte
header (``:W&B``, magic, version), then 32 KiB blocks of chunks, each with a 7-byte header
(CRC32C, little-endian length, type: 1 full, 2 first, 3 middle, 4 last).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Iterator

_BLOCK = 32 * 1024
_HEADER = 7


def iter_records(path: str | Path) -> Iterator[bytes]:
    """The serialised records of a ``.wandb`` file, in order."""
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer padding
            pos += left
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 0 and length == 0:
            pos += _BLOCK - pos % _BLOCK if pos % _BLOCK else 0
            continue
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk
            pending = b""


def read_offline_run(run_dir: str | Path, wait_for: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """``{"history": [row, ...], "summary": {...}, "run": {...}, "config": {...}}`` of an offline run folder
    (``offline-run-*``); ``run`` holds its id, name, group and tags.

    W&B's writer process can still be flushing the run file for a moment after ``wandb.finish()``
    returns: ``wait_for`` (a summary key logged last) re-reads until it appears or ``timeout`` passes.
    """
    import time

    deadline = time.monotonic() + timeout
    while True:
        logged = _read_offline_run(run_dir)
        if wait_for is None or wait_for in logged["summary"] or time.monotonic() > deadline:
            return logged
        time.sleep(0.2)


def _read_offline_run(run_dir: str | Path) -> dict[str, Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    files = list(Path(run_dir).glob("run-*.wandb"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one run-*.wandb file in {run_dir}, found {len(files)}")
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    run: dict[str, Any] = {}
    config: dict[str, Any] = {}
    for raw in iter_records(files[0]):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "run":
            r = record.run
            run = {"id": r.run_id, "name": r.display_name, "group": r.run_group, "tags": list(r.tags),
                   "project": r.project}
            config.update({_key(i): json.loads(i.value_json) for i in r.config.update})
        elif kind == "config":
            config.update({_key(i): json.loads(i.value_json) for i in record.config.update})
    for row in history:  # the final summary holds the last value of every logged key
        for k, v in row.items():
            if not k.startswith("_"):
                summary.setdefault(k, v)
    return {"history": history, "summary": summary, "run": run, "config": config}


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)
