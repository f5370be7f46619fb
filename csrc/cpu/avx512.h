// What the AVX-512 kernels (shifted_gram.cpp, channel_gram.cpp) share. They
// compile for every x86-64 CPU -- the vector code carries a function-level
// target attribute -- and are chosen at run time, so one build runs everywhere
// and uses AVX-512 where the CPU has it.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define KFAC_EXT_HAVE_AVX512_KERNEL 1
// GCC 12's AVX-512 shuffle/extract wrappers pass an undefined vector as the
// unused merge source and then warn about it where they are inlined (GCC bug
// 105593, fixed in 13); the state below applies to those header lines.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

namespace kfac_ext::avx512 {

// True when the kernels were compiled (x86-64, GCC or Clang) and this CPU
// runs AVX-512F.
inline bool cpu_supported() {
#ifdef KFAC_EXT_HAVE_AVX512_KERNEL
  static const bool supported = __builtin_cpu_supports("avx512f");
  return supported;
#else
  return false;
#endif
}

}  // namespace kfac_ext::avx512
