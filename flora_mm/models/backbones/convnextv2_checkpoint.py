"""Read ConvNeXt-V2 weights from local files into timm's layout.

Accepted inputs (after unwrapping ``state_dict`` / ``model`` containers and stripping the
``module.`` / ``backbone.`` / ``encoder.`` prefixes):

* timm state dicts (``stem.0.weight``, ``stages.0.blocks.0.conv_dw.weight``, ...);
* the official fine-tuned ConvNeXt-V2 checkpoints (``downsample_layers.0.0.weight``,
  ``stages.0.0.dwconv.weight``, ``grn.gamma`` ...), renamed by timm's own
  ``convnext.checkpoint_filter_fn``;
* the official FCMAE pre-training checkpoints, whose encoder is a MinkowskiEngine sparse
  network (``encoder.stages.0.0.dwconv.kernel`` of shape ``(k*k, C)``, convolution kernels of
  shape ``(k*k, in, out)``, ``norm.ln.weight``, ``pwconv1.linear.weight``); they are first
  converted to the dense official layout. The decoder / mask token are ignored.

Files are read with ``torch.load(weights_only=True)`` or safetensors; nothing is downloaded.
"""
import logging
import math
import os.path as osp
import re
from typing import Dict, List, Mapping, NamedTuple, Sequence, Tuple

import torch
from mmengine.logging import print_log

StateDict = Dict[str, torch.Tensor]

_CONTAINER_KEYS = ('state_dict', 'model', 'module')
_PREFIXES = ('module.', 'backbone.', 'encoder.')
# FCMAE parts that are not the encoder (decoder, projection, prediction head, mask token).
_FCMAE_NON_ENCODER = ('decoder', 'proj', 'pred', 'mask_token')
# timm keys of the classifier, which a backbone does not have.
_CLASSIFIER_PREFIXES = ('head.', 'norm_pre.')


def read_checkpoint_file(path: str) -> dict:
    """Load a local ``.pth``/``.pt``/``.bin`` (``weights_only=True``) or ``.safetensors`` file.

    Args:
        path: Local file path.

    Returns:
        The raw object stored in the file.

    Raises:
        FileNotFoundError: ``path`` does not exist (nothing is ever downloaded).
    """
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'pretrained={path!r}: no such local file (weights are never downloaded; put '
            'the checkpoint on disk and point `pretrained` at it)')
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path, device='cpu')
    return torch.load(path, map_location='cpu', weights_only=True)


def unwrap_state_dict(ckpt: Mapping) -> Tuple[StateDict, List[str]]:
    """Find the tensor dict inside a checkpoint and strip wrapper prefixes.

    Args:
        ckpt: A raw checkpoint: a state dict, or a dict with ``state_dict`` / ``model`` /
            ``module`` holding one (nested containers are followed).

    Returns:
        ``(state_dict, ignored)``: tensors keyed without ``module.``, and with ``backbone.`` /
        ``encoder.`` stripped when present (keys outside that prefix are returned in
        ``ignored``: detector necks and heads, FCMAE decoders).

    Raises:
        ValueError: No tensor dict could be found.
    """
    while isinstance(ckpt, Mapping) and not any(torch.is_tensor(v) for v in ckpt.values()):
        key = next((k for k in _CONTAINER_KEYS if isinstance(ckpt.get(k), Mapping)), None)
        if key is None:
            raise ValueError(f'no state dict found in the checkpoint: top-level keys '
                             f'{sorted(ckpt)[:10]}, expected tensors or one of '
                             f'{list(_CONTAINER_KEYS)}')
        ckpt = ckpt[key]
    if not isinstance(ckpt, Mapping):
        raise ValueError(f'the checkpoint holds a {type(ckpt).__name__}, not a state dict')
    state = {k: v for k, v in ckpt.items() if torch.is_tensor(v)}
    ignored: List[str] = []
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in state):
            ignored += [k for k in state if not k.startswith(prefix)]
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state, ignored


def is_fcmae(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state`` uses the sparse (MinkowskiEngine) names of FCMAE pre-training."""
    return any(k.endswith('.kernel') or '.ln.' in k or '.linear.' in k for k in state)


def fcmae_to_official(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Convert a sparse FCMAE encoder state dict to the dense official ConvNeXt-V2 layout.

    MinkowskiEngine stores a ``k x k`` convolution as ``kernel[w * k + h, in, out]`` and a
    depthwise one as ``kernel[w * k + h, C]``; biases and GRN parameters as ``(1, C)``;
    ``MinkowskiLayerNorm`` / ``MinkowskiLinear`` wrap ``nn.LayerNorm`` / ``nn.Linear`` as
    ``.ln`` / ``.linear``. This mirrors ``remap_checkpoint_keys`` of the ConvNeXt-V2 repository.

    Args:
        state: Encoder tensors with the ``encoder.`` prefix already stripped.

    Returns:
        Tensors with the official dense names and shapes.
    """
    out: StateDict = {}
    for key, value in state.items():
        parts = key.split('.')
        if parts[-1] == 'kernel':
            ks = math.isqrt(value.shape[0])
            if ks * ks != value.shape[0]:
                raise ValueError(f'FCMAE key {key!r}: kernel volume {value.shape[0]} is not a '
                                 'square kernel')
            if value.ndim == 3:  # (k*k, in, out) -> (out, in, k, k)
                _, cin, cout = value.shape
                value = value.permute(2, 1, 0).reshape(cout, cin, ks, ks).transpose(3, 2)
            elif value.ndim == 2:  # depthwise (k*k, C) -> (C, 1, k, k)
                value = value.permute(1, 0).reshape(-1, 1, ks, ks).transpose(3, 2)
            else:
                raise ValueError(f'FCMAE key {key!r}: unexpected kernel shape '
                                 f'{tuple(value.shape)}')
            parts[-1] = 'weight'
        elif len(parts) >= 2 and parts[-2] in ('ln', 'linear'):
            parts.pop(-2)
        if parts[-1] == 'bias' and value.ndim != 1:
            value = value.reshape(-1)
        out['.'.join(parts)] = value.contiguous()
    return out


def to_timm_layout(state: StateDict, model: torch.nn.Module) -> Tuple[StateDict, List[str]]:
    """Bring any accepted checkpoint (see the module docstring) to timm's ConvNeXt names.

    Args:
        state: Output of :func:`unwrap_state_dict`.
        model: The module with timm's key names the state will be loaded into; timm's filter
            reshapes the official ``nn.Linear`` point-wise weights to its layout (1x1
            convolutions for atto..nano).

    Returns:
        ``(state_dict, ignored)``: timm-layout tensors, and the keys dropped on purpose
        (classifier head and final norm, FCMAE decoder).

    Raises:
        ValueError: An official point-wise weight does not fit ``model`` (wrong ``arch``?).
    """
    ignored: List[str] = []
    if is_fcmae(state):
        ignored += [k for k in state if k.split('.')[0] in _FCMAE_NON_ENCODER]
        state = fcmae_to_official(
            {k: v for k, v in state.items() if k.split('.')[0] not in _FCMAE_NON_ENCODER})
    if any(k.startswith('downsample_layers.') for k in state):
        from timm.models.convnext import checkpoint_filter_fn
        try:
            state = checkpoint_filter_fn(state, model)
        except (KeyError, RuntimeError) as err:
            raise ValueError('official ConvNeXt-V2 checkpoint does not fit the model (is '
                             f'`arch` right?): {err}') from None
    ignored += [k for k in state if k.startswith(_CLASSIFIER_PREFIXES)]
    state = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    return state, ignored


class LoadReport(NamedTuple):
    """What :func:`load_pretrained` did, by key name."""

    missing_keys: List[str]
    unexpected_keys: List[str]
    ignored_keys: List[str]
    fresh_keys: List[str]


def load_pretrained(module: torch.nn.Module, path: str, fresh: Sequence[str] = ()) -> LoadReport:
    """Load ConvNeXt-V2 weights from a local file into a module with timm's key names.

    Missing and unexpected keys are logged by name (warning); keys dropped on purpose
    (classifier, FCMAE decoder, detector parts outside ``backbone.``) and ``fresh`` keys the
    file lacks are logged at info level.

    Args:
        module: The module to fill (``stem.*`` / ``stages.*`` keys).
        path: Local checkpoint file.
        fresh: Regexes (fullmatch) of model keys that a checkpoint may lack: the module's
            own initial values are kept and they are not reported missing (the output norms
            of a dense-prediction backbone, absent from classification checkpoints).

    Returns:
        The missing, unexpected, ignored and fresh (absent, kept at their initial values)
        keys.

    Raises:
        ValueError: A tensor's shape differs from the model's (wrong ``arch``?) or no key of
            the file matches the model at all.
    """
    state, ignored = unwrap_state_dict(read_checkpoint_file(path))
    own = module.state_dict()
    state, dropped = to_timm_layout(state, module)
    ignored += dropped
    mismatched = [f'{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}'
                  for key, value in state.items()
                  if key in own and value.shape != own[key].shape]
    if mismatched:
        raise ValueError(f'pretrained={path!r} does not fit the model (is `arch` right?): '
                         f'shape mismatch for ' + '; '.join(mismatched[:10]) +
                         (f' and {len(mismatched) - 10} more' if len(mismatched) > 10 else ''))
    absent = sorted(set(own) - set(state))
    new = [k for k in absent if any(re.fullmatch(p, k) for p in fresh)]
    missing = [k for k in absent if k not in new]
    unexpected = sorted(set(state) - set(own))
    if len(absent) == len(own):
        raise ValueError(f'pretrained={path!r}: no key matches the model; file keys (after '
                         f'remapping) start with {sorted(state)[:5]}, model keys with '
                         f'{sorted(own)[:5]}')
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    print_log(f'Loaded {len(own) - len(absent)}/{len(own)} backbone tensors from {path}',
              logger='current')
    if new:
        print_log(f'pretrained={path!r}: {new} are not in the file and keep their initial '
                  'values (new layers, trained with the neck)', logger='current')
    report = LoadReport(missing, unexpected, ignored, new)
    log_key_problems(path, report, 'classifier / decoder / detector heads')
    return report


def log_key_problems(path: str, report: LoadReport, ignored_what: str) -> None:
    """Log the missing and unexpected keys (warnings) and the ignored ones of a load.

    Args:
        path: The checkpoint file, as the user named it.
        report: What the loader did.
        ignored_what: What the ignored keys are, for the message.
    """
    if report.missing_keys:
        print_log(f'pretrained={path!r}: missing keys (left at their initial values): '
                  f'{report.missing_keys}', logger='current', level=logging.WARNING)
    if report.unexpected_keys:
        print_log(f'pretrained={path!r}: unexpected keys (not loaded): '
                  f'{report.unexpected_keys}', logger='current', level=logging.WARNING)
    if report.ignored_keys:
        print_log(f'pretrained={path!r}: ignored {len(report.ignored_keys)} keys that are not '
                  f'part of the backbone ({ignored_what}), e.g. {report.ignored_keys[:5]}',
                  logger='current')
