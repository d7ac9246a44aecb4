"""Training: fit a network with checkpoints, resume, time limits, schedules and TensorBoard.

Modules:

- ``loop``: ``train`` (compile, fit, history, checkpoints, early stopping, time limit, resume)
- ``schedules``: optimisers and learning-rate schedules (a pure function of the epoch and history)
- ``finetune``: the pretrained model a run starts from, and its weights loaded
- ``determinism``: deterministic kernels (Keras-free at import)
- ``tensorboard``: TensorBoard event files on every backend

May import: :mod:`lib.errors`, :mod:`lib.config`, :mod:`lib.data`, :mod:`lib.model`. Takes its own
section of the configuration (:class:`lib.config.TrainConfig`).
"""
