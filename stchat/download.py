"""Downloads that survive anything: ranged GETs into the Hugging Face cache, checked by hash.

huggingface_hub 2.4.0 restarts from byte 0 after the process is killed, refetches up to
10 MiB after a cut, and never checks content (`/work/shared/notes/huggingface_hub.md`). So
the transfer is ours, in the library's cache layout so other tools share the result:

    blobs/<sha256>.incomplete   bytes so far, written through as they arrive (a kill -9 loses
                                nothing already received); the next attempt asks for the rest
                                with `Range: bytes=N-`
    blobs/<sha256>              renamed into place only once the content hashes to the Hub's
                                sha256 (LFS files) or git blob id (small files)
    snapshots/<commit>/<path>   relative symlink to the blob, as the library makes it

A mismatch deletes the partial file and says so. The blob is written under the library's own
lock file (`.locks/...`), so stchat and huggingface_hub never write one blob at once.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from stchat.exitcodes import StchatError
from stchat.hub import Hub, HubUnreachable, RemoteFile, hub_errors
from stchat.progress import Reporter, human_bytes

RETRY_WAITS = (1.0, 2.0, 4.0)   # seconds before each retry that follows an attempt without progress
MAX_ATTEMPTS = 50               # attempts per call, however much each one progressed
TIMEOUT = (15.0, 60.0)          # connect, read (a stalled transfer is retried from where it stopped)
_READ = 1 << 20


class IntegrityError(StchatError):
    """Downloaded content does not match the Hub's hash."""


class DiskFull(StchatError):
    """No space left while writing."""


@dataclass
class Fetched:
    path: Path            # the snapshot path (a symlink to the verified blob)
    downloaded: bool      # bytes were transferred by this call (False: the cache had it)


def content_hasher(file: RemoteFile):
    """sha256 of the content for LFS files; git's blob hash (sha1 of a header + content) otherwise."""
    if file.sha256:
        return hashlib.sha256(), file.sha256
    digest = hashlib.sha1()
    digest.update(b"blob %d\0" % file.size)
    return digest, file.git_oid


@contextmanager
def locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # the library's filelock uses flock too
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def hash_file(path: Path, digest, reporter: Reporter | None = None, label: str = "") -> None:
    """Feed `path` to `digest` (a full read: about 1 s per GiB), announcing it when it is big."""
    if reporter and label and path.stat().st_size > (256 << 20):
        reporter.line(f"{label} ({human_bytes(path.stat().st_size)})")
    with open(path, "rb") as handle:
        while block := handle.read(_READ):
            digest.update(block)


def _link(hub: Hub, repo: str, commit: str, file: RemoteFile, blob: Path) -> Path:
    pointer = hub.snapshot_path(repo, commit, file.path)
    pointer.parent.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(blob, pointer.parent)
    if pointer.is_symlink() or pointer.exists():
        if pointer.is_symlink() and os.readlink(pointer) == target:
            return pointer
        pointer.unlink()
    os.symlink(target, pointer)
    refs = hub.repo_dir(repo) / "refs"   # the default branch now resolves to this commit, offline too
    refs.mkdir(parents=True, exist_ok=True)
    (refs / "main").write_text(commit)
    return pointer


def _mismatch(file: RemoteFile, expected: str, actual: str, path: Path) -> IntegrityError:
    kind = "sha256" if file.sha256 else "git blob id"
    return IntegrityError(f"{file.path}: {kind} mismatch (expected {expected[:16]}..., got {actual[:16]}...); "
                          f"the corrupt download {path} was deleted, run the pull again")


def fetch(hub: Hub, repo: str, commit: str, file: RemoteFile, reporter: Reporter) -> Fetched:
    """Make `file` present and verified in the cache; returns its snapshot path."""
    blob = hub.blob_path(repo, file)
    with locked(hub.lock_path(repo, file)):
        if blob.is_file() and blob.stat().st_size == file.size:
            digest, expected = content_hasher(file)
            reporter.line(f"verifying {file.path} (already in the Hugging Face cache)")
            hash_file(blob, digest, reporter, f"reading {file.path}")
            if digest.hexdigest() != expected:
                blob.unlink()
                raise _mismatch(file, expected, digest.hexdigest(), blob)
            return Fetched(_link(hub, repo, commit, file, blob), downloaded=False)
        hub.require_online(repo)
        partial = blob.with_name(blob.name + ".incomplete")
        _download(hub, repo, commit, file, partial, reporter)
        os.replace(partial, blob)
        return Fetched(_link(hub, repo, commit, file, blob), downloaded=True)


def _download(hub: Hub, repo: str, commit: str, file: RemoteFile, partial: Path, reporter: Reporter) -> None:
    partial.parent.mkdir(parents=True, exist_ok=True)
    if partial.exists() and partial.stat().st_size > file.size:
        os.truncate(partial, 0)
    partial.touch()
    digest, expected = content_hasher(file)
    if partial.stat().st_size:           # the hash resumes where the bytes do
        hash_file(partial, digest, reporter, f"checking the {file.path} bytes already downloaded")
    progress = reporter.transfer(file.path, file.size, partial.stat().st_size)
    url = hub.file_url(repo, commit, file.path)
    failures = 0
    for _ in range(MAX_ATTEMPTS):
        before = partial.stat().st_size
        if before == file.size:
            break
        try:
            with hub_errors(hub, repo):
                digest = _attempt(hub, url, partial, digest, file, progress)
            continue
        except HubUnreachable as error:
            progressed = partial.stat().st_size > before
            failures = 0 if progressed else failures + 1
            if failures > len(RETRY_WAITS):
                raise HubUnreachable(f"download of {file.path} stopped at {partial.stat().st_size} of "
                                     f"{file.size} bytes ({error}); run the pull again to resume") from None
            if not progressed:
                time.sleep(RETRY_WAITS[failures - 1])
    if partial.stat().st_size != file.size:
        raise HubUnreachable(f"download of {file.path} did not complete; run the pull again to resume")
    progress.finish()
    reporter.line(f"verifying {'sha256' if file.sha256 else 'git blob id'} of {file.path}")
    if digest.hexdigest() != expected:
        actual = digest.hexdigest()
        partial.unlink()
        raise _mismatch(file, expected, actual, partial)
    reporter.line(f"verified {file.path}")


def _attempt(hub: Hub, url: str, partial: Path, digest, file: RemoteFile, progress):
    """One GET from the current end of `partial`; returns the digest (a new one on restart)."""
    from huggingface_hub.utils import get_session, hf_raise_for_status

    have = partial.stat().st_size
    headers = hub.headers()
    if have:
        headers["Range"] = f"bytes={have}-"
    with get_session().stream("GET", url, headers=headers, follow_redirects=True, timeout=TIMEOUT) as response:
        if response.status_code >= 500 or response.status_code == 429:
            raise HubUnreachable(f"HTTP {response.status_code}")
        hf_raise_for_status(response)
        if have and (response.status_code != 206 or not _starts_at(response, have)):
            os.truncate(partial, 0)          # the server ignored the range: start over
            digest, _ = content_hasher(file)
            have = 0
            progress.restarted(0)
        try:
            with open(partial, "ab", buffering=0) as out:
                for chunk in response.iter_bytes():
                    if have + len(chunk) > file.size:
                        raise HubUnreachable(f"the server sent more than the {file.size} bytes announced")
                    out.write(chunk)
                    digest.update(chunk)
                    have += len(chunk)
                    progress.update(have)
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(f"disk full while writing {partial} ({have} of {file.size} bytes kept); "
                               f"free some space and run the pull again to resume") from None
            raise
    return digest


def _starts_at(response, offset: int) -> bool:
    value = response.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0]) == offset
    except (IndexError, ValueError):
        return False


