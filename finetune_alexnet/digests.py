"""A file's SHA-256 (and, for downloads, its SHA-1 in the same pass), read in chunks: the one
definition of a file digest for run_state.json, the feature cache, downloads and duplicate images.
"""
import hashlib

CHUNK_BYTES = 1 << 20  # a 233 MB weight file is hashed without holding it in memory


def file_hexdigests(path, *algorithms):
    """Hex digests of the file at `path`, one per hashlib algorithm name, from one read of it."""
    hashes = [hashlib.new(name) for name in algorithms]
    with open(path, 'rb') as stream:
        for chunk in iter(lambda: stream.read(CHUNK_BYTES), b''):
            for digest in hashes:
                digest.update(chunk)
    return tuple(digest.hexdigest() for digest in hashes)


def file_sha256(path):
    """SHA-256 of the file at `path`, hex."""
    return file_hexdigests(path, 'sha256')[0]
