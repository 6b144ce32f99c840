#if canImport(Glibc)
import Glibc
#endif

/// Allocator settings for a daemon that holds many connections on few cores.
package enum MallocTuning {
    /// Limits glibc to two malloc arenas unless `MALLOC_ARENA_MAX` says otherwise.
    ///
    /// glibc gives threads that contend for malloc arenas of their own, up to eight per core, and
    /// memory freed into one arena is not reused by another: with the event loops, the writer and
    /// the concurrency pool, scenario (a) of `Benchmarks/ingest.py` peaked ~15–25 MB higher
    /// with the default. Two arenas on this 2-core machine cost no measurable CPU.
    package static func limitArenas(environment: [String: String]) {
        #if canImport(Glibc)
        guard environment["MALLOC_ARENA_MAX"] == nil else { return }
        _ = glibcMallopt(glibcMarenaMax, 2)
        #endif
    }

    #if canImport(Glibc)
    /// `M_ARENA_MAX` of glibc's `<malloc.h>`, which the Glibc module does not export.
    private static let glibcMarenaMax: Int32 = -8
    #endif
}

#if canImport(Glibc)
@_silgen_name("mallopt")
private func glibcMallopt(_ parameter: Int32, _ value: Int32) -> Int32
#endif
