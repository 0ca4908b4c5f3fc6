"""pick_device: a requested accelerator that torch cannot use is a DeviceUnavailable error with a neutral
message (the CLI and QGIS add how to change the option, each in its own words)."""
from __future__ import annotations

import pytest
import torch

from s2seg.core.errors import ConfigError, DeviceUnavailable
from s2seg.core.models import pick_device


@pytest.mark.parametrize(("device", "message"), [
    ("cuda", "device 'cuda' was requested but no CUDA GPU is available to torch"),
    ("mps", "device 'mps' was requested but torch has no usable Apple-silicon GPU (MPS)"),
])
def test_unavailable_device_is_a_neutral_device_unavailable(monkeypatch, device, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailable) as info:
        pick_device(device)
    assert str(info.value) == message  # no "--device" wording: that is the front ends' to add
    assert isinstance(info.value, ConfigError)
