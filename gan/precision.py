"""Mixed precision policy: bf16 autocast on CUDA where supported, else fp16 with a
GradScaler per optimizer; CPU always trains in fp32 (CPU autocast is slower for these
small convs and changes numerics the tests pin)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def amp_dtype(device: torch.device, enabled: bool = True, bf16_supported: bool | None = None) -> torch.dtype | None:
    """The autocast dtype for `device`, or None for plain fp32."""
    if not enabled or device.type != "cuda":
        return None
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    return torch.bfloat16 if bf16_supported else torch.float16


class Precision:
    """Autocast context plus one GradScaler each for D and G (only fp16 needs scaling)."""

    def __init__(self, device: torch.device, dtype: torch.dtype | None) -> None:
        self.device = device
        self.dtype = dtype
        scale = dtype == torch.float16
        self.scaler_d = torch.amp.GradScaler(device.type, enabled=scale)
        self.scaler_g = torch.amp.GradScaler(device.type, enabled=scale)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.dtype is None:
            yield
        else:
            with torch.autocast(self.device.type, dtype=self.dtype):
                yield

    def state_dict(self) -> dict[str, dict]:
        return {"d": self.scaler_d.state_dict(), "g": self.scaler_g.state_dict()}

    def load_state_dict(self, state: dict[str, dict]) -> None:
        if state.get("d"):
            self.scaler_d.load_state_dict(state["d"])
        if state.get("g"):
            self.scaler_g.load_state_dict(state["g"])
