// A measurement, not part of inbedder: two onnxruntime custom operators that do what per-token
// int8's graphs (quantize/pertoken.py) do with several stock nodes, to measure what fusing them
// would save (bench/fused_quant.py). Built by that script only.
//
// inbedder.bench.RowQuantize(X) -> (Xq, scale), attribute `shifted` (0 or 1):
//   shifted = 0: s = max(max|x| * (1/127), 1e-30); Xq = saturate(rint(x * (1/s)) + 128)
//   shifted = 1: s = max(max(x + 0.17) * (1/255), 1e-30); Xq = saturate(rint((x + 0.17) * (1/s)))
// per row of the last axis, X (..., K) fp32, Xq (..., K) uint8, scale (..., 1) fp32, with the
// same float operations in the same order as the stock nodes (Abs, ReduceMax, Mul, Max,
// Reciprocal, Mul, QuantizeLinear with scale 1), so the outputs are bit-identical to theirs:
// rint is round-half-even (the default rounding mode, as QuantizeLinear's), and clamping before
// rounding to the integer bounds gives what saturating after it gives.
//
// inbedder.bench.RowScale(Z, S[, bias[, R]]) -> Y = ((Z * S) + bias) + R: the per-row activation
// scale that MatMulIntegerToFloat applies in a separate single-threaded pass over its output when
// its A scale is not a scalar (the graph then gives it A scale 1), with the bias Add and the
// residual Add that follow it, in one pass; Z, R (..., N), S (..., 1), bias (N). The same float
// operations in the same order (IEEE addition commutes), so again bit-identical.
#define ORT_API_MANUAL_INIT
// GCC 12 flags the `__m512 __Y = __Y;` of its own AVX-512 headers' undefined-vector helpers.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr float kInv127 = 1.0f / 127.0f;
constexpr float kInv255 = 1.0f / 255.0f;
constexpr float kShift = 0.17f;  // pertoken.GELU_SHIFT
constexpr float kMinScale = 1e-30f;
constexpr int64_t kRowsPerTask = 8;

float RowPeak(const float* x, int64_t k, bool shifted) {
  int64_t i = 0;
  float peak = shifted ? -INFINITY : 0.f;
#if defined(__AVX512F__)
  const __m512 shift = _mm512_set1_ps(kShift);
  const __m512i magnitude = _mm512_set1_epi32(0x7fffffff);
  __m512 m0 = _mm512_set1_ps(peak), m1 = m0;
  for (; i + 32 <= k; i += 32) {
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
#elif defined(__AVX2__)
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
#endif
  for (; i < k; ++i) peak = std::max(peak, shifted ? x[i] + kShift : std::fabs(x[i]));
  return peak;
}

void RowQuantize(const float* x, uint8_t* q, int64_t k, float inv, bool shifted) {
  const float lo = shifted ? 0.f : -128.f, hi = shifted ? 255.f : 127.f;
  const int32_t zp = shifted ? 0 : 128;
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512 vinv = _mm512_set1_ps(inv), vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
  const __m512 shift = _mm512_set1_ps(kShift);
  const __m512i vzp = _mm512_set1_epi32(zp);
  for (; i + 16 <= k; i += 16) {
    __m512 v = _mm512_loadu_ps(x + i);
    if (shifted) v = _mm512_add_ps(v, shift);
    v = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v, vinv), vlo), vhi);
    __m512i iv = _mm512_add_epi32(_mm512_cvtps_epi32(v), vzp);  // 0..255
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_cvtepi32_epi8(iv));
  }
#elif defined(__AVX2__)
  const __m256 vinv = _mm256_set1_ps(inv), vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
  const __m256 shift = _mm256_set1_ps(kShift);
  const __m256i vzp = _mm256_set1_epi32(zp);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undo the packs' lane split
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
#endif
  for (; i < k; ++i) {
    float v = std::min(std::max((shifted ? x[i] + kShift : x[i]) * inv, lo), hi);
    q[i] = static_cast<uint8_t>(static_cast<int32_t>(std::nearbyint(v)) + zp);
  }
}

struct Task {
  const float* x;
  uint8_t* q;
  float* scale;
  int64_t rows, k;
  bool shifted;
};

void RunRows(void* data, size_t block) {
  const Task& t = *static_cast<const Task*>(data);
  const int64_t first = static_cast<int64_t>(block) * kRowsPerTask;
  const int64_t last = std::min(first + kRowsPerTask, t.rows);
  for (int64_t r = first; r < last; ++r) {
    const float* x = t.x + r * t.k;
    const float s =
        std::max(RowPeak(x, t.k, t.shifted) * (t.shifted ? kInv255 : kInv127), kMinScale);
    t.scale[r] = s;
    RowQuantize(x, t.q + r * t.k, t.k, 1.0f / s, t.shifted);
  }
}

struct Kernel {
  bool shifted;
  Kernel(const OrtApi&, const OrtKernelInfo* info) {
    shifted = Ort::ConstKernelInfo(info).GetAttribute<int64_t>("shifted") != 0;
  }
  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    Ort::ConstValue in = ctx.GetInput(0);
    std::vector<int64_t> shape = in.GetTensorTypeAndShapeInfo().GetShape();  // (..., K)
    const int64_t k = shape.back();
    int64_t rows = 1;
    for (size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
    Ort::UnownedValue q = ctx.GetOutput(0, shape);
    shape.back() = 1;
    Ort::UnownedValue scale = ctx.GetOutput(1, shape);  // (..., 1)
    Task t{in.GetTensorData<float>(),
           q.GetTensorMutableData<uint8_t>(),
           scale.GetTensorMutableData<float>(),
           rows,
           k,
           shifted};
    const auto blocks = static_cast<size_t>((rows + kRowsPerTask - 1) / kRowsPerTask);
    if (blocks > 0) ctx.ParallelFor(RunRows, blocks, 0, &t);  // the session's intra-op pool
  }
};

struct Op : Ort::CustomOpBase<Op, Kernel> {
  void* CreateKernel(const OrtApi& api, const OrtKernelInfo* info) const {
    return new Kernel(api, info);
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

struct ScaleTask {
  const float* z;
  const float* s;
  const float* bias;      // (N) or null
  const float* residual;  // (M, N) or null
  float* y;
  int64_t rows, n;
};

void ScaleRows(void* data, size_t block) {
  const ScaleTask& t = *static_cast<const ScaleTask*>(data);
  const int64_t first = static_cast<int64_t>(block) * kRowsPerTask;
  const int64_t last = std::min(first + kRowsPerTask, t.rows);
  for (int64_t r = first; r < last; ++r) {
    const float* z = t.z + r * t.n;
    const float* res = t.residual ? t.residual + r * t.n : nullptr;
    float* y = t.y + r * t.n;
    const float s = t.s[r];
    if (t.bias && res) {
      for (int64_t i = 0; i < t.n; ++i) y[i] = (z[i] * s + t.bias[i]) + res[i];
    } else if (t.bias) {
      for (int64_t i = 0; i < t.n; ++i) y[i] = z[i] * s + t.bias[i];
    } else {
      for (int64_t i = 0; i < t.n; ++i) y[i] = z[i] * s;
    }
  }
}

struct ScaleKernel {
  ScaleKernel(const OrtApi&, const OrtKernelInfo*) {}
  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    Ort::ConstValue z = ctx.GetInput(0), s = ctx.GetInput(1);
    const size_t inputs = ctx.GetInputCount();
    Ort::ConstValue bias = inputs > 2 ? ctx.GetInput(2) : Ort::ConstValue(nullptr);
    Ort::ConstValue res = inputs > 3 ? ctx.GetInput(3) : Ort::ConstValue(nullptr);
    std::vector<int64_t> shape = z.GetTensorTypeAndShapeInfo().GetShape();  // (..., N)
    const int64_t n = shape.back();
    int64_t rows = 1;
    for (size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
    Ort::UnownedValue y = ctx.GetOutput(0, shape);
    ScaleTask t{z.GetTensorData<float>(),
                s.GetTensorData<float>(),
                bias ? bias.GetTensorData<float>() : nullptr,
                res ? res.GetTensorData<float>() : nullptr,
                y.GetTensorMutableData<float>(),
                rows,
                n};
    const auto blocks = static_cast<size_t>((rows + kRowsPerTask - 1) / kRowsPerTask);
    if (blocks > 0) ctx.ParallelFor(ScaleRows, blocks, 0, &t);
  }
};

struct ScaleOp : Ort::CustomOpBase<ScaleOp, ScaleKernel> {
  void* CreateKernel(const OrtApi& api, const OrtKernelInfo* info) const {
    return new ScaleKernel(api, info);
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
};

}  // namespace

extern "C" OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                     const OrtApiBase* api_base) {
  Ort::InitApi(api_base->GetApi(ORT_API_VERSION));
  static Op op;
  static ScaleOp scale_op;
  static Ort::CustomOpDomain domain("inbedder.bench");
  static bool added = false;
  if (!added) {
    domain.Add(&op);
    domain.Add(&scale_op);
    added = true;
  }
  try {
    Ort::UnownedSessionOptions(options).Add(domain);
  } catch (const Ort::Exception& e) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}
