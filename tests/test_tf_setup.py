"""tf_setup: the --device choice every command shares, and the session's GPU settings."""
import pytest
import tensorflow as tf

from finetune_alexnet import tf_setup
from finetune_alexnet.errors import ToolkitError


def fake_gpus(monkeypatch, count):
    """TensorFlow reporting `count` GPUs (this machine has none)."""
    real = tf.config.list_physical_devices
    monkeypatch.setattr(tf.config, 'list_physical_devices',
                        lambda kind=None: [f'GPU:{index}' for index in range(count)]
                        if kind == 'GPU' else real(kind))


@pytest.mark.parametrize('device, gpus, num_gpus, expected', [
    ('auto', 0, 1, False), ('auto', 0, 4, False), ('auto', 1, 1, True), ('auto', 4, 2, True),
    ('cpu', 2, 1, False), ('gpu', 2, 2, True)])
def test_device_choice(monkeypatch, device, gpus, num_gpus, expected):
    fake_gpus(monkeypatch, gpus)
    assert tf_setup.use_gpu(device, num_gpus) is expected


@pytest.mark.parametrize('device, gpus, num_gpus, message', [
    ('gpu', 0, 1, '--device gpu asks for 1 GPU(s), TensorFlow sees 0'),
    ('gpu', 2, 8, '--device gpu asks for 8 GPU(s), TensorFlow sees 2'),
    # auto does not stack eight replicas on two GPUs
    ('auto', 2, 8, '--num_gpus 8 asks for more GPUs than TensorFlow sees (2): use --num_gpus 2, '
                   'or --device cpu to split over CPU devices')])
def test_device_refusals_are_one_line(monkeypatch, device, gpus, num_gpus, message):
    fake_gpus(monkeypatch, gpus)
    with pytest.raises(ToolkitError) as error:
        tf_setup.use_gpu(device, num_gpus)
    assert str(error.value) == message


@pytest.mark.parametrize('use_gpu', [True, False])
def test_sessions_take_gpu_memory_as_they_need_it(use_gpu):
    config = tf_setup.session_config(use_gpu)
    assert config.gpu_options.allow_growth
    assert config.device_count.get('GPU', None) == (None if use_gpu else 0)
