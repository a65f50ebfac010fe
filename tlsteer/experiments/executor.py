"""Executors: where an experiment's independent cells run, in this process or on a Ray cluster.

An experiment hands an executor a work function, its items (the independent cells) and a
``setup``; the executor gives back one result per item, in the items' order:

    results = executor.map(fn, items, setup=setup)

- ``setup`` is a picklable callable with no arguments that builds the heavy per-worker context
  (loads the model, the SAE, the judge). It runs **once per worker**, and again only when a later
  ``map`` passes a different ``setup`` (one that is not ``==`` the last).
- ``fn(context, item)`` computes one cell from that context. It must be deterministic given its
  item: seed everything from the item (e.g. ``torch.manual_seed(item.seed)``, ``seed=`` of
  :func:`~tlsteer.generate_tokens`), never from how many items a worker ran before. Then the
  results do not depend on the executor or on the number of workers.

:class:`InProcess` (the default) calls ``setup`` once and ``fn`` in a loop. :class:`RayExecutor`
starts a local Ray cluster (or connects to one with ``address``), creates ``num_workers`` actors
that each run ``setup`` once, and hands the items out as workers become free. A failing item is
raised as a :class:`WorkerError` naming it, whichever executor ran it. :func:`make_executor`
builds either from a name, for a command-line flag (``--executor ray --workers 4``).

Ray is optional (``pip install "tlsteer[ray]"``) and imported only when a :class:`RayExecutor`
is made. Workers on the same machine import what the driver imports (its ``sys.path`` is sent
along), so functions defined in a script or a test module work; on a multi-machine cluster the
code must be importable on every machine (installed, or shipped with
``init_kwargs={"runtime_env": {"py_modules": [...]}}``).

Example:
    >>> import functools
    >>> from tlsteer.models import tiny_model
    >>> def next_token(model, text):
    ...     return int(model(text)[0, -1].argmax())
    >>> setup = functools.partial(tiny_model, "llama", seed=0, n_layers=1)
    >>> with InProcess() as executor:
    ...     results = executor.map(next_token, ["ab", "cd"], setup=setup)
    >>> results == [next_token(setup(), text) for text in ["ab", "cd"]]
    True
    >>> with make_executor("ray", workers=2) as executor:  # doctest: +SKIP
    ...     executor.map(next_token, ["ab", "cd"], setup=setup)
"""

from __future__ import annotations

import math
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Protocol, TypeVar, get_args, runtime_checkable

__all__ = [
    "ExecutorName",
    "Executor",
    "InProcess",
    "RayExecutor",
    "WorkerError",
    "make_executor",
]

C = TypeVar("C")
T = TypeVar("T")
R = TypeVar("R")

ExecutorName = Literal["inprocess", "ray"]
"""The executors :func:`make_executor` builds by name."""

RAY_INSTALL_HINT = 'RayExecutor needs Ray: pip install "tlsteer[ray]" (or pip install ray)'

_MAX_ITEM_REPR = 120
_IN_FLIGHT_PER_WORKER = 2  # one running, one queued: a worker never waits for the driver


class WorkerError(RuntimeError):
    """An item (or a worker's ``setup``) failed; the message names the item and the worker.

    Attributes:
        index: The item's position in ``items`` (``None`` when ``setup`` failed).
        item: ``repr`` of the item, shortened (``""`` when ``setup`` failed).
        worker: Where it ran: ``"in process"`` or ``"ray worker 1 (pid 1234)"``.
        cause_type: The name of the original exception's type (``"ValueError"``).
        remote_traceback: The worker's traceback, as text (``""`` in process, where the original
            exception is chained as ``__cause__``).
    """

    def __init__(
        self,
        message: str,
        *,
        index: int | None,
        item: str,
        worker: str,
        cause_type: str,
        remote_traceback: str = "",
    ) -> None:
        super().__init__(message)
        self.index = index
        self.item = item
        self.worker = worker
        self.cause_type = cause_type
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_worker_error, (self.args[0], self.__dict__))


def _rebuild_worker_error(message: str, fields: dict[str, Any]) -> WorkerError:
    return WorkerError(message, **fields)


@runtime_checkable
class Executor(Protocol):
    """Runs ``fn(context, item)`` for every item, ``context = setup()`` built once per worker.

    ``map`` returns the results in the items' order and raises :class:`WorkerError` naming the
    first failing item it sees. ``close`` frees the workers (and a cluster the executor started);
    every executor is also a context manager that closes on exit.
    """

    def map(
        self, fn: Callable[[Any, Any], Any], items: Sequence[Any], *, setup: Callable[[], Any]
    ) -> list[Any]:
        """One result per item, in order: ``[fn(setup(), item) for item in items]``."""
        ...

    def close(self) -> None:
        """Free the workers; the executor can not be used after."""
        ...


def _short_repr(item: object) -> str:
    text = repr(item)
    return text if len(text) <= _MAX_ITEM_REPR else text[: _MAX_ITEM_REPR - 3] + "..."


def _check_callable(value: Any, name: str) -> None:
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {value!r}")


def _item_list(items: Any) -> list[Any]:
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise TypeError(f"items must be a sequence (a list or tuple of cells), got {_short_repr(items)}")
    return list(items)


def _same_setup(a: object, b: object) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:  # a setup whose __eq__ fails is a new setup
        return False


def _item_failure(
    index: int, total: int, item: object, worker: str, exc: BaseException, tb: str
) -> WorkerError:
    shown = _short_repr(item)
    place = worker if worker == "in process" else f"on {worker}"
    where = f"\n\nworker traceback:\n{tb}" if tb else ""
    return WorkerError(
        f"item {index} of {total} ({shown}) failed {place}: {type(exc).__name__}: {exc}{where}",
        index=index,
        item=shown,
        worker=worker,
        cause_type=type(exc).__name__,
        remote_traceback=tb,
    )


class _Closable:
    _closed = False

    def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; make a new executor")

    def __enter__(self: Any) -> Any:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class InProcess(_Closable):
    """The default executor: ``setup()`` once, then ``fn(context, item)`` for each item in turn.

    The context is kept for the next ``map`` with the same ``setup``. A failing item raises
    :class:`WorkerError` naming it, with the original exception as ``__cause__``.

    Example:
        >>> with InProcess() as executor:
        ...     executor.map(lambda ctx, x: ctx + x, [1, 2, 3], setup=lambda: 10)
        [11, 12, 13]
    """

    num_workers = 1

    def __init__(self) -> None:
        self._setup: Callable[[], Any] | None = None
        self._context: Any = None

    def __repr__(self) -> str:
        return "InProcess()"

    def map(self, fn: Any, items: Any, *, setup: Any) -> list[Any]:
        """``[fn(context, item) for item in items]`` with ``context = setup()`` (built once)."""
        self._check_open()
        _check_callable(fn, "fn")
        _check_callable(setup, "setup")
        items = _item_list(items)
        if not items:
            return []
        if self._setup is None or not _same_setup(self._setup, setup):
            self._context, self._setup = None, None
            try:
                context = setup()
            except Exception as exc:
                raise WorkerError(
                    f"setup {_short_repr(setup)} failed in process: {type(exc).__name__}: {exc}",
                    index=None,
                    item="",
                    worker="in process",
                    cause_type=type(exc).__name__,
                ) from exc
            self._context, self._setup = context, setup
        out = []
        for i, item in enumerate(items):
            try:
                out.append(fn(self._context, item))
            except Exception as exc:
                raise _item_failure(i, len(items), item, "in process", exc, "") from exc
        return out

    def close(self) -> None:
        """Drop the context (the model it holds can be freed)."""
        self._context, self._setup = None, None
        super().close()


class _Worker:
    """A Ray actor's body: extends ``sys.path`` like the driver's, builds the context, runs items."""

    def __init__(self, paths: list[str], rank: int) -> None:
        # before any argument from the driver is unpickled: functions defined in the driver's
        # scripts and test modules then import here too
        sys.path[:0] = [p for p in paths if p not in sys.path]
        self.rank = rank
        self.context: Any = None
        self.ready = False

    def name(self) -> str:
        return f"ray worker {self.rank} (pid {os.getpid()})"

    def prepare(self, setup: Callable[[], Any]) -> tuple[bool, str, str, str]:
        """``(ok, error type, error message, traceback)`` of building the context."""
        self.context, self.ready = None, False
        try:
            self.context = setup()
        except Exception as exc:
            return False, type(exc).__name__, str(exc), traceback.format_exc()
        self.ready = True
        return True, "", "", ""

    def run(self, fn: Callable[[Any, Any], Any], item: Any) -> tuple[bool, Any, str, str]:
        """``(True, result, "", "")`` or ``(False, error type, error message, traceback)``."""
        if not self.ready:
            return False, "RuntimeError", "the worker's setup did not run", ""
        try:
            return True, fn(self.context, item), "", ""
        except Exception as exc:
            return False, type(exc).__name__, str(exc), traceback.format_exc()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError(RAY_INSTALL_HINT) from exc
    return ray


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return value


def _non_negative(value: Any, name: str, *, positive: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


class RayExecutor(_Closable):
    """Spreads the items over ``num_workers`` Ray actors, each holding its own ``setup()`` context.

    With ``address=None`` and no Ray running, a local cluster is started (``num_workers *
    num_cpus_per_worker`` CPUs, no dashboard) and shut down by :meth:`close`; with an
    ``address`` (``"auto"``, ``"ray://head:10001"``) the executor connects to that cluster, and
    ``close`` only disconnects. If Ray is already initialised in this process, that session is used
    and left running. Each actor reserves ``num_cpus_per_worker`` CPUs and ``num_gpus_per_worker``
    GPUs; Ray gives an actor with a GPU its own ``CUDA_VISIBLE_DEVICES``, so ``setup`` loads onto
    ``"cuda"``. The cluster is started on the first ``map``; a cluster too small for the workers is
    refused then (rather than waiting forever).

    Results equal :class:`InProcess`'s when ``fn`` is deterministic given its item (see the
    module's docstring); Ray runs each actor's torch on ``num_cpus_per_worker`` threads, so floats
    can differ from a many-threaded run in their last bits.

    Args:
        address: A running cluster to connect to (``None``: start a local one).
        num_workers: Actors, each with its own context.
        num_cpus_per_worker: CPUs each actor reserves (may be fractional).
        num_gpus_per_worker: GPUs each actor reserves (``0.5`` shares a GPU between two).
        init_kwargs: More arguments for ``ray.init`` (``runtime_env``, ``object_store_memory``,
            ``log_to_driver``, ...).

    Raises:
        ImportError: Ray is not installed (the message says ``pip install "tlsteer[ray]"``).

    Example:
        >>> with RayExecutor(num_workers=2) as executor:  # doctest: +SKIP
        ...     results = executor.map(score_cell, cells, setup=load_everything)
    """

    def __init__(
        self,
        address: Any = None,
        *,
        num_workers: Any = 2,
        num_cpus_per_worker: Any = 1,
        num_gpus_per_worker: Any = 0,
        init_kwargs: Any = None,
    ) -> None:
        if address is not None and not (isinstance(address, str) and address):
            raise ValueError(
                f"address must be a cluster address ('auto', 'ray://host:10001') or None, got {address!r}"
            )
        self.address: str | None = address
        self.num_workers = _positive_int(num_workers, "num_workers")
        self.num_cpus_per_worker = _non_negative(num_cpus_per_worker, "num_cpus_per_worker", positive=True)
        self.num_gpus_per_worker = _non_negative(num_gpus_per_worker, "num_gpus_per_worker")
        if init_kwargs is not None and not isinstance(init_kwargs, Mapping):
            raise TypeError(
                f"init_kwargs must be a mapping of ray.init arguments or None, got {init_kwargs!r}"
            )
        self.init_kwargs: dict[str, Any] = dict(init_kwargs or {})
        clash = sorted({"address", "num_cpus"} & set(self.init_kwargs))
        if clash:
            raise ValueError(
                f"init_kwargs must not set {clash}: pass address= / num_cpus_per_worker= instead"
            )
        self._ray = _import_ray()
        self._started_ray = False
        self._actors: list[Any] = []
        self._names: list[str] = []
        self._setup: Callable[[], Any] | None = None

    def __repr__(self) -> str:
        where = f"address={self.address!r}, " if self.address else ""
        return (
            f"RayExecutor({where}num_workers={self.num_workers}, "
            f"num_cpus_per_worker={self.num_cpus_per_worker:g}, "
            f"num_gpus_per_worker={self.num_gpus_per_worker:g})"
        )

    # -- the cluster and the actors --------------------------------------------------------
    def _connect(self) -> None:
        ray = self._ray
        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {"include_dashboard": False, **self.init_kwargs}
        if self.address is None:
            kwargs["num_cpus"] = math.ceil(self.num_workers * self.num_cpus_per_worker)
        else:
            kwargs["address"] = self.address
            kwargs.pop("include_dashboard")  # a setting of the cluster's head, not of a client
        ray.init(**kwargs)
        self._started_ray = self.address is None

    def _check_room(self) -> None:
        total = self._ray.cluster_resources()
        for resource, each in (("CPU", self.num_cpus_per_worker), ("GPU", self.num_gpus_per_worker)):
            need = each * self.num_workers
            if need > float(total.get(resource, 0.0)) + 1e-9:
                raise ValueError(
                    f"{self!r} needs {need:g} {resource}s but the cluster has "
                    f"{float(total.get(resource, 0.0)):g}: lower num_workers or the per-worker "
                    f"{resource.lower()}s, or add machines"
                )

    def _start_workers(self, setup: Callable[[], Any]) -> None:
        """Start the actors (once), then build every actor's context with ``setup``."""
        ray = self._ray
        self._setup = None
        if not self._actors:
            self._connect()
            self._check_room()
            actor = ray.remote(_Worker).options(
                num_cpus=self.num_cpus_per_worker, num_gpus=self.num_gpus_per_worker
            )
            paths = [p for p in sys.path if p]
            self._actors = [actor.remote(paths, rank) for rank in range(self.num_workers)]
            self._names = ray.get([a.name.remote() for a in self._actors])
        built = ray.get([a.prepare.remote(setup) for a in self._actors])  # all setups at once
        for name, (ok, kind, message, tb) in zip(self._names, built, strict=True):
            if not ok:
                raise WorkerError(
                    f"setup {_short_repr(setup)} failed on {name}: {kind}: {message}"
                    f"\n\nworker traceback:\n{tb}",
                    index=None,
                    item="",
                    worker=name,
                    cause_type=kind,
                    remote_traceback=tb,
                )
        self._setup = setup

    def _kill_workers(self) -> None:
        for a in self._actors:
            self._ray.kill(a)
        self._actors, self._names, self._setup = [], [], None

    # -- the work ----------------------------------------------------------------------------
    def map(self, fn: Any, items: Any, *, setup: Any) -> list[Any]:
        """``[fn(context, item) for item in items]``, spread over the workers, in the items' order."""
        self._check_open()
        _check_callable(fn, "fn")
        _check_callable(setup, "setup")
        items = _item_list(items)
        if not items:
            return []
        if self._setup is None or not _same_setup(self._setup, setup):
            self._start_workers(setup)
        ray = self._ray
        fn_ref = ray.put(fn)  # shipped once, not once per item
        results: list[Any] = [None] * len(items)
        pending: dict[Any, tuple[int, int]] = {}  # object ref -> (item index, worker)
        todo = iter(range(len(items)))

        def submit(worker: int) -> None:
            i = next(todo, None)
            if i is not None:
                pending[self._actors[worker].run.remote(fn_ref, items[i])] = (i, worker)

        for worker in range(len(self._actors)):
            for _ in range(_IN_FLIGHT_PER_WORKER):
                submit(worker)
        while pending:
            [done], _ = ray.wait(list(pending), num_returns=1)
            i, worker = pending.pop(done)
            try:
                ok, value, message, tb = ray.get(done)
            except ray.exceptions.RayError as exc:  # the actor died (out of memory, killed)
                self._kill_workers()
                raise _item_failure(i, len(items), items[i], self._names[worker], exc, "") from exc
            if not ok:
                failure = WorkerError(
                    f"item {i} of {len(items)} ({_short_repr(items[i])}) failed on "
                    f"{self._names[worker]}: {value}: {message}\n\nworker traceback:\n{tb}",
                    index=i,
                    item=_short_repr(items[i]),
                    worker=self._names[worker],
                    cause_type=value,
                    remote_traceback=tb,
                )
                for ref in pending:  # the rest of this map is not wanted
                    ray.cancel(ref)
                raise failure
            results[i] = value
            submit(worker)
        return results

    def close(self) -> None:
        """Kill the actors; shut down the cluster if this executor started it."""
        if self._closed:
            return
        try:
            if self._ray.is_initialized():
                self._kill_workers()
        finally:
            if self._started_ray:
                self._ray.shutdown()
                self._started_ray = False
            super().close()


def make_executor(name: Any = "inprocess", *, workers: Any = 2, **ray_options: Any) -> Executor:
    """An executor by name, for a command-line flag: ``"inprocess"`` or ``"ray"``.

    Args:
        name: ``"inprocess"`` (:class:`InProcess`) or ``"ray"`` (:class:`RayExecutor`).
        workers: The Ray executor's ``num_workers`` (ignored in process).
        ray_options: More :class:`RayExecutor` arguments (``address``, ``num_gpus_per_worker``,
            ...); refused with ``"inprocess"``.

    Example:
        >>> make_executor("inprocess")
        InProcess()
        >>> make_executor("threads")
        Traceback (most recent call last):
        ...
        ValueError: executor must be one of 'inprocess', 'ray', got 'threads'
    """
    valid = get_args(ExecutorName)
    if name not in valid:
        raise ValueError(f"executor must be one of {', '.join(repr(v) for v in valid)}, got {name!r}")
    if name == "inprocess":
        if ray_options:
            raise ValueError(f"options {sorted(ray_options)} are for executor 'ray', not 'inprocess'")
        return InProcess()
    return RayExecutor(num_workers=workers, **ray_options)
