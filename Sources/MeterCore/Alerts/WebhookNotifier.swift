import Foundation
import Logging
import NIOCore
import NIOSSL
import ServiceLifecycle
import NIOConcurrencyHelpers
import Synchronization

/// Delivers alerts to the `alert_webhook` URLs: one bounded queue per URL, sent in order, each
/// POST retried with exponential backoff until the webhook takes it, so a webhook that is down
/// for a while gets everything once it is back.
///
/// ``enqueue(_:)`` never waits: alert evaluation (and ingest) never block on a webhook. When a
/// queue is full the delivery that matters least goes: a firing notice whose resolution is also
/// queued (the resolution carries the whole alert), else the oldest. Drops are logged and counted
/// in `meterd_alert_webhook_dropped_total`; the alerts stay in the database either way.
package final class WebhookNotifier: Service, Sendable {
    /// One alert state to deliver.
    struct Delivery: Sendable {
        var id: String
        var state: AlertState
        var body: String
    }

    private struct Queue {
        var pending: [Delivery] = []
        /// Resumed when a delivery is queued while the sender waits for one.
        var waiter: CheckedContinuation<Void, Never>?
        /// Deliveries dropped since the webhook last took one: only the first of a streak is a
        /// warning, so a burst of alerts (thousands of meters going silent at once) logs two lines.
        var droppedStreak = 0
    }

    package let targets: [WebhookTarget]
    private let capacity: Int
    private let timeout: Duration
    private let retryInitial: Duration
    private let retryMaximum: Duration
    private let statistics: AlertStatistics
    private let logger: Logger
    private let tls: NIOSSLContext?
    private let queues: NIOLockedValueBox<[Queue]>

    /// - Parameters:
    ///   - configuration: the webhooks, queue size, timeout and retry delays of `[alert]`.
    package init(configuration: AlertConfiguration, statistics: AlertStatistics, logger: Logger) throws {
        self.targets = configuration.webhooks.compactMap(WebhookTarget.init)
        self.capacity = configuration.webhookQueue
        self.timeout = configuration.webhookTimeout
        self.retryInitial = configuration.webhookRetryInitial
        self.retryMaximum = configuration.webhookRetryMaximum
        self.statistics = statistics
        self.logger = logger
        self.tls = self.targets.contains(where: \.tls) ? try NIOSSLContext(configuration: .makeClientConfiguration()) : nil
        self.queues = NIOLockedValueBox(self.targets.map { _ in Queue() })
    }

    /// Deliveries waiting for one webhook.
    package func queued(_ index: Int) -> Int { self.queues.withLockedValue { $0[index].pending.count } }

    /// Queues the alert's current state for every webhook; returns at once.
    package func enqueue(_ alert: Alert) {
        guard !self.targets.isEmpty else { return }
        let body: String
        do {
            body = try AnswerEncoder.json(alert.answer)
        } catch {
            self.logger.error("Cannot encode alert", metadata: ["alert.id": "\(alert.id)", "error": "\(error)"])
            return
        }
        let delivery = Delivery(id: alert.id, state: alert.state, body: body)
        for index in self.targets.indices {
            let (waiter, dropped, streak) = self.queues.withLockedValue { queues -> (CheckedContinuation<Void, Never>?, Delivery?, Int) in
                var queue = queues[index]
                defer { queues[index] = queue }
                defer { queue.waiter = nil }
                guard queue.pending.count >= self.capacity else {
                    queue.pending.append(delivery)
                    return (queue.waiter, nil, queue.droppedStreak)
                }
                queue.droppedStreak += 1
                // The sender may be posting pending[0], so it is never the one dropped.
                let pending = queue.pending
                let superseded = pending.indices.dropFirst().first { position in
                    pending[position].state == .firing
                        && (pending[(position + 1)...].contains { $0.id == pending[position].id } || delivery.id == pending[position].id)
                }
                guard let victim = superseded ?? (pending.count > 1 ? 1 : nil) else { return (queue.waiter, delivery, queue.droppedStreak) }
                let dropped = queue.pending.remove(at: victim)
                queue.pending.append(delivery)
                return (queue.waiter, dropped, queue.droppedStreak)
            }
            if let dropped {
                self.statistics.webhookDropped.add(1, ordering: .relaxed)
                let metadata: Logger.Metadata = [
                    "alert.id": "\(dropped.id)", "alert.state": "\(dropped.state.rawValue)",
                    "webhook.url": "\(self.targets[index])", "webhook.queue": "\(self.capacity)",
                ]
                if streak == 1 {
                    self.logger.warning(
                        "Webhook queue full: alert notifications are dropped until it has room (the alerts stay listed by meterctl alerts)",
                        metadata: metadata)
                } else {
                    self.logger.debug("Webhook queue full: alert notification dropped", metadata: metadata)
                }
            } else {
                self.statistics.webhookQueued.add(1, ordering: .relaxed)
            }
            waiter?.resume()
        }
    }

    package func run() async throws {
        guard !self.targets.isEmpty else {
            // A service that returns would end the daemon's group: wait for shutdown instead.
            try? await gracefulShutdown()
            return
        }
        await withDiscardingTaskGroup { group in
            for index in self.targets.indices {
                group.addTask { await self.deliver(index) }
            }
        }
    }

    /// Sends one webhook's queue in order until graceful shutdown; what is left stays unsent.
    private func deliver(_ index: Int) async {
        let target = self.targets[index]
        try? await cancelWhenGracefulShutdown {
            var delay = self.retryInitial
            var failing = false
            while !Task.isCancelled {
                guard let next = await self.next(index) else { return }
                do {
                    try await WebhookPost.send(next.body, to: target, timeout: self.timeout, tls: self.tls)
                    let dropped = self.queues.withLockedValue { queues -> Int in
                        if queues[index].pending.first?.id == next.id, queues[index].pending.first?.state == next.state {
                            queues[index].pending.removeFirst()
                        }
                        defer { queues[index].droppedStreak = 0 }
                        return queues[index].droppedStreak
                    }
                    if dropped > 0 {
                        self.logger.warning(
                            "Webhook took a notification again; some were dropped while its queue was full",
                            metadata: ["webhook.url": "\(target)", "webhook.dropped": "\(dropped)"])
                    }
                    self.statistics.webhookQueued.add(-1, ordering: .relaxed)
                    self.statistics.webhookDeliveries.add(1, ordering: .relaxed)
                    if failing {
                        self.logger.notice("Webhook reachable again", metadata: ["webhook.url": "\(target)"])
                        failing = false
                    }
                    delay = self.retryInitial
                } catch {
                    self.statistics.webhookFailures.add(1, ordering: .relaxed)
                    // The first failure of a streak is worth a warning; the retries are not.
                    if !failing {
                        self.logger.warning(
                            "Webhook POST failed; retrying with backoff",
                            metadata: ["webhook.url": "\(target)", "alert.id": "\(next.id)", "error": "\(error)"])
                        failing = true
                    } else {
                        self.logger.debug("Webhook POST failed again", metadata: ["webhook.url": "\(target)", "error": "\(error)"])
                    }
                    try await Task.sleep(for: delay)
                    delay = min(delay * 2, self.retryMaximum)
                }
            }
        }
    }

    /// The head of the queue, waiting for one; `nil` once cancelled.
    private func next(_ index: Int) async -> Delivery? {
        while !Task.isCancelled {
            if let head = self.queues.withLockedValue({ $0[index].pending.first }) { return head }
            await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let ready = self.queues.withLockedValue { queues -> Bool in
                        if !queues[index].pending.isEmpty || Task.isCancelled { return true }
                        queues[index].waiter = continuation
                        return false
                    }
                    if ready { continuation.resume() }
                }
            } onCancel: {
                let waiter = self.queues.withLockedValue { queues in
                    defer { queues[index].waiter = nil }
                    return queues[index].waiter
                }
                waiter?.resume()
            }
        }
        return nil
    }
}
