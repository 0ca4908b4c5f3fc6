"""Patch batches for the model: host gathering (CPU) and device-resident chunks (accelerators) agree."""
import numpy as np
import pytest
import torch

from s2seg.core.feed import Normaliser, PatchFeed, patches_with_data, to_device, widen
from s2seg.core.models.card import ModelCard
from s2seg.core.nomenclature import BIGEARTHNET19_COLOURS, BIGEARTHNET19_NAMES
from s2seg.core.sentinel2 import discover

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def bandset(small_tile):
    return discover(small_tile)


def card(**fields):
    base = dict(name="feed-test", format="builtin", bands=("B02", "B04", "B08", "B11"), patch_size=20,
                class_names=BIGEARTHNET19_NAMES[:3], class_colours=BIGEARTHNET19_COLOURS[:3], input_scale="reflectance")
    return ModelCard(**{**base, **fields})


def chunk_data(dtype, stride=10, ny=5, nx=7, seed=0):
    rng = np.random.default_rng(seed)
    shape = (4, (ny + 1) * stride, (nx + 1) * stride)
    if dtype == np.uint16:  # the whole range: values above 32767 must survive the int16 transport
        return rng.integers(0, 65536, shape, dtype=np.uint16)
    return (rng.random(shape, dtype=np.float32) * 12000).astype(np.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [np.uint16, np.float32], ids=["uint16", "float32"])
@pytest.mark.parametrize("stats", [False, True], ids=["scaled", "standardised"])
def test_resident_batches_equal_host_batches(bandset, device, dtype, stats):
    device = torch.device(device)
    model_card = card(mean=(0.1, 0.2, 0.3, 0.4), std=(0.05, 0.1, 0.15, 0.2)) if stats else card()
    data = chunk_data(dtype)
    valid = np.ones(data.shape[1:], dtype=bool)
    valid[:, :25] = False  # the first patch columns hold nodata only
    todo = np.argwhere(patches_with_data(valid, 5, 7, 10))
    host = PatchFeed(data, todo, 20, 10, Normaliser(model_card, bandset, torch.device("cpu")), torch.device("cpu"))
    resident = PatchFeed(data, todo, 20, 10, Normaliser(model_card, bandset, device), device, resident=True)
    assert not host.resident and resident.resident and host.count == resident.count == len(todo) == 5 * 6
    for start, stop in [(0, 7), (7, 8), (8, 30)]:
        expected = host.batch(start, stop)
        got = resident.batch(start, stop)
        assert got.shape == (stop - start, 4, 20, 20) and got.dtype == torch.float32 and got.device.type == device.type
        torch.testing.assert_close(got.cpu(), expected, rtol=0, atol=0)
        ky, kx = resident.indices(start, stop)
        assert ky.device.type == device.type and ky.dtype == torch.int64
        np.testing.assert_array_equal(np.stack([ky.cpu().numpy(), kx.cpu().numpy()], 1), todo[start:stop])
    # Patch (ky, kx) is the P × P window at (ky·S, kx·S), offset and scaled like the normaliser says.
    ky, kx = todo[3]
    raw = data[:, ky * 10: ky * 10 + 20, kx * 10: kx * 10 + 20].astype(np.float64)
    offsets = np.array([bandset.offset(b) for b in model_card.bands])[:, None, None]
    want = (raw + offsets) * model_card.scale_factor
    if stats:
        want = (want - np.array(model_card.mean)[:, None, None]) / np.array(model_card.std)[:, None, None]
    np.testing.assert_allclose(host.batch(3, 4)[0].numpy(), want, rtol=1e-5, atol=1e-5)


def test_host_gathering_is_for_the_cpu_only(bandset):
    meta = torch.device("meta")
    with pytest.raises(ValueError, match="for the CPU only"):
        PatchFeed(chunk_data(np.uint16), np.zeros((1, 2), dtype=np.int64), 20, 10,
                  Normaliser(card(), bandset, torch.device("cpu")), meta, resident=False)


@pytest.mark.parametrize("device", DEVICES)
def test_uint16_travels_as_its_bit_pattern(device):
    values = np.array([0, 1, 32767, 32768, 65535], dtype=np.uint16)
    moved = to_device(values, torch.device(device))
    assert moved.dtype == torch.int16
    assert widen(moved).cpu().tolist() == values.tolist()
    floats = np.array([0.5, 70000.0], dtype=np.float32)
    assert widen(to_device(floats, torch.device(device))).cpu().tolist() == floats.tolist()


def test_patches_with_data_matches_a_patch_by_patch_check():
    rng = np.random.default_rng(1)
    ny, nx, s = 6, 9, 4
    valid = rng.random(((ny + 1) * s, (nx + 1) * s)) > 0.97
    got = patches_with_data(valid, ny, nx, s)
    want = np.array([[valid[y * s: y * s + 2 * s, x * s: x * s + 2 * s].any() for x in range(nx)] for y in range(ny)])
    assert got.any() and not got.all()
    np.testing.assert_array_equal(got, want)
