"""``edgelr inspect``: a model's format, inputs/outputs, per-layer table, how low-rank each layer is, a verdict."""

from __future__ import annotations

import click

from edgelr.cli._common import echo_json, info, table


@click.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(exists=False))
@click.option("--custom-objects", type=click.Path(dir_okay=False), default=None,
              help="Python module whose CUSTOM_OBJECTS dict supplies custom layers (tf_keras versions).")
@click.option("--data", default=None, metavar="SPEC",
              help="Data (as compress takes it: digits, fashion-mnist, file.npz, module:function): ranks for the "
                   "layers' OUTPUT error on --samples training inputs instead of the weight error.")
@click.option("--samples", type=click.IntRange(min=1), default=256, show_default=True,
              help="Calibration inputs taken from the training split of --data.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect(model_path: str, custom_objects: str | None, data: str | None, samples: int, as_json: bool) -> None:
    """Show MODEL's format, input/output shapes and a per-layer table: kind, output shape, parameters,
    MACs (multiply-accumulates per example), which low-rank methods apply and how low-rank each layer is
    (the rank its best approximation needs for 1 % and 5 % relative error: output error on --data, weight
    error without), with totals and a verdict on what factorization could gain (edgelr/inspect.py states
    the rule: splitting every layer at 5 % output error (30 % weight error without --data) removing under
    20 % of the parameters and MACs is "little to gain").

    MODEL is a .keras file (Keras 3 or tf_keras), an .h5 file or a SavedModel directory.

    \b
    Examples:
      edgelr inspect model.keras
      edgelr inspect model.keras --data fashion-mnist
      edgelr inspect saved_model_dir/ --json | jq .verdict
    """
    from edgelr.inspect import inspect_model
    from edgelr.models.load import load_model_with_info

    info(f"loading {model_path} ...")
    model, load_info = load_model_with_info(model_path, custom_objects=custom_objects)
    calibration = None
    if data is not None:
        from edgelr.data import load_data

        calibration = load_data(data, model=model).x_train[:samples]
        info(f"data-aware ranks: input statistics of every layer on {len(calibration)} inputs of {data}")
    report = inspect_model(model, load_info, calibration=calibration, progress=not as_json)
    if as_json:
        echo_json(report)
        return
    translated = ", translated to tf_keras" if report.get("translated") else ""
    click.echo(f"model:   {report['path']} ({report['format']}, Keras {report['keras_version']}{translated})")
    click.echo(f"inputs:  {_io(report['inputs'])}")
    click.echo(f"outputs: {_io(report['outputs'])}")
    click.echo()
    rows = [{**r, "methods": ",".join(r["methods"]) or "-", "rank@1%": _rank(r, "rank_1pct"),
             "rank@5%": _rank(r, "rank_5pct")} for r in report["layers"]]
    click.echo(table(rows, ["layer", "kind", "output_shape", "params", "macs", "methods", "rank@1%", "rank@5%"]))
    t = report["totals"]
    click.echo()
    click.echo(f"total: {t['layers']} layers, {t['params']:,} parameters, {t['macs']:,} MACs per example; "
               f"{t['factorizable_layers']} factorizable layers hold {t['factorizable_params']:,} parameters "
               f"and {t['factorizable_macs']:,} MACs")
    click.echo(f"verdict: {report['verdict']['text']}")


def _rank(row: dict, key: str) -> str:
    """``12/64`` (rank needed / full rank; ``*`` marks an output-error rank), '-' for other layers."""
    if row.get(key) is None:
        return "-"
    return f"{row[key]}/{row['full_rank']}{'*' if row.get('error') == 'output' else ''}"


def _io(specs: list[dict]) -> str:
    return ", ".join(f"{s['name']} ({', '.join('None' if d is None else str(d) for d in s['shape'])}) {s['dtype']}"
                     for s in specs)
