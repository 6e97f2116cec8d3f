"""The training stream over HTTP (a real loopback server): storage faults retried to the same
batches, bytes that change between attempts refused, and the node's shard cache under its
limit, fetching each shard once per epoch and again when a cached copy no longer matches."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from loopback_servers import http_server
from test_train_support import build_train_shards

from ipt_data.errors import UserError
from ipt_data.tasks import parse_tasks
from ipt_train.configs import LoaderConfig
from ipt_train.schedule import TaskMix
from ipt_train.stream.cache import ShardCache
from ipt_train.stream.loader import StepStream, make_loader
from ipt_train.stream.shardset import ShardSet

MIX = TaskMix.uniform(parse_tasks("sr_x2,denoise_30"))


@pytest.fixture(scope="session")
def train_shards(tmp_path_factory):
    return build_train_shards(tmp_path_factory)


def digests(
    source, steps: range, cache: Path, workers: int = 0, mix: TaskMix = MIX, **config
) -> list[list[int]]:
    """Each unit's pixel digest, in order (4 samples a unit, 8 a step)."""
    settings = {"micro_batch": 4, "workers": workers, "shuffle_block": 16, "cache": str(cache)}
    loader = LoaderConfig(**{**settings, **config})
    shard_set = source if isinstance(source, ShardSet) else ShardSet.open(source)
    units = make_loader(StepStream(shard_set, mix, 3, steps, 8, 0, 1, loader))
    return [unit["digest"].tolist() for unit in units]


def shard_paths(shards: Path) -> list[str]:
    return sorted(f"/{p.relative_to(shards).as_posix()}" for p in shards.glob("*/*.tar"))


def used_shards(shards: Path) -> list[str]:
    return [p for p in shard_paths(shards) if p.split("/")[1] in ("sr_x2", "denoise_30")]


@pytest.mark.parametrize("fault", ["dropped half-way", "503"])
def test_a_storage_fault_is_retried_to_the_same_batches(train_shards, tmp_path, fault):
    expected = digests(train_shards, range(0, 12), tmp_path / "local")
    with http_server(train_shards) as server:
        for path in used_shards(train_shards):
            if fault == "503":
                server.unavailable[path] = 1
            else:
                server.drops[path] = 1
        assert digests(server.url, range(0, 12), tmp_path / "cache", workers=1) == expected
        assert all(server.hits[path] == 2 for path in used_shards(train_shards))


def test_a_shard_that_keeps_failing_is_one_error_naming_it(train_shards, tmp_path):
    with http_server(train_shards) as server:
        for path in used_shards(train_shards):
            server.drops[path] = 100
        with pytest.raises(UserError, match=r"\.tar: transfer failed after 2 attempts"):
            digests(server.url, range(0, 4), tmp_path / "cache", fetch_attempts=2)
        assert max(server.hits.values()) == 2


def test_bytes_that_change_between_attempts_are_refused(train_shards, tmp_path):
    with http_server(train_shards) as server:
        for path in used_shards(train_shards):
            data = bytearray((train_shards / path[1:]).read_bytes())
            data[len(data) // 4] ^= 0xFF  # within the half the first attempt got
            server.drops[path], server.changed[path] = 1, bytes(data)
        with pytest.raises(UserError, match="bytes differ between two attempts"):
            digests(server.url, range(0, 4), tmp_path / "cache")


def test_two_epochs_through_a_small_cache(train_shards, tmp_path, capfd):
    """sr_x2 (3 shards of 16 samples, one a shuffle block) through a cache limited to 60% of
    them, for two epochs (12 steps of 8): each shard fetched once per epoch, the limit held at
    every moment; then a flipped byte in a cached copy: fetched again, and said."""
    mix = TaskMix.uniform(parse_tasks("sr_x2"))
    used = [p for p in shard_paths(train_shards) if p.startswith("/sr_x2/")]
    limit = int(0.6 * sum((train_shards / p[1:]).stat().st_size for p in used))
    cache_dir = tmp_path / "cache"
    run = {"mix": mix, "cache_limit": str(limit), "read_ahead": 2}
    expected = digests(train_shards, range(0, 12), tmp_path / "local", mix=mix)
    with http_server(train_shards) as server:
        with UsageWatcher(ShardCache(cache_dir, limit)) as watcher:
            got = digests(server.url, range(0, 6), cache_dir, **run)
            assert [server.hits[p] for p in used] == [1, 1, 1], server.hits  # epoch 1
            got += digests(server.url, range(6, 12), cache_dir, **run)
        assert got == expected
        assert watcher.samples > 10 and watcher.most <= limit
        assert all(1 <= server.hits[p] <= 2 for p in used), server.hits  # epoch 2: once more
        before = sum(server.hits[p] for p in used)
        cached = sorted(cache_dir.glob("shards/*.tar"))
        data = bytearray(cached[0].read_bytes())
        data[len(data) // 2] ^= 0x01
        cached[0].write_bytes(bytes(data))
        capfd.readouterr()
        assert digests(server.url, range(0, 6), cache_dir, **run) == expected[:12]
        said = capfd.readouterr().err
        assert "no longer matches the manifest" in said and "fetching it again" in said
        assert sum(server.hits[p] for p in used) > before


def test_loader_workers_share_the_cache_without_fetching_twice(train_shards, tmp_path):
    """Two loader processes read every shard of both tasks in an epoch: each shard is fetched
    once, by whichever asked first."""
    with http_server(train_shards) as server:
        digests(server.url, range(0, 12), tmp_path / "cache", workers=2)
        assert [server.hits[p] for p in used_shards(train_shards)] == [1] * 6


class UsageWatcher:
    """Samples a cache's usage every few milliseconds while its block runs."""

    def __init__(self, cache: ShardCache) -> None:
        self.cache, self.most, self.samples = cache, 0, 0
        self.stop = threading.Event()

    def __enter__(self) -> UsageWatcher:
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def _watch(self) -> None:
        while not self.stop.wait(0.003):
            self.most = max(self.most, self.cache.usage())
            self.samples += 1


def test_cache_limit_text_is_parsed_or_refused(tmp_path):
    assert ShardCache(tmp_path / "a", "1.5K").limit == 1536
    assert ShardCache(tmp_path / "b", 1000).limit == 1000
    assert 0 < ShardCache(tmp_path / "c", "10%").limit < ShardCache(tmp_path / "d").limit
    with pytest.raises(UserError, match="--cache-limit 'lots'"):
        ShardCache(tmp_path / "e", "lots")
    small = ShardCache(tmp_path / "f", 10)
    with pytest.raises(UserError, match="smaller than one shard"), small.new_copy("0" * 64, 11):
        pass
    assert np.isfinite(small.limit)
