"""Copy the sample photos in images/ out of a scikit-image wheel, as JPEGs.

The photos are scikit-image's own test data, released by their photographers into the public domain
(or CC0); see images/LICENSES.md. Each shows an ImageNet class, so a prediction on it can be checked
by eye. scikit-image is only the source of the files, never a dependency of the project.

    pip download --no-deps -d /tmp/skwheel scikit-image
    python tools/copy_sample_images.py /tmp/skwheel/scikit_image-*.whl
"""

import os
import sys
import zipfile

import cv2
import numpy as np

from finetune_alexnet import cli
from finetune_alexnet.errors import ToolkitError

DEFAULT_OUT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'images')

# Wheel member -> file name in images/. The ImageNet class each photo shows is listed in LICENSES.md.
SAMPLES = {
    'skimage/data/chelsea.png': 'chelsea.jpg',  # tabby cat
    'skimage/data/coffee.png': 'coffee.jpg',    # espresso in a cup
    'skimage/data/rocket.jpg': 'rocket.jpg',    # Falcon 9 on its launch pad
}

# The files are committed, so keep them small; 90 keeps JPEG artefacts well below what changes a top-5.
JPEG_QUALITY = 90


def decode_member(wheel, member):
    """Return the BGR image stored as `member` of the open wheel."""
    data = np.frombuffer(wheel.read(member), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise ToolkitError(f'{wheel.filename}: cannot decode {member}')
    return image


def copy_samples(wheel_path, out_dir):
    """Write every sample photo from the wheel into out_dir; return the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    try:
        with zipfile.ZipFile(wheel_path) as wheel:
            for member, file_name in SAMPLES.items():
                image = decode_member(wheel, member)
                out_path = os.path.join(out_dir, file_name)
                if not cv2.imwrite(out_path, image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                    raise ToolkitError(f'{out_path}: cannot write')
                written.append(out_path)
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        raise ToolkitError(f'{wheel_path}: not a scikit-image wheel with the sample photos ({exc})') from None
    return written


def main(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('wheel', help='path of a downloaded scikit-image wheel (.whl)')
    parser.add_argument('--out_dir', default=DEFAULT_OUT_DIR, help='folder to write (default: images/)')
    args = parser.parse_args(argv)
    written = copy_samples(args.wheel, args.out_dir)
    for path in written:
        print(f'wrote {path} ({os.path.getsize(path) // 1024} KiB)')
    return 0


if __name__ == '__main__':
    sys.exit(cli.run(main))
