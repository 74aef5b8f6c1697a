"""The machinery behind the commands at the repository root, one module per concern.

    cli            what every command shares: argument parser, start-up, errors and exit statuses
    errors         ToolkitError, a user's mistake explained in one line
    tf_setup       TensorFlow's environment and the session settings every command uses
    weight_files   reading bvlc_alexnet.npy safely; the pickle-free .npz format
    preprocessing  the one pre-processing definition (decode, resize, ImageNet mean, BGR)
    training       the training graph: towers, loss, SGD step, NaN guard, summaries
    checkpoints    what a run saves, and how it resumes
    model_info     what a checkpoint carries: class names, pre-processing
    feature_cache  pool5 features computed once when no conv layer learns
    feature_store  those features kept on disk for later runs, shared and size-limited
    summaries      TensorBoard runs, HParams, validation pictures, PR curves, projector
    lr_finder      the learning-rate range test
    progress       progress bar, metrics file, curves
    demo_data      the built-in demo images

The user-facing modules stay at the root: `alexnet.py` (the model), `datagenerator.py` (the input
pipeline), `caffe_classes.py` and the commands.
"""
