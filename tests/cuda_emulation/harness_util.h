// Shared by the per-family harnesses (harness_decode.cpp, harness_vq.cpp, harness_sampling.cpp):
// random inputs, poison, error measures and the case report.
#pragma once
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "common/dtype.h"

namespace emu_test {

using vilg::bf16_t;
using vilg::DType;
using vilg::f16_t;

inline int failures = 0;

template <typename E> constexpr DType dtype_of() {
  return std::is_same_v<E, float> ? DType::F32 : std::is_same_v<E, f16_t> ? DType::F16 : DType::BF16;
}
template <typename E> const char* dtype_str() {
  return std::is_same_v<E, float> ? "f32" : std::is_same_v<E, f16_t> ? "f16" : "bf16";
}
// Storage rounding of one value, relative to the value's size.
template <typename E> double eps() {
  return std::is_same_v<E, float> ? 1.2e-7 : std::is_same_v<E, f16_t> ? 9.8e-4 : 7.9e-3;
}

template <typename E> E poison() {
  if constexpr (std::is_same_v<E, float>) return std::nanf("");
  else return E{0x7fff};
}
template <typename E> bool is_poison(E x) { return std::isnan(vilg::to_float(x)); }

template <typename E>
inline void fill_normal(std::vector<E>& v, std::mt19937& rng, float sd = 1.f) {
  std::normal_distribution<float> nd(0.f, sd);
  for (auto& x : v) x = vilg::from_float<E>(nd(rng));
}

// A case passes when every check holds; prints one line, counts failures.
struct Report {
  std::string name;
  bool ok = true;
  std::string why;
  void require(bool cond, const char* fmt, ...) {
    if (cond) return;
    ok = false;
    char buf[256];
    std::va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (!why.empty()) why += "; ";
    why += buf;
  }
  ~Report() {
    if (!ok) ++failures;
    std::printf("%-60s %s%s%s\n", name.c_str(), ok ? "ok" : "FAIL", why.empty() ? "" : ": ",
                why.c_str());
    std::fflush(stdout);
    if (!ok && std::getenv("VILG_EMU_FAIL_FAST")) std::exit(1);  // mutation testing
  }
};

inline int finish() {
  std::printf("%s\n", failures ? "FAILURES" : "all ok");
  return failures ? 1 : 0;
}

}  // namespace emu_test
