import NIOConcurrencyHelpers
import Synchronization

/// Live counters of the alert engine and its webhooks, read by `/metrics`.
package final class AlertStatistics: Sendable {
    /// Alerts firing now, by rule.
    private let firing = NIOLockedValueBox<[AlertRule: Int]>([:])
    /// POSTs a webhook answered with 2xx.
    package let webhookDeliveries = Atomic<Int>(0)
    /// POSTs that failed (no connection, timeout, non-2xx) and wait for a retry.
    package let webhookFailures = Atomic<Int>(0)
    /// Deliveries dropped because a webhook's queue was full (the alerts stay in the database).
    package let webhookDropped = Atomic<Int>(0)
    /// Deliveries waiting, over every webhook.
    package let webhookQueued = Atomic<Int>(0)

    package init() {}

    package func setFiring(_ counts: [AlertRule: Int]) {
        self.firing.withLockedValue { $0 = counts }
    }

    package func firing(_ rule: AlertRule) -> Int {
        self.firing.withLockedValue { $0[rule] ?? 0 }
    }
}
