import Dispatch
import Foundation
import GRDB
import NIOConcurrencyHelpers
import ServiceLifecycle
import Synchronization
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

    /// A store outage (issue 13 point 5): while commits fail every reader is stopped and told busy
    /// whatever the queue's depth, nobody is resumed until a commit succeeds, and the writer counts
    /// as alive for the watchdog only while the failure is an unreachable store it keeps retrying.
    @Test(.timeLimit(.minutes(1)), arguments: [true, false])
    func failingCommitsStopEveryReaderUntilOneSucceeds(unreachable: Bool) async throws {
        try await withFailingPipeline(unreachable: unreachable) { pipeline, failure, health in
            func submission(_ meter: String) -> IngestSubmission {
                let now = WallClock.nowMs()
                return IngestSubmission(
                    readings: [SubmittedReading(reading: Reading(meter: meter, seq: 1, timestampMs: now, kwh: 0.5), line: 1, receivedMs: now)],
                    receiver: nil)
            }
            // Given a store that fails every commit
            failure.isOn = true
            #expect(pipeline.submit(submission("S1")) == .accepted)
            // When the writer has failed at it
            try await waitUntil(timeout: .seconds(10)) { pipeline.isStalled }
            // Then one reading in a queue of 1,000 stops every reader, and a submission hears it
            #expect(pipeline.isFull)
            #expect(!pipeline.hasRoom)
            #expect(pipeline.submit(submission("S2")) == .full)
            #expect((pipeline.storeUnreachableSinceMs != nil) == unreachable)
            #expect(pipeline.statistics.commitFailures.load(ordering: .relaxed) >= 1)
            // and nobody is resumed however much room the queue has
            let resumed = Atomic<Int>(0)
            pipeline.whenCapacityAvailable { resumed.add(1, ordering: .relaxed) }
            try await Task.sleep(for: .milliseconds(2_500))
            #expect(resumed.load(ordering: .relaxed) == 0)
            // and past the stale limit the writer is not progressing, but alive only if it waits out an outage
            #expect(!health.isMakingProgress())
            #expect(health.isAlive() == unreachable)

            // When commits succeed again
            failure.isOn = false
            await pipeline.drain()
            // Then the waiting reader is resumed and every reading was committed
            try await waitUntil(timeout: .seconds(5)) { resumed.load(ordering: .relaxed) == 1 }
            #expect(!pipeline.isStalled)
            #expect(!pipeline.isFull)
            #expect(pipeline.failure == nil)
            #expect(pipeline.storeUnreachableSinceMs == nil)
            #expect(health.isMakingProgress())
            #expect(pipeline.statistics.stored.load(ordering: .relaxed) == 2)
        }
    }

    /// A store outage while nothing is committed (issue 13 point 5): the idle writer asks the store
    /// each second, so the outage shows (and readers stop) without a commit to fail, and its end
    /// resumes them without one. A fault that is not an outage (a full disk) does not show there.
    @Test(.timeLimit(.minutes(1)), arguments: [true, false])
    func anIdleWriterFindsAnUnreachableStoreAndItsReturn(unreachable: Bool) async throws {
        try await withFailingPipeline(unreachable: unreachable) { pipeline, failure, health in
            // Given an idle writer whose store goes away
            failure.isOn = true
            if !unreachable {
                // Then a full disk, which only a write meets, leaves the idle writer healthy
                try await Task.sleep(for: .milliseconds(2_500))
                #expect(!pipeline.isStalled && pipeline.failure == nil && health.isMakingProgress())
                return
            }
            // Then within a few of its idle checks the outage shows, with nothing submitted
            try await waitUntil(timeout: .seconds(5)) { pipeline.storeUnreachableSinceMs != nil }
            #expect(pipeline.isStalled && !pipeline.hasRoom)
            #expect(pipeline.failure?.contains("connection refused") == true)
            let resumed = Atomic<Int>(0)
            pipeline.whenCapacityAvailable { resumed.add(1, ordering: .relaxed) }
            // and the writer stays alive for the watchdog while it keeps asking
            try await Task.sleep(for: .milliseconds(2_500))
            #expect(!health.isMakingProgress() && health.isAlive())
            #expect(resumed.load(ordering: .relaxed) == 0)

            // When the store answers again, with still nothing to commit
            failure.isOn = false
            // Then readers resume and the writer is healthy without a commit
            try await waitUntil(timeout: .seconds(5)) { resumed.load(ordering: .relaxed) == 1 }
            #expect(!pipeline.isStalled && !pipeline.isFull)
            #expect(pipeline.failure == nil && pipeline.storeUnreachableSinceMs == nil)
            #expect(health.isMakingProgress())
            #expect(pipeline.statistics.commits.load(ordering: .relaxed) == 0)
        }
    }

    /// A stop while the store does not answer (issue 13 point 5), or refuses every commit (a full
    /// disk, a read-only database), keeps trying to commit what is queued for `stopStoreWait`,
    /// commits it if the store recovers meanwhile, and otherwise stops without it: none of it was
    /// acknowledged, and systemd would SIGKILL a stop that waited out the outage.
    @Test(
        .timeLimit(.minutes(1)),
        arguments: [true, false], [(storeReturns: true, drain: true), (true, false), (false, true), (false, false)])
    func aStopDuringAnOutageWaitsBoundedForTheStore(unreachable: Bool, stop: (storeReturns: Bool, drain: Bool)) async throws {
        let (storeReturns, throughTheIngestServersDrain) = stop
        try await withTemporaryDirectory { directory in
            let store = try StoreLocation.sqlite(path: directory + "/meterd.sqlite").open(logger: testLogger)
            let failure = FailSwitch()
            let pipeline = IngestPipeline(
                writer: FailingWriter(try store.makeWriter(WriterSettings()), failure: failure, unreachable: unreachable),
                configuration: PipelineConfiguration(
                    queueCapacity: 1_000, commitInterval: .milliseconds(1), maximumBatch: 100, stopStoreWait: .seconds(2)),
                logger: testLogger)
            let group = ServiceGroup(services: [pipeline], logger: testLogger)
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                // Given a store that went away and a reading queued for it
                failure.isOn = true
                let reading = Reading(meter: "MTR-STOP", seq: 1, timestampMs: WallClock.nowMs(), kwh: 1)
                _ = pipeline.submit(
                    IngestSubmission(readings: [SubmittedReading(reading: reading, line: 1, receivedMs: WallClock.nowMs())], receiver: nil))
                try await waitUntil(timeout: .seconds(5)) {
                    unreachable ? pipeline.storeUnreachableSinceMs != nil : pipeline.statistics.commitFailures.load(ordering: .relaxed) >= 2
                }

                // When meterd is told to stop: the ingest server, stopped first, drains the
                // writer before the service group stops the writer itself
                let stopping = ContinuousClock.now
                if storeReturns {
                    tasks.addTask {
                        try await Task.sleep(for: .milliseconds(500))
                        failure.isOn = false
                    }
                }
                if throughTheIngestServersDrain { await pipeline.drainForStop() }
                await group.triggerGracefulShutdown()
                try await tasks.waitForAll()
                let took = ContinuousClock.now - stopping

                // Then the stop took no longer than the wait and a retry, and committed the reading if the store came back in time
                #expect(took < .seconds(6), "\(took)")
                let stored = try await store.meterRecord(named: "MTR-STOP")?.readingsTotal ?? 0
                if storeReturns {
                    #expect(stored == 1)
                    #expect(pipeline.statistics.stored.load(ordering: .relaxed) == 1)
                } else {
                    #expect(took >= .seconds(2), "it tried for the whole wait: \(took)")
                    #expect(stored == 0)
                    #expect(pipeline.queueDepth == 0)
                }
            }
        }
    }

    /// A pipeline on a real SQLite file whose writer fails while the switch is on (as an
    /// unreachable server or a full disk), running, with its health as the watchdog sees it.
    private func withFailingPipeline(
        unreachable: Bool, _ body: (IngestPipeline, FailSwitch, WriterHealth) async throws -> Void
    ) async throws {
        try await withTemporaryDirectory { directory in
            let store = try StoreLocation.sqlite(path: directory + "/meterd.sqlite").open(logger: testLogger)
            let failure = FailSwitch()
            let pipeline = IngestPipeline(
                writer: FailingWriter(try store.makeWriter(WriterSettings()), failure: failure, unreachable: unreachable),
                configuration: PipelineConfiguration(queueCapacity: 1_000, commitInterval: .milliseconds(1), maximumBatch: 100),
                logger: testLogger)
            try await withRunningServices([pipeline]) {
                try await body(pipeline, failure, WriterHealth(pipeline: pipeline, staleAfterMs: 2_000))
            }
        }
    }
}
