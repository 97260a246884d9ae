"""The paper's experiments (Eslami et al., 2016, section 3.1), each one function and one command.

* :func:`generalisation` (``air experiment generalisation``): train AIR and DAIR on scenes with some digit
  counts and measure count accuracy on scenes with a count never seen in training: *extrapolation* (train on
  0, 1, 2 digits, test on 3) and *interpolation* (train on 0, 1, 3, test on 2).
* :func:`downstream` (``air experiment downstream``): the learned representation as features for two
  supervised tasks, the sum of the digits in a scene and whether they are in ascending order from left to
  right: a small MLP on AIR's latents (per object: presence, z_where, z_what, ordered by the window's x)
  against a convolutional network on the raw pixels, both given the same labelled scenes, for several label
  budgets.

Both write ``NAME.json`` (everything measured and the exact configuration), ``NAME.md`` (the table) and
``NAME.png`` and ``NAME.svg`` (the figure) into an output folder, and keep their training runs under
``OUT/NAME_runs/`` (a run directory that already holds a finished run with the same configuration is reused, not
trained again).

Data settings, both stated in the JSON:

* Three unscaled 28x28 digits do not fit on a 50x50 canvas with their ink apart: only about 0.4% of random
  placements work (the generator refuses below 1%). The paper's two settings therefore use **24x24 digits** and
  **N = 3** steps: *extrapolation* (train 0, 1, 2; test 3: to count 3 the model must use every step it has) and
  *interpolation* (train 0, 1, 3; test 2). *extrapolation_n4* goes one step further (train 0, 1, 2; test 3 and
  4) with **20x20 digits** (four of them fit apart) and **N = 4**, so that a model can also answer too many
  (``SETTING_SCENES``; ``max_steps`` and ``digit_size`` override them). Ink never overlaps, in training and test
  scenes alike.
* Three models: the paper's AIR and DAIR, and DAIR without memory between steps (``ModelConfig.dair_memory``,
  ours): each step's LSTM starts from its initial state with no previous latents, so every step is the same
  function of the residual image and the step index cannot tell it to go on or stop.
* The downstream experiment uses the paper's data as ``air train`` does (28x28 digits, 0-2 per scene).
"""

from .downstream import (
    TASKS,
    ClassifierConfig,
    DownstreamConfig,
    LatentMLP,
    PixelCNN,
    ascending_labels,
    digit_order,
    downstream,
    downstream_figure,
    downstream_table,
    latent_features,
    sum_labels,
    task_scenes,
    train_classifier,
    write_downstream,
)
from .generalisation import (
    LABELS,
    MODELS,
    PAPER_GENERALISATION,
    SETTING_SCENES,
    SETTINGS,
    GeneralisationConfig,
    generalisation,
    generalisation_figure,
    generalisation_table,
    unseen_count_scenes,
    write_generalisation,
)

__all__ = ["LABELS", "MODELS", "PAPER_GENERALISATION", "SETTINGS", "SETTING_SCENES", "TASKS", "ClassifierConfig",
           "DownstreamConfig", "GeneralisationConfig", "LatentMLP", "PixelCNN", "ascending_labels", "digit_order",
           "downstream", "downstream_figure", "downstream_table", "generalisation", "generalisation_figure",
           "generalisation_table", "latent_features", "sum_labels", "task_scenes", "train_classifier",
           "unseen_count_scenes", "write_downstream", "write_generalisation"]
