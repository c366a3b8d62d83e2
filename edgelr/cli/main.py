"""The ``edgelr`` command group.

Each sub-command lives in its own module under ``edgelr.cli`` and is imported only when it runs, so
``edgelr --help`` and ``edgelr bench`` never import TensorFlow.

Exit codes: 0 ok, 1 error, 2 usage error, 3 regression found (``edgelr regress``).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from edgelr.errors import EdgelrError

# name -> (module, attribute, one-line help shown by `edgelr --help` without importing the module)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("edgelr.cli.demo", "demo", "Train, compress, benchmark and report a built-in example."),
    "inspect": ("edgelr.cli.inspect", "inspect", "Show a model's layers, parameters, MACs and low-rank options."),
    "compress": ("edgelr.cli.compress", "compress", "Factorize, fine-tune, quantize and convert a model to TFLite."),
    "bench": ("edgelr.cli.bench", "bench", "Benchmark .tflite models on a device (latency, memory, energy)."),
    "profile": ("edgelr.cli.profile", "profile", "Measure per-layer latency tables (layer vs low-rank chains) on a device."),
    "devices": ("edgelr.cli.devices", "devices", "List and check the devices of the inventory."),
    "regress": ("edgelr.cli.regress", "regress", "Run a regression suite on devices and compare with a baseline."),
    "report": ("edgelr.cli.report", "report", "Render the results history as Markdown/HTML with plots."),
    "history": ("edgelr.cli.history", "history", "Copy a results history between SQLite and PostgreSQL; show one."),
    "targets": ("edgelr.cli.targets", "targets", "List the target device profiles."),
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, _, short) in COMMANDS.items()])


EPILOG = """\b
Examples:
  edgelr demo
  edgelr inspect model.keras
  edgelr compress model.keras --data fashion-mnist --target rpi4 --out out/
  edgelr bench out/model.tflite out/baseline.tflite --device pi4
  edgelr targets --json

\b
Exit codes: 0 ok, 1 error, 2 usage, 3 regression found.
"""


@click.group(cls=LazyGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="edgelr")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """edgelr: low-rank compression and on-device benchmarking of Keras models for edge devices.

    Data goes to stdout, progress and messages to stderr. Use --json where scripts read the output.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _sigterm_is_ctrl_c() -> None:
    """SIGTERM (a scheduler or ``kill`` stopping the job) behaves like Ctrl-C for every command: measured rows
    are kept, device programs stopped, devices and lab places released, exit 130."""
    import signal
    import threading

    def on_term(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)


def main(argv: list[str] | None = None) -> Any:
    """Console entry point: turn edgelr errors into one line on stderr and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    _sigterm_is_ctrl_c()
    try:
        return cli.main(args=args, prog_name="edgelr", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("edgelr: interrupted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EdgelrError as exc:
        if debug:
            raise
        click.echo(f"edgelr: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - last resort: never a bare traceback without --debug
        if debug:
            raise
        click.echo(f"edgelr: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
                   err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
