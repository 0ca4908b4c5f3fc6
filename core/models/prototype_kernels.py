"""Compiled CPU kernels of the built-in model (:mod:`.builtin`): features → prototype scores → softmax →
class distributions in one pass over the pixels (or, when probabilities are not written, straight on to
the confidence products in the same pass: :func:`mixture_confidence`), and the open-water box mean.

The pass reads the five reflectance bands and the open-water mean (a neighbourhood feature, made
before it) and computes each block's seven features itself (:func:`_run_features`), with the same
float32 operations as the model's torch steps, so the same bits (tests): no ``(N, 8, H·W)`` feature
array and its temporaries are allocated, filled and read back per strip (~1.5 GB of fresh memory,
touched once, on a 5040² tile). It takes the model's own tables (its affine score map and
class-distribution matrix, built once from ``_PROTOTYPES`` and the feature scales) and reflectance
floor, so what changes there flows through unchanged; the features it computes (:data:`FEATURES`)
are checked against the model's list.

torch evaluates the prototype mixture as separate whole-image steps (a ``(K, F + 1) × (F + 1, n)``
product, max, exp, sum, a ``(C, K) × (K, n)`` product, a division): each step writes and reads a
``K × n`` or ``C × n`` float32 array, so the model is bound by memory traffic (~0.8 s for a 1470²
chunk on one core, measured). The kernel below keeps one block of :data:`BLOCK` pixels in cache
from the features to the probabilities, and evaluates ``exp`` with a polynomial numba can vectorise
(numba has no vectorised ``exp`` without Intel's SVML). It is generic over the model's tables: any
number of prototypes and classes; each prototype's class distribution is a sparse row.

Per-pixel results do not depend on where a pixel sits in the image or in a block: every block is
padded to :data:`BLOCK` pixels (no scalar tail loop: every pixel runs the same vector code), the only
fast-math flag is ``contract`` (a multiply and its add fused into one FMA, never reordered), and a
prototype's weight is cut to 0 pixel by pixel (:data:`WEIGHT_CUTOFF`), not block by block. The features
are made along runs of any length (a block crosses output rows), vector code and a scalar tail, which is
safe: their operations (compare, add, subtract, divide, halve) round alike in both. So chunk
sizes, strip heights and thread counts give the same bits (the card's receptive-field promise).
Without numba (or ``S2SEG_NO_NUMBA=1``) and on accelerators the model's torch path runs; the two
agree within 1e-5.
"""
from __future__ import annotations


import os
from types import ModuleType

import numpy as np
import torch

from .. import kernels, uncertainty
from ..buffers import empty

#: Pixels per block: the block's ``K`` scores and ``C`` outputs (~55 × 4 B per pixel) stay in L2.
BLOCK = 256
#: A prototype scoring more than this far below a pixel's best one gets weight 0 there (its true weight, under
#: e⁻²⁴ ≈ 4e-11 of the best's, is below float32's resolution of the total, which is ≥ 1): per pixel, so the bits do
#: not depend on the block; a block where every pixel is that far from prototype k skips k's work altogether.
WEIGHT_CUTOFF = -24.0
#: Below this many pixels one thread is quicker than handing the work out.
PARALLEL_MIN_PIXELS = 1 << 16

# Contracted multiply-adds (FMA: 3–6 % less time for the fused pass, measured): one rounding instead of two,
# and no other fast-math flag (no reassociation), so the vector code's bits do not depend on the pixel's lane.
_njit = kernels.njit(frozenset({"contract"}))


@_njit
def _mixture_block(x, affine, indptr, classes, weights, z, best, inv_total, acc, bits):  # pragma: no cover - compiled by numba
    """One block's prototype mixture: from its features ``x (F, BLOCK)`` (F = 7, :data:`FEATURES`) the prototype
    scores ``zₖ = affine[k, F] + Σ_f affine[k, f] · x_f`` (the model's own affine map, summed in feature order),
    ``wₖ = exp(zₖ − max z)`` (0 below :data:`WEIGHT_CUTOFF`), ``inv_total = 1 / Σₖ wₖ`` and ``acc[c] = Σₖ wₖ T_kc``
    with ``T`` in compressed rows (``indptr``, ``classes``, ``weights``): the class probabilities are
    ``acc[c] · inv_total``. ``z``, ``bits``: scratch."""
    n_protos = affine.shape[0]
    n_classes = acc.shape[0]
    f32 = np.float32
    # The seven terms written out, so that a score and the running max stay in registers: one pass over the block
    # per prototype, not one per feature (57 → 49–50 ns per pixel for the fused pass, the same bits).
    x0, x1, x2, x3, x4, x5, x6 = x[0], x[1], x[2], x[3], x[4], x[5], x[6]
    for k in range(n_protos):
        zk = z[k]
        a0, a1, a2, a3, a4, a5, a6, bias = (affine[k, 0], affine[k, 1], affine[k, 2], affine[k, 3], affine[k, 4],
                                            affine[k, 5], affine[k, 6], affine[k, 7])
        for b in range(BLOCK):
            v = bias + a0 * x0[b]
            v = v + a1 * x1[b]
            v = v + a2 * x2[b]
            v = v + a3 * x3[b]
            v = v + a4 * x4[b]
            v = v + a5 * x5[b]
            v = v + a6 * x6[b]
            zk[b] = v
            best[b] = v if k == 0 else max(best[b], v)
    for b in range(BLOCK):
        inv_total[b] = f32(0.0)
    for c in range(n_classes):
        ac = acc[c]
        for b in range(BLOCK):
            ac[b] = f32(0.0)
    # exp(v), v ≤ 0: 2ⁿ · exp(r), n = round(v / ln 2), |r| ≤ ln 2 / 2, exp(r) by its Taylor series to r⁷ (relative
    # error < 2e-7), 2ⁿ from its exponent bits. Written out here (numba has no vectorised exp without Intel's SVML).
    log2e = f32(1.4426950408889634)
    ln2_hi = f32(0.693145751953125)  # ln 2 split so that n · ln2_hi is exact
    ln2_lo = f32(1.428606765330187e-06)
    cutoff = f32(WEIGHT_CUTOFF)
    half, one, zero = f32(0.5), f32(1.0), f32(0.0)
    scale = bits.view(np.float32)
    for k in range(n_protos):
        zk = z[k]
        near = 0
        for b in range(BLOCK):  # an integer count: LLVM vectorises it (a float max would need fast-math)
            near += np.int32(zk[b] - best[b] > cutoff)
        if near == 0:  # every pixel's weight is 0: nothing to add
            continue
        for b in range(BLOCK):
            v = max(zk[b] - best[b], cutoff)
            n = np.floor(v * log2e + half)
            r = (v - n * ln2_hi) - n * ln2_lo
            p = f32(1.0 / 5040.0)
            p = p * r + f32(1.0 / 720.0)
            p = p * r + f32(1.0 / 120.0)
            p = p * r + f32(1.0 / 24.0)
            p = p * r + f32(1.0 / 6.0)
            p = p * r + half
            p = p * r + one
            zk[b] = p * r + one if v > cutoff else zero
            bits[b] = (np.int32(n) + np.int32(127)) << np.int32(23)
        # 2ⁿ through its float view, in a loop of its own: read back in the loop that writes it, the pass ran at 46 or
        # 62–67 ns per pixel by process (memory layout), against a steady 47–52 in two loops.
        for b in range(BLOCK):
            w = zk[b] * scale[b]
            zk[b] = w
            inv_total[b] += w
        for j in range(indptr[k], indptr[k + 1]):
            ac, t = acc[classes[j]], weights[j]
            for b in range(BLOCK):
                ac[b] += t * zk[b]
    for b in range(BLOCK):
        inv_total[b] = one / inv_total[b]


#: The features :func:`_run_features` computes, row by row, from the bands B02, B03, B04, B08, B11 and the
#: open-water mean: the model's own (:data:`.builtin._FEATURES`; :class:`MixtureTables` checks they match).
FEATURES = ("ndvi", "mndwi", "ndbi", "visible", "nir", "open_water", "blue_red")


@_njit
def _block_scratch(n_features, n_protos, n_classes):  # pragma: no cover - compiled by numba
    """A block's features (padding 0), scores, max, 1 / Σ, class sums and exponent bits."""
    f32 = np.float32
    return (np.zeros((n_features, BLOCK), f32), np.empty((n_protos, BLOCK), f32), np.empty(BLOCK, f32),
            np.empty(BLOCK, f32), np.empty((n_classes, BLOCK), f32), np.empty(BLOCK, np.int32))


@_njit
def _run_features(bands, open_water, i0, n, floor, x, b0):  # pragma: no cover - compiled by numba
    """The features (:data:`FEATURES`) of input pixels ``i0 … i0+n-1`` of ``bands (5, npx)`` (B02, B03, B04, B08,
    B11) and ``open_water (npx)``, into columns ``b0 … b0+n-1`` of a block's ``x (7, BLOCK)``: the same float32
    operations in the same order as :meth:`.builtin.SpectralPrototypeNet.features`, so the same bits (tests):
    reflectances raised to ``floor`` (NaN stays NaN: the non-finite check sees it), each ratio ``(a − b) / (a + b)``,
    visible ``(green + red) · 0.5`` (no multiply-add that ``contract`` could fuse)."""
    b02, b03, b04, b08, b11 = bands[0], bands[1], bands[2], bands[3], bands[4]
    ndvi, mndwi, ndbi, visible, near, water, blue_red = x[0], x[1], x[2], x[3], x[4], x[5], x[6]
    half = np.float32(0.5)
    for j in range(n):
        i, b = i0 + j, b0 + j
        bl = b02[i]
        bl = floor if bl < floor else bl
        g = b03[i]
        g = floor if g < floor else g
        r = b04[i]
        r = floor if r < floor else r
        nr = b08[i]
        nr = floor if nr < floor else nr
        sw = b11[i]
        sw = floor if sw < floor else sw
        ndvi[b] = (nr - r) / (nr + r)
        mndwi[b] = (g - sw) / (g + sw)
        ndbi[b] = (sw - nr) / (sw + nr)
        visible[b] = (g + r) * half
        near[b] = nr
        water[b] = open_water[i]
        blue_red[b] = (bl - r) / (bl + r)


@_njit
def _features_pixels(bands, open_water, floor, out, p0, p1):  # pragma: no cover - compiled by numba
    """The features ``out (7, n)`` of pixels ``p0 … p1-1`` as the mixture kernels compute them (:func:`features`)."""
    x = np.empty((out.shape[0], BLOCK), np.float32)
    for s in range(p0, p1, BLOCK):
        nb = min(BLOCK, p1 - s)
        _run_features(bands, open_water, s, nb, floor, x, 0)
        for f in range(out.shape[0]):
            xf, of = x[f], out[f]
            for b in range(nb):
                of[s + b] = xf[b]


@_njit
def _mixture_pixels(bands, open_water, floor, affine, indptr, classes, weights, out, p0, p1):  # pragma: no cover - compiled by numba
    """Probabilities ``out (C, n)`` of pixels ``p0 … p1-1`` from ``bands (5, n)`` and ``open_water (n)``
    (:func:`_run_features`, :func:`_mixture_block`)."""
    n_protos, n_affine = affine.shape
    n_features = n_affine - 1
    n_classes = out.shape[0]
    x, z, best, inv_total, acc, bits = _block_scratch(n_features, n_protos, n_classes)
    for s in range(p0, p1, BLOCK):
        nb = min(BLOCK, p1 - s)
        _run_features(bands, open_water, s, nb, floor, x, 0)
        for f in range(n_features):  # padding: the features of the last partial block's missing pixels
            xf = x[f]
            for b in range(nb, BLOCK):
                xf[b] = np.float32(0.0)
        _mixture_block(x, affine, indptr, classes, weights, z, best, inv_total, acc, bits)
        for c in range(n_classes):
            ac, oc = acc[c], out[c]
            for b in range(nb):
                oc[s + b] = ac[b] * inv_total[b]


@_njit
def _mixture_confidence(bands, open_water, floor, width_in, row_off, col_off, valid, affine, indptr, classes,
                        weights, n_classes, class_out, maxprob, entropy, gap, bad, p0, p1):  # pragma: no cover - compiled by numba
    """Confidence products of output pixels ``p0 … p1-1`` of a window ``valid (h, w)`` whose pixel ``(y, x)`` is
    input pixel ``(row_off + y, col_off + x)`` of ``bands (5, H · width_in)`` and ``open_water (H · width_in)``:
    each block's features (:func:`_run_features`) and probabilities (:func:`_mixture_block`, the same values
    :func:`_mixture_pixels` writes) are folded class by class into the products by the confidence kernel's own
    functions (:mod:`..uncertainty`), so no ``(C, n)`` array exists. Products are flat ``(h · w)``; blocks without
    a valid pixel are not computed (nodata). ``bad[0]`` is set to 1 when a valid pixel's probabilities are not
    finite or do not sum to 1."""
    n_protos, n_affine = affine.shape
    n_features = n_affine - 1
    w = valid.shape[1]
    flat_valid = valid.reshape(-1)
    x, z, best, inv_total, acc, bits = _block_scratch(n_features, n_protos, n_classes)
    buf, mant, top1, top2, psum, plogp, arg = uncertainty._row_buffers(BLOCK)
    f32 = np.float32
    for s in range(p0, p1, BLOCK):
        nb = min(BLOCK, p1 - s)
        any_valid = False
        for b in range(nb):
            any_valid = any_valid or flat_valid[s + b]
        if any_valid:
            y, c0, b = s // w, s % w, 0
            while b < nb:  # the block's input pixels: a run along each output row it crosses
                n = min(w - c0, nb - b)
                _run_features(bands, open_water, (row_off + y) * width_in + col_off + c0, n, floor, x, b)
                y, c0, b = y + 1, 0, b + n
            for f in range(n_features):
                xf = x[f]
                for b in range(nb, BLOCK):
                    xf[b] = f32(0.0)
            _mixture_block(x, affine, indptr, classes, weights, z, best, inv_total, acc, bits)
            uncertainty._reset(top1, top2, arg, psum, plogp)
            for c in range(n_classes):
                ac = acc[c]
                for b in range(BLOCK):
                    buf[b] = max(ac[b] * inv_total[b], f32(0.0))
                uncertainty._accumulate(buf, mant, top1, top2, arg, psum, plogp, c)
            for b in range(nb):
                if flat_valid[s + b] and not abs(psum[b] - f32(1.0)) <= f32(1e-3):  # NaN fails too
                    bad[0] = 1
        uncertainty._finish_pixels(flat_valid[s: s + nb], top1, top2, arg, psum, plogp, n_classes,
                                   class_out[s: s + nb], maxprob[s: s + nb], entropy[s: s + nb], gap[s: s + nb])


def _cache_depends_on(kernel, *modules: ModuleType) -> None:
    """Make numba's on-disk cache of ``kernel`` stale when one of ``modules``' files changes, not only its own:
    numba stamps a cached kernel with its own file's time and size, yet compiles the kernels it calls from
    other files into it (an edit of :mod:`..uncertainty` would otherwise keep the old machine code running).
    The stamp is numba's private ``IndexDataCacheFile._source_stamp``; without it nothing changes."""
    cache_file = getattr(getattr(kernel, "_cache", None), "_cache_file", None)
    if cache_file is None or not hasattr(cache_file, "_source_stamp"):
        return
    stamps = [(os.stat(m.__file__).st_mtime, os.stat(m.__file__).st_size) for m in modules]
    cache_file._source_stamp = (cache_file._source_stamp, *stamps)


_cache_depends_on(_mixture_confidence, uncertainty)


@_njit
def _box_sum_rows(x, radius, out):  # pragma: no cover - compiled by numba
    """``out[i, y, j] = Σ x[i, y, j … j + 2r]``, summed in that order (``x`` padded by ``r`` columns): five terms
    per sweep of the row, so the partial sums are loaded and stored once per five additions, not each time
    (the same additions in the same order, so the same bits)."""
    k = 2 * radius + 1
    n, h, w = out.shape
    for i in range(n):
        for y in range(h):
            src, dst = x[i, y], out[i, y]
            for j in range(w):
                dst[j] = src[j]
            t = 1
            while t + 5 <= k:
                for j in range(w):
                    dst[j] = dst[j] + src[j + t] + src[j + t + 1] + src[j + t + 2] + src[j + t + 3] + src[j + t + 4]
                t += 5
            for t in range(t, k):
                for j in range(w):
                    dst[j] += src[j + t]


@_njit
def _box_sum_cols(x, radius, scale, out):  # pragma: no cover - compiled by numba
    """``out[i, y, :] = Σ x[i, y … y + 2r, :] / scale``, summed in that order (``x`` padded by ``r`` rows), five
    rows per sweep as in :func:`_box_sum_rows`."""
    k = 2 * radius + 1
    n, h, w = out.shape
    for i in range(n):
        for y in range(h):
            dst = out[i, y]
            first = x[i, y]
            for j in range(w):
                dst[j] = first[j]
            t = 1
            while t + 5 <= k:
                a, b, c, d, e = x[i, y + t], x[i, y + t + 1], x[i, y + t + 2], x[i, y + t + 3], x[i, y + t + 4]
                for j in range(w):
                    dst[j] = dst[j] + a[j] + b[j] + c[j] + d[j] + e[j]
                t += 5
            for t in range(t, k):
                src = x[i, y + t]
                for j in range(w):
                    dst[j] += src[j]
            for j in range(w):
                dst[j] = dst[j] / scale


def usable(x: torch.Tensor) -> bool:
    """Can the compiled kernels evaluate ``x`` (CPU float32, numba on)?"""
    return kernels.enabled() and x.device.type == "cpu" and x.dtype == torch.float32


class MixtureTables:
    """The model's inputs to the kernels: its score map and its prototypes' class distributions (sparse rows),
    float32 numpy, and the reflectance floor of its features."""

    def __init__(self, affine: torch.Tensor, targets: torch.Tensor, features: tuple[str, ...], floor: float):
        """``affine (K, F + 1)``: scores from the features and a constant 1; ``targets (C, K)``: column k is
        prototype k's class distribution (:class:`.builtin.SpectralPrototypeNet`'s buffers); ``features``: the
        names of the affine map's F inputs, which must be the ones the kernel computes (:data:`FEATURES`);
        ``floor``: reflectances are raised to it before the ratios."""
        if tuple(features) != FEATURES or affine.shape[1] != len(FEATURES) + 1:
            raise ValueError(f"the compiled kernel computes the features {FEATURES}, not the model's {tuple(features)}")
        self.affine = affine.detach().cpu().float().numpy().copy()
        rows = targets.detach().cpu().float().T.numpy()  # (K, C)
        self.n_classes = rows.shape[1]
        k_idx, c_idx = np.nonzero(rows)
        self.indptr = np.searchsorted(k_idx, np.arange(rows.shape[0] + 1)).astype(np.int64)
        self.classes = c_idx.astype(np.int64)
        self.weights = rows[k_idx, c_idx].astype(np.float32)
        self.floor = np.float32(floor)


def _flat_inputs(x: torch.Tensor, open_water: torch.Tensor, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Image ``i``'s bands ``(5, H · W)`` and open-water mean ``(H · W)`` as contiguous numpy (views where they are)."""
    bands = x.detach()[i].reshape(x.shape[1], -1)
    water = open_water.detach()[i].reshape(-1)
    if bands.shape[0] != 5:
        raise ValueError(f"the compiled kernel takes 5 bands (B02, B03, B04, B08, B11), not {bands.shape[0]}")
    return bands.contiguous().numpy(), water.contiguous().numpy()


def features(x: torch.Tensor, open_water: torch.Tensor, tables: MixtureTables) -> torch.Tensor:
    """``(N, 7, H, W)``: the features (:data:`FEATURES`) of reflectances ``x (N, 5, H, W)`` with their open-water
    mean ``(N, H, W)``, as the mixture kernels compute them block by block (equal to the model's, bit for bit)."""
    n_images, _, h, w = x.shape
    out = empty((n_images, len(FEATURES), h * w))
    for i in range(n_images):
        _features_pixels(*_flat_inputs(x, open_water, i), tables.floor, out[i].numpy(), 0, h * w)
    return out.unflatten(2, (h, w))


def mixture_probabilities(x: torch.Tensor, open_water: torch.Tensor, tables: MixtureTables, threads: int
                          ) -> torch.Tensor:
    """Reflectances ``x (N, 5, H, W)`` float32 (B02, B03, B04, B08, B11) and their open-water mean ``(N, H, W)``
    → probabilities ``(N, C, H, W)``, the features made block by block in the pass, split over ``threads``
    threads (each pixel's bits do not depend on the split)."""
    n_images, _, h, w = x.shape
    out = empty((n_images, tables.n_classes, h * w))  # huge pages: a strip's outputs are tens of MB, written once
    for i in range(n_images):
        args = (*_flat_inputs(x, open_water, i), tables.floor, tables.affine, tables.indptr, tables.classes,
                tables.weights, out[i].numpy())
        _split(_mixture_pixels, h * w, threads, args)
    return out.unflatten(2, (h, w))


def mixture_confidence(x: torch.Tensor, open_water: torch.Tensor, window: tuple[int, int], valid: torch.Tensor,
                       tables: MixtureTables, threads: int) -> tuple[uncertainty.Confidence, bool]:
    """``(products, ok)``: the confidence products ``(h, w)`` (``h, w = valid.shape``) of the output window whose
    first pixel is input pixel ``window = (row, col)`` of reflectances ``x (1, 5, H, W)`` with their open-water
    mean ``(1, H, W)``, made in the mixture pass itself (:func:`_mixture_confidence`): equal to
    :func:`..uncertainty.confidence` of :func:`mixture_probabilities`' output. ``ok`` is False when a valid
    pixel's probabilities were not finite. Split over ``threads`` threads on block boundaries (each pixel's bits
    do not depend on the split)."""
    h, w = valid.shape
    out, arrays = uncertainty.new_products(h, w)
    if h * w == 0:
        return out, True
    flat = tuple(a.reshape(-1) for a in arrays)
    bad = np.zeros(1, np.uint8)
    valid_np = np.ascontiguousarray(valid.cpu().numpy(), dtype=bool)
    args = (*_flat_inputs(x, open_water, 0), tables.floor, x.shape[3], window[0], window[1], valid_np, tables.affine,
            tables.indptr, tables.classes, tables.weights, tables.n_classes, *flat, bad)
    _split(_mixture_confidence, h * w, threads, args)
    return out, not bad[0]


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """The mean of ``x (N, H, W)`` float32 over the (2r + 1)² square around each pixel, edges repeated
    (what :func:`.builtin.box_mean` computes): each output sums its own window in a fixed order."""
    n, h, w = x.shape
    padded = torch.nn.functional.pad(x[:, None], (radius, radius, radius, radius), mode="replicate")[:, 0].contiguous()
    rows = empty((n, h + 2 * radius, w))
    _box_sum_rows(padded.numpy(), radius, rows.numpy())
    out = empty((n, h, w))
    _box_sum_cols(rows.numpy(), radius, np.float32((2 * radius + 1) ** 2), out.numpy())
    return out


def _split(kernel, n: int, threads: int, args: tuple) -> None:
    """``kernel(*args, p0, p1)`` over pixels ``0 … n-1``, in ``threads`` shares on block boundaries
    (:func:`..kernels.run_shares`)."""
    threads = max(1, min(threads, -(-n // PARALLEL_MIN_PIXELS)))
    if threads == 1:
        kernel(*args, 0, n)
        return
    step = -(-n // threads // BLOCK) * BLOCK
    bounds = [min(n, i * step) for i in range(threads + 1)]
    kernels.run_shares(kernel, args, bounds, "s2seg-model")
