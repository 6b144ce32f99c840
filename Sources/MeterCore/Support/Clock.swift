#if canImport(Glibc)
import Glibc
#endif
// Depending on module build order, glibc's struct stat and timespec may be attributed to
// Dispatch's C module; importing it keeps MemberImportVisibility satisfied either way.
#if canImport(CDispatch)
import CDispatch
#endif
#if canImport(Darwin)
import Darwin
#endif

/// Wall-clock time in milliseconds since the Unix epoch, without allocating a `Date`.
package enum WallClock {
    package static func nowMs() -> Int64 {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Int64(spec.tv_sec) * 1000 + Int64(spec.tv_nsec) / 1_000_000
    }
}
