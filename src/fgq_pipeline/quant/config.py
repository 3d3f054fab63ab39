"""One validated configuration of the method: weight groups, activation bits, layer policy, repairs."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..checks import is_int, is_number, require_int
from .activation import validate_act_bits, validate_calibration
from .scale_storage import validate_scale_dtype
from .ternary import GroupSize, validate_group_size, validate_solver

POLICIES = ("first_last_8bit", "ternarize_all")
WEIGHT_FORMATS = ("ternary", "int2", "int3", "int4")  # int<b>: the uniform b-bit baseline, in the same groups
ROUNDINGS = ("nearest", "gptq", "reconstruct")


@dataclass(frozen=True)
class QuantConfig:
    """What ``quantize_model`` and the post-training repairs do.

    ``rounding`` "gptq" replaces per-group nearest rounding by error-compensating rounding
    (see :mod:`.gptq`); "reconstruct" learns codes, scales, activation steps and biases block by
    block against the FP32 model once activations are calibrated (see :mod:`.reconstruct`). ``policy`` keeps the first conv and the last classifier at 8-bit weights ("first_last_8bit",
    as the paper does) or ternarizes them too ("ternarize_all"). ``act_bits`` 32 leaves activations
    in float. ``scale_dtype`` is how the group scales are stored (fp32, fp16, or int8 multiples of one
    fp32 scale per filter), applied in the fake-quant model so accuracy is that of what is stored.
    ``image_bits``: the first conv's input, the image, keeps at least these bits (``act_bits`` 4 quantizes
    the activations inside the network; image data holds 8 bits, and a normalised image is an affine
    map of its pixels); 2 lets ``act_bits`` apply to the image too.
    ``weight_format`` "int2" / "int3" / "int4" puts the same layers on uniform grids in the same groups
    (see :mod:`.uniform`), through the same repairs: the comparison at equal bits per weight.
    The two repairs are switches because each must be measured on and off. The defaults are the
    best measured recipe, the same as the pipeline's ``conf/quant/fgq.yaml`` (a test keeps them equal:
    DVC composes that file without importing this package).
    """

    weight_format: str = "ternary"
    group_size: GroupSize = 4
    solver: str = "exact"
    scale_dtype: str = "fp32"
    rounding: str = "gptq"
    act_bits: int = 8
    image_bits: int = 8
    act_calibration: str = "mse"
    act_percentile: float = 99.99
    power_of_two_scale: bool = False
    policy: str = "first_last_8bit"
    bn_reestimate: bool = True
    bias_correction: bool = True

    def __post_init__(self) -> None:
        validate_group_size(self.group_size)
        validate_solver(self.solver)
        validate_scale_dtype(self.scale_dtype)
        if self.weight_format not in WEIGHT_FORMATS:
            raise ValueError(f"weight_format must be one of {WEIGHT_FORMATS}, got {self.weight_format!r}")
        validate_act_bits(self.act_bits)
        if not is_int(self.image_bits) or not 2 <= self.image_bits <= 8:
            raise ValueError(f"image_bits must be an integer in 2..8, got {self.image_bits!r}")
        validate_calibration(self.act_calibration, self.act_percentile)
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {self.rounding!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        for switch in ("power_of_two_scale", "bn_reestimate", "bias_correction"):
            if not isinstance(getattr(self, switch), bool):
                raise ValueError(f"{switch} must be true or false, got {getattr(self, switch)!r}")

    @property
    def image_input_bits(self) -> int:
        """Bits of the first conv's input quantizer (32: float, as ``act_bits`` 32 leaves every input)."""
        return max(self.act_bits, self.image_bits)

    @property
    def uniform_bits(self) -> int | None:
        """b of an ``int<b>`` weight format; None for ternary."""
        return None if self.weight_format == "ternary" else int(self.weight_format.removeprefix("int"))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ReconstructConfig:
    """How ``rounding: reconstruct`` learns each block (see :mod:`.reconstruct`).

    ``lr`` drives the soft codes (AdaRound's rounding logits), ``scale_lr`` the log group scales,
    log activation steps and per-channel biases. For the first ``warmup`` share of the iterations
    the codes move freely; then a penalty weighted ``round_weight`` pushes them to {-1, 0, +1},
    its exponent falling from ``beta_start`` to ``beta_end``. ``drop_prob`` is QDrop's chance that
    an activation skips quantization while a block learns. ``bn_reestimate`` re-estimates BatchNorm
    statistics once every block is done (a switch: it can undo what the blocks learned). ``views``
    passes over the calibration set feed the blocks: with an augmenting calibration transform each pass
    draws new crops and flips of the same images, so the blocks learn from more than one view of each.
    """

    iterations: int = 1000
    batch_size: int = 32
    lr: float = 0.1
    scale_lr: float = 1e-2
    drop_prob: float = 0.5
    warmup: float = 0.2
    beta_start: float = 20.0
    beta_end: float = 2.0
    round_weight: float = 0.01
    bn_reestimate: bool = False
    views: int = 4

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "views"):
            require_int(f"reconstruct.{name}", getattr(self, name))
        for name in ("lr", "scale_lr", "beta_start", "beta_end"):
            value = getattr(self, name)
            if not is_number(value) or not value > 0:
                raise ValueError(f"reconstruct.{name} must be a positive number, got {value!r}")
        for name in ("drop_prob", "warmup"):
            value = getattr(self, name)
            if not is_number(value) or not 0 <= value < 1:
                raise ValueError(f"reconstruct.{name} must be in [0, 1), got {value!r}")
        if not is_number(self.round_weight) or self.round_weight < 0:
            raise ValueError(f"reconstruct.round_weight must be 0 or more, got {self.round_weight!r}")
        if self.beta_end > self.beta_start:
            raise ValueError(f"reconstruct.beta_end must not exceed beta_start ({self.beta_start!r}), got {self.beta_end!r}")
        if not isinstance(self.bn_reestimate, bool):
            raise ValueError(f"reconstruct.bn_reestimate must be true or false, got {self.bn_reestimate!r}")

    def to_dict(self) -> dict:
        return asdict(self)
