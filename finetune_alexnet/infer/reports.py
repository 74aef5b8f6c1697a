"""What predict.py prints and writes: the prediction table, the evaluation report (metrics.py's
numbers, with imagenet.py's published accuracies beside them for the ImageNet weights), the CSV file,
the JSON content and the confusion matrix picture.
"""
import csv
import os

from finetune_alexnet import imagenet
from finetune_alexnet import metrics
from finetune_alexnet import run_folder

CONFUSION_MATRIX_SUFFIX = '_confusion_matrix.png'


def published_accuracy(classifier):
    """The published ImageNet figures to show beside ours: for the 1000-class weights files only."""
    if classifier.prefix is not None or classifier.num_classes != imagenet.NUM_CLASSES:
        return None
    return imagenet.PUBLISHED_ACCURACY['ten_crop' if classifier.ten_crop else 'center_crop']


def shows_top_k(report):
    """Top-k accuracy says something only with more classes than k: with k of 2 classes it is 100%."""
    return report['top_k'] > 1 and report['top_k'] < len(report['confusion_matrix'])


def format_accuracy(report, published=None, crop_mode=None):
    """Top-1 and top-k accuracy with their 95% Wilson intervals, and the published figures if given."""
    rows = [('top-1', report['accuracy'], report['accuracy_interval'], 'top1')]
    if shows_top_k(report):
        rows.append((f"top-{report['top_k']}", report['top_k_accuracy'],
                     report['top_k_accuracy_interval'], 'top5' if report['top_k'] == 5 else None))
    lines = [f"{report['images']} images; accuracy with its 95% interval (Wilson score)"
             + (f"; published ({published['source']})" if published else '') + ':']
    for name, value, (low, high), key in rows:
        line = f"  {name:<6} {value:7.2%}  [{low:.2%}, {high:.2%}]"
        if published and key:
            line += f"   published {published[key]:.1%}"
        lines.append(line)
    if published and crop_mode == 'whole':
        lines.append('  (these images were resized whole to 227x227; the published figures are of '
                     'crops: --center_crop or --ten_crop)')
    return '\n'.join(lines)


def prediction_records(paths, labels, decoded, class_names):
    """One dict per image: its path, label and label_class (when it has a label), and its top classes."""
    records = []
    for path, label, top in zip(paths, labels, decoded):
        record = {'path': path}
        if label is not None:
            record.update(label=label, label_class=class_names[label])
        record['top'] = [{'index': index, 'class': name, 'probability': probability}
                         for index, name, probability in top]
        records.append(record)
    return records


def mistake_records(paths, probabilities, labels, class_names):
    """The misclassified images (metrics.ranked_mistakes: most confident mistake first) as dicts."""
    predicted = probabilities.argmax(axis=1)
    return [{'path': paths[i], 'label': int(labels[i]), 'class': class_names[labels[i]],
             'predicted': int(predicted[i]), 'predicted_class': class_names[predicted[i]],
             'probability': float(probabilities[i, predicted[i]])}
            for i in metrics.ranked_mistakes(probabilities, labels)]


def evaluation_content(report, mistakes, crop_mode, published):
    """The `evaluation` object of predict.py's JSON output."""
    return dict(report, confusion_matrix=report['confusion_matrix'].tolist(), mistakes=mistakes,
                crops=crop_mode, published=published)


def format_table(records):
    """One row per (image, rank); with labels, the true class and whether the top-1 matches it."""
    has_labels = any('label' in record for record in records)
    width = max([len('image')] + [len(record['path']) for record in records])
    class_width = max([len('class')] + [len(entry['class']) for record in records
                                        for entry in record['top']])
    header = f"{'image':<{width}}  {'rank':>4}  {'probability':>11}  {'class':<{class_width}}"
    lines = [(header + '  true class' if has_labels else header).rstrip()]
    for record in records:
        for rank, entry in enumerate(record['top'], 1):
            path = record['path'] if rank == 1 else ''
            line = (f"{path:<{width}}  {rank:>4}  {entry['probability']:>11.4f}  "
                    f"{entry['class']:<{class_width}}")
            if rank == 1 and 'label' in record:
                verdict = 'right' if entry['index'] == record['label'] else 'WRONG'
                line += f"  {record['label_class']} ({verdict})"
            lines.append(line.rstrip())
    return '\n'.join(lines)


def format_evaluation(report, mistakes, max_mistakes, published=None, crop_mode=None):
    """metrics.accuracy_report as text: per-class table, the first `max_mistakes` mistakes (0: all),
    then the accuracies."""
    lines = [f"{report['images']} images: accuracy {report['accuracy']:.4f}"
             + (f", top-{report['top_k']} accuracy {report['top_k_accuracy']:.4f}"
                if shows_top_k(report) else ''),
             '', f"{'class':<30} {'images':>7} {'predicted':>9} {'precision':>9} {'recall':>7}"]
    for row in report['per_class']:
        precision = '-' if row['precision'] is None else f"{row['precision']:.4f}"
        recall = '-' if row['recall'] is None else f"{row['recall']:.4f}"
        lines.append(f"{row['class'][:30]:<30} {row['support']:>7} {row['predicted']:>9} "
                     f"{precision:>9} {recall:>7}")
    lines += ['', f"{len(mistakes)} misclassified" + (', most confident first:' if mistakes else '')]
    shown = mistakes if max_mistakes <= 0 else mistakes[:max_mistakes]
    for entry in shown:
        lines.append(f"  {entry['probability']:.4f}  {entry['path']}  "
                     f"(true: {entry['class']}, predicted: {entry['predicted_class']})")
    if len(shown) < len(mistakes):
        lines.append(f"  ... and {len(mistakes) - len(shown)} more (all of them in --json)")
    # Last, where a long per-class table cannot push it off the screen.
    lines += ['', format_accuracy(report, published, crop_mode)]
    return '\n'.join(lines)


def confusion_matrix_beside(output):
    """Where the confusion matrix goes when only a JSON or CSV output names a place: beside it."""
    return None if output is None else os.path.splitext(output)[0] + CONFUSION_MATRIX_SUFFIX


def write_confusion_matrix(path, counts, class_names):
    with run_folder.replaced_atomically(path) as partial:
        metrics.confusion_figure(counts, class_names).savefig(partial, dpi=100, format='png')


def write_csv(path, records, top):
    with run_folder.replaced_atomically(path) as partial, open(partial, 'w', newline='') as stream:
        writer = csv.writer(stream)
        columns = ['path', 'label', 'label_class']
        for rank in range(1, top + 1):
            columns += [f'top{rank}_index', f'top{rank}_class', f'top{rank}_probability']
        writer.writerow(columns)
        for record in records:
            row = [record['path'], record.get('label', ''), record.get('label_class', '')]
            for entry in record['top']:
                row += [entry['index'], entry['class'], repr(entry['probability'])]
            writer.writerow(row)
