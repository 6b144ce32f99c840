import Dispatch
import Foundation
import GRDB
import Logging
import ServiceLifecycle
import Synchronization
import Testing

@testable import MeterCore

/// Alerts (SPEC.md section 11): each rule fires once while its condition holds and resolves when it
/// stops holding; changes are recorded in the database and POSTed to a real webhook on a loopback port.
@Suite(.timeLimit(.minutes(3)))
struct AlertTests {
    /// The alert engine over a harness's pipeline and store.
    func engine(
        _ harness: IngestHarness, _ configuration: AlertConfiguration, kpi: KPIEngine? = nil, notifier: WebhookNotifier? = nil,
        inactiveAfterSeconds: Int = 1, logger: Logger = testLogger
    ) -> AlertEngine {
        AlertEngine(
            configuration: configuration,
            sources: AlertSources(pipeline: harness.pipeline, kpi: kpi, inactiveAfterSeconds: inactiveAfterSeconds),
            store: harness.store, writer: .pipeline(harness.pipeline), notifier: notifier, logger: logger)
    }

    func lastReceived(_ harness: IngestHarness, _ meter: String) async throws -> Int64 {
        try await harness.database.pool.read { db in
            try #require(try Int64.fetchOne(db, sql: "SELECT last_received_ms FROM meter WHERE name = ?", arguments: [meter]))
        }
    }

    @Test func aMeterThatStopsFiresInactiveOnceAndResolvesWhenItReportsAgain() async throws {
        try await withTemporaryDirectory { directory in
            let receiver = try await WebhookReceiver.start()
            try await withNotifier(alertConfiguration([.inactive], webhooks: [receiver.url])) { notifier in
                try await IngestHarness.with(directory: directory) { harness in
                    let logs = CapturedLogs()
                    let engine = self.engine(harness, alertConfiguration([.inactive]), notifier: notifier, logger: logs.logger)
                    let monitor = LivenessMonitor(
                        store: harness.store, writer: .pipeline(harness.pipeline), inactiveAfterSeconds: 1, logger: testLogger,
                        observer: engine)
                    let client = try await LineClient(port: harness.port)
                    try await client.send(readingLine(meter: "A-1", seq: 1) + readingLine(meter: "B-1", seq: 1))
                    #expect(try await client.readLine() == #"{"meter":"A-1","ack":1}"#)
                    #expect(try await client.readLine() == #"{"meter":"B-1","ack":1}"#)
                    let silentSince = try await self.lastReceived(harness, "A-1")

                    // Given A-1 falls silent while B-1 keeps reporting
                    try await waitUntil { WallClock.nowMs() > silentSince + 1000 }
                    try await client.send(readingLine(meter: "B-1", seq: 2))
                    #expect(try await client.readLine() == #"{"meter":"B-1","ack":2}"#)
                    let bReported = try await self.lastReceived(harness, "B-1")

                    // When the sweep runs half a second after B-1's reading (A-1 silent for over a second)
                    let checkMs = bReported + 500
                    let transitions = try await monitor.check(nowMs: checkMs)
                    #expect(transitions.wentInactive == ["A-1"])
                    // Then exactly one alert fires, for A-1, with the time it went silent
                    let fired = Alert(
                        rule: .inactive, subject: "A-1", firedMs: checkMs,
                        detail: "no reading since \(RFC3339.format(millisecondsSinceEpoch: silentSince)) (inactive_after 1 s)")
                    #expect(engine.firing == [fired])
                    #expect(fired.id == "inactive:A-1:\(checkMs)")
                    #expect(logs.entries("Alert firing").map { $0["alert.id"]?.description } == [fired.id])

                    // A second sweep while A-1 stays silent changes nothing: one alert, one POST
                    try await monitor.check(nowMs: checkMs + 100)
                    #expect(engine.firing == [fired])

                    // A-1 reports again: the next sweep resolves it
                    try await client.send(readingLine(meter: "A-1", seq: 2))
                    #expect(try await client.readLine() == #"{"meter":"A-1","ack":2}"#)
                    try await monitor.check(nowMs: checkMs + 200)
                    #expect(engine.firing.isEmpty)
                    await client.close()

                    var resolved = fired
                    resolved.state = .resolved
                    resolved.resolvedMs = checkMs + 200
                    resolved.detail = "reporting again"
                    #expect(try await receiver.waitFor(2) == [fired.answer, resolved.answer])
                    try await engine.recordPending()
                    #expect(try await harness.store.alerts(state: nil, limit: 10).alerts == [resolved])
                    #expect(try await harness.store.alerts(state: nil, limit: 10).firing == 0)
                    #expect(logs.entries("Alert resolved").map { $0["alert.id"]?.description } == [fired.id])
                }
            }
            #expect(receiver.alerts.count == 2)
            try await receiver.stop()
        }
    }

    @Test func aFaultyMeterFiresOnceSurvivesARestartWithoutFiringAgainAndResolvesWhenItsFaultsLeaveThePeriod() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                let rollups = KPIRollups()
                try await harness.pipeline.perform { writer in writer.commitListener = rollups }
                let kpi = KPIEngine(store: harness.store, rollups: rollups, settings: KPISettings())
                // Given F-1 reports 3 faults (faulty_faults 3) and G-1 only one
                let client = try await LineClient(port: harness.port)
                var text = (1...3).map { readingLine(meter: "F-1", seq: Int64($0), fault: "tamper") }.joined()
                text += readingLine(meter: "G-1", seq: 1, fault: "tamper")
                try await client.send(text)
                // Acks of one meter in one commit coalesce: wait for each meter's last.
                var acked: Set<String> = []
                while acked.count < 2, let line = try await client.readLine() {
                    if line == #"{"meter":"F-1","ack":3}"# || line == #"{"meter":"G-1","ack":1}"# { acked.insert(line) }
                }
                await client.close()

                let engine = self.engine(harness, alertConfiguration([.faulty]), kpi: kpi)
                let now = WallClock.nowMs()
                let period = kpi.defaultPeriod(nowMs: now)
                let fired = Alert(
                    rule: .faulty, subject: "F-1", firedMs: now,
                    detail: "3 faults and 0 poor months over \(period) (faulty_faults 3, faulty_poor_months 2)")
                #expect(await engine.evaluate(nowMs: now) == [fired])
                #expect(await engine.evaluate(nowMs: now + 1).isEmpty)
                try await engine.recordPending()

                // A restarted engine takes the firing alert over from the database and does not fire again
                // (with the liveness sweep's result arriving while the rules are evaluated: it is said once)
                let logs = CapturedLogs()
                let restarted = self.engine(harness, alertConfiguration([.faulty, .inactive]), kpi: kpi, logger: logs.logger)
                async let swept = restarted.applyLiveness(inactive: [:], nowMs: now + 2)
                async let evaluated = restarted.evaluate(nowMs: now + 2)
                #expect(await swept.isEmpty)
                #expect(await evaluated.isEmpty)
                #expect(restarted.firing == [fired])
                #expect(logs.all.filter { $0.message == "Alerts still firing from the last run" }.count == 1)

                // 400 days on, the faults are outside the 12-month period: resolved
                let later = now + 400 * 86_400_000
                var resolved = fired
                resolved.state = .resolved
                resolved.resolvedMs = later
                resolved.detail = "no longer faulty over \(kpi.defaultPeriod(nowMs: later))"
                #expect(await restarted.evaluate(nowMs: later) == [resolved])
                try await restarted.recordPending()
                #expect(try await harness.store.alerts(state: .resolved, limit: 10).alerts == [resolved])
            }
        }
    }

    /// A meter a sweep flagged before the inactive rule was on (an older meterd, or alerts turned
    /// on later) fires with the time it went silent, as a meter flagged now does.
    @Test func aMeterFlaggedBeforeTheRuleWasOnFiresWithTheTimeItWentSilent() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                let client = try await LineClient(port: harness.port)
                try await client.send(readingLine(meter: "A-1", seq: 1))
                #expect(try await client.readLine() == #"{"meter":"A-1","ack":1}"#)
                await client.close()
                let silentSince = try await self.lastReceived(harness, "A-1")
                // Given a sweep without the rule flagged A-1
                let unobserved = LivenessMonitor(
                    store: harness.store, writer: .pipeline(harness.pipeline), inactiveAfterSeconds: 1, logger: testLogger)
                #expect(try await unobserved.check(nowMs: silentSince + 2000).wentInactive == ["A-1"])

                // When a sweep with the rule runs
                let engine = self.engine(harness, alertConfiguration([.inactive]))
                let monitor = LivenessMonitor(
                    store: harness.store, writer: .pipeline(harness.pipeline), inactiveAfterSeconds: 1, logger: testLogger, observer: engine)
                let checkMs = silentSince + 3000
                #expect(try await monitor.check(nowMs: checkMs).wentInactive.isEmpty)

                // Then A-1's alert names the time it went silent
                let since = RFC3339.format(millisecondsSinceEpoch: silentSince)
                #expect(
                    engine.firing == [
                        Alert(rule: .inactive, subject: "A-1", firedMs: checkMs, detail: "no reading since \(since) (inactive_after 1 s)")
                    ])
            }
        }
    }

    @Test func validationFlagsAboveTheRateFireAndResolveWhenCleanReadingsBringTheShareDown() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                var configuration = alertConfiguration([.validationFlags])
                configuration.flagRate = 0.05
                configuration.flagMinimumReadings = 10
                configuration.flagWindow = .seconds(60)
                let engine = self.engine(harness, configuration)
                let t0 = WallClock.nowMs()
                // No readings yet: nothing to go on
                #expect(await engine.evaluate(nowMs: t0).isEmpty)

                // 20 readings, 2 of them at 300 V (voltage_max 253): 2 flags on 20 readings, 10 % > 5 %
                let client = try await LineClient(port: harness.port)
                let now = WallClock.nowMs()
                try await client.send(
                    (0..<20).map { Reading(meter: "V-\($0)", seq: 1, timestampMs: now, kwh: 0.5, voltage: $0 < 2 ? 300 : 230).line }.joined())
                for _ in 0..<20 { _ = try await client.readLine() }
                let fired = Alert(
                    rule: .validationFlags, subject: "readings", firedMs: t0 + 1000,
                    detail: "2 validation flags on 20 readings in the last 60 s (10.0%), above flag_rate 5.0%")
                #expect(await engine.evaluate(nowMs: t0 + 1000) == [fired])

                // 20 clean readings more: 2 flags on 40 readings, 5 %, not above 5 %
                try await client.send((0..<20).map { Reading(meter: "W-\($0)", seq: 1, timestampMs: now, kwh: 0.5, voltage: 230).line }.joined())
                for _ in 0..<20 { _ = try await client.readLine() }
                await client.close()
                var resolved = fired
                resolved.state = .resolved
                resolved.resolvedMs = t0 + 2000
                resolved.detail = "2 validation flags on 40 readings in the last 60 s (5.0%), at or below flag_rate 5.0%"
                #expect(await engine.evaluate(nowMs: t0 + 2000) == [resolved])
            }
        }
    }

    /// ReadSuccessTests' company in Berlin's zone (North installed 20 February, South on 2 March, an
    /// unknown meter from its first reading on the 2nd), plus a reading of South's meter on the 3rd:
    /// the rule judges the last complete day.
    @Test func aRegionBelowTheReadSuccessMinimumOnTheLastCompleteDayFiresAndResolvesAfterAGoodDay() async throws {
        try await withTemporaryDirectory { directory in
            try ReadSuccessTests.writeCompany(directory + "/csv")
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            _ = try CompanyImporter.importDirectory(directory + "/csv", database: database)
            let writer = try SQLiteMeterStore(database: database).makeWriter(ReadSuccessTests.berlin)
            _ = try writer.commit(ReadSuccessTests.submission(ReadSuccessTests.readings + [("MTR-000002", 1, "2026-03-03T09:00:00Z")]))
            let pipeline = IngestPipeline(writer: writer, configuration: PipelineConfiguration(), logger: testLogger)
            let kpi = offlineEngine(database, timeZone: "Europe/Berlin")
            let engine = AlertEngine(
                configuration: alertConfiguration([.readSuccess]),
                sources: AlertSources(pipeline: pipeline, kpi: kpi, readSuccess: KPIReadSuccessRates(kpi: kpi)),
                store: SQLiteMeterStore(database: database), writer: .pipeline(pipeline), notifier: nil, logger: testLogger)

            // At noon on the 3rd the 2nd is judged: North 1 of 1, South 0 of 1, Unassigned 1 of 1
            let third = ReadSuccessTests.ms("2026-03-03T12:00:00Z")
            let south = Alert(
                rule: .readSuccess, subject: "South", firedMs: third,
                detail: "read success rate on 2026-03-02 0.0% (0 of 1 installed meters reported), below read_success_min 90.0%")
            #expect(await engine.evaluate(nowMs: third) == [south])
            #expect(await engine.evaluate(nowMs: third + 1000).isEmpty)

            // At noon on the 4th the 3rd is judged: South 1 of 1 (resolved), the unknown meter silent (fires)
            let fourth = ReadSuccessTests.ms("2026-03-04T12:00:00Z")
            var resolved = south
            resolved.state = .resolved
            resolved.resolvedMs = fourth
            resolved.detail = "read success rate on 2026-03-03 100.0% (1 of 1 installed meters reported), at or above read_success_min 90.0%"
            let unassigned = Alert(
                rule: .readSuccess, subject: Region.unassigned, firedMs: fourth,
                detail: "read success rate on 2026-03-03 0.0% (0 of 1 installed meters reported), below read_success_min 90.0%")
            #expect(await engine.evaluate(nowMs: fourth) == [resolved, unassigned])
        }
    }

    @Test func aWriteQueueFullForLongerThanBusySecondsFiresAndResolvesOnceItDrains() async throws {
        try await withTemporaryDirectory { directory in
            var daemon = DaemonConfiguration()
            daemon.pipeline.queueCapacity = 10
            try await IngestHarness.with(directory: directory, configuration: daemon) { harness in
                var configuration = alertConfiguration([.ingestBusy])
                configuration.busyAfter = .seconds(1)
                let engine = self.engine(harness, configuration)
                // Given a writer held busy and 10 readings, the queue's capacity, waiting for it
                let gate = DispatchSemaphore(value: 0)
                let entered = DispatchSemaphore(value: 0)
                let held = Task {
                    try await harness.pipeline.perform { _ in
                        entered.signal(); gate.wait()
                    }
                }
                try await offPool { entered.wait() }
                let now = WallClock.nowMs()
                let readings = (1...10).map { seq in
                    SubmittedReading(reading: Reading(meter: "Q-1", seq: Int64(seq), timestampMs: now, kwh: 0.5), line: seq, receivedMs: now)
                }
                #expect(harness.pipeline.submit(IngestSubmission(readings: readings, receiver: nil)) == .full)

                // Full for up to a second: nothing; for longer: fires
                let t0 = now
                #expect(await engine.evaluate(nowMs: t0).isEmpty)
                #expect(await engine.evaluate(nowMs: t0 + 1000).isEmpty)
                let fired = Alert(
                    rule: .ingestBusy, subject: "ingest", firedMs: t0 + 1001,
                    detail: "write queue full since \(RFC3339.format(millisecondsSinceEpoch: t0)) (10 readings waiting); meters are told busy")
                #expect(await engine.evaluate(nowMs: t0 + 1001) == [fired])
                #expect(await engine.evaluate(nowMs: t0 + 1500).isEmpty)

                // The writer takes the queue: resolved
                gate.signal()
                try await held.value
                await harness.pipeline.drain()
                try await waitUntil { !harness.pipeline.isFull }
                var resolved = fired
                resolved.state = .resolved
                resolved.resolvedMs = t0 + 2000
                resolved.detail = "write queue has room again (0 readings waiting)"
                #expect(await engine.evaluate(nowMs: t0 + 2000) == [resolved])
            }
        }
    }

    @Test func aFailingWriterFiresKeepsTheAlertUntilTheDatabaseTakesItAndResolvesWhenCommitsSucceed() async throws {
        try await withTemporaryDirectory { directory in
            let receiver = try await WebhookReceiver.start()
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            let store = SQLiteMeterStore(database: database)
            let failure = FailSwitch()
            let pipeline = IngestPipeline(
                writer: FailingWriter(try store.makeWriter(WriterSettings()), failure: failure),
                configuration: PipelineConfiguration(commitInterval: .milliseconds(1)), logger: testLogger)
            let group = ServiceGroup(services: [pipeline], logger: testLogger)
            try await withNotifier(alertConfiguration([.writer], webhooks: [receiver.url])) { notifier in
                try await withThrowingTaskGroup(of: Void.self) { tasks in
                    tasks.addTask { try await group.run() }
                    let engine = AlertEngine(
                        configuration: alertConfiguration([.writer]), sources: AlertSources(pipeline: pipeline, kpi: nil), store: store,
                        writer: .pipeline(pipeline), notifier: notifier, logger: testLogger)
                    // Given the disk fills up: the commit of a reading fails and is retried
                    failure.isOn = true
                    let now = WallClock.nowMs()
                    pipeline.submit(
                        IngestSubmission(
                            readings: [
                                SubmittedReading(reading: Reading(meter: "D-1", seq: 1, timestampMs: now, kwh: 0.5), line: 1, receivedMs: now)
                            ],
                            receiver: nil))
                    try await waitUntil { pipeline.failure != nil }
                    let t1 = WallClock.nowMs()
                    let fired = Alert(
                        rule: .writer, subject: "writer", firedMs: t1,
                        detail: "commits failing (readings stay queued, unacknowledged): database or disk is full")
                    #expect(await engine.evaluate(nowMs: t1) == [fired])
                    #expect(await engine.evaluate(nowMs: t1 + 1).isEmpty)

                    // The database cannot take the alert either: it is kept, and listed all the same
                    await #expect(throws: FailingWriter.DiskFull.self) { try await engine.recordPending() }
                    #expect(try await store.alerts(state: nil, limit: 10).alerts.isEmpty)
                    #expect(try await engine.list(.firing, limit: 10) == AlertListAnswer(firing: 1, alerts: [fired.answer]))

                    // Space returns: commits succeed, the alert resolves, and both states reach the database
                    failure.isOn = false
                    try await waitUntil { pipeline.failure == nil }
                    let t2 = max(WallClock.nowMs(), t1 + 2)
                    var resolved = fired
                    resolved.state = .resolved
                    resolved.resolvedMs = t2
                    resolved.detail = "commits succeed again"
                    #expect(await engine.evaluate(nowMs: t2) == [resolved])
                    try await engine.recordPending()
                    #expect(try await store.alerts(state: nil, limit: 10).alerts == [resolved])
                    #expect(try await receiver.waitFor(2) == [fired.answer, resolved.answer])

                    await group.triggerGracefulShutdown()
                    try await tasks.waitForAll()
                }
            }
            try await receiver.stop()
        }
    }

    @Test func aWebhookThatIsDownGetsEverythingQueuedInOrderOnceItComesUp() async throws {
        let port = try unusedPort()
        let url = URL(string: "http://127.0.0.1:\(port)/hook")!
        let statistics = AlertStatistics()
        let alerts = [
            Alert(rule: .writer, subject: "writer", firedMs: 1_000, detail: "commits failing"),
            Alert(rule: .inactive, subject: "M-1", firedMs: 2_000, detail: "silent"),
            Alert(rule: .writer, subject: "writer", state: .resolved, firedMs: 1_000, resolvedMs: 3_000, detail: "commits succeed again"),
        ]
        try await withNotifier(alertConfiguration([], webhooks: [url]), statistics: statistics) { notifier in
            // Given nothing listens on the webhook's port
            for alert in alerts { notifier.enqueue(alert) }
            try await waitUntil(timeout: .seconds(60)) { statistics.webhookFailures.load(ordering: .relaxed) >= 2 }
            #expect(notifier.queued(0) == 3)
            #expect(statistics.webhookDeliveries.load(ordering: .relaxed) == 0)

            // When the webhook comes up on that port, it receives all three, in order
            let receiver = try await WebhookReceiver.start(port: port)
            #expect(try await receiver.waitFor(3) == alerts.map(\.answer))
            // Counted once each answer is in, a moment after the receiver saw the request
            try await waitUntil(timeout: .seconds(60)) { statistics.webhookDeliveries.load(ordering: .relaxed) == 3 }
            #expect(notifier.queued(0) == 0)
            #expect(statistics.webhookDropped.load(ordering: .relaxed) == 0)
            try await receiver.stop()
        }
    }

    @Test func aFullWebhookQueueDropsAFiringNoticeItsResolutionSupersedesAndCountsIt() async throws {
        let port = try unusedPort()
        var configuration = alertConfiguration([], webhooks: [URL(string: "http://127.0.0.1:\(port)/hook")!])
        configuration.webhookQueue = 3
        let statistics = AlertStatistics()
        let a = Alert(rule: .inactive, subject: "M-1", firedMs: 1_000, detail: "silent")
        let b = Alert(rule: .inactive, subject: "M-2", firedMs: 2_000, detail: "silent")
        let c = Alert(rule: .inactive, subject: "M-3", firedMs: 3_000, detail: "silent")
        var bResolved = b
        bResolved.state = .resolved
        bResolved.resolvedMs = 4_000
        bResolved.detail = "reporting again"
        let d = Alert(rule: .inactive, subject: "M-4", firedMs: 5_000, detail: "silent")
        let logs = CapturedLogs()
        try await withNotifier(configuration, statistics: statistics, logger: logs.logger) { notifier in
            // Given a webhook that is down and a queue of 3: M-1, M-2 and M-3 firing
            for alert in [a, b, c] { notifier.enqueue(alert) }
            // When M-2 resolves, its firing notice goes: the resolution carries the whole alert
            notifier.enqueue(bResolved)
            #expect(statistics.webhookDropped.load(ordering: .relaxed) == 1)
            // And with nothing superseded, the oldest after the one being sent goes (M-3 firing)
            notifier.enqueue(d)
            #expect(statistics.webhookDropped.load(ordering: .relaxed) == 2)
            #expect(notifier.queued(0) == 3)

            let receiver = try await WebhookReceiver.start(port: port)
            #expect(try await receiver.waitFor(3) == [a.answer, bResolved.answer, d.answer])
            try await receiver.stop()
            // One warning for the streak of drops, naming the first; one when the webhook takes notices again
            let full = logs.entries(
                "Webhook queue full: alert notifications are dropped until it has room (the alerts stay listed by meterctl alerts)")
            #expect(full.map { $0["alert.id"]?.description } == [b.id])
            let again = logs.entries("Webhook took a notification again; some were dropped while its queue was full")
            #expect(again.map { $0["webhook.dropped"]?.description } == ["2"])
        }
    }

    /// The real meterd with an `[alert]` section: a meter that stops reaches the webhook, `/api/alerts`
    /// and `/metrics`; once it reports again the resolution does too; `meterctl alerts` reads the
    /// database after meterd has stopped.
    @Test func meterdPostsAMeterThatStopsToItsWebhookAndMeterctlListsTheAlert() async throws {
        try await withTemporaryDirectory { directory in
            let receiver = try await WebhookReceiver.start()
            let config = directory + "/meterd.conf"
            try """
            inactive_after = 1
            [alert]
            rules = inactive
            webhook = \(receiver.url.absoluteString)
            webhook_retry = 1
            """.write(toFile: config, atomically: true, encoding: .utf8)
            let data = directory + "/data"
            let daemon = try MeterdUnderTest.start(dataDirectory: data, arguments: ["--config", config])
            let ports = try await daemon.ports()
            let client = try await LineClient(port: ports.ingest)
            try await client.send(readingLine(meter: "E-1", seq: 1))
            #expect(try await client.readLine() == #"{"meter":"E-1","ack":1}"#)

            // Silent for over a second: the sweep (every second) flags E-1 and the webhook hears of it
            let fired = try #require(try await receiver.waitFor(1).first)
            #expect(fired.rule == "inactive")
            #expect(fired.subject == "E-1")
            #expect(fired.state == "firing")
            #expect(fired.id == "inactive:E-1:\(try #require(RFC3339.parseMilliseconds(fired.firedAt)))")
            #expect(fired.since == fired.firedAt)
            #expect(fired.resolvedAt == nil)
            let api = try await httpGet(port: ports.http, path: "/api/alerts?state=firing")
            #expect(api.status == 200)
            #expect(try JSONDecoder().decode(AlertListAnswer.self, from: Data(api.body.utf8)) == AlertListAnswer(firing: 1, alerts: [fired]))
            #expect(try await httpGet(port: ports.http, path: "/api/alerts?state=loud").status == 400)
            // meterctl asks the running daemon through the socket it is told, whatever the store
            let meterctl = try BuiltProduct.path("meterctl")
            let asked = try await offPool {
                try runProgram(
                    [meterctl, "alerts", "--socket", daemon.statusSocket, "--state", "firing", "--json"], environment: ["PATH": "/usr/bin:/bin"])
            }
            #expect(asked.status == 0, "\(asked.stderr)")
            #expect(try JSONDecoder().decode(AlertListAnswer.self, from: Data(asked.stdout.utf8)) == AlertListAnswer(firing: 1, alerts: [fired]))
            let badLimit = try await ask(daemon.statusSocket, "alerts firing many")
            #expect(badLimit.contains(#""error":"malformed_command""#) && badLimit.contains("many"), "\(badLimit)")
            let elsewhere = try await offPool {
                try runProgram([meterctl, "alerts", "--socket", directory + "/no.sock"], environment: ["PATH": "/usr/bin:/bin"])
            }
            #expect(elsewhere.status == 3, "a named socket that does not answer is an error, not a silent fallback: \(elsewhere.stderr)")

            // E-1 reports again: the next sweep resolves the same alert
            try await client.send(readingLine(meter: "E-1", seq: 2))
            #expect(try await client.readLine() == #"{"meter":"E-1","ack":2}"#)
            await client.close()
            let resolved = try await receiver.waitFor(2)[1]
            #expect(resolved.id == fired.id)
            #expect(resolved.state == "resolved")
            #expect(resolved.detail == "reporting again")
            #expect(resolved.since == resolved.resolvedAt)
            // E-1 is silent again after its reading, so a later sweep may flag it anew: the counter
            // must come to every notification the webhook accepted, which is at least these two.
            try await waitUntil(timeout: .seconds(60)) {
                let metrics = try await httpGet(port: ports.http, path: "/metrics").body
                let accepted = receiver.alerts.count
                return accepted >= 2 && metrics.contains("meterd_alert_webhook_deliveries_total \(accepted)\n")
            }
            #expect(try await daemon.terminate() == 0)
            try await receiver.stop()

            // meterctl reads the alert back from the database file, meterd stopped
            let json = try runProgram([meterctl, "alerts", "--db", data + "/meterd.sqlite", "--state", "resolved", "--json"])
            #expect(json.status == 0)
            let listed = try JSONDecoder().decode(AlertListAnswer.self, from: Data(json.stdout.utf8))
            #expect(listed.alerts == [resolved])
            let table = try runProgram([meterctl, "alerts", "--db", data + "/meterd.sqlite", "--state", "resolved"])
            #expect(table.status == 0)
            #expect(table.stdout.contains("resolved  inactive  E-1"))
            #expect(table.stdout.hasSuffix("1 alerts shown, \(listed.firing) firing.\n"))
            let missing = try runProgram([meterctl, "alerts", "--db", directory + "/none.sqlite"])
            #expect(missing.status == 1)
            #expect(missing.stderr == "meterctl: no database at \(directory)/none.sqlite\n")
        }
    }

    @Test func theAlertSectionAndAlertPrefixedKeysSetTheSameSettingsAndBadValuesNameTheirKey() throws {
        var configuration = DaemonConfiguration()
        try configuration.load(
            configFile: """
                inactive_after = 600
                alert_webhook = http://127.0.0.1:9000/a
                [alert]
                rules = inactive, writer
                webhook = https://hooks.example.com/meterd?team=ops
                busy_seconds = 120
                flag_rate = 0.2
                webhook_queue = 50
                """, path: "meterd.conf")
        #expect(configuration.inactiveAfterSeconds == 600)
        #expect(configuration.alerts.rules == [.inactive, .writer])
        #expect(configuration.alerts.webhooks.map(\.absoluteString) == ["http://127.0.0.1:9000/a", "https://hooks.example.com/meterd?team=ops"])
        #expect(configuration.alerts.busyAfter == .seconds(120))
        #expect(configuration.alerts.flagRate == 0.2)
        #expect(configuration.alerts.webhookQueue == 50)
        #expect(WebhookTarget(configuration.alerts.webhooks[1])?.path == "/meterd?team=ops")
        #expect(WebhookTarget(configuration.alerts.webhooks[1])?.port == 443)
        #expect(WebhookTarget(configuration.alerts.webhooks[1])?.isAddress == false)
        #expect(WebhookTarget(configuration.alerts.webhooks[0])?.isAddress == true)
        #expect(WebhookTarget(URL(string: "http://[::1]:9000/a%20b")!)?.host == "::1")
        #expect(WebhookTarget(URL(string: "http://[::1]:9000/a%20b")!)?.path == "/a%20b")
        #expect(WebhookTarget(URL(string: "http://[::1]:9000/a%20b")!)?.hostHeader == "[::1]:9000")

        // Defaults: every rule, no webhook
        #expect(DaemonConfiguration().alerts.rules == Set(AlertRule.allCases))
        #expect(DaemonConfiguration().alerts.webhooks.isEmpty)

        var bad = DaemonConfiguration()
        #expect(throws: ConfigurationError(key: "alert.webhook", "expected an http:// or https:// URL, got \"ftp://x\" (meterd.conf:2)")) {
            try bad.load(configFile: "[alert]\nwebhook = ftp://x\n", path: "meterd.conf")
        }
        #expect(
            throws: ConfigurationError(
                key: "alert_rules", "unknown rule \"loud\" (expected inactive, faulty, read_success, validation_flags, writer, ingest_busy or none)")
        ) {
            try bad.set("alert_rules", to: "inactive,loud")
        }
        #expect(throws: ConfigurationError(key: "alert_flag_rate", "expected a share from 0 to 1, got \"2\"")) {
            try bad.set("alert_flag_rate", to: "2")
        }
    }
}

extension AlertTests {
    /// Every alert key is in README's table and, commented out with its default, in Deploy/meterd.conf;
    /// the example's `[alert]` section loads and changes nothing.
    @Test func everyAlertKeyIsDocumentedInReadmeAndTheExampleConfig() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../..").standardized.path
        let readme = try String(contentsOfFile: root + "/README.md", encoding: .utf8)
        let example = try String(contentsOfFile: root + "/Deploy/meterd.conf", encoding: .utf8)
        for (key, _) in AlertConfiguration.keys {
            #expect(readme.contains("`\(key)`"), "README lacks \(key)")
            #expect(example.contains("\n# \(key) = "), "Deploy/meterd.conf lacks \(key)")
        }
        var configuration = DaemonConfiguration()
        try configuration.load(configFile: example, path: "meterd.conf")
        #expect(configuration.alerts == AlertConfiguration())
    }
}

extension CapturedLogs {
    /// Metadata of every entry with this message.
    func entries(_ message: String) -> [Logger.Metadata] {
        self.all.filter { $0.message == message }.map(\.metadata)
    }
}

/// `/api/alerts` for a region-scoped user (SPEC.md section 10).
struct AlertScopeTests {
    @Test func aRegionScopedUserSeesTheAlertsOfTheirRegionsMetersAndRegionOnly() async throws {
        func alert(_ rule: AlertRule, _ subject: String, _ state: AlertState = .firing) -> AlertAnswer {
            Alert(rule: rule, subject: subject, state: state, firedMs: 1_000, resolvedMs: state == .resolved ? 2_000 : nil, detail: "-").answer
        }
        let listing = AlertListAnswer(
            firing: 7,
            alerts: [
                alert(.inactive, "MTR-N1"), alert(.inactive, "MTR-S1"), alert(.faulty, "MTR-N2"), alert(.readSuccess, "North"),
                alert(.readSuccess, "South"), alert(.writer, "writer"), alert(.ingestBusy, "ingest"),
                alert(.validationFlags, "readings", .resolved), alert(.faulty, "MTR-N1", .resolved), alert(.inactive, "MTR-GONE"),
            ])
        let regions = ["MTR-N1": "North", "MTR-N2": "North", "MTR-S1": "South"]
        let asked = Mutex<[String]>([])
        let north = await listing.scoped(to: "North") { meter in
            asked.withLock { $0.append(meter) }
            return regions[meter]
        }
        #expect(
            north.alerts.map { "\($0.rule) \($0.subject) \($0.state)" } == [
                "inactive MTR-N1 firing", "faulty MTR-N2 firing", "read_success North firing", "faulty MTR-N1 resolved",
            ])
        #expect(north.firing == 3)
        // Each meter's region is looked up once per listing.
        #expect(asked.withLock { $0 } == ["MTR-N1", "MTR-S1", "MTR-N2", "MTR-GONE"])
        let south = await listing.scoped(to: "South") { regions[$0] }
        #expect(south.alerts.map(\.subject) == ["MTR-S1", "South"])
    }
}
