"""get_weights.py end to end against a local server: download, prove, Ctrl-C and resume, Berkeley's route."""
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

import bvlc_fixture
import caffemodel_fixture
import get_weights
import http_fixture
from finetune_alexnet import cli
from finetune_alexnet import download
from finetune_alexnet.errors import ToolkitError
from http_fixture import closed_port_url

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def file_server():
    yield from http_fixture.serve()


def sha256_of(path):
    with open(path, 'rb') as stream:
        return hashlib.sha256(stream.read()).hexdigest()


@pytest.mark.slow
def test_ctrl_c_then_rerun_resumes_and_gives_the_identical_file(tmp_path, file_server, bvlc_npy):
    data = open(bvlc_npy, 'rb').read()
    url = file_server.add('/tf_alexnet/bvlc_alexnet.npy', data, delay=0.02)  # ~3 MiB/s at first
    output = tmp_path / 'bvlc_alexnet.npy'
    part = tmp_path / 'bvlc_alexnet.npy.part'
    command = [sys.executable, 'get_weights.py', '--url', url, '--output', str(output)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 120
    while not (part.exists() and part.stat().st_size > 2_000_000):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert 'rerun to resume' in out and err.strip().splitlines() == ['error: interrupted']
    assert not output.exists()
    held = part.stat().st_size
    assert 2_000_000 < held < len(data)

    file_server.files['/tf_alexnet/bvlc_alexnet.npy'].delay = 0.0
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert output.read_bytes() == data and not part.exists()
    assert file_server.ranges('/tf_alexnet/bvlc_alexnet.npy') == [None, f'bytes={held}-']
    digest = hashlib.sha256(data).hexdigest()
    assert f'{output}: {len(data):,} bytes (232.6 MiB), SHA-256 {digest}' in result.stdout
    assert "all 8 layers load and have AlexNet's shapes (fc8: 1000 classes)" in result.stdout
    assert f'resuming {part}' in result.stdout


def test_a_file_that_is_not_alexnet_is_never_renamed(tmp_path, file_server, capsys):
    small = bvlc_fixture.write_bvlc_npy(str(tmp_path / 'served.npy'),
                                        bvlc_fixture.random_weights(layers=['conv1']))
    url = file_server.add('/bvlc_alexnet.npy', open(small, 'rb').read())
    output = tmp_path / 'bvlc_alexnet.npy'
    with pytest.raises(ToolkitError) as error:
        get_weights.main(['--url', url, '--output', str(output)])
    assert str(error.value).startswith(f'{output}.part: not AlexNet: layer conv2 is missing')
    assert not output.exists() and (tmp_path / 'bvlc_alexnet.npy.part').exists()

    page = file_server.add('/page.npy', b'<html><body>Moved</body></html>')
    with pytest.raises(ToolkitError, match=r'page.npy.part: not a weights file'):
        get_weights.main(['--url', page, '--output', str(tmp_path / 'page.npy')])


def test_check_weights_file_names_the_first_layer_of_the_wrong_shape(tmp_path):
    layers = bvlc_fixture.random_weights(layers=['conv1', 'conv2'])
    layers['conv1']['weights'] = layers['conv1']['weights'][..., :64]
    path = bvlc_fixture.write_bvlc_npy(str(tmp_path / 'wrong.npy'), layers)
    with pytest.raises(ToolkitError) as error:
        get_weights.check_weights_file(path)
    assert str(error.value) == (f'{path}: not AlexNet: layer conv1 weights has shape (11, 11, 3, 64), '
                                'expected (11, 11, 3, 96)')


def test_http_and_network_errors_name_url_and_the_way_round(tmp_path, file_server):
    url = file_server.url('/gone/bvlc_alexnet.npy')
    with pytest.raises(ToolkitError) as error:
        get_weights.main(['--url', url, '--output', str(tmp_path / 'w.npy')])
    assert str(error.value) == f'{url}: HTTP 404 Not Found'

    offline = closed_port_url('/bvlc_alexnet.caffemodel')
    with pytest.raises(ToolkitError) as error:
        get_weights.main(['--source', 'berkeley', '--url', offline, '--retries', '0',
                          '--output', str(tmp_path / 'w.npz')])
    message = str(error.value)
    assert 'connection refused' in message and 'no network?' in message
    assert f'python get_weights.py --caffemodel bvlc_alexnet.caffemodel --output {tmp_path / "w.npz"}' \
        in message


def test_flags_are_checked_before_any_download(tmp_path):
    with pytest.raises(ToolkitError, match='--caffemodel converts a local file: drop --url'):
        get_weights.main(['--caffemodel', 'x.caffemodel', '--url', 'http://127.0.0.1:9/x'])
    with pytest.raises(ToolkitError, match=r'--output w.npy: a converted model is written as .npz'):
        get_weights.main(['--source', 'berkeley', '--output', 'w.npy'])
    with pytest.raises(ToolkitError, match='is not a SHA1 digest'):
        get_weights.main(['--sha1', 'beef'])
    with pytest.raises(ToolkitError, match=r'nowhere/w.npy: --output is in a folder that does not exist'):
        get_weights.main(['--output', str(tmp_path / 'nowhere' / 'w.npy')])


@pytest.mark.slow
def test_berkeley_route_verifies_bvlcs_sha1_then_converts(tmp_path, file_server, capsys):
    model = caffemodel_fixture.write_caffemodel(str(tmp_path / 'served.caffemodel'),
                                                caffemodel_fixture.random_caffe_weights(seed=2), 'v1')
    data = open(model, 'rb').read()
    os.remove(model)
    url = file_server.add('/bvlc_alexnet.caffemodel', data)
    output = tmp_path / 'bvlc_alexnet.npz'
    # Our fixture is not BVLC's file: the published SHA-1 is checked by default and refuses it.
    with pytest.raises(ToolkitError) as error:
        get_weights.main(['--source', 'berkeley', '--url', url, '--output', str(output)])
    actual_sha1 = hashlib.sha1(data).hexdigest()
    assert f'SHA-1 mismatch: expected {get_weights.BERKELEY_SHA1}, got {actual_sha1}' in str(error.value)
    assert not output.exists() and not (tmp_path / 'bvlc_alexnet.caffemodel').exists()

    assert get_weights.main(['--source', 'berkeley', '--url', url, '--sha1', actual_sha1,
                             '--output', str(output)]) == 0
    printed = capsys.readouterr().out
    assert f'{output}: ' in printed and f'SHA-256 {sha256_of(output)}' in printed
    assert (tmp_path / 'bvlc_alexnet.caffemodel').read_bytes() == data
    # The second try resumed the complete .part the first one kept (416), not a new download.
    assert file_server.ranges('/bvlc_alexnet.caffemodel') == [None, f'bytes={len(data)}-']


def test_each_source_is_no_larger_than_its_known_size(tmp_path, file_server, monkeypatch):
    url = file_server.add('/tf_alexnet/bvlc_alexnet.npy', b'\x93NUMPY',
                          content_length=get_weights.TORONTO_SIZE + 1)
    monkeypatch.setattr(get_weights, 'TORONTO_URL', url)
    output = tmp_path / 'bvlc_alexnet.npy'
    with http_fixture.deadline(30):
        with pytest.raises(ToolkitError) as error:
            get_weights.main(['--output', str(output)])
    assert str(error.value) == (f'{url}: the server announces 232.6 MiB (243,861,815 bytes), more than '
                                "bvlc_alexnet.npy's known size (243,861,814 bytes); refusing it before "
                                'writing anything')
    caffemodel = file_server.add('/bvlc_alexnet.caffemodel', b'', content_length=300_000_000)
    monkeypatch.setattr(get_weights, 'BERKELEY_URL', caffemodel)
    with http_fixture.deadline(30):
        with pytest.raises(ToolkitError, match=r"more than bvlc_alexnet.caffemodel's known size "
                                               r'\(244,909,472 bytes\)'):
            get_weights.main(['--source', 'berkeley', '--output', str(tmp_path / 'w.npz')])
    assert os.listdir(tmp_path) == []

    # A mirror is capped by --max_download_mb instead.
    mirror = file_server.add('/mirror.npy', bytes(3 * 2 ** 20))
    with pytest.raises(ToolkitError) as error:
        get_weights.main(['--url', mirror, '--max_download_mb', '2', '--output', str(output)])
    assert str(error.value) == (f'{mirror}: the server announces 3.0 MiB (3,145,728 bytes), more than '
                                '--max_download_mb 2 (2,097,152 bytes); refusing it before writing anything')
    assert os.listdir(tmp_path) == []


def test_a_trickling_mirror_ends_in_one_line_within_the_speed_time(tmp_path, file_server):
    url = file_server.add('/slow.npy', bytes(1000), trickle=0.2)
    started = time.monotonic()
    with http_fixture.deadline(20):
        with pytest.raises(ToolkitError, match=r'slow.npy: too slow: \d+ B in 1 s .* under --speed_limit '
                                               r'100 bytes/s for --speed_time 1 s; rerun to resume'):
            get_weights.main(['--url', url, '--output', str(tmp_path / 'w.npy'), '--speed_limit', '100',
                              '--speed_time', '1'])
    assert time.monotonic() - started < 1 + 0.2 + 2


def test_download_bounds_are_checked_with_the_other_flags():
    for argv, message in ((['--max_download_mb', '5'], '--max_download_mb caps a --url download'),
                          (['--url', 'http://127.0.0.1:9/x', '--max_download_mb', '-1'],
                           '--max_download_mb must be a positive number of MiB, got -1.0'),
                          (['--speed_time', 'inf'], '--speed_time must be a positive number of seconds'),
                          (['--speed_limit', '-5'], '--speed_limit must be 0 or more bytes per second'),
                          (['--timeout', 'inf'], '--timeout must be positive and at most 86400 s, got inf')):
        with pytest.raises(ToolkitError, match=re.escape(message)):
            get_weights.main(argv)


def test_a_refused_download_is_one_error_line_and_status_2(tmp_path, file_server, capsys):
    url = file_server.add('/huge.npy', b'', content_length=2 ** 40)
    with http_fixture.deadline(30):
        status = cli.run(get_weights.main, ['--url', url, '--output', str(tmp_path / 'w.npy')])
    assert status == 2
    assert capsys.readouterr().err.splitlines() == [
        f'error: {url}: the server announces 1.0 TiB (1,099,511,627,776 bytes), more than the most '
        "AlexNet's weights (.npy or .npz) can be (244,909,472 bytes; --max_download_mb allows more); "
        'refusing it before writing anything']
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize('source', ['toronto', 'berkeley'])
def test_a_mirror_streaming_without_end_stops_at_what_alexnets_weights_can_be(tmp_path, file_server,
                                                                              source):
    """No size announced, zeros for ever: the download stops at AlexNet's float32 parameters and
    1 MiB (not at the generic 2 GiB), in one line, and leaves nothing."""
    url = file_server.add(f'/endless-{source}', b'', content_length=None, endless=True)
    cap = 243_860_896 + 2 ** 20  # 60,965,224 float32 parameters, and 1 MiB of framing
    output = tmp_path / ('w.npz' if source == 'berkeley' else 'w.npy')
    with http_fixture.deadline(120):  # were the cap missed, the deadline ends it before 2 GiB
        with pytest.raises(ToolkitError) as error:
            get_weights.main(['--source', source, '--url', url, '--output', str(output)])
    message = str(error.value)
    kind = '.caffemodel' if source == 'berkeley' else 'weights (.npy or .npz)'
    assert message.startswith(f"{url}: the server announced no size and sent more than the most "
                              f"AlexNet's {kind} can be ({cap:,} bytes; --max_download_mb allows "
                              'more); stopped at ')
    stopped_at = int(re.search(r'stopped at ([\d,]+) bytes', message).group(1).replace(',', ''))
    assert cap < stopped_at <= cap + download.READ_BYTES
    assert os.listdir(tmp_path) == []


def test_a_host_name_that_does_not_resolve_fails_at_once_naming_it(tmp_path, monkeypatch):
    """The resolver says the name is unknown (faked: no test asks a real DNS server): one try, one
    line naming the host and the fix, no retries."""
    tries = []

    def unknown(host, *args, **kwargs):
        tries.append(host)
        raise socket.gaierror(socket.EAI_NONAME, 'Name or service not known')
    monkeypatch.setattr(socket, 'getaddrinfo', unknown)
    for name in ('http_proxy', 'HTTP_PROXY', 'no_proxy', 'NO_PROXY'):
        monkeypatch.delenv(name, raising=False)
    url = 'http://mirror.invalid/bvlc_alexnet.npy'
    with pytest.raises(ToolkitError) as error:
        get_weights.main(['--url', url, '--output', str(tmp_path / 'w.npy')])
    assert str(error.value) == (
        f'{url}: the host name mirror.invalid does not resolve (Name or service not known): check the '
        'address (a typo in the URL?) and that this machine reaches a DNS server; or download '
        f'{url} by hand (a browser or curl) and pass its path to finetune.py and predict.py with '
        '--weights_path')
    assert tries == ['mirror.invalid']
    assert os.listdir(tmp_path) == []
