import Logging
import NIOConcurrencyHelpers
import ServiceLifecycle

/// How meterd talks to its service manager.
package struct SystemdNotifierConfiguration: Sendable {
    /// How often STATUS= is refreshed.
    package var statusInterval: Duration = .seconds(5)
    /// systemd's watchdog interval (`WATCHDOG_USEC`), or `nil` when the unit sets no `WatchdogSec=`.
    package var watchdogInterval: Duration?

    package init(statusInterval: Duration = .seconds(5), watchdogInterval: Duration? = nil) {
        self.statusInterval = statusInterval
        self.watchdogInterval = watchdogInterval
    }
}

/// Speaks sd_notify for the daemon (SPEC.md section 8): READY=1 once the database is open and
/// every listener is bound, STATUS= every few seconds, WATCHDOG=1 only while the writer makes
/// progress (a stuck writer gets meterd restarted), STOPPING=1 when shutdown begins.
///
/// List it last in the service group: shutdown runs in reverse, so STOPPING=1 goes out first.
package struct SystemdNotifier: Service {
    private let configuration: SystemdNotifierConfiguration
    private let readiness: Readiness
    private let writerHealth: WriterHealth
    private let reporter: StatusReporter
    private let logger: Logger
    private let send: @Sendable (String) -> Void

    /// - Parameter send: delivers one notification; `Systemd.notify` unless a test listens itself.
    package init(
        configuration: SystemdNotifierConfiguration, readiness: Readiness, writerHealth: WriterHealth,
        reporter: StatusReporter, logger: Logger,
        send: @escaping @Sendable (String) -> Void = { Systemd.notify($0) }
    ) {
        self.configuration = configuration
        self.readiness = readiness
        self.writerHealth = writerHealth
        self.reporter = reporter
        self.logger = logger
        self.send = send
    }

    package func run() async throws {
        // Returns when shutdown begins: the sleep between ticks is cancelled.
        await cancelWhenGracefulShutdown {
            await self.notifyUntilShutdown()
        }
        self.readiness.markStopping()
        self.send("STOPPING=1\nSTATUS=Stopping: committing and acknowledging what was received")
        self.logger.info("Told systemd meterd is stopping")
    }

    private func notifyUntilShutdown() async {
        await withTaskCancellationHandler {
            await self.readiness.waitUntilListening()
        } onCancel: {
            self.readiness.markStopping()
        }
        guard !self.readiness.isStopping, !Task.isCancelled else { return }
        // Ready once the listeners are bound: the KPI store's first load does not hold meters up.
        let status = await self.reporter.systemdStatus(includingFleet: false)
        self.send("READY=1\nSTATUS=\(status)")
        self.logger.info(
            "meterd ready", metadata: ["systemd.watchdog_ms": "\(self.configuration.watchdogInterval.map { "\($0.milliseconds)" } ?? "off")"])

        // Ping several times per watchdog interval so one late tick is not fatal.
        let tick = self.configuration.watchdogInterval.map { min($0 / 4, self.configuration.statusInterval) } ?? self.configuration.statusInterval
        let clock = ContinuousClock()
        // The first full STATUS= at the first tick: it waits, in a task of its own, for the fleet figures.
        var nextStatus = clock.now
        var watchdogSilent = false
        while !self.readiness.isStopping {
            do {
                try await Task.sleep(for: tick)
            } catch {
                return  // cancelled
            }
            if self.readiness.isStopping { return }
            if self.configuration.watchdogInterval != nil {
                if self.writerHealth.isAlive() {
                    self.send("WATCHDOG=1")
                    if watchdogSilent {
                        watchdogSilent = false
                        self.logger.notice("Writer progressing again; watchdog pings resumed")
                    }
                } else if !watchdogSilent {
                    watchdogSilent = true
                    self.logger.error(
                        "Writer made no progress; withholding watchdog pings so systemd restarts meterd",
                        metadata: [
                            "writer.progress_age_ms": "\(self.writerHealth.progressAgeMs())",
                            "writer.failure": "\(self.reporter.pipeline.failure ?? "none")",
                        ])
                }
            }
            if clock.now >= nextStatus {
                nextStatus = clock.now + self.configuration.statusInterval
                self.refreshStatus()
            }
        }
    }

    private let statusInFlight = NIOLockedValueBox(false)

    /// Sends a fresh `STATUS=` from a task of its own: the fleet figures come from the store, whose
    /// answer may take until its query deadline (a black-holed database connection), and the loop
    /// must keep pinging the watchdog and see shutdown meanwhile. One refresh at a time.
    private func refreshStatus() {
        let starting = self.statusInFlight.withLockedValue { inFlight -> Bool in
            if inFlight { return false }
            inFlight = true
            return true
        }
        guard starting else { return }
        Task { [reporter, readiness, send, statusInFlight] in
            let status = await reporter.systemdStatus()
            if !readiness.isStopping { send("STATUS=\(status)") }
            statusInFlight.withLockedValue { $0 = false }
        }
    }
}

extension Duration {
    /// Whole milliseconds.
    var milliseconds: Int64 {
        self.components.seconds * 1000 + self.components.attoseconds / 1_000_000_000_000_000
    }

    /// Seconds with their fraction.
    var seconds: Double {
        Double(self.components.seconds) + Double(self.components.attoseconds) / 1e18
    }
}
