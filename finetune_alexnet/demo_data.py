"""The built-in demo data set: two classes of generated photos that AlexNet can learn in minutes.

Class `disk` shows a warm-coloured disk and class `square` a cool-coloured square, each at a random
position and size on a noisy, randomly tinted background, saved as real JPEG files in one sub-folder
per class. The same seed always gives byte-identical files, so demo runs are repeatable.
"""
import os

import cv2
import numpy as np

CLASS_NAMES = ('disk', 'square')
IMAGE_SIZE = (320, 240)  # width, height: any size works, the pipeline resizes


def _draw(rng, label):
    width, height = IMAGE_SIZE
    background = rng.uniform(60, 190, size=3)
    image = np.clip(background + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)
    radius = int(rng.uniform(0.18, 0.35) * height)
    cx = int(rng.uniform(radius, width - radius))
    cy = int(rng.uniform(radius, height - radius))
    if label == 0:  # warm: strong red, weak blue (BGR order for OpenCV)
        colour = (rng.uniform(0, 80), rng.uniform(60, 200), rng.uniform(200, 255))
        cv2.circle(image, (cx, cy), radius, colour, thickness=-1, lineType=cv2.LINE_AA)
    else:  # cool: strong blue, weak red
        colour = (rng.uniform(200, 255), rng.uniform(60, 200), rng.uniform(0, 80))
        cv2.rectangle(image, (cx - radius, cy - radius), (cx + radius, cy + radius), colour,
                      thickness=-1)
    return image


def make_demo_images(folder, images_per_class=160, seed=0):
    """Write `images_per_class` JPEGs per class under folder/<class>/; returns the folder."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASS_NAMES):
        os.makedirs(os.path.join(folder, name), exist_ok=True)
    for index in range(images_per_class):
        for label, name in enumerate(CLASS_NAMES):
            path = os.path.join(folder, name, f'{name}.{index:04d}.jpg')
            image = _draw(rng, label)
            if not os.path.exists(path):
                cv2.imwrite(path, image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return folder
