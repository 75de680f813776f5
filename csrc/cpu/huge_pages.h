// Transparent huge pages for large, freshly allocated outputs.
//
// A large CPU tensor is a fresh mmap: its first write takes one page fault per 4 KiB, which on
// virtual machines costs about as much as the kernel's own work (writing a 58 MB grad_images
// faults ~14k times). Where the kernel runs THP in "madvise" mode (the common default), asking for
// huge pages before the first touch cuts that 512-fold. This is what PyTorch's own allocator does
// under THP_MEM_ALLOC_ENABLE=1; here it is applied to the outputs of the mix kernels only.
#pragma once

#include <ATen/ATen.h>

#include <cstddef>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace supermix {
namespace cpu {

inline void advise_huge_pages(const at::Tensor& fresh) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(fresh.data_ptr());
  const uintptr_t end = begin + fresh.nbytes();
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = end & ~(kHugePage - 1);
  // Only beyond glibc's largest mmap threshold (32 MiB), where every allocation is a fresh
  // mapping; smaller blocks may be recycled heap memory that is already faulted in.
  constexpr size_t kMinBytes = size_t(32) << 20;
  if (fresh.nbytes() >= kMinBytes && last > first) {
    // Advice only: failure (THP off, not an mmap) leaves ordinary pages, which is fine.
    (void)madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  }
#else
  (void)fresh;
#endif
}

}  // namespace cpu
}  // namespace supermix
