"""AlexNet answering for image files: a weights file or a fine-tuned checkpoint, in a session of its own.

    with Classifier(weights_path='bvlc_alexnet.npy', center_crop=True) as classifier:
        result = classifier.run(paths, layers=['conv1'])
    top5 = decode_predictions(result.probabilities, classifier.class_names, top=5)

predict.py, visualize.py, the notebook and bench/ classify through it. Images go through the one
pre-processing definition (preprocessing.py, via datagenerator.images_dataset) in batches inside the
graph; `decode_predictions` is the one decoder of class probabilities into names.
"""
import collections
import functools
import os

import numpy as np
import tensorflow.compat.v1 as tf

import datagenerator
from alexnet import INPUT_SIZE, AlexNet
from finetune_alexnet import image_header
from finetune_alexnet import imagenet
from finetune_alexnet import model_info
from finetune_alexnet import tf_setup
from finetune_alexnet import tfrecords
from finetune_alexnet import weight_files
from finetune_alexnet.errors import ToolkitError
from finetune_alexnet.infer import exports
from finetune_alexnet.infer import features
from finetune_alexnet.preprocessing import RESIZE_SIZE


def default_class_names(num_classes):
    """caffe_classes' ImageNet names for 1000 classes, else model_info's placeholders 'class i'."""
    if num_classes == imagenet.NUM_CLASSES:
        from caffe_classes import class_names
        return list(class_names)
    return model_info.placeholder_class_names(num_classes)


def decode_predictions(probs, class_names, top=5):
    """For each row of `probs` [n, num_classes]: the `top` classes as (index, name, probability), most
    probable first, ties lower index first. `class_names` None: default_class_names."""
    probs = np.atleast_2d(np.asarray(probs))
    num_classes = probs.shape[1]
    names = list(class_names) if class_names is not None else default_class_names(num_classes)
    if len(names) != num_classes:
        raise ToolkitError(f"{len(names)} class names for {num_classes} classes")
    top = min(top, num_classes)
    order = np.argsort(-probs, axis=1, kind='stable')[:, :top]
    return [[(int(index), names[index], float(row[index])) for index in indices]
            for row, indices in zip(probs, order)]


Predictions = collections.namedtuple('Predictions', 'probabilities outputs positions')


class Classifier:
    """AlexNet and its weights in a session of its own, ready to classify image files in batches.

    Give either `weights_path` (a BVLC `.npy` or exported `.npz`; the class count is read off its fc8)
    or `checkpoint` (a fine-tuned model: class count, names and pre-processing from model_info.json).
    `class_names` overrides the names; `center_crop` applies to weight files only (a checkpoint says).
    `ten_crop` averages each image's probabilities over its ten crops (either model); `resize_size` is
    the square the crops are taken from. Use as a context manager, or call close().
    """

    def __init__(self, weights_path=None, checkpoint=None, class_names=None, center_crop=False,
                 batch_size=32, ten_crop=False, resize_size=RESIZE_SIZE, use_gpu=False):
        if (weights_path is None) == (checkpoint is None):
            raise ValueError('give exactly one of weights_path and checkpoint')
        if checkpoint is not None:
            # Only the model's variables (with --ema_decay, their moving averages), shapes checked.
            self.prefix, info, layers = exports.read_checkpoint_layers(checkpoint)
            self.source = self.prefix
            self.num_classes = info['num_classes']
            self.center_crop = info['preprocessing']['center_crop']
            names = class_names or model_info.class_names_of(self.prefix, info)
        else:
            self.prefix = None
            self.source = os.fspath(weights_path)
            layers = weight_files.load_weights(self.source)  # read once: checked here, loaded below
            if 'fc8' not in layers:
                raise ToolkitError(f"{self.source}: layer fc8 is missing from the file (it holds "
                                   f"{', '.join(sorted(layers))}); prediction needs every layer")
            self.num_classes = int(layers['fc8']['biases'].shape[0])
            self.center_crop = bool(center_crop)
            names = class_names
        self.class_names = list(names) if names else default_class_names(self.num_classes)
        if len(self.class_names) != self.num_classes:
            raise ToolkitError(f"{len(self.class_names)} class names for a model of "
                               f"{self.num_classes} classes")
        self.batch_size = batch_size
        self.ten_crop, self.resize_size = bool(ten_crop), int(resize_size)
        self.graph = tf.Graph()
        with self.graph.as_default():
            # One iterator, re-initialised with a dataset of each run's files: the model is built once.
            self._iterator = tf.data.Iterator.from_structure(
                (tf.float32, tf.int64), (tf.TensorShape([None, INPUT_SIZE, INPUT_SIZE, 3]),
                                         tf.TensorShape([None])))
            images, positions = self._iterator.get_next()
            self.model = AlexNet(images, 1.0, self.num_classes, skip_layer=[], weights_path=weights_path)
            # Rows per image: 10 with ten crops, else 1. The crops' probabilities are averaged, as
            # Caffe's classifier averages its `prob` output over `oversample`'s crops.
            crops = tf.shape(images)[0] // tf.maximum(tf.shape(positions)[0], 1)
            probabilities = tf.reduce_mean(
                tf.reshape(tf.nn.softmax(self.model.fc8), [-1, crops, self.num_classes]), axis=1)
            self.end_points = dict(self.model.end_points, probabilities=probabilities,
                                   positions=positions,
                                   **{f'{name}{features.BEFORE_RELU}': tensor
                                      for name, tensor in self.model.pre_activations.items()})
            # On a GPU the model runs there (the input pipeline stays on the CPU, placed by
            # TensorFlow); its memory is taken as needed, so a training run beside it keeps its own.
            self.session = tf.Session(graph=self.graph, config=tf_setup.session_config(use_gpu))
            try:
                self.model.load_initial_weights(self.session, layers)
            except BaseException:
                self.session.close()
                raise

    @property
    def crop_mode(self):
        """'ten_crop', 'center_crop' (of the resize) or 'whole' (the image resized to 227)."""
        return 'ten_crop' if self.ten_crop else 'center_crop' if self.center_crop else 'whole'

    def run(self, paths, layers=(), skip_bad_images=False,
            max_pixels=image_header.DEFAULT_MAX_PIXELS, records=None):
        """Predictions(probabilities [n, num_classes], {layer: outputs [n, ...]}, positions [n]), in
        order. An unreadable file raises ToolkitError naming it, unless `skip_bad_images`: then it is
        left out, and `positions` (indices into `paths`) says which files the rows are. With ten
        crops, layer outputs are [n, 10, ...]. `records` (a tfrecords.ShardIndex): the images are its
        records instead (`paths`: their names)."""
        paths = [os.fspath(path) for path in paths]
        make_dataset = (functools.partial(tfrecords.images_dataset, records) if records is not None
                        else functools.partial(datagenerator.images_dataset, paths))
        with self.graph.as_default():
            dataset = make_dataset(self.batch_size, center_crop=self.center_crop,
                                   skip_bad_images=skip_bad_images, ten_crop=self.ten_crop,
                                   resize_size=self.resize_size, max_pixels=max_pixels)
            initializer = self._iterator.make_initializer(dataset)
        fetches = {name: self.end_points[name] for name in ('probabilities', 'positions', *layers)}
        self.session.run(initializer)
        batches = []
        while True:
            try:
                batches.append(self.session.run(fetches))
            except tf.errors.OutOfRangeError:
                break
            except datagenerator.IMAGE_ERRORS + (tf.errors.DataLossError,):
                if records is not None:
                    raise tfrecords.unreadable_records_error(
                        records, hint='pass --skip_bad_images to go on without them',
                        max_pixels=max_pixels) from None
                raise datagenerator.unreadable_images_error(
                    paths, hint='fix or remove them, or pass --skip_bad_images',
                    max_pixels=max_pixels) from None
        if not batches:
            raise ToolkitError(f"none of the {len(paths)} images could be read")
        outputs = {name: np.concatenate([batch[name] for batch in batches]) for name in fetches}
        probabilities, positions = outputs.pop('probabilities'), outputs.pop('positions')
        if self.ten_crop:
            outputs = {name: value.reshape((len(positions), -1) + value.shape[1:])
                       for name, value in outputs.items()}
        return Predictions(probabilities, outputs, positions)

    def layer_weights(self, layer):
        """{'weights', 'biases'} of `layer` as NumPy arrays."""
        return self.session.run(self.model.variables[layer])

    def close(self):
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

