// SubqScanC is header-only (static inline functions in include/SubqScanC.h); this file gives
// the target a translation unit.
#include "SubqScanC.h"
