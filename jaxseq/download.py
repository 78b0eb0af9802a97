"""Downloads: a FASTA over HTTP(S), resumable and md5-checked, and named presets.

:func:`download` fetches one file with urllib, resuming through ``Range`` requests, and renames it
into place only after its md5 matches. :func:`download_preset` fetches a named genome
(:data:`PRESETS`); for an NCBI assembly it also fetches the assembly report and, by default, writes
a FASTA holding only the assembled molecules (chr1-22, X, Y, M for GRCh38) under their UCSC names,
plus an aliases file (``data.aliases``) so that ``chr1``, ``1`` and ``NC_000001.11`` name the same
record. Alternate loci, fix/novel patches and unplaced scaffolds repeat primary sequence: kept, they
would put near-identical sequence into different splits.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from jaxseq import regions

log = logging.getLogger(__name__)

_HASH_BYTES = 8 << 20


class DownloadError(RuntimeError):
    """A download that failed or did not match its checksum; the message names the URL or file."""


def progress_bar(total: int | None, desc: str, enabled: bool, initial: int = 0):
    """A tqdm byte counter on stderr, or a silent one when ``enabled`` is false."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                leave=False, file=sys.stderr, disable=not enabled)


@dataclasses.dataclass(frozen=True)
class DownloadPreset:
    """A named FASTA to download.

    Attributes:
      url: the FASTA's URL.
      md5_url: URL of an ``md5checksums.txt`` listing (``<md5>  ./<file name>`` per line) that holds
        the FASTA's md5; fetched at download time, since the sum cannot be known offline.
      description: one line for ``--help``.
      report_url: URL of the NCBI assembly report (``*_assembly_report.txt``, md5 in the same
        listing); when set, the download keeps only the assembled molecules under UCSC names unless
        ``all_records`` is asked for, and writes an aliases file from the report.
    """

    url: str
    md5_url: str
    description: str
    report_url: str = ""


_NCBI_GRCH38_P13 = "https://ftp.ncbi.nlm.nih.gov/genomes/all/GCF/000/001/405/GCF_000001405.39_GRCh38.p13/"

#: Named downloads for ``python -m jaxseq.genome download NAME``.
PRESETS: dict[str, DownloadPreset] = {
    "grch38-p13": DownloadPreset(
        url=_NCBI_GRCH38_P13 + "GCF_000001405.39_GRCh38.p13_genomic.fna.gz",
        md5_url=_NCBI_GRCH38_P13 + "md5checksums.txt",
        report_url=_NCBI_GRCH38_P13 + "GCF_000001405.39_GRCh38.p13_assembly_report.txt",
        description="NCBI RefSeq human GRCh38.p13 (GCF_000001405.39), soft-masked, about 1 GB gzipped; "
                    "chr1-22, X, Y, M only unless --all-records",
    ),
}


class _Retryable(Exception):
    """A transfer failure worth retrying (connection dropped, timeout, 5xx)."""


def _user_agent() -> str:
    from jaxseq import __version__

    return f"jaxseq/{__version__} (python-urllib)"


def fetch_md5(md5_url: str, filename: str, *, timeout: float = 60.0) -> str:
    """Looks up a file's md5 in an ``md5checksums.txt`` listing.

    Args:
      md5_url: URL of the listing; lines are ``<32 hex>  <path>`` (NCBI writes ``./name``).
      filename: the file's base name.
      timeout: socket timeout in seconds.

    Returns:
      The md5 as 32 lowercase hex characters.

    Raises:
      DownloadError: if the listing cannot be fetched or has no entry for ``filename``.
    """
    request = urllib.request.Request(md5_url, headers={"User-Agent": _user_agent()})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            listing = response.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise DownloadError(f"{md5_url}: cannot fetch checksum listing: {e}") from None
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) >= 2 and re.fullmatch(r"[0-9a-fA-F]{32}", parts[0]) and Path(parts[-1]).name == filename:
            return parts[0].lower()
    raise DownloadError(f"{md5_url}: no md5 listed for {filename}")


def file_md5(path: str | Path) -> str:
    """Returns the md5 of a file as 32 lowercase hex characters (streamed)."""
    digest = hashlib.md5()
    buffer = bytearray(_HASH_BYTES)
    view = memoryview(buffer)
    with open(path, "rb") as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def download(url: str, dest: str | Path, *, md5: str, retries: int = 5, retry_wait: float = 2.0,
             timeout: float = 60.0, progress: bool = True, chunk_bytes: int = 1 << 20) -> Path:
    """Downloads ``url`` into folder ``dest``, resumably, and verifies its md5.

    Bytes go to ``<dest>/<name>.part``; an interrupted transfer (dropped connection, timeout, 5xx)
    is retried with an HTTP ``Range`` request from the ``.part`` file's size, and a later call
    resumes the same way. The file is renamed to ``<dest>/<name>`` only after its md5 matches; a
    mismatch deletes the ``.part`` file, so no wrong or half file is ever left under the final name.
    If the final file already exists with the right md5, nothing is downloaded.

    Args:
      url: http(s) URL; the file name is the URL path's last component.
      dest: folder to download into (created if missing).
      md5: expected md5, 32 hex characters.
      retries: further attempts after a retryable failure (0 = one attempt).
      retry_wait: seconds before the first retry; doubles each time, at most 60.
      timeout: socket timeout in seconds.
      progress: show a tqdm bar on stderr.
      chunk_bytes: bytes per read.

    Returns:
      Path of the verified file.

    Raises:
      DownloadError: on a non-retryable HTTP error, when retries are exhausted (the ``.part`` file
        is kept for a later resume), or on an md5 mismatch (the ``.part`` file is deleted).
    """
    md5 = md5.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{32}", md5):
        raise DownloadError(f"{url}: expected md5 must be 32 hex characters, got {md5!r}")
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    if not name:
        raise DownloadError(f"{url}: URL has no file name")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / name
    part = dest / (name + ".part")
    if final.exists():
        got = file_md5(final)
        if got == md5:
            log.info("%s already downloaded and verified", final)
            return final
        raise DownloadError(f"{final}: already exists with md5 {got}, expected {md5}; remove it to download again")
    attempt = 0
    while True:
        try:
            _transfer(url, part, timeout=timeout, progress=progress, chunk_bytes=chunk_bytes)
            break
        except _Retryable as e:
            attempt += 1
            if attempt > retries:
                raise DownloadError(f"{url}: download failed after {attempt} attempt(s): {e}; "
                                    f"partial data kept in {part}, run again to resume") from None
            wait = min(retry_wait * 2 ** (attempt - 1), 60.0)
            log.warning("%s: %s; retrying in %.0f s (attempt %d of %d)", url, e, wait, attempt + 1, retries + 1)
            time.sleep(wait)
    got = file_md5(part)
    if got != md5:
        part.unlink()
        raise DownloadError(f"{url}: md5 mismatch (expected {md5}, got {got}); deleted {part}")
    os.replace(part, final)
    return final


def _transfer(url: str, part: Path, *, timeout: float, progress: bool, chunk_bytes: int) -> None:
    """One HTTP request appending to ``part`` from its current size; raises _Retryable on transient failure."""
    offset = part.stat().st_size if part.exists() else 0
    # identity: a transparently gzipped response would break byte offsets for Range resumes.
    headers = {"User-Agent": _user_agent(), "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            total = _content_range_total(e.headers.get("Content-Range", ""))
            if total == offset:
                return  # the previous attempt had already received every byte
            part.unlink()
            raise _Retryable(f"server refused resuming at byte {offset} (HTTP 416); restarting") from None
        if e.code >= 500 or e.code in (408, 429):
            raise _Retryable(f"HTTP {e.code} {e.reason}") from None
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _Retryable(str(getattr(e, "reason", e))) from None
    with response:
        if offset and response.status == 206:
            match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", "").strip())
            if not match or int(match.group(1)) != offset:
                part.unlink()
                raise _Retryable("server answered a resume with the wrong byte range; restarting")
            total = None if match.group(3) == "*" else int(match.group(3))
            mode = "ab"
        else:
            # 200: no Range sent, or the server ignores Range: start over from byte 0.
            offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        with open(part, mode) as out, progress_bar(total, part.name[:-5], progress, initial=offset) as bar:
            while True:
                try:
                    chunk = response.read(chunk_bytes)
                except (OSError, http.client.HTTPException) as e:
                    raise _Retryable(f"connection lost: {e!r}") from None
                if not chunk:
                    break
                out.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        # http.client returns b"" (no exception) when the server closes early: check the count.
        raise _Retryable(f"connection closed after {size:,} of {total:,} bytes")


def _content_range_total(value: str) -> int | None:
    match = re.search(r"/(\d+)\s*$", value)
    return int(match.group(1)) if match else None


def _url_name(url: str) -> str:
    return Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name


def download_preset(preset: str | DownloadPreset, dest: str | Path, *, all_records: bool = False,
                    progress: bool = True, **download_kwargs) -> Path:
    """Downloads a named FASTA (see :data:`PRESETS`) and verifies it; for an assembly, selects records.

    The md5 sums are read from the preset's ``md5checksums.txt`` at download time. With a
    ``report_url`` and not ``all_records``, the result is ``<stem>.primary.fa.gz`` beside the
    download: the report's assembled molecules only, renamed to UCSC names (the original name stays
    in the header's description); with ``all_records`` it is the download itself. Either way
    ``<result>.aliases.tsv`` maps each kept record to its other names (use it as ``data.aliases``).

    Args:
      preset: a key of :data:`PRESETS` or a :class:`DownloadPreset`.
      dest: folder to download into.
      all_records: keep every record of the assembly (alternate loci, patches, scaffolds) too.
      progress: show progress bars.
      **download_kwargs: passed to :func:`download` (retries, timeout, ...).

    Returns:
      Path of the FASTA to use.

    Raises:
      DownloadError: unknown preset, failed transfer, md5 mismatch, or a report that does not
        describe the downloaded FASTA.
    """
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise DownloadError(f"unknown download {preset!r}; known: {', '.join(sorted(PRESETS))}")
        preset = PRESETS[preset]
    timeout = download_kwargs.get("timeout", 60.0)
    md5 = fetch_md5(preset.md5_url, _url_name(preset.url), timeout=timeout)
    path = download(preset.url, dest, md5=md5, progress=progress, **download_kwargs)
    if not preset.report_url:
        return path
    report_md5 = fetch_md5(preset.md5_url, _url_name(preset.report_url), timeout=timeout)
    report_path = download(preset.report_url, dest, md5=report_md5, progress=False, **download_kwargs)
    try:
        report = regions.read_assembly_report(report_path)
    except regions.RegionError as e:
        raise DownloadError(str(e)) from None
    if all_records:
        rename = {r.refseq: r.refseq for r in report if r.refseq != "na"}
        result = path
    else:
        rename = {r.refseq: r.ucsc for r in report if r.role == "assembled-molecule"}
        result = Path(dest) / (re.sub(r"(_genomic)?\.f(n)?a(\.gz)?$", "", path.name) + ".primary.fa.gz")
        if not result.exists():
            _select_records(path, result, rename, progress)
    _write_aliases(report, rename, Path(f"{result}.aliases.tsv"))
    return result


def _select_records(source: Path, out: Path, rename: dict[str, str], progress: bool) -> None:
    """Writes the records of ``source`` named in ``rename`` (gzip) under their new names, atomically."""
    tmp = out.with_name(out.name + ".tmp")
    found = []
    keep = False
    # Level 1: the copy is written once and read once per token-cache build; speed matters more.
    with gzip.open(source, "rb") as src, gzip.open(tmp, "wb", compresslevel=1) as dst, \
            progress_bar(None, f"select {out.name}", progress) as bar:
        for line in src:
            if line.startswith(b">"):
                words = line[1:].split(maxsplit=1)
                name = words[0].decode("utf-8", "replace") if words else ""
                keep = name in rename
                if keep:
                    found.append(name)
                    line = b">" + rename[name].encode() + b" " + line[1:]
            if keep:
                dst.write(line)
            bar.update(len(line))
    missing = [name for name in rename if name not in found]
    if missing:
        tmp.unlink()
        raise DownloadError(f"{source}: record(s) {missing[:5]} of the assembly report are not in the FASTA")
    os.replace(tmp, out)


def _write_aliases(report: list, rename: dict[str, str], out: Path) -> None:
    """Writes ``name-in-FASTA<TAB>alias`` for every other name the report gives a kept record."""
    lines = []
    for row in report:
        if row.refseq not in rename:
            continue
        fasta_name = rename[row.refseq]
        for alias in row.names():
            if alias != fasta_name:
                lines.append(f"{fasta_name}\t{alias}\n")
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(lines))
    os.replace(tmp, out)
