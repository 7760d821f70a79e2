"""Shared test setup: no test writes to the real cache (~/.cache/vlpretrain)."""
import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def vlpretrain_cache(tmp_path_factory):
  """$VLPRETRAIN_CACHE points to one temporary directory for the whole session."""
  path = str(tmp_path_factory.mktemp("vlpretrain_cache"))
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("VLPRETRAIN_CACHE", path)
    yield path


@pytest.fixture
def small_shapes():
  """Small shapes splits (200 train / 100 validation scenes) via gin; cleared after."""
  import gin  # pylint: disable=g-import-not-at-top
  gin.parse_config(["shapes_settings.num_train = 200",
                    "shapes_settings.num_validation = 100"])
  yield
  gin.clear_config()


# ---------------------------------------------------------------- trainer tests
def pytest_configure(config):
  config.addinivalue_line("markers", "slow: takes more than about a minute.")


@pytest.fixture
def clean_gin():
  """An empty, unlocked gin config before and after the test."""
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config(clear_constants=True)
  yield
  gin.clear_config(clear_constants=True)


@pytest.fixture
def toy_task():
  """Registers the toy image+text seqio Task of tests/toy_model.py; returns its name."""
  import toy_model  # pylint: disable=g-import-not-at-top
  return toy_model.register_toy_task()
