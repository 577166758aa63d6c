// BatchNorm's per-channel sums in training (kpsem_jax/layers/normalization.py, batch_norm_train), as XLA
// typed-FFI handlers. Channels-last: an array (..., C) is read as N = size / C rows of C.
//
//   KpsemBatchNormSums:     x -> sums (2, C): [sum x, sum x^2] over the rows
//   KpsemBatchNormGradSums: x, dy, coefs (3, C) = [mean, a, bias], attr relu ->
//                           sums (2, C): [sum dz, sum dz * (x - mean)], where
//                           dz = dy, or dy where (x - mean) * a + bias > 0 with relu
//
// XLA:CPU reduces over the non-minor axis of such arrays at 2-9 GB/s, and these sums took
// about 40 of the 135 ms of a narrow MFNet's training step (docs/speed.md); here OpenMP splits the rows, each
// thread adds blocks of rows in float32 with the channels innermost (vectorised; an AVX2
// clone is picked at load time where the CPU has it) and carries the blocks' totals in
// float64. The elementwise parts (normalise, ReLU, the input gradient) stay with XLA, which
// fuses them with their neighbours.
//
// Built on first use by kpsem_jax/cpu_kernels/build.py.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kBlockRows = 64;  // rows summed in float32 before the float64 total

__attribute__((target_clones("avx2", "default")))
void AddBlock(const float* __restrict x, int64_t rows, int64_t c, float* __restrict s1,
              float* __restrict s2) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * c;
    for (int64_t ci = 0; ci < c; ++ci) {
      s1[ci] += row[ci];
      s2[ci] += row[ci] * row[ci];
    }
  }
}

__attribute__((target_clones("avx2", "default")))
void AddGradBlock(const float* __restrict x, const float* __restrict dy, int64_t rows,
                  int64_t c, const float* __restrict mean, const float* __restrict a,
                  const float* __restrict bias, bool relu, float* __restrict s1,
                  float* __restrict s2) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * c;
    const float* dr = dy + r * c;
    for (int64_t ci = 0; ci < c; ++ci) {
      const float centred = xr[ci] - mean[ci];
      const bool open = !relu || centred * a[ci] + bias[ci] > 0.0f;
      const float dz = open ? dr[ci] : 0.0f;
      s1[ci] += dz;
      s2[ci] += dz * centred;
    }
  }
}

// Splits the rows among the threads; `block(first_row, rows, s1, s2)` adds rows into the
// float32 accumulators s1, s2 (C each); the two sums, in float64, go to out (2, C).
template <typename Block>
void Sum(int64_t n, int64_t c, float* out, Block block) {
  std::vector<double> t1(c, 0.0), t2(c, 0.0);
#pragma omp parallel
  {
    std::vector<double> d1(c, 0.0), d2(c, 0.0);
    std::vector<float> s1(c), s2(c);
#pragma omp for schedule(static)
    for (int64_t first = 0; first < n; first += kBlockRows) {
      std::fill(s1.begin(), s1.end(), 0.0f);
      std::fill(s2.begin(), s2.end(), 0.0f);
      block(first, std::min(kBlockRows, n - first), s1.data(), s2.data());
      for (int64_t ci = 0; ci < c; ++ci) {
        d1[ci] += s1[ci];
        d2[ci] += s2[ci];
      }
    }
#pragma omp critical
    for (int64_t ci = 0; ci < c; ++ci) {
      t1[ci] += d1[ci];
      t2[ci] += d2[ci];
    }
  }
  for (int64_t ci = 0; ci < c; ++ci) {
    out[ci] = static_cast<float>(t1[ci]);
    out[c + ci] = static_cast<float>(t2[ci]);
  }
}

// Rows and channels of x, checked against the (2, C) output.
ffi::Error Shape(ffi::Span<const int64_t> x_dims, ffi::Span<const int64_t> out_dims,
                 int64_t* n, int64_t* c) {
  if (x_dims.size() == 0 || out_dims.size() != 2 || out_dims[0] != 2 ||
      out_dims[1] != x_dims.back()) {
    return ffi::Error::InvalidArgument("batch norm sums: expected x (..., C) and sums (2, C)");
  }
  *c = x_dims.back();
  *n = 1;
  for (size_t i = 0; i + 1 < x_dims.size(); ++i) *n *= x_dims[i];
  return ffi::Error::Success();
}

ffi::Error Sums(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> sums) {
  int64_t n, c;
  if (auto e = Shape(x.dimensions(), sums->dimensions(), &n, &c); e.failure()) return e;
  const float* data = x.typed_data();
  Sum(n, c, sums->typed_data(), [&](int64_t first, int64_t rows, float* s1, float* s2) {
    AddBlock(data + first * c, rows, c, s1, s2);
  });
  return ffi::Error::Success();
}

ffi::Error GradSums(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                    ffi::Buffer<ffi::F32> coefs, ffi::ResultBuffer<ffi::F32> sums,
                    int64_t relu) {
  int64_t n, c;
  if (auto e = Shape(x.dimensions(), sums->dimensions(), &n, &c); e.failure()) return e;
  auto dd = dy.dimensions(), cd = coefs.dimensions();
  if (!std::equal(dd.begin(), dd.end(), x.dimensions().begin(), x.dimensions().end()) ||
      cd.size() != 2 || cd[0] != 3 || cd[1] != c) {
    return ffi::Error::InvalidArgument(
        "batch norm grad sums: expected dy shaped as x and coefs (3, C)");
  }
  const float* xd = x.typed_data();
  const float* dyd = dy.typed_data();
  const float* k = coefs.typed_data();
  Sum(n, c, sums->typed_data(), [&](int64_t first, int64_t rows, float* s1, float* s2) {
    AddGradBlock(xd + first * c, dyd + first * c, rows, c, k, k + c, k + 2 * c, relu != 0,
                 s1, s2);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(KpsemBatchNormSums, Sums,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(KpsemBatchNormGradSums, GradSums,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("relu"));
