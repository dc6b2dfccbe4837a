// Lets _C load on glibc 2.28 (the manylinux_2_28 tag) although it is linked on a newer glibc.
//
// The linker binds each glibc reference to the newest version of the symbol. Our own sources
// could pick versions, but libstdc++.a and libcudart_static.a are compiled already, so CMake
// sends those references here with -Wl,--wrap=SYM (see VILG_GLIBC_WRAP in CMakeLists.txt):
//  - functions that glibc 2.34 moved from libpthread / libdl / librt into libc under a new
//    version: the stub jumps to the same function's old version, which every glibc exports;
//  - __libc_single_threaded (2.32), read by libstdc++'s headers to skip atomics: always
//    "maybe multi-threaded", which is what glibc < 2.32 meant too;
//  - arc4random (2.36), from libstdc++'s std::random_device: getrandom (2.25) instead;
//  - fstat64 (2.33; before, an inline wrapper of __fxstat64, which glibc still exports).
#include <cerrno>  // first: defines __GLIBC__
#include <cstdint>
#include <cstdlib>

#if defined(__x86_64__) && defined(__GLIBC__)
#include <sys/random.h>

#define VILG_OLD_SYMBOL(sym, ver)                        \
  __asm__(".text\n"                                      \
          ".symver __vilg_old_" #sym ", " #sym "@" ver "\n" \
          ".globl __wrap_" #sym "\n"                     \
          ".hidden __wrap_" #sym "\n"                    \
          ".type __wrap_" #sym ", @function\n"           \
          "__wrap_" #sym ":\n"                           \
          "  jmp __vilg_old_" #sym "@PLT\n");

#include "glibc_compat_symbols.h"

extern "C" {

// glibc < 2.33's fstat64(fd, buf) was __fxstat64(_STAT_VER = 1 on x86_64, fd, buf)
__asm__(".text\n"
        ".symver __vilg_old___fxstat64, __fxstat64@GLIBC_2.2.5\n"
        ".globl __wrap_fstat64\n"
        ".hidden __wrap_fstat64\n"
        ".type __wrap_fstat64, @function\n"
        "__wrap_fstat64:\n"
        "  mov %rsi, %rdx\n"
        "  mov %edi, %esi\n"
        "  mov $1, %edi\n"
        "  jmp __vilg_old___fxstat64@PLT\n");

__attribute__((visibility("hidden"))) char __wrap___libc_single_threaded = 0;

__attribute__((visibility("hidden"))) uint32_t __wrap_arc4random(void) {
  uint32_t v;
  for (;;) {
    const ssize_t n = getrandom(&v, sizeof v, 0);
    if (n == static_cast<ssize_t>(sizeof v)) return v;
    if (n < 0 && errno != EINTR) std::abort();  // no entropy source: as arc4random would
  }
}

}  // extern "C"
#endif
