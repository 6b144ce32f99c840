import ArgumentParser
import Foundation
import MeterCore
import SimulatorCore

/// `meter-bench`: micro-benchmarks of the ingest hot path (`swift run -c release meter-bench
/// [--quick]`, the default subcommand `ingest`) and the KPI document over a database file
/// (`meter-bench kpi --db PATH --to YYYY-MM`), and a SwiftNIO read-and-ack floor
/// (`meter-bench ack-floor`, run by `Benchmarks/ingest.py --scenarios niofloor`).
@main
struct MeterBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meter-bench",
        abstract: "Benchmarks of meterd's hot paths; not tests.",
        subcommands: [IngestBenchmark.self, KPIBenchmark.self, AckFloorBenchmark.self],
        defaultSubcommand: IngestBenchmark.self)
}

/// `meter-bench [ingest] [--quick]`: decoder, group commit and aggregate updates.
struct IngestBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ingest",
        abstract: "Micro-benchmarks of the ingest hot path (METER_BENCH_JSON=FILE writes the figures).")

    @Flag(help: "A short run.")
    var quick = false

    func run() async throws {
        try await MeterBenchmarks.run(quick: self.quick)
    }
}

/// The ingest micro-benchmarks.
///
/// Each figure is the median of several timed rounds, with a baseline measured in the same run
/// (Foundation's `JSONDecoder` for the decoder), so the ratio means something on a noisy machine.
/// For instruction counts that do not move with load, run the binary under
/// `valgrind --tool=callgrind`.
enum MeterBenchmarks {
    struct Result: Codable {
        var name: String
        var nanosecondsPerOperation: Double
        var operations: Int
    }

    static func run(quick: Bool) async throws {
        var results: [Result] = []
        let lines = Self.sampleLines(count: quick ? 20_000 : 200_000)

        results.append(
            Self.measure("decoder: ReadingParser, one line", operations: lines.count) {
                let parser = ReadingParser(maximumKwh: 1000)
                var total = 0.0
                for line in lines {
                    line.withUnsafeBytes { bytes in
                        if let reading = try? parser.parse(bytes) { total += reading.kwh }
                    }
                }
                return total
            })
        results.append(
            Self.measure("baseline: Foundation JSONDecoder, one line", operations: lines.count / 10) {
                struct Wire: Decodable { var meter: String; var seq: Int64; var ts: String; var kwh: Double; var status: String? }
                let decoder = JSONDecoder()
                var total = 0.0
                for line in lines.prefix(lines.count / 10) {
                    if let wire = try? decoder.decode(Wire.self, from: Data(line)) { total += wire.kwh }
                }
                return total
            })

        let directory = NSTemporaryDirectory() + "meter-bench-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for (meters, label) in [(10_000, "10k meters"), (1, "1 meter")] {
            let database = try MeterDatabase(path: directory + "/bench-\(meters).sqlite")
            let writer = try IngestWriter(
                database: database, calendar: MonthCalendar(timeZone: TimeZone(identifier: "UTC")!),
                tariff: Tariff(), unknownMeters: .register)
            let rollups = KPIRollups()
            writer.commitListener = rollups  // as in the daemon
            var seq: [Int64] = Array(repeating: 0, count: meters)
            let batchSize = 5_000
            let batches = quick ? 10 : 60
            let now = WallClock.nowMs()
            // Register the meters first so the rounds measure steady state.
            try Self.registerMeters(writer, seq: &seq, nowMs: now)
            try await rollups.load(from: SQLiteMeterStore(database: database))
            var next = 0
            let prepared: [[IngestSubmission]] = (0..<batches).map { _ in
                (0..<batchSize / 50).map { _ in
                    IngestSubmission(
                        readings: (0..<50).map { _ in
                            let index = next % meters
                            next += 1
                            seq[index] += 1
                            return SubmittedReading(
                                reading: Reading(meter: "MTR-\(index)", seq: seq[index], timestampMs: now, kwh: 0.25),
                                line: 1, receivedMs: now + 20)
                        }, receiver: nil)
                }
            }
            var round = 0
            results.append(
                Self.measure(
                    "writer: group commit of 5000 readings, synchronous=FULL, \(label), per reading",
                    operations: batchSize, rounds: batches
                ) {
                    let result = try! writer.commit(prepared[round])
                    round += 1
                    return Double(result.stored)
                })
        }

        // Scenario b's shape: at 10,000 meters × 1 reading/s a 5 ms commit window holds ~50
        // readings, each of a different meter. CPU time of the writer thread, fsync waits excluded.
        do {
            let meters = 10_000
            var seq: [Int64] = Array(repeating: 0, count: meters)
            let now = WallClock.nowMs()
            let writer = try await Self.steadyWriter(path: directory + "/bench-b.sqlite", seq: &seq, nowMs: now)
            var next = 0
            let prepared: [[IngestSubmission]] = (0..<(quick ? 200 : 2_000)).map { _ in
                (0..<50).map { _ in
                    let index = (next &* 7_919) % meters
                    next += 1
                    seq[index] += 1
                    return IngestSubmission(
                        readings: [
                            SubmittedReading(
                                reading: Reading(
                                    meter: "MTR-\(index)", seq: seq[index], timestampMs: now,
                                    kwh: 0.25, status: .fair, voltage: 230.5),
                                line: 1, receivedMs: now + 20)
                        ], receiver: nil)
                }
            }
            results.append(
                Self.measureCommits("writer: commit of 50 readings of 50 of 10k meters (scenario b), CPU per reading", writer, prepared))
        }

        // Scenario a's shape: a read of a meter's connection brings about 20 of its readings (2 KB
        // receive buffer), and a full commit holds 5,000 readings, 250 meters' runs.
        do {
            let meters = 10_000
            var seq: [Int64] = Array(repeating: 0, count: meters)
            let now = WallClock.nowMs()
            let writer = try await Self.steadyWriter(path: directory + "/bench-a.sqlite", seq: &seq, nowMs: now)
            var next = 0
            let prepared: [[IngestSubmission]] = (0..<(quick ? 20 : 100)).map { _ in
                (0..<250).map { _ in
                    let index = next % meters
                    next += 1
                    return IngestSubmission(
                        readings: (0..<20).map { _ in
                            seq[index] += 1
                            return SubmittedReading(
                                reading: Reading(
                                    meter: "MTR-\(index)", seq: seq[index], timestampMs: now + seq[index] * 1_000, kwh: 0.25,
                                    status: .good, voltage: 231.0),
                                line: 1, receivedMs: now + 20)
                        }, receiver: nil)
                }
            }
            results.append(
                Self.measureCommits("writer: commit of 250 meters' runs of 20 readings (scenario a), CPU per reading", writer, prepared))
        }

        print(String(repeating: "-", count: 96))
        for result in results {
            print(result.name.padding(toLength: 80, withPad: " ", startingAt: 0), String(format: "%9.0f ns", result.nanosecondsPerOperation))
        }
        let decoder = results[0].nanosecondsPerOperation, foundation = results[1].nanosecondsPerOperation
        print(String(format: "decoder is %.1f× faster than JSONDecoder on the same lines", foundation / decoder))
        if let path = ProcessInfo.processInfo.environment["METER_BENCH_JSON"] {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(results).write(to: URL(fileURLWithPath: path))
        }
    }

    /// A writer on a new database whose meters (one per element of `seq`) have one reading each, the
    /// KPI rollups attached and loaded as in the daemon: the rounds that follow measure steady state.
    static func steadyWriter(path: String, seq: inout [Int64], nowMs: Int64) async throws -> IngestWriter {
        let database = try MeterDatabase(path: path)
        let writer = try IngestWriter(
            database: database, calendar: MonthCalendar(timeZone: TimeZone(identifier: "UTC")!),
            tariff: Tariff(), unknownMeters: .register)
        let rollups = KPIRollups()
        writer.commitListener = rollups
        try Self.registerMeters(writer, seq: &seq, nowMs: nowMs)
        try await rollups.load(from: SQLiteMeterStore(database: database))
        return writer
    }

    /// Median writer-thread CPU per stored reading over ten rounds, each committing a tenth of `prepared`.
    static func measureCommits(_ name: String, _ writer: IngestWriter, _ prepared: [[IngestSubmission]]) -> Result {
        let perRound = prepared.count / 10
        var round = 0
        return Self.measureCPU(name, operations: prepared.prefix(perRound).reduce(0) { $0 + $1.reduce(0) { $0 + $1.readings.count } }, rounds: 10) {
            var stored = 0
            for _ in 0..<perRound {
                stored += try! writer.commit(prepared[round]).stored
                round += 1
            }
            return Double(stored)
        }
    }

    /// One reading of each meter `MTR-0`…, so the rounds that follow measure steady state.
    static func registerMeters(_ writer: IngestWriter, seq: inout [Int64], nowMs: Int64) throws {
        let readings = seq.indices.map { index in
            seq[index] += 1
            return SubmittedReading(
                reading: Reading(meter: "MTR-\(index)", seq: seq[index], timestampMs: nowMs, kwh: 0.1), line: 1, receivedMs: nowMs)
        }
        _ = try writer.commit([IngestSubmission(readings: readings, receiver: nil)])
    }

    static func measure(_ name: String, operations: Int, rounds: Int = 7, _ body: () -> Double) -> Result {
        median(name, operations: operations, rounds: rounds, clock: Self.wallNanoseconds, body)
    }

    /// Median CPU time of this thread per operation over several rounds of `body`: for work that
    /// waits on fsync, where wall time would measure the disk.
    @inline(never)  // a named frame, so callgrind can collect inside it alone (--toggle-collect)
    static func measureCPU(_ name: String, operations: Int, rounds: Int = 7, _ body: () -> Double) -> Result {
        median(name, operations: operations, rounds: rounds, clock: Self.threadCPUNanoseconds, body)
    }

    static func median(_ name: String, operations: Int, rounds: Int, clock: () -> Double, _ body: () -> Double) -> Result {
        var samples: [Double] = []
        var sink = 0.0
        for _ in 0..<rounds {
            let start = clock()
            sink += body()
            samples.append(clock() - start)
        }
        if sink.isNaN { print("unreachable") }  // keeps the work from being optimised away
        samples.sort()
        return Result(name: name, nanosecondsPerOperation: samples[samples.count / 2] / Double(operations), operations: operations)
    }

    static func wallNanoseconds() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Double(time.tv_sec) * 1e9 + Double(time.tv_nsec)
    }

    static func threadCPUNanoseconds() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
        return Double(time.tv_sec) * 1e9 + Double(time.tv_nsec)
    }

    /// Realistic lines: varied meters, values, optional keys, offsets.
    static func sampleLines(count: Int) -> [[UInt8]] {
        var random = SeededGenerator(seed: 1)
        func next() -> UInt64 { random.next() }
        let base = WallClock.nowMs() - 86_400_000
        return (0..<count).map { index in
            let reading = Reading(
                meter: "MTR-\(String(format: "%06d", Int(next() % 100_000)))", seq: Int64(index), timestampMs: base + Int64(index) * 1000,
                kwh: Double(next() % 100_000) / 10_000, status: [MeterHealth.good, .good, .fair, .poor][Int(next() % 4)],
                fault: next() % 50 == 0 ? "voltage_sag" : nil, voltage: next() % 2 == 0 ? Double(2200 + next() % 200) / 10 : nil)
            return Array(reading.line.utf8.dropLast())
        }
    }
}
