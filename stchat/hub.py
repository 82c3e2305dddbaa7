"""The Hugging Face Hub as `stchat pull` sees it: settings, repository metadata, errors, cache paths.

huggingface_hub does the parts it does well: the endpoint (`HF_ENDPOINT`), the token
(`HF_TOKEN` or the stored login), offline mode (`HF_HUB_OFFLINE`), the cache location
(`HF_HOME`, `HF_HUB_CACHE`) and its layout, and the listing of a repository with each file's
size, git id and LFS sha256. The transfer itself is ours (`stchat/download.py`): 2.4.0 neither
resumes after the process is killed nor checks content. Every library or network failure is
turned here into one `StchatError` line saying what the user can do about it.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from stchat.exitcodes import ModelNotFound, StchatError


class HubUnreachable(StchatError):
    """No connection to the endpoint (or offline mode forbids one)."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repository at a fixed commit."""

    path: str
    size: int
    sha256: str | None   # LFS files: the content's sha256 (also the blob name in the cache)
    git_oid: str | None  # every file: the git blob id (the blob name of non-LFS files)

    @property
    def etag(self) -> str:
        """The name of this file's blob in the Hugging Face cache, as the library names it."""
        return self.sha256 or self.git_oid or ""


@dataclass(frozen=True)
class RepoListing:
    repo: str      # the repository's current name (the Hub redirects renamed ones)
    commit: str
    files: dict[str, RemoteFile]
    gated: bool


@dataclass(frozen=True)
class Hub:
    """Where to talk to and where to store; `from_environment()` is what the library would use."""

    endpoint: str
    cache_dir: Path
    token: str | None = None
    offline: bool = False

    @classmethod
    def from_environment(cls) -> "Hub":
        from huggingface_hub import constants, get_token

        return cls(endpoint=constants.ENDPOINT.rstrip("/"), cache_dir=Path(constants.HF_HUB_CACHE),
                   token=get_token(), offline=constants.is_offline_mode())

    # -- cache layout (the library's: models--OWNER--NAME/{blobs,snapshots/<commit>,refs}) ----
    def repo_dir(self, repo: str) -> Path:
        from huggingface_hub.file_download import repo_folder_name

        return self.cache_dir / repo_folder_name(repo_id=repo, repo_type="model")

    def blob_path(self, repo: str, file: RemoteFile) -> Path:
        return self.repo_dir(repo) / "blobs" / file.etag

    def snapshot_path(self, repo: str, commit: str, path: str = "") -> Path:
        snapshot = self.repo_dir(repo) / "snapshots" / commit
        return snapshot / path if path else snapshot

    def lock_path(self, repo: str, file: RemoteFile) -> Path:
        """The same lock file huggingface_hub takes for this blob, so the two never write it at once."""
        from huggingface_hub.file_download import repo_folder_name

        return self.cache_dir / ".locks" / repo_folder_name(repo_id=repo, repo_type="model") / f"{file.etag}.lock"

    def file_url(self, repo: str, commit: str, path: str) -> str:
        """`{endpoint}/{repo}/resolve/{commit}/{path}`. Built here: the library's `hf_hub_url` only
        swaps in `endpoint` when its import-time template starts with the import-time endpoint."""
        return f"{self.endpoint}/{repo}/resolve/{quote(commit, safe='')}/{quote(path)}"

    def headers(self) -> dict[str, str]:
        from huggingface_hub.utils import build_hf_headers

        headers = build_hf_headers(token=self.token or False, library_name="stchat")
        headers["Accept-Encoding"] = "identity"  # sizes and ranges refer to the stored bytes
        return headers

    # -- metadata --------------------------------------------------------------------------
    def listing(self, repo: str, revision: str | None = None) -> RepoListing:
        """Every file of `repo` at `revision` (default branch), with sizes and hashes."""
        self.require_online(repo)
        from huggingface_hub import HfApi

        with hub_errors(self, repo):
            info = HfApi(endpoint=self.endpoint, token=self.token or False).model_info(
                repo, revision=revision, files_metadata=True)
        files = {}
        for sibling in info.siblings or []:
            lfs = sibling.lfs
            sha256 = (lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)) if lfs else None
            files[sibling.rfilename] = RemoteFile(sibling.rfilename, int(sibling.size or 0), sha256, sibling.blob_id)
        if not info.sha:
            raise StchatError(f"{self.endpoint}: no commit reported for {repo}")
        # A renamed repository (PowerInfer/... -> Tiiny/...) is redirected to; `id` is its current name.
        return RepoListing(repo=info.id or repo, commit=info.sha, files=files, gated=bool(info.gated))

    def cached_listing(self, repo: str) -> RepoListing | None:
        """The listing as the cache knows it (`refs/main` and its snapshot), for offline pulls.

        Blobs are named by their hash (sha256 for LFS files, git id otherwise), so what was
        downloaded before can still be verified without asking the Hub."""
        try:
            commit = (self.repo_dir(repo) / "refs" / "main").read_text().strip()
        except OSError:
            return None
        snapshot = self.snapshot_path(repo, commit)
        files = {}
        for pointer in sorted(snapshot.rglob("*")) if snapshot.is_dir() else []:
            if not pointer.is_file():
                continue
            blob = pointer.resolve()
            path = pointer.relative_to(snapshot).as_posix()
            name = blob.name.lower()
            sha256 = name if len(name) == 64 and all(c in "0123456789abcdef" for c in name) else None
            git_oid = name if len(name) == 40 and all(c in "0123456789abcdef" for c in name) else None
            files[path] = RemoteFile(path, blob.stat().st_size, sha256, git_oid)
        return RepoListing(repo=repo, commit=commit, files=files, gated=False) if files else None

    def require_online(self, repo: str) -> None:
        if self.offline:
            raise HubUnreachable(f"{repo} is needed from {self.endpoint} but HF_HUB_OFFLINE is set; "
                                 f"unset it to download")


@contextmanager
def hub_errors(hub: Hub, repo: str):
    """Library and network exceptions -> one-line StchatErrors naming the repository."""
    from huggingface_hub import errors

    try:
        yield
    except errors.GatedRepoError:
        token = "with the token in use" if hub.token else "without a token: set HF_TOKEN"
        raise StchatError(f"{repo} is gated and cannot be downloaded {token}; accept its conditions on "
                          f"{hub.endpoint}/{repo} first") from None
    except errors.RevisionNotFoundError:
        raise ModelNotFound(f"{repo}: revision not found on {hub.endpoint}") from None
    except (errors.RepositoryNotFoundError, errors.RemoteEntryNotFoundError) as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        hint = " (or it is private: set HF_TOKEN)" if status == 401 or not hub.token else ""
        what = "file not found in" if isinstance(error, errors.RemoteEntryNotFoundError) else "repository not found:"
        raise ModelNotFound(f"{what} {repo} on {hub.endpoint}{hint}") from None
    except errors.OfflineModeIsEnabled:
        raise HubUnreachable(f"{repo} is needed from {hub.endpoint} but HF_HUB_OFFLINE is set") from None
    except errors.HfHubHTTPError as error:
        status = getattr(getattr(error, "response", None), "status_code", "?")
        if status in (401, 403):
            raise StchatError(f"{repo}: access denied by {hub.endpoint} (HTTP {status}); check HF_TOKEN") from None
        raise StchatError(f"{repo}: {hub.endpoint} answered HTTP {status}") from None
    except Exception as error:
        if is_network_error(error):
            raise HubUnreachable(f"cannot reach {hub.endpoint} ({describe_network_error(error)}); check the "
                                 f"network or HF_ENDPOINT") from None
        raise


def is_network_error(error: BaseException) -> bool:
    """Connection refused/reset, DNS failure, timeout, protocol error: the httpx2 family the library uses."""
    try:
        import httpx2
    except ImportError:  # pragma: no cover - the library's transport
        return isinstance(error, (ConnectionError, TimeoutError))
    return isinstance(error, (httpx2.TransportError, ConnectionError, TimeoutError))


def describe_network_error(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def same_device(a: Path, b: Path) -> bool:
    """Whether two existing directories are on one filesystem (one free-space pool)."""
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False
