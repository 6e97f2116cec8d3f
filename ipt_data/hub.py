"""``push`` to the Hugging Face Hub: a set in a folder, uploaded to a dataset repository
(``hf://datasets/OWNER/NAME[@REVISION]``) in a few commits (docs/sharing.md#the-hugging-face-hub).

Writing a set file by file through fsspec would make every file a commit of its own, and a
temporary name and a move two more: some 23,000 commits for ImageNet. Here the selected shards
are first checked in the folder through the one shard stream
(:func:`ipt_data.remote.read_shard`: size, sha256, sample count, member gates), all of them
before anything is uploaded; then the shards the repository does not already hold (its listing
gives each LFS file's sha256) are committed :data:`COMMIT_FILES` at a time, and last one commit
holds the card (``README.md``, whose YAML header the Hub's viewer and ``datasets`` read) and the
manifest. Each commit is atomic on the Hub, so the repository never shows a manifest whose shards
are not all there; an interrupted push is resumed by running it again. The bytes uploaded are
hashed again by huggingface_hub, and a shard whose hash is not its manifest's is refused before
its commit.

A repository that already holds another set's manifest is refused. One that does not exist is
created (``private`` on request), as ``hf upload`` does. Authentication is huggingface_hub's:
the token of ``hf auth login`` or ``HF_TOKEN``; ``HF_ENDPOINT`` names another endpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ipt_data.card import render_card
from ipt_data.configs import DEFAULT_JOBS
from ipt_data.errors import UserError
from ipt_data.layout import CARD_NAME, MANIFEST_NAME
from ipt_data.progress import progress_bar
from ipt_data.remote import (
    SetLocation,
    check_hub_url,
    open_set_location,
    read_bytes,
    read_shard,
    storage_errors,
)
from ipt_data.safety import MAX_MANIFEST_BYTES
from ipt_data.transfer import TransferResult, parse_selection, plan_copy

COMMIT_FILES = 100  # shards per commit: a few commits for a set, each of a size the Hub takes


@dataclass(frozen=True)
class HubPushResult(TransferResult):
    commits: int = 0  # commits made by this call


def hub_repository(url: str) -> tuple[str, str | None]:
    """``OWNER/NAME`` and the revision (None: the default branch) of an ``hf://`` set URL."""
    check_hub_url(url)
    repository, _, revision = url.removeprefix("hf://datasets/").rstrip("/").partition("@")
    return repository, revision or None


def push_to_hub(
    src_dir: str | Path,
    url: str,
    tasks: str | None = None,
    shards: str | None = None,
    *,
    progress: bool = False,
    jobs: int = DEFAULT_JOBS,
    private: bool = False,
    commit_files: int = COMMIT_FILES,
) -> HubPushResult:
    """Upload the set in the folder ``src_dir`` (or the selected part of it) to the dataset
    repository at ``url``, in at most ⌈shards / commit_files⌉ + 1 commits, the manifest in the
    last (see the module doc)."""
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    repository, revision = hub_repository(url)
    api = _hub_api(progress)
    source = open_set_location(src_dir)
    if not source.is_local:
        raise UserError(f"{source.url}: push uploads a set from a folder; pull it first")
    with storage_errors(str(src_dir)):
        plan = plan_copy(source, parse_selection(tasks, shards))
    manifest = json.loads(plan.manifest_bytes)
    # A set written before cards gets one: the Hub reads its tasks from it.
    card = plan.card_bytes or render_card(manifest).encode()
    _check_shards(source, plan.shards, progress, jobs)
    with storage_errors(url):
        api.create_repo(repository, repo_type="dataset", private=private, exist_ok=True)
        present = {
            item.path: item
            for item in api.list_repo_tree(
                repository, repo_type="dataset", revision=revision, recursive=True
            )
        }
        if MANIFEST_NAME in present and _hub_manifest(url) != plan.manifest_bytes:
            raise UserError(
                f"{url} already holds another shard set (its manifest.json differs); choose "
                "another repository"
            )
        missing = [
            shard for shard in plan.shards if not _in_place(present.get(shard["path"]), shard)
        ]
        commits = _commit_shards(api, repository, revision, source, missing, commit_files, jobs)
        if not _card_and_manifest_in_place(present, card, plan.manifest_bytes):
            commits += _commit_last(api, repository, revision, card, plan.manifest_bytes)
    return HubPushResult(
        manifest,
        f"{url.rstrip('/')}/{MANIFEST_NAME}",
        copied=len(missing),
        skipped=len(plan.shards) - len(missing),
        bytes_copied=sum(shard["bytes"] for shard in missing),
        commits=commits,
    )


def _hub_api(progress: bool):
    """huggingface_hub's client (its endpoint and token from HF_ENDPOINT, HF_TOKEN or the
    login), its progress bars shown only with ``progress``; without the package, one clear
    error."""
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.utils import disable_progress_bars
    except ImportError:
        raise UserError("hf:// needs huggingface_hub: pip install 'ipt-toolkit[hf]'") from None
    if not progress:
        disable_progress_bars()
    return HfApi()


def _check_shards(source: SetLocation, shards: list[dict], progress: bool, jobs: int) -> None:
    """Read every shard to be pushed through the checked shard stream, ``jobs`` at a time; the
    failures, if any, are one UserError naming each (nothing has been uploaded then)."""

    def check(shard: dict) -> str | None:
        try:
            for _ in read_shard(source, shard):
                pass
        except UserError as error:
            return str(error)
        except FileNotFoundError:
            return f"{source.describe(shard['path'])}: not found (listed in the manifest)"
        return None

    bar = progress_bar(total=len(shards), unit="shard", desc="check", enabled=progress)
    with bar, ThreadPoolExecutor(jobs, thread_name_prefix="ipt-check") as pool:
        problems = []
        for problem in pool.map(check, shards):
            problems += [problem] if problem else []
            bar.update()
    if problems:
        raise UserError(
            "\n".join(
                [
                    f"{len(problems)} of {len(shards)} shards are bad; nothing was uploaded:",
                    *(f"  {problem}" for problem in problems),
                ]
            )
        )


def _hub_manifest(url: str) -> bytes:
    """The bytes of the manifest the repository holds now."""
    return read_bytes(open_set_location(url), MANIFEST_NAME, limit=MAX_MANIFEST_BYTES)


def _in_place(remote: object, shard: dict) -> bool:
    """True when the repository's file (an entry of its listing, or None) is this shard: its LFS
    sha256 is the manifest's."""
    lfs = getattr(remote, "lfs", None)
    return lfs is not None and lfs.sha256 == shard["sha256"] and lfs.size == shard["bytes"]


def _commit_shards(
    api,
    repository: str,
    revision: str | None,
    source: SetLocation,
    shards: list[dict],
    commit_files: int,
    jobs: int,
) -> int:
    """Commit ``shards`` from the folder, ``commit_files`` to a commit; the number of commits."""
    from huggingface_hub import CommitOperationAdd

    batches = math.ceil(len(shards) / commit_files)
    for number in range(batches):
        batch = shards[number * commit_files : (number + 1) * commit_files]
        additions = [
            CommitOperationAdd(shard["path"], source.path(shard["path"])) for shard in batch
        ]
        api.preupload_lfs_files(
            repository, additions, repo_type="dataset", revision=revision, num_threads=jobs
        )
        for shard, addition in zip(batch, additions, strict=True):
            if (
                addition.upload_info.is_hashed
                and addition.upload_info.sha256.hex() != shard["sha256"]
            ):
                raise UserError(
                    f"{source.describe(shard['path'])}: changed while it was pushed (its sha256 "
                    "is no longer the manifest's); nothing of it was committed"
                )
        api.create_commit(
            repository,
            additions,
            commit_message=f"ipt-data push: shards, part {number + 1} of {batches}",
            repo_type="dataset",
            revision=revision,
            num_threads=jobs,
        )
    return batches


def _card_and_manifest_in_place(present: dict, card: bytes, manifest: bytes) -> bool:
    """True when the repository holds exactly this card and manifest (a finished push)."""
    return all(
        getattr(present.get(name), "blob_id", None) == _git_blob_id(data)
        for name, data in ((CARD_NAME, card), (MANIFEST_NAME, manifest))
    )


def _git_blob_id(data: bytes) -> str:
    """The git object id of a file's bytes, as the Hub lists a regular (not LFS) file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _commit_last(api, repository: str, revision: str | None, card: bytes, manifest: bytes) -> int:
    """Commit the card and the manifest, in this order, together: one commit."""
    from huggingface_hub import CommitOperationAdd

    api.create_commit(
        repository,
        [CommitOperationAdd(CARD_NAME, card), CommitOperationAdd(MANIFEST_NAME, manifest)],
        commit_message="ipt-data push: the card and the manifest",
        repo_type="dataset",
        revision=revision,
    )
    return 1


def summary_line(result: HubPushResult) -> str:
    """The CLI's line: what was uploaded now, in how many commits, where the manifest is."""
    from ipt_data.transfer import summary_line as copy_summary

    return f"{copy_summary(result)}; {result.commits} commits"
