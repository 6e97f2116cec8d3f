"""The shard writer's tar bytes are exactly those of Python's tarfile (PAX format) with the fixed
header fields, and webdataset reads them."""

from __future__ import annotations

import io
import tarfile

import webdataset as wds

from ipt_data.remote import open_location
from ipt_data.shardwriter import FIXED_MTIME, ShardWriter

SAMPLES = {
    "00000000_n01440764_p0": {"input.png": b"\x89PNG" + bytes(600), "json": b'{"a":1}'},
    "00000001_" + "long_" * 20 + "p1": {"input.png": bytes(range(256)) * 3, "json": b"{}"},
    "00000002_empty_p2": {"input.png": b"", "json": b"x" * 511},
}


def tarfile_bytes(samples: dict) -> bytes:
    """The same members written by tarfile itself."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for key, members in samples.items():
            for extension, data in members.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size, info.mtime, info.mode = len(data), FIXED_MTIME, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_shards_are_tarfiles_bytes_and_webdataset_reads_them(tmp_path):
    with ShardWriter(open_location(tmp_path), "set-000000.tar") as writer:
        for key, members in SAMPLES.items():
            writer.write(key, members)
        info = writer.close()
    written = (tmp_path / "set-000000.tar").read_bytes()
    assert max(len(f"{key}.json") for key in SAMPLES) > 100  # a name needing a PAX header
    assert written == tarfile_bytes(SAMPLES)
    assert (info.samples, info.bytes) == (3, len(written))
    read = {
        s["__key__"]: s
        for s in wds.WebDataset(str(tmp_path / "set-000000.tar"), shardshuffle=False)
    }
    assert list(read) == list(SAMPLES)
    for key, members in SAMPLES.items():
        assert {ext: read[key][ext] for ext in members} == members
