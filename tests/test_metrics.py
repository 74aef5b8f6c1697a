"""metrics.py: every number against an independent computation (hand-counted or plain NumPy), and the
confusion-matrix picture."""
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from finetune_alexnet import metrics

Z_95 = 1.959963984540054


def test_confusion_matrix_precision_and_recall_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 1, 0])
    counts = metrics.confusion_matrix(labels, predicted, 3)
    np.testing.assert_array_equal(counts, [[1, 2, 0], [0, 2, 0], [1, 0, 0]])
    assert counts.dtype == np.int64
    precision, recall = metrics.precision_recall(counts)
    np.testing.assert_allclose(precision[:2], [1 / 2, 2 / 4])
    np.testing.assert_allclose(recall, [1 / 3, 1.0, 0.0])
    assert np.isnan(precision[2])  # never predicted: undefined, not 0


def test_confusion_matrix_equals_counting_each_pair_with_numpy():
    rng = np.random.default_rng(3)
    labels, predicted = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    counts = metrics.confusion_matrix(list(labels), list(predicted), 5)
    expected = [[np.sum((labels == true) & (predicted == guess)) for guess in range(5)]
                for true in range(5)]
    np.testing.assert_array_equal(counts, expected)
    precision, recall = metrics.precision_recall(counts)
    for label in range(5):
        hits = np.sum((labels == label) & (predicted == label))
        assert precision[label] == pytest.approx(hits / np.sum(predicted == label))
        assert recall[label] == pytest.approx(hits / np.sum(labels == label))


def test_recall_of_a_class_without_images_is_undefined():
    precision, recall = metrics.precision_recall(metrics.confusion_matrix([0, 0], [0, 1], 2))
    assert precision.tolist() == [1.0, 0.0] and recall[0] == 0.5 and np.isnan(recall[1])


def wilson_closed_form(successes, trials, z=Z_95):
    """(p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), written out once more."""
    p, n = successes / trials, trials
    centre = p + z ** 2 / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z ** 2 / (4 * n ** 2))
    return ((centre - spread) / (1 + z ** 2 / n), (centre + spread) / (1 + z ** 2 / n))


@pytest.mark.parametrize('successes, trials', [(5, 7), (571, 1000)])
def test_wilson_interval_is_the_closed_form(successes, trials):
    assert metrics.wilson_interval(successes, trials) == pytest.approx(
        wilson_closed_form(successes, trials), abs=1e-12)


def test_wilson_interval_known_values():
    # 8 of 10 at 95%: the textbook interval (0.4902, 0.9433).
    low, high = metrics.wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    # None right: from exactly 0; all right: to exactly 1; no trials: nothing is known.
    assert metrics.wilson_interval(0, 10) == (0.0, pytest.approx(Z_95 ** 2 / (10 + Z_95 ** 2)))
    assert metrics.wilson_interval(10, 10) == (pytest.approx(10 / (10 + Z_95 ** 2)), 1.0)
    assert metrics.wilson_interval(0, 0) == (0.0, 1.0)


def test_accuracy_report_by_hand():
    probabilities = np.array([[0.7, 0.2, 0.1],    # label 0: right
                              [0.1, 0.3, 0.6],    # label 1: wrong (2), second choice right
                              [0.2, 0.5, 0.3],    # label 1: right
                              [0.5, 0.4, 0.1]])   # label 2: wrong (0), third choice
    report = metrics.accuracy_report(probabilities, [0, 1, 1, 2], ['a', 'b', 'c'], top=2)
    assert report['images'] == 4 and report['top_k'] == 2
    assert report['accuracy'] == 2 / 4 and report['top_k_accuracy'] == 3 / 4
    assert report['accuracy_interval'] == metrics.wilson_interval(2, 4)
    assert report['top_k_accuracy_interval'] == metrics.wilson_interval(3, 4)
    np.testing.assert_array_equal(report['confusion_matrix'], [[1, 0, 0], [0, 1, 1], [1, 0, 0]])
    rows = {row['class']: row for row in report['per_class']}
    assert rows['a'] == {'index': 0, 'class': 'a', 'support': 1, 'predicted': 2, 'precision': 0.5,
                         'recall': 1.0}
    assert rows['b'] == {'index': 1, 'class': 'b', 'support': 2, 'predicted': 1, 'precision': 1.0,
                         'recall': 0.5}
    assert rows['c'] == {'index': 2, 'class': 'c', 'support': 1, 'predicted': 1, 'precision': 0.0,
                         'recall': 0.0}
    # top larger than the class count means every class.
    assert metrics.accuracy_report(probabilities, [0, 1, 1, 2], ['a', 'b', 'c'], top=9)['top_k'] == 3


def test_accuracy_report_leaves_undefined_precision_as_none():
    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.3, 0.7, 0.0]])
    report = metrics.accuracy_report(probs, [0, 1, 1], ['a', 'b', 'c'], top=2)
    rows = {row['class']: row for row in report['per_class']}
    assert set(rows) == {'a', 'b'}  # 'c' neither occurs nor is predicted
    assert rows['a']['precision'] == 0.5 and rows['a']['recall'] == 1.0
    assert rows['b']['precision'] == 1.0 and rows['b']['recall'] == 0.5
    assert report['top_k_accuracy'] == 1.0 and report['accuracy'] == pytest.approx(2 / 3)
    report = metrics.accuracy_report(probs[:1], [1], ['a', 'b', 'c'], top=1)
    rows = {row['class']: row for row in report['per_class']}
    assert rows['b']['precision'] is None and rows['a']['recall'] is None


def test_ranked_mistakes_are_the_most_confident_wrong_answers():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.05, 0.95], [0.7, 0.3]])
    labels = np.array([0, 0, 1, 0, 0])
    assert list(metrics.ranked_mistakes(probabilities, labels)) == [3, 1, 2]
    assert list(metrics.ranked_mistakes(probabilities, labels, count=2)) == [3, 1]
    assert list(metrics.ranked_mistakes(probabilities[:1], labels[:1])) == []
    # Equal confidence: image order.
    assert list(metrics.ranked_mistakes([[0.3, 0.7], [0.3, 0.7]], [0, 0])) == [0, 1]


def test_confusion_figure_shows_the_classes_that_occur():
    counts = metrics.confusion_matrix([0, 0, 2, 2, 2], [0, 2, 2, 2, 0], 4)
    figure = metrics.confusion_figure(counts, ['a', 'b', 'c', 'd'])
    axes = figure.axes[0]
    assert [label.get_text() for label in axes.get_xticklabels()] == ['a', 'c']
    np.testing.assert_array_equal(axes.images[0].get_array(), [[1, 1], [1, 2]])
    assert axes.get_title() == 'confusion matrix (5 images)'
    assert sorted(text.get_text() for text in axes.texts) == ['1', '1', '1', '2']
    FigureCanvasAgg(figure).draw()
    # Beyond max_annotated classes: no names, no numbers.
    axes = metrics.confusion_figure(counts, ['a', 'b', 'c', 'd'], max_annotated=1).axes[0]
    assert len(axes.texts) == 0
    assert 'a' not in [label.get_text() for label in axes.get_xticklabels()]
