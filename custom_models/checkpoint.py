"""Checkpoints in the authors' format, loaded with checks the authors' loader lacks.

Format (what the published ``save_weights`` writes and the released files hold)::

    {'encoder_state_dict': encoder.net.state_dict(),
     'decoder_state_dict': [decoder.state_dict() for decoder in decoders]}

A MobileNet's encoder state is that of its ``.features`` (keys start at ``0.``). The
published loader uses ``strict=False``, so a checkpoint of another architecture loads
"fine" and gives wrong scores; here every mismatch is an error naming expected vs found.
"""
import re
from typing import List, Optional

import torch

from custom_models.encoders import FeatureEncoder, load_encoder_state, read_state_file
from utils.atomic import atomic_write
from utils.errors import CflowError


def save_checkpoint(path: str, encoder: FeatureEncoder, decoders: List[torch.nn.Module],
                    extra: Optional[dict] = None) -> None:
    """Write an authors'-format checkpoint (atomically); ``extra`` adds keys beside the two
    published ones (e.g. calibration), which the authors' loader never reads."""
    state = {'encoder_state_dict': encoder.net.state_dict(),
             'decoder_state_dict': [decoder.state_dict() for decoder in decoders], **(extra or {})}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def describe_decoder_state(state: dict) -> dict:
    """Channels, coupling blocks and whether it is conditional, read off a flow state dict."""
    blocks = sorted({int(m.group(1)) for k in state for m in [re.match(r'module_list\.(\d+)\.', k)] if m})
    if not blocks or 'module_list.0.w_perm' not in state:
        return {'channels': None, 'blocks': 0, 'conditional': None}
    channels = state['module_list.0.w_perm'].shape[0]
    split = channels - channels // 2
    in_features = state['module_list.0.subnet.0.weight'].shape[1]
    return {'channels': channels, 'blocks': len(blocks), 'conditional': in_features != split,
            'condition_vec': in_features - split}


def _decoder_text(desc: dict) -> str:
    kind = 'freia-cflow' if desc['conditional'] else 'freia-flow'
    return f"{desc['channels']} channels, {desc['blocks']} coupling blocks, {kind}"


def _fix(found: dict, expected: dict) -> str:
    """The flags to pass where only the blocks or the decoder kind differ; else what to check."""
    if found['channels'] != expected['channels']:
        return 'check -enc and -pl against the checkpoint'
    fixes = []
    if found['blocks'] != expected['blocks']:
        fixes.append(f"-cb {found['blocks']}")
    if found['conditional'] != expected['conditional']:
        fixes.append(f"-dec {'freia-cflow' if found['conditional'] else 'freia-flow'}")
    return f'pass {" ".join(fixes)}' if fixes else 'check -cb and -dec against the checkpoint'


def check_decoder_states(states: list, decoders: List[torch.nn.Module], source: str) -> None:
    """Fail with expected vs found unless ``states`` fit ``decoders`` one to one."""
    if not isinstance(states, (list, tuple)):
        raise CflowError(f'{source} has no list of decoder state dicts: not a CFLOW checkpoint')
    if len(states) != len(decoders):
        found = ', '.join(str(describe_decoder_state(s)['channels']) for s in states)
        raise CflowError(f'{source} holds {len(states)} decoders (channels {found}) but the model has '
                         f'{len(decoders)} pool layers: pass -pl {len(states)} (and the matching -enc)')
    for layer, (state, decoder) in enumerate(zip(states, decoders)):
        found, expected = describe_decoder_state(state), describe_decoder_state(decoder.state_dict())
        if found != expected:
            raise CflowError(f'{source}: decoder {layer} has {_decoder_text(found)}, but the model expects '
                             f'{_decoder_text(expected)}: {_fix(found, expected)}')


def read_checkpoint(path: str) -> dict:
    """The state of an authors'-format checkpoint file, checked for its two entries."""
    state = read_state_file(path, 'checkpoint')
    if not isinstance(state, dict) or 'decoder_state_dict' not in state or 'encoder_state_dict' not in state:
        raise CflowError(f'checkpoint {path} is not a CFLOW checkpoint (it needs encoder_state_dict '
                         f'and decoder_state_dict)')
    return state


def load_checkpoint_encoder(state: dict, path: str, encoder: FeatureEncoder) -> None:
    """Load the encoder part; done before the decoders are built, as its check is the cheap one."""
    load_encoder_state(encoder, state['encoder_state_dict'], f'checkpoint {path}')


def load_checkpoint_decoders(state: dict, path: str, decoders: List[torch.nn.Module]) -> None:
    check_decoder_states(state['decoder_state_dict'], decoders, f'checkpoint {path}')
    for decoder, decoder_state in zip(decoders, state['decoder_state_dict']):
        decoder.load_state_dict(decoder_state, strict=True)

