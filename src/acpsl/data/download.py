"""Fetching dataset files from their upstream hosts, only when the user asks (``--download``).

Each file is streamed into a temporary file beside its destination, md5-checked, then moved
into place with :func:`os.replace`, so an interrupted download never leaves a file that looks
complete.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Collection, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from acpsl.errors import DataError

#: Seconds to wait for an upstream host before reporting it unreachable.
DEFAULT_TIMEOUT = 30.0


def _fetch_one(
    url: str, dest: Path, *, md5s: Collection[str], timeout: float, progress: bool
) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress
            ) as bar:
                while block := resp.read(1 << 20):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
        found = digest.hexdigest()
        if md5s and found not in md5s:
            raise DataError(
                f"downloaded {url} but its md5 is {found}, expected one of "
                f"{', '.join(sorted(md5s))}; the file was discarded (try again later, or copy "
                f"a good copy to {dest})"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def fetch(
    urls: Sequence[str],
    dest: Path,
    *,
    md5s: Collection[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
) -> Path:
    """Download one file to ``dest`` from the first of ``urls`` (mirrors) that answers.

    Args:
        urls: full URLs of the same file, tried in order.
        dest: where the file goes; written atomically.
        md5s: accepted md5 values of the file (empty: not checked).
        timeout: seconds to wait for a host.
        progress: show a tqdm progress bar.

    Returns:
        ``dest``.

    Raises:
        DataError: no mirror could be reached (offline), or the downloaded bytes fail the md5.
    """
    if not urls:
        raise DataError(f"no download address is known for {dest.name}; copy it to {dest}")
    failures: list[str] = []
    for url in urls:
        try:
            _fetch_one(url, dest, md5s=md5s, timeout=timeout, progress=progress)
            return dest
        except DataError:
            raise
        except urllib.error.HTTPError as exc:
            failures.append(f"{url} answered HTTP {exc.code} {exc.reason}")
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", None) or exc
            failures.append(f"could not reach the host of {url} ({reason})")
        except ValueError as exc:  # urllib's "unknown url type" and the like
            failures.append(f"bad address {url} ({exc})")
        except OSError as exc:
            raise DataError(f"could not write {dest} while downloading {url}: {exc}") from None
    raise DataError(
        f"could not download {dest.name}: {'; '.join(failures)}. "
        f"If this machine is offline, copy the file by hand to {dest}"
    )
