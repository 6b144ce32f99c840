import Foundation
import Logging
import NIOConcurrencyHelpers
import ServiceLifecycle

/// Keeps this node's in-memory KPI stores in step with the other nodes of a shared store: polls
/// the commit feed every ``interval`` and hands each delta to ``KPIRollups``, which skips what a
/// store it loaded already holds. So a node's KPIs, dashboard and status fleet figures lag the
/// other nodes' commits by at most one interval plus a poll's round trip.
///
/// The singleton leader also prunes the feed: rows older than ``retentionMs`` go. A node that fell
/// further behind (the feed reports ``CommitFeedPoll/restarted``) drops its stores, which load
/// again on the next query.
package final class CommitFeedFollower: Service, Sendable {
    private let feed: any CommitFeedSource
    private let rollups: KPIRollups
    private let lease: SingletonLease
    package let interval: Duration
    package let retentionMs: Int64
    private let pruneEvery: Duration
    private let logger: Logger
    private let lastPrune = NIOLockedValueBox<ContinuousClock.Instant?>(nil)
    private let failing = NIOLockedValueBox(false)
    private let pollCount = NIOLockedValueBox(0)
    /// Loads this node's copies of company data again (the writer's meters, the concentrator list)
    /// after another node or `meterctl import --store` imported some.
    private let reloadCompanyData: @Sendable () async throws -> Void

    /// Polls that succeeded so far.
    package var polls: Int { self.pollCount.withLockedValue { $0 } }

    package init(
        feed: any CommitFeedSource, rollups: KPIRollups, lease: SingletonLease, interval: Duration = .seconds(1),
        retentionMs: Int64 = 120_000, pruneEvery: Duration = .seconds(30), logger: Logger,
        reloadCompanyData: @escaping @Sendable () async throws -> Void = {}
    ) {
        self.reloadCompanyData = reloadCompanyData
        self.feed = feed
        self.rollups = rollups
        self.lease = lease
        self.interval = interval
        // A node that polled within the retention must never count as fallen behind (PostgreSQLCommitFeed's allowance is 30 s).
        self.retentionMs = max(retentionMs, 60_000)
        self.pruneEvery = pruneEvery
        self.logger = logger
    }

    package func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await self.follow()
                do { try await Task.sleep(for: self.interval) } catch { break }
            }
        }
    }

    /// One poll, and a prune when this node leads and one is due.
    package func follow() async {
        do {
            let poll = try await self.feed.poll()
            if poll.companyDataChanged {
                // Before the KPI stores drop: readings committed from here on carry the new regions.
                do {
                    try await self.reloadCompanyData()
                    self.logger.info("Company data changed in the store: meters and KPI stores load afresh")
                } catch {
                    self.logger.error("Company data changed in the store, but could not be reloaded", metadata: ["error": "\(error)"])
                }
            }
            if poll.restarted || poll.companyDataChanged {
                self.rollups.companyDataChanged()
                if poll.restarted { self.logger.info("Commit feed followed from here on: KPI stores load afresh") }
            }
            for delta in poll.deltas { self.rollups.didCommit(delta) }
            self.pollCount.withLockedValue { $0 += 1 }
            if self.failing.withLockedValue({ $0 }) {
                self.failing.withLockedValue { $0 = false }
                self.logger.notice("Commit feed readable again")
            }
        } catch {
            let first = self.failing.withLockedValue { failing -> Bool in
                defer { failing = true }
                return !failing
            }
            if first {
                self.logger.warning("Cannot read the commit feed: other nodes' commits show late", metadata: ["error": "\(error)"])
            }
        }
        guard self.lease.isLeader else { return }
        let now = ContinuousClock.now
        let due = self.lastPrune.withLockedValue { last -> Bool in
            guard last.map({ now - $0 >= self.pruneEvery }) ?? true else { return false }
            last = now
            return true
        }
        guard due else { return }
        do {
            let pruned = try await self.feed.prune(keepingMs: self.retentionMs)
            self.logger.debug("Commit feed pruned", metadata: ["feed.pruned": "\(pruned)"])
        } catch {
            self.logger.warning("Cannot prune the commit feed", metadata: ["error": "\(error)"])
        }
    }
}
