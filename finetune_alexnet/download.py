"""HTTP downloads that survive the network: resume, retry, verify, and never leave half a file.

`download(url, output, ...)` writes to `output + '.part'` and renames it to `output` only once the
body is complete, its digests match and the caller's `check` accepts it, so a file at `output` is
always a whole, verified one. A connection that drops (or a body that ends before its
Content-Length) is resumed with an HTTP Range request, after a back-off, a few times; a rerun after
Ctrl-C resumes from the `.part` the same way. Standard library only (`urllib`).

Every failure is a `ToolkitError` of one line naming the URL or the file: an HTTP status, no network
(with the caller's hint on how to download by hand), a body that stays short, a digest mismatch (the
`.part` is kept for inspection).
"""
import http.client
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import NamedTuple

from finetune_alexnet import digests
from finetune_alexnet import run_folder
from finetune_alexnet.errors import ToolkitError

READ_BYTES = 256 * 1024  # at most this much per network read, so the bar moves on slow links
DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 4
DEFAULT_BACKOFF = 2.0
MAX_BACKOFF = 60.0
USER_AGENT = 'finetune-alexnet-downloader/1.0 (urllib)'
# Server-side statuses worth another try: the server is overloaded or restarting, not refusing.
RETRY_STATUSES = (429, 500, 502, 503, 504)
_CONTENT_RANGE = re.compile(r'bytes\s+(\d+)-(\d+)/(\d+|\*)')
_UNSATISFIABLE_RANGE = re.compile(r'bytes\s+\*/(\d+)')


class Downloaded(NamedTuple):
    """What `download` delivered: the file, its size and digests, and whether it was already there."""
    path: str
    size: int
    sha256: str
    sha1: str
    reused: bool


def add_connection_flags(parser):
    """--timeout and --retries, the same for every command that downloads."""
    parser.add_argument('--timeout', type=float, default=DEFAULT_TIMEOUT,
                        help='seconds without data before a connection counts as lost')
    parser.add_argument('--retries', type=int, default=DEFAULT_RETRIES,
                        help='tries after a failure that made no progress, with growing pauses')


def file_digests(path):
    """(sha256 hex, sha1 hex) of a file, from one read of it."""
    return digests.file_hexdigests(path, 'sha256', 'sha1')


def check_digest_flag(name, value):
    """A --sha256/--sha1 value, lower-cased; a ToolkitError unless it is hex of the right length."""
    if value is None:
        return None
    length = {'sha256': 64, 'sha1': 40}[name]
    value = value.strip().lower()
    if len(value) != length or not re.fullmatch(r'[0-9a-f]+', value):
        raise ToolkitError(f'--{name} {value!r} is not a {name.upper()} digest ({length} hex digits)')
    return value


def check_url(url):
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ('http', 'https'):
        raise ToolkitError(f'--url {url!r}: only http:// and https:// URLs can be downloaded')


def human_bytes(count):
    for unit, size in (('GiB', 2 ** 30), ('MiB', 2 ** 20), ('KiB', 2 ** 10)):
        if count >= size:
            return f'{count / size:.1f} {unit}'
    return f'{count} B'


def _clock(seconds):
    seconds = int(seconds)
    return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}' if seconds >= 3600 \
        else f'{seconds // 60}:{seconds % 60:02d}'


class DownloadProgress:
    """A bar (bytes, rate, time left) on a terminal; off a terminal, one line per 10% (or 100 MiB
    when the size is unknown), so logs stay short."""

    def __init__(self, label, stream=None, amount=None):
        self.label = label
        self.amount = amount or human_bytes  # how a count is written: bytes, or e.g. files
        self.stream = stream or sys.stdout
        self.is_terminal = self.stream.isatty()
        self.total = None
        self.start_bytes = 0
        self.start_time = time.monotonic()
        self.last_draw = 0.0
        self.last_step = -1

    def begin(self, done, total):
        """A new response starts at `done` bytes of `total` (None: unknown)."""
        self.total = total
        self.start_bytes = done
        self.start_time = time.monotonic()
        if self.last_step < 0:
            self.last_step = self._step(done)

    def _step(self, done):
        if self.total:
            return done * 10 // self.total
        return done // (100 * 2 ** 20)

    def _numbers(self, done):
        elapsed = time.monotonic() - self.start_time
        rate = (done - self.start_bytes) / elapsed if elapsed > 0 else 0.0
        text = self.amount(done) + (f' of {self.amount(self.total)}' if self.total else '')
        text += f', {self.amount(rate)}/s'
        if self.total and rate > 0:
            text += f', {_clock((self.total - done) / rate)} left'
        return text

    def update(self, done):
        if self.is_terminal:
            now = time.monotonic()
            if now - self.last_draw < 0.1 and done != self.total:
                return
            self.last_draw = now
            width = 30
            filled = int(width * done / self.total) if self.total else 0
            bar = '#' * filled + '.' * (width - filled)
            percent = f'{100 * done / self.total:5.1f}%' if self.total else ''
            self.stream.write(f'\r{self.label} [{bar}] {percent} {self._numbers(done)}\033[K')
            self.stream.flush()
            return
        step = self._step(done)
        if step > self.last_step:
            self.last_step = step
            percent = f'{10 * step}%' if self.total else self.amount(done)
            self.stream.write(f'{self.label}: {percent} ({self._numbers(done)})\n')
            self.stream.flush()

    def finish(self):
        if self.is_terminal:
            self.stream.write('\n')
            self.stream.flush()


class _Retry(Exception):
    """One attempt failed in a way that another attempt may fix."""


class _Settings(NamedTuple):
    timeout: float
    retries: int
    backoff: float
    manual_hint: str


def _describe_reason(reason):
    if isinstance(reason, socket.gaierror):
        return 'host name not found'
    if isinstance(reason, ConnectionRefusedError):
        return 'connection refused'
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return 'timed out'
    return str(getattr(reason, 'strerror', None) or reason)


def _open(url, offset, settings):
    headers = {'User-Agent': USER_AGENT, 'Accept-Encoding': 'identity'}
    if offset:
        headers['Range'] = f'bytes={offset}-'
    request = urllib.request.Request(url, headers=headers)
    return urllib.request.urlopen(request, timeout=settings.timeout)


def _start(url, part, settings, progress):
    """Open the response for the rest of `part`; returns (response or None if complete, offset, total)."""
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    try:
        response = _open(url, offset, settings)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            # Asked for bytes past the end: the .part may already hold the whole file.
            match = _UNSATISFIABLE_RANGE.search(error.headers.get('Content-Range', '') or '')
            error.close()
            if match and int(match.group(1)) == offset:
                return None, offset, offset
            os.truncate(part, 0)  # a longer .part than the file: it is not this file; start over
            raise _Retry(f'the server has fewer bytes than {part} holds; starting over')
        error.close()
        if error.code in RETRY_STATUSES:
            raise _Retry(f'HTTP {error.code} {error.reason}')
        raise ToolkitError(f'{url}: HTTP {error.code} {error.reason}') from None
    except urllib.error.URLError as error:
        raise _Retry(f'cannot reach {urllib.parse.urlsplit(url).netloc} '
                     f'({_describe_reason(error.reason)})', 'network') from None
    except (socket.timeout, TimeoutError, ConnectionError, http.client.HTTPException, OSError) as error:
        raise _Retry(f'{type(error).__name__}: {error}', 'network') from None

    length = response.headers.get('Content-Length')
    length = int(length) if length and length.isdigit() else None
    if offset and response.status == 206:
        match = _CONTENT_RANGE.search(response.headers.get('Content-Range', '') or '')
        if not match or int(match.group(1)) != offset:
            response.close()
            os.truncate(part, 0)
            raise _Retry('the server answered the resume request with other bytes; starting over')
        total = int(match.group(3)) if match.group(3) != '*' else None
    else:
        if offset:
            # 200 to a Range request: the server sends the whole file again, so start it afresh.
            os.truncate(part, 0)
            offset = 0
        total = length
    progress.begin(offset, total)
    return response, offset, total


def _receive(url, part, response, offset, total, progress):
    """Append the response's body to `part`; returns the .part's size when the body ended."""
    done = offset
    expected_end = total
    try:
        with open(part, 'ab') as stream:
            while True:
                try:
                    chunk = response.read1(READ_BYTES)  # what has arrived, without waiting for more
                except (socket.timeout, TimeoutError, ConnectionError, http.client.HTTPException,
                        OSError) as error:
                    raise _Retry(f'connection lost after {human_bytes(done)} '
                                 f'({type(error).__name__}: {error})', 'body') from None
                if not chunk:
                    break
                stream.write(chunk)
                done += len(chunk)
                progress.update(done)
    finally:
        response.close()
    if expected_end is not None and done < expected_end:
        # urllib returns b'' rather than raising when the server closes early, so count ourselves.
        raise _Retry(f'the server sent {done:,} of {expected_end:,} bytes (body shorter than its '
                     'Content-Length)', 'short')
    if expected_end is not None and done > expected_end:
        os.truncate(part, 0)
        raise _Retry(f'the server sent {done:,} bytes, more than its Content-Length {expected_end:,}')
    return done


def _fetch(url, part, settings, progress):
    """Make `part` hold the whole body of `url`, resuming and retrying; returns its size."""
    failures = attempts = 0
    best = os.path.getsize(part) if os.path.exists(part) else 0
    while True:
        attempts += 1
        try:
            response, offset, total = _start(url, part, settings, progress)
            if response is None:
                return offset
            return _receive(url, part, response, offset, total, progress)
        except _Retry as retry:
            size = os.path.getsize(part) if os.path.exists(part) else 0
            if size > best:
                best, failures = size, 0  # progress was made: the connection dropped, not the server
            else:
                failures += 1
            if failures > settings.retries:
                progress.finish()
                message = f'{url}: {retry.args[0]}'
                if len(retry.args) > 1 and retry.args[1] == 'network' and size == 0:
                    message += f'; no network? {settings.manual_hint}'.rstrip('; ')
                elif size:
                    message += f'; rerun to resume from {part} ({human_bytes(size)})'
                raise ToolkitError(message + f' (gave up after {attempts} tries)') from None
            delay = min(settings.backoff * 2 ** max(failures - 1, 0), MAX_BACKOFF)
            newline = '\n' if progress.is_terminal else ''  # off the bar's line
            progress.stream.write(f'{newline}{retry.args[0]}; retrying in {delay:.0f} s\n')
            progress.stream.flush()
            time.sleep(delay)


def verify_digests(path, expected_sha256=None, expected_sha1=None, kept_as=None):
    """(sha256, sha1) of `path`; a ToolkitError naming expected and found when one differs."""
    sha256, sha1 = file_digests(path)
    for name, expected, found in (('SHA-256', expected_sha256, sha256), ('SHA-1', expected_sha1, sha1)):
        if expected and expected.lower() != found:
            keep = f'; the file is kept as {kept_as} for inspection (delete it to download again)' \
                if kept_as else ''
            raise ToolkitError(f'{path}: {name} mismatch: expected {expected.lower()}, got {found}{keep}')
    return sha256, sha1


def download(url, output, sha256=None, sha1=None, check=None, timeout=DEFAULT_TIMEOUT,
             retries=DEFAULT_RETRIES, backoff=DEFAULT_BACKOFF, manual_hint='', stream=None):
    """Download `url` to `output` through `output.part`; returns a `Downloaded`.

    An existing `output` is reused (it can only be there complete: it is written by rename) after
    the same digest and `check` as a fresh download. `check(path)`, if given, raises ToolkitError
    when the content is wrong; it runs on the `.part` before the rename. Ctrl-C leaves the `.part`
    for the next run to resume.
    """
    output = os.fspath(output)
    stream = stream or sys.stdout
    if os.path.isfile(output):
        found_sha256, found_sha1 = verify_digests(output, sha256, sha1)
        if check:
            check(output)
        return Downloaded(output, os.path.getsize(output), found_sha256, found_sha1, True)

    run_folder.check_output_file(output, 'the download')
    part = output + '.part'
    settings = _Settings(timeout, retries, backoff, manual_hint)
    progress = DownloadProgress(os.path.basename(output), stream)
    if os.path.exists(part) and os.path.getsize(part):
        stream.write(f'resuming {part} ({human_bytes(os.path.getsize(part))} already there)\n')
    stream.write(f'downloading {url}\n')
    stream.flush()
    try:
        size = _fetch(url, part, settings, progress)
    except KeyboardInterrupt:
        progress.finish()
        held = os.path.getsize(part) if os.path.exists(part) else 0
        stream.write(f'\ninterrupted: {part} keeps {human_bytes(held)}; rerun to resume\n')
        stream.flush()
        raise
    progress.finish()
    found_sha256, found_sha1 = verify_digests(part, sha256, sha1, kept_as=part)
    if check:
        check(part)
    os.replace(part, output)
    return Downloaded(output, size, found_sha256, found_sha1, False)
