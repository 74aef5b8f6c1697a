"""HTTP downloads that survive the network: resume, retry, verify, bound, and never leave half a file.

`download(url, output, ...)` writes `output + '.part'` and renames it to `output` only once the body
is complete, its digests match and the caller's `check` accepts it. urllib3 makes the requests and its
`Retry` paces the tries; the resume (an HTTP Range request) is ours. The bounds (`Limits`, as curl's
--max-filesize and --speed-limit/--speed-time) and the one-line failures: docs/weights.md, "How
downloads behave".
"""
import errno
import http.client
import math
import os
import re
import shutil
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request
from typing import NamedTuple, Optional

import urllib3
from urllib3.util.retry import Retry

from finetune_alexnet import cli
from finetune_alexnet import digests
from finetune_alexnet import run_folder
from finetune_alexnet.errors import ToolkitError

READ_BYTES = 256 * 1024  # at most this much per network read, so the bar moves on slow links
DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 4
DEFAULT_BACKOFF = 2.0
MAX_BACKOFF = 60.0
MAX_REDIRECTS = 10
USER_AGENT = 'finetune-alexnet-downloader/1.0 (urllib3)'
# Server-side statuses worth another try: the server is overloaded or restarting, not refusing.
RETRY_STATUSES = (429, 500, 502, 503, 504)
_CONTENT_RANGE = re.compile(r'bytes\s+(\d+)-(\d+)/(\d+|\*)')
_UNSATISFIABLE_RANGE = re.compile(r'bytes\s+\*/(\d+)')
DEFAULT_MAX_MB = 2048  # the cap of a --url download, in MiB: more than any file this toolkit fetches
DEFAULT_SPEED_LIMIT = 1024  # bytes per second ...
DEFAULT_SPEED_TIME = 30.0  # ... averaged over this many seconds, as curl's --speed-limit/--speed-time
# Free space a download or an extraction must leave: 5% of what it writes, at least 100 MiB, so the
# disk is not filled to the last byte for the rest of the machine.
MARGIN_FRACTION = 0.05
MARGIN_BYTES = 100 * 2 ** 20


class Limits(NamedTuple):
    """How much one download may write (`max_bytes`, None: no cap; `cap_text` names the cap in the
    error line) and how slowly it may arrive (a `speed_limit` of 0: no check)."""
    max_bytes: Optional[int] = DEFAULT_MAX_MB * 2 ** 20
    cap_text: str = f'--max_download_mb {DEFAULT_MAX_MB} ({DEFAULT_MAX_MB * 2 ** 20:,} bytes)'
    speed_limit: float = DEFAULT_SPEED_LIMIT
    speed_time: float = DEFAULT_SPEED_TIME


class Downloaded(NamedTuple):
    """What `download` delivered: the file, its size and digests, and whether it was already there."""
    path: str
    size: int
    sha256: str
    sha1: str
    reused: bool


def add_connection_flags(parser):
    """--timeout, --retries and the download's bounds, the same for every command that downloads."""
    parser.add_argument('--timeout', type=float, default=DEFAULT_TIMEOUT,
                        help='seconds without data before a connection counts as lost (and the most '
                             'a response\'s headers may take)')
    parser.add_argument('--retries', type=int, default=DEFAULT_RETRIES,
                        help='tries after a failure that made no progress, with growing pauses')
    parser.add_argument('--max_download_mb', type=float, default=None,
                        help='the most a --url download may be, in MiB (default: the most a file of '
                             f'its kind can be, else {DEFAULT_MAX_MB}; a known source may be no '
                             'larger than its known size)')
    parser.add_argument('--speed_limit', type=float, default=DEFAULT_SPEED_LIMIT,
                        help='bytes per second below which, for --speed_time seconds, a download '
                             'stops (0: never)')
    parser.add_argument('--speed_time', type=float, default=DEFAULT_SPEED_TIME,
                        help='seconds a download may stay under --speed_limit')


# A day: past it a wait is a mistake (and Python's socket timeout overflows on values like 1e300).
MAX_SECONDS = 86400
MAX_RETRIES = 1000


def check_connection_flags(parser, args):
    """parser.error for a connection flag out of range (NaN and infinities included); ToolkitError
    for a --url that is not http(s)."""
    def finite(value):
        return value is not None and math.isfinite(value)

    if not (finite(args.timeout) and 0 < args.timeout <= MAX_SECONDS):
        parser.error(f'--timeout must be positive and at most {MAX_SECONDS} s, got {args.timeout}')
    if not 0 <= args.retries <= MAX_RETRIES:
        parser.error(f'--retries must be in 0..{MAX_RETRIES}, got {args.retries}')
    if not (finite(args.speed_limit) and args.speed_limit >= 0):
        parser.error(f'--speed_limit must be 0 or more bytes per second, got {args.speed_limit}')
    if not (finite(args.speed_time) and 0 < args.speed_time <= MAX_SECONDS):
        parser.error(f'--speed_time must be a positive number of seconds, at most {MAX_SECONDS}, '
                     f'got {args.speed_time}')
    if args.max_download_mb is not None:
        if not (finite(args.max_download_mb) and args.max_download_mb > 0):
            parser.error(f'--max_download_mb must be a positive number of MiB, got {args.max_download_mb}')
        if not args.url:
            parser.error('--max_download_mb caps a --url download; a known source is capped at its '
                         'known size')
    if args.url:
        check_url(args.url)


def limits(args, known_size=None, name='this file', most=None):
    """The `Limits` of a command's download: a known source's own size; for `--url`,
    --max_download_mb, else `most` ((bytes, 'what they are'): the most a file of this kind can be,
    e.g. AlexNet's weights), else DEFAULT_MAX_MB."""
    if known_size is not None and not args.url:
        cap, text = known_size, f"{name}'s known size ({known_size:,} bytes)"
    elif args.max_download_mb is None and most is not None:
        cap, text = most[0], f'{most[1]} ({most[0]:,} bytes; --max_download_mb allows more)'
    else:
        megabytes = args.max_download_mb if args.max_download_mb is not None else DEFAULT_MAX_MB
        cap = int(megabytes * 2 ** 20)
        text = f'--max_download_mb {megabytes:g} ({cap:,} bytes)'
    return Limits(cap, text, args.speed_limit, args.speed_time)


def free_space(folder):
    """Bytes free for this user in the file system that holds `folder` (or would hold it)."""
    return shutil.disk_usage(run_folder.nearest_existing(folder)).free


def check_free_space(what, size, folder, needs=None):
    """ToolkitError unless `folder`'s file system can take `size` more bytes and the margin; `needs`
    words the need in the message (default: 'needs SIZE and')."""
    free = free_space(folder)
    margin = max(int(size * MARGIN_FRACTION), MARGIN_BYTES)
    if size + margin > free:
        needs = needs or f'needs {human_bytes(size)} ({size:,} bytes) and'
        raise ToolkitError(f'{what}: {needs} {folder} has {human_bytes(free)} free (a margin of '
                           f'{human_bytes(margin)} must stay free); free some space first')


def is_disk_full(error):
    return getattr(error, 'errno', None) in (errno.ENOSPC, errno.EDQUOT)


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
    for unit, size in (('TiB', 2 ** 40), ('GiB', 2 ** 30), ('MiB', 2 ** 20), ('KiB', 2 ** 10)):
        if count >= size:
            return f'{count / size:.1f} {unit}'
    return f'{count:.1f} B' if isinstance(count, float) else f'{count} B'


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
        self.terminal = self.stream.isatty()
        self.line = cli.StatusLine(self.stream)
        self.last_draw = 0.0
        self.last_step = -1

    def begin(self, done, total):
        """A new response starts at `done` bytes of `total` (None: unknown); called before `update`."""
        self.total, self.start_bytes, self.start_time = total, done, time.monotonic()
        if self.last_step < 0:
            self.last_step = self._step(done)

    def _step(self, done):
        return done * 10 // self.total if self.total else done // (100 * 2 ** 20)

    def _numbers(self, done):
        elapsed = time.monotonic() - self.start_time
        rate = (done - self.start_bytes) / elapsed if elapsed > 0 else 0.0
        text = self.amount(done) + (f' of {self.amount(self.total)}' if self.total else '')
        text += f', {self.amount(rate)}/s'
        if self.total and rate > 0:
            text += f', {_clock((self.total - done) / rate)} left'
        return text

    def update(self, done):
        if self.terminal:
            now = time.monotonic()
            if now - self.last_draw < 0.1 and done != self.total:
                return
            self.last_draw = now
            width = 30
            filled = int(width * done / self.total) if self.total else 0
            bar = '#' * filled + '.' * (width - filled)
            percent = f'{100 * done / self.total:5.1f}%' if self.total else ''
            self.line.show(f'{self.label} [{bar}] {percent} {self._numbers(done)}',
                           f'{self.label} {percent} {self._numbers(done)}')
            return
        step = self._step(done)
        if step > self.last_step:
            self.last_step = step
            percent = f'{10 * step}%' if self.total else self.amount(done)
            self.stream.write(f'{self.label}: {percent} ({self._numbers(done)})\n')
            self.stream.flush()

    def note(self, text):
        """Print `text` on a line of its own, below the bar."""
        self.line.print(text)

    def finish(self):
        self.line.end()  # nothing off a terminal: no line is open there


class _TryFailed(Exception):
    """One try failed in a way that another may fix: args[0] says how; `unreached` when no response
    came at all (no network, perhaps: the message then gives the manual route)."""

    def __init__(self, message, unreached=False):
        super().__init__(message)
        self.unreached = unreached


class _Settings(NamedTuple):
    timeout: float
    retries: int
    backoff: float
    manual_hint: str
    limits: Limits


class _SlowHeaders(TimeoutError):
    """The status line and headers did not arrive within --timeout."""


class _HeadersOnTime:
    """A urllib3 connection whose status line and headers must all arrive within its read timeout:
    that timeout, like the socket's, is renewed by every byte, so only a timer that shuts the socket
    bounds the whole wait."""

    def getresponse(self):
        self._lock, self._waiting, self._late = threading.Lock(), True, False
        timer = threading.Timer(self.timeout, self._shut)
        timer.daemon = True
        timer.start()
        try:
            response = super().getresponse()
        except (OSError, http.client.HTTPException):
            if self._late:
                raise _SlowHeaders() from None
            raise
        finally:
            with self._lock:  # from here on the timer leaves the socket alone
                self._waiting = False
            timer.cancel()
        if self._late:  # cut mid-headers: http.client takes the end of the stream for their end
            response.close()
            raise _SlowHeaders()
        return response

    def _shut(self):
        with self._lock:
            if not self._waiting:
                return
            self._late = True
            try:
                # socket.socket's own shutdown, under an SSL socket's too: the blocked read must end.
                socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
            except OSError:
                pass


def _on_time(pool):
    """The urllib3 pool class `pool` with connections whose headers must arrive on time."""
    connection = type(pool.ConnectionCls.__name__, (_HeadersOnTime, pool.ConnectionCls), {})
    return type(pool.__name__, (pool,), {'ConnectionCls': connection})


_POOL_CLASSES = {'http': _on_time(urllib3.HTTPConnectionPool), 'https': _on_time(urllib3.HTTPSConnectionPool)}


def _pool_manager(url):
    """urllib3's pools of such connections, through the proxy the environment names (http_proxy,
    https_proxy, no_proxy), which curl and Python's urllib honour too."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    use_proxy = proxy and not urllib.request.proxy_bypass(parts.netloc)
    manager = urllib3.ProxyManager(proxy) if use_proxy else urllib3.PoolManager()
    manager.pool_classes_by_scheme = _POOL_CLASSES
    return manager


class _SpeedGuard:
    """curl's --speed-limit/--speed-time: a window of one response that ran too slowly stops the
    download (`add`), and so does a failed response when the average since the first one began,
    pauses included, is too slow (`failed`): see docs/weights.md, "How downloads behave"."""

    def __init__(self, url, part, limits):
        self.url, self.part = url, part
        self.limit, self.window = limits.speed_limit, limits.speed_time
        self.total_received = 0
        self.started = None

    def begin(self):
        """A window starts: a response begins, or the last window was checked."""
        self.window_start = time.monotonic()
        self.started = self.started or self.window_start
        self.received = 0

    def _check(self, received, elapsed, held):
        rate = received / elapsed
        if rate < self.limit:
            resume = f'; rerun to resume from {self.part} ({human_bytes(held)})' if held else ''
            raise ToolkitError(f'{self.url}: too slow: {human_bytes(received)} in {elapsed:.0f} s '
                               f'({human_bytes(rate)}/s), under --speed_limit {self.limit:g} bytes/s '
                               f'for --speed_time {self.window:g} s{resume}')

    def add(self, count, held):
        """Count `count` more bytes received now (the .part holds `held`)."""
        self.received += count
        self.total_received += count
        elapsed = time.monotonic() - self.window_start
        if self.limit and elapsed >= self.window:
            self._check(self.received, elapsed, held)
            self.begin()

    def failed(self, held):
        total_elapsed = time.monotonic() - self.started
        if self.limit and total_elapsed >= self.window:
            self._check(self.total_received, total_elapsed, held)


def _cause(error):
    """The socket's or http.client's error under urllib3's wrapper of it: what a message names."""
    inner = error.__cause__ or next((arg for arg in error.args if isinstance(arg, Exception)), None)
    return inner or error


def _request(manager, url, offset, timeout):
    """One GET from byte `offset`, its body still to come and left as sent. urllib3 follows
    redirects but retries nothing: `_fetch`'s one count covers the request and the body alike."""
    headers = {'User-Agent': USER_AGENT, 'Accept-Encoding': 'identity'}
    if offset:
        headers['Range'] = f'bytes={offset}-'
    return manager.request('GET', url, headers=headers, timeout=urllib3.Timeout(timeout, timeout),
                           retries=Retry(total=MAX_REDIRECTS, connect=0, read=0, other=0),
                           preload_content=False, decode_content=False, enforce_content_length=False)


def _no_response(url, error, settings):
    """The _TryFailed (or, for a host name that does not resolve, the ToolkitError) for a request
    that got no response: `error` is urllib3's reason."""
    cause = _cause(error)
    if isinstance(cause, socket.gaierror):
        # A name that does not resolve will not resolve on a retry half a minute later.
        host = urllib.parse.urlsplit(url).hostname
        return ToolkitError(f'{url}: the host name {host} does not resolve ({cause.strerror or cause}): '
                            'check the address (a typo in the URL?) and that this machine reaches a '
                            'DNS server' + (f'; or {settings.manual_hint}' if settings.manual_hint else ''))
    if isinstance(cause, _SlowHeaders):
        return _TryFailed(f'no complete response within --timeout {settings.timeout:g} s (the server '
                          'sends its headers too slowly)')
    if isinstance(error, urllib3.exceptions.ConnectTimeoutError):  # refused, unreachable, timed out
        reason = ('connection refused' if isinstance(cause, ConnectionRefusedError) else 'timed out'
                  if isinstance(cause, TimeoutError) else getattr(cause, 'strerror', None) or cause)
        return _TryFailed(f'cannot reach {urllib.parse.urlsplit(url).netloc} ({reason})', unreached=True)
    return _TryFailed(f'{type(cause).__name__}: {cause}', unreached=True)


def _check_encoding(url, response):
    """Refuse a body in an encoding the request did not accept (`Accept-Encoding: identity`): its
    bytes are not the file's, so neither its size nor its digest would be the file's."""
    encoding = (response.headers.get('Content-Encoding') or '').strip().lower()
    if encoding not in ('', 'identity'):
        response.close()
        raise ToolkitError(f'{url}: the server sent the file with Content-Encoding: {encoding}, which '
                           'was not asked for (the request accepts only identity); refusing it: '
                           'download it by hand, or use another mirror')


def _check_size(url, part, total, offset, limits):
    """Refuse, before anything is written, a file over the cap or over the free space."""
    cap = limits.max_bytes
    if cap is not None and total > cap:
        raise ToolkitError(f'{url}: the server announces {human_bytes(total)} ({total:,} bytes), more '
                           f'than {limits.cap_text}; refusing it before writing anything')
    held = f', {human_bytes(offset)} of it already in {part}' if offset else ''
    check_free_space(url, total - offset, os.path.dirname(os.path.abspath(part)),
                     f'{human_bytes(total)} ({total:,} bytes) to download{held}, but')


def _size(path):
    return os.path.getsize(path) if os.path.exists(path) else 0


def _start(url, part, manager, settings, progress):
    """Open the response for the rest of `part`; returns (response or None if complete, offset, total)."""
    offset = _size(part)
    try:
        response = _request(manager, url, offset, settings.timeout)
    except urllib3.exceptions.MaxRetryError as error:
        raise _no_response(url, error.reason, settings) from None
    if response.status == 416 and offset:
        # Asked for bytes past the end: the .part may already hold the whole file.
        match = _UNSATISFIABLE_RANGE.search(response.headers.get('Content-Range') or '')
        response.close()
        if match and int(match.group(1)) == offset:
            return None, offset, offset
        os.truncate(part, 0)  # a longer .part than the file: it is not this file; start over
        raise _TryFailed(f'the server has fewer bytes than {part} holds; starting over')
    if response.status >= 300:
        response.close()
        if response.status in RETRY_STATUSES:
            raise _TryFailed(f'HTTP {response.status} {response.reason}')
        raise ToolkitError(f'{url}: HTTP {response.status} {response.reason}')

    _check_encoding(url, response)
    length = response.headers.get('Content-Length')
    length = int(length) if length and length.isdigit() else None
    restart = False
    if offset and response.status == 206:
        match = _CONTENT_RANGE.search(response.headers.get('Content-Range') or '')
        if not match or int(match.group(1)) != offset:
            response.close()
            os.truncate(part, 0)
            raise _TryFailed('the server answered the resume request with other bytes; starting over')
        total = int(match.group(3)) if match.group(3) != '*' else None
    else:
        # 200 to a Range request: the server sends the whole file again, so start it afresh (once
        # the size is known to fit: a refused download keeps the .part it had).
        restart = bool(offset)
        offset = 0
        total = length
    if total is not None:
        try:
            _check_size(url, part, total, offset, settings.limits)
        except ToolkitError:
            response.close()
            raise
    if restart:
        os.truncate(part, 0)
    progress.begin(offset, total)
    return response, offset, total


def _receive(url, part, response, offset, total, progress, settings, speed):
    """Append the response's body to `part`; returns the .part's size when the body ended."""
    done = offset
    cap = settings.limits.max_bytes
    speed.begin()
    try:
        with open(part, 'ab') as stream:
            while True:
                try:
                    chunk = response.read1(READ_BYTES)  # what has arrived, without waiting for more
                except (urllib3.exceptions.HTTPError, OSError) as error:
                    speed.failed(done)
                    cause = _cause(error)
                    raise _TryFailed(f'connection lost after {human_bytes(done)} '
                                     f'({type(cause).__name__}: {cause})') from None
                if not chunk:
                    break
                if cap is not None and done + len(chunk) > cap:  # no size announced: what came goes
                    stream.close()
                    os.remove(part)
                    raise ToolkitError(f'{url}: the server announced no size and sent more than '
                                       f'{settings.limits.cap_text}; stopped at {done + len(chunk):,} '
                                       f'bytes and removed {part}')
                stream.write(chunk)
                done += len(chunk)
                progress.update(done)
                speed.add(len(chunk), done)
    except OSError as error:  # writing the .part (reading errors became _TryFailed above)
        full = 'the disk is full; free some space and ' if is_disk_full(error) else ''
        raise ToolkitError(f'{part}: cannot write it ({error.strerror or error}) after '
                           f'{human_bytes(done)}; {full}rerun to resume') from None
    finally:
        response.close()
    if total is not None and done < total:
        speed.failed(done)
        # Counted here, not by urllib3 (enforce_content_length), to say how short the body was.
        raise _TryFailed(f'the server sent {done:,} of {total:,} bytes (body shorter than '
                         'its Content-Length)')
    if total is not None and done > total:
        os.truncate(part, 0)
        raise _TryFailed(f'the server sent {done:,} bytes, more than its Content-Length {total:,}')
    return done


def _fetch(url, part, settings, progress):
    """Make `part` hold the whole body of `url`, resuming and retrying; returns its size. urllib3's
    Retry counts and paces (doubling up to MAX_BACKOFF) the tries that brought no new byte; one that
    brought bytes was a dropped connection, not a failing server: the count starts again."""
    manager = _pool_manager(url)
    policy = Retry(total=settings.retries, backoff_factor=settings.backoff, backoff_max=MAX_BACKOFF)
    retry = policy
    tries = 0
    best = _size(part)
    speed = _SpeedGuard(url, part, settings.limits)
    while True:
        tries += 1
        try:
            response, offset, total = _start(url, part, manager, settings, progress)
            if response is None:
                return offset
            return _receive(url, part, response, offset, total, progress, settings, speed)
        except _TryFailed as failure:
            size = _size(part)
            if size > best:
                best, retry = size, policy
            else:
                try:
                    retry = retry.increment('GET', url, error=failure)
                except urllib3.exceptions.MaxRetryError:
                    message = f'{url}: {failure}'
                    if failure.unreached and size == 0:
                        message += f'; no network? {settings.manual_hint}'.rstrip('; ')
                    elif size:
                        message += f'; rerun to resume from {part} ({human_bytes(size)})'
                    raise ToolkitError(message + f' (gave up after {tries} tries)') from None
            progress.note(f'{failure}; retrying in {retry.get_backoff_time():.0f} s')
            retry.sleep()


def verify_digests(path, expected_sha256=None, expected_sha1=None, kept_as=None):
    """(sha256, sha1) of `path`; a ToolkitError naming expected and found when one differs."""
    sha256, sha1 = digests.file_hexdigests(path, 'sha256', 'sha1')
    for name, expected, found in (('SHA-256', expected_sha256, sha256), ('SHA-1', expected_sha1, sha1)):
        if expected and expected.lower() != found:
            keep = f'; the file is kept as {kept_as} for inspection (delete it to download again)' \
                if kept_as else ''
            raise ToolkitError(f'{path}: {name} mismatch: expected {expected.lower()}, got {found}{keep}')
    return sha256, sha1


def download(url, output, sha256=None, sha1=None, check=None, timeout=DEFAULT_TIMEOUT,
             retries=DEFAULT_RETRIES, backoff=DEFAULT_BACKOFF, manual_hint='', stream=None,
             limits=Limits()):
    """Download `url` to `output` through `output.part`; returns a `Downloaded`. An existing `output`
    (complete: it is written by rename) is reused after the same digests and `check(path)` (raises
    ToolkitError for wrong content; run on the `.part` before the rename) as a fresh download."""
    output = os.fspath(output)
    stream = stream or sys.stdout
    if os.path.isfile(output):
        found_sha256, found_sha1 = verify_digests(output, sha256, sha1)
        if check:
            check(output)
        return Downloaded(output, os.path.getsize(output), found_sha256, found_sha1, True)

    run_folder.check_output_file(output, 'the download')
    part = output + '.part'
    settings = _Settings(timeout, retries, backoff, manual_hint, limits)
    progress = DownloadProgress(os.path.basename(output), stream)
    if _size(part):
        stream.write(f'resuming {part} ({human_bytes(_size(part))} already there)\n')
    stream.write(f'downloading {url}\n')
    stream.flush()
    try:
        size = _fetch(url, part, settings, progress)
    except KeyboardInterrupt:
        progress.finish()
        stream.write(f'\ninterrupted: {part} keeps {human_bytes(_size(part))}; rerun to resume\n')
        stream.flush()
        raise
    finally:
        progress.finish()  # an error line goes below the bar, not onto it
    found_sha256, found_sha1 = verify_digests(part, sha256, sha1, kept_as=part)
    if check:
        check(part)
    # Not run_folder.replaced_atomically, whose temporary goes when a write fails: a .part stays, under
    # the name a rerun looks for, to be resumed.
    os.replace(part, output)
    return Downloaded(output, size, found_sha256, found_sha1, False)
