// The helpers are header-only (see include/subq_shims.h); SwiftPM needs one source file per C target.
#include "subq_shims.h"
