// inbedder's row operators (row_ops.hpp): kernels and their onnxruntime custom-op wrappers.
//
// Bit-identity with the stock nodes: the same float operations in the same order (no FMA
// contraction: this file is built with -ffp-contract=off), rint is round-half-even (the default
// rounding mode, QuantizeLinear's), clamping to the integer bounds before rounding gives what
// saturating after it gives, and a max is exact in any order. The AVX-512 and AVX2 paths are
// chosen at run time (one library for every x86-64 CPU) and give the scalar path's bits.
//
// Built twice: into libinbedder (add_row_ops), and with INBEDDER_ROW_OPS_MODULE as
// libinbedder_row_ops.so, which exports onnxruntime's RegisterCustomOps entry point for
// SessionOptions.register_custom_ops_library (the Python runtime, quantize's validation).
#include "row_ops.hpp"

#if defined(__x86_64__) || defined(__i386__)
#define INBEDDER_X86 1
// GCC 12 flags the `__m512 __Y = __Y;` of its own AVX-512 headers' undefined-vector helpers
// (inlined into the target("avx512f") functions below).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace inbedder {
namespace {

constexpr float kInv127 = 1.0f / 127.0f;
constexpr float kInv255 = 1.0f / 255.0f;
constexpr float kShift = 0.17f;  // quantize/pertoken.py's GELU_SHIFT
constexpr float kMinScale = 1e-30f;
constexpr int64_t kRowsPerTask = 8;

// -- RowQuantize's kernels: the row's peak, then its quantization -----------------------------
float peak_scalar(const float* x, int64_t k, bool shifted, int64_t i, float peak) {
  for (; i < k; ++i) peak = std::max(peak, shifted ? x[i] + kShift : std::fabs(x[i]));
  return peak;
}

void quantize_scalar(const float* x, uint8_t* q, int64_t k, float inv, bool shifted, int64_t i) {
  const float lo = shifted ? 0.f : -128.f, hi = shifted ? 255.f : 127.f;
  const int32_t zp = shifted ? 0 : 128;
  for (; i < k; ++i) {
    const float v = std::min(std::max((shifted ? x[i] + kShift : x[i]) * inv, lo), hi);
    q[i] = static_cast<uint8_t>(static_cast<int32_t>(std::nearbyint(v)) + zp);
  }
}

// z * s [+ bias [+ residual]] over one row of n; vectorized per target by the compiler (an
// elementwise pass: each lane rounds as the scalar code does).
inline __attribute__((always_inline)) void scale_row(const float* z, float s, const float* bias,
                                                     const float* res, float* y, int64_t n) {
  if (bias && res) {
    for (int64_t i = 0; i < n; ++i) y[i] = (z[i] * s + bias[i]) + res[i];
  } else if (bias) {
    for (int64_t i = 0; i < n; ++i) y[i] = z[i] * s + bias[i];
  } else if (res) {
    for (int64_t i = 0; i < n; ++i) y[i] = z[i] * s + res[i];
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = z[i] * s;
  }
}

void scale_row_scalar(const float* z, float s, const float* b, const float* r, float* y,
                      int64_t n) {
  scale_row(z, s, b, r, y, n);
}

#if INBEDDER_X86
__attribute__((target("avx512f"))) float peak_avx512(const float* x, int64_t k, bool shifted) {
  int64_t i = 0;
  float peak = shifted ? -INFINITY : 0.f;
  const __m512 shift = _mm512_set1_ps(kShift);
  const __m512i magnitude = _mm512_set1_epi32(0x7fffffff);
  __m512 m0 = _mm512_set1_ps(peak), m1 = m0;
  for (; i + 32 <= k; i += 32) {  // (32,) per step: two independent max chains
    __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
    if (shifted) {
      a = _mm512_add_ps(a, shift);
      b = _mm512_add_ps(b, shift);
    } else {
      a = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), magnitude));
      b = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(b), magnitude));
    }
    m0 = _mm512_max_ps(m0, a);
    m1 = _mm512_max_ps(m1, b);
  }
  peak = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
  return peak_scalar(x, k, shifted, i, peak);
}

__attribute__((target("avx512f"))) void quantize_avx512(const float* x, uint8_t* q, int64_t k,
                                                        float inv, bool shifted) {
  const float lo = shifted ? 0.f : -128.f, hi = shifted ? 255.f : 127.f;
  const __m512 vinv = _mm512_set1_ps(inv), vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
  const __m512 shift = _mm512_set1_ps(kShift);
  const __m512i vzp = _mm512_set1_epi32(shifted ? 0 : 128);
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    __m512 v = _mm512_loadu_ps(x + i);
    if (shifted) v = _mm512_add_ps(v, shift);
    v = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v, vinv), vlo), vhi);
    const __m512i iv = _mm512_add_epi32(_mm512_cvtps_epi32(v), vzp);  // 0..255
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_cvtepi32_epi8(iv));
  }
  quantize_scalar(x, q, k, inv, shifted, i);
}

__attribute__((target("avx512f"))) void scale_row_avx512(const float* z, float s, const float* b,
                                                         const float* r, float* y, int64_t n) {
  scale_row(z, s, b, r, y, n);
}

__attribute__((target("avx2"))) float peak_avx2(const float* x, int64_t k, bool shifted) {
  int64_t i = 0;
  float peak = shifted ? -INFINITY : 0.f;
  const __m256 shift = _mm256_set1_ps(kShift);
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 m0 = _mm256_set1_ps(peak), m1 = m0;
  for (; i + 16 <= k; i += 16) {
    __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
    if (shifted) {
      a = _mm256_add_ps(a, shift);
      b = _mm256_add_ps(b, shift);
    } else {
      a = _mm256_and_ps(a, magnitude);
      b = _mm256_and_ps(b, magnitude);
    }
    m0 = _mm256_max_ps(m0, a);
    m1 = _mm256_max_ps(m1, b);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_max_ps(m0, m1));
  for (float v : lanes) peak = std::max(peak, v);
  return peak_scalar(x, k, shifted, i, peak);
}

__attribute__((target("avx2"))) void quantize_avx2(const float* x, uint8_t* q, int64_t k, float inv,
                                                   bool shifted) {
  const float lo = shifted ? 0.f : -128.f, hi = shifted ? 255.f : 127.f;
  const __m256 vinv = _mm256_set1_ps(inv), vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
  const __m256 shift = _mm256_set1_ps(kShift);
  const __m256i vzp = _mm256_set1_epi32(shifted ? 0 : 128);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undo the packs' lane split
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    __m256i iv[4];
    for (int j = 0; j < 4; ++j) {
      __m256 v = _mm256_loadu_ps(x + i + 8 * j);
      if (shifted) v = _mm256_add_ps(v, shift);
      v = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v, vinv), vlo), vhi);
      iv[j] = _mm256_add_epi32(_mm256_cvtps_epi32(v), vzp);
    }
    __m256i bytes =
        _mm256_packus_epi16(_mm256_packs_epi32(iv[0], iv[1]), _mm256_packs_epi32(iv[2], iv[3]));
    bytes = _mm256_permutevar8x32_epi32(bytes, order);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), bytes);
  }
  quantize_scalar(x, q, k, inv, shifted, i);
}

__attribute__((target("avx2"))) void scale_row_avx2(const float* z, float s, const float* b,
                                                    const float* r, float* y, int64_t n) {
  scale_row(z, s, b, r, y, n);
}
#endif

float peak_portable(const float* x, int64_t k, bool shifted) {
  return peak_scalar(x, k, shifted, 0, shifted ? -INFINITY : 0.f);
}
void quantize_portable(const float* x, uint8_t* q, int64_t k, float inv, bool shifted) {
  quantize_scalar(x, q, k, inv, shifted, 0);
}

struct Kernels {
  float (*peak)(const float*, int64_t, bool);
  void (*quantize)(const float*, uint8_t*, int64_t, float, bool);
  void (*scale)(const float*, float, const float*, const float*, float*, int64_t);
};

Kernels pick_kernels() {
  const char* env = std::getenv("INBEDDER_ROW_OPS_ISA");
  const std::string cap = env ? env : "";
  if (!cap.empty() && cap != "scalar" && cap != "avx2")
    throw std::invalid_argument("INBEDDER_ROW_OPS_ISA must be 'avx2', 'scalar' or unset, got '" +
                                cap + "'");
  Kernels scalar{peak_portable, quantize_portable, scale_row_scalar};
#if INBEDDER_X86
  __builtin_cpu_init();
  if (cap != "scalar" && cap != "avx2" && __builtin_cpu_supports("avx512f"))
    return {peak_avx512, quantize_avx512, scale_row_avx512};
  if (cap != "scalar" && __builtin_cpu_supports("avx2"))
    return {peak_avx2, quantize_avx2, scale_row_avx2};
#endif
  return scalar;
}

// -- the operators ------------------------------------------------------------------------------
int64_t rows_of(const std::vector<int64_t>& shape) {  // all but the last axis
  int64_t rows = 1;
  for (std::size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
  return rows;
}

OrtStatusPtr fail(const std::string& what) {
  return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, what.c_str());
}

// Runs `body` with onnxruntime's errors (and any other) turned into a status: no exception
// leaves through onnxruntime's C frames.
template <typename F>
OrtStatusPtr guarded(F&& body) {
  try {
    return body();
  } catch (const Ort::Exception& e) {
    return Ort::GetApi().CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, e.what());
  }
}

struct QuantizeTask {
  Kernels kn;
  const float* x;
  uint8_t* q;
  float* scale;
  int64_t rows, k;
  bool shifted;
};

void quantize_rows(void* data, size_t block) {
  const QuantizeTask& t = *static_cast<const QuantizeTask*>(data);
  const Kernels& kn = t.kn;
  const int64_t first = static_cast<int64_t>(block) * kRowsPerTask;
  const int64_t last = std::min(first + kRowsPerTask, t.rows);
  for (int64_t r = first; r < last; ++r) {
    const float* x = t.x + r * t.k;
    const float s =
        std::max(kn.peak(x, t.k, t.shifted) * (t.shifted ? kInv255 : kInv127), kMinScale);
    t.scale[r] = s;
    kn.quantize(x, t.q + r * t.k, t.k, 1.0f / s, t.shifted);
  }
}

struct QuantizeKernel {
  Kernels kn = pick_kernels();  // per kernel: INBEDDER_ROW_OPS_ISA as it is when the session opens
  bool shifted = false;
  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return guarded([&]() -> OrtStatusPtr {
      Ort::KernelContext ctx(context);
      Ort::ConstValue in = ctx.GetInput(0);
      std::vector<int64_t> shape = in.GetTensorTypeAndShapeInfo().GetShape();  // (..., K)
      if (shape.empty()) return fail("RowQuantize: X must have at least one axis");
      const int64_t rows = rows_of(shape), k = shape.back();
      Ort::UnownedValue q = ctx.GetOutput(0, shape);
      shape.back() = 1;
      Ort::UnownedValue scale = ctx.GetOutput(1, shape);  // (..., 1)
      QuantizeTask t{kn,
                     in.GetTensorData<float>(),
                     q.GetTensorMutableData<uint8_t>(),
                     scale.GetTensorMutableData<float>(),
                     rows,
                     k,
                     shifted};
      const auto blocks = static_cast<size_t>((rows + kRowsPerTask - 1) / kRowsPerTask);
      if (blocks > 0) ctx.ParallelFor(quantize_rows, blocks, 0, &t);  // the session's pool
      return nullptr;
    });
  }
};

struct QuantizeOp : Ort::CustomOpBase<QuantizeOp, QuantizeKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return guarded([&]() -> OrtStatusPtr {
      const int64_t shifted = Ort::ConstKernelInfo(info).GetAttribute<int64_t>("shifted");
      if (shifted != 0 && shifted != 1) return fail("RowQuantize: shifted must be 0 or 1");
      auto* k = new QuantizeKernel;
      k->shifted = shifted == 1;
      *kernel = k;
      return nullptr;
    });
  }
  const char* GetName() const { return "RowQuantize"; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetInputType(size_t) const {
    return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  size_t GetOutputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetOutputType(size_t i) const {
    return i == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
};

// One output of RowScale: columns [offset, offset + width) of each row of Z, written as
// (..., width) or, with heads > 0, as (B, heads, S, width / heads) (attention's BNSH layout).
struct Part {
  float* y;
  int64_t offset, width, heads;
};

struct ScaleTask {
  Kernels kn;
  const float* z;
  const float* s;         // (rows,)
  const float* bias;      // (n,) or null
  const float* residual;  // (rows, n) or null (then a single part, the whole row)
  std::vector<Part> parts;
  int64_t rows, n, seq;  // seq: S of a (B, S, N) Z, for parts with heads
};

void scale_rows(void* data, size_t block) {
  const ScaleTask& t = *static_cast<const ScaleTask*>(data);
  const Kernels& kn = t.kn;
  const int64_t first = static_cast<int64_t>(block) * kRowsPerTask;
  const int64_t last = std::min(first + kRowsPerTask, t.rows);
  for (int64_t r = first; r < last; ++r) {
    const float* z = t.z + r * t.n;
    for (const Part& p : t.parts) {
      const float* b = t.bias ? t.bias + p.offset : nullptr;
      if (p.heads == 0) {
        kn.scale(z + p.offset, t.s[r], b, t.residual ? t.residual + r * t.n : nullptr,
                 p.y + r * p.width, p.width);
        continue;
      }
      const int64_t h = p.width / p.heads, batch = r / t.seq, pos = r % t.seq;
      for (int64_t i = 0; i < p.heads; ++i)  // row (batch, pos) of head i: (B, heads, S, h)
        kn.scale(z + p.offset + i * h, t.s[r], b ? b + i * h : nullptr, nullptr,
                 p.y + ((batch * p.heads + i) * t.seq + pos) * h, h);
    }
  }
}

// An ints attribute that may be absent (then empty).
std::vector<int64_t> optional_ints(const OrtKernelInfo* info, const char* name) {
  const OrtApi& api = Ort::GetApi();
  size_t size = 0;
  if (OrtStatus* st = api.KernelInfoGetAttributeArray_int64(info, name, nullptr, &size)) {
    api.ReleaseStatus(st);  // absent
    return {};
  }
  std::vector<int64_t> v(size);
  Ort::ThrowOnError(api.KernelInfoGetAttributeArray_int64(info, name, v.data(), &size));
  return v;
}

struct ScaleKernel {
  Kernels kn = pick_kernels();
  std::vector<int64_t> widths,
      heads;  // empty widths: one output, the whole row; heads: one per width
  int64_t width_total = 0;
  bool split_heads = false;  // some output in (B, heads, S, w / heads)
  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return guarded([&]() -> OrtStatusPtr {
      Ort::KernelContext ctx(context);
      Ort::ConstValue z = ctx.GetInput(0), s = ctx.GetInput(1);
      const size_t inputs = ctx.GetInputCount();
      Ort::ConstValue bias = inputs > 2 ? ctx.GetInput(2) : Ort::ConstValue(nullptr);
      Ort::ConstValue res = inputs > 3 ? ctx.GetInput(3) : Ort::ConstValue(nullptr);
      const std::vector<int64_t> shape = z.GetTensorTypeAndShapeInfo().GetShape();  // (..., N)
      if (shape.empty()) return fail("RowScale: Z must have at least one axis");
      const int64_t rows = rows_of(shape), n = shape.back();
      std::vector<int64_t> row_shape = shape;
      row_shape.back() = 1;
      if (s.GetTensorTypeAndShapeInfo().GetShape() != row_shape)
        return fail("RowScale: S must have Z's shape with a last axis of 1");
      if (bias && bias.GetTensorTypeAndShapeInfo().GetShape() != std::vector<int64_t>{n})
        return fail("RowScale: bias must have shape (N,), N being Z's last axis");
      if (res && res.GetTensorTypeAndShapeInfo().GetShape() != shape)
        return fail("RowScale: R must have Z's shape");
      if (res && !widths.empty()) return fail("RowScale: R cannot be given with widths");
      const bool whole = widths.empty();  // one output: the whole row
      if (!whole && width_total != n) return fail("RowScale: widths must add up to Z's last axis");
      if (ctx.GetOutputCount() != (whole ? 1 : widths.size()))
        return fail("RowScale: one output per width (one output without widths)");
      if (split_heads && shape.size() != 3)
        return fail("RowScale: heads need a Z of shape (B, S, N)");
      ScaleTask t{kn,
                  z.GetTensorData<float>(),
                  s.GetTensorData<float>(),
                  bias ? bias.GetTensorData<float>() : nullptr,
                  res ? res.GetTensorData<float>() : nullptr,
                  {},
                  rows,
                  n,
                  split_heads ? shape[1] : 1};
      int64_t offset = 0;
      for (std::size_t j = 0; j < (whole ? 1 : widths.size()); ++j) {
        const int64_t w = whole ? n : widths[j], h = whole ? 0 : heads[j];
        std::vector<int64_t> out_shape = shape;
        out_shape.back() = w;
        if (h > 0) out_shape = {shape[0], h, shape[1], w / h};  // BNSH
        Ort::UnownedValue y = ctx.GetOutput(j, out_shape);
        t.parts.push_back({y.GetTensorMutableData<float>(), offset, w, h});
        offset += w;
      }
      const auto blocks = static_cast<size_t>((rows + kRowsPerTask - 1) / kRowsPerTask);
      if (blocks > 0) ctx.ParallelFor(scale_rows, blocks, 0, &t);
      return nullptr;
    });
  }
};

struct ScaleOp : Ort::CustomOpBase<ScaleOp, ScaleKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return guarded([&]() -> OrtStatusPtr {
      std::vector<int64_t> widths = optional_ints(info, "widths"),
                           heads = optional_ints(info, "heads");
      if (!heads.empty() && heads.size() != widths.size())
        return fail("RowScale: heads needs one entry per width");
      for (int64_t w : widths)
        if (w <= 0) return fail("RowScale: widths must be positive");
      for (std::size_t j = 0; j < heads.size(); ++j)
        if (heads[j] < 0 || (heads[j] > 0 && widths[j] % heads[j] != 0))
          return fail("RowScale: heads must be 0 or divide its width");
      auto* k = new ScaleKernel;
      if (heads.empty()) heads.assign(widths.size(), 0);
      for (int64_t w : widths) k->width_total += w;
      k->split_heads = std::any_of(heads.begin(), heads.end(), [](int64_t h) { return h > 0; });
      k->widths = std::move(widths);
      k->heads = std::move(heads);
      *kernel = k;
      return nullptr;
    });
  }
  const char* GetName() const { return "RowScale"; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return 4; }
  ONNXTensorElementDataType GetInputType(size_t) const {
    return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return i < 2 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const {
    return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  // one output per width: Y, or Q, K, V of an attention's projection
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t) const {
    return INPUT_OUTPUT_VARIADIC;
  }
};

// One domain for the process: onnxruntime keeps pointers to it in every session that uses it.
Ort::CustomOpDomain& domain() {
  static QuantizeOp quantize_op;
  static ScaleOp scale_op;
  static Ort::CustomOpDomain* d = [] {
    auto* dom = new Ort::CustomOpDomain(kRowOpsDomain);  // never freed: sessions may outlive us
    dom->Add(&quantize_op);
    dom->Add(&scale_op);
    return dom;
  }();
  return *d;
}

}  // namespace

void add_row_ops(Ort::SessionOptions& opts) { opts.Add(domain()); }

}  // namespace inbedder

#ifdef INBEDDER_ROW_OPS_MODULE
// onnxruntime's entry point for a custom-op library (SessionOptions.register_custom_ops_library).
extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) return nullptr;  // cannot even report: an onnxruntime older than ours
  Ort::InitApi(api);
  return inbedder::guarded([&]() -> OrtStatusPtr {
    Ort::UnownedSessionOptions(options).Add(inbedder::domain());
    return nullptr;
  });
}
#endif
