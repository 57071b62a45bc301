"""Model files for deployment: reading any of ours, and the compact safetensors format.

Three kinds of file hold a model:

* the authors' checkpoint (``.pt``): ``encoder_state_dict`` + ``decoder_state_dict``, and,
  once calibrated, an extra ``calibration`` key (settings, constants, thresholds) that the
  authors' loader never reads;
* the compact file (``.safetensors``): decoder tensors without FrEIA's redundant
  ``w_perm_inv`` (it is exactly ``w_perm`` transposed), the encoder only where it is not the
  stock ImageNet network (else recorded by name and checked by SHA-256 when loaded), and a
  small JSON of settings and calibration in the file's metadata;
* the ONNX export (``.onnx``, ``utils/export_onnx.py``), which ``predict`` runs with onnxruntime.

``stated_settings`` reads what any of them states (settings, calibration) without building the
model: ``config.derive`` applies it once, before any action runs.
"""
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

from custom_models.checkpoint import (describe_decoder_state, load_checkpoint_decoders, load_checkpoint_encoder,
                                      read_checkpoint, save_checkpoint)
from custom_models.encoders import (FeatureEncoder, build_encoder, guess_encoder_arch, imagenet_cache_path,
                                    imagenet_weights_cached, load_encoder_state, normalise_encoder_state,
                                    read_state_file, tapped_state, weights_name)
from custom_models.flows import build_decoders
from utils.atomic import atomic_write
from utils.calibration import CALIBRATION_KEY
from utils.errors import CflowError
from utils.export_onnx import model_metadata
from utils.model_kinds import is_exported

COMPACT_FORMAT = 'cflow-ad-compact/1'
REDUNDANT_SUFFIX = '.w_perm_inv'
SETTING_KEYS = ('enc_arch', 'dec_arch', 'pool_layers', 'coupling_blocks', 'input_size', 'norm_mean', 'norm_std')


@dataclass
class LoadedModel:
    encoder: FeatureEncoder
    decoders: List[torch.nn.Module]
    settings: dict                  # SETTING_KEYS
    calibration: Optional[dict]     # utils/calibration.py's record, or None

    def to(self, device: str) -> 'LoadedModel':
        """The encoder and decoders moved to ``device`` (in place; returns self)."""
        self.encoder.to(device)
        self.decoders = [d.to(device) for d in self.decoders]
        return self


def encoder_checksum(arch: str, state: Dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tapped network's tensors (names and bytes, sorted by name; a classifier head excluded)."""
    digest = hashlib.sha256()
    state = tapped_state(arch, state)
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def stock_imagenet_checksum(arch: str) -> Optional[str]:
    """Checksum of the ImageNet encoder in the torch hub cache, or None where it is not there."""
    if not imagenet_weights_cached(arch):
        return None
    state = read_state_file(imagenet_cache_path(arch), 'pretrained weights file')
    return encoder_checksum(arch, normalise_encoder_state(arch, state))


# ----------------------------------------------------------------------------------
# Reading


def checkpoint_settings(state: dict, preferred_arch: Optional[str] = None) -> Optional[dict]:
    """What an authors' checkpoint's tensors tell: encoder, pool layers, coupling blocks and decoder
    kind (not the input size or normalisation, which no tensor holds); None where they cannot tell.
    ``preferred_arch`` (the -enc given) wins where the tensors fit it too (two EfficientNet-B5 names
    share every tensor)."""
    arch = guess_encoder_arch(state['encoder_state_dict'], preferred_arch)
    desc = describe_decoder_state(state['decoder_state_dict'][0]) if state['decoder_state_dict'] else {}
    if arch is None or not desc.get('channels'):
        return None
    return dict(enc_arch=arch, pool_layers=len(state['decoder_state_dict']), coupling_blocks=desc['blocks'],
                dec_arch='freia-cflow' if desc['conditional'] else 'freia-flow')


def stated_settings(path: str, weights_architecture: bool = True,
                    preferred_arch: Optional[str] = None) -> Tuple[dict, Optional[dict]]:
    """(settings, calibration or None) that a model file states, read without building the model:
    a compact file's or an ONNX export's metadata; a calibrated .pt's recorded settings; an
    uncalibrated one's architecture from its tensors (through a memory map, so the weights are not
    read), unless ``weights_architecture`` is False (norm-test: the flags say it, as published, and
    the loader checks each against the weights). What cannot be told is left out ({} for a .pt that
    is not a readable checkpoint: its full load reports why)."""
    if not os.path.isfile(path):
        raise CflowError(f'model file {path} does not exist: check the path')
    if path.endswith('.safetensors'):
        return compact_header(path)
    if is_exported(path):
        return model_metadata(path)
    try:
        state = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except Exception:  # not a zip-format file, or not a checkpoint
        return {}, None
    if not isinstance(state, dict) or 'encoder_state_dict' not in state or 'decoder_state_dict' not in state:
        return {}, None
    calibration = state.get(CALIBRATION_KEY)
    if calibration is not None:
        return dict(calibration['settings']), calibration
    return (checkpoint_settings(state, preferred_arch) or {}) if weights_architecture else {}, None


def read_model(path: str, defaults: dict, weights_architecture: bool = True) -> LoadedModel:
    """Load a .pt or .safetensors model on the CPU.

    ``defaults``: settings for what the file does not state (an uncalibrated authors' checkpoint
    holds no input size or normalisation). Its architecture is taken from its weights unless
    ``weights_architecture`` is False: then ``defaults`` say it and every mismatch is an error
    naming expected and found (norm-test, as ``stated_settings`` explains).
    """
    if path.endswith('.safetensors'):
        return read_compact(path)
    state = read_checkpoint(path)
    calibration = state.get(CALIBRATION_KEY)
    if calibration is not None:
        stated = dict(calibration['settings'])
    elif weights_architecture:
        stated = checkpoint_settings(state, defaults.get('enc_arch'))
        if stated is None:
            raise CflowError(f'checkpoint {path}: cannot tell its encoder or decoders from the weights')
    else:
        stated = {}
    found = {**defaults, **stated}
    encoder = build_encoder(found['enc_arch'], found['pool_layers'], 'none')
    load_checkpoint_encoder(state, path, encoder)
    decoders = build_decoders(found['dec_arch'], encoder.pool_dims, found['coupling_blocks'])
    load_checkpoint_decoders(state, path, decoders)
    return LoadedModel(encoder, decoders, found, calibration)


def compact_header(path: str) -> Tuple[dict, Optional[dict]]:
    """(settings, calibration or None) in a compact file's header (the tensors are not read)."""
    from safetensors import safe_open
    if not os.path.isfile(path):
        raise CflowError(f'model file {path} does not exist: check the path')
    try:
        with safe_open(path, framework='pt') as f:
            meta = f.metadata() or {}
        return json.loads(meta['settings']), (json.loads(meta['calibration']) if 'calibration' in meta else None)
    except Exception as exc:  # a broken header, or not our file
        raise CflowError(f'{path} is not a CFLOW-AD compact model file ({type(exc).__name__}: {exc})') from None


def read_compact(path: str) -> LoadedModel:
    from safetensors import safe_open
    if not os.path.isfile(path):
        raise CflowError(f'model file {path} does not exist: check the path')
    try:
        with safe_open(path, framework='pt') as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for a broken header
        raise CflowError(f'{path} is not a readable safetensors file ({exc})') from None
    if meta.get('format') != COMPACT_FORMAT:
        raise CflowError(f'{path} is not a CFLOW-AD compact model file (format {meta.get("format")!r})')
    settings = json.loads(meta['settings'])
    calibration = json.loads(meta['calibration']) if 'calibration' in meta else None
    encoder_info = json.loads(meta['encoder'])
    arch = settings['enc_arch']
    if encoder_info['stored']:
        encoder = build_encoder(arch, settings['pool_layers'], 'none')
        load_encoder_state(encoder, {k[len('encoder.'):]: v for k, v in tensors.items() if k.startswith('encoder.')},
                           f'model file {path}')
    else:  # the stock ImageNet network: downloaded or from the hub cache, then checked
        encoder = build_encoder(arch, settings['pool_layers'], 'imagenet')
        found = encoder_checksum(arch, encoder.net.state_dict())
        if found != encoder_info['sha256']:
            raise CflowError(f'the ImageNet weights of {arch} on this machine (SHA-256 {found[:12]}...) are not the '
                             f'ones {path} was made with ({encoder_info["sha256"][:12]}...): put the right '
                             f'{os.path.basename(imagenet_cache_path(arch))} into the torch hub cache')
    decoders = build_decoders(settings['dec_arch'], encoder.pool_dims, settings['coupling_blocks'])
    for l, decoder in enumerate(decoders):
        prefix = f'decoder.{l}.'
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        for key in [k for k in decoder.state_dict() if k.endswith(REDUNDANT_SUFFIX)]:
            w_perm = state[key[:-len(REDUNDANT_SUFFIX)] + '.w_perm']
            state[key] = w_perm.t().contiguous()  # FrEIA's w_perm_inv is exactly w_perm^T
        decoder.load_state_dict(state, strict=True)
    return LoadedModel(encoder, decoders, settings, calibration)


# ----------------------------------------------------------------------------------
# Writing


def save_compact(path: str, model: LoadedModel) -> dict:
    """Write the compact file (atomically); returns what it stored."""
    from safetensors.torch import save_file
    tensors = {}
    for l, decoder in enumerate(model.decoders):
        for key, value in decoder.state_dict().items():
            if not key.endswith(REDUNDANT_SUFFIX):
                tensors[f'decoder.{l}.{key}'] = value.detach().cpu().contiguous()
    encoder_state = tapped_state(model.settings['enc_arch'], model.encoder.net.state_dict())
    checksum = encoder_checksum(model.settings['enc_arch'], encoder_state)
    stock = stock_imagenet_checksum(model.settings['enc_arch'])
    stored = checksum != stock
    if stored:
        tensors.update({f'encoder.{k}': v.detach().cpu().contiguous() for k, v in encoder_state.items()})
    arch = model.settings['enc_arch']
    meta = {'format': COMPACT_FORMAT, 'settings': json.dumps(model.settings),
            'encoder': json.dumps({'stored': stored, 'arch': arch,
                                   'weights': 'stored' if stored else weights_name(arch), 'sha256': checksum})}
    if model.calibration is not None:
        meta['calibration'] = json.dumps(model.calibration)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return {'encoder_stored': stored, 'tensors': len(tensors)}


def write_model(path: str, model: LoadedModel) -> None:
    """An authors'-format .pt (calibration as an extra key) or a compact .safetensors, by extension."""
    if path.endswith('.safetensors'):
        save_compact(path, model)
    elif path.endswith(('.pt', '.pth')):
        extra = {CALIBRATION_KEY: model.calibration} if model.calibration is not None else None
        save_checkpoint(path, model.encoder, model.decoders, extra=extra)
    else:
        raise CflowError(f'--output {path}: name it .pt (authors\' format) or .safetensors (compact)')
