"""How fast does the input pipeline feed AlexNet, compared with plain OpenCV on the same threads?

    python bench/bench_pipeline.py [--images 512] [--batch_size 128] [--threads N] [--repeats 5]

Writes `--images` photo-like 500x375 JPEGs (the size of the Kaggle cats-vs-dogs photos) once into a
cache folder, then measures, interleaved so that a busy machine slows every contender alike:

- pipeline: `ImageDataGenerator(...).data`, batches of float32 BGR mean-subtracted images and one-hot
  labels, consumed inside the graph as a training step would take them (nothing copied to NumPy);
- pipeline+fetch: the same batches pulled out to NumPy by session.run;
- opencv: `cv2.imread` + `cv2.resize` to 227x227 (uint8, no mean, no batching) in a thread pool of
  the same size, each worker with cv2.setNumThreads(1);
- with --naive, also the straightforward pipeline: decode, float resize, subtract the mean and
  `[..., ::-1]` per image, then batch.

Prints each contender's median images/s over --repeats epochs and its ratio to OpenCV (target: at
least 0.9). The ratio is the median of per-round ratios: each round times every contender back to back,
so a load that comes and goes on a shared machine weighs on both sides of a ratio alike.
"""
import os
import sys

if __name__ == '__main__':
    # Run as a script from anywhere: the modules it measures live one folder up.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402

import datagenerator  # noqa: E402
from finetune_alexnet import preprocessing  # noqa: E402

WIDTH, HEIGHT = 500, 375


def _photo_like(rng):
    """A 500x375 BGR image that compresses like a photo: smooth colour waves plus sensor-like noise."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    slope_x, slope_y, phase = rng.uniform(0.005, 0.05, 3)
    waves = [127 + 100 * np.sin(slope_x * cols + slope_y * rows + phase + channel)
             for channel in range(3)]
    image = np.stack(waves, axis=-1) + rng.normal(0, 12, (HEIGHT, WIDTH, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_images(folder, count):
    """A list file of `count` generated JPEGs in `folder`, writing only the ones not already there."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for index in range(count):
        name = f'{index:05d}.jpg'
        path = os.path.join(folder, name)
        image = _photo_like(rng)  # drawn even when cached, so image k is the same whatever `count` is
        if not os.path.isfile(path):
            encoded = cv2.imencode('.jpg', image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
            with open(path + '.part', 'wb') as stream:  # renamed when complete: no half-written JPEG
                stream.write(encoded.tobytes())
            os.replace(path + '.part', path)
        lines.append(f'{name} {index % 2}\n')
    list_file = os.path.join(folder, f'list_{count}.txt')
    with open(list_file, 'w') as stream:
        stream.writelines(lines)
    return list_file


def _session(graph, threads):
    return tf.Session(graph=graph, config=tf.ConfigProto(inter_op_parallelism_threads=threads,
                                            intra_op_parallelism_threads=threads))


def _epoch_timer(session, initializer, step, count):
    """A function that runs one epoch of `step` and returns images per second."""
    def run_epoch():
        session.run(initializer)
        start = time.perf_counter()
        try:
            while True:
                session.run(step)
        except tf.errors.OutOfRangeError:
            pass
        return count / (time.perf_counter() - start)
    return run_epoch


def pipeline_timer(list_file, batch_size, threads, fetch):
    """Epochs of ImageDataGenerator batches, consumed in the graph or fetched to NumPy."""
    graph = tf.Graph()
    with graph.as_default():
        generator = datagenerator.ImageDataGenerator(list_file, 'training', batch_size, num_classes=2,
                                                     shuffle=True, seed=0)
        iterator = tf.data.make_initializable_iterator(generator.data)
        images, labels = iterator.get_next()
        # Touching one value makes session.run wait for the whole batch, as a training step would.
        step = (images, labels) if fetch else images[0, 0, 0, 0] + labels[0, 0]
    return _epoch_timer(_session(graph, threads), iterator.initializer, step, generator.data_size)


def naive_timer(list_file, batch_size, threads):
    """The straightforward pipeline: everything per image, the channel reorder by slicing."""
    paths, labels = datagenerator.read_list(list_file)
    graph = tf.Graph()
    with graph.as_default():
        def load(path, label):
            image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
            image = tf.image.resize(image, [preprocessing.INPUT_SIZE, preprocessing.INPUT_SIZE])
            image = (image - preprocessing.IMAGENET_MEAN_RGB)[..., ::-1]
            return image, tf.one_hot(label, 2)
        dataset = tf.data.Dataset.from_tensor_slices((paths, labels)).shuffle(len(paths))
        dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(1)
        iterator = tf.data.make_initializable_iterator(dataset)
        images, labels = iterator.get_next()
        step = images[0, 0, 0, 0] + labels[0, 0]
    return _epoch_timer(_session(graph, threads), iterator.initializer, step, len(paths))


def opencv_timer(list_file, threads):
    """Epochs of plain OpenCV decode + resize, `threads` files at a time."""
    paths, _ = datagenerator.read_list(list_file)
    size = (preprocessing.INPUT_SIZE, preprocessing.INPUT_SIZE)

    def load(path):
        return cv2.resize(cv2.imread(path, cv2.IMREAD_COLOR), size, interpolation=cv2.INTER_LINEAR)

    # One OpenCV thread per worker, as the pipeline's decoders get one core each.
    pool = ThreadPoolExecutor(threads, initializer=cv2.setNumThreads, initargs=(1,))

    def run_epoch():
        start = time.perf_counter()
        for _ in pool.map(load, paths):
            pass
        return len(paths) / (time.perf_counter() - start)
    return run_epoch


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=512, help='generated JPEGs per epoch')
    parser.add_argument('--batch_size', type=int, default=128)
    parser.add_argument('--threads', type=int, default=os.cpu_count() or 1,
                        help='threads for both contenders (default: the number of CPU cores)')
    parser.add_argument('--repeats', type=int, default=5, help='timed epochs per contender')
    parser.add_argument('--cache_dir',
                        default=os.path.join(tempfile.gettempdir(), 'alexnet-bench-500x375'),
                        help='where the generated JPEGs are kept between runs')
    parser.add_argument('--naive', action='store_true', help='also time the straightforward pipeline')
    return parser.parse_args(argv)


def main(argv=None):
    args = _parse_args(argv)
    tf.disable_v2_behavior()  # as the trainer runs: TF1 graphs and control flow
    list_file = write_images(args.cache_dir, args.images)
    contenders = {
        'opencv decode+resize': opencv_timer(list_file, args.threads),
        'pipeline (in graph)': pipeline_timer(list_file, args.batch_size, args.threads, fetch=False),
        'pipeline + fetch to NumPy': pipeline_timer(list_file, args.batch_size, args.threads,
                                                    fetch=True),
    }
    if args.naive:
        contenders['naive per-image pipeline'] = naive_timer(list_file, args.batch_size, args.threads)
    for run_epoch in contenders.values():
        run_epoch()  # warm-up: page cache, tf.data autotuning, OpenCV's first allocations
    rates = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, run_epoch in contenders.items():
            rates[name].append(run_epoch())

    print(f'{args.images} JPEGs {WIDTH}x{HEIGHT}, batch {args.batch_size}, {args.threads} threads, '
          f'median of {args.repeats} epochs:')
    baseline = rates['opencv decode+resize']
    for name, values in rates.items():
        ratio = statistics.median(value / base for value, base in zip(values, baseline))
        spread = ' '.join(f'{value:.0f}' for value in values)
        print(f'  {name:28s} {statistics.median(values):7.0f} images/s  {ratio:.2f}x OpenCV  '
              f'(each epoch: {spread})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
