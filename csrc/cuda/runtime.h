// CUDA runtime helpers usable from plain C++ translation units (no CUDA headers here).
#pragma once
#include <string>

namespace vilg::cuda {

std::string compiler_version();
std::string runtime_version();
int device_count();  // 0 when no driver or device is present

// The installed driver's CUDA version as 1000*major + 10*minor (0: no driver), and the
// driver's release ("580.65.06") when Linux tells it, else "".
int driver_version();
std::string driver_release();
// The oldest driver this build runs on, e.g. "CUDA 13.0 (r580 or newer)".
std::string min_driver();
// "" when the driver can run this build's kernels, else what is wrong and what to do.
std::string driver_problem();
// Throws std::runtime_error with driver_problem() when it is not "".
void require_driver();

}  // namespace vilg::cuda
