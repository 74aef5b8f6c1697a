"""Batches on the model's device before the step (inputs.device_batches): uint8 pixels copied and
prefetched to a GPU, normalised there.

This machine has no GPU, and TensorFlow places ops only in a session that has the device. So the
GPU graph is checked by structure: the devices its ops ask for and the types that reach them. The
same construction then runs with a second logical CPU device standing in for the GPU (the copy, its
prefetch and the re-initialised iterator all run), and on the CPU alone, against NumPy.
"""
import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import datagenerator
import image_files
from finetune_alexnet import tf_setup
from finetune_alexnet.train import inputs
from test_preprocessing import reference_pixels

MEAN_BGR = np.float32([103.939, 116.779, 123.68])
SIZES = [(30, 40), (17, 90), (64, 48), (5, 7), (120, 100)]


@pytest.fixture
def lists(tmp_path):
    """(training list, validation list, {label: RGB image}): PNGs of random pixels, one per label."""
    images = {label: image_files.random_rgb(height, width, seed=label)
              for label, (height, width) in enumerate(SIZES)}
    lines = [f'{image_files.write_png(tmp_path / f"img{label}.png", image)} {label}'
             for label, image in images.items()]
    train, val = tmp_path / 'train.txt', tmp_path / 'val.txt'
    train.write_text('\n'.join(lines) + '\n')
    val.write_text('\n'.join(lines[:3]) + '\n')
    return str(train), str(val), images


def device_graph(train_list, val_list, device):
    """(graph, DeviceBatches) of the two lists' pipelines (batches of 2, in list order) on `device`."""
    graph = tf.Graph()
    with graph.as_default():
        with tf.device(inputs.PIPELINE_DEVICE):
            train = datagenerator.ImageDataGenerator(train_list, 'training', 2, len(SIZES), shuffle=False)
            val = datagenerator.ImageDataGenerator(val_list, 'inference', 2, len(SIZES), shuffle=False)
        batches = inputs.device_batches(train.data, val.data, device)
    return graph, batches


def on(device_string, kind):
    return tf.DeviceSpec.from_string(device_string).device_type == kind


def test_on_a_gpu_uint8_batches_are_copied_and_prefetched_there_and_normalised_there(lists):
    graph, batches = device_graph(*lists[:2], '/gpu:0')
    ops = graph.get_operations()

    def of_type(op_type):
        return [op for op in ops if op.type == op_type]
    # One iterator on the GPU, either dataset's initialiser beside it.
    (iterator,) = of_type('IteratorV2')
    (get_next,) = of_type('IteratorGetNext')
    initialisers = of_type('MakeIterator')
    assert {batches.training_init_op, batches.validation_init_op} == set(initialisers)
    for op in [iterator, get_next] + initialisers:
        assert on(op.device, 'GPU'), op
    # What it yields: uint8 pixels, a quarter of float32's bytes.
    pixels, labels = get_next.outputs
    assert pixels.dtype == tf.uint8 and pixels.shape.as_list() == [None, 227, 227, 3]
    assert pixels.dtype.size * 4 == tf.float32.size
    # Both datasets end in a copy to the GPU (copy_to_device's GeneratorDataset) and a prefetch there.
    copies, prefetches = of_type('GeneratorDataset'), [
        op for op in of_type('PrefetchDataset') if op.inputs[0].op.type == 'GeneratorDataset']
    assert len(copies) == len(prefetches) == 2
    assert all(on(op.device, 'GPU') for op in copies + prefetches)
    assert {op.outputs[0] for op in prefetches} == {op.inputs[0] for op in initialisers}
    for copy in copies:
        assert copy.get_attr('output_types') == [tf.uint8, tf.float32]
    # The normalisation: the float32 images, made on the GPU from the uint8 pixels.
    assert batches.images.dtype == tf.float32 and on(batches.images.op.device, 'GPU')
    assert list(batches.images.op.inputs) == [pixels]
    # Nothing float32 of the batch's size is made off the GPU, and all that reaches the GPU's ops
    # from elsewhere is the datasets' handles and device names: the batches come through the copies.
    image_sized = [tensor for op in ops for tensor in op.outputs if tensor.dtype == tf.float32
                   and tensor.shape.rank == 4 and tensor.shape[1:].as_list() == [227, 227, 3]]
    assert image_sized == [batches.images]
    crossing = [tensor for op in ops if on(op.device, 'GPU') for tensor in op.inputs
                if not on(tensor.op.device, 'GPU')]
    assert crossing and {tensor.dtype for tensor in crossing} <= {tf.string, tf.variant}


def reference_batches(images, labels, batch_size=2):
    """The normalised batches of `images` [label] in the order of `labels`, from NumPy alone."""
    pixels = [reference_pixels(images[label], 227, 227) for label in labels]
    normalised = [image[..., ::-1] - MEAN_BGR for image in pixels]
    return [np.stack(normalised[start:start + batch_size]) for start in range(0, len(labels), batch_size)]


def epoch(session, batches, init_op):
    session.run(init_op)
    found = []
    while True:
        try:
            found.append(session.run([batches.images, batches.labels]))
        except tf.errors.OutOfRangeError:
            return found


@pytest.mark.parametrize('device, copied', [('/cpu:1', True), ('/cpu:0', False)],
                         ids=['copied-to-a-second-device', 'on-the-pipelines-cpu'])
def test_training_and_validation_batches_equal_numpy_on_either_device(lists, device, copied):
    train_list, val_list, images = lists
    graph, batches = device_graph(train_list, val_list, device)
    assert bool([op for op in graph.get_operations() if op.type == 'GeneratorDataset']) == copied
    with graph.as_default(), tf.Session(config=tf_setup.session_config(logical_cpus=2)) as session:
        # Validation between two training epochs: the shared iterator switches back and forth.
        runs = [epoch(session, batches, init_op) for init_op in (
            batches.training_init_op, batches.validation_init_op, batches.training_init_op)]
    for found, labels in zip(runs, (range(5), range(3), range(5))):
        expected = reference_batches(images, list(labels))
        assert len(found) == len(expected)
        for (got, one_hot), want in zip(found, expected):
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, want)
        assert [row.argmax() for _, one_hot in found for row in one_hot] == list(labels)
