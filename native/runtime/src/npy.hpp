// NumPy .npy (format 1.0) writer for float32 (N, D) arrays, byte-identical to numpy.save.
#pragma once

#include <cstddef>
#include <string>

namespace inbedder {

// Throws std::runtime_error when the file cannot be written.
void write_npy_f32(const std::string& path, const float* data, std::size_t rows, std::size_t cols);

}  // namespace inbedder
