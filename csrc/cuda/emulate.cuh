// Host emulation of the CUDA features vilg's kernels use, so that their very source can be run
// on a machine without a GPU (compiled by a C++ compiler with VILG_CUDA_EMULATE; never part of
// the package build). emulate_api.cuh adds the CUDA runtime API, vector / half types and
// intrinsics on top, for the .cu files written against plain CUDA (tests/cuda_emulation/
// translate.py rewrites their launches and __shared__ declarations). Semantics:
//   * each CUDA thread of a block is a fiber (ucontext), scheduled cooperatively; a fiber
//     yields only inside __syncthreads and warp collectives, which wait for all 32 lanes;
//   * warp collectives (shuffles, ballots, __syncwarp, ldmatrix, mma.m16n8k16) are computed from
//     all lanes' inputs with the fragment layouts of the PTX ISA;
//   * cp.async copies land only at cp.async.wait_group, in commit-group order;
//   * shared memory starts as 0xff bytes (NaN as f16, bf16, f32) and every access is checked:
//     reading bytes never written, reading or overwriting bytes with a cp.async in flight, and
//     any read/write or write/write pair of two threads with no barrier between them (a
//     __syncthreads, or a __syncwarp for two lanes of one warp) is reported as a race. Static
//     __shared__ variables live in the same block memory (poisoned per block), but plain
//     accesses to them are not instrumented: only accessors (cp.async, ldmatrix) are checked;
// Global memory is plain host memory (run under AddressSanitizer to catch out-of-bounds use).
#pragma once
#include <ucontext.h>

#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <type_traits>
#include <vector>

#include "../common/dtype.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define VILG_EMU_ASAN 1
#endif

#define __global__
#define __device__
#define __host__
#define __launch_bounds__(...)
#define VILG_DYN_SMEM(name) unsigned char* name = ::vilg::cuda::emu::dyn_smem()

namespace vilg::cuda {

using f16 = ::vilg::f16_t;
using bf16 = ::vilg::bf16_t;

namespace emu {

struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline Dim3 g_thread, g_block, g_block_dim, g_grid;

[[noreturn]] inline void fatal(const char* fmt, ...) {
  std::va_list ap;
  va_start(ap, fmt);
  std::fprintf(stderr, "emulate: block (%u,%u,%u) thread %u: ", g_block.x, g_block.y, g_block.z,
               g_thread.x);
  std::vfprintf(stderr, fmt, ap);
  std::fprintf(stderr, "\n");
  va_end(ap);
  std::abort();
}

enum Kind : int { kShfl, kShflUp, kBallot, kSyncwarp, kLdsm, kLdsmT, kMmaF16, kMmaBF16, kMmaTF32 };

struct Slot {
  uint64_t v[8];
  const void* ptr;
};

struct PendingCopy {
  size_t off;
  unsigned char data[16];
};

struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  int tid = 0;
  bool done = false;
  int be = 0, we = 0;  // block barriers / warp syncs passed
  std::vector<PendingCopy> open;
  std::vector<std::vector<PendingCopy>> groups;
#ifdef VILG_EMU_ASAN
  void* fake_stack = nullptr;
#endif
};

struct WarpState {
  int arrived = 0;
  long gen = 0;
  int kind = -1;
  Slot in[32], out[32];
};

struct Shadow {
  int16_t wtid = -1;  // last writer, -1: never written
  int32_t wbe = 0, wwe = 0;
  int16_t rtid = -1;  // last reader in the latest read epoch, -2: several, -1: none
  int16_t rwarp = -1;  // warp of the readers (-1: several warps)
  int32_t rbe = 0, rwe = 0;
  uint8_t pending = 0;  // cp.async in flight
  uint8_t plain = 0;    // static __shared__ byte: plain accesses are not seen, skip the checks
};

// Static __shared__ variables get fixed offsets in the first kStaticSmem bytes of the block's
// memory; dynamic shared memory follows.
constexpr size_t kStaticSmem = 48 * 1024;

struct Runtime {
  std::vector<Fiber> fibers;
  ucontext_t sched;
  int cur = -1, nthreads = 0;
  std::vector<WarpState> warps;
  int bar_arrived = 0;
  long bar_gen = 0;
  long progress = 0;
  std::vector<unsigned char> smem;
  std::vector<Shadow> shadow;
  std::function<void()> body;
  long races = 0;
  size_t dyn_bytes = 0, static_used = 0;
  std::vector<size_t> static_off;  // per declaration id, ~0: not placed yet
  uint64_t rng = 0x9e3779b97f4a7c15ull;  // schedule order; reseeded per launch
#ifdef VILG_EMU_ASAN
  void* sched_fake_stack = nullptr;
  const void* sched_stack_bottom = nullptr;
  size_t sched_stack_size = 0;
#endif
};

inline Runtime& rt() {
  static Runtime r;
  return r;
}

inline Fiber& me() { return rt().fibers[rt().cur]; }
inline unsigned char* dyn_smem() { return rt().smem.data() + kStaticSmem; }

inline uint64_t next_rand() {
  uint64_t& x = rt().rng;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return x;
}

template <typename V>
inline void shuffle(std::vector<V>& v) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[next_rand() % i]);
}

// The block's instance of static __shared__ declaration `id` (same address for every thread).
template <typename T>
inline T& static_shared(int id) {
  Runtime& R = rt();
  if (size_t(id) >= R.static_off.size()) R.static_off.resize(size_t(id) + 1, ~size_t(0));
  size_t& off = R.static_off[size_t(id)];
  if (off == ~size_t(0)) {
    const size_t a = alignof(T) < 16 ? 16 : alignof(T);
    off = (R.static_used + a - 1) / a * a;
    if (off + sizeof(T) > kStaticSmem) fatal("static shared memory above 48 KiB");
    R.static_used = off + sizeof(T);
    for (size_t i = off; i < off + sizeof(T); ++i) R.shadow[i].plain = 1;
  }
  return *reinterpret_cast<T*>(R.smem.data() + off);
}

// ---- fibers --------------------------------------------------------------------------------

inline void to_scheduler() {
  Runtime& R = rt();
  Fiber& f = me();
#ifdef VILG_EMU_ASAN
  __sanitizer_start_switch_fiber(f.done ? nullptr : &f.fake_stack, R.sched_stack_bottom,
                                 R.sched_stack_size);
#endif
  swapcontext(&f.ctx, &R.sched);
#ifdef VILG_EMU_ASAN
  __sanitizer_finish_switch_fiber(f.fake_stack, nullptr, nullptr);
#endif
}

inline void fiber_entry() {
  Runtime& R = rt();
#ifdef VILG_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &R.sched_stack_bottom, &R.sched_stack_size);
#endif
  R.body();
  Fiber& f = me();
  bool pending = !f.open.empty();  // an empty committed group in flight is harmless
  for (const auto& g : f.groups) pending = pending || !g.empty();
  if (pending) fatal("thread exits with cp.async still pending");
  f.done = true;
  ++R.progress;
  to_scheduler();  // never resumed
}

// ---- shared-memory checking ------------------------------------------------------------------

inline size_t smem_off(const void* p, size_t n, size_t align) {
  Runtime& R = rt();
  const auto* c = static_cast<const unsigned char*>(p);
  if (c < R.smem.data() || c + n > R.smem.data() + R.smem.size())
    fatal("shared memory access out of bounds (offset %ld, %zu bytes, size %zu)",
          long(c - R.smem.data()), n, R.smem.size());
  const size_t off = size_t(c - R.smem.data());
  if (off % align) fatal("misaligned shared memory access (offset %zu, alignment %zu)", off, align);
  return off;
}

inline void race(const char* what, size_t off, int a, int b) {
  ++rt().races;
  fatal("%s race on shared byte %zu between threads %d and %d", what, off, a, b);
}

inline void check_read(size_t off, size_t n, int tid) {
  Runtime& R = rt();
  const Fiber& f = R.fibers[tid];
  const int warp = tid / 32;
  for (size_t i = off; i < off + n; ++i) {
    Shadow& s = R.shadow[i];
    if (s.pending) fatal("read of shared byte %zu while a cp.async to it is in flight", i);
    if (s.plain) continue;
    if (s.wtid == -1) fatal("read of shared byte %zu that was never written", i);
    if (s.wtid != tid) {
      const bool ordered = f.be > s.wbe || (s.wtid / 32 == warp && f.we > s.wwe);
      if (!ordered) race("write/read", i, s.wtid, tid);
    }
    if (s.rtid == -1 || s.rbe < f.be) {
      s.rtid = int16_t(tid);
      s.rwarp = int16_t(warp);
      s.rbe = f.be;
      s.rwe = f.we;
    } else if (s.rtid != tid) {
      s.rtid = -2;
      if (s.rwarp != warp) s.rwarp = -1;
      s.rwe = s.rwe > f.we ? s.rwe : f.we;
    }
  }
}

inline void check_write(size_t off, size_t n, int tid, bool from_copy) {
  Runtime& R = rt();
  const Fiber& f = R.fibers[tid];
  const int warp = tid / 32;
  for (size_t i = off; i < off + n; ++i) {
    Shadow& s = R.shadow[i];
    if (s.pending && !from_copy)
      fatal("write to shared byte %zu while a cp.async to it is in flight", i);
    if (s.plain) continue;
    if (s.rtid != -1 && s.rtid != tid) {
      const bool ordered = f.be > s.rbe || (s.rwarp == warp && f.we > s.rwe);
      if (!ordered) race("read/write", i, s.rtid, tid);
    }
    if (s.wtid >= 0 && s.wtid != tid) {
      const bool ordered = f.be > s.wbe || (s.wtid / 32 == warp && f.we > s.wwe);
      if (!ordered) race("write/write", i, s.wtid, tid);
    }
    s.wtid = int16_t(tid);
    s.wbe = f.be;
    s.wwe = f.we;
    s.rtid = -1;
  }
}

inline void smem_store(void* p, const void* src, size_t n) {
  const size_t off = smem_off(p, n, n);
  check_write(off, n, me().tid, false);
  std::memcpy(rt().smem.data() + off, src, n);
}

inline void smem_load(void* dst, const void* p, size_t n) {
  const size_t off = smem_off(p, n, n);
  check_read(off, n, me().tid);
  std::memcpy(dst, rt().smem.data() + off, n);
}

// ---- cp.async ----------------------------------------------------------------------------------

// src_bytes < 16 (cp.async's src-size operand): only that many bytes are read, the rest of the
// 16 are zero-filled.
inline void cp_async(void* s, const void* g, size_t n, size_t src_bytes = 16) {
  if (n != 16) fatal("only 16-byte cp.async is emulated");
  if (src_bytes > 16) fatal("cp.async src-size above 16");
  if (src_bytes && reinterpret_cast<uintptr_t>(g) % 16) fatal("misaligned cp.async source");
  const size_t off = smem_off(s, 16, 16);
  Runtime& R = rt();
  Fiber& f = me();
  // The write may land any time until the wait: it must already be ordered after earlier
  // accesses of other threads, and nobody may touch the bytes until then.
  check_write(off, 16, f.tid, false);
  PendingCopy c;
  c.off = off;
  std::memset(c.data, 0, 16);
  if (src_bytes) std::memcpy(c.data, g, src_bytes);
  for (size_t i = off; i < off + 16; ++i) {
    if (R.shadow[i].pending) fatal("two cp.async in flight to shared byte %zu", i);
    R.shadow[i].pending = 1;
  }
  f.open.push_back(c);
}

inline void cp_async_commit() {
  Fiber& f = me();
  f.groups.push_back(std::move(f.open));
  f.open.clear();
}

inline void cp_async_wait(int n) {
  Runtime& R = rt();
  Fiber& f = me();
  if (!f.open.empty()) fatal("cp.async.wait_group with uncommitted copies");
  while (int(f.groups.size()) > n) {
    for (const PendingCopy& c : f.groups.front()) {
      for (size_t i = c.off; i < c.off + 16; ++i) R.shadow[i].pending = 0;
      check_write(c.off, 16, f.tid, true);
      std::memcpy(R.smem.data() + c.off, c.data, 16);
    }
    f.groups.erase(f.groups.begin());
  }
}

// ---- collectives -------------------------------------------------------------------------------

inline float half_bits_to_float(uint32_t bits, bool bf) {
  return bf ? ::vilg::to_float(::vilg::bf16_t{uint16_t(bits)})
            : ::vilg::to_float(::vilg::f16_t{uint16_t(bits)});
}

inline void execute(WarpState& w) {
  Runtime& R = rt();
  switch (w.kind) {
    case kShfl:
      for (int l = 0; l < 32; ++l) {
        const int src = l ^ int(w.in[l].v[1]);
        if (src < 0 || src >= 32) fatal("shuffle lane mask out of range");
        w.out[l].v[0] = w.in[src].v[0];
      }
      break;
    case kShflUp:  // lanes below delta keep their own value
      for (int l = 0; l < 32; ++l) {
        if (w.in[l].v[1] != w.in[0].v[1]) fatal("__shfl_up_sync with lane-dependent delta");
        const int src = l - int(w.in[l].v[1]);
        w.out[l].v[0] = w.in[src >= 0 ? src : l].v[0];
      }
      break;
    case kBallot: {
      uint64_t bits = 0;
      for (int l = 0; l < 32; ++l) bits |= uint64_t(w.in[l].v[0] != 0) << l;
      for (int l = 0; l < 32; ++l) w.out[l].v[0] = bits;
      break;
    }
    case kSyncwarp:
      break;
    case kLdsm:
    case kLdsmT: {
      const int warp_base = int(&w - R.warps.data()) * 32;
      uint16_t M[4][8][8];
      for (int i = 0; i < 4; ++i)
        for (int r = 0; r < 8; ++r) {
          const int lane = 8 * i + r;
          const size_t off = smem_off(w.in[lane].ptr, 16, 16);
          check_read(off, 16, warp_base + lane);
          std::memcpy(M[i][r], R.smem.data() + off, 16);
        }
      for (int l = 0; l < 32; ++l)
        for (int i = 0; i < 4; ++i) {
          const int r = l / 4, c = 2 * (l % 4);
          const uint32_t lo = w.kind == kLdsm ? M[i][r][c] : M[i][c][r];
          const uint32_t hi = w.kind == kLdsm ? M[i][r][c + 1] : M[i][c + 1][r];
          w.out[l].v[i] = lo | (hi << 16);
        }
      break;
    }
    case kMmaF16:
    case kMmaBF16: {
      const bool bf = w.kind == kMmaBF16;
      float A[16][16], B[16][8], C[16][8];
      for (int l = 0; l < 32; ++l) {
        const int g = l / 4, t = l % 4;
        const uint64_t* v = w.in[l].v;
        auto lo = [&](uint64_t x) { return half_bits_to_float(uint32_t(x) & 0xffffu, bf); };
        auto hi = [&](uint64_t x) { return half_bits_to_float((uint32_t(x) >> 16) & 0xffffu, bf); };
        A[g][2 * t] = lo(v[0]);
        A[g][2 * t + 1] = hi(v[0]);
        A[g + 8][2 * t] = lo(v[1]);
        A[g + 8][2 * t + 1] = hi(v[1]);
        A[g][2 * t + 8] = lo(v[2]);
        A[g][2 * t + 9] = hi(v[2]);
        A[g + 8][2 * t + 8] = lo(v[3]);
        A[g + 8][2 * t + 9] = hi(v[3]);
        B[2 * t][g] = lo(v[4]);
        B[2 * t + 1][g] = hi(v[4]);
        B[2 * t + 8][g] = lo(v[5]);
        B[2 * t + 9][g] = hi(v[5]);
        float c[4];
        std::memcpy(c, &v[6], 16);
        C[g][2 * t] = c[0];
        C[g][2 * t + 1] = c[1];
        C[g + 8][2 * t] = c[2];
        C[g + 8][2 * t + 1] = c[3];
      }
      float Dm[16][8];
      for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 8; ++j) {
          float acc = C[i][j];
          for (int k = 0; k < 16; ++k) acc += A[i][k] * B[k][j];
          Dm[i][j] = acc;
        }
      for (int l = 0; l < 32; ++l) {
        const int g = l / 4, t = l % 4;
        const float d[4] = {Dm[g][2 * t], Dm[g][2 * t + 1], Dm[g + 8][2 * t], Dm[g + 8][2 * t + 1]};
        std::memcpy(&w.out[l].v[6], d, 16);
      }
      break;
    }
    case kMmaTF32: {
      // m16n8k8, tf32 operands (the hardware reads only the upper 19 bits of each register):
      // a0 (g, t) a1 (g+8, t) a2 (g, t+4) a3 (g+8, t+4); b0 (k t, n g) b1 (k t+4, n g).
      float A[16][8], B[8][8], C[16][8];
      auto tf = [](uint64_t x) {
        const uint32_t u = uint32_t(x) & 0xffffe000u;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
      };
      for (int l = 0; l < 32; ++l) {
        const int g = l / 4, t = l % 4;
        const uint64_t* v = w.in[l].v;
        A[g][t] = tf(v[0]);
        A[g + 8][t] = tf(v[1]);
        A[g][t + 4] = tf(v[2]);
        A[g + 8][t + 4] = tf(v[3]);
        B[t][g] = tf(v[4]);
        B[t + 4][g] = tf(v[5]);
        float c[4];
        std::memcpy(c, &v[6], 16);
        C[g][2 * t] = c[0];
        C[g][2 * t + 1] = c[1];
        C[g + 8][2 * t] = c[2];
        C[g + 8][2 * t + 1] = c[3];
      }
      for (int l = 0; l < 32; ++l) {
        const int g = l / 4, t = l % 4;
        float d[4];
        for (int e = 0; e < 4; ++e) {
          const int i = g + 8 * (e / 2), j = 2 * t + e % 2;
          float acc = C[i][j];
          for (int k = 0; k < 8; ++k) acc += A[i][k] * B[k][j];
          d[e] = acc;
        }
        std::memcpy(&w.out[l].v[6], d, 16);
      }
      break;
    }
    default:
      fatal("unknown collective");
  }
}

inline Slot collective(int kind, const Slot& in) {
  Runtime& R = rt();
  Fiber& f = me();
  const int lane = f.tid % 32;
  WarpState& w = R.warps[f.tid / 32];
  if (w.arrived == 0)
    w.kind = kind;
  else if (w.kind != kind)
    fatal("lanes of one warp wait at different collectives (%d vs %d)", w.kind, kind);
  w.in[lane] = in;
  ++w.arrived;
  ++R.progress;
  const long gen = w.gen;
  if (w.arrived == 32) {
    execute(w);
    w.arrived = 0;
    ++w.gen;
  } else {
    while (w.gen == gen) to_scheduler();
  }
  return w.out[lane];
}

// ---- launching ---------------------------------------------------------------------------------

// Runs `body` once per thread of every block. Blocks run one after another in a seeded random
// order (they must not depend on each other); VILG_EMU_SEED changes the schedule.
inline void launch(Dim3 grid, int nthreads, size_t smem_bytes, std::function<void()> body) {
  Runtime& R = rt();
  if (nthreads % 32) fatal("block size must be a multiple of 32");
  R.nthreads = nthreads;
  R.body = std::move(body);
  static long launches = 0;
  const char* seed_env = std::getenv("VILG_EMU_SEED");
  R.rng = 0x9e3779b97f4a7c15ull ^ (uint64_t(seed_env ? std::atol(seed_env) : 0) << 20) ^
          uint64_t(++launches);
  g_grid = grid;
  g_block_dim = Dim3{unsigned(nthreads), 1, 1};
  constexpr size_t kStack = 256 * 1024;
  R.fibers.resize(size_t(nthreads));
  for (auto& f : R.fibers)
    if (f.stack.size() != kStack) f.stack.assign(kStack, 0);
  R.dyn_bytes = smem_bytes;
  R.static_used = 0;
  R.static_off.clear();
  R.smem.assign(kStaticSmem + smem_bytes, 0xff);
  R.shadow.assign(kStaticSmem + smem_bytes, Shadow{});
  std::vector<Dim3> blocks;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) blocks.push_back(Dim3{bx, by, bz});
  shuffle(blocks);
  std::vector<int> order(static_cast<size_t>(nthreads));
  bool first = true;
  for (const Dim3& blk : blocks) {
    g_block = blk;
    if (!first) {  // fresh poison (and shadow) for what the previous block used
      std::memset(R.smem.data(), 0xff, R.static_used);
      std::memset(R.smem.data() + kStaticSmem, 0xff, smem_bytes);
      for (size_t i = 0; i < R.static_used; ++i) {
        const uint8_t plain = R.shadow[i].plain;
        R.shadow[i] = Shadow{};
        R.shadow[i].plain = plain;
      }
      std::fill(R.shadow.begin() + long(kStaticSmem), R.shadow.end(), Shadow{});
    }
    first = false;
    R.warps.assign(size_t(nthreads / 32), WarpState{});
    R.bar_arrived = 0;
    for (int i = 0; i < nthreads; ++i) {
      Fiber& f = R.fibers[size_t(i)];
      f.tid = i;
      f.done = false;
      f.be = f.we = 0;
      f.open.clear();
      f.groups.clear();
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack.data();
      f.ctx.uc_stack.ss_size = f.stack.size();
      f.ctx.uc_link = nullptr;
      makecontext(&f.ctx, fiber_entry, 0);
      order[size_t(i)] = i;
    }
    int alive = nthreads;
    while (alive > 0) {
      const long before = R.progress;
      shuffle(order);
      for (const int i : order) {
        Fiber& f = R.fibers[size_t(i)];
        if (f.done) continue;
        R.cur = i;
        g_thread = Dim3{unsigned(i), 0, 0};
#ifdef VILG_EMU_ASAN
        __sanitizer_start_switch_fiber(&R.sched_fake_stack, f.stack.data(), f.stack.size());
#endif
        swapcontext(&R.sched, &f.ctx);
#ifdef VILG_EMU_ASAN
        __sanitizer_finish_switch_fiber(R.sched_fake_stack, nullptr, nullptr);
#endif
        if (f.done) --alive;
      }
      if (alive > 0 && R.progress == before)
        fatal("deadlock: threads wait at barriers or collectives that cannot complete");
    }
  }
}

}  // namespace emu

// ---- CUDA built-ins used by the kernels ---------------------------------------------------------

inline void syncthreads_impl() {
  emu::Runtime& R = emu::rt();
  emu::Fiber& f = emu::me();
  ++R.bar_arrived;
  ++R.progress;
  const long gen = R.bar_gen;
  if (R.bar_arrived == R.nthreads) {
    R.bar_arrived = 0;
    ++R.bar_gen;
  } else {
    while (R.bar_gen == gen) emu::to_scheduler();
  }
  ++f.be;
  ++f.we;
}

}  // namespace vilg::cuda

#define threadIdx (::vilg::cuda::emu::g_thread)
#define blockIdx (::vilg::cuda::emu::g_block)
#define blockDim (::vilg::cuda::emu::g_block_dim)
#define gridDim (::vilg::cuda::emu::g_grid)

inline void __syncthreads() { ::vilg::cuda::syncthreads_impl(); }

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  if (mask != 0xffffffffu) ::vilg::cuda::emu::fatal("partial __syncwarp is not emulated");
  ::vilg::cuda::emu::collective(::vilg::cuda::emu::kSyncwarp, {});
  ++::vilg::cuda::emu::me().we;
}

template <typename V>
inline V shfl_impl(int kind, unsigned mask, V v, int arg) {
  static_assert(sizeof(V) == 4 || sizeof(V) == 8, "32- and 64-bit shuffles only");
  if (mask != 0xffffffffu) ::vilg::cuda::emu::fatal("partial shuffle is not emulated");
  ::vilg::cuda::emu::Slot s{};
  std::memcpy(&s.v[0], &v, sizeof(V));
  s.v[1] = uint64_t(arg);
  s = ::vilg::cuda::emu::collective(kind, s);
  V out;
  std::memcpy(&out, &s.v[0], sizeof(V));
  return out;
}

template <typename V>
inline V __shfl_xor_sync(unsigned mask, V v, int lane_mask, int width = 32) {
  if (width != 32) ::vilg::cuda::emu::fatal("shuffle width below 32 is not emulated");
  return shfl_impl(::vilg::cuda::emu::kShfl, mask, v, lane_mask);
}

template <typename V>
inline V __shfl_up_sync(unsigned mask, V v, unsigned delta, int width = 32) {
  if (width != 32) ::vilg::cuda::emu::fatal("shuffle width below 32 is not emulated");
  if (delta >= 32) ::vilg::cuda::emu::fatal("__shfl_up_sync delta out of range");
  return shfl_impl(::vilg::cuda::emu::kShflUp, mask, v, int(delta));
}

inline unsigned __ballot_sync(unsigned mask, int pred) {
  if (mask != 0xffffffffu) ::vilg::cuda::emu::fatal("partial ballot is not emulated");
  ::vilg::cuda::emu::Slot s{};
  s.v[0] = pred != 0;
  return unsigned(::vilg::cuda::emu::collective(::vilg::cuda::emu::kBallot, s).v[0]);
}
