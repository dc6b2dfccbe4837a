// A borrowed view of a caller-owned buffer: the kernels never allocate.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "dtype.h"

namespace vilg {

struct TensorRef {
  uintptr_t ptr = 0;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // in elements
  int device = -1;               // -1: host memory; >= 0: CUDA device index

  int dim() const { return int(shape.size()); }
  int64_t size(int i) const { return shape.at(i < 0 ? i + dim() : i); }
  int64_t stride(int i) const { return strides.at(i < 0 ? i + dim() : i); }
  bool is_cuda() const { return device >= 0; }
  int64_t numel() const {
    int64_t n = 1;
    for (auto s : shape) n *= s;
    return n;
  }
  bool contiguous() const {
    int64_t expect = 1;
    for (int i = dim() - 1; i >= 0; --i) {
      if (shape[i] != 1 && strides[i] != expect) return false;
      expect *= shape[i];
    }
    return true;
  }
  template <typename T> T* data() const { return reinterpret_cast<T*>(ptr); }
};

// Raised as ValueError in Python (pybind11 maps std::invalid_argument).
[[noreturn]] inline void fail(const std::string& msg) { throw std::invalid_argument("vilg: " + msg); }

inline void check(bool ok, const std::string& msg) {
  if (!ok) fail(msg);
}

inline void check_ref(const TensorRef& t, const char* name, DType dtype, int ndim) {
  check(t.ptr != 0 || t.numel() == 0, std::string(name) + " is a null buffer");
  check(t.dtype == dtype, std::string(name) + " must be " + dtype_name(dtype) + ", got " +
                              dtype_name(t.dtype));
  check(t.dim() == ndim, std::string(name) + " must have " + std::to_string(ndim) + " dims");
}

}  // namespace vilg
