#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

@testable import MeterCore
@testable import SimulatorCore

/// Issue 12, point 2: one definition of each rule (meter states, faulty over the period, poor
/// month, the default period in the daemon's zone, tariff), so every interface gives one answer.
///
/// The real `meterd` and `meterctl` run under libfaketime (Debian package `faketime`) with their
/// clocks started at 2026-02-01 02:00 UTC, while meterd's zone is America/New_York, where it is
/// still 2026-01-31 21:00: the default period is 2025-02..2026-01 (UTC would say 2025-03..2026-02).
/// The company's data is chosen so that the other window changes the totals and the faulty meters.
@Suite(.serialized)
struct OneAnswerTests {
    /// libfaketime's start-at time, read in the zone of `TZ` (UTC below).
    static let fakeStart = "@2026-02-01 02:00:00"
    /// The same instant, for the readings' `ts`.
    static let fakeStartMs: Int64 = 1_769_911_200_000
    static let zone = "America/New_York"
    static let expectedPeriod = ["from": "2025-02", "to": "2026-01"]
    static let utcPeriod = ["from": "2025-03", "to": "2026-02"]

    /// The command prefix that starts a program's wall clock at ``fakeStart``: Debian's `faketime`
    /// wrapper with the multi-threaded libfaketime. Fails the test when faketime is not installed.
    ///
    /// Not `LD_PRELOAD` and `FAKETIME` in the environment alone: without `FAKETIME_SHARED`,
    /// libfaketime creates its shared memory and `setenv`s it from its constructor, which moves
    /// `environ`, and a Swift program then sees no `CommandLine.arguments` at all. The wrapper
    /// creates the shared memory first and passes `FAKETIME_SHARED` down.
    static func faketime() throws -> [String] {
        let wrapper = "/usr/bin/faketime"
        guard FileManager.default.isExecutableFile(atPath: wrapper) else {
            Issue.record(
                """
                faketime is not installed (no \(wrapper)): this test runs meterd and meterctl under libfaketime \
                to put them across a month boundary; install it with scripts/install-deps.sh (apt-get install faketime)
                """)
            throw CancellationError()
        }
        return [wrapper, "-m", "-f", Self.fakeStart]
    }

    /// The environment of faked programs: `TZ` says how libfaketime reads ``fakeStart``; monotonic
    /// clocks stay real, so NIO's timers and sleeps work.
    static let fakedEnvironment = ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TZ": "UTC", "FAKETIME_DONT_FAKE_MONOTONIC": "1"]

    /// meterd under the faketime wrapper, which neither forwards signals nor dies with meterd:
    /// signals go to meterd's own pid (the wrapper's child), and meterd dies with the wrapper
    /// (`setpriv --pdeathsig`), which dies with the test.
    struct FakedMeterd {
        let meterd: MeterdUnderTest
        /// meterd's own pid.
        let pid: pid_t

        static func start(dataDirectory: String, arguments: [String]) async throws -> FakedMeterd {
            let meterd = try MeterdUnderTest.start(
                dataDirectory: dataDirectory, arguments: arguments, environment: OneAnswerTests.fakedEnvironment,
                wrapper: try OneAnswerTests.faketime() + ["/usr/bin/setpriv", "--pdeathsig", "KILL"])
            let wrapper = meterd.process.pid
            var child: pid_t?
            do {
                try await waitUntil {
                    let children = (try? String(contentsOfFile: "/proc/\(wrapper)/task/\(wrapper)/children", encoding: .utf8)) ?? ""
                    child = children.split(separator: " ").first.flatMap { pid_t($0) }
                    return child != nil || meterd.process.exitStatus != nil
                }
            } catch {
                meterd.process.stop()
                throw error
            }
            guard let child else {
                Issue.record("faketime exited before starting meterd:\n\(meterd.process.output)")
                throw CancellationError()
            }
            return FakedMeterd(meterd: meterd, pid: child)
        }

        /// SIGTERM to meterd; its exit status, which the wrapper passes on.
        func terminate() async throws -> Int32 {
            if self.meterd.process.exitStatus == nil { kill(self.pid, SIGTERM) }
            return try await self.meterd.process.waitForExit()
        }

        /// Kills both if still running and removes the wrapper's shared memory; for `defer`.
        func stop() {
            if self.meterd.process.exitStatus == nil { kill(self.pid, SIGKILL) }
            self.meterd.process.stop()
            let wrapper = self.meterd.process.pid
            unlink("/dev/shm/faketime_shm_\(wrapper)")
            unlink("/dev/shm/sem.faketime_sem_\(wrapper)")
        }
    }

    /// The company: customers in North and South, monthly rows inside the New York period, in the
    /// month before it (2025-01) and in the month after it (2026-02, inside the UTC period).
    static func writeCompany(_ directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try writeCSV(
            directory, "customer_data.csv",
            [
                "CustomerID,Region,InstallationDate",
                "1,North,2024-01-10",
                "2,North,2024-03-05",
                "3,North,2025-05-20",
                "4,South,2023-11-01",
                "5,South,2024-07-15",
                "6,South,2026-02-01",  // installed after the New York period ends, inside the UTC one
            ])
        try writeCSV(
            directory, "monthly_data.csv",
            [
                "CustomerID,Date,Consumption_kWh,Revenue_$,MeterStatus",
                "1,2025-01-15,100,15,Good",  // before both periods
                "1,2025-02-15,120,18,Poor",  // New York period only: MTR-000001's second poor month
                "1,2025-06-15,110,16.5,Poor",
                "1,2025-12-15,90,13.5,Good",
                "2,2025-02-15,80,12,Good",
                "2,2025-09-15,85,12.75,Fair",
                "2,2026-01-15,70,10.5,Good",
                "3,2025-04-15,60,9,Good",
                "3,2025-11-15,65,9.75,Good",
                "4,2025-03-15,200,30,Good",
                "4,2025-10-15,210,31.5,Fair",
                "5,2025-07-15,130,19.5,Good",
                "5,2025-12-15,150,22.5,Poor",
                "5,2026-02-15,140,21,Poor",  // UTC period only: would make MTR-000005 faulty there
            ])
        try writeCSV(
            directory, "feedback_data.csv",
            [
                "CustomerID,FeedbackDate,SatisfactionScore",
                "1,2025-02-20,4",
                "4,2025-08-01,5",
                "2,2026-02-10,2",
            ])
        try writeCSV(
            directory, "bills.csv",
            [
                "CustomerID,Month,Amount_$,Status",
                "1,2025-02,18,paid",
                "4,2025-10,31.5,unpaid",
                "5,2026-02,21,unpaid",
            ])
    }

    /// What every interface answered in one round.
    struct Answers {
        /// KPI documents (minus `generated_at`, keys sorted) by interface, per region (`""` for none).
        var documents: [String: [(source: String, text: String)]] = [:]
        /// `meters` {active, inactive, faulty} by interface, per region.
        var meters: [String: [(source: String, counts: [Int?])]] = [:]
        /// Inactive meter counts by interface, per region.
        var inactive: [String: [(source: String, count: Int?)]] = [:]
        var periods: [(source: String, period: [String: String])] = []
        /// The parsed region-less document from the status socket (for the expected figures).
        var kpi: [String: [String: Any]] = [:]
        var failures: [String] = []

        var agree: Bool {
            self.failures.isEmpty
                && self.documents.values.allSatisfy { Set($0.map(\.text)).count == 1 }
                && self.meters.values.allSatisfy { Set($0.map { $0.counts.map { $0.map(String.init) ?? "nil" } }).count == 1 }
                && self.inactive.values.allSatisfy { Set($0.map(\.count)).count == 1 }
                && self.periods.allSatisfy { $0.period == OneAnswerTests.expectedPeriod }
        }
    }

    /// The document as compared: parsed, without `generated_at`, re-serialised with sorted keys.
    static func comparable(_ text: String) -> (text: String, object: [String: Any])? {
        guard var object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else { return nil }
        object["generated_at"] = nil
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return nil }
        return (String(decoding: data, as: UTF8.self), object)
    }

    static func meterCounts(_ object: [String: Any]) -> [Int?] {
        let meters = object["meters"] as? [String: Any] ?? [:]
        return ["active", "inactive", "faulty"].map { (meters[$0] as? NSNumber)?.intValue }
    }

    @Test(.timeLimit(.minutes(2)))
    func everyInterfaceGivesOneAnswerAcrossAMonthBoundaryInTheDaemonsZone() async throws {
        let faketime = try Self.faketime()
        let environment = Self.fakedEnvironment
        // libfaketime works here: a faked program sees the start-at time.
        let clock = try runProgram(faketime + ["/bin/date", "-u", "+%Y-%m-%d %H"], environment: environment)
        try #require(clock.stdout == "2026-02-01 02\n", "date under faketime printed \(clock.stdout.debugDescription) \(clock.stderr)")
        let meterctlPath = try BuiltProduct.path("meterctl")

        try await withTemporaryDirectory { directory in
            try Self.writeCompany(directory + "/company")
            // Rates that are exact in binary, so sums agree to the last bit whatever their order.
            try "[tariff]\ndefault = 0.25\nNorth = 0.5\n".write(toFile: directory + "/meterd.conf", atomically: true, encoding: .utf8)
            let data = directory + "/data"
            let faked = try await FakedMeterd.start(
                dataDirectory: data, arguments: ["--config", directory + "/meterd.conf", "--timezone", Self.zone])
            defer { faked.stop() }
            let meterd = faked.meterd
            let ports = try await meterd.ports()
            let socket = meterd.statusSocket

            func meterctl(_ arguments: [String]) async throws -> (status: Int32, out: String, err: String) {
                try await offPool {
                    let result = try runProgram(faketime + [meterctlPath] + arguments, environment: environment)
                    return (result.status, result.stdout, result.stderr)
                }
            }

            // Given the company imported through the daemon…
            let imported = try await meterctl(["--socket", socket, "import", directory + "/company"])
            try #require(imported.status == 0, "meterctl import: \(imported.out)\(imported.err)")

            // …and live readings: MTR-000001 and MTR-000004 report; MTR-000002 reports three faults, one
            // dated in 2025-02 (inside the New York period only); MTR-000003, 5 and 6 never report.
            let now = Self.fakeStartMs - 60_000  // 2026-01-31 20:59 in New York; never ahead of meterd's clock
            let readings = [
                Reading(meter: "MTR-000001", seq: 1, timestampMs: now - 1000, kwh: 0.5),
                Reading(meter: "MTR-000001", seq: 2, timestampMs: now, kwh: 0.5),
                Reading(meter: "MTR-000002", seq: 1, timestampMs: 1_739_188_800_000, kwh: 0.25, fault: "tamper"),  // 2025-02-10 12:00Z
                Reading(meter: "MTR-000002", seq: 2, timestampMs: now - 1000, kwh: 0.5, fault: "overvoltage"),
                Reading(meter: "MTR-000002", seq: 3, timestampMs: now, kwh: 0.5, fault: "overvoltage"),
                Reading(meter: "MTR-000004", seq: 1, timestampMs: now, kwh: 0.5),
            ]
            let client = try await LineClient(port: ports.ingest)
            try await client.send(readings.map(\.line).joined())
            // Acks are cumulative: wait until each meter's last seq is acknowledged.
            let lastSeq = Dictionary(readings.map { ($0.meter, $0.seq) }, uniquingKeysWith: max)
            var acked: [String: Int64] = [:]
            var replies: [String] = []
            while acked != lastSeq, let line = try await client.readLine(timeout: .seconds(10)) {
                replies.append(line)
                if case .ack(let meter, let seq) = DaemonReply.parse(line) { acked[meter] = max(acked[meter] ?? 0, seq) }
            }
            await client.close()
            try #require(acked == lastSeq, "meterd answered \(replies)")

            // When every interface is asked the same questions…
            func collect(includeOffline: Bool, daemonRunning: Bool) async throws -> Answers {
                var answers = Answers()
                func document(_ source: String, region: String?, _ text: String) {
                    guard let parsed = Self.comparable(text) else {
                        answers.failures.append("\(source): not a JSON object: \(text.prefix(300))")
                        return
                    }
                    let object = parsed.object
                    answers.documents[region ?? "", default: []].append((source, parsed.text))
                    answers.meters[region ?? "", default: []].append((source + " meters", Self.meterCounts(object)))
                    let period = object["period"] as? [String: String] ?? [:]
                    answers.periods.append((source, period))
                    if region == nil && source == "status socket kpi" { answers.kpi[""] = object }
                    if let region, source == "status socket kpi" { answers.kpi[region] = object }
                    // The inactive count of a region's document is `/api/inactive?region=`'s.
                    answers.inactive[region ?? "", default: []].append((source + " meters.inactive", Self.meterCounts(object)[1]))
                }
                func tool(_ arguments: [String]) async throws -> String? {
                    let result = try await meterctl(arguments)
                    guard result.status == 0 else {
                        answers.failures.append("meterctl \(arguments.joined(separator: " ")) exited \(result.status): \(result.err)")
                        return nil
                    }
                    return result.out
                }
                for region in [nil, "North", "South"] as [String?] {
                    let regionArguments = region.map { ["--region", $0] } ?? []
                    if includeOffline,
                        let text = try await tool(["kpi", "--db", data + "/meterd.sqlite", "--json"] + regionArguments)
                    {
                        document("meterctl kpi --db (offline)", region: region, text)
                    }
                    guard daemonRunning else { continue }
                    document("status socket kpi", region: region, try await ask(socket, region.map { "kpi - - \($0)" } ?? "kpi"))
                    if let text = try await tool(["--socket", socket, "kpi", "--json"] + regionArguments) {
                        document("meterctl kpi", region: region, text)
                    }
                    let query = region.map { "?region=\($0)" } ?? ""
                    let kpi = try await httpGet(port: ports.http, path: "/api/kpi" + query)
                    document("HTTP /api/kpi\(query)", region: region, kpi.body)
                    let inactive = try await httpGet(port: ports.http, path: "/api/inactive" + query)
                    let inactiveObject = try? JSONSerialization.jsonObject(with: Data(inactive.body.utf8)) as? [String: Any]
                    answers.inactive[region ?? "", default: []].append(
                        ("HTTP /api/inactive\(query) count", (inactiveObject?["count"] as? NSNumber)?.intValue))
                }
                guard daemonRunning else { return answers }
                // The snapshot: the default period, all regions.
                if let out = try await tool(["--socket", socket, "snapshot", "--json"]) {
                    let path = (try? JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])?["snapshot"] as? String
                    if path != data + "/kpi.json" { answers.failures.append("meterctl snapshot answered \(out)") }
                    let text = (try? String(contentsOfFile: data + "/kpi.json", encoding: .utf8)) ?? ""
                    document("snapshot kpi.json", region: nil, text)
                }
                // Status and inactive through meterctl.
                if let out = try await tool(["--socket", socket, "status", "--json"]),
                    let status = try? JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any]
                {
                    let counts = Self.meterCounts(status)
                    answers.meters["", default: []].append(("meterctl status meters", counts))
                    answers.inactive["", default: []].append(("meterctl status meters.inactive", counts[1]))
                }
                if let out = try await tool(["--socket", socket, "inactive", "--json"]) {
                    let object = try? JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any]
                    answers.inactive["", default: []].append(("meterctl inactive count", (object?["count"] as? NSNumber)?.intValue))
                }
                // /metrics: meterd_meters{state="…"}.
                let metrics = try await httpGet(port: ports.http, path: "/metrics").body
                let gauges = ["active", "inactive", "faulty"].map { state -> Int? in
                    let prefix = #"meterd_meters{state="\#(state)"} "#
                    return metrics.split(separator: "\n").first { $0.hasPrefix(prefix) }
                        .flatMap { Double($0.dropFirst(prefix.count)) }.map { Int($0) }
                }
                answers.meters["", default: []].append(("/metrics meterd_meters", gauges))
                answers.inactive["", default: []].append(("/metrics meterd_meters{state=\"inactive\"}", gauges[1]))
                return answers
            }

            // Caches may lag up to about two seconds: poll until every answer agrees and the
            // readings show (three meters active), then judge the last round.
            var answers = Answers()
            let deadline = ContinuousClock.now + .seconds(30)
            repeat {
                answers = try await collect(includeOffline: true, daemonRunning: true)
                if answers.agree, Self.meterCounts(answers.kpi[""] ?? [:]) == [3, 3, 2] { break }
                try await Task.sleep(for: .milliseconds(200))
            } while ContinuousClock.now < deadline

            // Then they give one answer…
            Self.expectOneAnswer(answers)
            // …and it is the one the rules give in the daemon's zone, not in UTC.
            Self.expectFigures(answers.kpi)

            // After meterd stops, meterctl offline still answers the same (it reads the zone meterd recorded).
            let online = answers
            #expect(try await faked.terminate() == 0, "\(meterd.process.output)")
            let offline = try await collect(includeOffline: true, daemonRunning: false)
            #expect(offline.failures.isEmpty, "\(offline.failures)")
            for region in ["", "North", "South"] {
                let stopped = offline.documents[region]?.first?.text
                let running = online.documents[region]?.first { $0.source == "status socket kpi" }?.text
                #expect(
                    stopped != nil && stopped == running,
                    "region \(region.isEmpty ? "(none)" : region): meterctl kpi --db after meterd stopped answered\n\(stopped ?? "nothing")\nwhile meterd answered\n\(running ?? "nothing")"
                )
            }
        }
    }

    /// Every interface's answer equals every other's, per question and region.
    static func expectOneAnswer(_ answers: Answers) {
        #expect(answers.failures.isEmpty, "\(answers.failures)")
        for (source, period) in answers.periods {
            #expect(period == Self.expectedPeriod, "\(source) answered period \(period), expected \(Self.expectedPeriod) (New York)")
            #expect(period != Self.utcPeriod, "\(source) used the UTC period \(period), not the daemon's zone")
        }
        for (region, documents) in answers.documents.sorted(by: { $0.key < $1.key }) {
            #expect(documents.count == (region.isEmpty ? 5 : 4), "region \(region): \(documents.map(\.source))")
            let reference = documents.first { $0.source == "status socket kpi" } ?? documents[0]
            for document in documents where document.text != reference.text {
                Issue.record(
                    """
                    KPI document (region \(region.isEmpty ? "none" : region)) differs: \(document.source) answered
                    \(document.text)
                    while \(reference.source) answered
                    \(reference.text)
                    """)
            }
        }
        for (region, sources) in answers.meters.sorted(by: { $0.key < $1.key }) {
            let reference = sources[0]
            for source in sources where source.counts != reference.counts {
                Issue.record(
                    "meters {active, inactive, faulty} (region \(region.isEmpty ? "none" : region)): \(source.source) = \(source.counts), \(reference.source) = \(reference.counts)"
                )
            }
        }
        for (region, sources) in answers.inactive.sorted(by: { $0.key < $1.key }) {
            let reference = sources[0]
            for source in sources where source.count != reference.count {
                Issue.record(
                    "inactive count (region \(region.isEmpty ? "none" : region)): \(source.source) = \(String(describing: source.count)), \(reference.source) = \(String(describing: reference.count))"
                )
            }
        }
        #expect(answers.meters[""]?.count == 7, "\(answers.meters[""]?.map(\.source) ?? [])")
        #expect(answers.inactive[""]?.count == 9, "\(answers.inactive[""]?.map(\.source) ?? [])")
    }

    /// The figures the rules give over 2025-02..2026-01 (New York), worked out by hand.
    static func expectFigures(_ kpi: [String: [String: Any]]) {
        // Meters: 1, 2, 4 reported; 3, 5, 6 never did (inactive by rule). Faulty: MTR-000001 has two poor
        // months (2025-02, 2025-06); MTR-000002 three faults (one in 2025-02). In the UTC window it would
        // be MTR-000005 alone (poor 2025-12 and 2026-02).
        let expected: [String: (meters: [Int?], customers: Int, kwh: Double, revenue: Double)] = [
            // kWh: imported 320 + 235 + 125 + 410 + 280, live 1 + 1.25 + 0.5. Revenue: imported 205.5,
            // live at North 0.5 and South 0.25 per kWh: 0.5 + 0.625 + 0.125.
            "": ([3, 3, 2], 5, 1372.75, 206.75),
            "North": ([2, 1, 2], 3, 682.25, 103.125),
            "South": ([1, 2, 0], 2, 690.5, 103.625),
        ]
        for (region, figures) in expected {
            let document = kpi[region] ?? [:]
            let name = region.isEmpty ? "all regions" : region
            #expect(Self.meterCounts(document) == figures.meters, "\(name): meters \(document["meters"] ?? "none")")
            #expect(
                number(document["total_customers"]) == Double(figures.customers), "\(name): total_customers \(document["total_customers"] ?? "none")")
            #expect(
                close(number(document["total_consumption_kwh"]), figures.kwh),
                "\(name): total_consumption_kwh \(document["total_consumption_kwh"] ?? "none")")
            #expect(close(number(document["total_revenue"]), figures.revenue), "\(name): total_revenue \(document["total_revenue"] ?? "none")")
            let months = list(document["monthly_consumption"]).compactMap { $0["month"] as? String }
            #expect(months.first == "2025-02" && months.last == "2026-01" && months.count == 12, "\(name): monthly_consumption months \(months)")
        }
        let faulty = list(kpi[""]?["faulty_meters"])
        let byMeter = Dictionary(faulty.map { (($0["meter"] as? String) ?? "?", $0) }, uniquingKeysWith: { first, _ in first })
        #expect(Set(byMeter.keys) == ["MTR-000001", "MTR-000002"], "faulty_meters \(faulty)")
        #expect(number(byMeter["MTR-000001"]?["poor_months"]) == 2 && number(byMeter["MTR-000001"]?["faults"]) == 0, "\(faulty)")
        #expect(number(byMeter["MTR-000002"]?["poor_months"]) == 0 && number(byMeter["MTR-000002"]?["faults"]) == 3, "\(faulty)")
        let satisfaction = object(kpi[""]?["satisfaction"])
        #expect(number(satisfaction["count"]) == 2, "satisfaction \(satisfaction): the 2026-02 feedback is outside the period")
    }
}
