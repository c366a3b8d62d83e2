"""Rebuilding a tf_keras model with some layers replaced by chains of stock layers (:func:`rebuild_with`).

The new model is built from ``model.get_config()`` with each replaced layer's entry swapped for its chain
(Sequential and Functional configs, nested models included), then given the original weights and the
chains' weights; the caller's model is never modified. Layers are addressed by their qualified name
(:func:`walk_layers`): ``conv3`` at the top level, ``inner/conv3`` inside a nested model ``inner``.
"""

from __future__ import annotations

import copy
from typing import Any, Iterator, Mapping

from edgelr.errors import FactorizeError
from edgelr.rewrite.registry import Rewrite

_MODEL_CLASSES = {"Functional", "Sequential", "Model"}


def is_config_model(layer: Any) -> bool:
    """True for a Functional or Sequential model (one with a config to rebuild from)."""
    return type(layer).__name__ in {"Functional", "Sequential"}


def walk_layers(model: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(qualified name, layer)`` of every non-model layer, descending into nested Functional/Sequential models."""
    for layer in model.layers:
        path = prefix + layer.name
        if is_config_model(layer):
            yield from walk_layers(layer, path + "/")
        else:
            yield path, layer


def check_model(model: Any) -> None:
    """Raise :class:`FactorizeError` unless ``model`` is a built Sequential or Functional model."""
    if not is_config_model(model):
        raise FactorizeError(
            f"model: got a {type(model).__name__}; expected a tf_keras Sequential or Functional model "
            f"(subclassed models have no config to rebuild from: rebuild it with the functional API)")
    if not model.built or not model.inputs:
        raise FactorizeError(f"model '{model.name}' is not built; give it an Input or call model.build(shape)")


def _serialize(layer: Any) -> dict[str, Any]:
    from edgelr.tfcompat import keras2

    return dict(keras2().layers.serialize(layer))


def _rewrite_sequential(config: dict[str, Any], rewrites: Mapping[str, Rewrite], prefix: str,
                        nested: dict[str, Any]) -> dict[str, Any]:
    new_layers = []
    for entry in config["layers"]:
        name = entry["config"].get("name")
        path = prefix + str(name)
        if entry["class_name"] in _MODEL_CLASSES and path in nested:
            entry = dict(entry, config=_rewrite_config(nested[path], entry["config"], rewrites, path + "/", nested))
            new_layers.append(entry)
        elif path in rewrites:
            for j, new in enumerate(rewrites[path].chain):
                item = _serialize(new.layer)
                if j == 0 and "batch_input_shape" in entry["config"]:
                    item["config"]["batch_input_shape"] = entry["config"]["batch_input_shape"]
                new_layers.append(item)
        else:
            new_layers.append(entry)
    return dict(config, layers=new_layers)


def _rewrite_functional(config: dict[str, Any], rewrites: Mapping[str, Rewrite], prefix: str,
                        nested: dict[str, Any]) -> dict[str, Any]:
    renamed: dict[str, str] = {}
    new_layers = []
    for entry in config["layers"]:
        path = prefix + entry["name"]
        if entry["class_name"] in _MODEL_CLASSES and path in nested:
            new_layers.append(dict(entry, config=_rewrite_config(nested[path], entry["config"], rewrites,
                                                                 path + "/", nested)))
            continue
        if path not in rewrites:
            new_layers.append(entry)
            continue
        chain = rewrites[path].chain
        nodes = entry["inbound_nodes"]
        if any(len(node) > 1 for node in nodes) and not any(n.extra_inputs for n in chain):
            raise FactorizeError(f"layer '{path}' is called with several inputs; it cannot be replaced by a "
                                 f"chain of layers. Leave it out with skip=['{entry['name']}']")
        previous = None
        for j, new in enumerate(chain):
            item = _serialize(new.layer)
            item["name"] = new.layer.name
            inbound = []
            for k, node in enumerate(nodes):
                head = [node[0]] if previous is None else [[previous, k, 0, {}]]
                inbound.append(head + (list(node[1:]) if new.extra_inputs else []))
            item["inbound_nodes"] = inbound
            new_layers.append(item)
            previous = new.layer.name
        renamed[entry["name"]] = chain[-1].layer.name

    def fix(ref: Any) -> Any:
        if isinstance(ref, list) and ref and isinstance(ref[0], str) and ref[0] in renamed:
            return [renamed[ref[0]]] + list(ref[1:])
        if isinstance(ref, list):
            return [fix(r) for r in ref]
        return ref

    for item in new_layers:
        if "inbound_nodes" in item:
            item["inbound_nodes"] = fix(item["inbound_nodes"])
    return dict(config, layers=new_layers, output_layers=fix(config["output_layers"]))


def _rewrite_config(model: Any, config: dict[str, Any], rewrites: Mapping[str, Rewrite], prefix: str,
                    nested: dict[str, Any]) -> dict[str, Any]:
    if type(model).__name__ == "Sequential":
        return _rewrite_sequential(config, rewrites, prefix, nested)
    return _rewrite_functional(config, rewrites, prefix, nested)


def _nested_models(model: Any, prefix: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    for layer in model.layers:
        if is_config_model(layer):
            found[prefix + layer.name] = layer
            found.update(_nested_models(layer, prefix + layer.name + "/"))
    return found


def _custom_objects(model: Any) -> dict[str, Any]:
    objects: dict[str, Any] = {}

    def add(layer: Any) -> None:
        objects[type(layer).__name__] = type(layer)
        for attr in ("layer", "cell", "forward_layer", "backward_layer"):
            inner = getattr(layer, attr, None)
            if inner is not None and hasattr(inner, "get_config"):
                add(inner)
        for sub in getattr(layer, "layers", []) or []:
            add(sub)

    add(model)
    return objects


def _set_weights(layer: Any, weights: list[Any], path: str) -> None:
    try:
        layer.set_weights(weights)
    except ValueError as exc:
        raise FactorizeError(f"layer '{path}': weights do not fit the rebuilt layer ({exc})") from None


def rebuild_with(model: Any, rewrites: Mapping[str, Rewrite]) -> Any:
    """A new model: ``model``'s config with each ``rewrites[path]`` chain in place of that layer.

    Parameters
    ----------
    model : tf_keras.Model
        Sequential or Functional (read only).
    rewrites : mapping of qualified layer name -> Rewrite

    Returns
    -------
    tf_keras.Model
        Same class as ``model``, weights copied (unchanged layers) or set from the chains.
    """
    from edgelr.tfcompat import keras2

    keras = keras2()
    check_model(model)
    nested = _nested_models(model)
    config = _rewrite_config(model, copy.deepcopy(model.get_config()), rewrites, "", nested)
    with keras.utils.custom_object_scope(_custom_objects(model)):
        new_model = type(model).from_config(config)

    originals = dict(walk_layers(model))
    chain_weights = {}
    for path, rw in rewrites.items():
        if path not in originals:
            raise FactorizeError(f"rewrites: '{path}' is not a layer of model '{model.name}'")
        prefix = path[: len(path) - len(originals[path].name)]
        for new in rw.chain:
            chain_weights[prefix + new.layer.name] = new.weights
    for path, layer in walk_layers(new_model):
        if path in chain_weights:
            _set_weights(layer, chain_weights[path], path)
        elif path in originals and originals[path].weights:
            _set_weights(layer, originals[path].get_weights(), path)
    return new_model
