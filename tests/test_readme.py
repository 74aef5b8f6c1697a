"""The README's promises that code can check: the set-up commands, CI, and the layer table."""
import os
import re

import alexnet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_COMMAND = 'python -m pip install -r requirements-dev.txt && python -m pytest -q'
MAIN_COMMAND = 'python -m pip install -r requirements.txt && python finetune.py'


def read(name):
    with open(os.path.join(REPO, name)) as stream:
        return stream.read()


def test_readme_gives_the_two_set_up_commands():
    readme = read('README.md')
    assert f'\n    {MAIN_COMMAND}\n' in readme
    assert f'\n    {TEST_COMMAND}\n' in readme


def test_ci_runs_exactly_the_readme_test_command():
    commands = [line for line in read('.ci/run').splitlines()
                if line.strip() and not line.lstrip().startswith('#')]
    assert commands[-1] == TEST_COMMAND


def test_readme_layer_table_is_what_alexnet_prints():
    readme = read('README.md')
    table = alexnet.format_layer_table(1000)
    indented = '\n'.join('    ' + line for line in table.splitlines())
    assert indented in readme


def test_readme_names_every_top_level_module():
    readme = read('README.md')
    modules = [name for name in os.listdir(REPO) if name.endswith('.py')]
    missing = [name for name in modules if not re.search(rf'`{re.escape(name)}`', readme)]
    assert missing == []


def test_readme_layout_names_every_module_of_the_package():
    readme = read('README.md')
    package = os.path.join(REPO, 'finetune_alexnet')
    modules = [name for name in os.listdir(package) if name.endswith('.py') and name != '__init__.py']
    missing = [name for name in modules if f'`{name}`' not in readme and
               not re.search(rf'`{re.escape(name)}`,', readme)]
    assert missing == []
