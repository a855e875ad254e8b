// Software prefetch for Swift kernels, which have no prefetch instruction of their own.
#ifndef SUBQ_PREFETCH_H
#define SUBQ_PREFETCH_H

/// Asks the CPU to bring the cache line holding `p` into all cache levels, for reading. A hint:
/// it never faults, and does nothing for addresses it cannot prefetch.
static inline __attribute__((always_inline)) void subq_prefetch(const void *p) {
  __builtin_prefetch(p, 0, 3);
}

#endif
