// One switch from a float DType to its host element type, shared by every CPU kernel.
#pragma once
#include <string>

#include "../common/dtype.h"
#include "../common/tensor_ref.h"

namespace vilg::cpu {

// Calls f(T{}) with T = float, f16_t or bf16_t; other dtypes raise ValueError naming `what`.
template <typename F>
void dispatch_float(DType dtype, const char* what, F&& f) {
  switch (dtype) {
    case DType::F32: return f(float{});
    case DType::F16: return f(f16_t{});
    case DType::BF16: return f(bf16_t{});
    default: fail(std::string(what) + ": unsupported dtype " + dtype_name(dtype));
  }
}

}  // namespace vilg::cpu
