// CPU entry points of the decode family (parameters in ../common/decode_params.h).
#pragma once
#include <cstdint>

#include "../common/decode_params.h"

namespace vilg::cpu {

void decode_attention(const DecodeParams& p, DType dtype);

}  // namespace vilg::cpu
