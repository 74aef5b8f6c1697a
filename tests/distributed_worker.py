"""finetune.py as one worker of a test's cluster: `python tests/distributed_worker.py FLAGS...`.

With FINETUNE_TEST_SIGNAL=EPOCH:STEP:SIGNUM in the environment, the worker sends itself SIGNUM (a real
signal: SIGTERM to stop, SIGKILL to die outright) right after training step STEP of epoch EPOCH, so a
test stops a cluster at an exact step."""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from finetune_alexnet import cli  # noqa: E402


def main(argv):
    cli.prepare(argv)
    import finetune
    from finetune_alexnet.train import progress
    when = os.environ.get('FINETUNE_TEST_SIGNAL')
    if when:
        epoch, step, signum = (int(part) for part in when.split(':'))
        real_update = progress.EpochProgress.update

        def update(bar, done, *args):
            real_update(bar, done, *args)
            if bar.epoch == epoch and done == step:
                sys.stdout.flush()
                os.kill(os.getpid(), signum)
        progress.EpochProgress.update = update
    return cli.run(finetune.main, argv)


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
