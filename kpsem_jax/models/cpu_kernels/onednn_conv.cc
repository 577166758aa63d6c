// Grouped 3-D convolution on CPUs through oneDNN (the library PyTorch's CPU conv3d uses),
// exposed to XLA as three typed-FFI handlers: forward, input gradient, kernel gradient.
//
// Layouts are JAX's, channels-last: x (B, D, H, W, C_in), kernel (kd, kh, kw, C_in/G, C_out)
// with output channel g * C_out/G + o belonging to group g, y (B, D', H', W', C_out).
// Activations stay in our layout (oneDNN's nxc, which its AVX-512/AVX2 kernels read and write
// directly: no reorder per call); oneDNN picks the kernel's layout, reordered per call.
// Attributes: strides, pad_lo, pad_hi (3 each), groups. float32; and a bfloat16 forward for
// inference (bf16 activations and kernel, accumulated in float32 by oneDNN, bf16 out), which
// runs on the CPU's bf16 units (avx512_bf16, AMX) where it has them.
//
// Built on first use by kpsem_jax/cpu_kernels/build.py.

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Dims = memory::dims;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Geometry {
  int64_t b, groups, ic, oc;
  Dims src, dst, wei;  // oneDNN logical dims: NCDHW, NCDHW, GOIDHW
  Dims wei_strides;     // our (kd, kh, kw, I/G, G*O/G) buffer seen as GOIDHW
  Dims strides, pad_lo, pad_hi;
};

ffi::Error MakeGeometry(ffi::Span<const int64_t> x_dims, ffi::Span<const int64_t> k_dims,
                        ffi::Span<const int64_t> y_dims, ffi::Span<const int64_t> strides,
                        ffi::Span<const int64_t> pad_lo, ffi::Span<const int64_t> pad_hi,
                        int64_t groups, Geometry* g) {
  if (x_dims.size() != 5 || k_dims.size() != 5 || y_dims.size() != 5 || strides.size() != 3 ||
      pad_lo.size() != 3 || pad_hi.size() != 3 || groups < 1) {
    return ffi::Error::InvalidArgument("onednn conv3d: expected 5-D arrays and 3 strides/pads");
  }
  g->b = x_dims[0];
  g->groups = groups;
  g->ic = x_dims[4];
  g->oc = k_dims[4];
  const int64_t icg = k_dims[3], ocg = g->oc / groups;
  if (icg * groups != g->ic || ocg * groups != g->oc || y_dims[4] != g->oc) {
    return ffi::Error::InvalidArgument("onednn conv3d: channels do not match the groups");
  }
  g->src = {g->b, g->ic, x_dims[1], x_dims[2], x_dims[3]};
  g->dst = {g->b, g->oc, y_dims[1], y_dims[2], y_dims[3]};
  g->wei = {groups, ocg, icg, k_dims[0], k_dims[1], k_dims[2]};
  const int64_t s_kw = icg * g->oc, s_kh = k_dims[2] * s_kw, s_kd = k_dims[1] * s_kh;
  g->wei_strides = {ocg, 1, g->oc, s_kd, s_kh, s_kw};
  g->strides = Dims(strides.begin(), strides.end());
  g->pad_lo = Dims(pad_lo.begin(), pad_lo.end());
  g->pad_hi = Dims(pad_hi.begin(), pad_hi.end());
  return ffi::Error::Success();
}

using Type = memory::data_type;

memory::desc UserActivation(const Dims& dims, Type type = Type::f32) {
  return memory::desc(dims, type, memory::format_tag::ndhwc);
}
memory::desc UserKernel(const Geometry& g, Type type = Type::f32) {
  return memory::desc(g.wei, type, g.wei_strides);
}
memory::desc Any(const Dims& dims, Type type = Type::f32) {
  return memory::desc(dims, type, memory::format_tag::any);
}

// Scratch memory comes from the calling thread, not from the library: oneDNN's primitive
// cache hands the same primitive to every call of the same shapes, and XLA may run two such
// calls at once on different threads; a library-owned scratchpad would then be shared
// between them. Each thread keeps its buffer (grown, never shrunk), so a call does not pay
// for fresh pages (the im2col buffer of a grouped convolution is tens of MB).
void* ThreadScratch(size_t bytes) {
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<void, Free> buffer;
  thread_local size_t size = 0;
  if (bytes > size) {
    buffer.reset();
    size = (bytes + 4095) / 4096 * 4096;
    buffer.reset(std::aligned_alloc(4096, size));
    if (!buffer) {
      size = 0;
      throw dnnl::error(dnnl_out_of_memory, "scratchpad allocation failed");
    }
  }
  return buffer.get();
}

dnnl::primitive_attr Attributes() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// `blocked`: activations in the layout oneDNN prefers (reordered in and out per call)
// instead of ours; benchmarks/layer_profile.py compares the two per convolution.
dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g, bool blocked = false) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      blocked ? Any(g.src) : UserActivation(g.src), Any(g.wei),
      blocked ? Any(g.dst) : UserActivation(g.dst), g.strides, g.pad_lo, g.pad_hi,
      Attributes());
}

// `user` memory as `want`: itself when the layouts agree, else a reordered copy.
memory AsInput(memory user, const memory::desc& want, dnnl::stream& s) {
  if (user.get_desc() == want) return user;
  memory out(want, Engine());
  dnnl::reorder(user, out).execute(s, user, out);
  return out;
}

// One of a primitive's arguments in our layout: its oneDNN argument id, layout and data.
struct Operand {
  int arg;
  memory::desc desc;
  void* data;
};

// Runs the primitive of `pd` on two inputs and one output given in our layouts, reordering
// to and from the layouts the primitive chose, with per-call scratch memory.
template <typename Primitive, typename PrimitiveDesc>
void Execute(const PrimitiveDesc& pd, const Operand (&inputs)[2], const Operand& output) {
  dnnl::stream s(Engine());
  std::unordered_map<int, memory> args;
  for (const Operand& in : inputs) {
    args[in.arg] = AsInput(memory(in.desc, Engine(), in.data),
                           pd.query_md(dnnl::query::exec_arg_md, in.arg), s);
  }
  memory user(output.desc, Engine(), output.data);
  const memory::desc want = pd.query_md(dnnl::query::exec_arg_md, output.arg);
  memory computed = user.get_desc() == want ? user : memory(want, Engine());
  args[output.arg] = computed;
  const memory::desc scratch = pd.scratchpad_desc();
  args[DNNL_ARG_SCRATCHPAD] = memory(scratch, Engine(), ThreadScratch(scratch.get_size()));
  Primitive(pd).execute(s, args);
  if (computed.get() != user.get()) dnnl::reorder(computed, user).execute(s, computed, user);
  s.wait();
}

// Checks the shapes, then runs `body(geometry)`, turning oneDNN's exceptions into errors.
template <typename Body>
ffi::Error WithGeometry(ffi::Span<const int64_t> x_dims, ffi::Span<const int64_t> k_dims,
                        ffi::Span<const int64_t> y_dims, ffi::Span<const int64_t> strides,
                        ffi::Span<const int64_t> pad_lo, ffi::Span<const int64_t> pad_hi,
                        int64_t groups, Body body) {
  Geometry g;
  if (auto e = MakeGeometry(x_dims, k_dims, y_dims, strides, pad_lo, pad_hi, groups, &g);
      e.failure()) {
    return e;
  }
  try {
    body(g);
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k,
                   ffi::ResultBuffer<ffi::F32> y, ffi::Span<const int64_t> strides,
                   ffi::Span<const int64_t> pad_lo, ffi::Span<const int64_t> pad_hi,
                   int64_t groups) {
  return WithGeometry(x.dimensions(), k.dimensions(), y->dimensions(), strides, pad_lo, pad_hi,
                      groups, [&](const Geometry& g) {
    Execute<dnnl::convolution_forward>(
        ForwardDesc(g),
        {{DNNL_ARG_SRC, UserActivation(g.src), x.typed_data()},
         {DNNL_ARG_WEIGHTS, UserKernel(g), k.typed_data()}},
        {DNNL_ARG_DST, UserActivation(g.dst), y->typed_data()});
  });
}

// The forward on oneDNN's preferred activation layouts (measured, not used by the models).
ffi::Error ForwardBlocked(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k,
                          ffi::ResultBuffer<ffi::F32> y, ffi::Span<const int64_t> strides,
                          ffi::Span<const int64_t> pad_lo, ffi::Span<const int64_t> pad_hi,
                          int64_t groups) {
  return WithGeometry(x.dimensions(), k.dimensions(), y->dimensions(), strides, pad_lo, pad_hi,
                      groups, [&](const Geometry& g) {
    Execute<dnnl::convolution_forward>(
        ForwardDesc(g, /*blocked=*/true),
        {{DNNL_ARG_SRC, UserActivation(g.src), x.typed_data()},
         {DNNL_ARG_WEIGHTS, UserKernel(g), k.typed_data()}},
        {DNNL_ARG_DST, UserActivation(g.dst), y->typed_data()});
  });
}

// The bfloat16 forward, for inference only (no gradient uses it).
ffi::Error ForwardBf16(ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> k,
                       ffi::ResultBuffer<ffi::BF16> y, ffi::Span<const int64_t> strides,
                       ffi::Span<const int64_t> pad_lo, ffi::Span<const int64_t> pad_hi,
                       int64_t groups) {
  return WithGeometry(x.dimensions(), k.dimensions(), y->dimensions(), strides, pad_lo, pad_hi,
                      groups, [&](const Geometry& g) {
    Execute<dnnl::convolution_forward>(
        dnnl::convolution_forward::primitive_desc(
            Engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
            UserActivation(g.src, Type::bf16), Any(g.wei, Type::bf16),
            UserActivation(g.dst, Type::bf16), g.strides, g.pad_lo, g.pad_hi, Attributes()),
        {{DNNL_ARG_SRC, UserActivation(g.src, Type::bf16), x.untyped_data()},
         {DNNL_ARG_WEIGHTS, UserKernel(g, Type::bf16), k.untyped_data()}},
        {DNNL_ARG_DST, UserActivation(g.dst, Type::bf16), y->untyped_data()});
  });
}

// dx from dy: x's shape comes from the result buffer.
ffi::Error BackwardInput(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> k,
                         ffi::ResultBuffer<ffi::F32> dx, ffi::Span<const int64_t> strides,
                         ffi::Span<const int64_t> pad_lo, ffi::Span<const int64_t> pad_hi,
                         int64_t groups) {
  return WithGeometry(dx->dimensions(), k.dimensions(), dy.dimensions(), strides, pad_lo,
                      pad_hi, groups, [&](const Geometry& g) {
    Execute<dnnl::convolution_backward_data>(
        dnnl::convolution_backward_data::primitive_desc(
            Engine(), dnnl::algorithm::convolution_direct, UserActivation(g.src), Any(g.wei),
            UserActivation(g.dst),
            g.strides, g.pad_lo, g.pad_hi, ForwardDesc(g), Attributes()),
        {{DNNL_ARG_DIFF_DST, UserActivation(g.dst), dy.typed_data()},
         {DNNL_ARG_WEIGHTS, UserKernel(g), k.typed_data()}},
        {DNNL_ARG_DIFF_SRC, UserActivation(g.src), dx->typed_data()});
  });
}

// dkernel from x and dy: the kernel's shape comes from the result buffer.
ffi::Error BackwardKernel(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dk, ffi::Span<const int64_t> strides,
                          ffi::Span<const int64_t> pad_lo, ffi::Span<const int64_t> pad_hi,
                          int64_t groups) {
  return WithGeometry(x.dimensions(), dk->dimensions(), dy.dimensions(), strides, pad_lo,
                      pad_hi, groups, [&](const Geometry& g) {
    Execute<dnnl::convolution_backward_weights>(
        dnnl::convolution_backward_weights::primitive_desc(
            Engine(), dnnl::algorithm::convolution_direct, UserActivation(g.src), Any(g.wei),
            UserActivation(g.dst),
            g.strides, g.pad_lo, g.pad_hi, ForwardDesc(g), Attributes()),
        {{DNNL_ARG_SRC, UserActivation(g.src), x.typed_data()},
         {DNNL_ARG_DIFF_DST, UserActivation(g.dst), dy.typed_data()}},
        {DNNL_ARG_DIFF_WEIGHTS, UserKernel(g), dk->typed_data()});
  });
}

}  // namespace

#define KPSEM_CONV_BINDING                                                            \
  ffi::Ffi::Bind()                                                                    \
      .Arg<ffi::Buffer<ffi::F32>>()                                                   \
      .Arg<ffi::Buffer<ffi::F32>>()                                                   \
      .Ret<ffi::Buffer<ffi::F32>>()                                                   \
      .Attr<ffi::Span<const int64_t>>("strides")                                      \
      .Attr<ffi::Span<const int64_t>>("pad_lo")                                       \
      .Attr<ffi::Span<const int64_t>>("pad_hi")                                       \
      .Attr<int64_t>("groups")

#define KPSEM_CONV_BF16_BINDING                                                       \
  ffi::Ffi::Bind()                                                                    \
      .Arg<ffi::Buffer<ffi::BF16>>()                                                  \
      .Arg<ffi::Buffer<ffi::BF16>>()                                                  \
      .Ret<ffi::Buffer<ffi::BF16>>()                                                  \
      .Attr<ffi::Span<const int64_t>>("strides")                                      \
      .Attr<ffi::Span<const int64_t>>("pad_lo")                                       \
      .Attr<ffi::Span<const int64_t>>("pad_hi")                                       \
      .Attr<int64_t>("groups")

XLA_FFI_DEFINE_HANDLER_SYMBOL(KpsemOnednnConvForward, Forward, KPSEM_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(KpsemOnednnConvForwardBlocked, ForwardBlocked, KPSEM_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(KpsemOnednnConvForwardBf16, ForwardBf16, KPSEM_CONV_BF16_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(KpsemOnednnConvBackwardInput, BackwardInput, KPSEM_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(KpsemOnednnConvBackwardKernel, BackwardKernel, KPSEM_CONV_BINDING);
