"""How well a classifier did: the numbers and the picture, one definition each.

predict.py's `--evaluate` report and the TensorBoard pictures of each validation pass
(train/summaries.py) both read them from here, so an accuracy, a precision or a ranked mistake means
the same thing in both. Every number is per image: labels [n] and class probabilities [n, num_classes].
"""
import numpy as np

Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile: a two-sided 95% interval


def confusion_matrix(labels, predicted, num_classes):
    """counts[true, predicted], int64 [num_classes, num_classes]."""
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return counts


def precision_recall(counts):
    """Per-class (precision, recall) float64 arrays from a confusion matrix; nan where undefined, not
    0: the precision of a class never predicted, the recall of a class with no image."""
    true_positives = np.diag(counts).astype(np.float64)
    with np.errstate(invalid='ignore', divide='ignore'):
        precision = true_positives / counts.sum(axis=0)
        recall = true_positives / counts.sum(axis=1)
    return precision, recall


def wilson_interval(successes, trials, z=Z_95):
    """(low, high): the Wilson score interval of a proportion, 95% by default.

    The accuracy of n images is a sample of the model's accuracy on all the images it could meet. The
    Wilson interval (Wilson 1927) stays close to its stated coverage for small n and for accuracies
    near 0 or 1, where the plain p +- z sqrt(p(1-p)/n) does not (and can leave [0, 1]).
    """
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z / (1 + z * z / trials) * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    # At p = 0 or 1 one end is exactly 0 or 1; rounding would leave it a hair inside.
    low = 0.0 if successes == 0 else float(centre - half)
    high = 1.0 if successes == trials else float(centre + half)
    return (low, high)


def _defined(value):
    return None if np.isnan(value) else float(value)


def accuracy_report(probabilities, labels, class_names, top=5):
    """Accuracy and top-k accuracy with their 95% Wilson intervals, per-class precision and recall and
    the confusion matrix of `probabilities` against `labels`. In `per_class` an undefined precision or
    recall is None, not 0; classes that neither occur nor are predicted are left out."""
    probabilities = np.asarray(probabilities)
    labels = np.asarray(labels, np.int64)
    num_classes = probabilities.shape[1]
    predicted = np.argmax(probabilities, axis=1)
    counts = confusion_matrix(labels, predicted, num_classes)
    precision, recall = precision_recall(counts)
    per_class = []
    for index in range(num_classes):
        support, predicted_count = int(counts[index].sum()), int(counts[:, index].sum())
        if support == 0 and predicted_count == 0:
            continue
        per_class.append({'index': index, 'class': class_names[index], 'support': support,
                          'predicted': predicted_count, 'precision': _defined(precision[index]),
                          'recall': _defined(recall[index])})
    top = min(top, num_classes)
    top_k = np.argsort(-probabilities, axis=1, kind='stable')[:, :top]
    right = int(np.sum(predicted == labels))
    right_top_k = int(np.sum(np.any(top_k == labels[:, None], axis=1)))
    return {'images': int(len(labels)), 'accuracy': right / len(labels),
            'accuracy_interval': wilson_interval(right, len(labels)),
            'top_k': top, 'top_k_accuracy': right_top_k / len(labels),
            'top_k_accuracy_interval': wilson_interval(right_top_k, len(labels)),
            'per_class': per_class, 'confusion_matrix': counts}


def ranked_mistakes(probabilities, labels, count=None):
    """Indices of the misclassified images, the most confident (in the wrong class) first, equal
    confidences in image order; at most `count`."""
    probabilities = np.asarray(probabilities)
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != np.asarray(labels))
    confidence = probabilities[wrong, predicted[wrong]]
    return wrong[np.argsort(-confidence, kind='stable')][:count]


def confusion_figure(counts, class_names, max_annotated=30, max_inches=30):
    """The confusion matrix as a matplotlib Figure (no pyplot state), rows true, columns predicted, of
    the classes that occur or are predicted. Up to `max_annotated` of them get their names and counts
    (more would overlap); the figure grows with the classes, up to `max_inches` high."""
    from matplotlib.figure import Figure  # only for a picture: the numbers above need numpy alone
    counts = np.asarray(counts)
    shown = [i for i in range(len(counts)) if counts[i].sum() or counts[:, i].sum()]
    matrix = counts[np.ix_(shown, shown)]
    size = min(4 + 0.4 * len(shown), max_inches)
    figure = Figure(figsize=(size + 1.5, size))
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap='Blues', interpolation='nearest')
    figure.colorbar(image, ax=axes, label='images')
    if len(shown) <= max_annotated:
        names = [class_names[i] for i in shown]
        axes.set_xticks(range(len(shown)), names, rotation=45, ha='right')
        axes.set_yticks(range(len(shown)), names)
        for (row, column), value in np.ndenumerate(matrix):
            axes.text(column, row, str(value), ha='center', va='center',
                      color='white' if value > matrix.max() / 2 else 'black')
    axes.set_xlabel('predicted class')
    axes.set_ylabel('true class')
    axes.set_title(f'confusion matrix ({int(matrix.sum())} images)')
    figure.tight_layout()
    return figure
