"""Shared fixtures of the embed package's tests (run by `cargo xtask python --test`)."""

import os
import pathlib
import time

import pytest

import embed

ROOT = pathlib.Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "testdata" / "fixtures"


def minilm_dir() -> str:
    """The real all-MiniLM-L6-v2 (`cargo xtask setup` links it); a missing model fails loudly."""
    d = pathlib.Path(os.environ.get("EMBED_MINILM_DIR", ROOT / ".models" / "all-MiniLM-L6-v2"))
    if not (d / "model.safetensors").is_file():
        raise RuntimeError(f"the real MiniLM is missing at {d}: run `cargo xtask setup` (or set EMBED_MINILM_DIR)")
    return str(d)


@pytest.fixture(scope="session")
def minilm() -> str:
    return minilm_dir()


@pytest.fixture(scope="session")
def fixtures() -> pathlib.Path:
    return FIXTURES


def wait_for_no_models(timeout: float = 1.0) -> float:
    """Seconds until no model is live in the process; fails after `timeout`."""
    t0 = time.perf_counter()
    while embed.memory.live_models() > 0:
        if time.perf_counter() - t0 > timeout:
            raise AssertionError(f"{embed.memory.live_models()} model(s) still live after {timeout} s")
        time.sleep(0.005)
    return time.perf_counter() - t0


@pytest.fixture(autouse=True)
def no_model_left_behind():
    """Every test starts and ends with no model loaded in the process."""
    assert embed.memory.live_models() == 0, "a model was live before the test started"
    yield
    wait_for_no_models(timeout=5.0)
