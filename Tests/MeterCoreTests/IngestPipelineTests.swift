import Dispatch
import Foundation
import GRDB
import NIOConcurrencyHelpers
import ServiceLifecycle
import Testing

@testable import MeterCore

@Suite struct IngestPipelineTests {
    /// The back-pressure contract connections rely on: once the queue is at capacity every reader
    /// is told to stop (`isFull`), and paused readers come back oldest first, a few per commit as
    /// the writer makes room, rather than all at once.
    @Test func aFullQueueStopsEveryReaderAndResumesThemOldestFirstAsItDrains() async throws {
        try await withTemporaryDirectory { directory in
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            let writer = try IngestWriter(
                database: database, calendar: MonthCalendar(timeZone: TimeZone(identifier: "UTC")!),
                tariff: Tariff(), unknownMeters: .register)
            let capacity = 640
            let pipeline = IngestPipeline(
                writer: writer,
                configuration: PipelineConfiguration(
                    queueCapacity: capacity, commitInterval: .milliseconds(1), maximumBatch: 60), logger: testLogger)
            let group = ServiceGroup(services: [pipeline], logger: testLogger)
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                // Given a writer held busy, so nothing drains
                let gate = DispatchSemaphore(value: 0)
                let entered = DispatchSemaphore(value: 0)
                let held = Task {
                    try await pipeline.perform { _ in
                        entered.signal(); gate.wait()
                    }
                }
                await withCheckedContinuation { continuation in
                    DispatchQueue.global().async {
                        entered.wait(); continuation.resume()
                    }
                }
                // When readings fill the queue
                let now = WallClock.nowMs()
                var results: [IngestPipeline.SubmitResult] = []
                for meter in 0..<(capacity / 10) {
                    let readings = (1...10).map { seq in
                        SubmittedReading(
                            reading: Reading(meter: "P\(meter)", seq: Int64(seq), timestampMs: now, kwh: 0.5), line: seq, receivedMs: now)
                    }
                    #expect(!pipeline.isFull)
                    results.append(pipeline.submit(IngestSubmission(readings: readings, receiver: nil)))
                }
                // Then only the submission that reached capacity hears it, and every reader sees it
                #expect(results.dropLast().allSatisfy { $0 == .accepted })
                #expect(results.last == .full)
                #expect(pipeline.isFull)

                // And paused readers wait until the writer makes room
                let resumed = NIOLockedValueBox<[(waiter: Int, queueDepth: Int)]>([])
                for waiter in 0..<30 {
                    pipeline.whenCapacityAvailable {
                        let depth = pipeline.queueDepth
                        resumed.withLockedValue { $0.append((waiter, depth)) }
                    }
                }
                #expect(resumed.withLockedValue { $0.isEmpty })
                gate.signal()
                try await held.value
                await pipeline.drain()

                // Then they all resume, oldest first, the first while readings were still queued
                // and later ones as more drained: a few per commit, not all at once
                let order = resumed.withLockedValue { $0 }
                #expect(order.map(\.waiter) == Array(0..<30))
                #expect(order.first!.queueDepth > 0)
                #expect(order.first!.queueDepth > order.last!.queueDepth)
                #expect(!pipeline.isFull)
                let stored = try await database.pool.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM reading")! }
                #expect(stored == capacity)
                await group.triggerGracefulShutdown()
                try await tasks.waitForAll()
            }
        }
    }
}
