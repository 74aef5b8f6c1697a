"""What export.py wrote: each export's manifest lists its files with their sizes and SHA-256 digests,
and --overwrite replaces only what a manifest lists, unchanged (docs/serving.md).

A SavedModel's manifest is its assets/finetune_alexnet.json (with its pixel limit) and lists every
file of the folder; a file's is `<output>.export.json` beside it, listing it and its side files.
serving.py (the writers, which refuse too) and exports.py (the checks before any work) both use it.
"""
import json
import os

from finetune_alexnet import digests
from finetune_alexnet import run_folder
from finetune_alexnet.errors import ToolkitError

WRITTEN_BY = 'finetune_alexnet export.py'
# Format 1 was the marker before it listed files: such an export is refused like any other.
FORMAT = 2
SAVED_MODEL_MANIFEST = 'assets/finetune_alexnet.json'
_READ_LIMIT = 1 << 20  # a manifest is a few hundred bytes; never read more than this


def folder_manifest(folder):
    """The manifest of the SavedModel `folder`."""
    return os.path.join(folder, SAVED_MODEL_MANIFEST)


def file_manifest(output):
    """The manifest of the exported file `output`, beside it."""
    return output + '.export.json'


def _entries(folder):
    """Every file and folder under `folder`, in name order, each folder just before what it holds;
    links are listed, not followed."""
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        yield path
        if os.path.isdir(path) and not os.path.islink(path):
            yield from _entries(path)


def _relative(path, root):
    return os.path.relpath(path, root).replace(os.sep, '/')


def _write(manifest, root, paths, **recorded):
    """Write at `manifest` the files `paths` (named relative to `root`) with their sizes and
    SHA-256, and `recorded` (a SavedModel's max_pixels)."""
    files = {_relative(path, root): {'size': os.path.getsize(path), 'sha256': digests.file_sha256(path)}
             for path in sorted(paths)}
    run_folder.write_json_atomically(manifest, {'format': FORMAT, 'written_by': WRITTEN_BY, **recorded,
                                                'files': files})


def write_folder_manifest(folder, **recorded):
    """Write the manifest of the SavedModel `folder`, listing every file in it."""
    manifest = folder_manifest(folder)
    _write(manifest, folder, [path for path in _entries(folder)
                              if os.path.isfile(path) and path != manifest], **recorded)


def write_file_manifest(output, paths):
    """Write the manifest beside the exported file `output`, listing `paths` (it and its side files)."""
    _write(file_manifest(output), os.path.dirname(os.path.abspath(output)), paths)


def read(manifest):
    """The manifest at `manifest` ({'format', 'written_by', 'files', ...}), or None where there is
    none that export.py wrote (missing, not JSON, someone else's, or the marker of an older export)."""
    try:
        if os.path.isfile(manifest) and os.path.getsize(manifest) <= _READ_LIMIT:
            with open(manifest, encoding='utf-8') as stream:
                content = json.load(stream)
            if (isinstance(content, dict) and content.get('written_by') == WRITTEN_BY
                    and content.get('format') == FORMAT and isinstance(content.get('files'), dict)):
                return content
    except (OSError, ValueError):  # a UnicodeDecodeError is a ValueError
        pass
    return None


def _unchanged(path, entry):
    """`path` is a regular file (not a link) of the size and SHA-256 the manifest's `entry` holds."""
    return (isinstance(entry, dict) and os.path.isfile(path) and not os.path.islink(path)
            and entry.get('size') == os.path.getsize(path)
            and entry.get('sha256') == digests.file_sha256(path))


def _refuse(path, manifest, listed):
    why = ('changed since export.py wrote it (its size or SHA-256 differs from' if listed else
           'not written by export.py (missing from')
    raise ToolkitError(f"{path}: {why} the manifest {manifest}); choose another --output, or remove {path}")


def check_folder(folder):
    """Refuse (ToolkitError) the non-empty `folder` unless everything in it is what its manifest
    lists, unchanged: replacing a SavedModel removes the whole folder."""
    manifest = folder_manifest(folder)
    content = read(manifest)
    if content is None:
        raise ToolkitError(f"{folder}: holds no manifest {SAVED_MODEL_MANIFEST} of export.py, so "
                           "nothing in it is known to be an export; choose another --output (an "
                           "export made before manifests existed: remove it first)")
    files = content['files']
    for path in _entries(folder):
        relative = _relative(path, folder)
        if os.path.isdir(path) and not os.path.islink(path):
            ours = any(name.startswith(relative + '/') for name in files)
        else:
            ours = relative == SAVED_MODEL_MANIFEST or _unchanged(path, files.get(relative))
        if not ours:
            _refuse(path, manifest, relative in files)


def check_files(manifest, paths):
    """Refuse (ToolkitError) the first of `paths` that exists unless the manifest at `manifest`
    lists it, unchanged; the manifest itself, among `paths`, is replaced when export.py wrote it."""
    content = read(manifest)
    root = os.path.dirname(os.path.abspath(manifest))
    for path in paths:
        if not os.path.lexists(path) or (content and path == manifest):
            continue
        if content is None:
            raise ToolkitError(f"{path}: exists, and no manifest {manifest} of export.py lists it (an "
                               f"export made before manifests has none); choose another --output, "
                               f"or remove {path}")
        name = _relative(path, root)
        if not _unchanged(path, content['files'].get(name)):
            _refuse(path, manifest, name in content['files'])
