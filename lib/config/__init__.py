"""The option schema: every option of a run, its default, help, allowed values and checks.

A configuration has six sections (``data``, ``augment``, ``model``, ``train``, ``inference``,
``post``), and an entry script may add its own (:func:`config_class`). Values come, in increasing
priority, from the dataclass defaults, the template's ``CONFIG`` block, a ``--config FILE.json``
and ``--set section.key=value`` options. Every value is type-checked and range-checked; a bad one
raises :class:`lib.errors.UserError` naming the option.

Modules: ``choices`` (allowed names, the networks ``model.name`` may name), ``values`` (type and
range checks), ``sections`` (the dataclasses), ``load`` (from dicts, JSON and ``--set``). Their
public names are imported here: use ``from lib import config`` and ``config.Config``.

The bottom of the library with :mod:`lib.errors`: it imports nothing else of lib, and nothing
heavy (no Keras, no NumPy), so that options are checked at once.
"""

from .choices import (  # noqa: F401
    ACTIVATIONS,
    AUGMENT_PRESETS,
    BINARY_LOSSES,
    CATEGORICAL_LOSSES,
    FIXED_ON_RESUME,
    LOSS_NAMES,
    MAX_CLASSES,
    MODELS,
    MONITORS,
    TARGETS,
    NORMALIZATIONS,
    OPTIMIZERS,
    PRECISIONS,
    PROB_DTYPES,
    SCHEDULES,
    STEM_HEADS,
    UPSAMPLINGS,
    VAL_SPLITS,
    WINDOWS,
    fixed_on_resume,
    loss_for,
    uses_weight_maps,
)
from .load import (  # noqa: F401
    all_keys,
    apply_overrides,
    apply_preset,
    config_class,
    from_dict,
    load_json,
    section_names,
    set_option,
)
from .sections import (  # noqa: F401
    SECTIONS,
    AugmentConfig,
    Config,
    DataConfig,
    InferenceConfig,
    ModelConfig,
    PostConfig,
    TrainConfig,
)
from .values import (  # noqa: F401
    check_choice,
    check_range,
    option,
    parse_value,
)
