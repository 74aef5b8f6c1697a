"""Downloads against a local HTTP server with real faults: drops, short bodies, 404, bad digests; and
hostile ones: sizes past the disk or the cap, endless, trickling, stalled and encoded bodies."""
import errno
import gzip
import hashlib
import io
import os
import re
import time

import numpy as np
import pytest

import http_fixture
from finetune_alexnet import download
from finetune_alexnet.errors import ToolkitError
from http_fixture import closed_port_url

SIZE = 3 * 1024 * 1024 + 12345


@pytest.fixture
def file_server():
    yield from http_fixture.serve()


@pytest.fixture(scope='module')
def payload():
    return np.random.default_rng(5).integers(0, 256, SIZE, dtype=np.uint8).tobytes()


def fetch(url, output, **kwargs):
    kwargs.setdefault('backoff', 0.0)
    kwargs.setdefault('retries', 3)
    kwargs.setdefault('stream', io.StringIO())
    return download.download(url, str(output), **kwargs)


def test_whole_download_is_byte_identical_and_reports_every_tenth(tmp_path, file_server, payload):
    url = file_server.add('/data.bin', payload)
    log = io.StringIO()
    result = fetch(url, tmp_path / 'data.bin', stream=log)
    assert (tmp_path / 'data.bin').read_bytes() == payload
    assert not (tmp_path / 'data.bin.part').exists()
    assert result == download.Downloaded(str(tmp_path / 'data.bin'), SIZE,
                                         hashlib.sha256(payload).hexdigest(),
                                         hashlib.sha1(payload).hexdigest(), False)
    lines = [line for line in log.getvalue().splitlines() if line.startswith('data.bin: ')]
    assert [line.split()[1] for line in lines] == [f'{p}%' for p in range(10, 101, 10)]
    assert all('/s' in line for line in lines) and 'left' in lines[0]
    assert file_server.ranges('/data.bin') == [None]


def test_dropped_connection_is_resumed_with_a_range_request(tmp_path, file_server, payload):
    url = file_server.add('/data.bin', payload, drop_after=1_000_000)
    log = io.StringIO()
    fetch(url, tmp_path / 'data.bin', stream=log)
    assert (tmp_path / 'data.bin').read_bytes() == payload
    first, resumed = file_server.ranges('/data.bin')
    assert first is None
    start = int(resumed[len('bytes='):-1])
    assert 0 < start <= 1_000_000 and resumed == f'bytes={start}-'
    assert 'retrying' in log.getvalue()


def test_server_ignoring_range_restarts_from_zero(tmp_path, file_server, payload):
    url = file_server.add('/data.bin', payload, drop_after=700_000, ignore_range=True)
    fetch(url, tmp_path / 'data.bin')
    assert (tmp_path / 'data.bin').read_bytes() == payload
    assert len(file_server.ranges('/data.bin')) == 2


def test_body_shorter_than_content_length_is_an_error(tmp_path, file_server, payload):
    url = file_server.add('/data.bin', payload, short_by=100, ignore_range=True)
    with pytest.raises(ToolkitError) as error:
        fetch(url, tmp_path / 'data.bin', retries=2)
    assert str(error.value).startswith(
        f'{url}: the server sent {SIZE - 100:,} of {SIZE:,} bytes (body shorter than its Content-Length)')
    # The first try made progress; three more that made none end it.
    assert 'gave up after 4 tries' in str(error.value)
    assert not (tmp_path / 'data.bin').exists()
    assert len(file_server.ranges('/data.bin')) == 4


def test_404_says_status_and_url_without_retrying(tmp_path, file_server):
    url = file_server.url('/missing.npy')
    with pytest.raises(ToolkitError) as error:
        fetch(url, tmp_path / 'x.npy')
    assert str(error.value) == f'{url}: HTTP 404 Not Found'
    assert len(file_server.requests) == 1
    assert not os.listdir(tmp_path)


def test_server_errors_are_retried_then_reported(tmp_path, file_server, payload):
    url = file_server.add('/data.bin', payload, status=503)
    with pytest.raises(ToolkitError, match=r'HTTP 503 Service Unavailable \(gave up after 2 tries\)'):
        fetch(url, tmp_path / 'data.bin', retries=1)
    assert len(file_server.requests) == 2


def test_no_network_says_so_with_the_manual_route(tmp_path):
    url = closed_port_url('/bvlc_alexnet.npy')
    with pytest.raises(ToolkitError) as error:
        fetch(url, tmp_path / 'w.npy', retries=1, manual_hint='download it by hand and pass --weights_path')
    message = str(error.value)
    assert message.startswith(f'{url}: cannot reach 127.0.0.1:')
    assert 'connection refused' in message and 'no network? download it by hand and pass --weights_path' \
        in message


def test_timeout_is_a_lost_connection(tmp_path, file_server, payload):
    url = file_server.add('/data.bin', payload, first_byte_delay=3.0)
    with pytest.raises(ToolkitError, match='timed out|TimeoutError'):
        fetch(url, tmp_path / 'data.bin', retries=0, timeout=0.5)


def test_digest_mismatch_keeps_part_and_a_rerun_resumes_from_it(tmp_path, file_server, payload):
    url = file_server.add('/data.bin', payload)
    output = tmp_path / 'data.bin'
    actual = hashlib.sha256(payload).hexdigest()
    with pytest.raises(ToolkitError) as error:
        fetch(url, output, sha256='ab' * 32)
    assert str(error.value) == (f'{output}.part: SHA-256 mismatch: expected {"ab" * 32}, got {actual}; '
                                f'the file is kept as {output}.part for inspection (delete it to '
                                'download again)')
    assert not output.exists() and (tmp_path / 'data.bin.part').read_bytes() == payload

    # The complete .part is not downloaded again: the server answers the Range request with 416.
    result = fetch(url, output, sha256=actual)
    assert output.read_bytes() == payload and not result.reused
    assert file_server.ranges('/data.bin') == [None, f'bytes={SIZE}-']
    with pytest.raises(ToolkitError, match='SHA-1 mismatch'):
        fetch(url, tmp_path / 'other.bin', sha1='0' * 40)


def test_rerun_resumes_a_partial_file_and_reuses_a_finished_one(tmp_path, file_server, payload):
    url = file_server.add('/data.bin', payload)
    output = tmp_path / 'data.bin'
    (tmp_path / 'data.bin.part').write_bytes(payload[:500_000])
    log = io.StringIO()
    fetch(url, output, stream=log)
    assert output.read_bytes() == payload
    assert file_server.ranges('/data.bin') == ['bytes=500000-']
    assert 'resuming' in log.getvalue()
    again = fetch(url, output)
    assert again.reused and again.sha256 == hashlib.sha256(payload).hexdigest()
    assert len(file_server.requests) == 1


def test_a_check_that_fails_leaves_nothing_at_the_output(tmp_path, file_server, payload):
    url = file_server.add('/data.bin', payload)

    def refuse(path):
        raise ToolkitError(f'{path}: not a weights file')

    with pytest.raises(ToolkitError, match=r'data.bin.part: not a weights file'):
        fetch(url, tmp_path / 'data.bin', check=refuse)
    assert not (tmp_path / 'data.bin').exists()


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_terminal_gets_a_bar_with_bytes_rate_and_time_left(tmp_path, file_server, payload,
                                                           monkeypatch):
    monkeypatch.setenv('COLUMNS', '200')  # a terminal wide enough for the whole bar
    url = file_server.add('/data.bin', payload)
    screen = Terminal()
    fetch(url, tmp_path / 'data.bin', stream=screen)
    last = screen.getvalue().split('\r')[-1]
    assert '[' + '#' * 30 + ']' in last and '100.0%' in last
    assert '3.0 MiB of 3.0 MiB' in last and '0:00 left' in last
    assert re.search(r', [0-9.]+ (B|KiB|MiB|GiB)/s,', last)  # localhost may well reach GiB/s


def test_digest_flags_and_urls_are_checked():
    assert download.check_digest_flag('sha1', download.check_digest_flag('sha1', 'A' * 40)) == 'a' * 40
    with pytest.raises(ToolkitError, match=r"--sha256 'xyz' is not a SHA256 digest \(64 hex digits\)"):
        download.check_digest_flag('sha256', 'xyz')
    with pytest.raises(ToolkitError, match='only http:// and https://'):
        download.check_url('ftp://example.org/file')


def test_output_in_a_missing_folder_is_refused_before_any_request(tmp_path):
    # The same one output check every command uses; port 9 is closed, so a request would fail
    # differently (and slowly, through the retries).
    with pytest.raises(ToolkitError, match=r'w.npy: the download is in a folder that does not exist'):
        download.download(closed_port_url(), str(tmp_path / 'nowhere' / 'w.npy'), retries=0)


# --- bounds: size, disk, time, encoding -----------------------------------------------------------

def limited(max_bytes=download.Limits().max_bytes, cap_text='the cap', speed_limit=1024, speed_time=30.0):
    return download.Limits(max_bytes, cap_text, speed_limit, speed_time)


def test_an_announced_size_over_the_free_space_is_refused_before_writing(tmp_path, file_server):
    free = download.free_space(str(tmp_path))
    announced = max(2 ** 40, 2 * free)  # 1 TiB, or more than this disk could ever hold
    url = file_server.add('/huge.bin', b'0123456789', content_length=announced)
    with http_fixture.deadline(20):
        with pytest.raises(ToolkitError) as error:
            fetch(url, tmp_path / 'huge.bin', limits=limited(max_bytes=None))
    message = str(error.value)
    assert message.startswith(f'{url}: {download.human_bytes(announced)} ({announced:,} bytes) to '
                              f'download, but {tmp_path} has ')
    assert message.endswith('free some space first') and ' free (a margin of ' in message
    assert os.listdir(tmp_path) == []  # not even an empty .part
    assert len(file_server.requests) == 1  # refused, not retried


def test_the_free_space_counts_only_what_a_resumed_part_still_needs(tmp_path, file_server, payload,
                                                                    monkeypatch):
    url = file_server.add('/data.bin', payload)
    part = tmp_path / 'data.bin.part'
    part.write_bytes(payload[:1_000_000])
    remaining = SIZE - 1_000_000
    monkeypatch.setattr(download, 'free_space', lambda folder: remaining + download.MARGIN_BYTES - 1)
    with pytest.raises(ToolkitError) as error:
        fetch(url, tmp_path / 'data.bin')
    assert f'{url}: 3.0 MiB ({SIZE:,} bytes) to download, 976.6 KiB of it already in {part}, but ' \
        in str(error.value)
    assert part.read_bytes() == payload[:1_000_000]  # kept as it was, for the next run

    # A server that answers the Range request with the whole file: refused before the .part is
    # emptied to take it.
    file_server.files['/data.bin'].ignore_range = True
    with pytest.raises(ToolkitError, match=f'{SIZE:,} bytes\\) to download, but'):
        fetch(url, tmp_path / 'data.bin')
    assert part.read_bytes() == payload[:1_000_000]

    file_server.files['/data.bin'].ignore_range = False
    monkeypatch.setattr(download, 'free_space', lambda folder: remaining + download.MARGIN_BYTES)
    fetch(url, tmp_path / 'data.bin')
    assert (tmp_path / 'data.bin').read_bytes() == payload


def test_an_announced_size_over_the_cap_is_refused_before_writing(tmp_path, file_server):
    url = file_server.add('/big.bin', b'0123456789', content_length=3 * 2 ** 30)
    with pytest.raises(ToolkitError) as error:
        fetch(url, tmp_path / 'big.bin')  # the default Limits: 2 GiB
    assert str(error.value) == (f'{url}: the server announces 3.0 GiB (3,221,225,472 bytes), more than '
                                '--max_download_mb 2048 (2,147,483,648 bytes); refusing it before '
                                'writing anything')
    assert os.listdir(tmp_path) == []


def test_an_endless_body_without_a_size_stops_at_the_cap_and_leaves_nothing(tmp_path, file_server):
    # At most 64 KiB per 5 ms: were the cap ever missed, the deadline ends the test before the disk fills.
    url = file_server.add('/endless.bin', b'', content_length=None, endless=True, delay=0.005)
    cap = 1_000_000
    with http_fixture.deadline(10):
        with pytest.raises(ToolkitError) as error:
            fetch(url, tmp_path / 'endless.bin', limits=limited(max_bytes=cap, cap_text='the 1 MB cap'))
    message = str(error.value)
    assert message.startswith(f'{url}: the server announced no size and sent more than the 1 MB cap; '
                              'stopped at ')
    stopped_at = int(re.search(r'stopped at ([\d,]+) bytes', message).group(1).replace(',', ''))
    assert cap < stopped_at <= cap + download.READ_BYTES
    assert message.endswith(f'removed {tmp_path / "endless.bin.part"}')
    assert os.listdir(tmp_path) == []


def test_a_body_without_a_size_under_the_cap_is_whole(tmp_path, file_server, payload):
    url = file_server.add('/plain.bin', payload[:300_000], content_length=None)
    result = fetch(url, tmp_path / 'plain.bin', limits=limited(max_bytes=300_000))
    assert (tmp_path / 'plain.bin').read_bytes() == payload[:300_000] and result.size == 300_000


def test_a_trickling_server_ends_within_the_speed_time(tmp_path, file_server, payload):
    url = file_server.add('/slow.bin', payload[:1000], trickle=0.25)  # 4 bytes a second
    started = time.monotonic()
    with http_fixture.deadline(20):
        with pytest.raises(ToolkitError) as error:
            fetch(url, tmp_path / 'slow.bin', timeout=5,
                  limits=limited(speed_limit=1000, speed_time=2))
    elapsed = time.monotonic() - started
    assert 2 <= elapsed < 2 + 0.25 + 1.5  # the window, one byte's wait, and slack for a busy machine
    message = str(error.value)
    assert re.fullmatch(re.escape(f'{url}: too slow: ') + r'\d+ B in 2 s \([\d.]+ B/s\), under '
                        r'--speed_limit 1000 bytes/s for --speed_time 2 s; rerun to resume from '
                        + re.escape(str(tmp_path / 'slow.bin.part')) + r' \(\d+ B\)', message), message
    held = (tmp_path / 'slow.bin.part').read_bytes()
    assert 0 < len(held) < 20 and held == payload[:len(held)]


def test_a_server_that_stalls_after_each_resume_is_slow_across_retries(tmp_path, file_server, payload):
    # Each try brings 10 bytes, then nothing until the timeout: progress every time, so the retries
    # never run out; the speed window, which spans them, ends it.
    url = file_server.add('/stall.bin', payload, stall_after=10)
    started = time.monotonic()
    with http_fixture.deadline(30):
        with pytest.raises(ToolkitError, match=r'too slow: \d+ B in [23] s'):
            fetch(url, tmp_path / 'stall.bin', timeout=0.5, retries=2,
                  limits=limited(speed_limit=1000, speed_time=2))
    assert time.monotonic() - started < 2 + 0.5 + 5
    assert len(file_server.requests) >= 4


def test_one_stall_in_a_fast_download_is_resumed_not_called_slow(tmp_path, file_server, payload):
    url = file_server.add('/hiccup.bin', payload, stall_after=2_000_000, stall_once=True)
    with http_fixture.deadline(20):
        fetch(url, tmp_path / 'hiccup.bin', timeout=1, limits=limited(speed_limit=1024, speed_time=0.5))
    assert (tmp_path / 'hiccup.bin').read_bytes() == payload
    assert file_server.ranges('/hiccup.bin') == [None, 'bytes=2000000-']


def test_a_stalled_server_ends_within_the_timeout(tmp_path, file_server, payload):
    url = file_server.add('/silent.bin', payload, stall_after=0)  # headers, then nothing
    started = time.monotonic()
    with http_fixture.deadline(20):
        with pytest.raises(ToolkitError, match=r'connection lost after 0 B \(TimeoutError: timed out\)'):
            fetch(url, tmp_path / 'silent.bin', timeout=1, retries=0)
    assert 1 <= time.monotonic() - started < 1 + 3


def test_headers_trickled_a_byte_at_a_time_end_within_the_timeout(tmp_path, file_server, payload):
    # Every byte renews the socket timeout; the deadline on the whole response ends it.
    url = file_server.add('/drip.bin', payload, header_trickle=0.2)
    started = time.monotonic()
    with http_fixture.deadline(20):
        with pytest.raises(ToolkitError) as error:
            fetch(url, tmp_path / 'drip.bin', timeout=1, retries=1)
    assert 2 <= time.monotonic() - started < 2 + 3  # two tries of one second each
    assert str(error.value) == (f'{url}: no complete response within --timeout 1 s (the server sends '
                                'its headers too slowly) (gave up after 2 tries)')
    assert os.listdir(tmp_path) == []


def test_a_content_encoding_not_asked_for_is_refused_by_name(tmp_path, file_server, payload):
    url = file_server.add('/zipped.bin', gzip.compress(payload), content_encoding='gzip')
    with pytest.raises(ToolkitError) as error:
        fetch(url, tmp_path / 'zipped.bin', sha256=hashlib.sha256(payload).hexdigest())
    assert str(error.value) == (f'{url}: the server sent the file with Content-Encoding: gzip, which '
                                'was not asked for (the request accepts only identity); refusing it: '
                                'download it by hand, or use another mirror')
    assert os.listdir(tmp_path) == []
    assert file_server.requests and len(file_server.requests) == 1
    # identity is no encoding at all
    plain = file_server.add('/plain.bin', payload, content_encoding='identity')
    assert fetch(plain, tmp_path / 'plain.bin').size == SIZE


def test_a_full_disk_while_downloading_keeps_the_part_and_says_so(tmp_path, file_server, payload,
                                                                  monkeypatch):
    url = file_server.add('/data.bin', payload)
    real_open = open

    class FillingFile:
        """A file on a disk that is full after 500,000 bytes."""

        def __init__(self, stream):
            self.stream = stream

        def write(self, data):
            room = 500_000 - self.stream.tell()
            if len(data) > room:
                self.stream.write(data[:max(room, 0)])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.stream.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self.stream.close()

    monkeypatch.setattr(download, 'open', lambda path, mode='r', *a, **k:
                        FillingFile(real_open(path, mode, *a, **k)), raising=False)
    with pytest.raises(ToolkitError) as error:
        fetch(url, tmp_path / 'data.bin')
    part = tmp_path / 'data.bin.part'
    assert re.fullmatch(re.escape(f'{part}: cannot write it (No space left on device) after ')
                        + r'[\d.]+ KiB; the disk is full; free some space and rerun to resume',
                        str(error.value)), str(error.value)
    assert part.read_bytes() == payload[:500_000]
    monkeypatch.undo()
    fetch(url, tmp_path / 'data.bin')  # the rerun resumes from it
    assert (tmp_path / 'data.bin').read_bytes() == payload
    assert file_server.ranges('/data.bin')[-1] == 'bytes=500000-'


def test_connection_flags_are_range_checked(capsys):
    import argparse

    def parse(*argv):
        parser = argparse.ArgumentParser()
        parser.add_argument('--url')
        download.add_connection_flags(parser)
        args = parser.parse_args(argv)
        download.check_connection_flags(parser, args)
        return args

    args = parse('--url', 'http://127.0.0.1/x', '--max_download_mb', '0.5')
    assert download.limits(args, 1000, 'w.npy') == download.Limits(
        524_288, '--max_download_mb 0.5 (524,288 bytes)', 1024, 30.0)
    assert download.limits(parse(), 1000, 'w.npy') == download.Limits(
        1000, "w.npy's known size (1,000 bytes)", 1024, 30.0)
    for argv, message in ((('--timeout', 'inf'), '--timeout must be positive and at most 86400 s, got inf'),
                          (('--timeout', '1e300'), '--timeout must be positive and at most 86400 s'),
                          (('--retries', '-1'), '--retries must be in 0..1000, got -1'),
                          (('--retries', str(10**9)), '--retries must be in 0..1000'),
                          (('--speed_limit', 'nan'), '--speed_limit must be 0 or more bytes per second'),
                          (('--speed_time', '0'), '--speed_time must be a positive number of seconds'),
                          (('--url', 'u', '--max_download_mb', 'inf'), '--max_download_mb must be a '
                                                                         'positive number of MiB'),
                          (('--max_download_mb', '10'), '--max_download_mb caps a --url download')):
        with pytest.raises(SystemExit):
            parse(*argv)
        assert message in capsys.readouterr().err


def test_a_narrow_terminal_gets_a_bar_that_fits(tmp_path, file_server, payload, monkeypatch):
    monkeypatch.setenv('COLUMNS', '40')
    url = file_server.add('/data.bin', payload)
    screen = Terminal()
    fetch(url, tmp_path / 'data.bin', stream=screen)
    rewrites = [text.split('\x1b[K')[0] for text in screen.getvalue().split('\r')[1:]]
    assert rewrites and all(len(text) <= 39 for text in rewrites), rewrites
    assert rewrites[-1].startswith('data.bin 100.0% 3.0 MiB of 3.0 MiB')  # the bar went first


def test_the_proxy_the_environment_names_is_used(tmp_path, file_server, payload, monkeypatch):
    # The file server stands in for the proxy: a proxied request names the whole URL as its path,
    # and the host (never resolved here) is the proxy's business.
    url = 'http://mirror.invalid/data.bin'
    file_server.add(url, payload[:100_000])
    monkeypatch.setenv('http_proxy', file_server.url(''))
    monkeypatch.delenv('no_proxy', raising=False)
    monkeypatch.delenv('NO_PROXY', raising=False)
    fetch(url, tmp_path / 'data.bin')
    assert (tmp_path / 'data.bin').read_bytes() == payload[:100_000]
    assert file_server.requests == [(url, None)]
