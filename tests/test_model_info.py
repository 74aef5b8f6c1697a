"""model_info.py reads back what finetune.py wrote, and trusts none of it: model_info.json field by
field, classes.txt line by line, the checkpoint folder's `checkpoint` state file; hostile files are
one line naming the file (and field or line), never a traceback, a hang or a path outside the folder.

The checkpoints here are tiny: read_model_info verifies the checkpoint and reads fc8's width off it,
nothing else, so one small fc8/weights variable stands in for the model.
"""
import json
import os

import pytest
import tensorflow.compat.v1 as tf

import predict
from finetune_alexnet import cli
from finetune_alexnet import model_info
from finetune_alexnet.errors import ToolkitError
from test_make_lists import time_limit


def tiny_checkpoint(folder, num_classes=2, name='best.ckpt'):
    """A checkpoint holding only fc8/weights [8, num_classes]; its prefix."""
    os.makedirs(folder, exist_ok=True)
    with tf.Graph().as_default():
        tf.get_variable('fc8/weights', shape=[8, num_classes], initializer=tf.ones_initializer())
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            return tf.train.Saver().save(session, os.path.join(str(folder), name),
                                         write_meta_graph=False)


@pytest.fixture
def run(tmp_path):
    """A run folder with a two-class checkpoint and the model_info.json finetune.py writes."""
    folder = tmp_path / 'run'
    tiny_checkpoint(folder)
    model_info.write_model_info(str(folder), 2, ['cat', 'dog'], center_crop=True)
    return folder


def rewrite(folder, change):
    path = folder / model_info.MODEL_INFO
    info = json.loads(path.read_text())
    change(info)
    path.write_text(json.dumps(info))
    return str(path)


def test_what_is_written_reads_back(run):
    prefix, info = model_info.read_model_info(str(run))
    assert prefix == str(run / 'best.ckpt')
    assert info['class_names'] == ['cat', 'dog'] and info['num_classes'] == 2
    assert info['preprocessing']['center_crop'] is True


def setter(*keys, value):
    def change(info):
        target = info
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return change


def remover(*keys):
    def change(info):
        target = info
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
    return change


HOSTILE = [
    ('format true', setter('format', value=True), 'unsupported model info (format True, expected 1)'),
    ('format float', setter('format', value=1.0), 'unsupported model info (format 1.0'),
    ('format string', setter('format', value='1'), "unsupported model info (format '1'"),
    ('a path field', setter('run_name', value='../../elsewhere'), "unknown field 'run_name'"),
    ('missing names', remover('class_names'), "the field 'class_names' is missing"),
    ('one class', setter('num_classes', value=1), 'num_classes should be a positive integer (2 or more), '
                                                  'found 1'),
    ('negative', setter('num_classes', value=-1), 'found -1'),
    ('bool classes', setter('num_classes', value=True), 'found True'),
    ('float classes', setter('num_classes', value=2.0), 'found 2.0'),
    ('infinite classes', setter('num_classes', value=float('inf')), 'found inf'),
    ('nan classes', setter('num_classes', value=float('nan')), 'found nan'),
    ('huge classes', lambda info: info.update(num_classes=10**20, class_names=None),
     'num_classes 100000000000000000000 does not fit checkpoint'),
    ('more classes than fc8', lambda info: info.update(num_classes=3, class_names=None),
     'best.ckpt (fc8/weights has shape (8, 2), expected (8, 3))'),
    ('names not a list', setter('class_names', value='cat,dog'), 'class_names should be a list of strings'),
    ('names not strings', setter('class_names', value=[1, 2]), 'class_names should be a list of strings'),
    ('names short', setter('class_names', value=['cat']), '1 class_names for num_classes 2'),
    ('newline', setter('class_names', value=['cat', 'dog\nfox']),
     r"class_names[1] 'dog\nfox' contains a line break or control character ('\n')"),
    ('line separator', setter('class_names', value=['cat\u2028', 'dog']),
     r"class_names[0] 'cat\u2028' begins or ends with whitespace"),  # repr shows the escape
    ('paragraph separator', setter('class_names', value=['c\u2029t', 'dog']),
     "contains a line break or control character"),
    ('terminal escape', setter('class_names', value=['\x1b[31mred', 'dog']),
     r"contains a line break or control character ('\x1b')"),
    ('empty name', setter('class_names', value=['', 'dog']), "class_names[0] '' is empty"),
    ('padded name', setter('class_names', value=[' cat', 'dog']), 'begins or ends with whitespace'),
    ('mean strings', setter('preprocessing', 'mean_rgb', value=['a', 'b', 'c']),
     "preprocessing.mean_rgb should be like [123.68, 116.779, 103.939], found ['a', 'b', 'c']"),
    ('mean nan', setter('preprocessing', 'mean_rgb', value=[float('nan'), 116.779, 103.939]),
     'preprocessing.mean_rgb should be like'),
    ('mean two', setter('preprocessing', 'mean_rgb', value=[1, 2]), 'preprocessing.mean_rgb should be like'),
    ('mean other', setter('preprocessing', 'mean_rgb', value=[104, 117, 124]),
     'trained with preprocessing.mean_rgb = [104, 117, 124]'),
    ('size float', setter('preprocessing', 'input_size', value=227.0),
     'preprocessing.input_size should be like 227, found 227.0'),
    ('size bool', setter('preprocessing', 'resize_size', value=True),
     'preprocessing.resize_size should be like 256, found True'),
    ('size huge', setter('preprocessing', 'resize_size', value=10**30),
     'trained with preprocessing.resize_size = 1000000000000000000000000000000'),
    ('order number', setter('preprocessing', 'channel_order', value=1),
     'preprocessing.channel_order should be'),
    ('crop string', setter('preprocessing', 'center_crop', value='yes'),
     "preprocessing.center_crop should be true or false, found 'yes'"),
    ('preprocessing path', setter('preprocessing', 'mean_file', value='/etc/passwd'),
     "unknown field preprocessing.'mean_file'"),
    ('preprocessing list', setter('preprocessing', value=[]), "'preprocessing' should be an object"),
]


@pytest.mark.parametrize('change, message', [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
def test_every_field_is_typed_and_ranged(run, change, message):
    path = rewrite(run, change)
    with pytest.raises(ToolkitError) as caught:
        model_info.read_model_info(str(run))
    assert str(caught.value).startswith(f'{path}: ')
    assert '\n' not in str(caught.value) and message in str(caught.value), str(caught.value)


@pytest.mark.parametrize('text, message', [
    ('[' * 100000 + ']' * 100000, 'unreadable model info'),  # Python's JSON parser recurses
    ('{"format": 1, "num_classes": ' + '9' * 5000 + '}', 'unreadable model info'),  # int() refuses
    ('"just a string"', r"unsupported model info \(format 'str'"),
    ('\xff', None),
], ids=['deep', 'long number', 'string', 'not utf-8'])
def test_damaged_json_is_one_line(run, text, message):
    path = run / model_info.MODEL_INFO
    if message is None:
        path.write_bytes(b'{\xff}')
        message = r'model_info.json:1: unreadable model info \(not UTF-8 text\)'
    else:
        path.write_text(text)
    with pytest.raises(ToolkitError, match=message) as caught:
        model_info.read_model_info(str(run))
    assert len(str(caught.value)) < 300


def test_an_oversized_model_info_is_not_read(run, monkeypatch):
    monkeypatch.setattr(model_info, 'MAX_FILE_BYTES', 1000)
    (run / model_info.MODEL_INFO).write_text('{"format": 1, "pad": "' + 'x' * 2000 + '"}')
    with pytest.raises(ToolkitError, match=r'model_info.json: larger than 0 MiB: not a model info'):
        model_info.read_model_info(str(run))


def test_a_fifo_model_info_is_refused_unopened(run):
    path = run / model_info.MODEL_INFO
    path.unlink()
    os.mkfifo(path)
    with time_limit(), pytest.raises(ToolkitError, match=r'model_info.json: not a model info \(a FIFO\)'):
        model_info.read_model_info(str(run))


def test_the_command_says_it_in_one_line(run, capsys):
    rewrite(run, setter('class_names', value=['cat', 'dog\rfox']))
    assert cli.run(predict.main, ['--checkpoint_path', str(run), 'photo.jpg']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith(f'error: {run / model_info.MODEL_INFO}: class_names[1]')


def test_write_refuses_what_read_would_refuse(tmp_path):
    with pytest.raises(ToolkitError, match=r"class name 'b\\nc' of label 1 contains a line break"):
        model_info.write_model_info(str(tmp_path), 2, ['a', 'b\nc'], center_crop=False)
    assert not (tmp_path / model_info.MODEL_INFO).exists()


# --- the `checkpoint` state file: a path read back from disk ----------------------------------------

@pytest.mark.parametrize('named', ['../elsewhere/model.ckpt', 'ABSOLUTE'])
def test_a_state_file_naming_a_checkpoint_outside_the_folder_is_refused(tmp_path, named):
    outside = tiny_checkpoint(tmp_path / 'elsewhere', name='model.ckpt')
    model_info.write_model_info(str(tmp_path / 'elsewhere'), 2, None, center_crop=False)
    run = tmp_path / 'run'
    run.mkdir()
    named = outside if named == 'ABSOLUTE' else named
    (run / 'checkpoint').write_text(f'model_checkpoint_path: "{named}"\n')
    with pytest.raises(ToolkitError) as caught:
        model_info.read_model_info(str(run))
    assert str(caught.value).startswith(f"{run / 'checkpoint'}: names ")
    assert f'outside {run}' in str(caught.value)


def test_a_fifo_state_file_is_refused_unopened(tmp_path):
    run = tmp_path / 'run'
    tiny_checkpoint(run, name='model_epoch1.ckpt')
    (run / 'checkpoint').unlink()  # the Saver's own
    os.mkfifo(run / 'checkpoint')
    with time_limit(), pytest.raises(ToolkitError, match=r'checkpoint: not a checkpoint state file '
                                                         r'\(a FIFO\)'):
        model_info.read_model_info(str(run))


def test_a_state_file_naming_a_checkpoint_inside_is_followed(tmp_path):
    run = tmp_path / 'run'
    for epoch in (1, 2):
        tiny_checkpoint(run, name=f'model_epoch{epoch}.ckpt')
    (run / 'checkpoint').write_text('model_checkpoint_path: "model_epoch1.ckpt"\n')
    assert model_info.resolve_checkpoint(str(run)) == str(run / 'model_epoch1.ckpt')


# --- classes.txt -----------------------------------------------------------------------------------

@pytest.mark.parametrize('content, message', [
    ('0 cat\n\u00b2 dog\n', r'classes.txt:2: expected "label name", got .\u00b2 dog.'),  # isdigit() says yes
    ('0 cat\n' + '9' * 5000 + ' dog\n', r'classes.txt:2: label 999999999999999999999999 is outside 0..1'),
    ('0 cat\n99999999999999999999 dog\n', r'classes.txt:2: label 99999999999999999999 is outside 0..1'),
    ('0 cat\n-1 dog\n', r'classes.txt:2: expected "label name"'),
    ('0 cat\n0 dog\n', r'classes.txt:2: label 0 is named twice \(also on line 1\)'),
    ('0 cat\n1 d\x1bg\n', r"classes.txt:2: class name 'd\\x1bg' contains a line break or control"),
    ('0 cat\n1 d\x85g\n', r'classes.txt:3: expected "label name", got .g.'),  # \x85 ends line 2
    ('0 cat\n', r'classes.txt: names labels \[0\], expected 0..1'),
])
def test_class_names_file_lines_are_checked(tmp_path, content, message):
    path = tmp_path / 'classes.txt'
    path.write_text(content, encoding='utf-8')
    with pytest.raises(ToolkitError, match=message) as caught:
        model_info.read_class_names_file(str(path), 2)
    assert len(str(caught.value)) < 300


def test_class_names_file_special_and_oversized(tmp_path, monkeypatch):
    fifo = tmp_path / 'classes.txt'
    os.mkfifo(fifo)
    with time_limit(), pytest.raises(ToolkitError, match=r'not a class names file \(a FIFO\)'):
        model_info.read_class_names_file(str(fifo), 2)
    big = tmp_path / 'big.txt'
    big.write_text('0 cat\n1 dog\n' + '# padding\n' * 200)
    monkeypatch.setattr(model_info, 'MAX_FILE_BYTES', 1000)
    with pytest.raises(ToolkitError, match='big.txt: larger than'):
        model_info.read_class_names_file(str(big), 2)
