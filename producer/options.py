"""How the commands' options are built and shown.

Every deployment setting (:class:`workers.settings.Settings`) is a flag of the same name on every
command that takes settings, and its environment variable (``--broker-url`` / ``BROKER_URL``). There
are about forty of them and they are the same on every command, so a command's ``--help`` shows its
own options first, then only the settings most runs touch; ``--help-all`` lists every one.
Every option that reads an environment variable says which.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from workers.settings import Settings, public_fields

# The settings a command's short help shows (the rest: --help-all).
COMMON_SETTINGS = ("broker_url", "storage_url", "weights", "device")


class SettingOption(click.Option):
    """A flag generated from a Settings field: listed under "Deployment settings"."""

    def __init__(self, *args: Any, common: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.common = common


def _show_everything(ctx: click.Context, _: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        ctx.meta["help_all"] = True
        click.echo(ctx.get_help(), color=ctx.color)
        ctx.exit()


class Command(click.Command):
    """A command whose help lists its own options, then the common deployment settings; ``--help-all``
    adds the rest. Options with an environment variable show it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, click.Option) and param.envvar:
                param.show_envvar = True
        if any(isinstance(p, SettingOption) for p in self.params):
            self.params.append(
                click.Option(
                    ["--help-all"],
                    is_flag=True,
                    expose_value=False,
                    is_eager=True,
                    callback=_show_everything,
                    help="Show every deployment setting too.",
                )
            )

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        show_all = ctx.meta.get("help_all", False)
        own, common, rest = [], [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
            if record is None:
                continue
            if not isinstance(param, SettingOption):
                own.append(record)
            elif param.common:
                common.append(record)
            else:
                rest.append(record)
        if own:
            with formatter.section("Options"):
                formatter.write_dl(own)
        if common or rest:
            title = "Deployment settings (the same on every command)"
            with formatter.section(title):
                formatter.write_dl(common + rest if show_all else common)
                if rest and not show_all:
                    formatter.write_paragraph()
                    formatter.write_text(
                        f"... and {len(rest)} more (S3, Hub, precision, batching, limits, recovery): --help-all"
                    )


def settings_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add one flag per public setting; the command receives a built ``settings`` argument."""
    for f in reversed(public_fields()):
        kind = {bool: click.BOOL, int: click.INT, float: click.FLOAT}.get(type(f.default), click.STRING)
        command = click.option(
            "--" + f.name.replace("_", "-"),
            f.name,
            cls=SettingOption,
            common=f.name in COMMON_SETTINGS,
            type=kind,
            default=None,
            envvar=f.name.upper(),
            help=f"{f.metadata['help']} [default: {f.default!r}]",
        )(command)

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        overrides = {f.name: kwargs.pop(f.name) for f in public_fields()}
        kwargs["settings"] = Settings.from_env(**{k: v for k, v in overrides.items() if v is not None})
        return command(**kwargs)

    return wrapper


class Group(click.Group):
    """The ``producer`` group: its commands are :class:`Command`."""

    command_class = Command
