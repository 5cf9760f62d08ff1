"""The plugin host: built-ins registered, fixture-registered plugins seen and used, env-var filtering."""

import json
import subprocess
import sys
import textwrap

from click.testing import CliRunner

import negation_plugins as npl
from negation_plugins import plugins
from negation_plugins.cli import cli
from negation_plugins.factory import Backend, ClipBundle


class EchoBackend(Backend):
    name = "echo-test"
    description = "test backend"

    def can_load(self, spec):
        return spec.startswith("echo:")

    def load(self, spec, *, device="cpu", **options):
        return ClipBundle(model=None, tokenizer=None, preprocess=None, spec=spec, info={"backend": self.name})


class EchoPlugin:
    @npl.hookimpl
    def register_backends(self, register):
        register(EchoBackend())


def test_builtin_backend_is_listed():
    rows = plugins.registered("backends")
    assert any(r.name == "open_clip" and r.plugin == "negation_plugins.backends.open_clip_backend" for r in rows)


def test_fixture_registered_plugin_is_listed_and_used(register_plugin):
    register_plugin(EchoPlugin(), "echo-plugin")
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {"kind": "backends", "name": "echo-test", "plugin": "echo-plugin", "description": "test backend"} in rows
    bundle = npl.load_clip("echo:anything")
    assert bundle.info["backend"] == "echo-test" and bundle.spec == "echo:anything"


def test_plugin_gone_after_unregister():
    assert "echo-test" not in plugins.get("backends")


def test_unknown_spec_names_backends():
    try:
        npl.load_clip("definitely-not-a-model-spec")
    except ValueError as err:
        assert "open_clip" in str(err) and "definitely-not-a-model-spec" in str(err)
    else:
        raise AssertionError("expected ValueError")


def test_unknown_kind_and_name_are_clear_errors():
    for call, needle in (
        (lambda: plugins.registered("nope"), "kinds are"),
        (lambda: plugins.get_one("backends", "zzz"), "open_clip"),
    ):
        try:
            call()
        except (KeyError, ValueError) as err:
            assert needle in str(err)
        else:
            raise AssertionError("expected an error")


def _entry_point_dist(tmp_path):
    """A real installed distribution (via a .dist-info on sys.path) exposing an entry-point plugin."""
    pkg = tmp_path / "site"
    (pkg / "thirdparty_negclip").mkdir(parents=True)
    (pkg / "thirdparty_negclip" / "__init__.py").write_text(
        textwrap.dedent("""
        import negation_plugins as npl
        from negation_plugins.factory import Backend

        class ThirdParty(Backend):
            name = "third-party"
            def can_load(self, spec):
                return spec == "third:party"

        @npl.hookimpl
        def register_backends(register):
            register(ThirdParty())
    """)
    )
    info = pkg / "thirdparty_negclip-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-negclip\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[negation_plugins]\nthirdparty = thirdparty_negclip\n")
    return pkg


def _plugins_in_subprocess(site, env_value):
    code = "from negation_plugins import plugins; print([r.plugin for r in plugins.registered('backends')])"
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    if env_value is not None:
        env["NEGATION_PLUGINS"] = env_value
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def test_entry_point_plugin_loads_and_env_var_filters(tmp_path):
    site = _entry_point_dist(tmp_path)
    assert "'thirdparty'" in _plugins_in_subprocess(site, None)
    assert "'thirdparty'" in _plugins_in_subprocess(site, "thirdparty")
    assert "'thirdparty'" not in _plugins_in_subprocess(site, "")
    assert "'thirdparty'" not in _plugins_in_subprocess(site, "something-else")
