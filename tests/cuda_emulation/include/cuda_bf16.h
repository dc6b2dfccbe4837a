// Maps the CUDA header to the host emulation (tests/cuda_emulation only).
#pragma once
#include "cuda/emulate_api.cuh"
