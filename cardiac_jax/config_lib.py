"""The base configuration every run starts from, and the helpers of configs/.

Each file in ``configs/`` states one run: it starts from ``base_config()`` and
spells out what differs (data sizes, width, depth, batch size, epochs). Its
``get_config(arg)`` takes big_vision-style variants: ``configs/scale1.py:quick``
is the same run shrunk to seconds (``quick``). ``preset(name, arg)`` loads the
same file in a notebook or test, so there is one definition of each run.

Every field that can change the generated dataset lives under ``config.data`` so
that the dataset cache key can be derived from it alone. A new field goes into
``base_config`` (and, if it changes results, ``fingerprint.ADDED_FIELDS``).
"""
from __future__ import annotations

import importlib.util
import pathlib

import ml_collections
from ml_collections import config_dict

from cardiac_jax.errors import ConfigError

POPULATIONS = ("IPSC", "MES", "CMES", "PROG", "CM", "CF")
DAYS = ("day0", "day1", "day3", "day5", "day7", "day11", "day15")


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "base"
  config.seed = 0

  # ---------------------------------------------------------------- data
  data = config.data = ml_collections.ConfigDict()
  data.task = "snapshot"               # the builder (data.dataset.BUILDERS): snapshot | fate | clonal | regions
  data.source = "simulator"            # "simulator" | "h5ad"
  data.path = ""                       # .h5ad path when source == "h5ad"
  data.counts_layer = ""               # "" = counts in X, else layers[counts_layer]
  data.population_key = "type"
  data.time_key = "diffday"
  data.donor_key = "individual"        # "" (or absent from obs) = no donors
  data.classes = POPULATIONS           # order defines the label ids; () = all, by mean time
  data.drop_labels = ("UNK",)
  data.fate_classes = ("CM", "CF")     # the fate branch scored as a two-class accuracy
  data.time_order = ()                 # () = derived from the labels (day0 < day1 < ...)
  data.cache_dir = ""                  # "" = $CARDIAC_JAX_CACHE or ~/.cache/cardiac_jax

  data.simulator = ml_collections.ConfigDict()
  data.simulator.n_cells = 30_000
  data.simulator.n_genes = 2_000
  data.simulator.n_donors = 19
  data.simulator.seed = 0

  data.spatial = ml_collections.ConfigDict()
  data.spatial.enabled = True
  data.spatial.source = "simulator"    # "simulator" | "h5ad"
  data.spatial.path = ""
  data.spatial.n_spots = 6_000         # simulator only (approximate: hex grid)
  data.spatial.cells_per_spot = 8      # simulator only
  data.spatial.tile_size = 8           # spots per tile side; tiles are the unit of splitting
  data.spatial.buffer_spacings = 2.0   # val/test spots this close to another split: unused
  data.spatial.min_shared_genes = 200
  data.spatial.counts_layer = config_dict.placeholder(str)  # None = as data.counts_layer; "" = X
  data.spatial.seed = 0
  # Spatial regions (data.task = "regions", configs/spatial.py; cardiac_jax/data/regions.py):
  # spots of several sections, each labelled with its region; walks over the spot graph.
  data.spatial.section_key = "section"   # obs column telling the sections apart (Visium: library_id)
  data.spatial.region_key = "region"     # obs column of the region labels
  data.spatial.classes = ()              # region names in label order; () = every region, by name
  data.spatial.split = "tile"            # "tile" (tiles inside sections) | "section" (whole sections)
  data.spatial.val_sections = ()         # section ids; () = chosen by data.split.seed (regions.py)
  data.spatial.test_sections = ()
  data.spatial.walks_per_spot = 4        # training walks ending at each training spot
  data.spatial.predict_walks = 8         # walks per held-out spot, probabilities averaged
  data.spatial.restart = 0.0             # a walk's chance per step to return to its end spot
  data.spatial.distance_feature = False  # a step's distance to the end spot as its time feature
  data.spatial.n_sections = 5            # section simulator only
  data.spatial.spots_per_section = 3_000  # section simulator only (approximate: hex grid)

  data.preprocess = ml_collections.ConfigDict()
  data.preprocess.target_sum = 1e4
  data.preprocess.n_hvg = 2_000
  data.preprocess.n_pcs = 50
  data.preprocess.max_value = 10.0     # clip after scaling
  data.preprocess.pca_max_cells = 50_000  # PCA fitted on at most this many training cells
  data.preprocess.seed = 0

  data.split = ml_collections.ConfigDict()
  data.split.fractions = (0.65, 0.25, 0.10)   # train / validation / test
  data.split.group_by_donor = False
  data.split.seed = 0

  data.sequences = ml_collections.ConfigDict()
  data.sequences.length = 80
  data.sequences.per_population = 1_000       # temporal sequences per class (all splits)
  data.sequences.spatial_total = 500          # spatial sequences (all splits)
  data.sequences.k_neighbors = 10
  data.sequences.observed_fraction = 1.0      # < 1 hides the tail (early fate prediction)
  data.sequences.time_shuffle = False         # ablation: permute visible steps in time
  data.sequences.seed = 0

  # ---------------------------------------------------------------- model
  model = config.model = ml_collections.ConfigDict()
  model.width = config_dict.placeholder(int)   # None = adaptive (see scaling.py)
  model.depth = config_dict.placeholder(int)
  model.num_heads = 4
  model.mlp_ratio = 4
  model.dropout_min = 0.1                      # first block
  model.dropout_max = 0.3                      # last block
  model.attention_dropout = 0.0
  model.input_dropout = 0.0                    # on the input features (augmentation)
  model.feature_noise = 0.5                    # train-only noise, in feature stds
  model.step_dropout = 0.3                     # train-only: hide context steps
  model.cell_head = True                       # + linear head on the last step
  model.branch_dropout = 0.5                   # train-only: drop the sequence logits
  model.norm = "batch"                         # "batch" | "layer"
  model.pooling = "mean_last"                  # "mean" | "last" | "mean_last"
  model.positions = "learned"                  # "learned" | "none" (steps as a set)
  model.dtype = "auto"                         # "auto" | "float32" | "bfloat16"

  # ---------------------------------------------------------------- train
  train = config.train = ml_collections.ConfigDict()
  train.auto_scale = True
  train.batch_size = config_dict.placeholder(int)   # None = adaptive
  train.num_epochs = config_dict.placeholder(int)   # None = adaptive
  train.learning_rate = 1e-3
  train.min_learning_rate = 1e-5
  train.warmup_epochs = 1.0
  train.first_cycle_epochs = 10.0
  train.cycle_mult = 2.0
  train.cycle_decay = 1.0                     # peak lr multiplier after each restart
  train.grad_clip_norm = 1.0
  train.b1 = 0.9
  train.b2 = 0.999
  train.adam_eps = 1e-8
  train.label_smoothing_start = 0.15
  train.label_smoothing_end = 0.045
  train.weight_decay_start = 0.01
  train.weight_decay_end = 0.10
  train.ramp_epochs = 20.0                     # 0 = the ramps span num_epochs
  # Evaluate (and export) an exponential moving average of the weights over about
  # this many epochs instead of the last step's weights; 0 = off (optim.track_average).
  # The steps are unchanged; validation scores, early stopping and the best
  # checkpoint then follow the average.
  train.average_epochs = 0.0
  # Weights of the sequence branch tried on validation after training (cell head
  # models; evaluation.select_branch_gate). () = keep the trained sum.
  train.branch_gate_grid = (0.0, 0.25, 0.5, 0.75, 1.0)
  train.early_stopping_patience = 15
  # K models (seeds seed .. seed + K - 1) trained together in one compiled epoch,
  # each with its own early stopping; reported as the mean of their
  # probabilities beside the members' own scores (cardiac_jax/members.py).
  train.num_members = 1
  # How the K members share a compiled epoch: "vmap" (one batched program: a GPU
  # runs them in parallel), "map" (one after another inside the same call: no
  # batched-matmul overhead on a CPU that one member already fills), "auto".
  train.member_axis = "auto"                  # "auto" | "vmap" | "map"
  # val_loss rises as soon as the model grows overconfident on memorised training
  # paths, while val_acc drifts up by hundredths long after; see README "Results".
  train.early_stopping_metric = "val_loss"    # "val_loss" (min) | "val_acc" (max)
  train.keep_checkpoints = 3
  train.eval_batch_size = 64                  # small chunks are fastest on CPU (bench_train)
  train.progress_bar = True

  # ---------------------------------------------------------------- monitor
  monitor = config.monitor = ml_collections.ConfigDict()
  monitor.moderate_gap = 0.08
  monitor.significant_gap = 0.15
  monitor.target_test_acc = 0.75
  monitor.target_gap = 0.05
  monitor.val_test_tolerance = 0.03
  return config


SCALES = ("scale1", "scale2", "scale3")   # the progressive-scaling design, configs/<name>.py
CONFIGS_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"
VARIANTS = ("quick",)
QUICK_DIVISOR = 25     # quick: sequences per population / 25 (scale1 -> 40, the debug data)
QUICK_EPOCHS = 2
QUICK_SUFFIX = "_quick"


def preset(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """``configs/<name>.py``'s ``get_config(arg)``: what ``--config=configs/<name>.py:arg`` gives."""
  path = CONFIGS_DIR / f"{name}.py"
  if not path.is_file():
    known = sorted(p.stem for p in CONFIGS_DIR.glob("*.py"))
    raise ValueError(f"unknown preset {name!r}; choose one of {known} (files in {CONFIGS_DIR}).")
  spec = importlib.util.spec_from_file_location(f"cardiac_jax_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def with_data_seed(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  """A copy whose data differ by ``seed``: the simulator's, the split's and the walks' seeds."""
  config = config.copy_and_resolve_references()
  config.data.simulator.seed = config.data.split.seed = config.data.sequences.seed = int(seed)
  return config


def nominal_sequences(config: ml_collections.ConfigDict) -> int:
  """Sequences the config asks for (all splits): per class, plus the spatial ones.

  The number ``scaling.adaptive_settings`` brackets; configs/ spell out the
  sizes of their bracket (tests/test_configs.py checks that they agree).
  """
  seq = config.data.sequences
  spatial = int(seq.spatial_total) if config.data.spatial.enabled else 0
  return int(seq.per_population) * len(config.data.classes) + spatial


def variant(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Applies the ``get_config`` argument: None or "" = the run itself, "quick" = ``quick``."""
  if not arg:
    return config
  if arg == "quick":
    return quick(config)
  raise ConfigError(f"unknown config variant {arg!r}; use one of {VARIANTS} "
                    "(e.g. --config=configs/scale1.py:quick) or none.")


def quick(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy shrunk to the debug run's sizes, keeping the scale's proportions.

  Sequences per population and spatial sequences are divided by
  ``QUICK_DIVISOR`` (scale1 -> 40/20, exactly the debug data), so quick runs of
  scale1/2/3 still differ in size in the same ratio; the model and batch take
  the debug sizes and training ``QUICK_EPOCHS`` epochs. Everything else stays,
  and command-line overrides apply after the variant, so
  ``--config=configs/scale1.py:quick --config.train.num_epochs=12`` trains 12.
  """
  config = config.copy_and_resolve_references()
  debug = preset("debug")
  seq = config.data.sequences
  per_population = max(20, int(seq.per_population) // QUICK_DIVISOR)
  spatial_total = max(10, int(seq.spatial_total) // QUICK_DIVISOR)
  for section, fields in (
      ("data.simulator", ("n_cells", "n_genes")),
      ("data.spatial", ("n_spots",)),
      ("data.preprocess", ("n_hvg", "n_pcs")),
      ("data.sequences", ("length",)),
      ("model", ("width", "depth")),
      ("train", ("batch_size",))):
    src, dst = debug, config
    for part in section.split("."):
      src, dst = src[part], dst[part]
    for f in fields:
      dst[f] = src[f]
  seq.per_population, seq.spatial_total = per_population, spatial_total
  config.train.num_epochs = QUICK_EPOCHS
  config.name += QUICK_SUFFIX
  return config


def is_quick(config: ml_collections.ConfigDict) -> bool:
  """Whether ``config`` is a quick variant (studies label their tables with it)."""
  return config.name.endswith(QUICK_SUFFIX)
