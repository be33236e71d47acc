"""A trial's policy as plain data: what it freezes (a frozen range, a set of blocks or a trained window), the layer
decay and the thaw it trains with, and the adapter on its frozen blocks; ``Policy.label`` is its one name.

The trial builds its Policy once, from its resolved freeze and its TrainConfig (``tune.training.policy.plan``, with
what its model makes of them: a thaw only where a block thaws, a decay only where two blocks or more train, an
adapter only on frozen blocks); its MLflow run logs it as params (``Policy.params``, the label among them: the run's
name and its ``policy`` param) and the records give it back from those params (``Policy.from_params``). The report names
and groups trials by ``label`` and tells a hard freeze by ``is_hard``. Plain Python: no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Adapter", "Policy"]

# the params a trial's run logs its Policy's fields under, beside its labels (``freeze_range``, ``policy``)
PREFIX = "policy."


@dataclass(frozen=True)
class Adapter:
    """The adapter on a trial's frozen blocks: its kind (``lora``), rank, scale's alpha and dropout
    (``train.lora_rank``, ``lora_alpha``, ``lora_dropout``; tune.training.adapter)."""

    kind: str = "lora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0


@dataclass(frozen=True)
class Policy:
    """How a trial's blocks train, as data. ``frozen``: the frozen blocks, sorted; ``window``: the trained window
    [a, b) that freezes them, where it stops short of the head (a window that reaches the head freezes the prefix
    [0, a), the hard freeze it equals, and has none); ``decay``: the layer decay in effect (1: none); ``thaw``: the
    epochs done when the frozen blocks start to thaw (0: never), ``thaw_every``: the epochs between two blocks'
    thaws (0: all at once); ``adapter``: the adapter on the frozen blocks (None: none)."""

    frozen: tuple[int, ...] = ()
    window: tuple[int, int] | None = None
    decay: float = 1.0
    thaw: int = 0
    thaw_every: int = 0
    adapter: Adapter | None = None

    @property
    def start(self) -> int:
        return self.frozen[0] if self.frozen else 0

    @property
    def stop(self) -> int:
        return self.frozen[-1] + 1 if self.frozen else 0

    @property
    def freeze_range(self) -> str:
        """The frozen blocks: ``[start, stop)`` for a contiguous range (YOLOv5's ``--freeze N`` is ``[0, N)``), else
        the blocks, ``{0, 2}``."""
        if self.frozen == tuple(range(self.start, self.stop)):
            return f"[{self.start}, {self.stop})"
        return "{" + ", ".join(str(i) for i in self.frozen) + "}"

    @property
    def label(self) -> str:
        """What the trial is called (its run's name and ``policy`` param, the report's rows): what it freezes (a
        window's ``train [a, b)``, else ``freeze_range``), then what it adds to hard freezing: ``[0, 5)``,
        ``[0, 5) thaw@2 every 1``, ``[2, 6) decay 0.7``, ``[0, 3) lora r8``, ``train [2, 4) lora r4 alpha 32 dropout
        0.1`` (an adapter's alpha and dropout where they are not the defaults, 16 and 0)."""
        parts = [f"train [{self.window[0]}, {self.window[1]})" if self.window is not None else self.freeze_range]
        if self.thaw:
            parts.append(f"thaw@{self.thaw}" + (f" every {self.thaw_every}" if self.thaw_every else ""))
        if self.decay != 1:
            parts.append(f"decay {self.decay:g}")
        if self.adapter is not None:
            adapter = self.adapter
            parts += [f"{adapter.kind} r{adapter.rank}", *([f"alpha {adapter.alpha:g}"] if adapter.alpha != 16 else []),
                      *([f"dropout {adapter.dropout:g}"] if adapter.dropout else [])]
        return " ".join(parts)

    @property
    def is_hard(self) -> bool:
        """A plain hard freeze: its frozen blocks and nothing more (no window short of the head, no decay, thaw or
        adapter); its label is its ``freeze_range``."""
        return self.window is None and self.decay == 1 and not self.thaw and self.adapter is None

    def params(self) -> dict[str, Any]:
        """What a trial's run logs of its policy: the labels (``freeze_range``, ``policy``) and the fields, each a
        ``policy.`` param (``from_params`` reads them back)."""
        adapter = self.adapter
        return {"freeze_range": self.freeze_range, "policy": self.label,
                f"{PREFIX}frozen": list(self.frozen), f"{PREFIX}window": list(self.window) if self.window else None,
                f"{PREFIX}decay": self.decay, f"{PREFIX}thaw": self.thaw, f"{PREFIX}thaw_every": self.thaw_every,
                f"{PREFIX}adapter": adapter.kind if adapter else "none",
                **({f"{PREFIX}{adapter.kind}_{key}": getattr(adapter, key) for key in ("rank", "alpha", "dropout")}
                   if adapter else {})}

    @classmethod
    def from_params(cls, params: Mapping[str, Any], frozen: tuple[int, ...] = ()) -> Policy:
        """The policy a run logged (``params``, typed: tune.reporting.records.typed_params). A run without the
        ``policy.`` params (one a trial of another kind logged) gets the hard freeze of ``frozen`` with the decay,
        thaw and adapter its config params ask for (``layer_decay``, ``unfreeze_epoch``, ``unfreeze_every``,
        ``adapter``, ``lora_*``), as far as the params alone can tell what its model made of them."""
        if f"{PREFIX}frozen" not in params:
            return cls._from_config(params, frozen)
        window, kind = params.get(f"{PREFIX}window"), params.get(f"{PREFIX}adapter", "none")
        adapter = None if kind in (None, "none") else Adapter(
            kind, int(params[f"{PREFIX}{kind}_rank"]), float(params[f"{PREFIX}{kind}_alpha"]),
            float(params[f"{PREFIX}{kind}_dropout"]))
        return cls(frozen=tuple(int(i) for i in params[f"{PREFIX}frozen"]),
                   window=(int(window[0]), int(window[1])) if window else None,
                   decay=float(params.get(f"{PREFIX}decay", 1.0)), thaw=int(params.get(f"{PREFIX}thaw", 0)),
                   thaw_every=int(params.get(f"{PREFIX}thaw_every", 0)), adapter=adapter)

    @classmethod
    def _from_config(cls, params: Mapping[str, Any], frozen: tuple[int, ...]) -> Policy:
        def number(key: str, default: float) -> float:
            try:
                return float(params.get(key, default))
            except (TypeError, ValueError):
                return default

        thaw, epochs = int(number("unfreeze_epoch", 0)), number("epochs", float("inf"))
        thaws = bool(frozen) and 0 < thaw < epochs
        adapter = (Adapter("lora", int(number("lora_rank", 8)), number("lora_alpha", 16.0), number("lora_dropout", 0.0))
                   if frozen and params.get("adapter") == "lora" else None)
        return cls(frozen=tuple(frozen), decay=number("layer_decay", 1.0), thaw=thaw if thaws else 0,
                   thaw_every=int(number("unfreeze_every", 0)) if thaws else 0, adapter=adapter)
