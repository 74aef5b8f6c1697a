"""Imports run one way (CONTRIBUTING.md, Layout): foundation -> originals -> engines -> commands.

Every .py file of the project outside tests/, bench/ and tools/ is parsed with `ast` (nothing is
imported or run), and each import of a project module is checked against the layer rule:

    0 foundation  finetune_alexnet/*.py             the standard library, third-party packages, foundation
    1 originals   alexnet.py, datagenerator.py,     foundation only
                  caffe_classes.py
    2 engines     finetune_alexnet/train/*,         foundation, originals, their own room: train and
                  finetune_alexnet/infer/*          infer never import each other
    3 commands    the other scripts at the root     anything below; never another command

tests/, bench/ and tools/ may import anything, and nothing in the project imports them. Imports
inside functions count the same as those at the top.
"""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = 'finetune_alexnet'
ENGINE_ROOMS = ('train', 'infer')
ORIGINALS = ('alexnet', 'datagenerator', 'caffe_classes')
COMMANDS = ('finetune', 'predict', 'make_lists', 'export', 'visualize', 'get_weights', 'get_data',
            'make_tfrecords')
OUTSIDE = ('tests', 'bench', 'tools')  # may import anything; the project never imports them
LAYER = {'foundation': 0, 'originals': 1, 'train': 2, 'infer': 2, 'commands': 3, 'outside': 4}


def module_name(relative_path):
    """`finetune_alexnet/train/graph.py` -> `finetune_alexnet.train.graph`; a package's __init__.py
    is the package; a file in tests/, bench/ or tools/ is a top-level module (they run as scripts or
    from pytest's pythonpath)."""
    parts = relative_path[:-len('.py')].split('/')
    if parts[0] in OUTSIDE:
        parts = parts[-1:]
    if parts[-1] == '__init__':
        parts = parts[:-1]
    return '.'.join(parts)


def project_files():
    """{repository-relative path: module name} of every .py file, the outside folders' included."""
    files = {}
    for directory, sub_dirs, names in os.walk(REPO):
        sub_dirs[:] = sorted(name for name in sub_dirs if not name.startswith(('.', '__'))
                             and not name.endswith('.egg-info') and name != 'build')
        for name in sorted(names):
            if name.endswith('.py'):
                path = os.path.relpath(os.path.join(directory, name), REPO).replace(os.sep, '/')
                files[path] = module_name(path)
    return files


def room_of(module, outside_modules=()):
    """The room ('foundation', 'originals', 'train', 'infer', 'commands', 'outside') of a project
    module, or None for a module the rule does not place."""
    parts = module.split('.')
    if parts[0] == PACKAGE:
        if len(parts) >= 2 and parts[1] in ENGINE_ROOMS:
            return parts[1]
        return 'foundation' if len(parts) <= 2 else None
    if len(parts) > 1:
        return None
    if module in ORIGINALS:
        return 'originals'
    if module in COMMANDS:
        return 'commands'
    if module in outside_modules:
        return 'outside'
    return None


def imported_modules(tree, importer, is_package, known):
    """(line, module) for each import of a module in `known`, wherever it sits in `tree`;
    `importlib.import_module('name')` and `__import__('name')` with a literal name count too."""

    def longest_known(name):
        parts = name.split('.')
        for end in range(len(parts), 0, -1):
            if '.'.join(parts[:end]) in known:
                return '.'.join(parts[:end])
        return None

    package = importer if is_package else importer.rpartition('.')[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, longest_known(alias.name)) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = package.split('.')[:len(package.split('.')) - (node.level - 1)]
                base = '.'.join(anchor + ([base] if base else []))
            for alias in node.names:
                # `from finetune_alexnet import cli` imports the module finetune_alexnet.cli.
                found.append((node.lineno, longest_known(f'{base}.{alias.name}')))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ast.unparse(node.func) in ('importlib.import_module', 'import_module', '__import__')):
            found.append((node.lineno, longest_known(node.args[0].value)))
    return sorted((line, module) for line, module in found if module and module != importer)


def why_not(importer_room, imported_room, importer, imported):
    """The rule an import breaks, or None when it is allowed."""
    if imported_room == 'outside':
        return 'the project never imports tests/, bench/ or tools/'
    if LAYER[imported_room] > LAYER[importer_room]:
        return 'it runs upward'
    if importer_room == 'originals' and imported_room == 'originals':
        return 'an original imports only foundation'
    if {importer_room, imported_room} == {'train', 'infer'}:
        return 'train and infer never import each other'
    if importer_room == imported_room == 'commands' and importer != imported:
        return 'a command never imports another command'
    return None


def violations(path, source, known, outside_modules=()):
    """'file:line: ...' for each import in `source` (the file at repository-relative `path`) that
    breaks the layer rule."""
    importer = module_name(path)
    importer_room = room_of(importer, outside_modules)
    if importer_room is None:
        return [f'{path}:1: {importer} has no layer (a new room? place it in tests/test_layers.py)']
    if importer_room == 'outside':
        return []
    tree = ast.parse(source, filename=path)
    found = []
    for line, imported in imported_modules(tree, importer, path.endswith('__init__.py'), known):
        imported_room = room_of(imported, outside_modules)
        if imported_room is None:
            found.append(f'{path}:{line}: {importer} imports {imported}, which has no layer')
            continue
        reason = why_not(importer_room, imported_room, importer, imported)
        if reason:
            found.append(f'{path}:{line}: {importer} ({importer_room}, layer {LAYER[importer_room]}) '
                         f'imports {imported} ({imported_room}, layer {LAYER[imported_room]}): {reason}')
    return found


def read(path):
    with open(os.path.join(REPO, path), encoding='utf-8') as stream:
        return stream.read()


FILES = project_files()
KNOWN = set(FILES.values())
OUTSIDE_MODULES = {module for path, module in FILES.items() if path.split('/')[0] in OUTSIDE}
PROJECT = sorted(path for path in FILES if path.split('/')[0] not in OUTSIDE)


def test_the_walk_sees_every_room_and_every_command():
    rooms = {room_of(FILES[path], OUTSIDE_MODULES) for path in PROJECT}
    assert {'foundation', 'originals', 'train', 'infer', 'commands'} <= rooms
    assert {FILES[path] for path in PROJECT if room_of(FILES[path]) == 'commands'} == set(COMMANDS)
    assert {FILES[path] for path in PROJECT if room_of(FILES[path]) == 'originals'} == set(ORIGINALS)
    assert not any(path.startswith(('.venv/', 'tests/')) for path in PROJECT)


def test_every_module_has_a_layer():
    unplaced = [f'{path} ({FILES[path]})' for path in PROJECT if room_of(FILES[path], OUTSIDE_MODULES) is None]
    assert not unplaced, ('modules the layer rule does not place; add them to a room (CONTRIBUTING.md, '
                          'Layout) and to tests/test_layers.py: ' + ', '.join(unplaced))


def test_imports_run_one_way():
    found = []
    for path in PROJECT:
        found += violations(path, read(path), KNOWN, OUTSIDE_MODULES)
    assert not found, 'imports that break the layer rule (CONTRIBUTING.md, Layout):\n' + '\n'.join(found)


def import_circles(graph):
    """Each circle in {module: {modules it imports}}, as 'a -> b -> a', once per set of members."""
    circles, seen = [], set()

    def walk(module, chain):
        for imported in sorted(graph.get(module, ())):
            if imported in chain:
                circle = chain[chain.index(imported):] + [imported]
                if frozenset(circle) not in seen:
                    seen.add(frozenset(circle))
                    circles.append(' -> '.join(circle))
            elif imported not in done:
                walk(imported, chain + [imported])
        done.add(module)

    done = set()
    for module in sorted(graph):
        walk(module, [module])
    return circles


def test_no_import_circles():
    """Within a room too, imports run one way (imports inside functions count): a circle makes the
    modules' load order matter, and none of them can be read or tested alone."""
    graph = {FILES[path]: {module for _, module in imported_modules(
        ast.parse(read(path)), FILES[path], path.endswith('__init__.py'), KNOWN)} for path in PROJECT}
    assert not import_circles(graph), 'import circles:\n' + '\n'.join(import_circles(graph))
    assert import_circles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == ['a -> b -> c -> a']


def test_the_package_docstring_lists_every_module_in_its_room():
    """finetune_alexnet/__init__.py: a `Foundation:`, `train/:` and `infer/:` section, one indented
    `name  what it does` line per module."""
    listed, room = set(), None
    for line in ast.get_docstring(ast.parse(read(f'{PACKAGE}/__init__.py'))).splitlines():
        if line.startswith('Foundation:'):
            room = 'foundation'
        elif line.startswith(tuple(f'{name}/:' for name in ENGINE_ROOMS)):
            room = line.split('/')[0]
        elif room and line.startswith('    ') and line.split():
            listed.add((line.split()[0], room))
    modules = {(FILES[path].rpartition('.')[2], room_of(FILES[path])) for path in PROJECT
               if FILES[path].startswith(f'{PACKAGE}.') and not path.endswith('__init__.py')}
    assert not modules - listed, f'modules missing from {PACKAGE}/__init__.py: {sorted(modules - listed)}'
    assert not listed - modules, f'{PACKAGE}/__init__.py lists modules that are not there: {sorted(listed - modules)}'


# The checker itself, on small sources: each bad import is caught, each allowed one passes.
SYNTHETIC_KNOWN = {
    'finetune_alexnet', 'finetune_alexnet.cli', 'finetune_alexnet.errors', 'finetune_alexnet.image_lists',
    'finetune_alexnet.train', 'finetune_alexnet.train.graph', 'finetune_alexnet.train.loop',
    'finetune_alexnet.infer', 'finetune_alexnet.infer.classifier', 'alexnet', 'datagenerator',
    'caffe_classes', 'finetune', 'predict', 'export', 'make_lists', 'tiny_runs',
}


@pytest.mark.parametrize('path, source, expected', [
    # foundation
    ('finetune_alexnet/image_lists.py', 'from finetune_alexnet import cli\nimport os\nimport numpy',
     None),
    ('finetune_alexnet/image_lists.py', 'import os\n\n\ndef f():\n    import alexnet\n',
     'finetune_alexnet/image_lists.py:5: finetune_alexnet.image_lists (foundation, layer 0) imports '
     'alexnet (originals, layer 1): it runs upward'),
    ('finetune_alexnet/image_lists.py', 'from finetune_alexnet.train import graph',
     'finetune_alexnet.train.graph (train, layer 2): it runs upward'),
    ('finetune_alexnet/cli.py', 'from .train.graph import build',
     'finetune_alexnet.train.graph (train, layer 2): it runs upward'),
    ('finetune_alexnet/__init__.py', 'from . import infer',
     'finetune_alexnet/__init__.py:1: finetune_alexnet (foundation, layer 0) imports finetune_alexnet.infer'),
    ('finetune_alexnet/errors.py', 'import importlib\nimportlib.import_module("make_lists")',
     'errors.py:2: finetune_alexnet.errors (foundation, layer 0) imports make_lists (commands, layer 3)'),
    ('finetune_alexnet/errors.py', 'import tiny_runs',
     'the project never imports tests/, bench/ or tools/'),
    # originals
    ('alexnet.py', 'from finetune_alexnet.errors import ToolkitError', None),
    ('alexnet.py', 'import datagenerator', 'an original imports only foundation'),
    ('datagenerator.py', 'import finetune_alexnet.infer.classifier as c',
     'imports finetune_alexnet.infer.classifier (infer, layer 2): it runs upward'),
    # engines
    ('finetune_alexnet/train/loop.py', 'import alexnet\nfrom . import graph\nfrom finetune_alexnet import cli',
     None),
    ('finetune_alexnet/train/loop.py', 'from ..infer import classifier',
     'finetune_alexnet.train.loop (train, layer 2) imports finetune_alexnet.infer.classifier (infer, layer 2): '
     'train and infer never import each other'),
    ('finetune_alexnet/infer/classifier.py', 'from finetune_alexnet.train.graph import x',
     'train and infer never import each other'),
    ('finetune_alexnet/infer/classifier.py', 'import predict', 'it runs upward'),
    # commands
    ('export.py', 'import alexnet\nfrom finetune_alexnet.infer import classifier\nfrom finetune_alexnet import cli',
     None),
    ('export.py', 'import sys\n\nif True:\n    from predict import Classifier\n',
     'export.py:4: export (commands, layer 3) imports predict (commands, layer 3): '
     'a command never imports another command'),
    ('finetune.py', 'def demo():\n    import make_lists\n', 'finetune.py:2: '),
    # a module the rule does not place
    ('finetune_alexnet/serve/http.py', 'import os', 'has no layer'),
])
def test_the_checker_catches_what_breaks_the_rule(path, source, expected):
    found = violations(path, source, SYNTHETIC_KNOWN, {'tiny_runs'})
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and expected in found[0], found
