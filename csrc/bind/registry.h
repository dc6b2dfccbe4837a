// Each kernel family binds itself (one bind_*.cpp per family) and records which devices it
// runs on, so adding a family never touches the module's entry point.
#pragma once
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <utility>
#include <vector>

#include "../common/tensor_ref.h"

namespace vilg {

namespace py = pybind11;
using Binder = void (*)(py::module_&);

std::vector<Binder>& binders();
// (kernel name, device) pairs reported by build_info().
std::vector<std::pair<std::string, std::string>>& kernel_table();

struct RegisterFamily {
  RegisterFamily(Binder b, std::vector<std::string> kernels) {
    binders().push_back(b);
    for (auto& k : kernels) {
      kernel_table().emplace_back(k, "cpu");
#ifdef VILG_WITH_CUDA
      kernel_table().emplace_back(k, "cuda");
#endif
    }
  }
};

// Optional TensorRef argument (None -> nullptr).
inline const TensorRef* opt_ref(const py::object& o) {
  return o.is_none() ? nullptr : o.cast<const TensorRef*>();
}

[[noreturn]] inline void no_cuda(const char* what) {
  throw std::runtime_error(std::string("vilg: ") + what +
                           " got CUDA tensors, but this build of vilg has no CUDA kernels "
                           "(rebuild with nvcc available; see vilg.build_info())");
}

}  // namespace vilg
