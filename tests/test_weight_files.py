"""Reading weight files safely: every layout the real file comes in, and every way a file can be wrong."""
import pickle

import numpy as np
import pytest

import bvlc_fixture
from finetune_alexnet import weight_files as weights
from finetune_alexnet.errors import ToolkitError


@pytest.fixture
def small_layers():
    return bvlc_fixture.random_weights(num_classes=5, seed=7, layers=['conv1', 'fc8'])


def assert_same(loaded, layers):
    assert sorted(loaded) == sorted(layers)
    for layer in layers:
        for kind in ('weights', 'biases'):
            assert loaded[layer][kind].dtype == np.float32
            np.testing.assert_array_equal(loaded[layer][kind], layers[layer][kind])


def test_fixture_is_what_numpy_itself_reads_as_a_python2_pickle(tmp_path, small_layers):
    """Guards the fixture: numpy's own Python 2 path (allow_pickle, latin1) reads it as the real file."""
    path = bvlc_fixture.write_bvlc_npy(str(tmp_path / 'w.npy'), small_layers)
    raw = open(path, 'rb').read()
    assert raw.startswith(b'\x93NUMPY\x01\x00')
    assert b'\x80\x02' in raw[:200] and b'cnumpy.core.multiarray\n_reconstruct' in raw
    with pytest.raises(ValueError):
        np.load(path)  # plain np.load refuses pickles
    content = np.load(path, allow_pickle=True, encoding='latin1').item()
    assert isinstance(content['conv1'], list)
    np.testing.assert_array_equal(content['conv1'][0], small_layers['conv1']['weights'])


@pytest.mark.parametrize('layout, bytes_as', [('list', 'py2str'), ('dict', 'py2str'),
                                              ('list', 'bytes'), ('dict', 'bytes')])
def test_reads_python2_file_in_every_layout(tmp_path, small_layers, layout, bytes_as):
    path = bvlc_fixture.write_bvlc_npy(str(tmp_path / 'w.npy'), small_layers, layout, bytes_as)
    assert_same(weights.load_weights(path), small_layers)


def test_reads_a_file_resaved_by_python3_numpy(tmp_path, small_layers):
    path = str(tmp_path / 'py3.npy')
    np.save(path, {name: [v['weights'], v['biases']] for name, v in small_layers.items()},
            allow_pickle=True)
    assert_same(weights.load_weights(path), small_layers)


def test_python3_protocol2_pickle_with_codecs_encode(tmp_path, small_layers):
    content = np.empty((), dtype=object)
    content[()] = {name.encode(): {b'weights': v['weights'], b'biases': v['biases']}
                   for name, v in small_layers.items()}
    path = str(tmp_path / 'p2.npy')
    with open(path, 'wb') as stream:
        stream.write(bvlc_fixture.npy_with_pickle(pickle.dumps(content, protocol=2)))
    assert b'_codecs' in open(path, 'rb').read()
    assert_same(weights.load_weights(path), small_layers)


def test_export_format_round_trips_bit_exact(tmp_path, small_layers):
    path = str(tmp_path / 'exported.npz')
    weights.save_weights(path, small_layers)
    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == ['conv1/biases', 'conv1/weights', 'fc8/biases', 'fc8/weights']
    assert_same(weights.load_weights(path), small_layers)


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / 'pwned'
    payload = (b'\x80\x02cposix\nsystem\n' + bvlc_fixture._py2_str(f'touch {marker}')
               + b'\x85R.')
    path = tmp_path / 'evil.npy'
    path.write_bytes(bvlc_fixture.npy_with_pickle(payload))
    with pytest.raises(ToolkitError) as error:
        weights.load_weights(str(path))
    assert str(error.value) == (f"{path}: refused to load: it asks for 'posix.system', which a weights "
                                "file never needs (only numpy arrays are unpickled)")
    assert not marker.exists()


def test_malicious_codec_is_refused(tmp_path):
    payload = b'\x80\x02c_codecs\nencode\n' + bvlc_fixture._py2_str('x') + bvlc_fixture._py2_str(
        'rot13') + b'\x86R.'
    path = tmp_path / 'codec.npy'
    path.write_bytes(bvlc_fixture.npy_with_pickle(payload))
    with pytest.raises(ToolkitError, match='not a weights file'):
        weights.load_weights(str(path))


def test_missing_file_says_where_to_get_it(tmp_path):
    path = tmp_path / 'nowhere' / 'bvlc_alexnet.npy'
    with pytest.raises(ToolkitError) as error:
        weights.load_weights(str(path))
    message = str(error.value)
    assert message.startswith(f'{path}: weights file not found')
    assert '--weights_path' in message and 'README' in message
    assert '\n' not in message


def test_truncated_file_is_reported(tmp_path, small_layers):
    path = bvlc_fixture.write_bvlc_npy(str(tmp_path / 'w.npy'), small_layers)
    raw = open(path, 'rb').read()
    for cut in (len(raw) - 10, len(raw) // 2, 200, 60, 12):
        truncated = tmp_path / f'cut{cut}.npy'
        truncated.write_bytes(raw[:cut])
        with pytest.raises(ToolkitError, match=rf'^{truncated}: not a weights file \(') as error:
            weights.load_weights(str(truncated))
        assert '\n' not in str(error.value)


@pytest.mark.parametrize('content, reason', [
    (b'hello world', 'neither .npy nor .npz'),
    (b'PK\x03\x04garbage', 'truncated or corrupt .npz'),
])
def test_not_a_weights_file(tmp_path, content, reason):
    path = tmp_path / 'junk.npy'
    path.write_bytes(content)
    with pytest.raises(ToolkitError, match=rf'not a weights file \({reason}'):
        weights.load_weights(str(path))


def test_plain_array_file_is_not_weights(tmp_path):
    path = str(tmp_path / 'plain.npy')
    np.save(path, np.zeros((3, 3), np.float32))
    with pytest.raises(ToolkitError, match=r'plain float32 array of shape \(3, 3\)'):
        weights.load_weights(path)


def test_layer_with_wrong_structure(tmp_path):
    path = str(tmp_path / 'odd.npy')
    np.save(path, {'conv1': [np.zeros(3, np.float32)]}, allow_pickle=True)
    with pytest.raises(ToolkitError, match=r'layer conv1 should hold \[weights, biases\]'):
        weights.load_weights(path)


@pytest.mark.parametrize('value, words', [(np.nan, '1 NaN value'), (np.inf, '1 infinite value'),
                                          (-np.inf, '1 infinite value')])
@pytest.mark.parametrize('write', ['npy', 'npz'])
def test_nan_or_infinite_values_are_refused_naming_the_layer(tmp_path, small_layers, value, words,
                                                             write):
    small_layers['fc8']['biases'][3] = value
    path = str(tmp_path / f'w.{write}')
    if write == 'npy':
        bvlc_fixture.write_bvlc_npy(path, small_layers)
    else:
        weights.save_weights(path, small_layers)
    with pytest.raises(ToolkitError) as error:
        weights.load_weights(path)
    assert str(error.value) == (f'{path}: layer fc8 biases holds {words} (of 5); the file is damaged '
                                'or came from a diverged run')


def test_many_bad_values_are_counted_by_kind(tmp_path, small_layers):
    small_layers['conv1']['weights'].flat[:3] = np.nan
    small_layers['conv1']['weights'].flat[3:5] = np.inf
    path = weights.save_weights(str(tmp_path / 'w.npz'), small_layers) or str(tmp_path / 'w.npz')
    with pytest.raises(ToolkitError, match=r'layer conv1 weights holds 3 NaN and 2 infinite values \(of '):
        weights.load_weights(path)


def test_a_command_refuses_nan_weights_in_one_line(tmp_path, small_layers):
    import os
    import subprocess
    import sys
    small_layers['conv1']['weights'].flat[7] = np.nan
    path = str(tmp_path / 'w.npy')
    bvlc_fixture.write_bvlc_npy(path, small_layers)
    image = tmp_path / 'x.png'
    image.write_bytes(b'')
    result = subprocess.run([sys.executable, 'predict.py', '--weights_path', path, str(image)],
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert result.stderr.strip() == (f'error: {path}: layer conv1 weights holds 1 NaN value (of '
                                     f"{small_layers['conv1']['weights'].size}); the file is damaged "
                                     'or came from a diverged run')


def test_saving_into_a_folder_or_a_missing_folder_is_refused_first(tmp_path, small_layers):
    with pytest.raises(ToolkitError, match=r': the output is a folder; give a file name$'):
        weights.save_weights(str(tmp_path), small_layers)
    with pytest.raises(ToolkitError, match=r'w.npz: the output is in a folder that does not exist'):
        weights.save_weights(str(tmp_path / 'missing' / 'w.npz'), small_layers)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_failed_write_leaves_no_partial_file(tmp_path, small_layers, monkeypatch):
    def full_disk(stream, **arrays):
        stream.write(b'\0' * 1000)
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(weights.np, 'savez', full_disk)
    with pytest.raises(ToolkitError) as error:
        weights.save_weights(str(tmp_path / 'w.npz'), small_layers)
    assert str(error.value) == (f"{tmp_path / 'w.npz'}: could not write the weights file (No space left "
                                'on device); nothing was left behind')
    assert list(tmp_path.iterdir()) == []
