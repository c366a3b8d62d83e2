"""``edgelr inspect``: a model's format, inputs/outputs and per-layer table."""

from __future__ import annotations

import click

from edgelr.cli._common import echo_json, info, table


@click.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(exists=False))
@click.option("--custom-objects", type=click.Path(dir_okay=False), default=None,
              help="Python module whose CUSTOM_OBJECTS dict supplies custom layers (tf_keras versions).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect(model_path: str, custom_objects: str | None, as_json: bool) -> None:
    """Show MODEL's format, input/output shapes and a per-layer table: kind, output shape, parameters,
    MACs (multiply-accumulates per example) and which low-rank methods apply, with totals.

    MODEL is a .keras file (Keras 3 or tf_keras), an .h5 file or a SavedModel directory.

    \b
    Examples:
      edgelr inspect model.keras
      edgelr inspect saved_model_dir/ --json | jq .totals
    """
    from edgelr.inspect import inspect_model
    from edgelr.models.load import load_model_with_info

    info(f"loading {model_path} ...")
    model, load_info = load_model_with_info(model_path, custom_objects=custom_objects)
    report = inspect_model(model, load_info)
    if as_json:
        echo_json(report)
        return
    translated = ", translated to tf_keras" if report.get("translated") else ""
    click.echo(f"model:   {report['path']} ({report['format']}, Keras {report['keras_version']}{translated})")
    click.echo(f"inputs:  {_io(report['inputs'])}")
    click.echo(f"outputs: {_io(report['outputs'])}")
    click.echo()
    rows = [{**r, "methods": ",".join(r["methods"]) or "-"} for r in report["layers"]]
    click.echo(table(rows, ["layer", "kind", "output_shape", "params", "macs", "methods"]))
    t = report["totals"]
    click.echo()
    click.echo(f"total: {t['layers']} layers, {t['params']:,} parameters, {t['macs']:,} MACs per example; "
               f"{t['factorizable_layers']} factorizable layers hold {t['factorizable_params']:,} parameters "
               f"and {t['factorizable_macs']:,} MACs")


def _io(specs: list[dict]) -> str:
    return ", ".join(f"{s['name']} ({', '.join('None' if d is None else str(d) for d in s['shape'])}) {s['dtype']}"
                     for s in specs)
