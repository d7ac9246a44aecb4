"""Fine-tuning: the weights of a pretrained model loaded into the run's network, its encoder frozen if asked.
"""


from ..errors import UserError
from ..model.saving import load_model


def load_pretrained(model, path, freeze_encoder=False):
    """Copy the weights of the model saved at ``path`` into ``model``; optionally freeze its encoder.

    Parameters
    ----------
    model : keras.Model
        Built by :func:`lib.model.networks.build_model`, not yet compiled.
    path : str or None
        From :func:`lib.run.folders.resolve_pretrained`; None leaves ``model`` as it is.
    freeze_encoder : bool
        Make the encoder (:func:`lib.model.networks.encoder_layers`) untrainable; its
        batch normalisation then uses the pretrained statistics.

    Returns
    -------
    keras.Model
        ``model`` itself.

    Raises
    ------
    UserError
        When ``path`` is not a readable model or its architecture differs.
    """
    if path is None:
        return model
    from ..model.networks import encoder_layers

    try:
        if path.endswith(".zip"):
            from ..model.saving import load_package_model

            source = load_package_model(path)
        else:
            source = load_model(path)
    except Exception as exc:
        raise UserError(f"train.pretrained: {path} could not be read as a Keras model ({exc})") from None
    mismatch = _architecture_mismatch(source, model)
    if mismatch:
        raise UserError(f"train.pretrained: {path} holds another architecture than this run's model ({mismatch}); "
                        "use the model options and image channels of the run it comes from")
    model.set_weights(source.get_weights())
    frozen = encoder_layers(model) if freeze_encoder else []
    for layer in frozen:
        layer.trainable = False
    print(f"Weights from {path}" + (f", encoder frozen ({len(frozen)} layers)" if frozen else ""))
    return model


def _architecture_mismatch(source, model):
    """A short description of the first difference between two models' weights, or ''."""
    if source.name != model.name:
        return f"a {source.name}, not a {model.name}"
    if len(source.outputs) != len(model.outputs):
        return f"outputs: {len(source.outputs)} there, {len(model.outputs)} here; see model.deep_supervision"
    if len(source.weights) != len(model.weights):
        return f"{len(source.weights)} weight arrays, not {len(model.weights)}"
    for theirs, ours in zip(source.weights, model.weights):
        if tuple(theirs.shape) != tuple(ours.shape):
            return f"weight {ours.path} of shape {tuple(theirs.shape)}, not {tuple(ours.shape)}"
    return ""
