import Synchronization

/// How work reaches a store's single writer: through the daemon's ingest pipeline (between two
/// group commits, on the writer thread), or straight to a writer no pipeline runs (offline tools,
/// tests), one caller at a time.
package enum WriterAccess: Sendable {
    case pipeline(IngestPipeline)
    case direct(SerializedWriter)

    /// Direct access to a new writer of `store`.
    package static func direct(_ store: any MeterStore, settings: WriterSettings = WriterSettings()) throws -> WriterAccess {
        .direct(SerializedWriter(try store.makeWriter(settings)))
    }

    /// Tells the pipeline that the work it runs now (an import) is getting on: the watchdog,
    /// `/healthz` and `/readyz` take that as the writer's progress, as they take a commit.
    package func reportProgress() {
        if case .pipeline(let pipeline) = self { pipeline.workProgressed() }
    }

    /// Runs `work` with the writer.
    package func perform<T: Sendable>(_ work: @escaping @Sendable (any MeterStoreWriter) throws -> T) async throws -> T {
        switch self {
        case .pipeline(let pipeline): try await pipeline.perform(work)
        case .direct(let writer): try writer.perform(work)
        }
    }
}

/// A writer no pipeline runs, used by one caller at a time.
package final class SerializedWriter: Sendable {
    private let writer: Mutex<any MeterStoreWriter>

    package init(_ writer: sending any MeterStoreWriter) {
        self.writer = Mutex(writer)
    }

    package func perform<T: Sendable>(_ work: (any MeterStoreWriter) throws -> T) throws -> T {
        try self.writer.withLock { writer in try work(writer) }
    }
}
