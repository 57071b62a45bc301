"""A benchmark's results as data: one ``Row`` per measured thing, formatted only when printed.

Tests and ``--rows-json`` read the numbers (``value``, ``ratio``, ``data``), never the printed text.
"""
import json
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

Number = Union[float, Tuple[float, ...]]

# how a value of each unit is printed; a tuple value prints its parts joined by ' / '
FORMATS = {'img/s': '{:.1f} img/s', 's': '{:.2f} s', 'ms': '{:.2f} ms', 'MB': '{:.1f} MB', 'px': '{:.2f} px',
           'F1': 'F1 {:.3f}', 'pt': '{:+.2f}', '%': '{:.2f} %', 'h': '{:.0f} h', '': '{:.2g}'}
SPREADS = {'img/s': '{:.1f}', 's': '{:.2f}', 'ms': '{:.2f}'}


@dataclass
class Row:
    name: str
    value: Optional[Number] = None                  # the figure, in ``unit``
    unit: str = ''
    spread: Optional[Tuple[float, float]] = None    # (min, max) of the value over rounds
    ratio: Optional[float] = None                   # median paired per-round ratio to the section's baseline
    ratio_spread: Optional[Tuple[float, float]] = None
    baseline: bool = False                          # the section's baseline (ratio 1 by definition)
    notes: str = ''
    data: Dict[str, object] = field(default_factory=dict)  # every other figure the notes quote, by name

    def shown_value(self) -> str:
        if self.value is None:
            return ''
        parts = self.value if isinstance(self.value, (tuple, list)) else (self.value,)
        text = ' / '.join(FORMATS[self.unit].format(v) for v in parts)
        if self.spread is not None:
            lo, hi = (SPREADS.get(self.unit, '{:.2f}').format(v) for v in self.spread)
            text += f' [{lo}-{hi}]'
        return text

    def shown_ratio(self) -> str:
        if self.baseline:
            return 'baseline'
        if self.ratio is None:
            return ''
        text = f'{self.ratio:.2f}x'
        return text + (f' [{self.ratio_spread[0]:.2f}-{self.ratio_spread[1]:.2f}]' if self.ratio_spread else '')


def table(rows: Sequence[Row]) -> str:
    """The rows as the bench prints them: what, value, ratio, notes."""
    width = max([len(r.name) for r in rows] + [4])
    lines = [f'{"what":<{width}}  {"value":>16}  {"ratio":>16}  notes']
    lines += [f'{r.name:<{width}}  {r.shown_value():>16}  {r.shown_ratio():>16}  {r.notes}' for r in rows]
    return '\n'.join(lines)


def write_rows(path: str, rows: Sequence[Row]) -> None:
    from utils.atomic import atomic_write_text
    atomic_write_text(path, json.dumps([asdict(r) for r in rows], indent=1))


def read_rows(path: str) -> List[Row]:
    def as_row(d):
        for key in ('value', 'spread', 'ratio_spread'):
            if isinstance(d.get(key), list):
                d[key] = tuple(d[key])
        return Row(**d)
    return [as_row(d) for d in json.load(open(path))]
