"""Several workers, one run: synchronous data-parallel training through tf.distribute's
MultiWorkerMirroredStrategy, with small all-reduces (`gather`) for what the workers agree on and
every wait bounded by --collective_timeout (docs/distributed.md says what the workers compute, agree
on and print, and how each wait is bounded). `start` returns `Workers` for a Cluster and `OneMachine`
without one, with the same methods.
"""
import contextlib
import dataclasses
import hashlib
import json
import os
import select
import signal
import socket
import threading
import time

import numpy as np
import tensorflow.compat.v1 as tf

from finetune_alexnet import preprocessing
from finetune_alexnet import run_folder
from finetune_alexnet import signals
from finetune_alexnet.errors import ToolkitError

TF_CONFIG = 'TF_CONFIG'
DEFAULT_TIMEOUT = 600.0  # seconds: longer than a slow worker's epoch end (its validation, the chief's save)
MAX_TIMEOUT = 86400.0
MAX_WORKERS = 1024
PROBE_SECONDS = 5.0  # how often a waiting worker knocks at the others' ports
REPORT_SECONDS = 10.0  # how often a worker waiting at start-up says who is still missing
KNOCK_INTERVAL = 0.5  # seconds between start-up knocks
SIGNAL_GRACE = 10.0  # seconds a step may take to finish after a stop signal (at least)
# The watcher's backstop fires this long after the deadline: TensorFlow's own error comes first
# where TensorFlow keeps the deadline, with its reason.
DEADLINE_SLACK = 5.0
# A client's HTTP/2 connection preface and an empty SETTINGS frame: a gRPC server (a TensorFlow
# worker) answers with a SETTINGS frame of its own; anything else listening on the port does not.
_HTTP2_GREETING = b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n' + b'\x00\x00\x00\x04\x00\x00\x00\x00\x00'
_SETTINGS_FRAME = 4
# What a peer's port says: a TensorFlow worker, nothing listening, or something else listening.
ANSWERS, REFUSES, NOT_TENSORFLOW = 'answers', 'nothing listens there', \
    'something listens there, but not a TensorFlow worker'
VALUE_BYTES = 200  # how much of a differing setting's value the workers show each other
# What a TF_CONFIG may hold: the chief (worker 0 when present) and workers. A parameter server or an
# evaluator belongs to another way of training, which this toolkit does not do.
_JOBS = ('chief', 'worker')
# What session.run raises when another worker stops answering: the deadline passes, or the
# connection to it fails first.
_LOST_ERRORS = (tf.errors.DeadlineExceededError, tf.errors.UnavailableError, tf.errors.AbortedError,
                tf.errors.CancelledError, tf.errors.InternalError)
_RESUME = 'restart every worker with --resume to continue from the last checkpoint'
_AT_START = 'while waiting for the other workers: stopped before training started'


@dataclasses.dataclass(frozen=True)
class Cluster:
    """The workers of a run ('host:port' each, the chief first) and this process's place among them."""
    workers: tuple
    index: int

    @property
    def num_workers(self):
        return len(self.workers)

    @property
    def is_chief(self):
        return self.index == 0

    def name(self, index):
        return f'worker {index} ({self.workers[index]})'


def _host_port(text, where):
    host, colon, port = text.strip().rpartition(':')
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ToolkitError(f'{where}: {text!r} is not host:port (a port 1-65535)')
    return f'{host}:{int(port)}'


def cluster_from(worker_hosts, task_index, environ=None):
    """The Cluster of --worker_hosts/--task_index, else of the TF_CONFIG environment variable (what
    Kubeflow's TFJob, Vertex AI and SageMaker set); None for one machine (also a cluster of one)."""
    environ = os.environ if environ is None else environ
    config_text = environ.get(TF_CONFIG, '').strip()
    if worker_hosts is not None or task_index is not None:
        if worker_hosts is None or task_index is None:
            raise ToolkitError('--worker_hosts and --task_index go together (every worker gets the '
                               'same --worker_hosts and its own --task_index)')
        if config_text:
            raise ToolkitError(f'--worker_hosts and {TF_CONFIG} are both set: use one of them')
        workers = tuple(_host_port(host, '--worker_hosts') for host in worker_hosts.split(','))
        index, where = task_index, '--task_index'
    elif config_text:
        workers, index = _parse_tf_config(config_text)
        where = f"{TF_CONFIG}'s task index"
    else:
        return None
    if len(set(workers)) != len(workers):
        raise ToolkitError(f'{"--worker_hosts" if worker_hosts else TF_CONFIG} names a worker twice')
    if len(workers) > MAX_WORKERS:
        raise ToolkitError(f'{len(workers)} workers: at most {MAX_WORKERS}')
    if not 0 <= index < len(workers):
        raise ToolkitError(f'{where} must be 0..{len(workers) - 1} for {len(workers)} workers, got {index}')
    return Cluster(workers, index) if len(workers) > 1 else None


def _parse_tf_config(text):
    """(workers, index) from TF_CONFIG's JSON: the chief, if any, first, then the workers."""
    try:
        config = json.loads(text)
        cluster, task = config['cluster'], config['task']
        jobs = {job: list(hosts) for job, hosts in cluster.items()}
        task_type, task_index = task['type'], task['index']
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ToolkitError(f'{TF_CONFIG} is not a cluster and task as JSON ({type(error).__name__}: '
                           f'{error}); e.g. {{"cluster": {{"worker": ["host1:2222", "host2:2222"]}}, '
                           f'"task": {{"type": "worker", "index": 0}}}}') from None
    other = sorted(set(jobs) - set(_JOBS))
    if other:
        raise ToolkitError(f"{TF_CONFIG}: job {other[0]!r} is not supported: synchronous training "
                           "has a chief and workers only")
    if task_type not in _JOBS:
        raise ToolkitError(f"{TF_CONFIG}: task type {task_type!r} is not supported (chief or worker)")
    if len(jobs.get('chief', [])) > 1:
        raise ToolkitError(f'{TF_CONFIG}: one chief at most, it names {len(jobs["chief"])}')
    if not isinstance(task_index, int) or isinstance(task_index, bool):
        raise ToolkitError(f"{TF_CONFIG}: the task's index must be an integer, got {task_index!r}")
    count = len(jobs.get(task_type, []))
    if not 0 <= task_index < count:
        raise ToolkitError(f"{TF_CONFIG}'s task index must be 0..{count - 1} for its {count} "
                           f'{task_type}(s), got {task_index}')
    hosts = [_host_port(str(host), f'{TF_CONFIG} {job}') for job in _JOBS for host in jobs.get(job, [])]
    chiefs = len(jobs.get('chief', []))
    return tuple(hosts), (task_index if task_type == 'chief' else chiefs + task_index)


def check_timeout(seconds):
    if not (0 < seconds <= MAX_TIMEOUT):  # NaN compares false
        raise ToolkitError(f'--collective_timeout must be in (0, {MAX_TIMEOUT:g}] seconds, got {seconds}')


def settings_digest(values):
    """A 48-bit number for a dict of settings (exact in the float64 the workers exchange)."""
    text = json.dumps(values, sort_keys=True, default=str)
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)


class OneMachine:
    """The methods of Workers, for a run on one machine: nothing to agree on."""
    num_workers = 1
    index = 0
    is_chief = True
    session_target = ''

    def session_config(self, config):
        return config

    def replicated(self, build):
        return build()

    def bounded(self, session):
        return session

    def lock(self, folder):
        return run_folder.RunLock(folder)

    def start(self, order_seed, agreed_values):
        return order_seed

    def check_same_start(self, session, step):
        pass

    def agree_to_stop(self, session, stop):
        return stop.requested

    def epoch_totals(self, session, values):
        return np.asarray(values, np.float64)

    def join_validation(self, session, totals, outputs, data):
        return totals


class Workers:
    """This process's part in a run on several workers: its tf.distribute.Server and strategy, and the
    small agreements of the training loop, each with the deadline `timeout` (seconds)."""

    def __init__(self, cluster, use_gpu, timeout):
        self.cluster = cluster
        self.num_workers = cluster.num_workers
        self.index = cluster.index
        self.is_chief = cluster.is_chief
        self.timeout = timeout
        self._spec = tf.train.ClusterSpec({'worker': list(cluster.workers)})
        # One replica per worker, on its first GPU or its CPU: --num_gpus towers split a worker's
        # rows over its devices, as on one machine.
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            self._spec, task_type='worker', task_id=cluster.index, rpc_layer='grpc',
            num_accelerators={'GPU': 1} if use_gpu else {})
        self.strategy = tf.distribute.experimental.MultiWorkerMirroredStrategy(
            cluster_resolver=resolver, communication=communication(use_gpu))
        self._config = None
        self._server = None
        self._gathers = {}  # (graph, kind, size): the all-reduce op that gathers that many values
        self._all_up = False  # every worker has answered once (the watchdog waits for that)
        self._training = False  # past the start-up agreements: a signal then lets the step finish
        self._longest = 0.0  # seconds of the longest collective call so far

    def session_config(self, config):
        """The session's ConfigProto with the strategy's collective settings; starts this worker's
        server (once) with it."""
        config = self.strategy.update_config_proto(config)
        # TensorFlow's own deadline for every blocking call of the session (creating it included).
        config.operation_timeout_in_ms = int(self.timeout * 1000)
        if self._server is None:
            try:
                self._server = tf.distribute.Server(self._spec, job_name='worker',
                                                    task_index=self.index, config=config, start=True)
            except (tf.errors.OpError, RuntimeError, ValueError) as error:
                raise ToolkitError(f'{self.cluster.name(self.index)}: cannot listen there: '
                                   f'{_reason(error)}') from None
        self._config = config
        return config

    @property
    def session_target(self):
        return self._server.target

    def replicated(self, build):
        """build() inside the strategy: its variables become one copy per worker, and every
        optimizer update all-reduces its gradients."""
        built = []
        with self.strategy.scope():
            self.strategy.extended.call_for_each_replica(lambda: built.append(build()))
        return built[0]

    def bounded(self, session):
        """`session` whose `run` waits for the others at most --collective_timeout (`run`)."""
        return BoundedSession(self, session)

    def run(self, session, fetches, feed=None):
        """session.run with the deadline; a worker that stopped answering becomes one line naming it.
        In a command's own process a watcher guards the call (`_watching`)."""
        session = getattr(session, 'session', session)  # a BoundedSession's own
        with self._watching():
            try:
                return session.run(fetches, feed,
                                   options=tf.RunOptions(timeout_in_ms=int(self.timeout * 1000)))
            except _LOST_ERRORS as error:
                raise self.lost_worker_error(error) from None

    @contextlib.contextmanager
    def _watching(self):
        """While the main thread waits inside TensorFlow (where Python runs no signal handler), a
        thread knocks at the others' ports, ends the process past the deadline and reads the stop
        signals (docs/distributed.md). Only in a command's own process (signals.can_leave_now)."""
        if not signals.can_leave_now() or threading.current_thread() is not threading.main_thread():
            yield
            return
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        started, done = time.monotonic(), threading.Event()
        thread = threading.Thread(target=self._watch, args=(reader, writer, started, done),
                                  name='worker-watcher', daemon=True)
        thread.start()
        try:
            yield
        finally:
            signal.set_wakeup_fd(previous)
            done.set()
            try:
                writer.send(b'\0')  # no signal has number 0: "the wait is over"
            except OSError:
                pass
            self._longest = max(self._longest, time.monotonic() - started)

    def _watch(self, reader, writer, started, done):
        deadline = started + self.timeout + DEADLINE_SLACK
        next_knock = started + PROBE_SECONDS
        misses = dict.fromkeys(self._others, 0)
        first_signal, grace, grace_ends = None, 0.0, None
        try:
            while not done.is_set():
                until = min(deadline, next_knock, grace_ends or deadline)
                readable, _, _ = select.select([reader], [], [], max(0.0, until - time.monotonic()))
                received = reader.recv(64) if readable else b''
                if done.is_set():
                    return
                for signum in received:
                    if not self._training:  # nothing to save yet: out now
                        signals.leave_now(f'{signals.name(signum)} {_AT_START}', 128 + signum)
                    if first_signal is not None:  # a second signal: out now, as on one machine
                        signals.leave_now(str(signals.Aborted(signum)), 128 + signum)
                    first_signal, grace = signum, max(SIGNAL_GRACE, 2 * self._longest)
                    grace_ends = time.monotonic() + grace
                now = time.monotonic()
                if grace_ends is not None and now >= grace_ends:
                    signals.leave_now(
                        f'{signals.name(first_signal)} while waiting for the other workers, who did '
                        f'not finish the step within {grace:.0f} s: stopped without saving; the last '
                        'complete checkpoint is kept, continue it with --resume', 128 + first_signal)
                if now >= deadline:
                    signals.leave_now(str(self.lost_worker_error(None)), 2)
                if now >= next_knock:
                    next_knock = now + PROBE_SECONDS
                    if self._all_up:
                        for index in misses:
                            misses[index] = 0 if _answers(self.cluster.workers[index]) else \
                                misses[index] + 1
                        gone = [index for index, count in misses.items() if count >= 2]
                        if gone and not done.is_set():
                            signals.leave_now(self._gone_message(gone), 2)
        finally:
            reader.close()
            writer.close()

    def _gone_message(self, gone):
        return (f'{_names(self.cluster, gone)} {"is" if len(gone) == 1 else "are"} gone (no longer '
                f'accepting connections): {_RESUME}')

    @property
    def _others(self):
        return [index for index in range(self.num_workers) if index != self.index]

    def lost_worker_error(self, error):
        """Which worker is gone, found by knocking at each one's port (refused: a dead process; no
        TensorFlow server answering: one that hangs). `error`: TensorFlow's, or None (the deadline)."""
        gone = [index for index in self._others if not _answers(self.cluster.workers[index])]
        if gone:
            return ToolkitError(self._gone_message(gone))
        silent = [index for index in self._others
                  if _server_state(self.cluster.workers[index]) != ANSWERS]
        if silent:
            return ToolkitError(f'{_names(self.cluster, silent)} did not answer within '
                                f'--collective_timeout {self.timeout:g} s (the port accepts '
                                'connections, but no TensorFlow server answers there: the process '
                                f'hangs or was stopped): {_RESUME}')
        reason = 'TensorFlow still waited at the deadline' if error is None else _reason(error)
        return ToolkitError(f'the workers did not finish a step together within --collective_timeout '
                            f'{self.timeout:g} s ({reason}); every worker still answers, so one is '
                            f'stuck or slow (raise --collective_timeout if steps take longer): {_RESUME}')

    def wait_for_others(self):
        """Returns once every other worker answers as a TensorFlow server; ToolkitError naming those
        that did not within --collective_timeout. Says who is still missing every REPORT_SECONDS.
        Plain Python (sockets and sleeps), so signals are handled as they come."""
        started = time.monotonic()
        next_report = started + REPORT_SECONDS
        missing = dict.fromkeys(self._others)
        while True:
            states = {index: _server_state(self.cluster.workers[index]) for index in missing}
            missing = {index: state for index, state in states.items() if state != ANSWERS}
            if not missing:
                return
            now = time.monotonic()
            if now >= next_report:
                next_report += REPORT_SECONDS
                print(f'waiting for {_names(self.cluster, missing)} to start: {now - started:.0f} s '
                      f'of --collective_timeout {self.timeout:g} s', flush=True)
            if now - started >= self.timeout:
                reasons = '; '.join(f'{self.cluster.name(index)}: {state}'
                                    for index, state in missing.items())
                raise ToolkitError(
                    f'{len(missing)} of the {self.num_workers} workers '
                    f'{"has" if len(missing) == 1 else "have"} not answered within '
                    f'--collective_timeout {self.timeout:g} s ({reasons}): start every worker with the '
                    f'same flags, check the addresses in --worker_hosts or {TF_CONFIG}, or raise '
                    '--collective_timeout')
            time.sleep(KNOCK_INTERVAL)

    def gather(self, session, values, kind='float64'):
        """Every worker's `values` (a 1-D array of a size all of them use for this call), as a
        [num_workers, size] array, in worker order: each worker fills its own slot of a zero vector,
        and the sum over the workers is then every slot (exact: the other terms are zeros)."""
        values = np.asarray(values, kind).ravel()
        key = (session.graph, kind, values.size)
        if key not in self._gathers:
            # Built on first use, in the same order on every worker (the strategy numbers its
            # collectives as they are built).
            with session.graph.as_default(), tf.device('/cpu:0'):
                slots = tf.placeholder(kind, [self.num_workers * values.size], name='gather_slots')

            def all_reduce():
                return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, slots)
            with session.graph.as_default():
                self._gathers[key] = (slots, self.replicated(all_reduce))
        slots, total = self._gathers[key]
        mine = np.zeros((self.num_workers, values.size), kind)
        mine[self.index] = values
        try:
            gathered = self.run(session, total, {slots: mine.ravel()})
        except tf.errors.OpError as error:  # e.g. another worker gathering something else now
            raise ToolkitError(f'the workers went out of step ({_reason(error)}): start every worker '
                               'with the same flags and data') from None
        return gathered.reshape(self.num_workers, values.size)

    def lock(self, folder):
        """The run folder's lock, held by the chief (the others write nothing there)."""
        return run_folder.RunLock(folder) if self.is_chief else contextlib.nullcontext()

    def start(self, order_seed, agreed_values):
        """The chief's shuffle seed, once every worker came up (`wait_for_others`) and answered with
        the same `agreed_values` (settings and data digests), in a small graph of its own before the
        training graph; a stop signal meanwhile ends the process at once (nothing to save yet)."""
        names = sorted(agreed_values)
        digest, keys = settings_digest(agreed_values), settings_digest(names)
        with signals.ending_at_once(_AT_START):
            self.wait_for_others()
            with tf.Graph().as_default() as graph, \
                    tf.Session(self.session_target, graph=graph, config=self._config) as session:
                seeds, digests, all_keys = self.gather(
                    session, [order_seed if self.is_chief else 0, digest, keys]).T
                self._all_up = True
                if _unlike_the_chief(digests) is not None:
                    raise self._disagreement(session, agreed_values, names, all_keys)
        return int(seeds[0])

    def _disagreement(self, session, agreed_values, names, all_keys):
        """The ToolkitError naming the first setting (in name order) on which a worker differs
        from the chief, with both values. Every worker sees the same gathered digests, so all make
        the same two further gathers."""
        other = _unlike_the_chief(all_keys)
        if other is not None:
            return ToolkitError(f'{self.cluster.name(other)} runs another version of this toolkit '
                                '(its settings have other names): install the same version on every '
                                'worker')
        each = self.gather(session, [settings_digest(agreed_values[name]) for name in names])
        unlike = [(key, _unlike_the_chief(each[:, key])) for key in range(len(names))]
        key, other = next((key, worker) for key, worker in unlike if worker is not None)
        name = names[key]
        text = json.dumps(agreed_values[name], sort_keys=True, default=str).encode()[:VALUE_BYTES]
        values = self.gather(session, np.frombuffer(text.ljust(VALUE_BYTES, b'\0'), np.uint8))
        chief, theirs = (bytes(values[index].astype(np.uint8)).rstrip(b'\0').decode('utf-8', 'replace')
                         for index in (0, other))
        if name.endswith('_sha256'):
            flag = f'--{name[:-len("_sha256")]}'
            return ToolkitError(f'{self.cluster.name(other)} reads other data than the chief: the '
                                f'digest of its {flag} is {theirs.strip(chr(34))[:16]}..., the '
                                f"chief's {chief.strip(chr(34))[:16]}...: give every worker the "
                                f'same list files (and images) or shards')
        label = _SETTING_LABELS.get(name, f'--{name}')
        return ToolkitError(f'{self.cluster.name(other)} was started with other settings than the '
                            f'chief: {label}: {chief} on worker 0 (the chief), {theirs} on worker '
                            f'{other}: start every worker with the same flags')

    def check_same_start(self, session, step):
        """After the restore or the weights' loading: every worker starts from the chief's step and
        values (each worker reads the checkpoint, the weights file or --init_checkpoint itself).
        The last start-up agreement: a stop signal after it lets the step in flight finish."""
        with signals.ending_at_once(_AT_START):
            variables = sorted(session.graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES),
                               key=lambda variable: variable.op.name)
            digest = hashlib.sha256()
            for value in session.run(variables):
                digest.update(np.ascontiguousarray(value).tobytes())
            steps, digests = self.gather(session, [step, int(digest.hexdigest()[:12], 16)]).T
            other = _unlike_the_chief(steps)
            if other is not None:
                raise ToolkitError(f'{self.cluster.name(other)} starts at step {int(steps[other])}, '
                                   f'the chief at step {int(steps[0])}: every worker must read the chief\'s '
                                   '--checkpoint_path (a shared file system) to --resume')
            other = _unlike_the_chief(digests)
            if other is not None:
                raise ToolkitError(f'{self.cluster.name(other)} starts from other weights than the '
                                   'chief: give every worker the same --weights_path and --init_checkpoint '
                                   'files')
        self._training = True

    def agree_to_stop(self, session, stop):
        """True (on every worker, before the same step) once any worker received a stop signal; the
        others then take that worker's signal as their own, for the message and the exit status."""
        sent = stop.signum or 0
        received = self.gather(session, [sent])[:, 0].astype(int)
        # Decided from what every worker sent, never from the flag now: a signal that arrived
        # during the gather is sent (and obeyed) before the next step, by every worker at once.
        if not received.any():
            return False
        if not sent:
            index = int(np.flatnonzero(received)[0])
            stop.agree(int(received[index]), self.cluster.name(index))
        return True

    def epoch_totals(self, session, values):
        """The workers' `values` summed (their epoch's loss and accuracy sums, image counts)."""
        return self.gather(session, values).sum(axis=0)

    def join_validation(self, session, totals, outputs, data):
        """Every worker's validation of `data` (its generator): the summed (loss sum, correct, count),
        and `outputs` (a summaries.ValidationOutputs, or None) made to hold the probabilities and
        labels of every image, in the list's order."""
        totals = self.gather(session, totals).sum(axis=0)
        if outputs is None:
            return totals
        positions = [preprocessing.worker_rows(data.data_size, data.batch_size, index,
                                               self.num_workers) for index in range(self.num_workers)]
        rows, classes = max(len(part) for part in positions), data.num_classes
        labels = outputs.labels
        mine = np.zeros((rows, classes + 1), np.float32)
        if len(labels):
            mine[:len(labels), :classes] = outputs.probabilities
            mine[:len(labels), classes] = labels
        every = self.gather(session, mine, kind='float32').reshape(self.num_workers, rows, classes + 1)
        size = sum(len(part) for part in positions)
        joined = np.zeros((size, classes + 1), np.float32)
        for worker, part in enumerate(positions):
            joined[part] = every[worker, :len(part)]
        outputs.replace_with(joined[:, :classes], joined[:, classes].astype(np.int64))
        return totals


class BoundedSession:
    """A session whose `run` is Workers.run: bounded by --collective_timeout, a lost worker named."""

    def __init__(self, workers, session):
        self.workers, self.session = workers, session

    def run(self, fetches, feed_dict=None):
        return self.workers.run(self.session, fetches, feed_dict)

    def __getattr__(self, name):
        return getattr(self.session, name)


def _unlike_the_chief(values):
    """The first worker whose gathered value differs from the chief's (worker 0's), or None."""
    return next((index for index, value in enumerate(values) if value != values[0]), None)


# Agreed settings that are not flags of the same name.
_SETTING_LABELS = {'gpu': 'a GPU in use', 'warm_start': 'a warm start (--init_checkpoint given)',
                   'cache_features': '--cache_features (in use)',
                   'cosine_epochs': "the cosine schedule's length (--num_epochs)"}


def _reason(error):
    """The first line of TensorFlow's message (of any error)."""
    return str(getattr(error, 'message', error)).strip().splitlines()[0][:200]


def _names(cluster, indices):
    return ', '.join(cluster.name(index) for index in indices)


def _connect(address, seconds):
    host, _, port = address.rpartition(':')
    return socket.create_connection((host.strip('[]'), int(port)), timeout=seconds)


def _server_state(address, seconds=2.0):
    """ANSWERS when a gRPC server (a TensorFlow worker) greets back at `address`, else why not."""
    try:
        connection = _connect(address, seconds)
    except ConnectionRefusedError:
        return REFUSES
    except OSError as error:  # no route, a name that does not resolve, no answer at all
        return f'cannot connect ({getattr(error, "strerror", None) or error or "timed out"})'
    head = b''
    with connection:
        try:
            connection.sendall(_HTTP2_GREETING)
            while len(head) < 9:
                chunk = connection.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
        except OSError:
            pass
    return ANSWERS if len(head) == 9 and head[3] == _SETTINGS_FRAME else NOT_TENSORFLOW


def _answers(address, seconds=3.0):
    try:
        with _connect(address, seconds):
            return True
    except OSError:
        return False


def communication(use_gpu):
    """How the workers all-reduce: NCCL between GPUs (over NVLink/InfiniBand where there is one);
    RING (gRPC between the hosts' CPUs) otherwise. Left to AUTO, TensorFlow picks RING even on GPUs."""
    implementation = tf.distribute.experimental.CommunicationImplementation
    return implementation.NCCL if use_gpu else implementation.RING


def start(cluster, use_gpu, timeout):
    """Workers for a cluster, OneMachine for None."""
    return Workers(cluster, use_gpu, timeout) if cluster is not None else OneMachine()
