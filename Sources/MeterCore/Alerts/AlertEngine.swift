import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// The regions' read success rates on one day: what the `read_success` rule compares with
/// `read_success_min`.
package protocol ReadSuccessRates: Sendable {
    /// The day judged as of `nowMs` and each region's installed and reporting meters on it; `nil`
    /// when no day can be judged yet.
    func regionReadSuccess(nowMs: Int64) async throws -> (day: Day, regions: [ReadSuccess.RegionDay])?
}

/// What the rules watch: the daemon's own live state, never a second copy of it. The write
/// pipeline (writer health, busy queue, validation flag counters), the KPI engine (faulty meters)
/// and, for `read_success`, the rates; the liveness sweep pushes inactive meters itself
/// (``AlertEngine/livenessChecked(inactive:nowMs:)``).
package struct AlertSources: Sendable {
    package var pipeline: IngestPipeline
    package var kpi: KPIEngine?
    package var readSuccess: (any ReadSuccessRates)?
    /// `inactive_after`, for the inactive alert's detail.
    package var inactiveAfterSeconds: Int

    package init(pipeline: IngestPipeline, kpi: KPIEngine?, readSuccess: (any ReadSuccessRates)? = nil, inactiveAfterSeconds: Int = 900) {
        self.pipeline = pipeline
        self.kpi = kpi
        self.readSuccess = readSuccess
        self.inactiveAfterSeconds = inactiveAfterSeconds
    }
}

/// What one rule sees now: the subjects whose condition holds, with the detail to report; every
/// other alert of the rule is resolved with its `resolved` detail (or `resolvedDefault`).
package struct RuleObservation: Sendable {
    package var holding: [String: String] = [:]
    package var resolved: [String: String] = [:]
    package var resolvedDefault: String

    package init(holding: [String: String] = [:], resolved: [String: String] = [:], resolvedDefault: String) {
        self.holding = holding
        self.resolved = resolved
        self.resolvedDefault = resolvedDefault
    }
}

/// Turns conditions into alerts (SPEC.md section 11): one firing alert per rule and subject at most
/// (de-duplicated), resolved when its condition no longer holds. Every change is logged (firing at
/// `warning`, resolved at `notice`, so both reach the journal), recorded in the database through the
/// single writer, and handed to the webhooks.
///
/// The engine's memory is the truth while it runs: a record the writer cannot take (the disk is full,
/// which is itself an alert) is kept and written once it can. At start it takes over the alerts the
/// database says fire, so a restart neither repeats nor forgets them.
package final class AlertEngine: Service, LivenessObserver, Sendable {
    private struct State {
        var loaded = false
        var firing: [AlertKey: Alert] = [:]
        /// Changes not yet in the database, by id: the newest version of each alert.
        var unsaved: [String: Alert] = [:]
        var recordFailing = false
        /// Sampled counters for `validation_flags`: (time, readings stored, flags raised).
        var flagSamples: [(ms: Int64, stored: Int, flags: Int)] = []
        /// Since when the write queue has been seen full, for `ingest_busy`.
        var busySinceMs: Int64?
        /// Woken when there is something to record.
        var recorder: CheckedContinuation<Void, Never>?
    }

    package let configuration: AlertConfiguration
    private let sources: AlertSources
    private let store: any MeterStore
    private let writer: WriterAccess
    private let notifier: WebhookNotifier?
    private let statistics: AlertStatistics
    private let logger: Logger
    private let state = Mutex(State())
    /// Rules are evaluated only while this node leads (several nodes on one store); `nil`: always.
    private let lease: SingletonLease?

    /// Most alert changes logged one by one per evaluation; the rest are summed up in one line.
    static let loggedChanges = 100

    package init(
        configuration: AlertConfiguration, sources: AlertSources, store: any MeterStore, writer: WriterAccess,
        notifier: WebhookNotifier?, statistics: AlertStatistics = AlertStatistics(), logger: Logger, lease: SingletonLease? = nil
    ) {
        self.lease = lease
        self.configuration = configuration
        self.sources = sources
        self.store = store
        self.writer = writer
        self.notifier = notifier
        self.statistics = statistics
        self.logger = logger
    }

    package func run() async throws {
        await cancelWhenGracefulShutdown {
            await withDiscardingTaskGroup { group in
                group.addTask { await self.recordLoop() }
                while !Task.isCancelled {
                    if self.lease?.isLeader ?? true {
                        await self.evaluate()
                    } else {
                        // The leader owns the firing alerts; this node takes them over from the database when it leads.
                        self.state.withLock { state in
                            state.loaded = false
                            state.firing = [:]
                        }
                    }
                    let pause = min(self.configuration.interval, self.lease?.interval ?? self.configuration.interval)
                    do { try await Task.sleep(for: self.lease?.isLeader ?? true ? self.configuration.interval : pause) } catch { break }
                }
                group.cancelAll()
            }
        }
        // Shutdown: what the writer has not taken yet goes now (the writer stops after this service).
        try? await self.recordPending()
    }

    // MARK: Evaluation

    /// Evaluates every polled rule once and applies what changed; returns the changes.
    @discardableResult
    package func evaluate(nowMs: Int64 = WallClock.nowMs()) async -> [Alert] {
        await self.loadIfNeeded()
        var changes: [Alert] = []
        for rule in [AlertRule.faulty, .readSuccess, .validationFlags, .writer, .ingestBusy] where self.configuration.rules.contains(rule) {
            do {
                guard let observation = try await self.observe(rule, nowMs: nowMs) else { continue }
                changes += self.apply(rule, observation, nowMs: nowMs)
            } catch is CancellationError {
                break  // stopping: a rule left unevaluated changes nothing
            } catch {
                self.logger.error("Alert rule could not be evaluated", metadata: ["alert.rule": "\(rule.rawValue)", "error": "\(error)"])
            }
        }
        self.publish(changes)
        return changes
    }

    /// The liveness sweep's result: `inactive` holds every meter flagged inactive now, with the time
    /// it went silent when the sweep just flagged it. Applies the `inactive` rule; returns the changes.
    package func livenessChecked(inactive: [String: Int64?], nowMs: Int64) async {
        await self.applyLiveness(inactive: inactive, nowMs: nowMs)
    }

    /// ``livenessChecked(inactive:nowMs:)``, returning the changes.
    @discardableResult
    package func applyLiveness(inactive: [String: Int64?], nowMs: Int64 = WallClock.nowMs()) async -> [Alert] {
        guard self.configuration.rules.contains(.inactive) else { return [] }
        await self.loadIfNeeded()
        let threshold = "inactive_after \(self.sources.inactiveAfterSeconds) s"
        var observation = RuleObservation(resolvedDefault: "reporting again")
        for (meter, silentSince) in inactive {
            observation.holding[meter] =
                silentSince.map { "no reading since \(RFC3339.format(millisecondsSinceEpoch: $0)) (\(threshold))" }
                ?? "no reading for longer than \(threshold)"
        }
        let changes = self.apply(.inactive, observation, nowMs: nowMs)
        self.publish(changes)
        return changes
    }

    /// What one polled rule sees now; `nil` when it has nothing to go on (its source is missing).
    func observe(_ rule: AlertRule, nowMs: Int64) async throws -> RuleObservation? {
        let pipeline = self.sources.pipeline
        switch rule {
        case .inactive:
            return nil
        case .faulty:
            guard let kpi = self.sources.kpi else { return nil }
            let period = kpi.defaultPeriod(nowMs: nowMs)
            let rules = kpi.rules
            var observation = RuleObservation(resolvedDefault: "no longer faulty over \(period)")
            for meter in try await kpi.faultyMeters(period: period) {
                observation.holding[meter.meter] =
                    "\(meter.faults) faults and \(meter.poorMonths) poor months over \(period) "
                    + "(faulty_faults \(rules.faultyFaults), faulty_poor_months \(rules.faultyPoorMonths))"
            }
            return observation
        case .readSuccess:
            guard let source = self.sources.readSuccess, let judged = try await source.regionReadSuccess(nowMs: nowMs) else { return nil }
            let minimum = self.configuration.readSuccessMinimum
            var observation = RuleObservation(resolvedDefault: "no installed meter left in the region on \(judged.day)")
            for region in judged.regions {
                guard let rate = region.rate else { continue }
                let figures =
                    "read success rate on \(judged.day) \(Self.percent(rate)) (\(region.reporting) of \(region.installed) installed meters reported)"
                if rate < minimum {
                    observation.holding[region.region] = "\(figures), below read_success_min \(Self.percent(minimum))"
                } else {
                    observation.resolved[region.region] = "\(figures), at or above read_success_min \(Self.percent(minimum))"
                }
            }
            return observation
        case .validationFlags:
            let statistics = pipeline.statistics
            let sample = (ms: nowMs, stored: statistics.stored.load(ordering: .relaxed), flags: statistics.validationFlags.load(ordering: .relaxed))
            let windowMs = Self.milliseconds(self.configuration.flagWindow)
            let base = self.state.withLock { state in
                state.flagSamples.append(sample)
                state.flagSamples.removeAll { $0.ms < nowMs - windowMs }
                return state.flagSamples.first ?? sample
            }
            let readings = sample.stored - base.stored
            let flags = sample.flags - base.flags
            let limit = self.configuration.flagRate
            let seconds = windowMs / 1000
            guard readings >= self.configuration.flagMinimumReadings else {
                return RuleObservation(
                    resolvedDefault:
                        "\(readings) readings in the last \(seconds) s, fewer than flag_min_readings \(self.configuration.flagMinimumReadings)")
            }
            let rate = Double(flags) / Double(readings)
            let figures = "\(flags) validation flags on \(readings) readings in the last \(seconds) s (\(Self.percent(rate)))"
            if rate > limit {
                return RuleObservation(holding: ["readings": "\(figures), above flag_rate \(Self.percent(limit))"], resolvedDefault: "")
            }
            return RuleObservation(resolvedDefault: "\(figures), at or below flag_rate \(Self.percent(limit))")
        case .writer:
            let health = WriterHealth(pipeline: pipeline, staleAfterMs: Self.milliseconds(self.configuration.writerStallAfter))
            if let failure = pipeline.failure {
                return RuleObservation(
                    holding: ["writer": "commits failing (readings stay queued, unacknowledged): \(failure)"], resolvedDefault: "")
            }
            let last = pipeline.lastProgressMs
            if last > 0, !health.isMakingProgress(nowMs: nowMs) {
                return RuleObservation(
                    holding: ["writer": "no commit and no idle check for \((nowMs - last) / 1000) s (writer_stall_seconds)"], resolvedDefault: "")
            }
            return RuleObservation(resolvedDefault: "commits succeed again")
        case .ingestBusy:
            let full = pipeline.isFull
            let depth = pipeline.queueDepth
            let since = self.state.withLock { state -> Int64? in
                state.busySinceMs = full ? (state.busySinceMs ?? nowMs) : nil
                return state.busySinceMs
            }
            if let since, nowMs - since > Self.milliseconds(self.configuration.busyAfter) {
                return RuleObservation(
                    holding: [
                        "ingest":
                            "write queue full since \(RFC3339.format(millisecondsSinceEpoch: since)) (\(depth) readings waiting); meters are told busy"
                    ], resolvedDefault: "")
            }
            return RuleObservation(
                resolvedDefault: full ? "write queue full for less than busy_seconds" : "write queue has room again (\(depth) readings waiting)")
        }
    }

    /// Fires what newly holds, resolves what no longer does.
    private func apply(_ rule: AlertRule, _ observation: RuleObservation, nowMs: Int64) -> [Alert] {
        self.state.withLock { state in
            var changes: [Alert] = []
            for (key, alert) in state.firing where key.rule == rule && observation.holding[key.subject] == nil {
                var resolved = alert
                resolved.state = .resolved
                resolved.resolvedMs = max(nowMs, alert.firedMs)
                resolved.detail = observation.resolved[key.subject] ?? observation.resolvedDefault
                state.firing[key] = nil
                changes.append(resolved)
            }
            for (subject, detail) in observation.holding {
                let key = AlertKey(rule: rule, subject: subject)
                guard state.firing[key] == nil else { continue }
                let alert = Alert(rule: rule, subject: subject, firedMs: nowMs, detail: detail)
                state.firing[key] = alert
                changes.append(alert)
            }
            for change in changes { state.unsaved[change.id] = change }
            return changes.sorted { ($0.state == .resolved ? 0 : 1, $0.key) < ($1.state == .resolved ? 0 : 1, $1.key) }
        }
    }

    /// Logs, counts, notifies and schedules the recording of changes.
    private func publish(_ changes: [Alert]) {
        guard !changes.isEmpty else { return }
        for (index, alert) in changes.enumerated() where index < Self.loggedChanges {
            let metadata: Logger.Metadata = [
                "alert.id": "\(alert.id)", "alert.rule": "\(alert.rule.rawValue)", "alert.subject": "\(alert.subject)",
                "alert.detail": "\(alert.detail)",
            ]
            if alert.state == .firing {
                self.logger.warning("Alert firing", metadata: metadata)
            } else {
                self.logger.notice("Alert resolved", metadata: metadata)
            }
        }
        if changes.count > Self.loggedChanges {
            self.logger.notice(
                "Alerts changed",
                metadata: [
                    "alerts.fired": "\(changes.filter { $0.state == .firing }.count)",
                    "alerts.resolved": "\(changes.filter { $0.state == .resolved }.count)",
                ])
        }
        let (counts, recorder) = self.state.withLock { state in
            defer { state.recorder = nil }
            return (Dictionary(grouping: state.firing.keys, by: \.rule).mapValues(\.count), state.recorder)
        }
        self.statistics.setFiring(counts)
        for alert in changes { self.notifier?.enqueue(alert) }
        recorder?.resume()
    }

    // MARK: Reading

    /// Alerts firing now, by rule and subject.
    package var firing: [Alert] { self.state.withLock { $0.firing.values.sorted { $0.key < $1.key } } }

    /// The alerts of the database with the changes not written yet laid over them, as `/api/alerts`
    /// lists them: firing ones oldest first, then resolved ones newest first.
    package func list(_ filter: AlertFilter, limit: Int) async throws -> AlertListAnswer {
        let (stored, storedFiring) = try await self.store.alerts(state: filter.state, limit: limit)
        var (unsaved, firing) = self.state.withLock { state in (Array(state.unsaved.values), state.firing.count) }
        // A node that does not run the rules (another node leads) answers from the shared table.
        if !(self.lease?.isLeader ?? true) { firing = storedFiring }
        var byID = Dictionary(stored.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        for alert in unsaved { byID[alert.id] = alert }
        var alerts = byID.values.filter { filter.state == nil || $0.state == filter.state }
        alerts.sort { lhs, rhs in
            if lhs.state != rhs.state { return lhs.state == .firing }
            if lhs.state == .firing { return (lhs.firedMs, lhs.id) < (rhs.firedMs, rhs.id) }
            return (rhs.resolvedMs ?? 0, lhs.id) < (lhs.resolvedMs ?? 0, rhs.id)
        }
        return AlertListAnswer(firing: firing, alerts: alerts.prefix(limit).map(\.answer))
    }

    // MARK: Recording

    /// Takes over the firing alerts of the database, once.
    private func loadIfNeeded() async {
        guard !self.state.withLock({ $0.loaded }) else { return }
        var loaded: [Alert] = []
        do {
            loaded = try await self.store.alerts(state: .firing, limit: .max).alerts
        } catch is CancellationError {
            return  // stopping: the next run takes them over
        } catch {
            self.logger.error("Cannot read the firing alerts; they may fire again", metadata: ["error": "\(error)"])
        }
        // Rules evaluated at once may each load; only the one that takes the alerts over says so.
        let tookOver = self.state.withLock { state in
            guard !state.loaded else { return false }
            state.loaded = true
            for alert in loaded where state.firing[alert.key] == nil { state.firing[alert.key] = alert }
            return true
        }
        if tookOver && !loaded.isEmpty {
            self.logger.info("Alerts still firing from the last run", metadata: ["alerts.firing": "\(loaded.count)"])
        }
    }

    /// Writes the changes the database does not have yet; on failure they stay for the next try.
    package func recordPending() async throws {
        let pending = self.state.withLock { Array($0.unsaved.values) }
        guard !pending.isEmpty else { return }
        let history = self.configuration.history
        do {
            try await self.writer.perform { writer in try writer.recordAlerts(pending, history: history) }
        } catch {
            let first = self.state.withLock { state in
                defer { state.recordFailing = true }
                return !state.recordFailing
            }
            if first {
                self.logger.warning(
                    "Cannot record alerts in the database; they are kept and written when it works again",
                    metadata: ["alerts.pending": "\(pending.count)", "error": "\(error)"])
            }
            throw error
        }
        self.state.withLock { state in
            state.recordFailing = false
            for alert in pending where state.unsaved[alert.id] == alert { state.unsaved[alert.id] = nil }
        }
    }

    /// Records changes as they come, retrying every few seconds while the writer refuses them.
    private func recordLoop() async {
        while !Task.isCancelled {
            do {
                try await self.recordPending()
                await withTaskCancellationHandler {
                    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                        let now = self.state.withLock { state -> Bool in
                            if !state.unsaved.isEmpty || Task.isCancelled { return true }
                            state.recorder = continuation
                            return false
                        }
                        if now { continuation.resume() }
                    }
                } onCancel: {
                    let recorder = self.state.withLock { state in
                        defer { state.recorder = nil }
                        return state.recorder
                    }
                    recorder?.resume()
                }
            } catch {
                try? await Task.sleep(for: .seconds(2))
            }
        }
    }

    // MARK: Helpers

    static func milliseconds(_ duration: Duration) -> Int64 {
        duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
    }

    static func percent(_ share: Double) -> String {
        String(format: "%.1f%%", share * 100)
    }
}
