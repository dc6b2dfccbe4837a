// CUDA runtime helpers usable from plain C++ translation units (no CUDA headers here).
#pragma once
#include <string>

namespace vilg::cuda {

std::string compiler_version();
std::string runtime_version();
int device_count();  // 0 when no driver or device is present

}  // namespace vilg::cuda
