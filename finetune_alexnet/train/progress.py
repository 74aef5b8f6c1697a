"""What a fine-tuning run shows and records: a progress bar, per-epoch metrics, and curve plots."""
import json
import sys

from finetune_alexnet import cli
from finetune_alexnet import run_folder


class EpochProgress:
    """A one-line bar per epoch on a terminal (cli.StatusLine: rewritten in place, fitted to the
    width, the bar dropped first); plain lines every `display_step` steps otherwise. `note` prints
    a line of its own, and leaving the `with` block (an error too) ends the bar's line."""

    def __init__(self, epoch, num_epochs, total_steps, display_step, stream=None):
        self.stream = stream or sys.stdout
        self.terminal = self.stream.isatty()
        self.line = cli.StatusLine(self.stream)
        self.epoch, self.num_epochs = epoch, num_epochs
        self.total_steps, self.display_step = total_steps, display_step

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.line.end()  # nothing off a terminal: no line is open there

    def update(self, step, loss, accuracy, images_per_second):
        """`step` counts from 1 within the epoch."""
        header = f"epoch {self.epoch}/{self.num_epochs}"
        numbers = f"loss {loss:.4f}  acc {accuracy:.3f}  {images_per_second:.1f} img/s"
        if self.terminal:
            filled = int(24 * step / self.total_steps)
            self.line.show(f"{header} [{'#' * filled}{'.' * (24 - filled)}] {step}/{self.total_steps}  "
                           f"{numbers}", f"{header} {step}/{self.total_steps}  {numbers}")
        elif step % self.display_step == 0 or step == self.total_steps:
            self.stream.write(f"{header} step {step}/{self.total_steps}  {numbers}\n")
            self.stream.flush()

    def note(self, text):
        """Print `text` on a line of its own (after the bar's line, which stays as it was)."""
        if text:
            self.line.print(text)


def append_metrics(path, record):
    """One JSON object per epoch: a file that both people and pandas.read_json(lines=True) read."""
    with open(path, 'a') as stream:
        stream.write(json.dumps(record) + '\n')


def write_metrics(path, records):
    """Replace the metrics file by `records` (a resume that fell back to an earlier epoch)."""
    with run_folder.replaced_atomically(path) as partial, open(partial, 'w') as stream:
        stream.writelines(json.dumps(record) + '\n' for record in records)


def plot_curves(history, path):
    """Loss and accuracy per epoch, training and validation, as a PNG (written atomically)."""
    import matplotlib
    import matplotlib.ticker
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    epochs = [record['epoch'] for record in history]
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axes.plot(epochs, [r['train_loss'] for r in history], 'o-', label='training')
    loss_axes.plot(epochs, [r['val_loss'] for r in history], 'o-', label='validation')
    loss_axes.set(xlabel='epoch', ylabel='cross-entropy', title='loss')
    accuracy_axes.plot(epochs, [r['train_accuracy'] for r in history], 'o-', label='training')
    accuracy_axes.plot(epochs, [r['val_accuracy'] for r in history], 'o-', label='validation')
    accuracy_axes.set(xlabel='epoch', ylabel='accuracy', title='accuracy', ylim=(0, 1.02))
    for axes in (loss_axes, accuracy_axes):
        axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # whole epochs
        axes.grid(alpha=0.3)
        axes.legend()
    # Fixed margins: tight_layout measures every label, which costs more than drawing the figure.
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.92, wspace=0.22)
    with run_folder.replaced_atomically(path) as partial:
        figure.savefig(partial, dpi=100, format='png')
    plt.close(figure)
