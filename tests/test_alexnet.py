"""The AlexNet graph: shapes, variables, loading, and the forward pass against an independent NumPy net."""
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import alexnet
import bvlc_fixture
import reference_alexnet
from alexnet import AlexNet
from finetune_alexnet import tf_setup
from finetune_alexnet.errors import ToolkitError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)

EXPECTED_OUTPUT_SHAPES = {
    'conv1': [55, 55, 96], 'norm1': [55, 55, 96], 'pool1': [27, 27, 96],
    'conv2': [27, 27, 256], 'norm2': [27, 27, 256], 'pool2': [13, 13, 256],
    'conv3': [13, 13, 384], 'conv4': [13, 13, 384], 'conv5': [13, 13, 256], 'pool5': [6, 6, 256],
    'flattened': [9216], 'fc6': [4096], 'dropout6': [4096], 'fc7': [4096], 'dropout7': [4096],
    'fc8': [7],
}


def build(num_classes=1000, skip_layer=(), weights_path=None, batch=None):
    x = tf.placeholder(tf.float32, [batch, 227, 227, 3], name='x')
    keep_prob = tf.placeholder_with_default(1.0, [], name='keep_prob')
    return x, keep_prob, AlexNet(x, keep_prob, num_classes, list(skip_layer), weights_path)


def photo_input():
    """A real photo (images/chelsea.jpg, a tabby cat), resized and normalised the Caffe way, by NumPy."""
    bgr = cv2.imread(os.path.join(REPO, 'images', 'chelsea.jpg'))
    assert bgr is not None
    resized = cv2.resize(bgr, (227, 227), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    return resized - MEAN_BGR


def test_every_layer_has_the_papers_shape_with_unknown_batch():
    with tf.Graph().as_default():
        x, _, model = build(num_classes=7)
        assert list(model.end_points) == list(EXPECTED_OUTPUT_SHAPES)
        for name, shape in EXPECTED_OUTPUT_SHAPES.items():
            assert model.end_points[name].shape.as_list() == [None] + shape, name
        assert model.fc8 is model.end_points['fc8']
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            outputs = session.run(model.end_points, {x: np.zeros((3, 227, 227, 3), np.float32)})
        for name, shape in EXPECTED_OUTPUT_SHAPES.items():
            assert list(outputs[name].shape) == [3] + shape, name


def test_variable_names_and_shapes_are_the_weight_files():
    with tf.Graph().as_default():
        build(num_classes=1000)
        found = {v.op.name: v.shape.as_list() for v in tf.global_variables()}
    expected = {}
    for layer, shape in bvlc_fixture.LAYER_SHAPES.items():
        expected[f'{layer}/weights'] = list(shape)
        expected[f'{layer}/biases'] = [shape[-1]]
    assert found == expected


def test_layer_table_matches_hand_computed_values():
    rows = {name: (shape, params, macs) for name, shape, params, macs in alexnet.layer_table(1000)}
    # parameters = k*k*C_in/groups*C_out + C_out; multiply-adds = H_out*W_out*C_out*(k*k*C_in/groups)
    assert rows['conv1'] == ((55, 55, 96), 11 * 11 * 3 * 96 + 96, 55 * 55 * 96 * 363)
    assert rows['conv2'] == ((27, 27, 256), 307456, 27 * 27 * 256 * 1200)
    assert rows['conv3'] == ((13, 13, 384), 885120, 149520384)
    assert rows['conv4'] == ((13, 13, 384), 663936, 112140288)
    assert rows['conv5'] == ((13, 13, 256), 442624, 74760192)
    assert rows['pool5'] == ((6, 6, 256), 0, 0)
    assert rows['fc6'] == ((1, 1, 4096), 37752832, 37748736)
    assert rows['fc7'] == ((1, 1, 4096), 16781312, 16777216)
    assert rows['fc8'] == ((1, 1, 1000), 4097000, 4096000)
    assert sum(r[1] for r in rows.values()) == 60965224  # the paper's "60 million parameters"
    assert sum(r[2] for r in rows.values()) == 724406816
    two_classes = {r[0]: r[2] for r in alexnet.layer_table(2)}
    assert two_classes['fc8'] == 4096 * 2 + 2


def test_layer_table_agrees_with_the_graph():
    with tf.Graph().as_default():
        _, _, model = build(num_classes=5)
        for name, _, params, _ in alexnet.layer_table(5):
            if name in model.variables:
                counted = sum(v.shape.num_elements() for v in model.variables[name].values())
                assert counted == params, name


@pytest.mark.parametrize('num_classes', [1000, 5])
def test_variable_shapes_are_the_built_graphs_without_building_one(num_classes):
    shapes = alexnet.variable_shapes(num_classes)
    with tf.Graph().as_default():
        _, _, model = build(num_classes=num_classes)
        built = {layer: {kind: tuple(variable.shape.as_list()) for kind, variable in kinds.items()}
                 for layer, kinds in model.variables.items()}
    assert shapes == built
    assert list(shapes) == list(alexnet.TRAINABLE_LAYERS)
    # And the weight files': HWIO convolutions, input channels per group (conv2/4/5: half of them).
    expected = dict(bvlc_fixture.LAYER_SHAPES, fc8=(4096, num_classes))
    assert {layer: kinds['weights'] for layer, kinds in shapes.items()} == expected
    assert all(kinds['biases'] == (kinds['weights'][-1],) for kinds in shapes.values())


@pytest.mark.slow
def test_summary_command_prints_the_table():
    result = subprocess.run([sys.executable, 'alexnet.py', '--num_classes', '2'], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'fc8' in result.stdout and '8,194' in result.stdout
    assert '56,876,418' in result.stdout  # 60,965,224 - 4,097,000 + 8,194
    assert 'MiB' in result.stdout


@pytest.mark.slow
def test_loading_assigns_file_values_and_keeps_skipped_layers(tmp_path):
    layers = bvlc_fixture.random_weights(num_classes=1000, seed=3,
                                         layers=['conv1', 'conv2', 'conv3', 'conv4', 'conv5',
                                                 'fc6', 'fc7', 'fc8'])
    path = bvlc_fixture.write_bvlc_npy(str(tmp_path / 'w.npy'), layers)
    with tf.Graph().as_default():
        tf.set_random_seed(1)
        _, _, model = build(num_classes=1000, skip_layer=['fc8', 'conv3'], weights_path=path)
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            before = session.run(model.variables)
            model.load_initial_weights(session)
            after = session.run(model.variables)
    for layer in alexnet.TRAINABLE_LAYERS:
        for kind in ('weights', 'biases'):
            if layer in ('fc8', 'conv3'):
                np.testing.assert_array_equal(after[layer][kind], before[layer][kind])
            else:
                np.testing.assert_array_equal(after[layer][kind], layers[layer][kind])
    assert not np.array_equal(before['fc8']['weights'], layers['fc8']['weights'])


@pytest.mark.slow
def test_loading_the_full_file_keeps_the_graph_small(bvlc_npy):
    with tf.Graph().as_default() as graph:
        _, _, model = build(num_classes=1000, weights_path=bvlc_npy)
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            size_before = graph.as_graph_def().ByteSize()
            model.load_initial_weights(session)
            size_after = graph.as_graph_def().ByteSize()
    assert size_after < 1_000_000
    assert size_after == size_before  # loading adds no node at all


def test_forward_pass_equals_numpy_reference_on_a_real_photo(bvlc_npy, bvlc_layers):
    image = photo_input()
    with tf.Graph().as_default():
        x, keep_prob, model = build(num_classes=1000, weights_path=bvlc_npy)
        with tf.Session() as session:
            model.load_initial_weights(session)
            got = session.run(model.end_points, {x: image[None], keep_prob: 1.0})
    expected = reference_alexnet.forward(image, bvlc_layers)
    for name in ('conv1', 'norm1', 'pool1', 'conv2', 'pool2', 'conv5', 'pool5', 'fc6', 'fc7', 'fc8'):
        scale = np.abs(expected[name]).max()
        assert scale > 0, name
        np.testing.assert_allclose(got[name][0].reshape(expected[name].shape), expected[name],
                                   rtol=1e-4, atol=1e-4 * scale, err_msg=name)
    assert np.argmax(got['fc8'][0]) == np.argmax(expected['fc8'])


@pytest.mark.parametrize('layer', ['conv2', 'conv4', 'conv5'])
def test_groups_are_separate(layer):
    """Changing the second group's filters leaves the first group's outputs unchanged."""
    rng = np.random.default_rng(0)
    with tf.Graph().as_default():
        x, _, model = build(num_classes=10)
        weights = model.variables[layer]['weights']
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            feed = {x: rng.uniform(-50, 50, (2, 227, 227, 3)).astype(np.float32)}
            first = session.run(model.end_points[layer], feed)
            value = session.run(weights)
            half = value.shape[-1] // 2
            value[..., half:] = rng.standard_normal(value[..., half:].shape)
            weights.load(value, session)
            second = session.run(model.end_points[layer], feed)
    np.testing.assert_array_equal(first[..., :half], second[..., :half])
    assert not np.allclose(first[..., half:], second[..., half:])


@pytest.mark.parametrize('scale', [1.0, 30.0, 300.0])
def test_lrn_equals_caffes_formula_and_tensorflows_kernel(scale):
    """The band-matmul LRN against Caffe's formula (float64) and tf.nn.local_response_normalization,
    values and gradients, from small inputs to ones where the normaliser dominates."""
    rng = np.random.default_rng(1)
    values = rng.uniform(-scale, scale, (2, 5, 5, 96)).astype(np.float32)
    upstream = rng.standard_normal(values.shape).astype(np.float32)
    with tf.Graph().as_default():
        x = tf.placeholder(tf.float32, [None, 5, 5, 96])
        ours = alexnet.local_response_normalization(x)
        kernel = tf.nn.local_response_normalization(
            x, alexnet.LRN_DEPTH_RADIUS, alexnet.LRN_BIAS, alexnet.LRN_ALPHA, alexnet.LRN_BETA)
        gradients = [tf.gradients(output, x, upstream)[0] for output in (ours, kernel)]
        assert ours.shape.as_list() == [None, 5, 5, 96]
        with tf.Session() as session:
            got, expected, (our_gradient, kernel_gradient) = session.run(
                [ours, kernel, gradients], {x: values})
    for image in range(2):
        np.testing.assert_allclose(got[image], reference_alexnet.lrn_caffe(np.float64(values[image])),
                                   rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(our_gradient, kernel_gradient, rtol=1e-4, atol=1e-5)


def test_the_model_normalises_after_conv1_and_conv2():
    images = np.random.default_rng(3).uniform(-100, 100, (2, 227, 227, 3)).astype(np.float32)
    with tf.Graph().as_default():
        x, _, model = build(num_classes=3)
        kernel = {name: tf.nn.local_response_normalization(
            model.end_points[conv], alexnet.LRN_DEPTH_RADIUS, alexnet.LRN_BIAS, alexnet.LRN_ALPHA,
            alexnet.LRN_BETA) for name, conv in (('norm1', 'conv1'), ('norm2', 'conv2'))}
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            got, expected = session.run([{name: model.end_points[name] for name in kernel}, kernel],
                                        {x: images})
    for name in kernel:
        assert got[name].shape == expected[name].shape
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6)


def test_dropout_uses_keep_probability():
    with tf.Graph().as_default():
        tf.set_random_seed(0)
        x, keep_prob, model = build(num_classes=2)
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            feed = {x: np.random.default_rng(2).uniform(-50, 50, (8, 227, 227, 3))}
            fc6, kept = session.run([model.end_points['fc6'], model.end_points['dropout6']],
                                    {**feed, keep_prob: 0.25})
            fc6_all, kept_all = session.run([model.end_points['fc6'], model.end_points['dropout6']],
                                            {**feed, keep_prob: 1.0})
    active = fc6 > 0
    survived = (kept != 0) & active
    assert 0.2 < survived.sum() / active.sum() < 0.3  # keeps a quarter, drops three quarters
    np.testing.assert_allclose(kept[survived], fc6[survived] / 0.25, rtol=1e-5)
    np.testing.assert_array_equal(kept_all, fc6_all)


def test_unknown_skip_layer_names_are_refused():
    with tf.Graph().as_default():
        with pytest.raises(ToolkitError, match=r"'fc9'.*valid names: conv1, conv2"):
            build(skip_layer=['fc8', 'fc9'])


def test_num_classes_other_than_1000_needs_fc8_skipped(bvlc_npy):
    with tf.Graph().as_default():
        _, _, model = build(num_classes=2, weights_path=bvlc_npy)
        with tf.Session() as session:
            with pytest.raises(ToolkitError, match=r'its fc8 has 1000 classes, --num_classes is 2: add fc8 to --skip_layers'):
                model.load_initial_weights(session)


def test_wrong_layer_shape_names_layer_and_shapes(tmp_path):
    layers = bvlc_fixture.random_weights(num_classes=1000, layers=['conv1', 'conv2'])
    layers['conv2']['weights'] = layers['conv2']['weights'][:, :, :, :128]
    path = bvlc_fixture.write_bvlc_npy(str(tmp_path / 'w.npy'), layers)
    with tf.Graph().as_default():
        skip = ['conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8']
        _, _, model = build(num_classes=1000, skip_layer=skip, weights_path=path)
        with tf.Session() as session:
            with pytest.raises(ToolkitError) as error:
                model.load_initial_weights(session)
    assert str(error.value) == (f"{path}: layer conv2 weights has shape (5, 5, 48, 128), "
                                "expected (5, 5, 48, 256)")


def test_layer_missing_from_file_says_to_skip_it(tmp_path):
    layers = bvlc_fixture.random_weights(num_classes=1000, layers=['conv1'])
    path = bvlc_fixture.write_bvlc_npy(str(tmp_path / 'w.npy'), layers)
    with tf.Graph().as_default():
        _, _, model = build(num_classes=1000, skip_layer=['fc8'], weights_path=path)
        with tf.Session() as session:
            with pytest.raises(ToolkitError, match=r'layer conv2 is missing from the file.*skip conv2'):
                model.load_initial_weights(session)


def float16_rewrite_config():
    """A session whose grappler pass rewrites the graph to float16 as it does on a GPU, emulated on
    the CPU (every converted op's output is rounded through float16)."""
    from tensorflow.core.protobuf import rewriter_config_pb2
    config = tf_setup.session_config()
    config.graph_options.rewrite_options.auto_mixed_precision_cpu = rewriter_config_pb2.RewriterConfig.ON
    return config


def he_weights(model, session, layers, seed=0):
    """He-scaled random weights (std sqrt(2 / fan-in)): conv1's activations reach the hundreds."""
    rng = np.random.default_rng(seed)
    for layer in layers:
        weights = model.variables[layer]['weights']
        shape = weights.shape.as_list()
        weights.load(rng.normal(0, np.sqrt(2 / np.prod(shape[:-1])), shape).astype(np.float32), session)


def test_lrn_stays_finite_under_the_float16_rewrite():
    """conv1 and conv2 well above 256, where x * x overflows float16: norm1/norm2 stay finite under
    the float16 rewrite and agree with float32 to float16's rounding. (Before LRN scaled before
    squaring, norm1 held hundreds of thousands of NaNs here.)"""
    images = np.random.default_rng(1).uniform(-120, 130, (2, 227, 227, 3)).astype(np.float32)
    names = ('conv1', 'norm1', 'pool1', 'conv2', 'norm2')
    results = []
    for config in (None, float16_rewrite_config()):
        with tf.Graph().as_default():
            x, _, model = build(num_classes=3, batch=2)
            with tf.Session(config=config) as session:
                session.run(tf.global_variables_initializer())
                he_weights(model, session, ('conv1', 'conv2'))
                results.append(session.run({name: model.end_points[name] for name in names},
                                           {x: images}))
    float32, float16 = results
    assert float32['conv1'].max() > 256 and float32['conv2'].max() > 256
    for name in names:
        assert np.isfinite(float16[name]).all(), name
        # float16 keeps 11 bits: ~5e-4 relative per rounding, a few roundings deep
        error = np.abs(float16[name] - float32[name]).max() / np.abs(float32[name]).max()
        assert error < 5e-3, (name, error)
    # the rewrite did run: float16's rounding shows
    assert not np.array_equal(float16['norm1'], float32['norm1'])
