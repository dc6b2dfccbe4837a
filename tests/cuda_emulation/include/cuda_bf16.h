// Maps the CUDA header to the host emulation (tests/cuda_emulation only; the build puts the
// csrc/cuda being tested first on the include path).
#pragma once
#include <emulate_api.cuh>
