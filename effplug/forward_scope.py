"""``OutermostForward``: hooks on every module of a model that say when the outermost call starts and ends.

The activation engine pushes its saved-tensor hooks for exactly that span, and DIR-Net's distillation runs the
teacher once per outer forward; both used to keep their own depth counter.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


class OutermostForward:
    """``begins(module, args, kwargs) -> bool`` decides whether an outermost call opens a scope (no scope: the
    call and everything inside it pass untouched); ``on_start(module, args, kwargs)`` and ``on_end()`` run at
    its edges, ``on_start`` with the outer module's label already on ``stack``. ``stack`` holds
    ``label(name, module)`` of every module running inside the scope, innermost last."""

    def __init__(self, model: nn.Module, on_start: Callable, on_end: Callable,
                 begins: Callable = lambda module, args, kwargs: True,
                 label: Callable = lambda name, module: name):
        self.model, self.on_start, self.on_end, self.begins, self.label = model, on_start, on_end, begins, label
        self.stack: list = []
        self._handles: list = []

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> OutermostForward:
        if not self._handles:
            for name, module in self.model.named_modules():
                self._handles.append(module.register_forward_pre_hook(self._enter(self.label(name, module)),
                                                                      with_kwargs=True))
                self._handles.append(module.register_forward_hook(self._leave, always_call=True))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.stack.clear()

    def _enter(self, label):
        def hook(module, args, kwargs):
            if self.stack:
                self.stack.append(label)
            elif self.begins(module, args, kwargs):
                self.stack.append(label)
                self.on_start(module, args, kwargs)
            return None

        return hook

    def _leave(self, module, args, output):
        if not self.stack:
            return None
        self.stack.pop()
        if not self.stack:
            self.on_end()
        return None
