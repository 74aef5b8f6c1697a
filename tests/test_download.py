"""Downloads against a local HTTP server with real faults: drops, short bodies, 404, bad digests."""
import hashlib
import io
import os
import re

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


def test_terminal_gets_a_bar_with_bytes_rate_and_time_left(tmp_path, file_server, payload):
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
