"""The released checkpoints of the paper's code (score_sde_pytorch, Song et al. 2021) as scorelab weights and config.

The reference builds its DDPM++ / NCSN++ network as one flat ``all_modules`` list, so its weights are named
``all_modules.<i>.<layer>.<param>``. :class:`ReferenceLayout` recovers that list from a :class:`ScoreUNet` of the
same configuration by walking its modules in the order the reference constructs them (time embedding, input conv,
contracting path, bottleneck, expanding path, output) and maps every weight both ways. Nothing is tabulated per
network size: any ``nf``, ``ch_mult``, ``num_res_blocks``, attention resolutions, resampling or pyramid option
gives its own layout.

What the reference does inside its network becomes scorelab configuration (:func:`scorelab_settings`):
``data.centered = false`` is ``ScoreModel(centered=False)``, ``scale_by_sigma`` is ``output="scaled_score"``, and
its continuous-time labels (``999 t`` for VP / sub-VP, ``log sigma`` for VE) are the SDEs' own ``noise_label``.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.errors import UserError
from ..models.embeddings import GaussianFourierEmbedding
from ..models.layers import AttnBlock, Combine, Downsample, FIRConv2d, ResnetBlockBigGAN, ResnetBlockDDPM, Upsample
from ..models.unet import ScoreUNet

# The reference's config.model keys that describe the network, with the scorelab ScoreUNet argument each becomes.
NET_KEYS = {
    "nf": "ch", "ch_mult": "ch_mult", "num_res_blocks": "num_res_blocks", "attn_resolutions": "attn_resolutions",
    "dropout": "dropout", "embedding_type": "embedding_type", "fourier_scale": "fourier_scale",
    "resblock_type": "resblock_type", "resamp_with_conv": "resamp_with_conv", "fir": "fir",
    "fir_kernel": "fir_kernel", "skip_rescale": "skip_rescale", "progressive": "progressive",
    "progressive_input": "progressive_input", "progressive_combine": "progressive_combine", "init_scale": "init_scale",
}
# Reference settings scorelab's ScoreUNet has exactly one of: anything else is another architecture.
FIXED = {"name": "ncsnpp", "conditional": True, "attention_type": "ddpm", "normalization": "GroupNorm",
         "nonlinearity": "swish", "conv_size": 3}
# Everything else a reference config may state: data shape and scaling, SDE, EMA, discretisation, the SDE kind.
OTHER_KEYS = ("image_size", "num_channels", "centered", "scale_by_sigma", "beta_min", "beta_max", "sigma_min",
              "sigma_max", "num_scales", "ema_rate", "sde")
SDES = ("vp", "subvp", "ve")

_CIFAR10 = {"image_size": 32, "num_channels": 3, "beta_min": 0.1, "beta_max": 20.0, "sigma_min": 0.01,
            "sigma_max": 50.0, "num_scales": 1000, "dropout": 0.1, "fourier_scale": 16.0, "nf": 128,
            "ch_mult": [1, 2, 2, 2], "num_res_blocks": 4, "attn_resolutions": [16], "resamp_with_conv": True,
            "fir_kernel": [1, 3, 3, 1], "skip_rescale": True, "resblock_type": "biggan", "progressive": "none",
            "progressive_combine": "sum", "init_scale": 0.0, **FIXED}
_DDPMPP = {**_CIFAR10, "embedding_type": "positional", "fir": False, "progressive_input": "none",
           "scale_by_sigma": False, "centered": True, "ema_rate": 0.9999}
_NCSNPP = {**_CIFAR10, "embedding_type": "fourier", "fir": True, "progressive_input": "residual",
           "scale_by_sigma": True, "centered": False, "ema_rate": 0.999}
# The reference's CIFAR-10 configs (configs/<sde>/<name>.py) whose checkpoints it released.
PRESETS: dict[str, dict[str, Any]] = {
    "vp/cifar10_ddpmpp_continuous": {**_DDPMPP, "sde": "vp"},
    "vp/cifar10_ddpmpp_deep_continuous": {**_DDPMPP, "sde": "vp", "num_res_blocks": 8},
    "subvp/cifar10_ddpmpp_continuous": {**_DDPMPP, "sde": "subvp"},
    "subvp/cifar10_ddpmpp_deep_continuous": {**_DDPMPP, "sde": "subvp", "num_res_blocks": 8},
    "ve/cifar10_ncsnpp_continuous": {**_NCSNPP, "sde": "ve"},
    "ve/cifar10_ncsnpp_deep_continuous": {**_NCSNPP, "sde": "ve", "num_res_blocks": 8},
}
KNOWN_KEYS = frozenset(NET_KEYS) | frozenset(FIXED) | frozenset(OTHER_KEYS)


class ReferenceFormatError(UserError):
    """A file or config that is not (or does not fit) the reference's DDPM++ / NCSN++ network."""


# ------------------------------------------------------------------------------------------------ config
def reference_config(preset: str | None, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A full reference config: ``preset``'s values (see :data:`PRESETS`) with ``values`` laid over them.

    Raises:
        ReferenceFormatError: unknown preset or key, or a setting scorelab's network does not have.
    """
    if preset is not None and preset not in PRESETS:
        raise ReferenceFormatError(f"unknown reference config {preset!r}; known: {', '.join(PRESETS)}")
    cfg = dict(PRESETS[preset]) if preset else {}
    for key, value in (values or {}).items():
        if key not in KNOWN_KEYS:
            raise ReferenceFormatError(f"unknown reference config key {key!r}; known: {', '.join(sorted(KNOWN_KEYS))}")
        cfg[key] = list(value) if isinstance(value, (tuple, list)) else value
    missing = sorted((set(NET_KEYS) | set(OTHER_KEYS)) - set(cfg))
    if missing:
        raise ReferenceFormatError(f"reference config lacks {', '.join(missing)}: start from a preset "
                                   f"({', '.join(PRESETS)}) and give the values that differ")
    for key, want in FIXED.items():
        if key in cfg and str(cfg[key]).lower() != str(want).lower():
            raise ReferenceFormatError(f"reference {key}={cfg[key]!r} is not supported: scorelab's ScoreUNet is the "
                                       f"reference's {key}={want!r} network")
    if cfg["sde"] not in SDES:
        raise ReferenceFormatError(f"sde must be one of {SDES}, got {cfg['sde']!r}")
    return cfg


def scorelab_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What a reference config means in scorelab: ``{"sde": {...}, "model": {...}, "net": {...}, "data": {...}}``.

    ``model`` holds the :class:`~scorelab.models.ScoreModel` arguments that reproduce the reference's score function
    (its ``models/utils.get_score_fn``) around a ScoreUNet with the ``net`` arguments.

    Raises:
        ReferenceFormatError: a combination the reference's continuous-time score function and scorelab's noise
            labels do not share (e.g. Fourier features of ``999 t``).
    """
    sde, embedding = cfg["sde"], str(cfg["embedding_type"]).lower()
    if sde == "ve":
        if embedding != "fourier":
            raise ReferenceFormatError("a VE model must use embedding_type=fourier: the reference conditions it on "
                                       "sigma, which scorelab passes as log sigma to a Fourier embedding")
        output = "scaled_score" if cfg["scale_by_sigma"] else "score"
        sde_args = {"sigma_min": float(cfg["sigma_min"]), "sigma_max": float(cfg["sigma_max"])}
    else:
        if embedding != "positional":
            raise ReferenceFormatError(f"a {sde} model must use embedding_type=positional (labels 999 t); the "
                                       "reference's Fourier features of log(999 t) have no scorelab noise label")
        if cfg["scale_by_sigma"]:
            raise ReferenceFormatError(f"scale_by_sigma=true with a {sde} SDE divides by the discrete VE sigmas "
                                       "inside the reference network; only VE models use it")
        output = "eps"  # the reference's score is -net / std
        sde_args = {"beta_min": float(cfg["beta_min"]), "beta_max": float(cfg["beta_max"])}
    net = {ours: cfg[theirs] for theirs, ours in NET_KEYS.items()}
    net.update(in_channels=int(cfg["num_channels"]), image_size=int(cfg["image_size"]))
    centered = bool(cfg["centered"])
    return {"sde": sde_args, "net": net,
            "model": {"output": output, "noise_label": "sde", "scale_input": False, "centered": centered},
            "data": {"data_range": [-1.0, 1.0] if centered else [0.0, 1.0]}}


def build_network(cfg: Mapping[str, Any]) -> ScoreUNet:
    """The ScoreUNet of a reference config (random weights)."""
    return ScoreUNet(**scorelab_settings(cfg)["net"])


# ------------------------------------------------------------------------------------------------ layout
@dataclass(frozen=True)
class _Rule:
    """How scorelab parameter ``ours`` is made of reference parameters ``theirs``.

    ``kind``: ``"same"`` (one tensor, same layout), ``"nin"`` (the reference's ``NIN`` stores ``W [in, out]``; ours
    is ``weight [out, in(, 1, 1)]``) or ``"cat"`` (our fused ``qkv`` is three reference NINs stacked).
    """

    ours: str
    theirs: tuple[str, ...]
    kind: str


# Child layers of each reference block, in its registration order: (reference name, our attribute).
_RESNET_CHILDREN = (("GroupNorm_0", "norm_0"), ("Conv_0", "conv_0"), ("Dense_0", "dense_0"),
                    ("GroupNorm_1", "norm_1"), ("Conv_1", "conv_1"))


def _slots(net: ScoreUNet) -> Iterator[nn.Module]:
    """The modules of ``net`` in the order of the reference's ``all_modules`` list (ncsnpp.py's constructor).

    Resampling layers without weights still take an index there, as the reference appends them too; the input
    pyramid of ``input_skip`` and the output pyramid's upsampling of ``output_skip`` do not (the reference keeps
    them outside the list).
    """
    if isinstance(net.time_embed.embed, GaussianFourierEmbedding):
        yield net.time_embed.embed
    yield net.time_embed.dense_0
    yield net.time_embed.dense_1
    yield net.conv_in
    for level in net.encoder:
        for block, attn in zip(level.blocks, level.attns, strict=True):
            yield block
            if not isinstance(attn, nn.Identity):
                yield attn
        if level.downsample is not None:
            yield level.downsample
            if level.combine is not None:
                yield level.combine
            elif level.progressive_input == "residual":
                yield level.pyramid
    yield net.mid_block_0
    yield net.mid_attn
    yield net.mid_block_1
    for level in net.decoder:
        yield from level.blocks
        if not isinstance(level.attn, nn.Identity):
            yield level.attn
        if level.progressive == "output_skip" or (level.progressive == "residual" and level.is_lowest):
            yield level.pyramid_norm
            yield level.pyramid_conv
        elif level.progressive == "residual":
            yield level.pyramid_up
        if level.upsample is not None:
            yield level.upsample
    if net.norm_out is not None:
        yield net.norm_out
        yield net.conv_out


def _own(prefix: str, module: nn.Module, ours: str) -> list[tuple[str, str]]:
    """``(reference name, our name)`` of the parameters a plain layer holds directly (weight, bias, W)."""
    return [(f"{prefix}.{name}", f"{ours}.{name}") for name, _ in module.named_parameters(recurse=False)]


def _rules(module: nn.Module, prefix: str, ours: str) -> list[_Rule]:
    """The rules of one slot, in the order the reference registers its parameters."""
    if isinstance(module, (ResnetBlockBigGAN, ResnetBlockDDPM)):
        rules = []
        for theirs, attr in _RESNET_CHILDREN:
            child = getattr(module, attr)
            if child is not None:
                rules += [_Rule(o, (t,), "same") for t, o in _own(f"{prefix}.{theirs}", child, f"{ours}.{attr}")]
        if module.shortcut is not None:
            if isinstance(module, ResnetBlockDDPM) and module.shortcut.kernel_size == (1, 1):  # the reference's NIN_0
                rules += [_Rule(f"{ours}.shortcut.weight", (f"{prefix}.NIN_0.W",), "nin"),
                          _Rule(f"{ours}.shortcut.bias", (f"{prefix}.NIN_0.b",), "same")]
            else:
                rules += [_Rule(o, (t,), "same") for t, o in _own(f"{prefix}.Conv_2", module.shortcut,
                                                                  f"{ours}.shortcut")]
        return rules
    if isinstance(module, AttnBlock):
        nins = [f"{prefix}.NIN_{i}" for i in range(3)]
        return [*(_Rule(o, (t,), "same") for t, o in _own(f"{prefix}.GroupNorm_0", module.norm, f"{ours}.norm")),
                _Rule(f"{ours}.qkv.weight", tuple(f"{n}.W" for n in nins), "cat"),
                _Rule(f"{ours}.qkv.bias", tuple(f"{n}.b" for n in nins), "cat"),
                _Rule(f"{ours}.proj_out.weight", (f"{prefix}.NIN_3.W",), "nin"),
                _Rule(f"{ours}.proj_out.bias", (f"{prefix}.NIN_3.b",), "same")]
    if isinstance(module, (Upsample, Downsample)):
        if module.conv is None:
            return []
        name = "Conv2d_0" if isinstance(module.conv, FIRConv2d) else "Conv_0"
        return [_Rule(o, (t,), "same") for t, o in _own(f"{prefix}.{name}", module.conv, f"{ours}.conv")]
    if isinstance(module, Combine):
        return [_Rule(o, (t,), "same") for t, o in _own(f"{prefix}.Conv_0", module.conv, f"{ours}.conv")]
    if any(True for _ in module.children()):
        raise TypeError(f"no reference layout for {type(module).__name__}")
    return [_Rule(o, (t,), "same") for t, o in _own(prefix, module, ours)]


class ReferenceLayout:
    """The reference's names for the weights of one :class:`ScoreUNet`, and the maps between the two.

    Args:
        net: the network (its configuration decides the layout; its weights are not used).

    Attributes:
        reference_keys: the reference's parameter names in its ``model.parameters()`` order.
        trainable_keys: those with ``requires_grad`` (what the reference's EMA keeps in ``shadow_params``:
            everything but the fixed Fourier frequencies; :meth:`ema_state` also takes a list of all of them).
        shapes: the reference shape of every reference parameter.
    """

    def __init__(self, net: ScoreUNet):
        if not isinstance(net, ScoreUNet):
            raise TypeError(f"the reference layout is defined for ScoreUNet, got {type(net).__name__}")
        names = {id(m): name for name, m in net.named_modules()}
        ours = dict(net.named_parameters())
        self._our_shapes = {k: p.shape for k, p in ours.items()}
        self.rules: list[_Rule] = []
        self.reference_keys: list[str] = []
        self.trainable_keys: list[str] = []
        self.shapes: dict[str, torch.Size] = {}
        for index, module in enumerate(_slots(net)):
            rules = _rules(module, f"all_modules.{index}", names[id(module)])
            self.rules += rules
            for rule in rules:
                parts = [self._reference_shape(rule, ours[rule.ours], i) for i in range(len(rule.theirs))]
                for key, shape in zip(rule.theirs, parts, strict=True):
                    self.shapes[key] = shape
            # parameters() order of the reference module: its children in registration order, W before b
            keys = sorted({k for r in rules for k in r.theirs}, key=self._registration_order(rules))
            self.reference_keys += keys
            self.trainable_keys += [k for k in keys if ours[self._ours_of(rules, k)].requires_grad]
        covered = {r.ours for r in self.rules}
        if covered != set(ours):
            raise TypeError(f"layout misses {sorted(set(ours) - covered)[:3]}")

    @staticmethod
    def _registration_order(rules: list[_Rule]):
        order = {}
        for rule in rules:  # rules list children in registration order; a fused rule lists NIN_0..2
            for key in rule.theirs:
                child = key.rsplit(".", 1)[0]
                order.setdefault(child, len(order))
        return lambda key: (order[key.rsplit(".", 1)[0]], key.rsplit(".", 1)[1] not in ("W", "weight"))

    @staticmethod
    def _ours_of(rules: list[_Rule], key: str) -> str:
        return next(r.ours for r in rules if key in r.theirs)

    @staticmethod
    def _reference_shape(rule: _Rule, param: torch.Tensor, i: int) -> torch.Size:
        if rule.kind == "nin":
            return torch.Size((param.shape[1], param.shape[0]))
        if rule.kind == "cat":
            return param.chunk(3, dim=0)[i].t().shape if param.ndim == 2 else torch.Size((param.shape[0] // 3,))
        return param.shape

    def to_scorelab(self, reference: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Our state dict from the reference's (``all_modules.*`` keys; extra buffers such as ``sigmas`` ignored).

        Raises:
            ReferenceFormatError: a weight is missing, left over, or has another shape than this configuration's.
        """
        self.check(reference)
        out = {}
        for rule in self.rules:
            parts = [reference[k] for k in rule.theirs]
            if rule.kind == "same":
                out[rule.ours] = parts[0].clone()
            elif rule.kind == "nin":
                out[rule.ours] = parts[0].t().reshape(self._our_shapes[rule.ours]).contiguous()
            else:
                out[rule.ours] = torch.cat([p.t() if p.ndim == 2 else p for p in parts]).contiguous()
        return out

    def to_reference(self, ours: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The reference's state dict (without its ``sigmas`` buffer) from ours, in the reference's order."""
        out = {}
        for rule in self.rules:
            tensor = ours[rule.ours]
            if rule.kind == "same":
                out[rule.theirs[0]] = tensor.clone()
            elif rule.kind == "nin":
                out[rule.theirs[0]] = tensor.reshape(tensor.shape[0], tensor.shape[1]).t().contiguous()
            else:
                for key, part in zip(rule.theirs, tensor.chunk(3, dim=0), strict=True):
                    out[key] = (part.t() if part.ndim == 2 else part).contiguous()
        return {k: out[k] for k in self.reference_keys}

    def check(self, reference: Mapping[str, torch.Tensor]) -> None:
        """Raise :class:`ReferenceFormatError` naming the first weight that does not fit this configuration."""
        params = {k for k in reference if k.startswith("all_modules.")}
        missing = [k for k in self.reference_keys if k not in params]
        extra = sorted(params - set(self.reference_keys), key=_natural)
        wrong = [k for k in self.reference_keys if k in params and reference[k].shape != self.shapes[k]]
        if wrong:
            k = wrong[0]
            raise ReferenceFormatError(f"{k} has shape {tuple(reference[k].shape)} in the file but "
                                       f"{tuple(self.shapes[k])} in the configured network: the file is another size "
                                       "or architecture; give its config values (e.g. nf=..., num_res_blocks=...)")
        if missing or extra:
            what = f"{missing[0]} is missing from the file" if missing else f"the file has {extra[0]}, which the " \
                "configured network does not"
            raise ReferenceFormatError(f"{what} ({len(missing)} missing, {len(extra)} extra of "
                                       f"{len(self.reference_keys)}): the file is another architecture; give its "
                                       "config values")

    def ema_state(self, shadow_params: list[torch.Tensor], reference: Mapping[str, torch.Tensor]) -> dict:
        """The reference's EMA weights by name: ``shadow_params`` (``parameters()`` order, trainable only) with
        the fixed parameters (Fourier frequencies) taken from ``reference``."""
        # The reference's EMA skips parameters without gradients; a file made with all of them holds one per weight.
        for keys in (self.trainable_keys, self.reference_keys):
            if len(shadow_params) == len(keys):
                ema = {k: reference[k] for k in self.reference_keys if k in reference}
                ema.update(zip(keys, shadow_params, strict=True))
                self.check(ema)
                return ema
        raise ReferenceFormatError(f"the file's EMA holds {len(shadow_params)} tensors but the configured network has "
                                   f"{len(self.trainable_keys)} trainable weights ({len(self.reference_keys)} in all): "
                                   "another architecture; give its config values")


def _natural(key: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in key.split("."))


# ------------------------------------------------------------------------------------------------ files
def read_reference_weights(obj: Any) -> tuple[dict[str, torch.Tensor], list[torch.Tensor] | None, dict[str, Any]]:
    """Split a loaded reference file into ``(raw weights, EMA shadow params or None, extras)``.

    Accepts the reference's ``utils.save_checkpoint`` layout (``model`` with the ``module.`` prefix of
    ``DataParallel``, ``ema`` with ``shadow_params``, ``optimizer``, ``step``), a file with ``state_dict`` (and
    optionally ``config``, the reference's model values), or a bare state dict. ``extras`` holds ``config``,
    ``step`` and ``ema_decay``/``ema_updates`` where the file has them.
    """
    if not isinstance(obj, Mapping):
        raise ReferenceFormatError(f"expected a dict of weights, found {type(obj).__name__}")
    extras: dict[str, Any] = {}
    if "model" in obj and isinstance(obj["model"], Mapping):
        weights = {k.removeprefix("module."): v for k, v in obj["model"].items()}
        ema = obj.get("ema")
        shadow = None
        if isinstance(ema, Mapping) and "shadow_params" in ema:
            shadow = list(ema["shadow_params"])
            extras.update(ema_decay=ema.get("decay"), ema_updates=ema.get("num_updates"))
        extras["step"] = obj.get("step")
    elif "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        weights, shadow = dict(obj["state_dict"]), None
        if isinstance(obj.get("config"), Mapping):
            extras["config"] = dict(obj["config"])
    else:
        weights, shadow = dict(obj), None
    weights = {k: v for k, v in weights.items() if torch.is_tensor(v)}
    if not any(k.startswith("all_modules.") for k in weights):
        raise ReferenceFormatError("no all_modules.* weights: not a score_sde_pytorch DDPM++/NCSN++ checkpoint "
                                   "(expected 'model' and 'ema' as its save_checkpoint writes, or a state_dict)")
    return weights, shadow, extras
