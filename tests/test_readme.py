"""The README's and docs/' promises that code can check: the set-up commands and CI, the journey's
commands (real scripts, real flags, one run feeding the next), every flag documented, every link
resolving, the layer table, and every module named in the layout."""
import contextlib
import glob
import importlib
import io
import os
import re
import shlex

import pytest

import alexnet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_COMMAND = 'python -m pip install -r requirements-dev.txt && python -m pytest -q'
MAIN_COMMAND = 'python -m pip install -r requirements.txt && python finetune.py'
COMMANDS = ('finetune.py', 'predict.py', 'make_lists.py', 'export.py', 'visualize.py', 'get_weights.py',
            'get_data.py', 'datagenerator.py', 'alexnet.py', 'make_tfrecords.py')
JOURNEY_STEPS = ('weights', 'data', 'fine-tune', 'compare', 'predict', 'export')
FIRST_SCREEN = 40  # lines: what a reader sees before scrolling
PACKAGE = 'finetune_alexnet'


def read(name):
    with open(os.path.join(REPO, name), encoding='utf-8') as stream:
        return stream.read()


def docs_pages():
    return sorted(os.path.relpath(path, REPO) for path in glob.glob(os.path.join(REPO, 'docs', '*.md')))


def section(text, heading):
    """The lines under `heading` (a whole line, e.g. '## `finetune.py`'), up to the next heading of
    the same or a higher level."""
    level = heading.split(' ')[0]
    lines = text.splitlines()
    assert heading in lines, f'no heading {heading!r}'
    start = lines.index(heading) + 1
    end = next((i for i in range(start, len(lines))
                if re.match(rf'#{{1,{len(level)}}} ', lines[i])), len(lines))
    return '\n'.join(lines[start:end])


def mentions(text, flag):
    return re.search(rf'{re.escape(flag)}(?![\w-])', text) is not None


# --- the commands' flags, read from their own parsers ---

def parser_factory(script):
    return getattr(importlib.import_module(script[:-3]), 'get_args_parser', None)


def flags_from_help(script):
    """A command's flags as `main(['--help'])` prints them, for commands without `get_args_parser`."""
    module = importlib.import_module(script[:-3])
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
        module.main(['--help'])
    assert stop.value.code in (0, None)
    text = out.getvalue()
    usage = text.split('\n\n')[0]
    flags = set(re.findall(r'--[A-Za-z][\w-]*', usage))
    for line in text.splitlines():  # option lines: two spaces, then the flag and its aliases
        match = re.match(r' {2}(-\S.*?)(?: {2,}|$)', line)
        if match:
            flags.update(re.findall(r'--[A-Za-z][\w-]*', match.group(1)))
    return flags - {'--help'}


def command_flags(script):
    factory = parser_factory(script)
    if factory is None:
        flags = flags_from_help(script)
    else:
        flags = {option for action in factory()._actions for option in action.option_strings}
    return {flag for flag in flags if flag.startswith('--') and flag != '--help'}


def test_the_help_fallback_reads_the_same_flags_as_the_parser():
    assert flags_from_help('get_weights.py') == command_flags('get_weights.py')


@pytest.mark.parametrize('script', COMMANDS)
def test_docs_flags_lists_every_flag_of_every_command(script):
    """docs/flags.md has a section per command naming each of its flags (its opening names those
    every command has); --help gives the rest."""
    flags = command_flags(script)
    assert len(flags) >= 2  # --verbose and at least one of its own
    flags_md = read('docs/flags.md')
    listed = flags_md.split('\n## ')[0] + section(flags_md, f'## `{script}`')
    missing = sorted(flag for flag in flags if not mentions(listed, flag))
    assert missing == [], f'docs/flags.md, section {script}: not mentioned'


def test_every_flag_in_the_docs_belongs_to_the_command_its_section_names():
    flags_md = read('docs/flags.md')
    wrong = {}
    for script in COMMANDS:
        known = command_flags(script)
        named = set(re.findall(r'--[A-Za-z][\w-]*', section(flags_md, f'## `{script}`'))) - {'--help'}
        if named - known:
            wrong[script] = sorted(named - known)
    assert wrong == {}


# --- the first screen: what it is, the set-up, the journey ---

def test_readme_gives_the_two_set_up_commands():
    readme = read('README.md')
    assert f'\n    {MAIN_COMMAND}\n' in readme
    assert f'\n    {TEST_COMMAND}\n' in readme


def test_ci_runs_exactly_the_readme_test_command():
    commands = [line for line in read('.ci/run').splitlines()
                if line.strip() and not line.lstrip().startswith('#')]
    assert commands[-1] == TEST_COMMAND


def journey():
    """[(step, [command, ...], line number)] from the README's journey table."""
    readme = read('README.md')
    rows = []
    for number, line in enumerate(readme.splitlines(), 1):
        match = re.match(r'\| *\d\. ([\w-]+) *\|([^|]*)\|', line)
        if match:
            commands = re.findall(r'`((?:python|tensorboard) [^`]*)`', match.group(2))
            rows.append((match.group(1), commands, number))
    return rows


def test_the_first_screen_holds_the_set_up_and_the_six_step_journey():
    first_screen = '\n'.join(read('README.md').splitlines()[:FIRST_SCREEN])
    assert MAIN_COMMAND in first_screen and TEST_COMMAND in first_screen
    rows = journey()
    assert [step for step, _, _ in rows] == list(JOURNEY_STEPS)
    assert all(commands for _, commands, _ in rows), 'a step without a command'
    assert rows[-1][2] <= FIRST_SCREEN


def options(tokens):
    """{--flag: value or True} of an argument list (`--flag value` and `--flag=value`)."""
    found = {}
    for i, token in enumerate(tokens):
        if token.startswith('--'):
            name, _, value = token.partition('=')
            following = tokens[i + 1] if i + 1 < len(tokens) else None
            found[name] = value or (following if following and not following.startswith('-') else True)
    return found


def test_the_journey_commands_name_real_scripts_and_real_flags():
    problems = []
    for step, commands, _ in journey():
        for command in commands:
            tokens = shlex.split(command)
            if tokens[0] == 'tensorboard':
                continue  # checked below, against finetune.py's own default
            script, argv = tokens[1], tokens[2:]
            if not os.path.isfile(os.path.join(REPO, script)):
                problems.append(f'{step}: no {script}')
                continue
            unknown = sorted(set(options(argv)) - command_flags(script))
            if unknown:
                problems.append(f'{step}: {script} has no {", ".join(unknown)}')
            factory = parser_factory(script)
            if factory is not None:
                try:
                    factory().parse_args(argv)
                except (Exception, SystemExit) as error:
                    problems.append(f'{step}: {command}: {error}')
    assert problems == []


def test_the_journey_commands_feed_each_other():
    """The data step writes the lists the fine-tune step reads; TensorBoard, predict and export
    read what the fine-tune step writes."""
    steps = {step: [shlex.split(command) for command in commands] for step, commands, _ in journey()}
    (train,) = [options(tokens[2:]) for tokens in steps['fine-tune']]
    for tokens in steps['data']:
        out_dir = options(tokens[2:])['--out_dir']
        assert os.path.dirname(train['--train_file']) == out_dir, tokens
        assert os.path.dirname(train['--val_file']) == out_dir, tokens
    for step in ('predict', 'export'):
        for tokens in steps[step]:
            assert options(tokens[2:]).get('--checkpoint_path') == train['--checkpoint_path'], tokens
    (logdir,) = [options(tokens[1:])['--logdir'] for tokens in steps['compare']]
    if '--filewriter_path' in train:
        assert logdir == train['--filewriter_path']
    else:  # the events live in the run folder: TensorBoard reads the folder of runs
        assert logdir == os.path.dirname(train['--checkpoint_path'])


# --- links ---

def without_code(text):
    """`text` less its fenced and indented code blocks (lines of 4+ leading spaces) and code spans."""
    text = re.sub(r'^```.*?^```', '', text, flags=re.S | re.M)
    text = re.sub(r'^ {4,}.*$', '', text, flags=re.M)
    return re.sub(r'`[^`\n]*`', '', text)


def links(name):
    return re.findall(r'\[[^\]]*\]\(([^)\s]+)\)', without_code(read(name)))


def anchors(name):
    """GitHub's heading ids of a Markdown file."""
    text = re.sub(r'^```.*?^```', '', read(name), flags=re.S | re.M)
    headings = re.findall(r'^#{1,6} +(.+?) *$', text, flags=re.M)
    return {re.sub(r'[^\w\- ]', '', heading.lower()).replace(' ', '-') for heading in headings}


def broken_links(name):
    broken = []
    for link in links(name):
        if re.match(r'[a-z]+:', link):
            continue  # a web address
        path, _, fragment = link.partition('#')
        target = os.path.normpath(os.path.join(os.path.dirname(name), path)) if path else name
        if not os.path.exists(os.path.join(REPO, target)):
            broken.append(link)
        elif fragment and target.endswith('.md') and fragment not in anchors(target):
            broken.append(link)
    return broken


def test_readme_links_every_docs_page_and_only_pages_that_exist():
    linked = {os.path.normpath(link.partition('#')[0]) for link in links('README.md')
              if link.startswith('docs/')}
    assert linked == set(docs_pages())
    assert broken_links('README.md') == []


@pytest.mark.parametrize('page', docs_pages())
def test_every_relative_link_in_the_docs_resolves(page):
    assert links(page), f'{page} links nowhere (not even back to the README)'
    assert broken_links(page) == []


# --- the model and the layout ---

def test_docs_layer_table_is_what_alexnet_prints():
    table = alexnet.format_layer_table(1000)
    indented = '\n'.join('    ' + line for line in table.splitlines())
    assert indented in read('docs/model.md')


def test_layout_names_every_top_level_module():
    text = read('README.md') + read('docs/layout.md')
    modules = [name for name in os.listdir(REPO) if name.endswith('.py')]
    missing = [name for name in modules if not re.search(rf'`{re.escape(name)}`', text)]
    assert missing == []


def test_layout_names_every_module_of_the_package():
    """`x.py` for the package's own modules, `train/x.py` for those of its sub-packages."""
    text = read('README.md') + read('docs/layout.md')
    root = os.path.join(REPO, PACKAGE)
    modules = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if not name.startswith(('_', '.'))]
        modules += [os.path.relpath(os.path.join(folder, name), root).replace(os.sep, '/')
                    for name in files if name.endswith('.py') and name != '__init__.py']
    assert len(modules) > 20
    missing = sorted(name for name in modules if f'`{name}`' not in text)
    assert missing == []


def product_files():
    """The commands, the original's modules and the package: what prints messages to users."""
    return sorted(glob.glob(os.path.join(REPO, '*.py'))
                  + glob.glob(os.path.join(REPO, PACKAGE, '**', '*.py'), recursive=True))


def test_every_readme_pointer_in_a_message_names_a_section_that_exists():
    """A message that sends the user to the README names a heading that is there, as written."""
    headings = set(re.findall(r'^#{1,6} +(.+?) *$', read('README.md'), flags=re.M))
    pointers = []
    for path in product_files():
        with open(path, encoding='utf-8') as stream:
            for match in re.finditer(r'README\b[^"\n]{0,12}"([^"\n]+)"', stream.read()):
                pointers.append((os.path.relpath(path, REPO), match.group(1)))
    assert pointers, 'no message points to a README section: is the pattern still right?'
    assert [(path, name) for path, name in pointers if name not in headings] == []
    assert [path for path in product_files()
            if re.search(r'see README\b(?![,:] *")', open(path, encoding='utf-8').read())] == []
