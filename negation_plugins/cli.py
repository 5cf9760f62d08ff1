"""The ``negclip`` command line. Subcommands come from plugins through the ``register_commands`` hook."""

from __future__ import annotations

import json

import click

from . import plugins


@click.group()
@click.version_option(package_name="negation-plugins")
def cli():
    """negation-plugins: teach CLIP "no" and plug it into diffusers, open_clip and CLIPSeg."""


@cli.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_command(as_json):
    """List every registered extension, by kind, with the plugin it came from."""
    try:
        rows = [
            {"kind": r.kind, "name": r.name, "plugin": r.plugin, "description": getattr(r.obj, "description", "")}
            for kind in plugins.KINDS
            for r in plugins.registered(kind)
        ]
    except plugins.PluginError as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for kind in plugins.KINDS:
        click.echo(f"{kind}:")
        for row in (r for r in rows if r["kind"] == kind):
            line = f"  {row['name']:<20} from {row['plugin']}"
            click.echo(line + (f"  - {row['description']}" if row["description"] else ""))


plugins.load_plugins()
plugins.pm.hook.register_commands(cli=cli)
