#include <cuda_runtime.h>

#include <cstdlib>
#include <fstream>
#include <stdexcept>

#include "runtime.h"

namespace vilg::cuda {

namespace {

std::string cuda_str(int v) {
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

// Oldest driver branch per CUDA major version (CUDA minor-version compatibility: any driver
// of the major's first release runs every later minor's runtime, PTX JIT aside).
const char* min_branch(int major) {
  switch (major) {
    case 11: return "r450";
    case 12: return "r525";
    case 13: return "r580";
    default: return "a matching";
  }
}

}  // namespace

std::string compiler_version() {
  return std::to_string(__CUDACC_VER_MAJOR__) + "." + std::to_string(__CUDACC_VER_MINOR__);
}

std::string runtime_version() {
  int v = 0;
  if (cudaRuntimeGetVersion(&v) != cudaSuccess) return "unknown";
  return cuda_str(v);
}

int device_count() {
  if (!driver_problem().empty()) return 0;  // too old a driver: cudart would only fail
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver / no device: clear the sticky error, report none
    return 0;
  }
  return n;
}

int driver_version() {
  // For tests only: pretend the driver supports this CUDA version (0 = no driver), so the
  // too-old-driver path can be exercised on any machine.
  if (const char* fake = std::getenv("VILG_FAKE_CUDA_DRIVER")) return std::atoi(fake);
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return v;
}

std::string driver_release() {
  if (std::getenv("VILG_FAKE_CUDA_DRIVER")) return "";
  std::ifstream f("/sys/module/nvidia/version");
  std::string r;
  if (f) std::getline(f, r);
  return r;
}

std::string min_driver() {
  const int major = CUDART_VERSION / 1000;
  return "CUDA " + std::to_string(major) + ".0 (" + min_branch(major) + " or newer)";
}

std::string driver_problem() {
  const int have = driver_version();
  const int major = CUDART_VERSION / 1000;
  if (have >= major * 1000) return "";
  std::string found;
  if (have == 0) {
    found = "no NVIDIA driver was found";
  } else {
    const std::string rel = driver_release();
    found = "the installed driver" + (rel.empty() ? std::string() : " " + rel) +
            " supports CUDA " + cuda_str(have);
  }
  return "vilg's CUDA kernels were built with CUDA " + cuda_str(CUDART_VERSION) +
         " and need an NVIDIA driver for " + min_driver() + ", but " + found +
         ". Update the driver, or install the vilg build for your driver (vilg-cu12 needs "
         "r525+; see README, 'Install'). CPU tensors still work.";
}

void require_driver() {
  const std::string p = driver_problem();
  if (!p.empty()) throw std::runtime_error(p);
}

}  // namespace vilg::cuda
