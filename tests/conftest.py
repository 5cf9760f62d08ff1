"""Session-wide test setup: offline hub, small thread count, built-in plugins only, plugin fixtures."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The trainer's image-feature store: one per test session (subprocesses inherit it), never the user's cache.
os.environ["NEGCLIP_FEATURE_STORE"] = tempfile.mkdtemp(prefix="negclip-feature-store-")
# Installed third-party (entry-point) plugins must not change test results; a test that wants a plugin registers it
# (``register_plugin``) or, for entry-point loading itself, runs a subprocess with its own environment.
os.environ["NEGATION_PLUGINS"] = ""

import pytest  # noqa: E402
import torch  # noqa: E402

pytest_plugins = ["tests.world_fixtures"]

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def register_plugin():
    """Register plugin objects/modules for one test and unregister them afterwards."""
    from negation_plugins.plugins import pm

    names = []

    def _register(plugin, name):
        pm.register(plugin, name=name)
        names.append(name)
        return plugin

    yield _register
    for name in names:
        pm.unregister(name=name)
