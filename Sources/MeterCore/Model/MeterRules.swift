import Foundation

/// The rules that turn stored facts into meter states and KPI periods (SPEC.md sections 3 and 5),
/// each defined once: the status socket, meterctl, HTTP, `/metrics` and snapshots all ask here.
///
/// - **Inactive**: a meter the liveness sweep flagged (silent longer than `inactive_after`), or one
///   that has never reported. The sweep runs every quarter of `inactive_after` (1–30 s), so a
///   meter that falls silent shows as inactive at most one sweep interval late, and the same in
///   every answer.
/// - **Faulty**: over a KPI period (for "right now" figures, the default period: the 12 months
///   ending with the current one), `faulty_faults` or more faults, or `faulty_poor_months` or more
///   poor months.
/// - **Poor month**: the month's status is poor (``monthStatus(imported:readings:good:fair:poor:)``).
/// - **Default period**: the 12 months ending with the current month in the daemon's time zone.
package struct MeterRules: Sendable {
    package var timeZone: TimeZone
    package var inactiveAfterMs: Int64
    /// A meter with this many faults in the period is faulty…
    package var faultyFaults: Int
    /// …or with this many poor months.
    package var faultyPoorMonths: Int

    package init(
        timeZone: TimeZone = TimeZone(identifier: "UTC")!, inactiveAfterSeconds: Int = 900, faultyFaults: Int = 3,
        faultyPoorMonths: Int = 2
    ) {
        self.timeZone = timeZone
        self.inactiveAfterMs = Int64(inactiveAfterSeconds) * 1000
        self.faultyFaults = faultyFaults
        self.faultyPoorMonths = faultyPoorMonths
    }

    package init(_ configuration: DaemonConfiguration) {
        self.init(
            timeZone: configuration.timeZone, inactiveAfterSeconds: configuration.inactiveAfterSeconds,
            faultyFaults: configuration.faultyFaults, faultyPoorMonths: configuration.faultyPoorMonths)
    }

    /// Whether a meter counts as inactive: flagged by the liveness sweep, or never heard from.
    /// Stores answer counts and lists with this same condition.
    package static func isInactive(inactiveSinceMs: Int64?, lastReceivedMs: Int64?) -> Bool {
        inactiveSinceMs != nil || lastReceivedMs == nil
    }

    /// Whether a meter with these figures over a period is faulty.
    package func isFaulty(faults: Int, poorMonths: Int) -> Bool {
        faults >= self.faultyFaults || poorMonths >= self.faultyPoorMonths
    }

    /// A month's status for a meter or customer: the imported row's, else what its readings said
    /// most often, ties going to the worse; `nil` when there is no record that month.
    package static func monthStatus(imported: MeterHealth?, readings: Int64, good: Int64, fair: Int64, poor: Int64) -> MeterHealth? {
        if let imported { return imported }
        guard readings > 0 else { return nil }
        if poor >= fair && poor >= good { return .poor }
        if fair >= good { return .fair }
        return .good
    }

    /// ``monthStatus(imported:readings:good:fair:poor:)`` as a raw value (0 good, 1 fair, 2 poor; -1
    /// for no record), for the KPI store's tight loops.
    @inline(__always)
    package static func monthStatusCode(imported: Int8, readings: Int32, good: Int32, fair: Int32, poor: Int32) -> Int {
        if imported >= 0 { return Int(imported) }
        guard readings > 0 else { return -1 }
        if poor >= fair && poor >= good { return 2 }
        if fair >= good { return 1 }
        return 0
    }

    /// The current month in the daemon's zone.
    package func currentMonth(nowMs: Int64) -> Month {
        MonthCalendar(timeZone: self.timeZone).month(of: Date(timeIntervalSince1970: Double(nowMs) / 1000))
    }

    /// The 12 months ending with the current one in the daemon's zone.
    package func defaultPeriod(nowMs: Int64) -> KPIPeriod {
        KPIPeriod.twelveMonths(endingAt: self.currentMonth(nowMs: nowMs))
    }
}
