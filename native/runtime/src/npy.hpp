// NumPy .npy (format 1.0) writer for (N, D) arrays, byte-identical to numpy.save.
#pragma once

#include <cstddef>
#include <string>

namespace inbedder {

// Throws std::runtime_error when the file cannot be written.
void write_npy_f32(const std::string& path, const float* data, std::size_t rows, std::size_t cols);
// descr: numpy's dtype string ('<f4', '<f2', '|i1', '|u1'); data: rows * cols elements of
// element_bytes bytes, little-endian.
void write_npy(const std::string& path, const char* descr, const void* data, std::size_t rows,
               std::size_t cols, std::size_t element_bytes);

}  // namespace inbedder
