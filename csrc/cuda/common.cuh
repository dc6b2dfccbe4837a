// Shared by every .cu file: error checks that raise Python exceptions, and a device guard.
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace vilg::cuda {

inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("vilg: CUDA error in ") + what + ": " +
                             cudaGetErrorString(e));
}

// Checks the launch that was just issued (configuration errors surface here, not later).
inline void check_launch(const char* what) { check_cuda(cudaGetLastError(), what); }

// Runs on the tensors' device, restoring the caller's current device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check_cuda(cudaGetDevice(&prev_), "cudaGetDevice");
    if (prev_ != device) check_cuda(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() { cudaSetDevice(prev_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
};

inline cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

}  // namespace vilg::cuda
