// The prefetch hint lives in include/SubqPrefetch.h as an inline function; SwiftPM needs one
// translation unit per C target.
#include "SubqPrefetch.h"
