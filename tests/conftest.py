"""Fixtures shared by the test modules (the plain helper functions they share are in helpers.py)."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one torch thread (and CI's two cores are shared with subprocesses)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def served_models(tmp_path_factory):
    """Tiny model folders of every kind `masklm serve` answers with (helpers.make_served_models)."""
    from helpers import make_served_models

    return make_served_models(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="session")
def server(served_models, tmp_path_factory):
    """One real `masklm serve` process with every tiny model (fill-mask weights in float32, so that batched
    answers can be compared with single ones exactly); stopped at the end of the session."""
    from helpers import ServerProcess

    specs = [served_models["tiny"], *(f"{n}={served_models[n]}" for n in ("cls", "ner", "qa", "mc"))]
    log = tmp_path_factory.mktemp("server") / "serve.log"
    srv = ServerProcess(
        [*specs, "--dtype", "float32", "--threads", "1", "--max-inputs", "8", "--max-chars", "400"], log
    )
    yield srv
    srv.stop()
