// The vilg._C module: TensorRef, build information, and every registered kernel family.
#ifdef _OPENMP
#include <omp.h>
#endif

#include "registry.h"

#ifdef VILG_WITH_CUDA
#include "../cuda/runtime.h"
#endif

namespace vilg {

std::vector<Binder>& binders() {
  static std::vector<Binder> b;
  return b;
}

std::vector<std::pair<std::string, std::string>>& kernel_table() {
  static std::vector<std::pair<std::string, std::string>> t;
  return t;
}

namespace {

py::dict build_info() {
  py::dict d;
  d["version"] = VILG_VERSION;
  d["build_kind"] = std::string(VILG_BUILD_KIND);  // wheel, editable, ...
  d["cxx_compiler"] = std::string(VILG_CXX_COMPILER);
#ifdef _OPENMP
  d["openmp"] = true;
  d["openmp_max_threads"] = omp_get_max_threads();
#else
  d["openmp"] = false;
#endif
#ifdef VILG_WITH_CUDA
  d["cuda"] = true;
  d["cuda_archs"] = std::string(VILG_CUDA_ARCHS);
  d["cuda_ptx"] = std::string(VILG_CUDA_PTX);
  d["cuda_compiler"] = cuda::compiler_version();
  d["cuda_runtime"] = cuda::runtime_version() + " (static)";
  d["cuda_min_driver"] = cuda::min_driver();
  const int drv = cuda::driver_version();
  d["cuda_driver"] = drv ? std::to_string(drv / 1000) + "." + std::to_string(drv % 1000 / 10)
                         : std::string("none");
  d["cuda_driver_release"] = cuda::driver_release();
  d["cuda_driver_problem"] = cuda::driver_problem();
  d["cuda_devices"] = cuda::device_count();
#else
  d["cuda"] = false;
  d["cuda_archs"] = std::string();
  d["cuda_ptx"] = std::string();
  d["cuda_devices"] = 0;
#endif
  py::list kernels;
  for (auto& [name, dev] : kernel_table()) kernels.append(py::make_tuple(name, dev));
  d["kernels"] = kernels;
  return d;
}

}  // namespace
}  // namespace vilg

PYBIND11_MODULE(_C, m) {
  namespace py = pybind11;
  using vilg::TensorRef;
  m.doc() = "vilg compiled kernels (CPU, and CUDA when built with nvcc)";
  py::class_<TensorRef>(m, "TensorRef")
      .def(py::init([](uintptr_t ptr, int dtype, std::vector<int64_t> shape,
                       std::vector<int64_t> strides, int device) {
             vilg::check(shape.size() == strides.size(), "TensorRef: shape/strides mismatch");
             vilg::check(dtype >= 0 && dtype <= 5, "TensorRef: unknown dtype code");
             return TensorRef{ptr, vilg::DType(dtype), std::move(shape), std::move(strides),
                              device};
           }),
           py::arg("ptr"), py::arg("dtype"), py::arg("shape"), py::arg("strides"),
           py::arg("device"))
      .def_readonly("shape", &TensorRef::shape)
      .def_readonly("strides", &TensorRef::strides)
      .def_readonly("device", &TensorRef::device);
  m.def("build_info", &vilg::build_info);
  // Raises RuntimeError naming the driver found and the one needed when CUDA kernels cannot run.
  m.def("cuda_require_driver", [] {
#ifdef VILG_WITH_CUDA
    vilg::cuda::require_driver();
#endif
  });
  for (auto b : vilg::binders()) b(m);
}
