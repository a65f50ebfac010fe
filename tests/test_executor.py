"""Executors (:mod:`tlsteer.experiments.executor`): the same cells in process and on a local
two-worker Ray cluster give the same results; ``setup`` runs once per worker; a failing item is
named; the cluster is shut down afterwards.

A cell here is a steered generation (greedy and seeded sampling, :func:`tlsteer.generate_tokens`)
with a seeded random vector, and the KL of that steering on neutral text
(:func:`tlsteer.eval.budget.kl_stats`), on a tiny model each worker builds from its seed. The Ray
tests start one cluster per module and are skipped when Ray is not installed
(``pip install "tlsteer[ray]"``, part of the ``dev`` extra, so CI runs them).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformer_lens import HookedTransformer

from tests.conftest import toy_class_dataset
from tlsteer.decode import generate_tokens
from tlsteer.eval.budget import kl_stats
from tlsteer.experiments.executor import (
    Executor,
    InProcess,
    RayExecutor,
    WorkerError,
    make_executor,
)
from tlsteer.models import tiny_model
from tlsteer.steering import Steering

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason='ray is not installed: pip install "tlsteer[ray]"')

RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage report over the network
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
}

NEUTRAL = ["The river runs past the mill.", "A table has four legs."]


@dataclass(frozen=True)
class SteerCell:
    """One independent cell: a prompt steered by a random vector drawn from ``seed``."""

    prompt: str
    multiplier: float
    seed: int
    hook: str = "blocks.1.hook_resid_post"


@dataclass(frozen=True)
class Context:
    model: HookedTransformer
    setup_id: str
    pid: int


def build_context(seed: int, log_dir: str) -> Context:
    """The per-worker context: a tiny model built from its seed; each call leaves a file in ``log_dir``."""
    setup_id = uuid.uuid4().hex
    (Path(log_dir) / f"setup-{setup_id}").write_text(str(os.getpid()))
    return Context(tiny_model("llama", seed=seed, n_layers=2), setup_id, os.getpid())


def failing_setup() -> Context:
    raise OSError("weights not found at /nowhere")


def steer_cell(context: Context, cell: SteerCell) -> tuple[tuple[int, ...], tuple[int, ...], float, float]:
    """Greedy and sampled new tokens, the KL mean and p95: everything seeded from the cell."""
    model = context.model
    g = torch.Generator().manual_seed(cell.seed)
    vector = torch.randn(model.cfg.d_model, generator=g)
    steering = Steering.from_vector({cell.hook: vector}, cell.multiplier)
    greedy = generate_tokens(model, [cell.prompt], steering, max_new_tokens=8, stop_at_eos=False)
    sampled = generate_tokens(
        model, [cell.prompt], steering, max_new_tokens=8, do_sample=True, seed=cell.seed, stop_at_eos=False
    )
    kl = kl_stats(model, steering, prompts=NEUTRAL)
    return greedy.new_tokens[0], sampled.new_tokens[0], kl.mean, kl.p95


def worker_pid(context: Context, _item: object) -> tuple[int, str]:
    return context.pid, context.setup_id


CELLS = [
    SteerCell(p, m, s)
    for s, (p, m) in enumerate([("Hi!", 2.0), ("Tell me", 4.0), ("ok", 1.0), ("Why?", 3.0)])
]
BAD = SteerCell("Hi!", 2.0, 7, hook="blocks.9.hook_resid_post")  # a 2-layer model has no block 9


def setups_run(log_dir: Path) -> int:
    return len(list(log_dir.glob("setup-*")))


def assert_same_results(got: list, want: list) -> None:
    assert len(got) == len(want)
    for (g_greedy, g_sampled, g_mean, g_p95), (w_greedy, w_sampled, w_mean, w_p95) in zip(
        got, want, strict=True
    ):
        assert g_greedy == w_greedy and g_sampled == w_sampled
        assert g_mean == pytest.approx(w_mean, abs=1e-6) and g_p95 == pytest.approx(w_p95, abs=1e-6)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list:
    """The cells computed by a plain loop, no executor."""
    context = build_context(0, str(tmp_path_factory.mktemp("plain")))
    return [steer_cell(context, c) for c in CELLS]


# -- in process --------------------------------------------------------------------------------
def test_in_process_equals_a_plain_loop_and_sets_up_once(tmp_path, reference):
    setup = functools.partial(build_context, 0, str(tmp_path))
    with InProcess() as executor:
        assert isinstance(executor, Executor)
        assert_same_results(executor.map(steer_cell, CELLS, setup=setup), reference)
        # a cell's result depends on the cell only, not on what ran before it
        assert_same_results(executor.map(steer_cell, CELLS[::-1], setup=setup), reference[::-1])
        assert setups_run(tmp_path) == 1  # two maps, one setup
        assert executor.map(steer_cell, [], setup=setup) == []
    assert setups_run(tmp_path) == 1


def test_in_process_error_names_the_item_and_keeps_the_cause(tmp_path):
    setup = functools.partial(build_context, 0, str(tmp_path))
    with (
        InProcess() as executor,
        pytest.raises(
            WorkerError,
            match=r"item 2 of 3 \(SteerCell\(.*'blocks\.9\.hook_resid_post'\)\) failed in process: KeyError",
        ) as err,
    ):
        executor.map(steer_cell, [CELLS[0], CELLS[1], BAD], setup=setup)
    assert err.value.index == 2 and err.value.cause_type == "KeyError" and err.value.worker == "in process"
    assert isinstance(err.value.__cause__, KeyError)


def test_in_process_setup_error_is_named():
    with (
        InProcess() as executor,
        pytest.raises(
            WorkerError, match=r"setup .*failing_setup.* failed in process: OSError: weights not found"
        ) as err,
    ):
        executor.map(steer_cell, CELLS, setup=failing_setup)
    assert err.value.index is None


def test_a_closed_executor_is_refused():
    executor = InProcess()
    executor.close()
    with pytest.raises(RuntimeError, match=r"InProcess\(\) is closed"):
        executor.map(worker_pid, [1], setup=failing_setup)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="executor must be one of 'inprocess', 'ray', got 'threads'"):
        make_executor("threads")
    with pytest.raises(ValueError, match=r"options \['address'\] are for executor 'ray', not 'inprocess'"):
        make_executor("inprocess", address="auto")
    with pytest.raises(TypeError, match="items must be a sequence"):
        InProcess().map(steer_cell, "abc", setup=failing_setup)
    with pytest.raises(TypeError, match="setup must be callable, got 3"):
        InProcess().map(steer_cell, CELLS, setup=3)


def test_without_ray_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "tlsteer\[ray\]"'):
        RayExecutor()
    with pytest.raises(ImportError, match=r'pip install "tlsteer\[ray\]"'):
        make_executor("ray", workers=2)


def test_ray_settings_are_checked_before_ray_is_needed(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ValueError, match="num_workers must be a whole number >= 1, got 0"):
        RayExecutor(num_workers=0)
    with pytest.raises(ValueError, match="num_gpus_per_worker must be a finite number >= 0, got -1"):
        RayExecutor(num_gpus_per_worker=-1)
    with pytest.raises(ValueError, match="num_cpus_per_worker must be a finite number > 0, got 0"):
        RayExecutor(num_cpus_per_worker=0)
    with pytest.raises(ValueError, match=r"init_kwargs must not set \['num_cpus'\]"):
        RayExecutor(init_kwargs={"num_cpus": 4})


def test_the_executor_module_does_not_import_ray():
    code = (
        "import sys, tlsteer.experiments.executor as e; "
        "assert e.InProcess().map(lambda c, x: c + x, [1, 2], setup=lambda: 1) == [2, 3]; "
        "print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- on a local two-worker Ray cluster ---------------------------------------------------------
@pytest.fixture(scope="module")
def ray_executor():
    """One local two-worker cluster for the module, shut down afterwards even if a test fails."""
    import ray

    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)
    assert not ray.is_initialized(), "a Ray session is already running in this process"
    executor = RayExecutor(
        num_workers=2, init_kwargs={"log_to_driver": False, "object_store_memory": 100 * 2**20}
    )
    try:
        yield executor
    finally:
        executor.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert not ray.is_initialized()


@needs_ray
def test_ray_equals_in_process_and_sets_up_once_per_worker(ray_executor, tmp_path, reference):
    setup = functools.partial(build_context, 0, str(tmp_path))
    many = CELLS * 2  # more items than workers: a worker runs several with one context
    assert_same_results(ray_executor.map(steer_cell, many, setup=setup), reference * 2)
    assert setups_run(tmp_path) == 2
    workers = ray_executor.map(worker_pid, list(range(8)), setup=setup)  # same setup: contexts kept
    assert setups_run(tmp_path) == 2
    assert len(set(workers)) == 2 and os.getpid() not in {pid for pid, _ in workers}


@needs_ray
def test_ray_error_names_the_item(ray_executor, tmp_path, reference):
    setup = functools.partial(build_context, 0, str(tmp_path))
    with pytest.raises(
        WorkerError,
        match=r"(?s)item 2 of 4 \(SteerCell\(.*'blocks\.9\.hook_resid_post'\)\) failed on "
        r"ray worker \d \(pid \d+\): KeyError: .*worker traceback:.*Traceback",
    ) as err:
        ray_executor.map(steer_cell, [CELLS[0], CELLS[1], BAD, CELLS[2]], setup=setup)
    assert err.value.index == 2 and err.value.cause_type == "KeyError"
    assert "blocks.9.hook_resid_post" in err.value.item
    # the workers survive a failing item
    assert_same_results(ray_executor.map(steer_cell, CELLS[:2], setup=setup), reference[:2])


@needs_ray
def test_ray_setup_error_is_named(ray_executor):
    with pytest.raises(
        WorkerError,
        match=r"setup .*failing_setup.* failed on ray worker \d \(pid \d+\): OSError: weights not found",
    ):
        ray_executor.map(steer_cell, CELLS, setup=failing_setup)


@needs_ray
def test_a_cluster_too_small_is_refused_and_a_running_session_is_left_running(ray_executor, tmp_path):
    import ray

    ray_executor.map(worker_pid, [0], setup=functools.partial(build_context, 0, str(tmp_path)))  # cluster up
    with (
        RayExecutor(num_workers=2, num_gpus_per_worker=1) as executor,
        pytest.raises(ValueError, match=r"needs 2 GPUs but the cluster has 0"),
    ):
        executor.map(worker_pid, [0], setup=failing_setup)
    assert ray.is_initialized()  # that executor did not start the session, so it did not end it


@needs_ray
def test_a_class_set_comparison_on_ray_equals_the_one_in_process(ray_executor):
    """The comparison's cells (generation, judge, perplexity) spread over two Ray workers: the same
    result as in process, cell for cell."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    from tlsteer.eval.judge import HashingEmbedder
    from tlsteer.experiments import ComparisonConfig, feature_vs_caa

    model = tiny_model("llama")
    hook = "blocks.1.hook_resid_post"
    sae = StandardSAE(
        StandardSAEConfig(d_in=model.cfg.d_model, d_sae=24, metadata=SAEMetadata(hook_name=hook))
    )
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(24, model.cfg.d_model, generator=torch.Generator().manual_seed(0)) / 4)
        sae.W_enc.copy_(sae.W_dec.T.clone())
    ds = toy_class_dataset()
    config = ComparisonConfig(
        methods=["caa", "feature_full", "random", "prompting"],
        budgets=[0.3],
        n_prompts=4,
        targets=["calm", "loud"],
        max_new_tokens=4,
        n_resamples=200,
        n_random=2,
        n_calibration_prompts=3,
    )
    kwargs = {
        "instructions": {"calm": "Be calm.", "loud": "Be loud."},
        "prompts": ["Say something.", "Tell a story.", "Hello?", "What now?"],
        "calibration_prompts": ["Hi.", "Go on.", "Why?"],
        "neutral": ["Water boils at 100 degrees.", "The Nile flows north."],
        "embedder": HashingEmbedder(),
    }
    here = feature_vs_caa(model, sae, ds, config, **kwargs)
    spread = feature_vs_caa(
        model,
        sae,
        ds,
        config,
        executor=ray_executor,
        model_loader=functools.partial(tiny_model, "llama"),
        **kwargs,
    )
    assert here.units == spread.units and len(here.units) == 8
    assert set(here.cells) == set(spread.cells)
    for key, cell in here.cells.items():
        assert spread.cells[key] == cell, key
    assert here.examples == spread.examples
    with pytest.raises(ValueError, match="pass model_loader="):
        feature_vs_caa(model, sae, ds, config, executor=ray_executor, **kwargs)
