// A named NVTX range around each CUDA entry point, so Nsight Systems and Nsight Compute show
// vilg's launches by name (`vilg profile --trace` / `--ncu`). NVTX3 ships header-only with the
// toolkit; with no profiler attached a range costs one branch.
#pragma once

#if !defined(VILG_CUDA_EMULATE) && __has_include(<nvtx3/nvToolsExt.h>)
#include <nvtx3/nvToolsExt.h>
#define VILG_HAVE_NVTX 1
#endif

namespace vilg::cuda {

class NvtxRange {
 public:
#ifdef VILG_HAVE_NVTX
  explicit NvtxRange(const char* name) { nvtxRangePushA(name); }
  ~NvtxRange() { nvtxRangePop(); }
#else
  explicit NvtxRange(const char*) {}
#endif
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};

}  // namespace vilg::cuda
