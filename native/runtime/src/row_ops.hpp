// inbedder's row operators: two onnxruntime custom operators that do in one pass each what
// per-token int8 graphs (quantize/pertoken.py) do with several stock nodes around every weight
// MatMul, bit-identical to those nodes (README, "Row operators"). A bundle graph that uses them
// is named by the manifest's graphs.<role>.row_ops (quantize/row_ops.py writes it).
//
// inbedder.row_ops.RowQuantize(X) -> (Xq, scale), attribute `shifted` (0 or 1), per row of the
// last axis; X (..., K) fp32, Xq (..., K) uint8, scale (..., 1) fp32:
//   shifted = 0: s = max(max|x| * (1/127), 1e-30); Xq = saturate(rint(x * (1/s)) + 128)
//   shifted = 1: s = max(max(x + 0.17) * (1/255), 1e-30); Xq = saturate(rint((x + 0.17) * (1/s)))
// inbedder.row_ops.RowScale(Z, S[, bias[, R]]) -> Y = ((Z * S) + bias) + R; Z, R (..., N),
//   S (..., 1), bias (N): the per-row activation scale MatMulIntegerToFloat would apply in a pass
//   of its own, with the bias Add and the residual Add after it. With the ints attribute
//   `widths` (adding up to N, no R) it has one output per width, columns [offset, offset + w) of
//   Y: the Split of an attention's packed Q, K, V projection; `heads` (one per width, 0 or a
//   divisor of it) writes an output of a (B, S, N) Z as (B, heads, S, w / heads), the layout
//   MultiHeadAttention takes K and V in without copying them again.
//
// The kernels pick AVX-512, AVX2 or plain loops at run time (the same bits on each);
// INBEDDER_ROW_OPS_ISA=avx2|scalar caps the choice for the kernels of sessions opened while it is
// set (tests compare the paths), another value fails their creation.
#pragma once

#include <onnxruntime_cxx_api.h>

namespace inbedder {

inline constexpr const char* kRowOpsDomain = "inbedder.row_ops";

// Registers the row operators' domain with `opts` (CPU sessions).
void add_row_ops(Ort::SessionOptions& opts);

}  // namespace inbedder
