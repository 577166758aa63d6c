// The gradient of 3-D max-pooling (kpsem_jax/layers/pooling.py, max_pool) as an XLA typed-FFI handler.
//
//   dy (B, D', H', W', C), first (B, D', H', W', C) int32 -> dx (B, D, H, W, C)
//
// first[o] is the row-major offset (kd, kh, kw) in its window of output o's first maximum
// (the window's size or more: none, for an all-NaN window). Each input element gathers the
// dy of the outputs whose window holds it at their first maximum, so threads write disjoint
// rows of dx and no scatter is needed. Attributes: window, strides, pad_lo (3 each).
// XLA:CPU fused this gradient with the producers of dy and recomputed them once per window
// offset: 12-14 ms of a narrow MFNet's training step on its stem map, about 1.4 ms here.
//
// Built on first use by kpsem_jax/cpu_kernels/build.py.

#include <algorithm>
#include <cstdint>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// The outputs o with o * stride - pad <= i < o * stride - pad + window, clipped to [0, n).
void Covering(int64_t i, int64_t window, int64_t stride, int64_t pad, int64_t n, int64_t* lo,
              int64_t* hi) {
  const int64_t p = i + pad;  // position in the padded input
  *lo = p - window + 1 <= 0 ? 0 : (p - window + stride) / stride;
  *hi = std::min(n - 1, p / stride);
}

__attribute__((target_clones("avx2", "default")))
void Gather(const float* __restrict dy, const int32_t* __restrict first, int32_t k, int64_t c,
            float* __restrict dx) {
  for (int64_t ci = 0; ci < c; ++ci) dx[ci] += first[ci] == k ? dy[ci] : 0.0f;
}

ffi::Error MaxPoolGrad(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::S32> first,
                       ffi::ResultBuffer<ffi::F32> dx, ffi::Span<const int64_t> window,
                       ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pad_lo) {
  auto yd = dy.dimensions(), fd = first.dimensions(), xd = dx->dimensions();
  if (yd.size() != 5 || xd.size() != 5 || window.size() != 3 || strides.size() != 3 ||
      pad_lo.size() != 3 || !std::equal(yd.begin(), yd.end(), fd.begin(), fd.end()) ||
      yd[0] != xd[0] || yd[4] != xd[4]) {
    return ffi::Error::InvalidArgument(
        "max pool grad: expected dy and first (B, D', H', W', C), dx (B, D, H, W, C) and "
        "3 window sizes, strides and pads");
  }
  const int64_t b = xd[0], d = xd[1], h = xd[2], w = xd[3], c = xd[4];
  const int64_t od = yd[1], oh = yd[2], ow = yd[3];
  const float* dy_data = dy.typed_data();
  const int32_t* first_data = first.typed_data();
  float* dx_data = dx->typed_data();
  const int64_t rows = b * d * h;

#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t bi = row / (d * h), di = (row / h) % d, hi = row % h;
    int64_t d_lo, d_hi, h_lo, h_hi;
    Covering(di, window[0], strides[0], pad_lo[0], od, &d_lo, &d_hi);
    Covering(hi, window[1], strides[1], pad_lo[1], oh, &h_lo, &h_hi);
    for (int64_t wi = 0; wi < w; ++wi) {
      float* out = dx_data + ((row * w) + wi) * c;
      std::fill(out, out + c, 0.0f);
      int64_t w_lo, w_hi;
      Covering(wi, window[2], strides[2], pad_lo[2], ow, &w_lo, &w_hi);
      for (int64_t o0 = d_lo; o0 <= d_hi; ++o0) {
        for (int64_t o1 = h_lo; o1 <= h_hi; ++o1) {
          for (int64_t o2 = w_lo; o2 <= w_hi; ++o2) {
            const int64_t k0 = di + pad_lo[0] - o0 * strides[0];
            const int64_t k1 = hi + pad_lo[1] - o1 * strides[1];
            const int64_t k2 = wi + pad_lo[2] - o2 * strides[2];
            const int32_t k = static_cast<int32_t>((k0 * window[1] + k1) * window[2] + k2);
            const int64_t o = (((bi * od + o0) * oh + o1) * ow + o2) * c;
            Gather(dy_data + o, first_data + o, k, c, out);
          }
        }
      }
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(KpsemMaxPoolGrad, MaxPoolGrad,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("window")
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("pad_lo"));
