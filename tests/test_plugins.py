"""The plugin host: built-ins registered, fixture-registered plugins seen and used, env-var filtering, contracts."""

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import negation_plugins as npl
from negation_plugins import hookspecs, plugins
from negation_plugins.cli import cli
from negation_plugins.data.negators import TemplateNegator
from negation_plugins.factory import Backend, ClipBundle

ROOT = Path(__file__).resolve().parents[1]


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


class OverridingPlugin:
    @npl.hookimpl
    def register_backends(self, register):
        register(type("OpenClipOverride", (EchoBackend,), {"name": "open_clip"})())


def test_builtins_listed_in_load_order_and_a_later_plugin_overrides(register_plugin):
    builtin = [r.plugin for r in plugins.registered("backends")]
    assert builtin == [p for p in plugins.DEFAULT_PLUGINS if p.startswith("negation_plugins.backends.")]
    register_plugin(OverridingPlugin(), "overriding-plugin")
    rows = {r.name: r for r in plugins.registered("backends")}
    assert rows["open_clip"].plugin == "overriding-plugin" and isinstance(rows["open_clip"].obj, EchoBackend)


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
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    if env_value is not None:
        env["NEGATION_PLUGINS"] = env_value
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def test_entry_point_plugin_loads_and_env_var_filters(tmp_path):
    site = _entry_point_dist(tmp_path)
    assert "'thirdparty'" in _plugins_in_subprocess(site, None)
    assert "'thirdparty'" in _plugins_in_subprocess(site, "thirdparty")
    assert "'thirdparty'" not in _plugins_in_subprocess(site, "")
    assert "'thirdparty'" not in _plugins_in_subprocess(site, "something-else")


def test_tests_see_only_builtin_plugins():
    """conftest sets NEGATION_PLUGINS="", so an installed third-party plugin cannot change any test's result."""
    loaded = {r.plugin for kind in plugins.KINDS for r in plugins.registered(kind)}
    assert loaded <= set(plugins.DEFAULT_PLUGINS), loaded - set(plugins.DEFAULT_PLUGINS)


def test_llm_negator_registers_itself_and_negators_do_not_import_it():
    rows = {r.name: r.plugin for r in plugins.registered("negators")}
    assert rows == {"template": "negation_plugins.data.negators", "llm": "negation_plugins.data.llm"}
    code = "import sys, negation_plugins.data.negators; print('negation_plugins.data.llm' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("kind", plugins.KINDS)
def test_each_hookspec_documents_its_contract(kind):
    contract = plugins.CONTRACTS[kind]
    doc = " ".join(inspect.getdoc(getattr(hookspecs, f"register_{kind}")).split())
    assert f"Registers {'classes' if contract.registers == 'class' else 'instances'}" in doc
    for attribute in ("name", *contract.methods, *contract.attributes):
        assert f"``{attribute}" in doc, (kind, attribute)


def test_builtins_keep_their_contracts():
    for row in plugins.registered("integrations"):
        assert isinstance(row.obj, npl.Integration), row
    for row in plugins.registered("negators"):
        assert isinstance(row.obj, type), row


class NoApply(npl.Integration):
    name = "no-apply"

    apply = None


@pytest.mark.parametrize(
    "hook, thing, needles",
    [
        (
            "register_backends",
            EchoBackend,
            ["'broken'", "EchoBackend", "backend", "instances", "register(EchoBackend())"],
        ),
        ("register_negators", TemplateNegator(), ["'broken'", "TemplateNegator", "negator", "classes"]),
        ("register_integrations", NoApply(), ["'broken'", "integration 'no-apply'", "without apply"]),
        ("register_benchmarks", object(), ["'broken'", "benchmark without a 'name'"]),
    ],
)
def test_contract_breach_is_one_clear_error(register_plugin, hook, thing, needles):
    kind = hook.removeprefix("register_")

    class Broken:
        pass

    setattr(Broken, hook, staticmethod(npl.hookimpl(specname=hook)(lambda register: register(thing))))
    register_plugin(Broken(), "broken")
    with pytest.raises(plugins.PluginError) as error:
        plugins.registered(kind)
    for needle in needles:
        assert needle in str(error.value), (needle, str(error.value))
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 1 and "'broken'" in result.output and "Traceback" not in result.output


class Target:
    """A downstream object no built-in integration knows."""


class TargetIntegration(npl.Integration):
    name = "target-test"

    def matches(self, target):
        return isinstance(target, Target)

    def apply(self, target, source, **options):
        target.encoder = (source, options)
        return target


class TargetPlugin:
    @npl.hookimpl
    def register_integrations(self, register):
        register(TargetIntegration())


def test_apply_reaches_a_registered_integration(register_plugin):
    with pytest.raises(TypeError, match="no integration handles a .*Target"):
        npl.apply(Target(), "some-clip")
    register_plugin(TargetPlugin(), "target-plugin")
    target = Target()
    assert npl.apply(target, "some-clip", strength=2) is target
    assert target.encoder == ("some-clip", {"strength": 2})
